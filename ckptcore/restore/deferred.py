"""Deferred restores (restore-on-create): the core's tables of values waiting for objects.

A restore that finds no live object for a saved edge queues the value on the live *parent*
(:data:`_PENDING`, weakly keyed: nothing is attached to user objects). An adapter that gains
a dependency calls :func:`notify_dependency_added`, which restores the waiting subtree into it.
Restores are numbered (TF's ``restore_uid``) so that an older restore that resumes late does
not overwrite what a newer one assigned. :mod:`ckptcore.restore.session` fills these tables.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> src = ck.Module(); src.w = np.arange(2.0)
    >>> path = ck.Checkpoint(m=src).write("memory://doc/deferred/c")
    >>> dst = ck.Module(); status = ck.Checkpoint(m=dst).read(path)
    >>> has_pending(dst)
    True
    >>> dst.w = np.zeros(2); dst.w.tolist(), has_pending(dst)
    ([0.0, 1.0], False)
"""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Any

from ..registry import adapter_or_none

__all__ = ["WeakIdTable", "has_pending", "notify_dependency_added", "pending_count"]

_LOCK = threading.RLock()


class _Strong:
    """Stand-in for a weakref to an object that cannot be weakly referenced."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __call__(self):
        return self.obj


def _ref(obj, callback=None):
    try:
        return weakref.ref(obj, callback) if callback else weakref.ref(obj)
    except TypeError:
        return _Strong(obj)


class WeakIdTable:
    """A mapping keyed by object identity that never keeps its keys alive.

    Works for unhashable objects (numpy arrays); objects that cannot be weakly
    referenced are held strongly.

    Example:
        >>> import numpy as np
        >>> t = WeakIdTable(); a = np.zeros(1); t[a] = 1
        >>> t.get(a), len(t)
        (1, 1)
        >>> del a; len(t)
        0
    """

    def __init__(self):
        self._d: dict[int, tuple[Any, Any]] = {}
        selfref = weakref.ref(self)

        def remove(r):  # one callback for all keys: each KeyedRef carries its key
            table = selfref()
            if table is not None:
                entry = table._d.get(r.key)
                if entry is not None and entry[0] is r:
                    del table._d[r.key]
        self._remove = remove

    def __setitem__(self, obj, value) -> None:
        self.put(obj, value)

    def put(self, obj, value):
        """``self[obj] = value``; returns the (weak) reference to ``obj`` the table holds."""
        key = id(obj)
        entry = self._d.get(key)
        if entry is not None and entry[0]() is obj:
            self._d[key] = (entry[0], value)
            return entry[0]
        try:
            ref = weakref.KeyedRef(obj, self._remove, key)
        except TypeError:
            ref = _Strong(obj)
        self._d[key] = (ref, value)
        return ref

    def get(self, obj, default=None):
        entry = self._d.get(id(obj))
        if entry is not None and entry[0]() is obj:
            return entry[1]
        return default

    def __contains__(self, obj) -> bool:
        entry = self._d.get(id(obj))
        return entry is not None and entry[0]() is obj

    def pop(self, obj, default=None):
        entry = self._d.get(id(obj))
        if entry is not None and entry[0]() is obj:
            del self._d[id(obj)]
            return entry[1]
        return default

    def __len__(self) -> int:
        return sum(1 for r, _ in list(self._d.values()) if r() is not None)  # callbacks may mutate _d


# How many dependencies were announced (notify_dependency_added) so far: a restore remembers it, and a
# status assertion trusts what the restore saw of the live graph only while no new one was announced.
_CHANGES = 0

# parent object -> {child name: [(session, checkpoint node id, path), ...]}: every restore that waits for
# that dependency, as TF's _deferred_dependencies (name -> list of CheckpointPositions)
_PENDING = WeakIdTable()
# Restores are numbered (TF's restore_uid). While an older restore still waits for objects, a newer one
# records here, per live object it assigned values to, its number (TF's _update_uid): when the older one's
# wait ends it matches those objects (its status completes) but does not overwrite the newer values.
_UIDS = itertools.count(1)
_UPDATE_UID = WeakIdTable()
# The same per optimizer slot, as TF gives each slot variable its own _update_uid:
# optimizer -> {(id(variable), slot name): (weak reference to the variable, restore number)}
_SLOT_UPDATE_UID = WeakIdTable()
_WAITING_UIDS: dict[int, int] = {}   # restore number -> how many of its values wait in _PENDING (an upper bound)


def _forget_waiting(uid: int, n: int = 1) -> None:
    left = _WAITING_UIDS.get(uid, 0) - n
    if left > 0:
        _WAITING_UIDS[uid] = left
    else:
        _WAITING_UIDS.pop(uid, None)
    if not _WAITING_UIDS:
        _UPDATE_UID._d.clear()   # no older restore can resume: nothing to protect
        _SLOT_UPDATE_UID._d.clear()


def pending_count() -> int:
    """How many live parents have queued (deferred) restores. For tests and debugging.

    Example:
        >>> pending_count() >= 0
        True
    """
    with _LOCK:
        return len(_PENDING)


def has_pending(parent: Any) -> bool:
    """Whether a restore queued values for dependencies ``parent`` does not have yet.

    Adapters whose creation hooks must compute children before calling
    :func:`notify_dependency_added` can skip that work when this is False.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> src = ck.Module(); src.w = np.ones(2)
        >>> path = ck.Checkpoint(m=src).write("memory://doc/has_pending/c")
        >>> dst = ck.Module(); status = ck.Checkpoint(m=dst).read(path)
        >>> ck.has_pending(dst)
        True
        >>> dst.w = np.zeros(2); ck.has_pending(dst)
        False
    """
    if not _PENDING._d:
        return False
    with _LOCK:
        return bool(_PENDING.get(parent))


def notify_dependency_added(parent: Any, name: str, child: Any) -> None:
    """Tell ckptcore that ``parent`` gained the dependency ``name`` -> ``child``.

    If a restore queued a value for that edge, ``child`` (and its subtree)
    receives it now. Adapters call this from whatever hook their framework
    offers; ``ck.Module`` and the tracked containers call it on assignment.
    Cheap when nothing is queued.

    Example:
        >>> import ckptcore as ck
        >>> ck.notify_dependency_added(ck.Module(), "w", ck.Variable(0.0))
    """
    global _CHANGES
    _CHANGES += 1  # the live graph changed: status assertions look at it again (see LoadStatus)
    if not len(_PENDING._d):
        return
    with _LOCK:
        waiting = _PENDING.get(parent)
        if not waiting:
            return
        items = waiting.get(str(name))
        if not items:
            return
        if adapter_or_none(child) is None:
            return
        del waiting[str(name)]
        if not waiting:
            _PENDING.pop(parent)
        # As TF's _handle_deferred_dependencies: the newest restore first; an older one then matches the
        # objects the newer one filled without overwriting them (_UPDATE_UID), and fills the rest.
        items = sorted(items, key=lambda it: it[0].uid, reverse=True)
        done = 0
        try:
            for session, node_id, path in items:
                session.restore_subtree(child, node_id, path)
                _forget_waiting(session.uid)
                done += 1
        except BaseException:
            # Leave the rest queued: a later, correct object may still come.
            w = _PENDING.get(parent)
            if w is None:
                w = {}
                _PENDING[parent] = w
            w.setdefault(str(name), []).extend(items[done:])
            raise
