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
    "StoragePermissionError",
    "InvalidPathError",
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


class InvalidArgumentError(CheckpointError, ValueError, TypeError):
    """An option, adapter or argument is invalid where it is made (a wrong type or value).

    Both a ``ValueError`` and a ``TypeError``, as the builtin a caller would expect may be either.

    Example:
        >>> import ckptcore as ck
        >>> try:
        ...     ck.CheckpointOptions(max_retries=-1)
        ... except ValueError as e:
        ...     print(type(e).__name__)
        InvalidArgumentError
    """


class ContainerModifiedError(CheckpointError, ValueError):
    """A list or dict given to a ``ck.Module``/``ck.Checkpoint`` was changed behind its tracked wrapper.

    Saving it would write a different structure from the one the user holds (as TF's
    ``ListWrapper``/``_DictWrapper``, ckptcore refuses); assign it again to adopt the change.

    Example:
        >>> import ckptcore as ck
        >>> m = ck.Module(); vs = []; m.vs = vs; vs.append(ck.Variable(1.0))
        >>> try:
        ...     ck.Checkpoint(m=m).write("memory://doc/cme/c")
        ... except ck.ContainerModifiedError as e:
        ...     print(str(e).split(":")[0])
        m/vs
    """


class AdapterStateError(CheckpointError, ValueError):
    """An adapter refused or failed to restore an object's saved state; the message names the object path.

    Raised before any value is assigned when an adapter's ``validate_state`` refuses the state,
    and in place of whatever ``set_state`` raised if it fails afterwards.

    Example:
        >>> import ckptcore as ck
        >>> issubclass(ck.AdapterStateError, ValueError)
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

    def __str__(self) -> str:  # the message, even where ``errno``/``filename`` are set
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class StoragePermissionError(StorageError, PermissionError):
    """Storage refused access: a read-only directory, a file without permission, denied credentials.

    It is a :class:`StorageError` and a ``PermissionError``.

    Example:
        >>> import ckptcore as ck
        >>> E = ck.StoragePermissionError
        >>> issubclass(E, PermissionError), issubclass(E, ck.StorageError)
        (True, True)
    """


class InvalidPathError(CheckpointError, ValueError):
    """A checkpoint path that is almost certainly a mistake (``s3:/b/x``, ``""``, ``"run/"``); says what to write.

    Example:
        >>> import ckptcore as ck
        >>> try:
        ...     ck.Checkpoint().save("")
        ... except ck.InvalidPathError as e:
        ...     print(isinstance(e, ValueError), "did you mean" in str(e))
        True True
    """


def storage_error(exc: BaseException, what: str, path: str) -> CheckpointError:
    """The ckptcore error for an ``OSError`` raised while doing ``what`` ("write", "read", ...) to ``path``.

    A missing file is :class:`NotFoundError`, denied access
    :class:`StoragePermissionError`, anything else (a full disk, an I/O
    error) :class:`StorageError`. The message names the file; ``errno`` and
    ``filename`` are kept.

    Example:
        >>> import errno
        >>> e = storage_error(OSError(errno.ENOSPC, "No space left on device"), "write", "/run/ckpt-1.index")
        >>> type(e).__name__, e.errno == errno.ENOSPC, e.filename
        ('StorageError', True, '/run/ckpt-1.index')
        >>> str(e)
        'cannot write /run/ckpt-1.index: No space left on device (the disk is full: free space or save elsewhere)'
    """
    import errno as _errno

    if isinstance(exc, CheckpointError):
        return exc
    code = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        err: CheckpointError = NotFoundError(f"cannot {what} {path}: {reason}")
    elif isinstance(exc, PermissionError) or code in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
        err = StoragePermissionError(f"cannot {what} {path}: {reason} (check the permissions of the directory, "
                                     "or save elsewhere)")
    else:
        hint = ""
        if code in (_errno.ENOSPC, getattr(_errno, "EDQUOT", -1)):
            hint = " (the disk is full: free space or save elsewhere)"
        err = StorageError(f"cannot {what} {path}: {reason}{hint}")
    if isinstance(err, OSError):
        err.errno = code
        err.filename = path
    return err


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
