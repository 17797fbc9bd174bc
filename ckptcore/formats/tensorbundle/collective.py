"""A multi-worker save in TensorFlow's format: each worker writes its own data shard, rank 0 one merged index.

TensorFlow's own multi-worker layout: ``P.data-<rank>-of-<world>`` per worker and one
``P.index`` whose entries name their shard (``BundleEntryProto.shard_id``), as
TensorFlow's ``MergeBundles`` leaves them. Who writes which value is decided by
:func:`ckptcore.distributed.merge.assign` (each value once in total, the bytes spread
evenly), through the collective interface of :mod:`ckptcore.distributed.collective`;
the steps and the failure handling are :mod:`ckptcore.distributed.protocol`'s, the same
as for ckptcore's own format; this module supplies the TensorBundle's sections:

1. rank 0 uncommits a checkpoint already at the path (its index first) and removes its
   files; every worker plans its save; all exchange their descriptions or their error;
2. every worker writes its values to its own data file, made durable (rank 0 also writes
   the object graph, at the end of shard 0);
3. all exchange their entries (offsets, checksums) or their error; on any error every
   worker removes its own file and raises, naming the failed ranks;
4. rank 0 merges the entries into one index and writes it: the commit point; then it
   records the checkpoint and tells the others.

A value sharded across workers (boxes of a global array, a ``ShardedValue``) becomes a
partitioned variable, as TensorFlow's ``ShardedVariable`` saves: a full entry listing
its slices, and each worker's box as a slice entry in that worker's shard.

Example:
    >>> import threading, numpy as np, ckptcore as ck
    >>> from ckptcore.distributed.collective import ThreadGroup
    >>> opts = [ck.CheckpointOptions(format="tensorflow", process_group=g) for g in ThreadGroup.create(2)]
    >>> def save(o): ck.Checkpoint(a=np.arange(4.0), b=np.ones(2)).write("memory://doc/tfmulti/c", o)
    >>> ts = [threading.Thread(target=save, args=(o,)) for o in opts]
    >>> _ = [t.start() for t in ts]; _ = [t.join() for t in ts]
    >>> r = ck.load_checkpoint("memory://doc/tfmulti/c")
    >>> r.format.name, r.index.num_shards, r.get_tensor("a/.ATTRIBUTES/VARIABLE_VALUE").tolist()
    ('tensorflow', 2, [0.0, 1.0, 2.0, 3.0])
"""

from __future__ import annotations

from collections.abc import Callable

from ...errors import CheckpointError
from .. import ckpt as fmt

__all__ = ["collective_write"]


def _merge_slices(plan, infos: list[dict]) -> dict[str, dict]:
    """Every worker's slices, by key, checked to cover each tensor (the reader checks the exact tiling)."""
    import numpy as np

    merged: dict[str, dict] = {}
    for info in infos:
        for key, rec in info["slices"].items():
            merged.setdefault(key, {"dtype": rec["dtype"], "shape": rec["shape"], "boxes": []})["boxes"] += rec["boxes"]
    for key, rec in merged.items():
        total, want = sum(int(np.prod(b[1])) for b in rec["boxes"]), int(np.prod(rec["shape"]))
        if total != want:
            raise CheckpointError(f"the workers' shards of {key!r} cover {total} of its {want} elements (global "
                                  f"shape {tuple(rec['shape'])}); some part of it is held by no worker")
    return merged


class _Sections:
    """TensorFlow's format in the collective protocol: a TensorBundle data shard per worker; rank 0
    merges every worker's entries (and slices) into one TensorBundle index."""

    what = "shard"

    def check(self, plan) -> None:
        from .writer import check_plan

        check_plan(plan)

    def new_tag(self, storage) -> str | None:
        return None  # TensorFlow's readers know only its own data file names

    def data_file(self, spath: str, rank: int, world: int, tag: str | None) -> str:
        return fmt.data_path(spath, rank, world)

    def write(self, storage, spath: str, plan, mine: list, rank: int, world: int, tag: str | None) -> dict:
        from ...distributed.merge import local_arrays
        from .writer import BundleWriter, object_graph

        with BundleWriter(storage, spath, shard=rank, num_shards=world) as w:
            for (row, start, extent), (entry, arr) in zip(mine, local_arrays(plan, mine)):
                full = tuple(plan.tensors[row][0].shape)
                if tuple(extent) == full and not any(start):
                    w.add(entry.key, entry.dtype, entry.shape, arr)
                else:  # a box of a value sharded across workers: a slice of a partitioned variable, as TF's
                    w.add_slice(entry.key, entry.dtype, full, start, extent, arr)
            graph = None
            if rank == 0:
                graph = object_graph(plan.graph, [e.key for e, _ in plan.tensors], plan.full_names)
            return {"entries": w.commit_data(graph), "slices": w.slices}

    def index(self, plan, sections: list[dict], world: int, tag: str | None) -> bytes:
        from .writer import encode_index, entry_bytes, sliced_entries

        merged = [(k, entry_bytes(v)) for s in sections for k, v in s["entries"].items()]
        merged += sliced_entries(_merge_slices(plan, sections))
        return encode_index(merged, num_shards=world)


def collective_write(group, storage, spath: str, make_plan: Callable, *, timeout: float | None = None,
                     on_commit: Callable[[], None] | None = None) -> None:
    """Write the TensorBundle at ``spath`` with every worker of ``group`` (see the module docstring).

    ``make_plan()`` returns this worker's :class:`~ckptcore.save.plan.SavePlan`; ``on_commit``
    runs on every worker once the index is committed (rank 0 first).
    """
    from ...distributed.protocol import run_collective_save

    run_collective_save(group, storage, spath, make_plan, _Sections(), timeout=timeout, on_commit=on_commit)
