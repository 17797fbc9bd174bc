"""The collective save: each worker writes its own section; rank 0 commits the merged index last.

Steps, on every worker of the group (each one a collective call, bounded by the timeout):

1. rank 0 uncommits a checkpoint already at the path (its index first) and removes its
   files; every worker plans its save and all exchange their descriptions (keys, dtypes,
   global shapes, boxes) -- or the error planning raised;
2. every worker computes the same assignment (:func:`ckptcore.distributed.merge.assign`) and
   writes its boxes to its own data file ``P.data-<rank>-of-<world>``, made durable;
3. all exchange what they wrote (offsets, checksums) or their error; on any error every
   worker removes its own file and raises, naming the failed ranks;
4. rank 0 merges the sections into one index and writes it: the commit point. Then it
   records the checkpoint (state file, manager) and tells the others, which return the path.

A worker that dies makes the others fail at the next step within the timeout, with
nothing committed.

Example:
    >>> import threading, numpy as np, ckptcore as ck
    >>> from ckptcore.distributed.collective import ThreadGroup
    >>> groups = ThreadGroup.create(2)
    >>> def save(g): ck.Checkpoint(w=np.arange(4.0)).write("memory://doc/dsave/c",
    ...                                                   ck.CheckpointOptions(process_group=g))
    >>> ts = [threading.Thread(target=save, args=(g,)) for g in groups]
    >>> _ = [t.start() for t in ts]; _ = [t.join() for t in ts]
    >>> ck.load_checkpoint("memory://doc/dsave/c").get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE").tolist()
    [0.0, 1.0, 2.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import CheckpointError
from ..formats import ckpt as fmt
from .collective import DEFAULT_TIMEOUT, Group, all_gather_json, broadcast_json
from .merge import assign, check_consistent, describe, local_arrays, merge

__all__ = ["collective_write"]


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def collective_write(group: Group, storage, spath: str, make_plan: Callable, *, timeout: float | None = None,
                     on_commit: Callable[[], None] | None = None) -> None:
    """Write the checkpoint at ``spath`` with every worker of ``group`` (see the module docstring).

    ``make_plan()`` returns this worker's :class:`~ckptcore.saver.SavePlan`; ``on_commit`` runs
    on every worker once the index is committed (rank 0 first, before the others return).
    """
    from ..saver import _write_tensors, checkpoint_files

    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    rank, world = group.rank, group.size
    error = None
    plan = None
    desc = None
    try:
        if rank == 0:
            d = storage.dirname(spath)
            if d:
                storage.makedirs(d)
            index_file = fmt.index_path(spath)
            if storage.exists(index_file):
                storage.remove([index_file])  # uncommitted first: its index never describes new data
            old = checkpoint_files(storage, spath)
            if old:
                storage.remove(old)  # an earlier, failed or overwritten, save's sections
        plan = make_plan()
        desc = describe(plan)
    except BaseException as e:  # noqa: BLE001 -- reported to every worker, then raised
        error = _message(e)
        raised = e
    infos = all_gather_json(group, {"error": error, "rows": desc}, timeout, "plan")
    _raise_failed(infos, rank, "planning its save", raised if error else None)
    descs = [i["rows"] for i in infos]
    check_consistent(descs)
    mine = assign(descs)[rank]

    data_file = fmt.data_path(spath, rank, world)
    written, size, error = [], 0, None
    try:
        if rank != 0:
            d = storage.dirname(spath)
            if d:
                storage.makedirs(d)
        items = local_arrays(plan, mine)
        writer = storage.open_writer(data_file)
        try:
            size = _write_tensors(writer, items, None)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        written = [[row, list(start), list(extent), e.offset, e.nbytes, e.crc32c]
                   for (row, start, extent), (e, _a) in zip(mine, items)]
    except BaseException as e:  # noqa: BLE001
        error = _message(e)
        raised = e
    try:
        infos = all_gather_json(group, {"error": error, "written": written, "size": size}, timeout, "write")
    except BaseException:
        _remove(storage, [data_file])
        raise
    if any(i["error"] for i in infos):
        _remove(storage, [data_file])
        _raise_failed(infos, rank, "writing its section", raised if error else None)

    error, committed = None, False
    if rank == 0:
        try:
            index = merge(plan, world, [i["written"] for i in infos], [i["size"] for i in infos])
            storage.write_atomic(fmt.index_path(spath), index.encode())
            committed = True
            if on_commit is not None:
                on_commit()
        except BaseException as e:  # noqa: BLE001
            error = _message(e)
            raised = e
            if not committed:
                _remove(storage, [fmt.index_path(spath)])
    result = broadcast_json(group, {"error": error, "committed": committed}, 0, timeout, "commit")
    if result["error"]:
        if not result["committed"]:
            _remove(storage, [data_file])
        if rank == 0:
            raise raised
        raise CheckpointError(f"rank {rank}: rank 0 could not "
                              f"{'record' if result['committed'] else 'commit'} checkpoint {spath!r}: "
                              f"{result['error']}")
    if rank != 0 and on_commit is not None:
        on_commit()


def _remove(storage, files) -> None:
    try:
        storage.remove(files)
    except Exception:  # best effort: a later save of the same path removes them too
        pass


def _raise_failed(infos: list[dict], rank: int, what: str, own: BaseException | None) -> None:
    failed = [(r, i["error"]) for r, i in enumerate(infos) if i["error"]]
    if not failed:
        return
    if own is not None:
        raise own
    r, msg = failed[0]
    more = f" (and {len(failed) - 1} more ranks)" if len(failed) > 1 else ""
    raise CheckpointError(f"rank {rank}: rank {r} failed {what}{more}, so no checkpoint was written: {msg}")
