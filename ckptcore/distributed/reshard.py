"""Reshard read planning: fill wanted boxes from the saved pieces, reading only overlapping bytes.

A tensor is saved as pieces (boxes of its global array, each C-contiguous in some data file;
an ordinary row is one piece covering everything). A restore wants boxes of its own (this
worker's shards, or the whole array). For each saved piece that overlaps a wanted box,
:func:`runs` gives the contiguous byte runs of the overlap inside the piece: dimensions after
the first partly-covered one are whole, so each run spans them. Only those runs are read,
straight into the destination when its part is contiguous too.

Checksums cover whole pieces: a piece read in full is verified; a partial read is not (the
bytes around it are never read). ``CheckpointOptions(verify_before_restore=True)`` verifies
every piece first.

Example:
    >>> runs((4, 4), (1, 0), (2, 4))    # rows 1-2 of a 4x4 piece: one run of 8 elements
    ([4], 8)
    >>> runs((4, 4), (0, 1), (2, 2))    # a column band: one run per row
    ([1, 5], 2)
"""

from __future__ import annotations

from contextlib import ExitStack
from itertools import groupby
from typing import Any

import numpy as np

from ..formats import ckpt as fmt
from .shards import ShardBuffer, overlap

__all__ = ["runs", "sources", "fill_box", "read_rows", "verify_pieces"]


def runs(piece_extent, lo, ext) -> tuple[list[int], int]:
    """Element offsets (in the piece, C order) of the contiguous runs of box ``[lo, lo + ext)``, and their length.

    Example:
        >>> runs((), (), ())
        ([0], 1)
    """
    offs, run = _runs(piece_extent, lo, ext)
    return offs.tolist(), run


def _runs(piece_extent, lo, ext) -> tuple[np.ndarray, int]:
    """:func:`runs`, the offsets as an int64 array (ascending)."""
    n = len(piece_extent)
    if n == 0:
        return np.zeros(1, np.int64), 1
    j = n - 1
    while j > 0 and lo[j] == 0 and ext[j] == piece_extent[j]:
        j -= 1
    strides = [1] * n
    for d in range(n - 2, -1, -1):
        strides[d] = strides[d + 1] * int(piece_extent[d + 1])
    run = int(ext[j]) * strides[j]
    offs = np.array([int(lo[j]) * strides[j]], np.int64)
    for d in range(j - 1, -1, -1):
        offs = (np.arange(lo[d], lo[d] + ext[d], dtype=np.int64)[:, None] * strides[d] + offs[None, :]).ravel()
    return offs, run


def sources(index: fmt.Index, row: int) -> list[tuple[int, int, int, int, tuple, tuple]]:
    """The saved pieces of tensor ``row``: ``(shard, offset, nbytes, crc32c, start, extent)`` each.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> r = ck.load_checkpoint(ck.Checkpoint(a=np.ones(2)).write("memory://doc/sources/c"))
        >>> sources(r.index, 0)
        [(0, 0, 16, 1547148174, (0,), (2,))]
    """
    t = index.table
    ids = index.pieces.of_row(row) if index.pieces is not None else None
    if ids is None:
        shape = tuple(t.shape[row])
        return [(t.shard[row], t.offset[row], t.nbytes[row], t.crc32c[row], (0,) * len(shape), shape)]
    p = index.pieces
    return [(p.shard[i], p.offset[i], p.nbytes[i], p.crc32c[i], p.start[i], p.extent[i]) for i in ids]


class _Readers:
    """Readers of the data files, opened once each."""

    def __init__(self, reader, stack: ExitStack):
        self.reader, self.stack = reader, stack
        self.open: dict[int, Any] = {}
        self._scratch = np.empty(0, np.uint8)

    def scratch(self, nbytes: int) -> np.ndarray:
        """A reused buffer of ``nbytes`` for a span (no fresh pages, hence no page faults, per span)."""
        if len(self._scratch) < nbytes:
            self._scratch = np.empty(nbytes, np.uint8)
        return self._scratch[:nbytes]

    def get(self, shard: int):
        rd = self.open.get(shard)
        if rd is None:
            f = self.reader.data_file(shard)
            rd = self.open[shard] = self.stack.enter_context(self.reader.storage.open_reader(f))
        return rd


def fill_box(reader, readers: _Readers, row: int, start, dest: np.ndarray, verify: bool) -> int:
    """Fill ``dest`` (the box at ``start`` of tensor ``row``) from the overlapping pieces; the bytes read."""
    from ..data_reads import _mismatch, _short

    t = reader.index.table
    start = tuple(start)
    itemsize = dest.dtype.itemsize
    got = 0
    for shard, offset, _nbytes, crc, p_start, p_extent in sources(reader.index, row):
        ov = overlap(p_start, p_extent, start, dest.shape)
        if ov is None:  # (a scalar overlaps its one piece: ((), ()))
            continue
        o_start, o_ext = ov
        in_piece = tuple(a - b for a, b in zip(o_start, p_start))
        in_dest = tuple(slice(a - b, a - b + e) for a, b, e in zip(o_start, start, o_ext))
        view = dest[in_dest] if in_dest else dest
        out = view if view.flags.c_contiguous else np.empty(o_ext, dest.dtype)
        flat = out.reshape(-1).view(np.uint8)
        offs, run = _runs(p_extent, in_piece, o_ext)
        rb = run * itemsize
        rd = readers.get(shard)
        path = reader.data_file(shard)
        if rb:
            boffs = offs * itemsize  # byte offsets of the runs in the piece
            for first, last in _spans(boffs, rb):
                if not _read_span(rd, readers, offset, boffs[first:last], rb, flat[first * rb:last * rb]):
                    raise _short(t.entry(row), path)
        got += rb * len(offs)
        if verify and tuple(o_ext) == tuple(p_extent) and fmt.crc32c(flat) != crc:
            raise _mismatch(t.entry(row), path)
        if out is not view:
            view[...] = out
    return got


