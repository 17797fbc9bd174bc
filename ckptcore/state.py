"""The ``checkpoint`` state file: which checkpoints of a directory exist, newest last.

Like TensorFlow's ``checkpoint`` file, but JSON. It names checkpoints
relative to its directory, is replaced atomically, and is only updated after
the checkpoint it names is committed, so it never names a torn checkpoint.

The file describes itself: it is a JSON object whose first member is
``"format": "ckptcore-state"`` (:func:`is_ckptcore_state` tells it from
TensorFlow's text-format ``checkpoint`` file), and since version 2 it carries
the CRC32C of its content, so a damaged file is an error
(:class:`~ckptcore.CorruptCheckpointError`), never a silently different list.
``Checkpoint.save`` records only the checkpoint it wrote (as TensorFlow's
does); a ``CheckpointManager`` records the checkpoints it manages.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> ckpt = ck.Checkpoint(a=np.ones(1))
    >>> _ = ckpt.save("memory://doc/state/ckpt")
    >>> ck.latest_checkpoint("memory://doc/state")
    'memory://doc/state/ckpt-1'
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptCheckpointError, NotFoundError
from .formats import ckpt as fmt
from .storage import open_storage

__all__ = ["CheckpointState", "read_state", "write_state", "latest_checkpoint", "join_url", "STATE_FILENAME",
           "is_ckptcore_state"]

STATE_FILENAME = "checkpoint"
MAX_STATE_BYTES = 64 << 20
STATE_FORMAT = "ckptcore-state"
STATE_VERSION = 2


def _canonical(doc: Mapping[str, Any]) -> bytes:
    """The bytes the state file's checksum covers: its members (all but ``crc32c``), in one spelling."""
    return json.dumps({k: v for k, v in doc.items() if k != "crc32c"}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode()


def is_ckptcore_state(raw: bytes) -> bool:
    """Whether the bytes of a ``checkpoint`` file are ckptcore's JSON state file (not TF's text format).

    ckptcore's file is a JSON object (it starts with ``{``); TensorFlow's
    ``CheckpointState`` text format starts with a field name or a ``#`` comment.

    Example:
        >>> is_ckptcore_state(b'{"format": "ckptcore-state"}'), is_ckptcore_state(b'model_checkpoint_path: "c-1"')
        (True, False)
    """
    return raw.lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"{")


@dataclass
class CheckpointState:
    """Parsed state file: names relative to the directory, oldest first.

    Example:
        >>> CheckpointState(latest="ckpt-2", all=["ckpt-1", "ckpt-2"]).latest
        'ckpt-2'
    """

    latest: str | None = None
    all: list[str] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    last_preserved_timestamp: float | None = None
    format: str = "ckptcore"  # whose state file it was read from: "ckptcore" (JSON) or "tensorflow" (text)

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "model_checkpoint_path": self.latest,
            "all_model_checkpoint_paths": list(self.all),
            "all_model_checkpoint_timestamps": [float(t) for t in self.timestamps],
            "last_preserved_timestamp": self.last_preserved_timestamp,
        }
        doc["crc32c"] = fmt.crc32c(_canonical(doc))
        return json.dumps(doc, indent=1, allow_nan=False).encode()


def join_url(directory: str, name: str) -> str:
    """Join a directory (local path or URL) and a name the way the user wrote the directory.

    Example:
        >>> join_url("s3://b/run/", "ckpt-1"), join_url("run", "ckpt-1")
        ('s3://b/run/ckpt-1', 'run/ckpt-1')
    """
    directory = os.fspath(directory)
    if "://" in directory:
        return directory.rstrip("/") + "/" + name
    return os.path.join(directory, name)


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") \
        and "\x00" not in name


def read_state(storage, directory: str, filename: str = STATE_FILENAME) -> CheckpointState | None:
    """Read and validate the state file of ``directory``; None if there is none.

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, d = open_storage("memory://doc/nostate")
        >>> read_state(st, d) is None
        True
    """
    path = storage.join(directory, filename)
    try:
        raw = storage.read_bytes(path, limit=MAX_STATE_BYTES + 1)
    except (NotFoundError, FileNotFoundError):
        return None
    if len(raw) > MAX_STATE_BYTES:
        raise CorruptCheckpointError(f"checkpoint state file {path} is too large", path=path)
    if raw.lstrip()[:1] not in (b"{", b""):  # TensorFlow's text-format CheckpointState
        from .formats.tensorbundle.state import parse_text_state

        return parse_text_state(raw, path, directory)
    try:
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        _check_integrity(doc)
        latest = doc.get("model_checkpoint_path")
        names = doc.get("all_model_checkpoint_paths") or []
        stamps = doc.get("all_model_checkpoint_timestamps") or []
        preserved = doc.get("last_preserved_timestamp")
        if latest is not None and not _valid_name(latest):
            raise ValueError(f"invalid checkpoint name {latest!r}")
        if not isinstance(names, list) or not all(_valid_name(n) for n in names):
            raise ValueError("invalid all_model_checkpoint_paths")
        if not isinstance(stamps, list) or not all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                                   for t in stamps):
            raise ValueError("invalid timestamps")
        if preserved is not None and (not isinstance(preserved, (int, float)) or isinstance(preserved, bool)):
            raise ValueError("invalid last_preserved_timestamp")
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptCheckpointError(f"checkpoint state file {path} is corrupt: {e}", path=path) from None
    if len(stamps) != len(names):
        stamps = [0.0] * len(names)
    return CheckpointState(latest=latest, all=list(names), timestamps=[float(t) for t in stamps],
                           last_preserved_timestamp=None if preserved is None else float(preserved))


