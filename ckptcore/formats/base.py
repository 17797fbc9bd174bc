"""The one interface every on-disk format implements, and how a file's own bytes pick one.

A format is a plugin: it registers a :class:`FormatRegistration` through the
``ckptcore_register_formats`` hook (ckptcore's own format, its older version,
TensorFlow's TensorBundle and safetensors register exactly the same way,
from :mod:`ckptcore.builtin.formats`). Nothing in the restore path asks which
format a checkpoint is: the reader asks this module, which asks each format
whether it recognises the bytes.

Call order, for a checkpoint at ``prefix``:

1. ``prefix.index`` exists: its first and last :data:`SNIFF_BYTES` bytes go to
   every format's :meth:`Format.sniff_index`; the first (highest priority) to
   say yes gets :meth:`Format.decode_index` with the whole file.
2. No ``prefix.index`` but ``prefix`` is a file: its first bytes go to
   :meth:`Format.sniff_file`; the format that says yes gets
   :meth:`Format.open_file`, which returns an :class:`~ckptcore.formats.ckpt.Index`
   whose ``data_files`` name the file itself, or raises an error that explains
   what the file is and what to use instead (a pickle is never unpickled).

Both return the same :class:`~ckptcore.formats.ckpt.Index` (an object graph
plus a tensor table), so restore, status assertions and ``load_checkpoint``
work on every format alike.

Example:
    >>> from ckptcore.formats import base
    >>> base.identify_bytes(b"PK\\x03\\x04" + bytes(60), "model.pt")
    'a zip archive (torch.save, numpy .npz or Keras .keras)'
"""

from __future__ import annotations

import dataclasses
from typing import Any

SNIFF_BYTES = 512

__all__ = ["Format", "FormatRegistration", "formats", "for_index", "for_file", "identify_bytes", "SNIFF_BYTES"]


class Format:
    """Base class of a checkpoint format: override what your format supports.

    ``name`` is a stable identifier (``"ckptcore"``, ``"tensorflow"``). A format
    that only reads implements the ``sniff_*``/``decode_index``/``open_file``
    pair it needs; one that also writes implements :meth:`encode_index`.

    Example:
        >>> from ckptcore.formats.base import Format
        >>> class Nothing(Format):
        ...     name = "nothing"
        >>> Nothing().sniff_index(b"", b""), Nothing().sniff_file(b"")
        (False, False)
    """

    name: str = ""

    def sniff_index(self, head: bytes, tail: bytes) -> bool:
        """Whether an index file starting with ``head`` and ending with ``tail`` is of this format."""
        return False

    def decode_index(self, raw: bytes, path: str, *, storage: Any = None, prefix: str | None = None):
        """Parse and validate the whole index file ``path``; return an ``Index``.

        ``storage`` and ``prefix`` let a format read what its index refers to
        (TensorFlow keeps its object graph in the data file). Raise
        :class:`~ckptcore.CorruptCheckpointError` naming ``path`` (and the key) on bad input.
        """
        raise NotImplementedError

    def sniff_file(self, head: bytes) -> bool:
        """Whether a single file (no ``.index`` beside it) starting with ``head`` is of this format."""
        return False

    def open_file(self, storage: Any, path: str, size: int, head: bytes):
        """An ``Index`` for the single file ``path`` of ``size`` bytes (starting with ``head``),
        or an error explaining why not."""
        raise NotImplementedError

    # -- writing (formats that write; chosen by ``CheckpointOptions(format=name)``) ---------------
    # Call order for one save: ``write_plan`` (data durable first, the index last, atomically), or for a
    # multi-worker save ``write_collective`` on every worker; then, for ``Checkpoint.save``, ``record_save``
    # (the directory's state file), or for a ``CheckpointManager`` save ``write_state`` (its whole list).
    writes: bool = False
    #: ``Checkpoint(root=m)`` records TensorFlow's edge ``root`` of node 0 to itself (TF's own files have it).
    root_self_edge: bool = False
    #: Object arrays of ``bytes`` are saved as variable-length string tensors (else they are refused).
    variable_length_strings: bool = False

    def write_plan(self, storage: Any, prefix: str, plan: Any, progress: Any = None) -> None:
        """Write a :class:`~ckptcore.save.plan.SavePlan` as a checkpoint at ``prefix``."""
        raise NotImplementedError(f"format {self.name!r} cannot write checkpoints")

    def record_save(self, storage: Any, directory: str, name: str) -> None:
        """Make ``name`` the latest checkpoint in ``directory``'s state file."""
        raise NotImplementedError(f"format {self.name!r} cannot write checkpoints")

    def write_collective(self, group: Any, storage: Any, prefix: str, make_plan: Any, *, timeout: Any = None,
                         on_commit: Any = None) -> None:
        """A multi-worker save: every worker of ``group`` calls this with its own ``make_plan``;
        each writes its share of the data, and one index commits the checkpoint
        (see :func:`ckptcore.distributed.save.collective_write` for the steps)."""
        from ..errors import CheckpointError

        raise CheckpointError(f"CheckpointOptions(format={self.name!r}): this format does not write multi-worker "
                              "checkpoints; save in ckptcore's format (the default)")

    def write_state(self, storage: Any, directory: str, state: Any) -> None:
        """Atomically replace ``directory``'s state file with a ``CheckpointManager``'s
        :class:`~ckptcore.state.CheckpointState` (its checkpoints, timestamps, last preserved time)."""
        raise NotImplementedError(f"format {self.name!r} cannot write checkpoints")


@dataclasses.dataclass(frozen=True)
class FormatRegistration:
    """One format offered by a plugin through ``ckptcore_register_formats``.

    Higher ``priority`` is asked first; ``plugin`` is filled in by the registry.

    Example:
        >>> from ckptcore.formats.base import Format, FormatRegistration
        >>> FormatRegistration(format=Format()).priority
        0
    """

    format: Format
    priority: int = 0
    plugin: str = ""


