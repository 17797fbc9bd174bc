"""ckptcore's exceptions and warnings.

Every error ckptcore raises derives from :class:`CheckpointError`; each also
inherits the builtin a caller would naturally catch (``FileNotFoundError``,
``ValueError``, ``AssertionError``), so code written for ``tf.train`` keeps
working.

Example:
    >>> import ckptcore as ck
    >>> try:
    ...     ck.Checkpoint().restore("/nonexistent/ckpt-1")
    ... except ck.NotFoundError as e:
    ...     print(type(e).__name__)
    NotFoundError
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "NotFoundError",
    "KeyNotFoundError",
    "CorruptCheckpointError",
    "ShapeMismatchError",
    "DtypeMismatchError",
    "UnsupportedDtypeError",
    "UnsupportedFormatError",
    "NotTrackableError",
    "AdapterConflictError",
    "StorageError",
    "AssertionFailedError",
    "PartialRestoreWarning",
]


class CheckpointError(Exception):
    """Root of every error ckptcore raises.

    Example:
        >>> import ckptcore as ck
        >>> issubclass(ck.CorruptCheckpointError, ck.CheckpointError)
        True
    """


class NotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint (or one of its files) does not exist.

    Example:
        >>> import ckptcore as ck
        >>> issubclass(ck.NotFoundError, FileNotFoundError)
        True
    """


class KeyNotFoundError(NotFoundError, KeyError):
    """A tensor key is not in the checkpoint (``get_tensor``/``entry`` of a reader).

    It is both a :class:`NotFoundError` (as TF's reader raises) and a ``KeyError``.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> r = ck.load_checkpoint(ck.Checkpoint(a=np.ones(1)).write("memory://doc/knf/c"))
        >>> try:
        ...     r.get_tensor("b/.ATTRIBUTES/VARIABLE_VALUE")
        ... except KeyError as e:
        ...     print(e)
        key 'b/.ATTRIBUTES/VARIABLE_VALUE' not found in checkpoint 'memory://doc/knf/c'
    """

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class CorruptCheckpointError(CheckpointError):
    """Checkpoint bytes failed validation: bad checksum, truncation, garbled index.

    The message names the file and, where one is involved, the tensor key.

    Example:
        >>> import ckptcore as ck
        >>> str(ck.CorruptCheckpointError("bad", path="/tmp/x.index"))
        'bad'
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        super().__init__(message)
        self.path = path
        self.key = key


class UnsupportedFormatError(CheckpointError, ValueError):
    """A file of another library's format (``torch.save``, ``.npz``, Keras ``.h5``) given as a checkpoint.

    The message says what the file is and what to use instead; ``path`` names it.

    Example:
        >>> import ckptcore as ck
        >>> issubclass(ck.UnsupportedFormatError, ValueError)
        True
    """

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class ShapeMismatchError(CheckpointError, ValueError):
    """A checkpointed value's shape differs from the live object's.

    Example:
        >>> import ckptcore as ck
        >>> issubclass(ck.ShapeMismatchError, ValueError)
        True
    """


class DtypeMismatchError(CheckpointError, ValueError):
    """A checkpointed value's dtype differs from the live object's.

    Example:
        >>> import ckptcore as ck
        >>> issubclass(ck.DtypeMismatchError, ValueError)
        True
    """


class UnsupportedDtypeError(CheckpointError, TypeError):
    """A value has a dtype ckptcore cannot store (object arrays, structured dtypes).

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> try:
        ...     ck.Checkpoint(a=np.array([{}], dtype=object)).write("memory://doc/unsupported")
        ... except ck.UnsupportedDtypeError as e:
        ...     print("object" in str(e))
        True
    """


class NotTrackableError(CheckpointError, ValueError):
    """No adapter knows how to checkpoint a value.

    Example:
        >>> import ckptcore as ck
        >>> try:
        ...     ck.Checkpoint(step=3)
        ... except ValueError as e:
        ...     print("step" in str(e))
        True
    """


class AdapterConflictError(CheckpointError, TypeError):
    """Two plugins claim the same type (or storage protocol) with equal priority.

    Example:
        >>> import ckptcore as ck
        >>> issubclass(ck.AdapterConflictError, ck.CheckpointError)
        True
    """


class StorageError(CheckpointError, OSError):
    """A storage backend failed (missing bucket, credentials, network).

    Example:
        >>> import ckptcore as ck
        >>> issubclass(ck.StorageError, OSError)
        True
    """


class AssertionFailedError(CheckpointError, AssertionError):
    """A load-status assertion failed; the message lists unmatched paths.

    Example:
        >>> import ckptcore as ck
        >>> try:
        ...     ck.Checkpoint().restore(None).assert_consumed()
        ... except AssertionError as e:
        ...     print(type(e).__name__)
        AssertionFailedError
    """


class PartialRestoreWarning(UserWarning):
    """Emitted once, when a Checkpoint whose restore left values unused is collected.

    Silence it with ``status.expect_partial()``.

    Example:
        >>> import ckptcore as ck
        >>> issubclass(ck.PartialRestoreWarning, UserWarning)
        True
    """
