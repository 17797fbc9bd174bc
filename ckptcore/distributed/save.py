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

A worker that dies makes the others fail at the next step within the timeout. Before
rank 0's index write nothing is committed (no index: ``latest`` still names the previous
checkpoint). After it the checkpoint is complete: rank 0 killed between its index write and
step 4's message leaves a complete checkpoint (recorded as latest only if rank 0 got that
far) and the others raise :class:`~ckptcore.distributed.CollectiveTimeoutError` saying the
index exists; another worker killed then does not stop rank 0, which returns the path.

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

import re
from collections.abc import Callable

from ..errors import CheckpointError
from ..formats import ckpt as fmt
from ..progress import log
from .collective import DEFAULT_TIMEOUT, CollectiveTimeoutError, Group, all_gather_json, broadcast_json
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
            old = checkpoint_files(storage, spath) + _temp_files(storage, spath)
            if old:
                storage.remove(old)  # an earlier, failed (killed: its temp files) or overwritten save's sections
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
    try:
        result = broadcast_json(group, {"error": error, "committed": committed}, 0, timeout, "commit")
    except CollectiveTimeoutError as e:
        if rank == 0 and error is not None:
            raise raised from e
        _commit_unconfirmed(group, storage, spath, committed and error is None, e)
        return  # rank 0: committed and recorded; the dead worker's failure shows at the group's next step
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


def _commit_unconfirmed(group: Group, storage, spath: str, done: bool, e: CollectiveTimeoutError) -> None:
    """The last step (rank 0 telling the others the outcome of its commit) failed: a worker died after
    every section was durable. Rank 0, whose commit and record succeeded, returns (logging it): the
    checkpoint is complete and ``latest``. Every other worker raises, saying what it finds at the path:
    an index there is a complete checkpoint (rank 0 died after its commit, maybe before recording it
    as latest); no index, nothing committed."""
    if done:
        log.warning("rank 0: checkpoint %s is committed and recorded, but not every worker heard it: %s", spath, e)
        return
    try:
        there = storage.exists(fmt.index_path(spath))
    except Exception:  # noqa: BLE001 -- the message says so
        there = None
    state = ("its index exists: rank 0 committed it before it failed, so the checkpoint is complete and "
             "restorable by path, and latest_checkpoint names it only if rank 0 also recorded it" if there
             else "no index was written, so nothing was committed" if there is False
             else "whether rank 0 committed it is unknown (the storage did not answer)")
    raise CollectiveTimeoutError(
        f"rank {group.rank} of {group.size}: the commit step of checkpoint {spath!r} failed or did not finish "
        f"(rank 0 died or hung after every section was written; {type(e.__cause__ or e).__name__}): "
        f"{state}.") from e


def _temp_files(storage, spath: str) -> list[str]:
    """The temporary files of sections (and index) of ``spath`` that a killed writer left behind.

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, p = open_storage("memory://doc/tempfiles/ckpt-2")
        >>> st.write_atomic("memory://doc/tempfiles/.ckpt-2.data-00001-of-00002.tmp-" + "0" * 32, b"x")
        >>> [st.basename(f) for f in _temp_files(st, p)]
        ['.ckpt-2.data-00001-of-00002.tmp-00000000000000000000000000000000']
    """
    d, base = storage.dirname(spath), storage.basename(spath)
    pattern = re.compile(re.escape(f".{base}") + r"(\.index|\.data-\d+-of-\d+)\.tmp-[0-9a-f]{32}")
    return [storage.join(d, n) for n in storage.listdir(d) if pattern.fullmatch(n)]


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
