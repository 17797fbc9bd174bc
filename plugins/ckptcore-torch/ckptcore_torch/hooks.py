"""Restore-on-create: torch's global registration hooks report new children.

``torch.nn.modules.module`` calls global hooks whenever any module registers
a submodule, parameter or buffer. This plugin installs one of each, calling
ckptcore's ``notify(module, name, value)``; if a ``restore()`` queued a value
for that edge, the new object receives it right away.

The hooks are installed once per process, and only when torch is already in
use: if torch was not imported when ckptcore asked, installation waits until
the first torch module is met during a restore (no torch module can be
waiting for a child before that).

Example:
    >>> import torch, ckptcore as ck
    >>> src = torch.nn.Module(); src.w = torch.nn.Parameter(torch.ones(2))
    >>> path = ck.Checkpoint(model=src).write("memory://doc/torch/hooks")
    >>> dst = torch.nn.Module(); status = ck.Checkpoint(model=dst).read(path)
    >>> dst.w = torch.nn.Parameter(torch.zeros(2))     # registered after restore()
    >>> dst.w.tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["set_notify", "ensure_installed", "installed"]

_lock = threading.Lock()
_notify: Callable[[Any, str, Any], None] | None = None
_handles: list = []


def set_notify(notify: Callable[[Any, str, Any], None]) -> None:
    """Remember ckptcore's ``notify``; install the hooks now if torch is loaded.

    Example:
        >>> import ckptcore as ck
        >>> set_notify(ck.notify_dependency_added)
    """
    global _notify
    _notify = notify
    if "torch" in sys.modules:
        ensure_installed()


def installed() -> bool:
    """Whether the torch registration hooks are installed.

    Example:
        >>> isinstance(installed(), bool)
        True
    """
    return bool(_handles)


def ensure_installed() -> None:
    """Install the three global torch hooks once (no-op until ckptcore asked for them).

    Example:
        >>> ensure_installed()
    """
    if _handles or _notify is None:
        return
    with _lock:
        if _handles or _notify is None:
            return
        from torch.nn.modules import module as tmod

        notify = _notify

        def on_register(module, name, value):
            if value is not None:
                notify(module, name, value)
            return None  # never replace what torch registers

        _handles.extend([
            tmod.register_module_module_registration_hook(on_register),
            tmod.register_module_parameter_registration_hook(on_register),
            tmod.register_module_buffer_registration_hook(on_register),
        ])
