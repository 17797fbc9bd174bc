"""Partitioned (sliced) variables of a TensorBundle: TensorFlow's slice entries, read as the whole tensor.

A variable TensorFlow saved in slices (a ``tf.compat.v1`` partitioner, a
``ShardedVariable``, or ``MaxShardSizePolicy`` splitting a large variable across
shards) has one *full* entry under its own key: its dtype, its whole shape and a
list of ``TensorSliceProto`` (one ``Extent`` per dimension: ``start`` and
``length``, no length meaning the whole dimension), but no data. Each slice is an
ordinary entry of its own, keyed by TensorFlow's ``EncodeTensorNameSlice``: in
*OrderedCode* (``ordered_code.cc``), the number 0, the full key as a string, the
rank, then each dimension's start and length as signed numbers (a whole dimension
is start 0, length -1).

ckptcore turns each sliced variable into one tensor row whose *pieces*
(:mod:`ckptcore.formats.pieces`) are the slices, so ``get_tensor``, restore and
``verify`` assemble it with the same code that reads ckptcore's own sharded
tensors. Everything is checked first: every slice lies inside the shape, its entry
exists with the same dtype and the slice's shape and size, and the slices tile the
tensor exactly (no overlap, nothing missing).

Example:
    >>> from ckptcore.formats.tensorbundle.slices import encode_slice_key, decode_slice_key
    >>> k = encode_slice_key("emb", [2, 0], [2, -1])
    >>> k
    b'\\x00emb\\x00\\x01\\x01\\x02\\x82\\x82\\x80\\x7f'
    >>> decode_slice_key(k)
    ('emb', (2, 0), (2, -1))
"""

from __future__ import annotations

import numpy as np

from ...errors import CorruptCheckpointError
from ..pieces import MAX_PIECES_PER_TENSOR

__all__ = ["encode_slice_key", "decode_slice_key", "slice_boxes", "check_tiling", "write_num_increasing",
           "write_signed_num_increasing", "write_string"]


# -- OrderedCode, as TensorFlow's slice keys use it ----------------------------------------------------------


def write_num_increasing(out: bytearray, v: int) -> None:
    """An unsigned number: one length byte, then its big-endian bytes without leading zeros.

    Example:
        >>> b = bytearray(); write_num_increasing(b, 0); write_num_increasing(b, 258); bytes(b)
        b'\\x00\\x02\\x01\\x02'
    """
    if not 0 <= v < 1 << 64:
        raise ValueError(f"{v} is not an unsigned 64-bit number")
    raw = v.to_bytes(8, "big").lstrip(b"\x00")
    out.append(len(raw))
    out += raw


def write_string(out: bytearray, s: bytes) -> None:
    """A string: ``\\x00`` escaped as ``\\x00\\xff``, ``\\xff`` as ``\\xff\\x00``, then the separator ``\\x00\\x01``.

    Example:
        >>> b = bytearray(); write_string(b, b"a\\x00\\xff"); bytes(b)
        b'a\\x00\\xff\\xff\\x00\\x00\\x01'
    """
    if b"\x00" in s or b"\xff" in s:
        s = b"".join(b"\x00\xff" if c == 0 else b"\xff\x00" if c == 0xFF else bytes((c,)) for c in s)
    out += s
    out += b"\x00\x01"


# header bits of the first two bytes for each encoded length (TensorFlow's kLengthToHeaderBits)
_HEADER = {2: (0xC0, 0), 3: (0xE0, 0), 4: (0xF0, 0), 5: (0xF8, 0), 6: (0xFC, 0), 7: (0xFE, 0),
           8: (0xFF, 0), 9: (0xFF, 0x80), 10: (0xFF, 0xC0)}


def write_signed_num_increasing(out: bytearray, v: int) -> None:
    """A signed number: sign bit, as many length bits as extra bytes, then the value (two's complement).

    Example:
        >>> b = bytearray()
        >>> for v in (0, 4, -1, 64, -65): write_signed_num_increasing(b, v)
        >>> bytes(b).hex(" ")
        '80 84 7f c0 40 3f bf'
    """
    if not -(1 << 63) <= v < 1 << 63:
        raise ValueError(f"{v} is not a signed 64-bit number")
    x = ~v if v < 0 else v
    if x < 64:
        out.append((0x80 ^ v) & 0xFF)
        return
    n = x.bit_length() // 7 + 1
    raw = bytearray((v & ((1 << 80) - 1)).to_bytes(10, "big")[10 - n:])  # sign-extended, its last n bytes
    a, b = _HEADER[n]
    raw[0] ^= a
    raw[1] ^= b
    out += raw


