"""Host memory a save or restore lends to plugins for staging device tensors.

A save (``write``/``save``) or restore runs inside one :class:`Staging`: its
``pinned_memory_bytes`` comes from :class:`~ckptcore.CheckpointOptions`, plugins keep
what they allocate for it in :attr:`Staging.resources` and register a release with
:meth:`Staging.on_end`. The operation ends (for an async save: once its background write
has finished) with :meth:`Staging.end`, which runs those releases, so staging memory never
outlives the save that needed it. The core imports no framework: the torch plugin's pinned
buffer pool (``ckptcore_torch.staging``) is one user.

A plugin that hands the saver a value which is already a private copy (a device tensor
copied to host memory, say) marks it with :meth:`Staging.mark_private`: an async save's
snapshot then keeps it as it is instead of copying it a second time.

Example:
    >>> import numpy as np
    >>> from ckptcore import staging
    >>> s = staging.Staging(pinned_memory_bytes=1 << 20)
    >>> with staging.active(s):
    ...     staging.current() is s
    True
    >>> a = np.ones(3); s.mark_private(a); s.is_private(a), s.is_private(np.ones(3))
    (True, False)
    >>> s.on_end(lambda: print("released")); s.end()
    released
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Staging", "active", "current"]


class Staging:
    """What one save or restore lends for staging, and what must be given back when it ends.

    Example:
        >>> s = Staging(0); s.pinned_memory_bytes, s.resources
        (0, {})
    """

    def __init__(self, pinned_memory_bytes: int = 0):
        self.pinned_memory_bytes = int(pinned_memory_bytes or 0)
        #: per plugin, what it allocated for this operation (e.g. ``"ckptcore_torch.pinned"`` -> its pool)
        self.resources: dict[str, Any] = {}
        self._private: dict[int, Any] = {}
        self._on_end: list[Callable[[], None]] = []
        self.ended = False

    def mark_private(self, array: Any) -> None:
        """Say that ``array`` is a copy nobody else holds (an async save need not snapshot it again)."""
        self._private[id(array)] = array  # held until end(): the id cannot be reused meanwhile

    def is_private(self, array: Any) -> bool:
        return self._private.get(id(array)) is array

    @property
    def has_private(self) -> bool:
        return bool(self._private)

    def on_end(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the operation ends (last registered, first run)."""
        self._on_end.append(fn)

    def end(self) -> None:
        """Run every release once; the first failure is raised after all have run. Idempotent."""
        if self.ended:
            return
        self.ended = True
        self._private.clear()
        fns, self._on_end = self._on_end[::-1], []
        error: BaseException | None = None
        for fn in fns:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 -- every release runs; the first error is kept
                error = error or e
        self.resources.clear()
        if error is not None:
            raise error


_CURRENT: contextvars.ContextVar[Staging | None] = contextvars.ContextVar("ckptcore_staging", default=None)


def current() -> Staging | None:
    """The :class:`Staging` of the save or restore running in this thread, or None.

    Example:
        >>> current() is None
        True
    """
    return _CURRENT.get()


@contextlib.contextmanager
def active(staging: Staging) -> Iterator[Staging]:
    """Make ``staging`` the current one while the block runs (it is not ended on exit).

    Example:
        >>> with active(Staging(8)) as s:
        ...     current().pinned_memory_bytes
        8
    """
    token = _CURRENT.set(staging)
    try:
        yield staging
    finally:
        _CURRENT.reset(token)