def formats() -> list[Format]:
    """Every registered format, highest priority first.

    Example:
        >>> from ckptcore.formats import base
        >>> [f.name for f in base.formats()][:2]
        ['ckptcore', 'tensorflow']
    """
    from .. import registry

    return registry.formats()


def writer(name: str) -> Format:
    """The registered format called ``name`` that writes checkpoints (``CheckpointOptions.format``).

    Example:
        >>> from ckptcore.formats import base
        >>> base.writer("tensorflow").name
        'tensorflow'
    """
    for f in formats():
        if f.name == name and f.writes:
            return f
    from ..errors import CheckpointError

    names = sorted({f.name for f in formats() if f.writes})
    raise CheckpointError(f"no checkpoint format {name!r} writes checkpoints; choose one of {names}")


def for_index(head: bytes, tail: bytes) -> Format | None:
    """The format of an index file with these first and last bytes, or None.

    Example:
        >>> from ckptcore.formats import base
        >>> base.for_index(b"CKPTIDX1" + bytes(56), b"").name
        'ckptcore'
    """
    for f in formats():
        if f.sniff_index(head, tail):
            return f
    return None


def for_file(head: bytes) -> Format | None:
    """The format of a single file starting with ``head``, or None.

    Example:
        >>> from ckptcore.formats import base
        >>> base.for_file(b"\\x80\\x02" + bytes(62)).name
        'foreign'
    """
    for f in formats():
        if f.sniff_file(head):
            return f
    return None


def identify_bytes(head: bytes, path: str = "") -> str | None:
    """A short description of what a file starting with ``head`` is, for error messages; None if unknown.

    Example:
        >>> identify_bytes(b"\\x93NUMPY" + bytes(10))
        'a numpy .npy array file'
    """
    if head.startswith(b"PK\x03\x04"):
        first = _zip_first_name(head)
        if first.endswith("data.pkl") or "/data/" in first or first.endswith(".data/version") or "archive/" in first:
            return "a torch.save file (a zip archive holding a pickle)"
        if first.endswith(".npy"):
            return "a numpy .npz archive"
        if first in ("metadata.json", "config.json", "model.weights.h5"):
            return "a Keras .keras archive"
        return "a zip archive (torch.save, numpy .npz or Keras .keras)"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (torch.save in its legacy format, or pickle.dump)"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy array file"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file (Keras .h5 weights)"
    if head.startswith(b"CKPTIDX1"):
        return "a ckptcore index file"
    if looks_like_safetensors(head):
        return "a safetensors file"
    return None


def _zip_first_name(head: bytes) -> str:
    """The name of the first member of a zip archive, from its local file header."""
    if len(head) < 30:
        return ""
    n = int.from_bytes(head[26:28], "little")
    return head[30:30 + n].decode("utf-8", "replace")


def looks_like_safetensors(head: bytes) -> bool:
    """A safetensors file: a little-endian u64 header length, then a JSON object.

    Example:
        >>> looks_like_safetensors((2).to_bytes(8, "little") + b"{}")
        True
    """
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n < (100 << 20) and head[8:9] == b"{"


def decode(raw: bytes, path: str, storage: Any, prefix: str):
    """``(format, Index)`` for the bytes of the index file ``path``, by the format that recognises them.

    Bytes no format recognises are parsed as ckptcore's own format, whose error
    names the bad magic, unless they are recognisably another library's file.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> from ckptcore.formats import base
        >>> p = ck.Checkpoint(a=np.ones(1)).write("memory://doc/base/decode")
        >>> st, sp = ck.storage.open_storage(p)
        >>> base.decode(st.read_bytes(sp + ".index"), sp + ".index", st, sp)[0].name
        'ckptcore'
    """
    f = for_index(bytes(raw[:SNIFF_BYTES]), bytes(raw[-SNIFF_BYTES:]))
    if f is None:
        what = identify_bytes(bytes(raw[:SNIFF_BYTES]))
        if what is not None and not what.startswith("a ckptcore"):
            from ..errors import UnsupportedFormatError

            raise UnsupportedFormatError(f"{path} is {what}, not a checkpoint index", path=path)
        from .ckpt import CkptFormat

        f = CkptFormat()
    return f, f.decode_index(raw, path, storage=storage, prefix=prefix)


def open_file(storage: Any, path: str, display: str, index_file: str):
    """``(format, Index)`` for a checkpoint given as one file (``model.safetensors``), when there is no index.

    A file of a format that is not read raises an error saying what it is and what to
    use instead; a missing file raises :class:`~ckptcore.NotFoundError` as before.

    Example:
        >>> import ckptcore as ck
        >>> from ckptcore.formats import base
        >>> st, sp = ck.storage.open_storage("memory://doc/base/none")
        >>> try:
        ...     base.open_file(st, sp, "memory://doc/base/none", sp + ".index")
        ... except ck.NotFoundError as e:
        ...     print(type(e).__name__)
        NotFoundError
    """
    from ..errors import NotFoundError

    missing = NotFoundError(f"no checkpoint at {display!r}: {index_file} does not exist. Pass the path returned by "
                            "save()/write() or ck.latest_checkpoint(dir).")
    try:
        if storage.isdir(path):
            raise missing
        size = storage.size(path)
    except (NotFoundError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise missing from None
    buf = bytearray(min(size, SNIFF_BYTES))
    with storage.open_reader(path) as rd:
        got = rd.readinto(0, memoryview(buf))
    head = bytes(buf[:got])
    f = for_file(head)
    if f is None:
        raise missing
    return f, f.open_file(storage, path, size, head)
