"""``torch.distributed.tensor.DTensor`` (FSDP2 ``fully_shard`` parameters, their optimizer state,
tensor-parallel weights): saved as shards of a global array, restored into any layout.

Saving, each worker hands over its local shard and where it sits in the global array
(:class:`ckptcore.distributed.ShardedValue`); a replicated placement gives every worker the
whole array, written once in total. Restoring, each worker asks for its own box
(:class:`ckptcore.distributed.ShardBuffer`, a view of the local tensor's memory when it is
a contiguous CPU tensor) and reads only the overlapping bytes of the checkpoint, whatever
mesh or placements it was saved with.

Example (one process, a mesh of one)::

    dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:29500")
    model = torch.nn.Linear(4, 4); fully_shard(model)
    ck.Checkpoint(model=model).write("/tmp/fsdp/ckpt")
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ckptcore.distributed import ShardBuffer, ShardedValue
from ckptcore.errors import CheckpointError

from .adapters import TensorAdapter
from .convert import check_materialized, from_numpy, numpy_dtype, shares_memory, to_numpy, writable_view

__all__ = ["DTensorAdapter", "is_dtensor", "sharded_value", "shard_buffer", "from_buffer"]


def is_dtensor(t: Any) -> bool:
    """True for a ``DTensor`` (without importing torch.distributed when nothing uses it).

    Example:
        >>> import torch
        >>> is_dtensor(torch.zeros(1))
        False
    """
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def _box(t) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """This worker's ``(start, extent)`` of the DTensor ``t`` in its global array."""
    from torch.distributed.tensor import Partial
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(isinstance(p, Partial) for p in t.placements):
        raise CheckpointError(f"a DTensor with a Partial placement {t.placements} holds unreduced values; "
                              "redistribute it to Shard or Replicate placements before saving")
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    local = tuple(int(d) for d in t._local_tensor.shape)
    if tuple(int(d) for d in shape) != local:
        raise CheckpointError(f"a DTensor's local tensor has shape {local}, its placements {t.placements} give "
                              f"{tuple(shape)}: padded or strided shards cannot be saved")
    return tuple(int(o) for o in offset), local


def sharded_value(t) -> ShardedValue:
    """The :class:`~ckptcore.distributed.ShardedValue` of a DTensor: its local shard and where it goes."""
    start, _extent = _box(t)
    local = to_numpy(t._local_tensor)
    return ShardedValue(tuple(int(d) for d in t.shape), local.dtype, [(start, local)])


def shard_buffer(t) -> ShardBuffer:
    """Where a restore puts this worker's part of the DTensor ``t``: its local memory when it can."""
    start, extent = _box(t)
    local = t._local_tensor
    view = writable_view(local)
    if view is None or tuple(view.shape) != extent:
        view = np.empty(extent, numpy_dtype(local.dtype))
    return ShardBuffer(tuple(int(d) for d in t.shape), view.dtype, [(start, view)])


def _copy_into(t, value) -> None:
    import torch

    local = t._local_tensor
    if isinstance(value, ShardBuffer):
        arr = value.shards[0][1]
    else:  # the whole global array
        start, extent = _box(t)
        arr = np.asarray(value)[tuple(slice(s, s + e) for s, e in zip(start, extent))]
    if shares_memory(arr, local):
        return
    with torch.no_grad():
        local.copy_(from_numpy(np.ascontiguousarray(arr)))


def from_buffer(buf: ShardBuffer, like) -> Any:
    """A DTensor laid out like ``like`` holding ``buf``'s shard (a restored optimizer slot)."""
    from torch.distributed.tensor import DTensor

    local = from_numpy(buf.shards[0][1])
    ref = like._local_tensor
    if ref.is_floating_point() and local.is_floating_point():
        local = local.to(dtype=ref.dtype, device=ref.device)
    else:
        local = local.to(device=ref.device)
    return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())


class DTensorAdapter(TensorAdapter):
    """``DTensor`` and DTensor parameters: one value, saved and restored shard by shard.

    Example:
        >>> DTensorAdapter.name
        'ckptcore_torch.dtensor'
    """

    name = "ckptcore_torch.dtensor"

    def get_value(self, obj, attr):
        return sharded_value(obj)

    def spec(self, obj, attr):
        check_materialized(obj._local_tensor)
        return tuple(int(d) for d in obj.shape), numpy_dtype(obj.dtype)

    def restore_buffer(self, obj, attr):
        return shard_buffer(obj)

    def set_value(self, obj, attr, value):
        _copy_into(obj, value)
