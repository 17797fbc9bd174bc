"""TensorFlow's ``checkpoint`` state file: a text-format ``CheckpointState`` message.

TensorFlow writes, in the checkpoint directory::

    model_checkpoint_path: "ckpt-2"
    all_model_checkpoint_paths: "ckpt-1"
    all_model_checkpoint_paths: "ckpt-2"
    all_model_checkpoint_timestamps: 1700000000.5
    ...

Paths are relative to the directory, or absolute; an absolute path inside the
directory is taken by its name. A path elsewhere is not managed by a ckptcore
manager (it names no file of this directory), so it is left out of the list, and
taken as the latest only if it is the latest.

A ``CheckpointManager`` saving in TensorFlow's format writes the file as
TensorFlow's manager does, with one comment line first, ``# ckptcore-crc32c: N``,
the CRC32C of the rest: TensorFlow's parser skips comments, and ckptcore detects
a damaged file (as it does for its own JSON state file).

Example:
    >>> s = parse_text_state(b'model_checkpoint_path: "ckpt-2"\\nall_model_checkpoint_paths: "ckpt-2"\\n',
    ...                      "run/checkpoint", "run")
    >>> s.latest, s.all
    ('ckpt-2', ['ckpt-2'])
"""

from __future__ import annotations

import posixpath

from ...errors import CorruptCheckpointError
from .protos import message

CRC_COMMENT = b"# ckptcore-crc32c: "


def _name(p: str, directory: str) -> str | None:
    if "/" not in p and "\\" not in p and p not in ("", ".", ".."):
        return p
    d = directory.rstrip("/")
    if posixpath.isabs(p) and posixpath.dirname(p) == d:
        return posixpath.basename(p) or None
    return None


def parse_text_state(raw: bytes, path: str, directory: str):
    """A :class:`~ckptcore.state.CheckpointState` for the text-format state file ``path`` of ``directory``.

    Raises :class:`~ckptcore.CorruptCheckpointError` naming ``path`` if it does not parse.
    """
    from google.protobuf import text_format

    from ...state import CheckpointState

    if raw.startswith(CRC_COMMENT):  # written by ckptcore's manager: the rest must match its checksum
        from .. import ckpt as fmt

        line, _, rest = raw.partition(b"\n")
        stored = line[len(CRC_COMMENT):].strip()
        if not stored.isdigit() or int(stored) != fmt.crc32c(rest):
            raise CorruptCheckpointError(f"checkpoint state file {path} is corrupt: its checksum does not match its "
                                         "content (the file was damaged)", path=path)
    try:
        msg = text_format.Parse(raw.decode("utf-8"), message("CheckpointState")())
    except Exception as e:  # text_format.ParseError, UnicodeDecodeError
        raise CorruptCheckpointError(f"checkpoint state file {path} is corrupt: neither ckptcore's JSON nor "
                                     f"TensorFlow's text format ({type(e).__name__}: {e})", path=path) from None
    names, stamps = [], []
    for i, p in enumerate(msg.all_model_checkpoint_paths):
        n = _name(p, directory)
        if n is not None:
            names.append(n)
            stamps.append(float(msg.all_model_checkpoint_timestamps[i])
                          if i < len(msg.all_model_checkpoint_timestamps) else 0.0)
    latest = _name(msg.model_checkpoint_path, directory) if msg.model_checkpoint_path else None
    if latest is not None and latest not in names:
        names.append(latest)
        stamps.append(0.0)
    return CheckpointState(latest=latest, all=names, timestamps=stamps,
                           last_preserved_timestamp=msg.last_preserved_timestamp or None, format="tensorflow")


def encode_text_state(state, checksum: bool = False) -> bytes:
    """The text-format bytes TensorFlow writes for ``state`` (names relative to the directory).

    With ``checksum``, the first line is the comment ``# ckptcore-crc32c: N`` (the
    CRC32C of the rest), which TensorFlow ignores and ckptcore verifies.

    Example:
        >>> from ckptcore.state import CheckpointState
        >>> print(encode_text_state(CheckpointState(latest="ckpt-1", all=["ckpt-1"], timestamps=[1.5])).decode())
        model_checkpoint_path: "ckpt-1"
        all_model_checkpoint_paths: "ckpt-1"
        all_model_checkpoint_timestamps: 1.5
        <BLANKLINE>
    """
    from google.protobuf import text_format

    msg = message("CheckpointState")(model_checkpoint_path=state.latest or "",
                                     all_model_checkpoint_paths=list(state.all),
                                     all_model_checkpoint_timestamps=list(state.timestamps))
    if state.last_preserved_timestamp:
        msg.last_preserved_timestamp = state.last_preserved_timestamp
    body = text_format.MessageToString(msg).encode("utf-8")
    if not checksum:
        return body
    from .. import ckpt as fmt

    return CRC_COMMENT + str(fmt.crc32c(body)).encode() + b"\n" + body
