"""``ck.Checkpoint``: groups trackable objects, saving and restoring them.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> model = ck.Module(); model.w = ck.Variable(np.ones(3))
    >>> ckpt = ck.Checkpoint(model=model)
    >>> path = ckpt.save("memory://doc/ckpt/run/ckpt")
    >>> path
    'memory://doc/ckpt/run/ckpt-1'
    >>> fresh = ck.Module(); fresh.w = ck.Variable(np.zeros(3))
    >>> ck.Checkpoint(model=fresh).restore(path).assert_consumed() is not None
    True
    >>> fresh.w.numpy().tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np

from . import progress
from ._perf import paused_gc
from .distributed.collective import DEFAULT_TIMEOUT, current_group
from .errors import CheckpointError, InvalidArgumentError, NotTrackableError
from .formats import ckpt as fmt
from .formats.base import writer as writer_for
from .module import Module, wrap
from .options import CheckpointOptions, resolve_options
from .reader import CheckpointReader
from .registry import adapter_or_none, find_adapter
from .restore import InitializationOnlyStatus, LoadStatus, RestoreSession, notify_dependency_added
from .save.plan import plan_save
from .staging import Staging
from .staging import active as staging_active
from .state import latest_checkpoint
from .storage import LocalStorage, open_storage
from .storage.paths import check_checkpoint_path
from .unclaimed import install_hint
from .variable import Variable

__all__ = ["Checkpoint"]


class _AsyncWriter:
    """One background thread; at most one save in flight.

    The worker thread is joined at interpreter exit (``concurrent.futures``
    does that), so a pending save finishes before the process ends; a failure
    nobody collected with ``sync()`` is then reported on stderr.
    """

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future | None = None
        self._lock = threading.Lock()

    def submit(self, fn) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptcore-async-save")
                _register_exit_report()
            fut = self._pool.submit(fn)
            fut.add_done_callback(_note_failure)
            self._future = fut

    def wait(self) -> None:
        with self._lock:
            fut = self._future
        if fut is None:
            return
        try:
            fut.result()
        finally:
            _collected(fut)
            with self._lock:
                if self._future is fut:
                    self._future = None


# Failed async saves that no sync() has collected yet, kept even if their Checkpoint is gone,
# so that a failure is never lost silently: they are reported on stderr at exit.
_UNCOLLECTED: dict[int, Future] = {}
_UNCOLLECTED_LOCK = threading.Lock()
_exit_report_registered = False


def _note_failure(fut: Future) -> None:
    if fut.cancelled() or fut.exception() is None:
        return
    with _UNCOLLECTED_LOCK:
        if not getattr(fut, "_ck_collected", False):
            _UNCOLLECTED[id(fut)] = fut


def _collected(fut: Future) -> None:
    with _UNCOLLECTED_LOCK:
        fut._ck_collected = True  # type: ignore[attr-defined]
        _UNCOLLECTED.pop(id(fut), None)


def _report_uncollected_errors() -> None:
    with _UNCOLLECTED_LOCK:
        failed = list(_UNCOLLECTED.values())
        _UNCOLLECTED.clear()
    for fut in failed:
        sys.stderr.write(f"ckptcore: an async checkpoint save failed and sync() was never called: "
                         f"{fut.exception()!r}\n")


def _register_exit_report() -> None:
    global _exit_report_registered
    if not _exit_report_registered:
        _exit_report_registered = True
        atexit.register(_report_uncollected_errors)


def _with_root_self_edge(root: Any, extra: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``extra`` with TensorFlow's ``root`` edge of node 0 to itself, where TF puts it.

    ``tf.train.Checkpoint(root=m, **kw)`` records its own dependencies, sorted by name and
    ``root`` among them, after the root's children and before ``save_counter``. Restores need
    no such edge (ckptcore's own format has none); written in TensorFlow's format it makes the
    object graph, and so the files, TensorFlow's to the byte.

    Example:
        >>> _with_root_self_edge("m", [("b", 1), ("w", 2), ("save_counter", 3)])
        [('b', 1), ('root', 'm'), ('w', 2), ('save_counter', 3)]
    """
    if any(name == "root" for name, _ in extra):
        return extra
    own = sorted([e for e in extra if e[0] != "save_counter"] + [("root", root)], key=lambda e: e[0])
    return own + [e for e in extra if e[0] == "save_counter"]


