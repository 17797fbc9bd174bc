"""``ck.CheckpointOptions``: keyword-only, immutable save/restore settings.

Example:
    >>> import ckptcore as ck
    >>> opts = ck.CheckpointOptions(enable_async=True)
    >>> opts.enable_async, opts.verify_checksums
    (True, True)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import InvalidArgumentError

__all__ = ["CheckpointOptions", "check_metadata", "resolve_options"]

MAX_METADATA_BYTES = 1 << 20


def resolve_options(options: Any) -> CheckpointOptions:
    """``options`` as given to ``save``/``write``/``restore``/``read``: None means the defaults.

    Anything but a :class:`CheckpointOptions` (a dict, say) is an
    :class:`~ckptcore.InvalidArgumentError` here, not an ``AttributeError`` deep inside.

    Example:
        >>> resolve_options(None).enable_async
        False
        >>> try:
        ...     resolve_options({"enable_async": True})
        ... except TypeError as e:
        ...     print(str(e).split(":")[0])
        options must be a ck.CheckpointOptions, got dict
    """
    if options is None:
        return CheckpointOptions()
    if isinstance(options, CheckpointOptions):
        return options
    hint = " (pass ck.CheckpointOptions(**options))" if isinstance(options, Mapping) else ""
    raise InvalidArgumentError(f"options must be a ck.CheckpointOptions, got {type(options).__name__}: "
                               f"{options!r}{hint}")


def check_metadata(metadata: Any) -> dict:
    """A copy of ``metadata`` once it is checked to be a small JSON object (a dict with string keys).

    Example:
        >>> check_metadata({"loss": 0.25})
        {'loss': 0.25}
        >>> try:
        ...     check_metadata({"w": object()})
        ... except Exception as e:
        ...     print(type(e).__name__)
        CheckpointError
    """
    from .errors import CheckpointError

    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise CheckpointError(f"checkpoint metadata must be a dict with string keys, got {type(metadata).__qualname__}")
    try:
        encoded = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint metadata is not JSON-serializable: {e}; pass numbers, strings, "
                              "booleans, None, lists and dicts (convert arrays with .tolist())") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise CheckpointError(f"checkpoint metadata is {len(encoded)} bytes of JSON; at most {MAX_METADATA_BYTES} "
                              "are allowed: save large values as tensors instead")
    return json.loads(encoded)


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions:
    """Options for ``save``/``write``/``restore``/``read``.

    Attributes:
        enable_async: ``save``/``write`` return once values are snapshotted in
            memory; the write continues on a background thread. ``sync()``
            waits for it and re-raises its failure.
        storage_options: passed to fsspec (credentials, endpoint, ...).
        verify_checksums: verify each tensor's CRC32C on restore (default on).
        verify_before_restore: on restore, first read the whole checkpoint and
            check every checksum, and only then assign values (default off).
            Restores read values straight into live arrays, so a corrupt tensor
            is found after its bytes are in place; with this option a corrupt
            checkpoint raises before any object changes. Costs one more read of
            the data (bounded memory: ``CheckpointReader.verify``).
        experimental_io_device: accepted for ``tf.train`` compatibility; ignored.
        format: the format ``save``/``write`` produce: ``"ckptcore"`` (the default) or
            ``"tensorflow"``, a TensorBundle checkpoint with TensorFlow's object graph and
            state file that ``tf.train.Checkpoint(...).restore`` reads (any registered
            format that writes). Reading needs no option: the format comes from the files.
        max_retries: retries of each failed request to an object store (5xx,
            throttling, connection resets), with exponential backoff; None
            keeps the storage's default (5).
        progress: show a progress bar (bytes, rate, ETA) on stderr while saving
            or restoring, when stderr is a terminal (default off; see
            :mod:`ckptcore.progress`). An async save draws it from its writer thread.
        metadata: small JSON-serializable dict saved in the checkpoint's index
            (a step, a loss, a git hash...), read back by
            ``ck.load_checkpoint(path).metadata``; at most 1 MiB encoded.
        process_group: the group of workers a save/restore is collective over
            (a ``torch.distributed`` process group, or a ``ckptcore.distributed.Group``);
            None: the default group when ``torch.distributed`` is initialized.
            See docs/distributed.md.
        collective_timeout: seconds each collective step of a multi-worker
            save/restore may wait for the other workers before it raises
            ``ckptcore.distributed.CollectiveTimeoutError`` (default 600).
        pinned_memory_bytes: at most this many bytes of page-locked ("pinned") host memory
            a save or restore may allocate to stage device tensors (CUDA) through; copies
            between device and pinned memory run at the bus's full speed. 0 (the default)
            stages nothing: device tensors go through ordinary host memory. The memory is
            given back when the operation ends (an async save: when its write finishes).
            Tensors that do not fit in what is left take the ordinary path.
            See docs/performance.md.

    Example:
        >>> import ckptcore as ck
        >>> ck.CheckpointOptions(storage_options={"anon": True}).storage_options["anon"]
        True
        >>> ck.CheckpointOptions(verify_before_restore=True).verify_before_restore
        True
        >>> ck.CheckpointOptions(metadata={"step": 7}).metadata["step"]
        7
    """

    enable_async: bool = False
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    verify_checksums: bool = True
    verify_before_restore: bool = False
    experimental_io_device: str | None = None
    max_retries: int | None = None
    format: str = "ckptcore"
    progress: bool = False
    metadata: Mapping[str, Any] | None = None
    process_group: Any = None
    collective_timeout: float | None = None
    pinned_memory_bytes: int = 0

    def __post_init__(self):
        for name in ("enable_async", "verify_checksums", "verify_before_restore", "progress"):
            value = getattr(self, name)
            if type(value) is not bool:
                raise InvalidArgumentError(f"CheckpointOptions({name}=...) must be True or False, got {value!r}")
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise InvalidArgumentError("CheckpointOptions(storage_options=...) must be a mapping (a dict of fsspec "
                                       f"options), got {type(self.storage_options).__name__}")
        if self.experimental_io_device is not None and not isinstance(self.experimental_io_device, str):
            raise InvalidArgumentError("CheckpointOptions(experimental_io_device=...) must be a string or None, got "
                                       f"{self.experimental_io_device!r}")
        retries = self.max_retries
        if retries is not None and (type(retries) is not int or retries < 0):
            raise InvalidArgumentError("CheckpointOptions(max_retries=...) must be a non-negative int or None, got "
                                       f"{retries!r}")
        pinned = self.pinned_memory_bytes
        if type(pinned) is not int or pinned < 0:
            raise InvalidArgumentError("CheckpointOptions(pinned_memory_bytes=...) must be a non-negative int (bytes), "
                                       f"got {pinned!r}")
        object.__setattr__(self, "storage_options", MappingProxyType(dict(self.storage_options or {})))
        if self.metadata is not None:
            object.__setattr__(self, "metadata", MappingProxyType(check_metadata(self.metadata)))
        if not isinstance(self.format, str):
            raise InvalidArgumentError(f"CheckpointOptions(format=...) must be a format name such as 'tensorflow', "
                                       f"not {type(self.format).__name__}")
        if self.format != "ckptcore":
            from .formats.base import writer

            writer(self.format)  # an unknown name fails here, naming the formats that write

    def __hash__(self):
        return hash((self.enable_async, tuple(sorted(self.storage_options)), self.verify_checksums))
