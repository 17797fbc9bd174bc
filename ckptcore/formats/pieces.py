"""Sharded tensors in the index (format version 3): each tensor row may be stored as *pieces*.

A piece is one box of a tensor's global array, ``[start, start + extent)`` along every
dimension, stored C-contiguous at ``offset`` in data file ``shard`` (``nbytes`` bytes,
checksum ``crc32c``). A multi-worker save writes each worker's boxes into that worker's
own data file; the merged index lists, for each sharded tensor, every piece. The tensor's
own row then records its global shape and dtype, ``shard = 0``, ``offset = 0``,
``crc32c = 0`` and the global size in ``nbytes``; readers assemble it from the pieces.

An index without sharded tensors is written as version 2, exactly as before; pieces make it
version 3 (an older ckptcore refuses it with a clear message instead of misreading it).

Example:
    >>> from ckptcore.formats import ckpt as fmt
    >>> from ckptcore.formats.pieces import Pieces
    >>> e = fmt.TensorEntry("w", "float32", (4,), 0, 0, 16, 0)
    >>> p = Pieces([0, 0], [0, 1], [0, 0], [8, 8], [1, 2], [(0,), (2,)], [(2,), (2,)])
    >>> idx = fmt.Index(nodes=[fmt.Node(attributes={"VARIABLE_VALUE": e})], num_shards=2, shard_sizes=[8, 8],
    ...                 pieces=p)
    >>> back = fmt.decode_index(idx.encode(), "x.index")
    >>> back.version, back.pieces.of_row(0)
    (3, [0, 1])
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptCheckpointError

__all__ = ["Pieces", "PIECES_VERSION", "MAX_PIECES_PER_TENSOR"]

PIECES_VERSION = 3
MAX_PIECES_PER_TENSOR = 1 << 14  # far more than any mesh; bounds the validation work of a hostile index


class Pieces:
    """The pieces of every sharded tensor, column by column (piece ``i`` is row ``i`` of each list).

    ``row[i]`` is the tensor (row of the :class:`~ckptcore.formats.ckpt.TensorTable`) piece ``i``
    belongs to; ``start[i]`` and ``extent[i]`` are tuples with that tensor's number of dimensions.

    Example:
        >>> Pieces([3], [0], [64], [4], [9], [(0,)], [(1,)]).of_row(3)
        [0]
    """

    __slots__ = ("row", "shard", "offset", "nbytes", "crc32c", "start", "extent", "_by_row")

    def __init__(self, row, shard, offset, nbytes, crc32c, start, extent):
        self.row, self.shard, self.offset, self.nbytes, self.crc32c = row, shard, offset, nbytes, crc32c
        self.start, self.extent = start, extent
        self._by_row: dict[int, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.row)

    @property
    def by_row(self) -> dict[int, list[int]]:
        """Tensor row -> the ids of its pieces, in stored order."""
        if self._by_row is None:
            d: dict[int, list[int]] = {}
            for i, r in enumerate(self.row):
                d.setdefault(r, []).append(i)
            self._by_row = d
        return self._by_row

    def of_row(self, row: int) -> list[int] | None:
        """The piece ids of tensor ``row``, or None when it is stored whole (an ordinary row).

        Example:
            >>> Pieces([0], [0], [0], [4], [0], [(0,)], [(1,)]).of_row(1) is None
            True
        """
        return self.by_row.get(row)


def encode_pieces(pieces: Pieces, table, col) -> str:
    """The JSON object of the ``pieces`` field; integers go to the binary columns ``col``."""
    ndim = [len(table.shape[r]) for r in pieces.row]
    for i, (s, e) in enumerate(zip(pieces.start, pieces.extent)):
        if len(s) != ndim[i] or len(e) != ndim[i]:
            raise ValueError(f"piece {i} of {table.key[pieces.row[i]]!r} has {len(s)}/{len(e)} dimensions, "
                             f"the tensor {ndim[i]}")
    flat_start = [d for s in pieces.start for d in s]
    flat_extent = [d for e in pieces.extent for d in e]
    return (f'{{"row":{col.ref(pieces.row)},"shard":{col.ref(pieces.shard)},"offset":{col.ref(pieces.offset)},'
            f'"nbytes":{col.ref(pieces.nbytes)},"crc32c":{col.ref(pieces.crc32c)},'
            f'"start":{col.ref(flat_start)},"extent":{col.ref(flat_extent)}}}')


def parse_pieces(doc, path: str, section, binary, keys, itemsize, ndim, dims, shard, offset, nbytes,
                 crcs, sizes, num_shards) -> Pieces:
    """Validate the ``pieces`` object of a version-3 index against its tensor table.

    Every piece lies inside its data file and inside its tensor; its size is its extent's
    volume times the item size; the pieces of one tensor do not overlap and together cover it
    exactly; a sharded tensor's own row records ``shard = offset = crc32c = 0`` and its global size.
    ``binary(table, name, path, section, n, hi)`` reads one binary column (``ckpt_v2._binary``).
    """
    def bad(msg):
        return CorruptCheckpointError(f"corrupt checkpoint index {path}: {msg}", path=path)

    if type(doc) is not dict:
        raise bad("pieces must be an object")
    m = len(keys)
    if m == 0:
        raise bad("pieces of an index without tensors")
    row = binary(doc, "row", path, section, None, m - 1).astype(np.int64)
    n = len(row)
    p_shard = binary(doc, "shard", path, section, n, num_shards - 1).astype(np.int64)
    p_offset = binary(doc, "offset", path, section, n).astype(np.int64)
    p_nbytes = binary(doc, "nbytes", path, section, n).astype(np.int64)
    p_crc = binary(doc, "crc32c", path, section, n, 0xFFFFFFFF)
    p_nd = np.asarray(ndim, np.int64)[row] if n else np.zeros(0, np.int64)
    total = int(p_nd.sum())
    flat_start = binary(doc, "start", path, section, total).astype(np.int64)
    flat_extent = binary(doc, "extent", path, section, total).astype(np.int64)
    sizes_a = np.asarray(sizes, np.int64)
    past = np.flatnonzero(p_offset + p_nbytes > sizes_a[p_shard])
    if past.size:
        i = int(past[0])
        raise bad(f"piece {i} of tensor {keys[int(row[i])]!r} extends past the end of its data file")
    ndim_l = list(map(int, ndim))
    dim_starts = np.concatenate([[0], np.cumsum(ndim_l)]).astype(np.int64)
    starts, extents = [], []
    p = 0
    by_row: dict[int, list[int]] = {}
    for i in range(n):
        r = int(row[i])
        k = int(p_nd[i])
        s = tuple(int(x) for x in flat_start[p:p + k])
        e = tuple(int(x) for x in flat_extent[p:p + k])
        p += k
        g = dims[dim_starts[r]:dim_starts[r] + k]
        if any(a + b > c for a, b, c in zip(s, e, g)):
            raise bad(f"piece {i} of tensor {keys[r]!r} (start {s}, extent {e}) lies outside its shape {tuple(g)}")
        vol = 1
        for x in e:
            vol *= x
        if vol * int(itemsize[r]) != int(p_nbytes[i]):
            raise bad(f"piece {i} of tensor {keys[r]!r} has extent {e} but records {int(p_nbytes[i])} bytes")
        starts.append(s)
        extents.append(e)
        by_row.setdefault(r, []).append(i)
    for r, ids in by_row.items():
        if len(ids) > MAX_PIECES_PER_TENSOR:
            raise bad(f"tensor {keys[r]!r} has {len(ids)} pieces (at most {MAX_PIECES_PER_TENSOR})")
        if int(shard[r]) or int(offset[r]) or int(crcs[r]):
            raise bad(f"tensor {keys[r]!r} is stored in pieces, but its own row records a data position")
        k = ndim_l[r]
        g = dims[dim_starts[r]:dim_starts[r] + k]
        vol = 1
        for x in g:
            vol *= x
        if sum(int(p_nbytes[i]) for i in ids) != vol * int(itemsize[r]) or int(nbytes[r]) != vol * int(itemsize[r]):
            raise bad(f"the pieces of tensor {keys[r]!r} do not add up to its shape {tuple(g)}")
        if len(ids) > 1 and k:
            lo = np.array([starts[i] for i in ids], np.int64)
            hi = lo + np.array([extents[i] for i in ids], np.int64)
            nonempty = (hi > lo).all(axis=1)
            lo, hi = lo[nonempty], hi[nonempty]
            # equal volumes and no two boxes overlapping: they tile the tensor exactly
            for a in range(len(lo) - 1):
                inter = (np.minimum(hi[a], hi[a + 1:]) > np.maximum(lo[a], lo[a + 1:])).all(axis=1)
                if inter.any():
                    raise bad(f"two pieces of tensor {keys[r]!r} overlap")
        elif len(ids) > 1:
            raise bad(f"the scalar tensor {keys[r]!r} has {len(ids)} pieces")
    pieces = Pieces(row.tolist(), p_shard.tolist(), p_offset.tolist(), p_nbytes.tolist(), p_crc.tolist(),
                    starts, extents)
    pieces._by_row = by_row
    return pieces
