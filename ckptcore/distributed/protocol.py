"""The steps of every collective save, whatever the format; the format supplies its sections and index.

One protocol, run on every worker of the group (each step a collective call, bounded by the timeout):

1. rank 0 draws the attempt's data tag (object stores, ckptcore's format: every worker's data
   file carries it), uncommits a checkpoint already at the path (its index first) and removes
   its files and a killed writer's temporary files; every worker plans its save (and the
   format checks the plan); all exchange their descriptions (keys, dtypes, global shapes,
   boxes) -- or the error planning raised;
2. every worker computes the same assignment (:func:`ckptcore.distributed.merge.assign`) and
   the format writes this worker's boxes to its own data file, made durable;
3. all exchange what they wrote or their error; on any error every worker removes its own
   data file and raises, naming the failed ranks;
4. rank 0 has the format build the one index from every worker's section and writes it: the
   commit point (on an object store a failed PUT is read back: landed, it is committed; else,
   as it may still land, the tagged data stay); then it records the checkpoint (``on_commit``:
   state file, manager) and tells the others, which record it too and return.

ckptcore's own format (:mod:`ckptcore.distributed.save`) and TensorFlow's
(:mod:`ckptcore.formats.tensorbundle.collective`) differ only in a :class:`Sections`.

Example:
    >>> import threading, numpy as np, ckptcore as ck
    >>> from ckptcore.distributed.collective import ThreadGroup
    >>> opts = [ck.CheckpointOptions(process_group=g) for g in ThreadGroup.create(2)]
    >>> def save(o): ck.Checkpoint(a=np.arange(3.0)).write("memory://doc/protocol/c", o)
    >>> ts = [threading.Thread(target=save, args=(o,)) for o in opts]
    >>> _ = [t.start() for t in ts]; _ = [t.join() for t in ts]
    >>> ck.load_checkpoint("memory://doc/protocol/c").get_tensor("a/.ATTRIBUTES/VARIABLE_VALUE").tolist()
    [0.0, 1.0, 2.0]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import CheckpointError, StoragePermissionError
from ..formats import ckpt as fmt
from ..progress import log
from .collective import DEFAULT_TIMEOUT, CollectiveTimeoutError, Group, all_gather_json, broadcast_json
from .merge import assign, check_consistent, describe

__all__ = ["Sections", "run_collective_save", "temp_files"]


class Sections(Protocol):
    """What a format does in a collective save: its data files, one worker's section, the merged index."""

    what: str  # "section" / "shard": how errors name a worker's part

    def check(self, plan: Any) -> None:
        """Raise for what the format cannot hold (step 1, on every worker)."""

    def new_tag(self, storage: Any) -> str | None:
        """This save attempt's data tag (rank 0, step 1), shared by every worker's data file name, or None."""

    def data_file(self, spath: str, rank: int, world: int, tag: str | None) -> str:
        """This worker's data file."""

    def write(self, storage: Any, spath: str, plan: Any, mine: list, rank: int, world: int, tag: str | None) -> dict:
        """Write the boxes ``mine`` (``[(row, start, extent), ...]``) of ``plan`` to this worker's data file,
        made durable; return a JSON-ready description of them for rank 0's index."""

    def index(self, plan: Any, sections: list[dict], world: int, tag: str | None) -> bytes:
        """The encoded index of the whole checkpoint, from every worker's :meth:`write` result (rank 0)."""


