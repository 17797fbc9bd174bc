"""Who writes what, and the merge of every worker's section into one index. Pure: no I/O.

Each worker describes the values it holds (:func:`describe`): per tensor of the save plan its
key, dtype, global shape and its boxes (None: the whole value, replicated on every worker).
:func:`assign` then decides, the same way on every worker, which worker writes each distinct
box: each one exactly once in total, spread over the workers that hold it so that each writes
about the same number of bytes. After the writes, :func:`merge` builds the one index from the
save plan and every worker's written pieces.

Example:
    >>> rows = [["a", "float32", [4], None], ["b", "float32", [4], None]]
    >>> sorted(assign([rows, rows]).items())
    [(0, [(0, (0,), (4,))]), (1, [(1, (0,), (4,))])]
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from ..formats import ckpt as fmt
from ..formats.pieces import Pieces
from .shards import ShardedValue, volume

__all__ = ["describe", "check_consistent", "assign", "merge"]


def describe(plan) -> list[list]:
    """``[key, dtype, shape, boxes]`` for each tensor of ``plan`` (JSON-ready).

    ``boxes`` is ``[[start, extent], ...]`` for a :class:`ShardedValue`, None for a plain array.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> from ckptcore.save import plan_save
        >>> describe(plan_save([np.zeros(2, np.int8)]))
        [['0/.ATTRIBUTES/VARIABLE_VALUE', 'int8', [2], None]]
    """
    out = []
    for entry, arr in plan.tensors:
        boxes = None
        if type(arr) is ShardedValue:
            boxes = [[list(s), list(a.shape)] for s, a in arr.shards]
        out.append([entry.key, entry.dtype, list(entry.shape), boxes])
    return out


def check_consistent(descs: list[list]) -> None:
    """Raise unless every worker saves the same tensors (keys, dtypes, global shapes) in the same order.

    Example:
        >>> try:
        ...     check_consistent([[["a", "int8", [1], None]], [["b", "int8", [1], None]]])
        ... except ValueError as e:
        ...     print(str(e)[:44])
        rank 1 saves 'b' (int8, shape (1,)) where ra
    """
    ref = descs[0]
    for rank, rows in enumerate(descs[1:], 1):
        for a, b in zip(ref, rows):
            if a[:3] != b[:3]:
                raise _Inconsistent(
                    f"rank {rank} saves {b[0]!r} ({b[1]}, shape {tuple(b[2])}) where rank 0 saves {a[0]!r} "
                    f"({a[1]}, shape {tuple(a[2])}): every worker must checkpoint the same object graph")
        if len(rows) != len(ref):
            extra = (rows if len(rows) > len(ref) else ref)[min(len(rows), len(ref))][0]
            raise _Inconsistent(f"rank {rank} saves {len(rows)} values, rank 0 {len(ref)} (first difference: "
                                f"{extra!r}): every worker must checkpoint the same object graph")


class _Inconsistent(CheckpointError, ValueError):
    pass


def assign(descs: list[list]) -> dict[int, list[tuple[int, tuple, tuple]]]:
    """Rank -> the ``(row, start, extent)`` boxes it writes. Deterministic: every worker computes the same.

    Each distinct box of each tensor is written by exactly one of the workers that hold it:
    the one with the fewest bytes assigned so far (largest boxes first; ties go round-robin
    over the tensors, so a model of many equal small values is spread too).

    Example:
        >>> d0 = [["w", "int8", [4], [[[0], [2]]]]]; d1 = [["w", "int8", [4], [[[2], [2]]]]]
        >>> assign([d0, d1])
        {0: [(0, (0,), (2,))], 1: [(0, (2,), (2,))]}
    """
    world = len(descs)
    holders: dict[tuple, list[int]] = {}
    sizes: dict[tuple, int] = {}
    itemsizes: dict[str, int] = {}
    for rank, rows in enumerate(descs):
        for row, (_key, dtype, shape, boxes) in enumerate(rows):
            isz = itemsizes.get(dtype)
            if isz is None:
                isz = itemsizes[dtype] = fmt.FAST_DTYPES[dtype].itemsize if dtype in fmt.FAST_DTYPES else \
                    _itemsize(dtype)
            if boxes is None:
                boxes = [[[0] * len(shape), shape]]
            for start, extent in boxes:
                k = (row, tuple(start), tuple(extent))
                h = holders.get(k)
                if h is None:
                    holders[k] = [rank]
                    sizes[k] = volume(extent) * isz
                elif h[-1] != rank:
                    h.append(rank)
    load = [0] * world
    out: dict[int, list] = {r: [] for r in range(world)}
    for k in sorted(holders, key=lambda k: (-sizes[k], k[0], k[1])):
        h = holders[k]
        best = min(h, key=lambda r: (load[r], (r - k[0]) % world))
        load[best] += sizes[k]
        out[best].append(k)
    for r in out:
        out[r].sort()
    return out


def _itemsize(dtype: str) -> int:
    from ..dtypes import dtype_from_name

    return dtype_from_name(dtype).itemsize


def local_arrays(plan, boxes: list[tuple[int, tuple, tuple]]) -> list[tuple[fmt.TensorEntry, Any]]:
    """``(entry, array)`` pairs for the boxes this worker writes, from its save plan."""
    tensors = plan.tensors
    out = []
    for row, start, extent in boxes:
        entry, arr = tensors[row]
        if type(arr) is ShardedValue:
            arr = next(a for s, a in arr.shards if s == start and a.shape == extent)
        out.append((fmt.TensorEntry(entry.key, entry.dtype, tuple(extent), 0, 0, arr.nbytes, 0), arr))
    return out


def merge(plan, world: int, written: list[list], sizes: list[int]) -> fmt.Index:
    """The merged index: ``plan``'s graph and, per tensor, the pieces every worker wrote.

    ``written[rank]`` holds ``[row, start, extent, offset, nbytes, crc32c]`` for each box of
    that worker's data file (shard ``rank``; ``sizes[rank]`` bytes). A tensor written as one
    whole box stays an ordinary row (readable by any ckptcore); others get pieces (version 3).

    Example:
        >>> import numpy as np
        >>> from ckptcore.save import plan_save
        >>> plan = plan_save([np.zeros(4, np.int8)])
        >>> idx = merge(plan, 2, [[[0, [0], [2], 0, 2, 7]], [[0, [2], [2], 0, 2, 9]]], [2, 2])
        >>> idx.pieces.of_row(0), idx.table.nbytes
        ([0, 1], [4])
    """
    by_row: dict[int, list] = {}
    for rank, rows in enumerate(written):
        for row, start, extent, offset, nbytes, crc in rows:
            by_row.setdefault(row, []).append((rank, tuple(start), tuple(extent), offset, nbytes, crc))
    entries = []
    p_cols: list[list] = [[], [], [], [], [], [], []]
    for row, (entry, _arr) in enumerate(plan.tensors):
        got = sorted(by_row.get(row, ()), key=lambda p: p[1])
        shape = tuple(entry.shape)
        if len(got) == 1 and got[0][1] == (0,) * len(shape) and got[0][2] == shape:
            rank, _s, _e, offset, nbytes, crc = got[0]
            entries.append(fmt.TensorEntry(entry.key, entry.dtype, shape, rank, offset, nbytes, crc))
            continue
        total = sum(volume(p[2]) for p in got)
        if total != volume(shape):
            raise CheckpointError(f"the workers' shards of {entry.key!r} cover {total} of its {volume(shape)} "
                                  f"elements (global shape {shape}); some part of it is held by no worker")
        entries.append(fmt.TensorEntry(entry.key, entry.dtype, shape, 0, 0, volume(shape) * _itemsize(entry.dtype), 0))
        for rank, start, extent, offset, nbytes, crc in got:
            for col, v in zip(p_cols, (row, rank, offset, nbytes, crc, start, extent)):
                col.append(v)
    table = fmt.TensorTable.from_entries(entries, plan.node_of)
    pieces = Pieces(*p_cols) if p_cols[0] else None
    return fmt.Index(num_shards=world, shard_sizes=list(sizes), metadata=plan.metadata, graph=plan.graph,
                     table=table, pieces=pieces)
