"""TensorFlow's string tensors (``DT_STRING``) in a TensorBundle data file: decoded and encoded, checksum included.

On disk (``tensor_bundle.cc``), a string tensor of ``n`` elements is the ``n`` element
lengths as varints, the masked CRC32C of those lengths, then the elements' bytes one
after another. The entry's CRC32C covers each length as a little-endian ``uint32``
(``uint64`` for an element of 4 GiB or more), the stored length checksum, and the bytes.

A string tensor reads as a numpy array of dtype ``object`` holding ``bytes`` (what
TensorFlow's own ``get_tensor`` returns); nothing is ever unpickled or evaluated. Every
length is bounded by the entry's size before anything is allocated, and the element
count by :data:`MAX_STRING_ELEMENTS`.

Example:
    >>> import numpy as np
    >>> from ckptcore.formats.tensorbundle.strings import encode_strings, decode_strings
    >>> raw, crc = encode_strings(np.array([b"a", b"bc", b""], dtype=object))
    >>> decode_strings(raw, (3,), crc, "x.data", "k").tolist()
    [b'a', b'bc', b'']
"""

from __future__ import annotations

import numpy as np

from ...errors import CorruptCheckpointError
from ..ckpt import crc32c
from .table import mask, put_varint, unmask

__all__ = ["MAX_STRING_ELEMENTS", "decode_strings", "encode_strings", "read_strings"]

# Each element costs a Python bytes object (~33 bytes) however short it is stored: this bounds
# what a hostile entry of many empty strings can make the reader allocate.
MAX_STRING_ELEMENTS = 1 << 24
_U32_MAX = 0xFFFFFFFF


def _corrupt(path: str, key: str, msg: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"checksum mismatch for tensor {key!r} in {path}: {msg}", path=path, key=key)


def _lengths_crc(lengths: np.ndarray) -> int:
    if not len(lengths) or int(lengths.max()) <= _U32_MAX:
        return crc32c(lengths.astype("<u4").tobytes())
    crc = 0
    for n in lengths.tolist():  # an element of 4 GiB or more: its length counts as 8 bytes
        crc = crc32c(n.to_bytes(4 if n <= _U32_MAX else 8, "little"), crc)
    return crc


def _varints(buf: np.ndarray, n: int, path: str, key: str) -> tuple[np.ndarray, int]:
    """The first ``n`` varints of ``buf`` (uint8) as uint64, and where they end; vectorized."""
    head = buf[:min(len(buf), 10 * n)]
    ends = np.flatnonzero(head < 0x80)[:n]
    if len(ends) < n:
        raise _corrupt(path, key, "its string lengths run past its size")
    stop = int(ends[-1]) + 1
    starts = np.concatenate([[0], ends[:-1] + 1])
    if int((ends - starts).max()) >= 10:
        raise _corrupt(path, key, "a string length is an overlong varint")
    body = head[:stop].astype(np.uint64) & np.uint64(0x7F)
    group = np.repeat(np.arange(n), (ends - starts + 1))
    shift = (np.arange(stop) - starts[group]).astype(np.uint64) * np.uint64(7)
    values = np.zeros(n, np.uint64)
    np.add.at(values, group, body << shift)  # groups do not overlap bits: the sum is the OR
    return values, stop


def decode_strings(raw, shape: tuple[int, ...], crc: int, path: str, key: str) -> np.ndarray:
    """The string tensor stored as ``raw`` (its entry's bytes), its checksum ``crc`` (unmasked) verified.

    Example:
        >>> raw, crc = encode_strings(np.array(b"hello", dtype=object))
        >>> decode_strings(raw, (), crc, "x.data", "k")[()]
        b'hello'
        >>> decode_strings(raw, (), crc ^ 1, "x.data", "k")
        Traceback (most recent call last):
        ...
        ckptcore.errors.CorruptCheckpointError: checksum mismatch for tensor 'k' in x.data: the checkpoint is corrupt
    """
    n = 1
    for d in shape:
        n *= int(d)
    size = len(raw)
    if n == 0:
        if size not in (0, 4) or (size == 4 and int.from_bytes(bytes(raw), "little") != mask(0)):
            raise _corrupt(path, key, f"{size} bytes stored for an empty string tensor")
        if crc != (0 if size == 0 else crc32c(bytes(raw))):
            raise _corrupt(path, key, "the checkpoint is corrupt")
        return np.empty(shape, object)
    if n > MAX_STRING_ELEMENTS:
        raise CorruptCheckpointError(f"tensor {key!r} in {path} has {n} strings; ckptcore reads at most "
                                     f"{MAX_STRING_ELEMENTS} per tensor", path=path, key=key)
    if size < n + 4:
        raise _corrupt(path, key, f"{size} bytes cannot hold {n} strings")
    buf = np.frombuffer(raw, np.uint8)
    lengths, pos = _varints(buf, n, path, key)
    data = pos + 4
    if int(lengths.max()) > size or int(lengths.sum()) != size - data:
        raise _corrupt(path, key, "its string lengths do not add up to its size")
    length_crc = _lengths_crc(lengths)
    stored = int.from_bytes(bytes(raw[pos:data]), "little")
    if unmask(stored) != length_crc or crc32c(buf[pos:], length_crc) != crc:
        raise _corrupt(path, key, "the checkpoint is corrupt")
    blob = bytes(raw[data:])
    offs = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64).tolist()
    out = np.empty(n, object)
    out[:] = [blob[a:b] for a, b in zip(offs, offs[1:])]
    return out.reshape(shape)


def encode_strings(arr) -> tuple[bytes, int]:
    """A string tensor's bytes as TensorFlow lays them out, and their (unmasked) CRC32C.

    ``arr`` holds ``bytes`` (or ``str``, written as UTF-8) in any shape.

    Example:
        >>> encode_strings(np.array([b"ab"], dtype=object))[0]  # length 2, its masked checksum, the bytes
        b'\\x02\\xd8\\xd8\\x10sab'
    """
    items = [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in np.asarray(arr, object).reshape(-1)]
    head = bytearray()
    for x in items:
        put_varint(head, len(x))
    crc = _lengths_crc(np.array([len(x) for x in items], np.uint64))
    stored = mask(crc).to_bytes(4, "little")
    body = b"".join(items)
    return bytes(head) + stored + body, crc32c(body, crc32c(stored, crc))


def read_strings(storage, data_file: str, offset: int, size: int, shape: tuple[int, ...], crc: int,
                 path: str, key: str) -> np.ndarray:
    """Read and decode the string tensor at ``[offset, offset + size)`` of ``data_file`` (see :func:`decode_strings`).

    Example:
        >>> from ckptcore.storage import open_storage
        >>> s, p = open_storage("memory://doc/tfstrings/x")
        >>> raw, crc = encode_strings(np.array([b"ab", b"c"], dtype=object)); s.write_atomic(p, raw)
        >>> read_strings(s, p, 0, len(raw), (2,), crc, p, "k").tolist()
        [b'ab', b'c']
    """
    buf = bytearray(size)
    with storage.open_reader(data_file) as rd:
        if size and rd.readinto(offset, memoryview(buf)) != size:
            raise CorruptCheckpointError(f"data file {data_file} is truncated: tensor {key!r} is incomplete",
                                         path=data_file, key=key)
    return decode_strings(buf, shape, crc, data_file, key)
