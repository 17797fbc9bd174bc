"""A multi-worker save in TensorFlow's format: each worker writes its own data shard, rank 0 one merged index.

TensorFlow's own multi-worker layout: ``P.data-<rank>-of-<world>`` per worker and one
``P.index`` whose entries name their shard (``BundleEntryProto.shard_id``), as
TensorFlow's ``MergeBundles`` leaves them. Who writes which value is decided by
:func:`ckptcore.distributed.merge.assign` (each value once in total, the bytes spread
evenly), through the collective interface of :mod:`ckptcore.distributed.collective`;
the steps and the failure handling are those of ckptcore's own collective save
(:mod:`ckptcore.distributed.save`, whose helpers this module uses):

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
from typing import Any

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


def collective_write(group, storage, spath: str, make_plan: Callable, *, timeout: float | None = None,
                     on_commit: Callable[[], None] | None = None) -> None:
    """Write the TensorBundle at ``spath`` with every worker of ``group`` (see the module docstring).

    ``make_plan()`` returns this worker's :class:`~ckptcore.saver.SavePlan`; ``on_commit``
    runs on every worker once the index is committed (rank 0 first).
    """
    from ...distributed.collective import DEFAULT_TIMEOUT, CollectiveTimeoutError, all_gather_json, broadcast_json
    from ...distributed.merge import assign, check_consistent, describe, local_arrays

    # the failure handling of ckptcore's own collective save, shared so both formats fail the same way
    from ...distributed.save import _commit_unconfirmed, _message, _raise_failed, _remove, _temp_files
    from ...saver import checkpoint_files
    from .writer import BundleWriter, check_plan, encode_index, entry_bytes, object_graph, sliced_entries

    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    rank, world = group.rank, group.size
    error, desc = None, None
    plan: Any = None
    raised: BaseException | None = None
    try:
        if rank == 0:
            d = storage.dirname(spath)
            if d:
                storage.makedirs(d)
            if storage.exists(fmt.index_path(spath)):
                storage.remove([fmt.index_path(spath)])  # uncommitted first: its index never describes new data
            old = checkpoint_files(storage, spath) + _temp_files(storage, spath)
            if old:
                storage.remove(old)  # an earlier, failed (killed: its temp files) or overwritten save's files
        plan = make_plan()
        check_plan(plan)
        desc = describe(plan)
    except BaseException as e:  # noqa: BLE001 -- reported to every worker, then raised
        error, raised = _message(e), e
    infos = all_gather_json(group, {"error": error, "rows": desc}, timeout, "plan")
    _raise_failed(infos, rank, "planning its save", raised if error else None)
    descs = [i["rows"] for i in infos]
    check_consistent(descs)
    mine = assign(descs)[rank]

    data_file = fmt.data_path(spath, rank, world)
    entries: dict = {}
    slices: dict = {}
    try:
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
            entries, slices = w.commit_data(graph), w.slices
    except BaseException as e:  # noqa: BLE001
        error, raised = _message(e), e
    try:
        infos = all_gather_json(group, {"error": error, "entries": entries, "slices": slices}, timeout, "write")
    except BaseException:
        _remove(storage, [data_file])
        raise
    if any(i["error"] for i in infos):
        _remove(storage, [data_file])
        _raise_failed(infos, rank, "writing its shard", raised if error else None)

    error, committed = None, False
    if rank == 0:
        try:
            merged = [(k, entry_bytes(v)) for i in infos for k, v in i["entries"].items()]
            merged += sliced_entries(_merge_slices(plan, infos))
            storage.write_atomic(fmt.index_path(spath), encode_index(merged, num_shards=world))
            committed = True
            if on_commit is not None:
                on_commit()
        except BaseException as e:  # noqa: BLE001
            error, raised = _message(e), e
            if not committed:
                _remove(storage, [fmt.index_path(spath)])
    try:
        result = broadcast_json(group, {"error": error, "committed": committed}, 0, timeout, "commit")
    except CollectiveTimeoutError as e:  # a worker died after every shard was durable
        if rank == 0 and error is not None and raised is not None:
            raise raised from e
        _commit_unconfirmed(group, storage, spath, committed and error is None, e)
        return
    if result["error"]:
        if not result["committed"]:
            _remove(storage, [data_file])
        if rank == 0 and raised is not None:
            raise raised
        raise CheckpointError(f"rank {rank}: rank 0 could not {'record' if result['committed'] else 'commit'} "
                              f"checkpoint {spath!r}: {result['error']}")
    if rank != 0 and on_commit is not None:
        on_commit()