class Checkpoint(Module):
    """Groups trackable objects, saving and restoring them (``tf.train.Checkpoint``).

    Each keyword argument becomes a named dependency; lists and dicts are
    wrapped into tracked containers. With ``root``, that object is the root of
    the saved graph and the keyword arguments are attached to it.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> try:
        ...     ck.Checkpoint(lr=0.1)
        ... except ValueError as e:
        ...     print(str(e).split(":")[0])
        Checkpoint keyword argument 'lr' of type float is not trackable
    """

    def __init__(self, root: Any = None, **kwargs: Any):
        super().__init__()
        self._ck_root = None
        self._ck_attached: dict[str, Any] = {}
        self._ck_save_counter: Variable | None = None
        self._ck_sessions: list[RestoreSession] = []
        self._ck_async = _AsyncWriter()
        self._ck_save_lock = threading.Lock()  # save() from several threads: one number each, in order
        # Unused checkpoint values are reported by each RestoreSession when it is collected: with this
        # Checkpoint, or later if restores still wait on live objects (see ckptcore.restore).
        root_children: dict[str, Any] = {}
        if root is not None:
            if isinstance(root, weakref.ref):  # as TF: the Checkpoint keeps no strong reference to its root
                target = root()
                if target is None:
                    raise InvalidArgumentError("Checkpoint(root=weakref): the object it refers to no longer exists")
                root_adapter = find_adapter(target, what="Checkpoint root")
            else:
                root = target = wrap(root)
                root_adapter = find_adapter(root, what="Checkpoint root")  # raises, naming the type and fix
            if kwargs:
                root_children = dict(root_adapter.children(target))
            del target
            self._ck_root = root
        for key, value in sorted(kwargs.items()):
            value = wrap(value)
            if adapter_or_none(value) is None:
                if install_hint(value):
                    find_adapter(value, what=f"Checkpoint keyword argument {key!r}")  # raises, with the hint
                raise NotTrackableError(
                    f"Checkpoint keyword argument {key!r} of type {type(value).__qualname__} is not trackable: "
                    "pass a ck.Variable, numpy array, ck.Module, a list/dict of those, or an object a "
                    "ckptcore plugin adapts")
            if self._ck_root is not None:
                existing = root_children.get(key)
                if existing is not None and existing is not value:  # as TF: a second, different dependency
                    raise InvalidArgumentError(
                        f"Cannot create a Checkpoint with keyword argument {key!r}: its root already has a "
                        f"dependency named {key!r} (a {type(existing).__qualname__}). Use another name, or "
                        f"pass root.{key} itself")
                if existing is None:
                    self._ck_attached[key] = value
                object.__setattr__(self, key, value)
            else:
                setattr(self, key, value)

    # -- graph ---------------------------------------------------------------------------
    def _ck_root_object(self) -> Any:
        root = self._ck_root
        if isinstance(root, weakref.ref):
            target = root()
            if target is None:
                raise CheckpointError("the root of this Checkpoint (given as a weakref) no longer exists: "
                                      "keep the object alive while saving or restoring it")
            return target
        return root

    def _ck_graph(self) -> tuple[Any, list[tuple[str, Any]]]:
        if self._ck_root is None:
            return self, []
        extra = list(self._ck_attached.items())
        return self._ck_root_object(), extra

    def __deepcopy__(self, memo: dict) -> Checkpoint:
        """A Checkpoint of deep copies of the objects it tracks (and of its ``save_counter``).

        The copy shares nothing with the original: its own restores, async writer and
        lock; a pending async save of the original is not part of it. A root given as a
        weakref stays a weakref to the same object (a copy would have nothing keeping it alive).

        Example:
            >>> import copy, numpy as np, ckptcore as ck
            >>> c = ck.Checkpoint(w=np.ones(2)); c2 = copy.deepcopy(c)
            >>> c2.w is c.w, c2.w.tolist()
            (False, [1.0, 1.0])
        """
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        fresh = {"_ck_sessions": [], "_ck_async": _AsyncWriter(), "_ck_save_lock": threading.Lock()}
        for k, v in self.__dict__.items():
            object.__setattr__(new, k, fresh[k] if k in fresh else copy.deepcopy(v, memo))
        return new

    @property
    def save_counter(self) -> Variable:
        """Number of ``save()`` calls so far (an int64 ``ck.Variable``), created on first use.

        Example:
            >>> import ckptcore as ck
            >>> int(ck.Checkpoint().save_counter)
            0
        """
        if self._ck_save_counter is None:
            var = Variable(0, dtype=np.int64, name="save_counter", trainable=False)
            self._ck_save_counter = var
            if self._ck_root is None:
                self._ck_deps_dict()["save_counter"] = var
                notify_dependency_added(self, "save_counter", var)
            else:
                self._ck_attached["save_counter"] = var
                notify_dependency_added(self._ck_root_object(), "save_counter", var)
        return self._ck_save_counter

    # -- saving ----------------------------------------------------------------------------
    def write(self, file_prefix: str, options: CheckpointOptions | None = None) -> str:
        """Write a checkpoint at exactly ``file_prefix`` and return it; no numbering, no state file.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> ck.Checkpoint(a=np.ones(2)).write("memory://doc/write/w")
            'memory://doc/write/w'
        """
        return self._ck_write(check_checkpoint_path(file_prefix, "write"), resolve_options(options), record=False)

    def save(self, file_prefix: str, options: CheckpointOptions | None = None) -> str:
        """Increment ``save_counter``, write ``f"{file_prefix}-{save_counter}"``, record it as latest.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> c = ck.Checkpoint(a=np.ones(2))
            >>> c.save("memory://doc/save/ckpt"), c.save("memory://doc/save/ckpt")
            ('memory://doc/save/ckpt-1', 'memory://doc/save/ckpt-2')
        """
        options = resolve_options(options)
        file_prefix = check_checkpoint_path(file_prefix, "save")
        with self._ck_save_lock:  # an async save holds it only while it plans (the blocking part)
            self._ck_async.wait()
            counter = self.save_counter
            number = int(counter.assign_add(1))
            try:
                return self._ck_write(f"{os.fspath(file_prefix)}-{number}", options, record=True)
            except BaseException:
                counter.assign_sub(1)
                raise

    def _ck_write(self, path: str, options: CheckpointOptions, record: bool,
                  after_commit: Callable[[], None] | None = None, index_metadata: dict | None = None) -> str:
        # after_commit runs once the index is committed (in the background when async); the manager
        # records its state file there.
        self._ck_async.wait()
        storage, spath = open_storage(path, options.storage_options, max_retries=options.max_retries)
        root, extra = self._ck_graph()
        fmt_writer = writer_for(options.format)  # ckptcore's own by default; "tensorflow": a TensorBundle
        if self._ck_root is not None and fmt_writer.root_self_edge:
            extra = _with_root_self_edge(root, extra)
        timer = progress.Timer()
        metadata = dict(index_metadata or {})  # the manager's entries (metrics), then the user's own
        if options.metadata:
            metadata[fmt.USER_METADATA_KEY] = dict(options.metadata)
        strings = fmt_writer.variable_length_strings  # TensorFlow's: object arrays of bytes as string tensors
        group = current_group(options)
        if group is not None:  # torch.distributed (or another group): every worker writes its section
            collective_write = fmt_writer.write_collective  # each worker its own data file, one merged index

            def on_commit() -> None:
                if record and group.rank == 0:
                    fmt_writer.record_save(storage, storage.dirname(spath), storage.basename(spath))
                if after_commit is not None:
                    after_commit()

            if not options.enable_async:
                collective_write(group, storage, spath,
                                 lambda: plan_save(root, extra, metadata=metadata or None, strings=strings),
                                 timeout=options.collective_timeout, on_commit=on_commit)
                return path
            # async: each worker snapshots its own values now; the collective steps and the writes run
            # on the writer thread, over a group of their own (the training's collectives go on meanwhile)
            background = group.background(options.collective_timeout or DEFAULT_TIMEOUT)
            try:
                snapshot = plan_save(root, extra, snapshot=True, metadata=metadata or None, strings=strings)
                failure = None
            except BaseException as e:  # noqa: BLE001 -- reported to every worker by the write, raised by sync()
                snapshot, failure = None, e

            def planned():
                if failure is not None:
                    raise failure
                return snapshot

            self._ck_async.submit(lambda: collective_write(background, storage, spath, planned,
                                                           timeout=options.collective_timeout, on_commit=on_commit))
            return path
        # A sync save to local disk runs with the collector paused throughout, as a local restore does, and
        # frees its plan before the collector goes on: otherwise collections go through the plan's young
        # objects (100,000 arrays: 54-61 ms of a 350 ms save; torch 20,000 parameters + Adam: 27 ms, the
        # detached parameter tensors the arrays hold). Async and object-store saves pause per step only.
        with paused_gc() if not options.enable_async and isinstance(storage, LocalStorage) else nullcontext():
            stage = Staging(options.pinned_memory_bytes)  # host memory plugins stage device tensors in, until written
            try:
                with staging_active(stage):
                    plan = plan_save(root, extra, snapshot=options.enable_async, metadata=metadata or None,
                                     strings=strings)
            except BaseException:
                stage.end()
                raise
            if progress.log.isEnabledFor(logging.DEBUG):
                progress.log.debug("planned %s: %d tensors, %d bytes in %.3f s", path, len(plan.node_of),
                                   plan.nbytes, timer.elapsed())

            def commit() -> None:
                bar = progress.bar(f"saving {path}", plan.nbytes, True) if options.progress else None
                try:
                    fmt_writer.write_plan(storage, spath, plan, progress=bar.update if bar is not None else None)
                finally:
                    progress.close(bar)
                    stage.end()
                progress.log.debug("committed the index of %s after %.3f s", path, timer.elapsed())
                if record:
                    fmt_writer.record_save(storage, storage.dirname(spath), storage.basename(spath))
                if after_commit is not None:
                    after_commit()
                if progress.log.isEnabledFor(logging.INFO):
                    progress.log_done("saved", path, plan.nbytes, timer.elapsed())

            if options.enable_async:
                self._ck_async.submit(commit)
            else:
                commit()
                del plan   # freed while the collector is paused: no collection afterwards goes through its objects
        return path

    def sync(self) -> None:
        """Wait for a pending async save; re-raise its error if it failed.

        Example:
            >>> import ckptcore as ck
            >>> ck.Checkpoint().sync()
        """
        self._ck_async.wait()

    # -- restoring -------------------------------------------------------------------------
    def restore(self, save_path: str | None,
                options: CheckpointOptions | None = None) -> LoadStatus | InitializationOnlyStatus:
        """Restore a checkpoint made by ``save()``; values for missing objects wait for them.

        ``save_path=None`` returns a status whose assertions fail. A directory
        restores its latest checkpoint.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> path = ck.Checkpoint(a=np.ones(1)).save("memory://doc/restore1/ckpt")
            >>> a = np.zeros(1); _ = ck.Checkpoint(a=a).restore(path).assert_consumed(); a
            array([1.])
        """
        if save_path is None:
            self.save_counter  # noqa: B018 -- created so a later restore can fill it
            return InitializationOnlyStatus()
        self.save_counter  # noqa: B018 -- part of the graph before matching, with or without root=
        return self._ck_read(save_path, options, ignore=())

    def read(self, save_path: str | None,
             options: CheckpointOptions | None = None) -> LoadStatus | InitializationOnlyStatus:
        """Like ``restore()``, for checkpoints made by ``write()``: ``save_counter`` is not expected.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> path = ck.Checkpoint(v=ck.Variable(1.0)).write("memory://doc/read1/w")
            >>> ck.Checkpoint(v=ck.Variable(0.0)).read(path).assert_consumed() is not None
            True
        """
        if save_path is None:
            return InitializationOnlyStatus()
        return self._ck_read(save_path, options, ignore=("save_counter",))

    def _ck_read(self, save_path, options, ignore):
        options = resolve_options(options)
        self._ck_async.wait()
        save_path = check_checkpoint_path(save_path, "restore")
        storage, spath = open_storage(save_path, options.storage_options, max_retries=options.max_retries)
        if not storage.exists(fmt.index_path(spath)) and storage.isdir(spath):
            latest = latest_checkpoint(save_path, storage_options=options.storage_options)
            if latest is not None:
                save_path = latest
                storage, spath = open_storage(save_path, options.storage_options, max_retries=options.max_retries)
        # A local restore runs with the garbage collector paused throughout: one collection of what it
        # made afterwards, not one after each step (W2: 9 ms less). Object stores pause per step only,
        # so that other threads' garbage does not wait for the network.
        timer = progress.Timer()
        with paused_gc() if isinstance(storage, LocalStorage) else nullcontext():
            reader = CheckpointReader(save_path, storage=storage, storage_path=spath,
                                      verify=options.verify_checksums)
            debug = progress.log.isEnabledFor(logging.DEBUG)
            if debug:
                progress.log.debug("opened %s (%s): %d tensors in %.3f s", save_path, reader.format.name,
                                   len(reader.index.table), timer.elapsed())
            counted = [0]
            bar = None
            if options.progress or progress.log.isEnabledFor(logging.INFO):
                total = sum(reader.index.shard_sizes) * (2 if options.verify_before_restore else 1)
                bar = progress.bar(f"restoring {save_path}", total, options.progress)

                def count(nbytes: int, bar=bar) -> None:
                    counted[0] += nbytes
                    if bar is not None:
                        bar.update(nbytes)
                reader.progress = count
            try:
                if options.verify_before_restore:
                    reader.verify()  # a corrupt checkpoint raises here, before any live object changes
                    if debug:
                        progress.log.debug("verified %s before restoring, after %.3f s", save_path, timer.elapsed())
                root, extra = self._ck_graph()
                session = RestoreSession(reader, root, extra, ignore_live_names=ignore,
                                         verify=options.verify_checksums)
                group = current_group(options)
                stage = Staging(options.pinned_memory_bytes)
                try:
                    with staging_active(stage):
                        if group is None:
                            session.run()
                        else:  # every worker restores its own objects; they agree before reading and after
                            from .distributed.restore import run_collective

                            run_collective(session, group, options.collective_timeout)
                finally:
                    stage.end()
                if debug:
                    progress.log.debug("matched, read and assigned %s after %.3f s", save_path, timer.elapsed())
            finally:
                reader.progress = None  # later (deferred) restores read without it
                progress.close(bar)
        progress.log_done("restored", save_path, counted[0], timer.elapsed())
        # Keep only sessions that may still warn about unused values, so repeated restores
        # (an evaluation loop, say) do not pile up readers and indexes.
        self._ck_sessions[:] = [s for s in self._ck_sessions
                                if not s.expect_partial and s.unmatched_checkpoint_keys()]
        self._ck_sessions.append(session)
        return LoadStatus(session, keepalive=(self, root, extra))