def _read_num_increasing(buf: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise ValueError("truncated number")
    n = buf[pos]
    if n > 8 or pos + 1 + n > len(buf):
        raise ValueError("bad number")
    return int.from_bytes(buf[pos + 1:pos + 1 + n], "big"), pos + 1 + n


def _read_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    n = len(buf)
    while pos + 1 < n:
        c = buf[pos]
        if c == 0:
            d = buf[pos + 1]
            if d == 1:
                return bytes(out), pos + 2
            if d != 0xFF:
                raise ValueError("bad escape")
            out.append(0)
            pos += 2
        elif c == 0xFF:
            if buf[pos + 1] != 0:
                raise ValueError("bad escape")
            out.append(0xFF)
            pos += 2
        else:
            out.append(c)
            pos += 1
    raise ValueError("unterminated string")


def _read_signed(buf: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise ValueError("truncated number")
    neg = not buf[pos] & 0x80
    flip = 0xFF if neg else 0
    first = buf[pos] ^ flip
    if first != 0xFF:
        n = 1
        while first & (0x80 >> n):
            n += 1
    else:
        if pos + 1 >= len(buf):
            raise ValueError("truncated number")
        second = buf[pos + 1] ^ flip
        n = 8 if second < 0x80 else 9 if second < 0xC0 else 10
    if pos + n > len(buf):
        raise ValueError("truncated number")
    raw = bytearray(buf[pos:pos + n])
    if n == 1:
        raw[0] ^= 0x80
    else:
        a, b = _HEADER[n]
        raw[0] ^= a
        raw[1] ^= b
    v = int.from_bytes(raw, "big", signed=True)
    if not -(1 << 63) <= v < 1 << 63:
        raise ValueError("number out of range")
    return v, pos + n


def encode_slice_key(name: str | bytes, starts, lengths) -> bytes:
    """TensorFlow's table key of one slice of tensor ``name`` (``EncodeTensorNameSlice``); length -1: the whole dim.

    Example:
        >>> encode_slice_key("w", [0], [-1])
        b'\\x00w\\x00\\x01\\x01\\x01\\x80\\x7f'
    """
    out = bytearray()
    write_num_increasing(out, 0)
    write_string(out, name.encode("utf-8") if isinstance(name, str) else bytes(name))
    write_num_increasing(out, len(starts))
    for s, n in zip(starts, lengths, strict=True):
        write_signed_num_increasing(out, int(s))
        write_signed_num_increasing(out, int(n))
    return bytes(out)


def decode_slice_key(key: bytes) -> tuple[str, tuple[int, ...], tuple[int, ...]] | None:
    """``(name, starts, lengths)`` of a slice key, or None if ``key`` is not one.

    Example:
        >>> decode_slice_key(b"dense/kernel") is None
        True
    """
    try:
        zero, pos = _read_num_increasing(key, 0)
        if zero != 0:
            return None
        name, pos = _read_string(key, pos)
        rank, pos = _read_num_increasing(key, pos)
        if not 0 < rank <= 64:
            return None
        starts, lengths = [], []
        for _ in range(rank):
            s, pos = _read_signed(key, pos)
            n, pos = _read_signed(key, pos)
            starts.append(s)
            lengths.append(n)
        if pos != len(key):
            return None
        return name.decode("utf-8", "surrogateescape"), tuple(starts), tuple(lengths)
    except ValueError:
        return None


# -- the slices of one full entry -----------------------------------------------------------------------------


def _bad(path: str, key: str, msg: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"corrupt TensorFlow checkpoint index {path}: tensor {key!r}: {msg}",
                                  path=path, key=key)


def slice_boxes(entry, shape: tuple[int, ...], path: str, key: str) -> list[tuple[tuple, tuple, tuple]]:
    """Each ``TensorSliceProto`` of a full entry as ``(start, extent, key lengths)``, checked against ``shape``.

    ``key lengths`` are the lengths its slice key encodes (-1 where the extent has no length).
    """
    n = len(entry.slices)
    if n > MAX_PIECES_PER_TENSOR:
        raise _bad(path, key, f"{n} slices (at most {MAX_PIECES_PER_TENSOR})")
    if not shape:
        raise _bad(path, key, "a scalar cannot be sliced")
    out = []
    for i, sl in enumerate(entry.slices):
        if len(sl.extent) != len(shape):
            raise _bad(path, key, f"slice {i} has {len(sl.extent)} extents for a tensor of rank {len(shape)}")
        start, extent, klen = [], [], []
        for d, (e, dim) in enumerate(zip(sl.extent, shape)):
            if e.HasField("length"):
                s, ln = int(e.start), int(e.length)
                if s < 0 or ln < 0 or s + ln > dim:
                    raise _bad(path, key, f"slice {i} (start {s}, length {ln} in dimension {d}) lies outside "
                                          f"its shape {list(shape)}")
                start.append(s)
                extent.append(ln)
                klen.append(ln)
            else:  # the whole dimension
                if e.start != 0:
                    raise _bad(path, key, f"slice {i} starts at {e.start} in dimension {d} with no length")
                start.append(0)
                extent.append(dim)
                klen.append(-1)
        out.append((tuple(start), tuple(extent), tuple(klen)))
    return out


def check_tiling(boxes: list[tuple[tuple, tuple]], shape: tuple[int, ...], path: str, key: str) -> None:
    """Raise unless the boxes ``(start, extent)`` cover ``shape`` exactly once: no overlap, nothing missing.

    Example:
        >>> check_tiling([((0, 0), (2, 3)), ((2, 0), (1, 3))], (3, 3), "x.index", "w")
        >>> check_tiling([((0, 0), (2, 3))], (3, 3), "x.index", "w")
        Traceback (most recent call last):
        ...
        ckptcore.errors.CorruptCheckpointError: corrupt TensorFlow checkpoint index x.index: tensor 'w': its \
slices cover 6 of its 9 elements
    """
    total = 1
    for d in shape:
        total *= d
    vols = [int(np.prod(e, dtype=object)) for _, e in boxes]
    covered = sum(vols)
    if covered != total:
        raise _bad(path, key, f"its slices cover {covered} of its {total} elements")
    nonempty = [b for b, v in zip(boxes, vols) if v]
    if len(nonempty) > 1:
        lo = np.array([s for s, _ in nonempty], np.int64)
        hi = lo + np.array([e for _, e in nonempty], np.int64)
        for a in range(len(lo) - 1):  # equal volumes and no two boxes overlapping: they tile the tensor
            inter = (np.minimum(hi[a], hi[a + 1:]) > np.maximum(lo[a], lo[a + 1:])).all(axis=1)
            if inter.any():
                raise _bad(path, key, "two of its slices overlap")
