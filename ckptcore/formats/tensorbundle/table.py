"""The sorted key/value table a TensorBundle ``.index`` file is (LevelDB's table format).

Layout, from the format's description (TensorFlow's ``table_format.txt``): a sequence of
blocks, then a metaindex block and an index block, then a 48-byte footer. A block is
entries ``varint32 shared, varint32 unshared, varint32 value_length, key[shared:], value``
(each key stored as the part it does not share with the previous key), then restart
points (``uint32`` offsets of entries stored whole) and their count. Each block is
followed by a one-byte compression type (0 none, 1 snappy) and the masked CRC32C of the
block and that byte. The index block maps a separator key ``>=`` every key of a data block
to that block's handle (``varint64 offset, varint64 size``). The footer holds the
metaindex and index handles, zero padding to 40 bytes, and the magic number.

Everything read is bounded before use: a hostile file raises
:class:`~ckptcore.CorruptCheckpointError` naming it, never allocates more than it holds.

Example:
    >>> from ckptcore.formats.tensorbundle import table
    >>> raw = table.build([(b"", b"h"), (b"a", b"1"), (b"b", b"2")])
    >>> table.read_table(raw, "x.index")
    [(b'', b'h'), (b'a', b'1'), (b'b', b'2')]
"""

from __future__ import annotations

import struct

from ...errors import CorruptCheckpointError
from ..ckpt import crc32c

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
BLOCK_SIZE = 262144          # TensorFlow's table::Options defaults
RESTART_INTERVAL = 16
MAX_BLOCK_BYTES = 1 << 30    # one (decompressed) block larger than this is not an index anyone wrote
KEY_BYTES_PER_FILE_BYTE = 64  # decoded keys per byte of index file, at most (see read_table)
NO_COMPRESSION, SNAPPY = 0, 1
_MASK_DELTA = 0xA282EAD8
_U32 = struct.Struct("<I")


def mask(crc: int) -> int:
    """TensorFlow's (and LevelDB's) masked CRC32C, as stored in files.

    Example:
        >>> unmask(mask(12345)) == 12345
        True
    """
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    """The CRC32C a masked value was made from.

    Example:
        >>> unmask(mask(0))
        0
    """
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def put_varint(out: bytearray, v: int) -> None:
    """Append ``v`` as a base-128 varint.

    Example:
        >>> b = bytearray(); put_varint(b, 300); bytes(b)
        b'\\xac\\x02'
    """
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def get_varint(buf, pos: int, end: int, path: str, limit_bits: int = 64) -> tuple[int, int]:
    """Decode a varint at ``buf[pos:end]``; returns ``(value, next position)``.

    Example:
        >>> get_varint(b"\\xac\\x02", 0, 2, "x")
        (300, 2)
    """
    result = shift = 0
    while True:
        if pos >= end or shift >= limit_bits:
            raise CorruptCheckpointError(f"corrupt TensorFlow index {path}: truncated or overlong varint", path=path)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _bad(path: str, msg: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"corrupt TensorFlow index {path}: {msg}", path=path)


def has_magic(tail: bytes) -> bool:
    """Whether the last bytes of a file end with the table magic number.

    Example:
        >>> has_magic(build([]))
        True
    """
    return len(tail) >= 8 and int.from_bytes(tail[-8:], "little") == MAGIC


def _handle(buf, pos: int, end: int, path: str) -> tuple[int, int, int]:
    off, pos = get_varint(buf, pos, end, path)
    size, pos = get_varint(buf, pos, end, path)
    return off, size, pos


def _read_block(raw, off: int, size: int, limit: int, path: str) -> bytes:
    if off + size + TRAILER_SIZE > limit:
        raise _bad(path, f"a block at byte {off} of {size} bytes lies outside the file (truncated?)")
    block = raw[off:off + size]
    kind = raw[off + size]
    (stored,) = _U32.unpack_from(raw, off + size + 1)
    if unmask(stored) != crc32c(raw[off:off + size + 1]):
        raise _bad(path, f"block checksum mismatch at byte {off}")
    if kind == NO_COMPRESSION:
        return bytes(block)
    if kind == SNAPPY:
        n, _ = get_varint(block, 0, len(block), path, 35)  # a raw snappy block starts with its length
        if n > MAX_BLOCK_BYTES:
            raise _bad(path, f"a snappy block claims {n} bytes")
        try:
            import cramjam
        except ImportError:  # pragma: no cover - cramjam is a dependency
            raise CorruptCheckpointError(f"{path} has snappy-compressed blocks: pip install cramjam",
                                         path=path) from None
        try:
            out = bytes(cramjam.snappy.decompress_raw(bytes(block)))
        except Exception as e:
            raise _bad(path, f"a snappy block does not decompress ({e})") from None
        if len(out) != n:
            raise _bad(path, "a snappy block decompressed to the wrong length")
        return out
    raise _bad(path, f"unknown block compression type {kind}")