# Runs closer than this are read as one span and copied apart in memory: a column band of a
# row-sharded piece is one short run per row, and a read call per row costs far more than
# reading the gaps between them (world 4, Shard(0) -> Shard(1): 1.30 s -> see docs/performance.md).
SPAN_GAP_BYTES = 64 << 10
SPAN_MAX_BYTES = 8 << 20   # the most one span holds in its scratch buffer


def _spans(boffs: np.ndarray, rb: int) -> list[tuple[int, int]]:
    """Group consecutive runs (ascending byte offsets ``boffs``, ``rb`` bytes each) into spans ``[first, last)``.

    A span ends where the next run is more than ``SPAN_GAP_BYTES`` away or would make it longer
    than ``SPAN_MAX_BYTES`` (a span holds at least one run). Vectorized: the work in Python is
    per span, not per run.

    Example:
        >>> _spans(np.array([0, 4, 8]), 4)           # 4-byte runs 0 bytes apart: one span
        [(0, 3)]
        >>> _spans(np.array([0, 1 << 20]), 4)        # a 1 MiB gap: two reads
        [(0, 1), (1, 2)]
    """
    n = len(boffs)
    if n == 1:
        return [(0, 1)]
    gap, most = SPAN_GAP_BYTES, SPAN_MAX_BYTES
    breaks = (np.flatnonzero(np.diff(boffs) - rb > gap) + 1).tolist()
    out = []
    for s, e in zip([0, *breaks], [*breaks, n]):
        if int(boffs[e - 1]) - int(boffs[s]) + rb <= most:  # the common case: the segment is one span
            out.append((s, e))
            continue
        seg = boffs[s:e]
        first = 0
        while first < e - s:
            last = int(np.searchsorted(seg, int(seg[first]) + most - rb, side="right"))
            last = max(last, first + 1)
            out.append((s + first, s + last))
            first = last
    return out


def _read_span(rd, readers: _Readers, offset: int, boffs: np.ndarray, rb: int, dest: np.ndarray) -> bool:
    """Read runs at ``boffs`` (``rb`` bytes each, ascending) into ``dest`` one after another, with one read call.

    False if the file ended first.
    """
    base = int(boffs[0])
    if len(boffs) == 1:
        return rd.readinto(offset + base, dest) == rb
    span = int(boffs[-1]) - base + rb
    scratch = readers.scratch(span)
    if rd.readinto(offset + base, scratch) != span:
        return False
    rel = boffs - base
    step = int(rel[1])
    if len(rel) == 2 or bool((np.diff(rel) == step).all()):  # evenly spaced (a band of a box): one strided copy
        src = np.lib.stride_tricks.as_strided(scratch, shape=(len(rel), rb), strides=(step, 1), writeable=False)
        dest.reshape(len(rel), rb)[...] = src
    else:
        for k, r in enumerate(rel.tolist()):
            dest[k * rb:(k + 1) * rb] = scratch[r:r + rb]
    return True


def read_rows(reader, rows: list[int], dests: list, callbacks: list, verify: bool) -> None:
    """Read tensors ``rows`` into ``dests``: a :class:`ShardBuffer` (its boxes), an array, or None (a new one).

    ``callbacks[i](value)`` gets the filled buffer or array (None: nothing to call).
    """
    reader.check_data_files()
    t = reader.index.table
    with ExitStack() as stack:
        readers = _Readers(reader, stack)
        for row, dest, cb in zip(rows, dests, callbacks):
            if isinstance(dest, ShardBuffer):
                for start, arr in dest.shards:
                    fill_box(reader, readers, row, start, arr, verify)
                value = dest
            else:
                if dest is None:
                    dest = np.empty(t.shape[row], t.np_dtype(row))
                fill_box(reader, readers, row, (0,) * dest.ndim, dest, verify)
                value = dest
            if cb is not None:
                cb(value)


def verify_pieces(reader) -> int:
    """:meth:`CheckpointReader.verify` for an index with pieces: every ordinary row and every piece."""
    from ..data_reads import _mismatch, _short
    from ..reader import VERIFY_CHUNK

    reader.check_data_files()
    t, p = reader.index.table, reader.index.pieces
    sharded = p.by_row
    decoded = reader.index.decoded_rows or {}  # (verified by the reader itself)
    items = [(t.shard[r], t.offset[r], t.nbytes[r], t.crc32c[r], r) for r in range(len(t))
             if r not in sharded and r not in decoded]
    items += [(p.shard[i], p.offset[i], p.nbytes[i], p.crc32c[i], p.row[i]) for i in range(len(p))]
    items.sort()
    sizes = reader.index.shard_sizes
    scratch = np.empty(min(VERIFY_CHUNK, max(sizes, default=0)) or 1, np.uint8)
    total = 0
    for s, group in groupby(items, key=lambda x: x[0]):
        f = reader.data_file(s)
        with reader.storage.open_reader(f) as rd:
            for _s, pos, nbytes, want, r in group:
                end, crc = pos + nbytes, 0
                while pos < end:
                    n = min(end - pos, len(scratch))
                    if rd.readinto(pos, scratch[:n]) != n:
                        raise _short(t.entry(r), f)
                    crc = fmt.crc32c(scratch[:n], crc)
                    pos += n
                if crc != want:
                    raise _mismatch(t.entry(r), f)
                total += nbytes
    return total
