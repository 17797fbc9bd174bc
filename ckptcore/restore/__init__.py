"""Restoring: matching a checkpoint's graph to live objects, deferred restores, load status.

- :mod:`ckptcore.restore.session`: the :class:`RestoreSession` that walks the saved graph beside
  the live one, checks and reads values in place, and queues values for objects that do not exist
  yet (restore-on-create).
- :mod:`ckptcore.restore.deferred`: the tables of those queued values and
  :func:`notify_dependency_added`, which fills them when the objects appear.
- :mod:`ckptcore.restore.values`: the checks and messages of restore planning, aliasing, state setters.
- :mod:`ckptcore.restore.slots`: optimizer slots read in the same planned pass.
- :mod:`ckptcore.restore.status`: :class:`LoadStatus` and :class:`InitializationOnlyStatus`, the
  objects ``restore()`` returns, with TF's assertions.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> path = ck.Checkpoint(a=np.ones(1)).write("memory://doc/restore-pkg/c")
    >>> ck.Checkpoint(a=np.zeros(1)).read(path).assert_consumed() is not None
    True
"""

from .session import RestoreSession, WeakIdTable, has_pending, notify_dependency_added, pending_count  # noqa: F401
from .status import InitializationOnlyStatus, LoadStatus

__all__ = ["RestoreSession", "LoadStatus", "InitializationOnlyStatus", "WeakIdTable", "has_pending",
           "notify_dependency_added", "pending_count"]
