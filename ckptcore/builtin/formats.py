"""The built-in checkpoint formats, registered like any plugin's (entry point ``formats``).

Example:
    >>> from ckptcore.builtin import formats
    >>> [r.format.name for r in formats.ckptcore_register_formats()]
    ['ckptcore', 'tensorflow', 'safetensors', 'foreign']
"""

from __future__ import annotations

from ..formats.base import FormatRegistration
from ..hookspec import hookimpl


@hookimpl
def ckptcore_register_formats():
    from ..formats.ckpt import CkptFormat
    from ..formats.foreign import ForeignFormat
    from ..formats.safetensors import SafetensorsFormat
    from ..formats.tensorbundle import TensorBundleFormat

    return [FormatRegistration(CkptFormat(), priority=30), FormatRegistration(TensorBundleFormat(), priority=20),
            FormatRegistration(SafetensorsFormat(), priority=10), FormatRegistration(ForeignFormat(), priority=-100)]
