"""ckptcore: TensorFlow-style object-graph checkpoints for every framework.

Five lines that save and restore::

    import numpy as np, ckptcore as ck
    model = ck.Module(); model.w = ck.Variable(np.ones(3))
    ckpt = ck.Checkpoint(model=model)
    path = ckpt.save("/tmp/run/ckpt")                     # /tmp/run/ckpt-1
    ckpt.restore(ck.latest_checkpoint("/tmp/run")).assert_consumed()

Example:
    >>> import ckptcore as ck
    >>> ck.Checkpoint().save_counter.dtype
    dtype('int64')
"""

from __future__ import annotations

from . import naming, registry, storage
from .adapters import Adapter, AdapterRegistration, SlotVariable, StorageRegistration
from .checkpoint import Checkpoint
from .errors import (
    AdapterConflictError,
    AdapterStateError,
    AssertionFailedError,
    CheckpointError,
    ContainerModifiedError,
    CorruptCheckpointError,
    DtypeMismatchError,
    InvalidArgumentError,
    InvalidPathError,
    KeyNotFoundError,
    NotFoundError,
    NotTrackableError,
    PartialRestoreWarning,
    ShapeMismatchError,
    StorageError,
    StoragePermissionError,
    UnsupportedDtypeError,
    UnsupportedFormatError,
)
from .hookspec import hookimpl
from .module import Module, TrackedDict, TrackedList
from .options import CheckpointOptions
from .reader import CheckpointReader, list_variables, load_checkpoint
from .registry import register_adapter
from .restore import InitializationOnlyStatus, LoadStatus, has_pending, notify_dependency_added
from .state import latest_checkpoint
from .variable import Variable

# ``__version__`` comes from the installed metadata (pyproject.toml), read on first access:
# importlib.metadata costs ~20 ms of start-up (see __getattr__ below).

__all__ = [
    "Adapter", "AdapterConflictError", "AdapterStateError", "AdapterRegistration", "AssertionFailedError", "Checkpoint",
    "CheckpointManager",
    "CheckpointError", "CheckpointOptions", "CheckpointReader", "ContainerModifiedError", "CorruptCheckpointError",
    "DtypeMismatchError", "InitializationOnlyStatus", "InvalidArgumentError", "InvalidPathError", "KeyNotFoundError",
    "LoadStatus", "Module", "NotFoundError",
    "NotTrackableError", "PartialRestoreWarning", "ShapeMismatchError", "SlotVariable", "StorageError",
    "StoragePermissionError", "StorageRegistration", "TrackedDict", "TrackedList", "UnsupportedDtypeError",
    "UnsupportedFormatError", "Variable", "has_pending", "hookimpl", "latest_checkpoint",
    "list_variables", "load_checkpoint", "naming", "notify_dependency_added", "register_adapter", "registry",
    "storage",
]


def __getattr__(name: str):
    if name == "__version__":
        from ._version import version_of

        globals()["__version__"] = v = version_of("ckptcore")
        return v
    if name == "CheckpointManager":
        from .manager import CheckpointManager

        return CheckpointManager
    raise AttributeError(f"module 'ckptcore' has no attribute {name!r}")