def _entries(block: bytes, path: str, prev: bytes | None = None, budget: list[int] | None = None,
             ordered: bool = True) -> list[tuple[bytes, bytes]]:
    """The entries of one block. With ``ordered``, each key must sort after the one before (``prev``: the
    last key of the block before), checked as it is decoded; ``budget`` (a one-item list) is what the
    decoded keys may still take, in bytes: keys share prefixes, so a few stored bytes can claim a long key."""
    n = len(block)
    if n < 4:
        raise _bad(path, "a block is shorter than its restart count")
    (num_restarts,) = _U32.unpack_from(block, n - 4)
    if num_restarts * 4 + 4 > n:
        raise _bad(path, f"a block claims {num_restarts} restart points in {n} bytes")
    end = n - 4 - 4 * num_restarts
    out = []
    pos = 0
    key = b""
    while pos < end:
        shared, pos = get_varint(block, pos, end, path, 35)
        unshared, pos = get_varint(block, pos, end, path, 35)
        vlen, pos = get_varint(block, pos, end, path, 35)
        if shared > len(key) or pos + unshared + vlen > end:
            raise _bad(path, "a block entry runs past its block")
        if budget is not None:
            budget[0] -= shared + unshared
            if budget[0] < 0:
                raise _bad(path, "its keys decode to more bytes than a table of this size holds (hostile prefix "
                                 "sharing)")
        key = key[:shared] + block[pos:pos + unshared]
        if ordered and prev is not None and not prev < key:
            raise _bad(path, f"keys out of order or repeated ({key!r})")
        prev = key
        pos += unshared
        out.append((key, block[pos:pos + vlen]))
        pos += vlen
    return out


def read_table(raw, path: str) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of a table file's bytes, in key order, all blocks checked.

    Raises :class:`~ckptcore.CorruptCheckpointError` naming ``path`` for a bad magic,
    checksum, handle or entry, or keys out of order.
    """
    raw = memoryview(raw)
    n = len(raw)
    if n < FOOTER_SIZE or not has_magic(raw[-8:]):
        raise _bad(path, "no table footer (truncated, or not a TensorFlow index)")
    foot = n - FOOTER_SIZE
    _m_off, _m_size, pos = _handle(raw, foot, foot + 40, path)
    i_off, i_size, _ = _handle(raw, pos, foot + 40, path)
    # What the decoded keys may take: a table writer stores a key whole every RESTART_INTERVAL
    # entries, so real keys decode to a few times the bytes stored; a hostile file chaining
    # shared prefixes would otherwise make a megabyte decode to gigabytes of keys.
    budget = [KEY_BYTES_PER_FILE_BYTE * n + (1 << 20)]
    index = _entries(_read_block(raw, i_off, i_size, foot, path), path, None, budget, ordered=False)
    out: list[tuple[bytes, bytes]] = []
    prev_end = 0
    prev: bytes | None = None
    for sep, handle in index:
        off, size, hpos = _handle(handle, 0, len(handle), path)
        if off < prev_end:
            raise _bad(path, "data blocks overlap")
        prev_end = off + size + TRAILER_SIZE
        entries = _entries(_read_block(raw, off, size, foot, path), path, prev, budget)
        if entries:
            if entries[-1][0] > sep:
                raise _bad(path, "a data block holds keys past its index entry")
            prev = entries[-1][0]
        out.extend(entries)
    return out


# -- writing -------------------------------------------------------------------------------


class _Block:
    def __init__(self, interval: int):
        self.interval = interval
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            limit = min(len(self.last), len(key))
            while shared < limit and self.last[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        put_varint(self.buf, shared)
        put_varint(self.buf, len(key) - shared)
        put_varint(self.buf, len(value))
        self.buf += key[shared:]
        self.buf += value
        self.last = key
        self.counter += 1

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def empty(self) -> bool:
        return not self.buf

    def finish(self) -> bytes:
        return bytes(self.buf) + b"".join(_U32.pack(r) for r in self.restarts) + _U32.pack(len(self.restarts))


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n:
        b = start[i]
        if b < 0xFF and b + 1 < limit[i]:
            return start[:i] + bytes([b + 1])
    return start


def _short_successor(key: bytes) -> bytes:
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


def build(items, block_size: int = BLOCK_SIZE) -> bytes:
    """A table file holding ``items`` (``(key, value)`` bytes, keys strictly increasing), uncompressed.

    Blocks, restart points, separator keys and footer are laid out as TensorFlow's
    ``TableBuilder`` lays them out with its default options, so the same entries give
    the same bytes.

    Example:
        >>> len(build([]))  # an empty metaindex block, an empty index block, the footer
        74
    """
    out = bytearray()
    data, index = _Block(RESTART_INTERVAL), _Block(1)
    pending: tuple[int, int] | None = None
    last = b""
    first = True

    def write_block(block: _Block) -> tuple[int, int]:
        contents = block.finish()
        handle = (len(out), len(contents))
        out.extend(contents)
        out.append(NO_COMPRESSION)
        out.extend(_U32.pack(mask(crc32c(contents + bytes([NO_COMPRESSION])))))
        return handle

    def encode(h: tuple[int, int]) -> bytes:
        b = bytearray()
        put_varint(b, h[0])
        put_varint(b, h[1])
        return bytes(b)

    for key, value in items:
        key, value = bytes(key), bytes(value)
        if not first:
            if not key > last:
                raise ValueError(f"table keys must be strictly increasing: {key!r} after {last!r}")
            if len(key) + len(value) >= 2 * block_size and not data.empty():
                pending = write_block(data)
                data = _Block(RESTART_INTERVAL)
        if pending is not None:
            index.add(_shortest_separator(last, key), encode(pending))
            pending = None
        last, first = key, False
        data.add(key, value)
        if data.size_estimate() >= block_size:
            pending = write_block(data)
            data = _Block(RESTART_INTERVAL)
    if not data.empty():
        pending = write_block(data)
    meta = write_block(_Block(RESTART_INTERVAL))
    if pending is not None:
        index.add(_short_successor(last), encode(pending))
    idx = write_block(index)
    footer = bytearray(encode(meta) + encode(idx))
    footer.extend(bytes(40 - len(footer)))
    footer.extend(MAGIC.to_bytes(8, "little"))
    out.extend(footer)
    return bytes(out)
