"""The collective save: each worker writes its own section; rank 0 commits the merged index last.

The steps are :mod:`ckptcore.distributed.protocol`'s, shared with TensorFlow's format; here, on
every worker of the group (each one a collective call, bounded by the timeout):

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

from collections.abc import Callable

from ..formats import ckpt as fmt
from .collective import Group
from .merge import local_arrays, merge
from .protocol import run_collective_save

__all__ = ["collective_write"]


class _Sections:
    """ckptcore's own format in the collective protocol: one data file per worker, tensors laid out as a
    single process lays them out; rank 0 merges the pieces into one index."""

    what = "section"

    def check(self, plan) -> None:
        pass  # ckptcore's format holds whatever planning accepted

    def new_tag(self, storage) -> str | None:
        return fmt.new_data_tag() if getattr(storage, "unique_data_names", False) else None

    def data_file(self, spath: str, rank: int, world: int, tag: str | None) -> str:
        return fmt.data_path(spath, rank, world, tag)

    def write(self, storage, spath: str, plan, mine: list, rank: int, world: int, tag: str | None) -> dict:
        from ..save.write import _write_tensors

        items = local_arrays(plan, mine)
        writer = storage.open_writer(self.data_file(spath, rank, world, tag))
        try:
            size = _write_tensors(writer, items, None)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        written = [[row, list(start), list(extent), e.offset, e.nbytes, e.crc32c]
                   for (row, start, extent), (e, _a) in zip(mine, items)]
        return {"written": written, "size": size}

    def index(self, plan, sections: list[dict], world: int, tag: str | None) -> bytes:
        index = merge(plan, world, [s["written"] for s in sections], [s["size"] for s in sections])
        index.data_tag = tag
        return index.encode()


def collective_write(group: Group, storage, spath: str, make_plan: Callable, *, timeout: float | None = None,
                     on_commit: Callable[[], None] | None = None) -> None:
    """Write the checkpoint at ``spath`` with every worker of ``group`` (see the module docstring).

    ``make_plan()`` returns this worker's :class:`~ckptcore.save.plan.SavePlan`; ``on_commit`` runs
    on every worker once the index is committed (rank 0 first, before the others return).
    """
    run_collective_save(group, storage, spath, make_plan, _Sections(), timeout=timeout, on_commit=on_commit)
