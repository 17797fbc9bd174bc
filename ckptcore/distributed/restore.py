"""The collective restore: every worker matches and checks its own objects, and they agree before any read.

Each worker reads the one merged index and plans its restore (matching, shape and dtype
checks). The workers then exchange whether planning succeeded: if it failed on any of them
(a shape mismatch on one rank), every worker raises and nothing is assigned anywhere.
Otherwise each reads only what its own objects need (its shards' overlapping byte
ranges: :mod:`ckptcore.distributed.reshard`) and, at the end, they exchange the outcome again
so that a failed read on one worker fails the restore on every worker.

Values that wait for objects created later (restore-on-create) are restored by each worker
on its own, when the object appears: that part is not collective. The load-status assertions
afterwards are (:mod:`ckptcore.distributed.status`).

Example:
    >>> import threading, numpy as np, ckptcore as ck
    >>> from ckptcore.distributed.collective import ThreadGroup
    >>> path = ck.Checkpoint(w=np.arange(3.0)).write("memory://doc/drestore/c")
    >>> groups, outs = ThreadGroup.create(2), [np.zeros(3), np.zeros(3)]
    >>> def restore(g): ck.Checkpoint(w=outs[g.rank]).read(path, ck.CheckpointOptions(process_group=g))
    >>> ts = [threading.Thread(target=restore, args=(g,)) for g in groups]
    >>> _ = [t.start() for t in ts]; _ = [t.join() for t in ts]
    >>> outs[1].tolist()
    [0.0, 1.0, 2.0]
"""

from __future__ import annotations

from ..errors import CheckpointError
from .collective import DEFAULT_TIMEOUT, Group, all_gather_json

__all__ = ["run_collective"]


class _Agreement:
    """Called by the session between planning and reading: ``agree(error or None)``."""

    def __init__(self, group: Group, timeout: float):
        self.group, self.timeout = group, timeout

    def __call__(self, error: BaseException | None, step: str = "plan") -> None:
        msg = None if error is None else f"{type(error).__name__}: {error}"
        infos = all_gather_json(self.group, {"error": msg}, self.timeout, f"restore {step}")
        failed = [(r, i["error"]) for r, i in enumerate(infos) if i["error"]]
        if not failed or error is not None:
            return  # a worker that failed raises its own error (its caller does)
        r, m = failed[0]
        rank = self.group.rank
        if step == "plan":
            raise _RemoteError(f"rank {rank}: the restore failed on rank {r}, so nothing was restored on any "
                               f"rank: {m}")
        raise _RemoteError(f"rank {rank}: the restore failed on rank {r}: {m}")


class _RemoteError(CheckpointError):
    pass


def run_collective(session, group: Group, timeout: float | None = None) -> None:
    """``session.run()``, agreeing with the rest of ``group`` before reading and after.

    Planning (matching, shape and dtype checks) runs once first without reading anything;
    its outcome is exchanged, so a mismatch on one worker fails the restore on all of them
    before any value is assigned.

    Example:
        >>> from ckptcore.distributed.collective import Group
        >>> import ckptcore as ck, numpy as np
        >>> p = ck.Checkpoint(a=np.ones(1)).write("memory://doc/runc/c")
        >>> a = np.zeros(1); _ = ck.Checkpoint(a=a).read(p, ck.CheckpointOptions(process_group=Group())); a
        array([1.])
    """
    from ..registry import find_adapter
    from ..restore.deferred import _LOCK

    agree = _Agreement(group, DEFAULT_TIMEOUT if timeout is None else float(timeout))
    session.collective = (group, timeout)  # the status assertions agree too (ckptcore.distributed.status)
    error = None
    try:
        root = session.root()
        with _LOCK:
            matches, _pending = session._match(root, 0, (), find_adapter(root))
            session._plan_values(matches, ())
        del matches, _pending
    except BaseException as e:  # noqa: BLE001 -- told to every worker, then raised
        error = e
    finally:
        session._partial = None
    try:
        agree(error, "plan")
    except BaseException:
        session.expect_partial = True  # the caller gets the error; no PartialRestoreWarning on top
        raise
    if error is not None:
        session.expect_partial = True
        raise error
    try:
        session.run()
    except BaseException as e:
        agree(e, "read")
        raise
    agree(None, "read")