def _check_integrity(doc: dict) -> None:
    """Raise ValueError unless ``doc`` is an undamaged state file (version 2+: its checksum matches)."""
    fmt_name, version = doc.get("format", STATE_FORMAT), doc.get("version", 1)
    if fmt_name != STATE_FORMAT:
        raise ValueError(f"not a ckptcore state file (format {fmt_name!r})")
    crc = doc.get("crc32c")
    if crc is None:
        if version == 1:  # written by ckptcore before state files carried a checksum
            return
        raise ValueError("its checksum is missing")
    if isinstance(version, bool) or not isinstance(version, int) or version < 2:
        raise ValueError(f"invalid version {version!r}")
    if version > STATE_VERSION:
        raise ValueError(f"version {version} is newer than this ckptcore reads ({STATE_VERSION}); upgrade ckptcore")
    try:
        actual = fmt.crc32c(_canonical(doc))
    except ValueError:  # NaN/inf smuggled in
        raise ValueError("it holds a non-finite number") from None
    if isinstance(crc, bool) or crc != actual:
        raise ValueError("its checksum does not match its content (the file was damaged)")


def write_state(storage, directory: str, state: CheckpointState, filename: str = STATE_FILENAME) -> None:
    """Atomically replace the state file of ``directory``.

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, d = open_storage("memory://doc/ws")
        >>> write_state(st, d, CheckpointState(latest="ckpt-1", all=["ckpt-1"], timestamps=[0.0]))
        >>> read_state(st, d).latest
        'ckpt-1'
    """
    storage.write_atomic(storage.join(directory, filename), state.encode())


def record_save(storage, directory: str, name: str, filename: str = STATE_FILENAME) -> None:
    """Make ``name`` the latest (and only listed) checkpoint of ``directory`` (used by ``Checkpoint.save``).

    As TensorFlow's ``Checkpoint.save`` does, the file then lists just that
    checkpoint, and no retention bookkeeping: a ``CheckpointManager`` opened
    on the directory later manages none of these checkpoints (it never
    deletes what it did not create).

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, d = open_storage("memory://doc/rs")
        >>> record_save(st, d, "ckpt-1"); record_save(st, d, "ckpt-2"); read_state(st, d).all
        ['ckpt-2']
    """
    write_state(storage, directory, CheckpointState(latest=name, all=[name], timestamps=[time.time()]), filename)


_NUMBERED = re.compile(r"(.+)-(-?\d+)")


def newer_on_storage(storage, directory: str, state: CheckpointState,
                     name_prefix: str | None = None) -> list[tuple[str, float]]:
    """Checkpoints committed after the state file's latest, oldest first, as ``[(name, time)]``.

    On object stores a PUT the client gave up on (a timeout, then a retry that
    succeeded) can still be applied later, putting an older state file back:
    ``latest_checkpoint`` would move backwards and the newer checkpoints would
    be neither named nor managed. So a state file is never trusted over what is
    on storage: one listing finds the indexes of the same name
    (``{name_prefix}-{number}.index``, by default the latest's prefix)
    modified after the latest's index (equal times: a higher number is newer).
    Storages where that cannot happen (local disk: atomic renames) return ``[]``.

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, d = open_storage("memory://doc/newer")
        >>> newer_on_storage(st, d, CheckpointState(latest="ckpt-1", all=["ckpt-1"]))
        []
    """
    if not getattr(storage, "state_may_roll_back", False) or not hasattr(storage, "list_modified"):
        return []
    m = _NUMBERED.fullmatch(state.latest or "")
    if m is None or m.group(1) != (name_prefix or m.group(1)):
        return []  # the state file names no checkpoint of this name: nothing it could have rolled back
    name_prefix = m.group(1)
    times = storage.list_modified(directory)
    suffix = fmt.INDEX_SUFFIX
    floor = (times.get(m.group(0) + suffix, float("-inf")), int(m.group(2)))
    found = []
    for fname, t in times.items():
        if not fname.endswith(suffix):
            continue
        n = _NUMBERED.fullmatch(fname[:-len(suffix)])
        if n is None or n.group(1) != name_prefix:
            continue
        key = (t, int(n.group(2)))
        if key > floor:
            found.append((key, fname[:-len(suffix)]))
    return [(name, key[0]) for key, name in sorted(found)]


def latest_checkpoint(checkpoint_dir: str, latest_filename: str | None = None,
                      storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The path of the newest complete checkpoint in ``checkpoint_dir``, or None.

    Reads the state file (no listing needed, so it is exact on object stores)
    and returns only checkpoints whose index exists.

    Example:
        >>> import ckptcore as ck
        >>> ck.latest_checkpoint("memory://doc/empty-dir") is None
        True
    """
    from .storage.paths import check_checkpoint_path

    checkpoint_dir = check_checkpoint_path(checkpoint_dir, "directory")
    storage, d = open_storage(checkpoint_dir, storage_options)
    state = read_state(storage, d, latest_filename or STATE_FILENAME)
    if state is None:
        return None
    candidates = ([state.latest] if state.latest else []) + list(reversed(state.all))
    newer = newer_on_storage(storage, d, state)
    if newer:
        return join_url(checkpoint_dir, newer[-1][0])
    for name in candidates:
        if storage.exists(fmt.index_path(storage.join(d, name))):
            return join_url(checkpoint_dir, name)
    return None