def run_collective_save(group: Group, storage, spath: str, make_plan: Callable, sections: Sections, *,
                        timeout: float | None = None, on_commit: Callable[[], None] | None = None) -> None:
    """Run the collective save of ``spath`` (the module docstring's steps) with ``sections``' format.

    ``on_commit`` runs on every worker once the index is committed: on rank 0 first, before
    the others return.
    """
    from ..save.write import checkpoint_files, remove_index

    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    rank, world = group.rank, group.size
    error: str | None = None
    raised: BaseException | None = None
    plan = None
    desc = None
    tag = None
    try:
        if rank == 0:
            # on object stores, this attempt's own data names: a late request of another attempt cannot reach them
            tag = sections.new_tag(storage)
            _makedirs(storage, spath)
            index_file = fmt.index_path(spath)
            if storage.exists(index_file):
                # uncommitted first: its index never describes new data (on object stores the DELETE names
                # the version it means: applied late, it cannot remove an index written since)
                remove_index(storage, index_file)
            old = checkpoint_files(storage, spath) + temp_files(storage, spath)
            if old:
                storage.remove(old)  # an earlier, failed (killed: its temp files) or overwritten save's files
        plan = make_plan()
        sections.check(plan)
        desc = describe(plan)
    except BaseException as e:  # noqa: BLE001 -- reported to every worker, then raised
        error, raised = _message(e), e
    infos = all_gather_json(group, {"error": error, "rows": desc, "tag": tag}, timeout, "plan")
    _raise_failed(infos, rank, "planning its save", raised if error else None)
    descs = [i["rows"] for i in infos]
    check_consistent(descs)
    mine = assign(descs)[rank]
    tag = infos[0]["tag"]

    data_file = sections.data_file(spath, rank, world, tag)
    section: dict = {}
    error = None
    try:
        if rank != 0:
            _makedirs(storage, spath)
        section = sections.write(storage, spath, plan, mine, rank, world, tag)
    except BaseException as e:  # noqa: BLE001
        error, raised = _message(e), e
    try:
        infos = all_gather_json(group, {"error": error, "section": section}, timeout, "write")
    except BaseException:
        _remove(storage, [data_file])
        raise
    if any(i["error"] for i in infos):
        _remove(storage, [data_file])
        _raise_failed(infos, rank, f"writing its {sections.what}", raised if error else None)

    error, committed, keep = None, False, False
    if rank == 0:
        try:
            index = sections.index(plan, [i["section"] for i in infos], world, tag)
            committed = _write_index(storage, fmt.index_path(spath), index, tag)
            if on_commit is not None:
                on_commit()
        except BaseException as e:  # noqa: BLE001
            error, raised = _message(e), e
            if not committed:
                # An object store may still apply the index PUT the client gave up on: that index names this
                # attempt's data (its tag), so they stay (a manager's later save removes them once no index
                # names them); a refused PUT never lands. Elsewhere: the index, then every data file.
                keep = tag is not None and not isinstance(e, StoragePermissionError)
                if not keep:
                    _remove(storage, [fmt.index_path(spath)])
    try:
        result = broadcast_json(group, {"error": error, "committed": committed, "keep": keep}, 0, timeout,
                                "commit")
    except CollectiveTimeoutError as e:  # a worker died after every section was durable
        if rank == 0 and error is not None and raised is not None:
            raise raised from e
        _commit_unconfirmed(group, storage, spath, committed and error is None, e)
        return  # rank 0: committed and recorded; the dead worker's failure shows at the group's next step
    if result["error"]:
        if not result["committed"] and not result["keep"]:
            _remove(storage, [data_file])
        if rank == 0 and raised is not None:
            raise raised
        raise CheckpointError(f"rank {rank}: rank 0 could not {'record' if result['committed'] else 'commit'} "
                              f"checkpoint {spath!r}: {result['error']}")
    if rank != 0 and on_commit is not None:
        on_commit()


def _write_index(storage, index_file: str, encoded: bytes, tag: str | None) -> bool:
    """Write the index (the commit point); True once it is on storage.

    On an object store (``tag``: the attempt's data names are its own) the PUT may have landed
    although its response was lost: then the checkpoint is committed, as for a single process.
    """
    try:
        storage.write_atomic(index_file, encoded)
    except Exception:
        if tag is None:
            raise
        try:
            landed = storage.read_bytes(index_file) == encoded
        except Exception:  # noqa: BLE001 -- not known to be there: the PUT's error stands
            landed = False
        if not landed:
            raise
    return True


def temp_files(storage, spath: str) -> list[str]:
    """The temporary files of sections (and index) of ``spath`` that a killed writer left behind.

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, p = open_storage("memory://doc/tempfiles/ckpt-2")
        >>> st.write_atomic("memory://doc/tempfiles/.ckpt-2.data-00001-of-00002.tmp-" + "0" * 32, b"x")
        >>> [st.basename(f) for f in temp_files(st, p)]
        ['.ckpt-2.data-00001-of-00002.tmp-00000000000000000000000000000000']
    """
    d, base = storage.dirname(spath), storage.basename(spath)
    pattern = re.compile(re.escape(f".{base}") + r"(\.index|\.data-\d+-of-\d+)\.tmp-[0-9a-f]{32}")
    return [storage.join(d, n) for n in storage.listdir(d) if pattern.fullmatch(n)]


def _makedirs(storage, spath: str) -> None:
    d = storage.dirname(spath)
    if d:
        storage.makedirs(d)


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


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
