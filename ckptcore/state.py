"""The ``checkpoint`` state file: which checkpoints of a directory exist, newest last.

Like TensorFlow's ``checkpoint`` file, but JSON. It names checkpoints
relative to its directory, is replaced atomically, and is only updated after
the checkpoint it names is committed, so it never names a torn checkpoint.

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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptCheckpointError, NotFoundError
from .formats import ckpt as fmt
from .storage import open_storage

__all__ = ["CheckpointState", "read_state", "write_state", "latest_checkpoint", "join_url", "STATE_FILENAME"]

STATE_FILENAME = "checkpoint"
MAX_STATE_BYTES = 64 << 20


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

    def encode(self) -> bytes:
        return json.dumps({
            "format": "ckptcore-state", "version": 1,
            "model_checkpoint_path": self.latest,
            "all_model_checkpoint_paths": self.all,
            "all_model_checkpoint_timestamps": self.timestamps,
            "last_preserved_timestamp": self.last_preserved_timestamp,
        }, indent=1).encode()


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
    """Make ``name`` the latest checkpoint of ``directory`` (used by ``Checkpoint.save``).

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, d = open_storage("memory://doc/rs")
        >>> record_save(st, d, "ckpt-1"); read_state(st, d).all
        ['ckpt-1']
    """
    try:
        state = read_state(storage, directory, filename) or CheckpointState()
    except CorruptCheckpointError:
        state = CheckpointState()
    now = time.time()
    if name in state.all:
        i = state.all.index(name)
        del state.all[i]
        del state.timestamps[i]
    state.all.append(name)
    state.timestamps.append(now)
    state.latest = name
    write_state(storage, directory, state, filename)


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
    checkpoint_dir = os.fspath(checkpoint_dir)
    storage, d = open_storage(checkpoint_dir, storage_options)
    state = read_state(storage, d, latest_filename or STATE_FILENAME)
    if state is None:
        return None
    candidates = ([state.latest] if state.latest else []) + list(reversed(state.all))
    for name in candidates:
        if storage.exists(fmt.index_path(storage.join(d, name))):
            return join_url(checkpoint_dir, name)
    return None
