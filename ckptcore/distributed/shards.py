"""The sharded-value description: a global array of which this worker holds some boxes.

An adapter whose value is split across workers (a torch ``DTensor``, a JAX global
``Array``) returns a :class:`ShardedValue` from ``get_value`` and, for restore, a
:class:`ShardBuffer` from ``restore_buffer``. Both are framework-free: a global shape, a
dtype, and this worker's boxes as ``(start, numpy array)`` pairs. Boxes are half-open:
``start[d] <= i < start[d] + array.shape[d]``.

Example:
    >>> import numpy as np
    >>> from ckptcore.distributed import ShardedValue
    >>> v = ShardedValue((4, 2), np.float32, [((2, 0), np.ones((2, 2), np.float32))])
    >>> v.shape, v.nbytes, [s for s, _ in v.shards]
    ((4, 2), 32, [(2, 0)])
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..dtypes import storage_dtype
from ..errors import CheckpointError

__all__ = ["ShardedValue", "ShardBuffer", "overlap", "volume"]


def volume(extent: Iterable[int]) -> int:
    """The number of elements of a box of ``extent``.

    Example:
        >>> volume((2, 3)), volume(())
        (6, 1)
    """
    n = 1
    for d in extent:
        n *= int(d)
    return n


def overlap(a_start, a_extent, b_start, b_extent) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The intersection of two boxes as ``(start, extent)``, or None when it is empty.

    Example:
        >>> overlap((0, 0), (4, 4), (2, 3), (4, 4))
        ((2, 3), (2, 1))
        >>> overlap((0,), (2,), (2,), (2,)) is None
        True
    """
    start, extent = [], []
    for a, ae, b, be in zip(a_start, a_extent, b_start, b_extent):
        lo, hi = max(a, b), min(a + ae, b + be)
        if hi <= lo:
            return None
        start.append(lo)
        extent.append(hi - lo)
    return tuple(start), tuple(extent)


def _check_boxes(shape: tuple, shards, what: str) -> None:
    for start, arr in shards:
        if len(start) != len(shape) or arr.ndim != len(shape):
            raise CheckpointError(f"{what}: a shard of {arr.ndim} dimensions at {tuple(start)} does not fit "
                                  f"the global shape {shape}")
        if any(s < 0 or s + e > g for s, e, g in zip(start, arr.shape, shape)):
            raise CheckpointError(f"{what}: the shard at {tuple(start)} of shape {arr.shape} lies outside the "
                                  f"global shape {shape}")


class ShardedValue:
    """A value to save whose global array is split across workers (see the module docstring).

    ``shards`` holds this worker's ``(start, array)`` boxes (a replicated placement: the whole
    array, on every worker). A multi-worker save writes each distinct box once in total, by
    one of the workers that hold it. Arrays are made C-contiguous in their storage dtype.

    Example:
        >>> import numpy as np
        >>> ShardedValue((2,), np.int64, [((0,), np.arange(2))]).copy().shards[0][1].tolist()
        [0, 1]
    """

    __slots__ = ("shape", "dtype", "shards")

    def __init__(self, shape, dtype, shards, *, what: str = "sharded value"):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        sd = storage_dtype(self.dtype)
        out = []
        for start, arr in shards:
            arr = np.asarray(arr)
            if arr.dtype != self.dtype:
                raise CheckpointError(f"{what}: a shard has dtype {arr.dtype}, the value {self.dtype}")
            if sd != arr.dtype:
                arr = arr.astype(sd)
            out.append((tuple(int(s) for s in start), np.ascontiguousarray(arr)))
        _check_boxes(self.shape, out, what)
        self.shards = out

    @property
    def nbytes(self) -> int:
        """The size of the global array."""
        return volume(self.shape) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def copy(self) -> ShardedValue:
        """A snapshot: every local shard copied (async saves)."""
        v = ShardedValue.__new__(ShardedValue)
        v.shape, v.dtype, v.shards = self.shape, self.dtype, [(s, a.copy()) for s, a in self.shards]
        return v

    def __repr__(self) -> str:
        return f"ShardedValue(shape={self.shape}, dtype={self.dtype}, shards={[(s, a.shape) for s, a in self.shards]})"


class ShardBuffer:
    """Where a restore puts this worker's part of a global array: ``(start, array)`` boxes.

    Returned by an adapter's ``restore_buffer``; the restore reads, for each box, only the
    byte ranges of the checkpoint that overlap it (whatever layout the checkpoint was saved
    with), fills the arrays in place, then calls ``set_value(obj, attr, buffer)``.
    Each array must be writable and C-contiguous, of the value's dtype.

    Example:
        >>> import numpy as np
        >>> b = ShardBuffer((4,), np.float32, [((2,), np.zeros(2, np.float32))])
        >>> b.like(np.int64).shards[0][1].dtype
        dtype('int64')
    """

    __slots__ = ("shape", "dtype", "shards")

    def __init__(self, shape, dtype, shards, *, what: str = "shard buffer"):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        out = []
        for start, arr in shards:
            if not (isinstance(arr, np.ndarray) and arr.flags.c_contiguous and arr.flags.writeable):
                raise CheckpointError(f"{what}: each shard buffer must be a writable C-contiguous numpy array")
            out.append((tuple(int(s) for s in start), arr))
        _check_boxes(self.shape, out, what)
        self.shards = out

    def like(self, dtype=None) -> ShardBuffer:
        """New zeroed arrays with the same boxes (for a slot variable shaped like its variable)."""
        dt = self.dtype if dtype is None else np.dtype(dtype)
        return ShardBuffer(self.shape, dt, [(s, np.zeros(a.shape, dt)) for s, a in self.shards])

    def __repr__(self) -> str:
        return f"ShardBuffer(shape={self.shape}, dtype={self.dtype}, shards={[(s, a.shape) for s, a in self.shards]})"
