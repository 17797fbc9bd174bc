"""Collective load-status assertions: the same answer on every worker of a collective restore.

After a collective restore (:func:`ckptcore.distributed.restore.run_collective`) each worker's
:class:`~ckptcore.LoadStatus` remembers the group. ``assert_consumed()``,
``assert_existing_objects_matched()`` and ``assert_nontrivial_match()`` then check the local
graph and exchange the outcome (one small all-gather, bounded by ``collective_timeout``): if
the assertion fails on any worker it fails on **every** worker, with one message naming the
failing ranks and their unmatched paths. Like the restore, the assertions are collective:
every worker calls the same ones in the same order (a worker that skips one makes the others
raise :class:`~ckptcore.distributed.CollectiveTimeoutError` after the timeout). A
single-process restore has no group and no exchange.

Example:
    >>> import threading, numpy as np, ckptcore as ck
    >>> from ckptcore.distributed import ThreadGroup
    >>> path = ck.Checkpoint(a=np.ones(1)).write("memory://doc/dstatus/c")
    >>> groups, errors = ThreadGroup.create(2), [None, None]
    >>> def restore(g):
    ...     graph = {"a": np.zeros(1)} if g.rank == 0 else {"a": np.zeros(1), "b": np.zeros(1)}
    ...     status = ck.Checkpoint(**graph).read(path, ck.CheckpointOptions(process_group=g))
    ...     try:
    ...         status.assert_consumed()
    ...     except AssertionError as e:
    ...         errors[g.rank] = str(e).splitlines()[0]
    >>> ts = [threading.Thread(target=restore, args=(g,)) for g in groups]
    >>> _ = [t.start() for t in ts]; _ = [t.join() for t in ts]
    >>> errors[0] == errors[1], errors[0]
    (True, 'assert_consumed failed on 1 of 2 ranks (rank 1):')
"""

from __future__ import annotations

from ..errors import CheckpointError
from .collective import DEFAULT_TIMEOUT, Group, all_gather_json

__all__ = ["agree", "MAX_RANKS_LISTED"]

#: the most ranks whose messages one failure lists (the other failing ranks are counted)
MAX_RANKS_LISTED = 8


class _Disagreement(CheckpointError, RuntimeError):
    pass


def agree(collective: tuple[Group, float | None], what: str, message: str | None) -> str | None:
    """This worker's assertion outcome (``message``: None when it passed) -> the group's.

    Returns None when the assertion passed on every worker, else one message (the same on every
    worker) naming the failing ranks, each with its own lines. Raises a ``CheckpointError`` if the
    workers called different assertions.

    Example:
        >>> from ckptcore.distributed import Group
        >>> agree((Group(), None), "assert_consumed", None) is None
        True
        >>> print(agree((Group(), 5.0), "assert_consumed", "restore of 'p' is not complete"))
        assert_consumed failed on 1 of 1 ranks (rank 0):
        rank 0: restore of 'p' is not complete
    """
    group, timeout = collective
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    infos = all_gather_json(group, [what, message], timeout, f"{what} (status assertion)")
    calls = sorted({w for w, _ in infos})
    if len(calls) > 1:
        others = ", ".join(f"rank {r}: {w}" for r, (w, _) in enumerate(infos) if w != what)
        raise _Disagreement(f"rank {group.rank}: the workers called different status assertions ({what} here; "
                            f"{others}): after a collective restore every worker calls the same ones, in the same "
                            "order")
    failed = [(r, m) for r, (_w, m) in enumerate(infos) if m]
    if not failed:
        return None
    ranks = [r for r, _ in failed]
    shown = ", ".join(str(r) for r in ranks[:MAX_RANKS_LISTED])
    if len(ranks) > MAX_RANKS_LISTED:
        shown += f", ... ({len(ranks) - MAX_RANKS_LISTED} more)"
    lines = [f"{what} failed on {len(ranks)} of {group.size} ranks (rank{'s' if len(ranks) > 1 else ''} {shown}):"]
    for r, m in failed[:MAX_RANKS_LISTED]:
        lines.append(f"rank {r}: {m}")
    return "\n".join(lines)
