"""The small collective interface a multi-worker checkpoint talks to, and how one is found.

A :class:`Group` is the workers that save or restore one checkpoint together. ckptcore
needs only three operations, all on small ``bytes`` (JSON it encodes itself; nothing is
ever pickled): :meth:`Group.all_gather`, :meth:`Group.broadcast` and :meth:`Group.barrier`.
Every call takes a ``timeout`` in seconds; an implementation raises (any exception) when
it passes, so that workers whose peer died fail instead of hanging.

Call order: every worker calls the same operations in the same order (they are collective);
ckptcore never issues them from more than one thread of a worker at a time.

The torch plugin implements it over ``torch.distributed`` (gloo, NCCL); a JAX multi-host
plugin would implement it over ``jax.experimental.multihost_utils`` or the distributed
client's key-value store. A plugin provides a group through the
``ckptcore_collective_group`` hook (:mod:`ckptcore.hookspec`).

Example:
    >>> from ckptcore.distributed.collective import ThreadGroup, all_gather_json
    >>> import threading
    >>> groups = ThreadGroup.create(2); out = [None, None]
    >>> def run(g): out[g.rank] = all_gather_json(g, {"rank": g.rank}, 10)
    >>> ts = [threading.Thread(target=run, args=(g,)) for g in groups]
    >>> _ = [t.start() for t in ts]; _ = [t.join() for t in ts]
    >>> out[1]
    [{'rank': 0}, {'rank': 1}]
"""

from __future__ import annotations

import json
import threading
from typing import Any

from ..errors import CheckpointError

__all__ = ["Group", "ThreadGroup", "current_group", "all_gather_json", "broadcast_json", "CollectiveTimeoutError",
           "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 600.0  # seconds; CheckpointOptions(collective_timeout=...) overrides it


class CollectiveTimeoutError(CheckpointError, TimeoutError):
    """A collective step of a multi-worker save or restore failed or did not finish in time.

    Example:
        >>> issubclass(CollectiveTimeoutError, TimeoutError)
        True
    """


class Group:
    """The interface (see the module docstring). ``rank`` is this worker's index in ``[0, size)``.

    Example:
        >>> g = Group(); g.rank, g.size, g.all_gather(b"x", 1.0), g.broadcast(b"y", 0, 1.0)
        (0, 1, [b'x'], b'y')
    """

    rank: int = 0
    size: int = 1

    def all_gather(self, data: bytes, timeout: float) -> list[bytes]:
        """Every worker's ``data``, indexed by rank (the same list on every worker)."""
        return [data]

    def broadcast(self, data: bytes | None, src: int, timeout: float) -> bytes:
        """``data`` of worker ``src`` (the others pass None), on every worker."""
        assert data is not None
        return data

    def barrier(self, timeout: float) -> None:
        """Return once every worker has called it."""

    def background(self, timeout: float) -> Group:
        """A group of the same workers for an async save's writer thread (collective; called on the
        caller's thread). Its operations must not interfere with the framework's own collectives on
        other threads: the torch plugin creates a separate gloo process group once. Default: ``self``."""
        return self


class ThreadGroup(Group):
    """An in-process group of threads, one per rank: for tests and for trying the protocol.

    Example:
        >>> [g.rank for g in ThreadGroup.create(3)]
        [0, 1, 2]
    """

    def __init__(self, rank: int, shared: _Shared):
        self.rank, self.size, self._shared = rank, shared.size, shared

    @classmethod
    def create(cls, size: int) -> list[ThreadGroup]:
        shared = _Shared(size)
        return [cls(r, shared) for r in range(size)]

    def all_gather(self, data: bytes, timeout: float) -> list[bytes]:
        return self._shared.exchange(self.rank, bytes(data), timeout)

    def broadcast(self, data: bytes | None, src: int, timeout: float) -> bytes:
        return self._shared.exchange(self.rank, data, timeout)[src]

    def barrier(self, timeout: float) -> None:
        self._shared.exchange(self.rank, None, timeout)

    def abort(self) -> None:
        """Make every pending and later call fail (a worker that died)."""
        self._shared.abort()


class _Shared:
    def __init__(self, size: int):
        self.size = size
        self.cond = threading.Condition()
        self.round = 0
        self.slots: dict[int, Any] = {}
        self.results: dict[int, list] = {}
        self.aborted = False

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def exchange(self, rank: int, data, timeout: float) -> list:
        with self.cond:
            if self.aborted:
                raise RuntimeError("a worker of the group died")
            rnd = self.round
            self.slots[rank] = data
            if len(self.slots) == self.size:
                self.results[rnd] = [self.slots[r] for r in range(self.size)]
                self.slots = {}
                self.round += 1
                self.results.pop(rnd - 2, None)
                self.cond.notify_all()
            elif not self.cond.wait_for(lambda: rnd in self.results or self.aborted, timeout):
                raise TimeoutError(f"rank {rank}: the group did not answer within {timeout} s")
            if rnd not in self.results:
                raise RuntimeError("a worker of the group died")
            return self.results[rnd]


def all_gather_json(group: Group, value: Any, timeout: float, what: str = "exchange") -> list:
    """Every worker's JSON-serializable ``value``, by rank.

    Failures and timeouts of the group become :class:`CollectiveTimeoutError`.
    """
    raw = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    return [json.loads(r) for r in _call(group, "all_gather", what, timeout, raw, timeout)]


def broadcast_json(group: Group, value: Any, src: int, timeout: float, what: str = "broadcast") -> Any:
    """``value`` of worker ``src``, on every worker."""
    raw = None if group.rank != src else json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    return json.loads(_call(group, "broadcast", what, timeout, raw, src, timeout))


def barrier(group: Group, timeout: float, what: str = "barrier") -> None:
    """:meth:`Group.barrier`, with failures raised as :class:`CollectiveTimeoutError`."""
    _call(group, "barrier", what, timeout, timeout)


def _call(group: Group, op: str, what: str, timeout: float, *args):
    try:
        return getattr(group, op)(*args)
    except CheckpointError:
        raise
    except Exception as e:
        raise CollectiveTimeoutError(
            f"rank {group.rank} of {group.size}: the {what} step of a multi-worker checkpoint failed or did not "
            f"finish within {timeout:g} s ({type(e).__name__}: {e}). Another worker probably died or raised; "
            "nothing was committed. Raise CheckpointOptions(collective_timeout=...) if workers are just slow.") from e


def current_group(options) -> Group | None:
    """The group a save/restore with ``options`` is collective over, or None (a single process).

    Asks the plugins (``ckptcore_collective_group``); with ``torch.distributed`` initialized the
    torch plugin answers with the default process group, or ``options.process_group``.

    Example:
        >>> import ckptcore as ck
        >>> current_group(ck.CheckpointOptions()) is None
        True
    """
    pg = getattr(options, "process_group", None)
    if isinstance(pg, Group):
        return pg
    from ..registry import get_plugin_manager

    return get_plugin_manager().hook.ckptcore_collective_group(process_group=pg)
