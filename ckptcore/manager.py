"""``ck.CheckpointManager``: numbered checkpoints in one directory, with retention (``tf.train.CheckpointManager``).

The manager names each checkpoint ``{directory}/{checkpoint_name}-{number}``,
keeps the newest ``max_to_keep`` of them (plus one per
``keep_checkpoint_every_n_hours``), and records them in the directory's JSON
``checkpoint`` state file, which it writes itself, only after a checkpoint's
index is committed. A new manager on an existing directory recovers the list
from that file.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> ckpt = ck.Checkpoint(w=ck.Variable(np.zeros(2)))
    >>> manager = ck.CheckpointManager(ckpt, "memory://doc/manager/run", max_to_keep=2)
    >>> [manager.save() for _ in range(3)]
    ['memory://doc/manager/run/ckpt-1', 'memory://doc/manager/run/ckpt-2', 'memory://doc/manager/run/ckpt-3']
    >>> manager.checkpoints
    ['memory://doc/manager/run/ckpt-2', 'memory://doc/manager/run/ckpt-3']
    >>> ck.CheckpointManager(ckpt, "memory://doc/manager/run", max_to_keep=2).latest_checkpoint
    'memory://doc/manager/run/ckpt-3'
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from . import retention
from .checkpoint import Checkpoint
from .distributed.collective import current_group
from .errors import CorruptCheckpointError, InvalidArgumentError, NotFoundError
from .formats import ckpt as fmt
from .options import CheckpointOptions, check_metadata, resolve_options
from .save.write import checkpoint_files, remove_index
from .state import STATE_FILENAME, CheckpointState, join_url, newer_on_storage, read_state, write_state
from .storage import LocalStorage, open_storage
from .storage.paths import check_checkpoint_path

__all__ = ["CheckpointManager"]

_log = logging.getLogger("ckptcore.manager")
_TMP_SUFFIX = r"\.tmp-[0-9a-f]{32}"


def _clock() -> float:
    """Wall-clock seconds used for checkpoint timestamps (tests replace it)."""
    return time.time()


def _writes_storage(options: CheckpointOptions) -> bool:
    """Whether this process records the manager's state file and deletes checkpoints: always, except on
    the ranks other than 0 of a process group (``torch.distributed``), which keep the same list in memory."""
    group = current_group(options)
    return group is None or group.rank == 0


def _as_int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(np.asarray(value))
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(
                f"{what} must be an integer or a scalar variable, got {value!r}") from e


def _mtime(storage, path: str) -> float | None:
    """Modification time of ``path`` in seconds since the epoch, or None if the storage cannot tell."""
    if isinstance(storage, LocalStorage):
        try:
            return os.stat(path).st_mtime
        except FileNotFoundError:
            return None
    fs = getattr(storage, "fs", None)
    if fs is None:
        return None
    try:
        return fs.modified(path).timestamp()
    except Exception:  # NotImplementedError, missing file, backend quirks: unknown
        return None


class CheckpointManager:
    """Saves numbered checkpoints into a directory and deletes old ones (``tf.train.CheckpointManager``).

    Args:
        checkpoint: the :class:`ck.Checkpoint` to save and restore.
        directory: local path or fsspec URL of the directory.
        max_to_keep: how many recent checkpoints to keep; ``None`` keeps all.
        keep_checkpoint_every_n_hours: additionally keep (forever, outside the
            ``checkpoints`` list, as TF does) one checkpoint per this many hours.
        checkpoint_name: file name prefix (``ckpt`` gives ``ckpt-7``).
        step_counter: a scalar variable whose value numbers checkpoints (and is
            compared with ``checkpoint_interval``).
        checkpoint_interval: minimum number of steps between saves; needs
            ``step_counter``.
        init_fn: called by :meth:`restore_or_initialize` when there is nothing to restore.
        last_checkpoint_step: the step of the last checkpoint saved before this manager existed,
            so that ``checkpoint_interval`` counts from it (TF's argument; keyword-only here).
        storage_options: passed to fsspec for the directory and, unless the
            ``options`` of a save carry their own, for the checkpoints.

    Saving follows the commit protocol: data files, then the index (the
    commit point), then the state file. With
    ``CheckpointOptions(enable_async=True)`` all three happen in the
    background; ``latest_checkpoint`` and ``checkpoints`` change when the
    index is committed, and :meth:`sync` waits for that.

    Partial files left by a crashed save (``.NAME.tmp-*`` temp files, data
    files without an index) that match this manager's ``checkpoint_name`` are
    removed by a later save once they are older than
    :attr:`partial_file_grace_seconds` (younger ones may belong to a save in
    progress in another process).

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> step = ck.Variable(0, dtype=np.int64)
        >>> ckpt = ck.Checkpoint(step=step)
        >>> m = ck.CheckpointManager(ckpt, "memory://doc/manager/cls", max_to_keep=None,
        ...                          step_counter=step, checkpoint_interval=10)
        >>> m.save(), m.save()          # the second is skipped: same step
        ('memory://doc/manager/cls/ckpt-0', None)
        >>> _ = step.assign(10); m.save()
        'memory://doc/manager/cls/ckpt-10'
    """

    #: Seconds a partial file must be left untouched before a save removes it.
    partial_file_grace_seconds: float = 60.0

    def __init__(self, checkpoint: Checkpoint, directory: str, max_to_keep: int | None,
                 keep_checkpoint_every_n_hours: float | None = None, checkpoint_name: str = "ckpt",
                 step_counter: Any = None, checkpoint_interval: int | None = None,
                 init_fn: Callable[[], Any] | None = None, storage_options: Mapping[str, Any] | None = None,
                 *, best_fn: Callable[[Mapping[str, Any]], float] | None = None, best_mode: str = "max",
                 keep_checkpoints_without_metrics: bool = True, last_checkpoint_step: int | None = None):
        if not isinstance(checkpoint, Checkpoint):
            raise InvalidArgumentError(f"CheckpointManager needs a ck.Checkpoint, got {type(checkpoint).__qualname__}; "
                                       "wrap your objects: ck.Checkpoint(model=model)")
        if max_to_keep is not None and (isinstance(max_to_keep, bool) or _as_int(max_to_keep, "max_to_keep") <= 0):
            raise InvalidArgumentError(f"max_to_keep must be a positive integer or None, got {max_to_keep!r}")
        if keep_checkpoint_every_n_hours is not None and not keep_checkpoint_every_n_hours > 0:
            raise InvalidArgumentError(
                f"keep_checkpoint_every_n_hours must be positive, got {keep_checkpoint_every_n_hours!r}")
        if (not isinstance(checkpoint_name, str) or not checkpoint_name or checkpoint_name.startswith(".")
                or any(c in checkpoint_name for c in "/\\\x00")):
            raise InvalidArgumentError("checkpoint_name must be a plain file name not starting with '.', "
                                       f"got {checkpoint_name!r}")
        if checkpoint_interval is not None:
            if step_counter is None:
                raise InvalidArgumentError("step_counter must be passed when checkpoint_interval is set")
            if _as_int(checkpoint_interval, "checkpoint_interval") < 0:
                raise InvalidArgumentError(f"checkpoint_interval must be >= 0, got {checkpoint_interval!r}")
        if best_fn is not None and not callable(best_fn):
            raise InvalidArgumentError(
                f"best_fn must be a function of a save's metrics, got {type(best_fn).__qualname__}")
        if best_mode not in retention.BEST_MODES:
            raise InvalidArgumentError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self._best_fn = best_fn
        self._best_mode = best_mode
        self._keep_without_metrics = bool(keep_checkpoints_without_metrics)
        self._scores: dict[str, float | None] = {}  # name -> best_fn(metrics), for the checkpoints listed
        self._checkpoint = checkpoint
        self._directory = check_checkpoint_path(directory, "directory")
        self._max_to_keep = None if max_to_keep is None else int(max_to_keep)
        self._keep_hours = keep_checkpoint_every_n_hours
        self._checkpoint_name = checkpoint_name
        self._step_counter = step_counter
        self._checkpoint_interval = None if checkpoint_interval is None else int(checkpoint_interval)
        self._init_fn = init_fn
        self._storage_options = dict(storage_options or {})
        self._storage, self._dir = open_storage(self._directory, self._storage_options)
        self._lock = threading.RLock()        # guards the list below (the background commit updates it)
        self._save_lock = threading.Lock()    # one save() at a time
        self._last_checkpoint_step: int | None = (
            None if last_checkpoint_step is None else _as_int(last_checkpoint_step, "last_checkpoint_step"))
        self._maybe_delete: OrderedDict[str, float] = OrderedDict()
        self._latest: str | None = None
        self._state_format = "ckptcore"  # whose state file this manager writes: its last save's format
        self._recover()

    # -- recovery ------------------------------------------------------------------------
    def _exists(self, name: str) -> bool:
        return self._storage.exists(fmt.index_path(self._storage.join(self._dir, name)))

    def _exists_fn(self) -> Callable[[str], bool]:
        """An index-exists test for recovery: one listing, and a direct check for what it lacks."""
        listed = set(self._storage.listdir(self._dir))
        return lambda name: name + fmt.INDEX_SUFFIX in listed or self._exists(name)

    def _recover(self) -> None:
        now = _clock()
        try:
            state = read_state(self._storage, self._dir)
        except CorruptCheckpointError as e:
            warnings.warn(f"{e}; recovering the checkpoint list from the directory listing", RuntimeWarning,
                          stacklevel=3)
            state = self._state_from_listing(now)
        if state is None:
            # Slightly in the past, as TF does, so a quickly re-created manager preserves consistently.
            self._last_preserved_timestamp = now - 1.0
            return
        self._state_format = state.format
        stamps = list(state.timestamps) if len(state.timestamps) == len(state.all) else []
        preserved = state.last_preserved_timestamp
        if preserved is None:
            # Written by Checkpoint.save (or by hand), not by a manager: nothing in it is this manager's to
            # delete. TF reads the missing timestamp as 0, so that it manages none of those checkpoints either.
            self._last_preserved_timestamp = now - 1.0
            self._recover_latest(state, lambda name: self._exists(name))
            return
        if now < preserved:
            warnings.warn(f"the clock is behind the last_preserved_timestamp of {self._directory}'s state file; "
                          "checkpoints it records as newer than now are kept but no longer managed (as in TF)",
                          RuntimeWarning, stacklevel=3)
            preserved = now
        self._last_preserved_timestamp = preserved
        if not stamps:
            stamps = [preserved] * len(state.all)
        exists = self._exists_fn()
        for name, stamp in zip(state.all, stamps):
            stamp = min(stamp, now)
            # Older than the last preserved one: kept forever, no longer managed (TF semantics). Another
            # checkpoint_name's checkpoints belong to another manager: never ours to delete.
            if stamp > preserved and self._is_own(name) and exists(name):
                self._maybe_delete[name] = stamp
        # A late PUT may have put an older state file back (object stores): adopt this manager's checkpoints
        # committed after the one it names, so they are named and managed again.
        newer = newer_on_storage(self._storage, self._dir, state, self._checkpoint_name)
        for name, stamp in newer:
            if name not in self._maybe_delete:
                self._maybe_delete[name] = min(stamp, now)
        if newer:
            self._latest = newer[-1][0]
            return
        self._recover_latest(state, exists)

    def _is_own(self, name: str) -> bool:
        """Whether ``name`` is one of this manager's names (``{checkpoint_name}-{number}``)."""
        return re.fullmatch(re.escape(self._checkpoint_name) + r"-(-?\d+)", name) is not None

    def _recover_latest(self, state: CheckpointState, exists: Callable[[str], bool]) -> None:
        for name in ([state.latest] if state.latest else []) + list(reversed(state.all)):
            if name in self._maybe_delete or exists(name):
                self._latest = name
                break

    def _state_from_listing(self, now: float) -> CheckpointState:
        pat = re.compile(re.escape(self._checkpoint_name) + r"-(\d+)" + re.escape(fmt.INDEX_SUFFIX))
        found = sorted((int(m.group(1)), m.group(0)[:-len(fmt.INDEX_SUFFIX)])
                       for m in map(pat.fullmatch, self._storage.listdir(self._dir)) if m)
        names = [n for _, n in found]
        return CheckpointState(latest=names[-1] if names else None, all=names, timestamps=[now - 0.5] * len(names),
                               last_preserved_timestamp=now - 1.0)

    # -- properties ----------------------------------------------------------------------
    @property
    def directory(self) -> str:
        """The directory, as given.

        Example:
            >>> import ckptcore as ck
            >>> ck.CheckpointManager(ck.Checkpoint(), "memory://doc/manager/dir", 1).directory
            'memory://doc/manager/dir'
        """
        return self._directory

    @property
    def checkpoint_interval(self) -> int | None:
        """Minimum number of steps between saves, or None.

        Example:
            >>> import ckptcore as ck
            >>> ck.CheckpointManager(ck.Checkpoint(), "memory://doc/manager/ci", 1).checkpoint_interval is None
            True
        """
        return self._checkpoint_interval

    @property
    def latest_checkpoint(self) -> str | None:
        """Path of the newest committed checkpoint, or None.

        Example:
            >>> import ckptcore as ck
            >>> ck.CheckpointManager(ck.Checkpoint(), "memory://doc/manager/none", 1).latest_checkpoint is None
            True
        """
        with self._lock:
            return None if self._latest is None else join_url(self._directory, self._latest)

    @property
    def checkpoints(self) -> list[str]:
        """Paths of the managed checkpoints, oldest first (preserved ones are not listed, as in TF).

        Example:
            >>> import ckptcore as ck
            >>> ck.CheckpointManager(ck.Checkpoint(), "memory://doc/manager/list", 1).checkpoints
            []
        """
        with self._lock:
            return [join_url(self._directory, n) for n in self._maybe_delete]

    # -- saving --------------------------------------------------------------------------
    def _options(self, options: CheckpointOptions | None) -> CheckpointOptions:
        if options is not None:
            options = resolve_options(options)  # a dict, say, is an error here
        if options is None:
            return CheckpointOptions(storage_options=self._storage_options)
        if not options.storage_options and self._storage_options:
            return dataclasses.replace(options, storage_options=self._storage_options)
        return options

    def save(self, checkpoint_number: int | None = None, check_interval: bool = True,
             options: CheckpointOptions | None = None, *, metadata: Mapping[str, Any] | None = None,
             metrics: Mapping[str, Any] | None = None) -> str | None:
        """Save a checkpoint numbered ``checkpoint_number`` (else the step counter, else ``save_counter``).

        Increments the checkpoint's ``save_counter``. Returns the path, or
        None when ``checkpoint_interval`` steps have not passed since the
        last saved step (``check_interval=False`` only skips a repeated step).
        With ``options.enable_async`` it returns once the values are
        snapshotted; the state file and retention follow the index commit.
        ``metadata``: a small JSON dict saved with this checkpoint (as
        ``CheckpointOptions(metadata=...)``), read back by
        ``ck.load_checkpoint(path).metadata``. ``metrics``: a JSON dict
        (``{"loss": 0.3}``) that ``best_fn`` ranks checkpoints by; saved in
        the checkpoint too, so a new manager ranks the same way.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> m = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), "memory://doc/manager/save", 3)
            >>> m.save(checkpoint_number=100)
            'memory://doc/manager/save/ckpt-100'
            >>> ck.load_checkpoint(m.save(metadata={"loss": 0.5})).metadata
            {'loss': 0.5}
        """
        options = self._options(options)
        if metadata is not None:
            options = dataclasses.replace(options, metadata=metadata)
        index_metadata = None
        score = None
        if metrics is not None:
            metrics = check_metadata(metrics)
            index_metadata = {fmt.METRICS_KEY: metrics}
            if self._best_fn is not None:
                score = retention.score(self._best_fn, metrics)  # a failing best_fn fails the save, not retention
        with self._save_lock:
            # The previous save must finish first: its failure surfaces here, and its step is
            # recorded only once it committed, so a failed save's step can be saved again.
            self._checkpoint.sync()
            current = None
            if self._checkpoint_interval is not None:
                current = _as_int(self._step_counter, "step_counter")
                previous_step = self._last_checkpoint_step
                if previous_step is not None:
                    if current == previous_step:
                        return None
                    if check_interval and current < previous_step + self._checkpoint_interval:
                        return None
            counter = self._checkpoint.save_counter
            counter.assign_add(1)
            committed = False
            writes = _writes_storage(options)

            def after_commit() -> None:
                nonlocal committed
                committed = True  # from here on the checkpoint exists: never roll back its number
                if current is not None:
                    self._last_checkpoint_step = current
                self._on_commit(name, score, options.format, writes)

            try:
                if checkpoint_number is None:
                    checkpoint_number = counter if self._step_counter is None else self._step_counter  # type: ignore[assignment]
                name = f"{self._checkpoint_name}-{_as_int(checkpoint_number, 'checkpoint_number')}"
                path = join_url(self._directory, name)
                self._checkpoint._ck_write(path, options, record=False, after_commit=after_commit,
                                           index_metadata=index_metadata)
            except BaseException:
                if not committed:
                    counter.assign_sub(1)
                raise
            return path

    def _on_commit(self, name: str, score: float | None = None, state_format: str | None = None,
                   writes: bool = True) -> None:
        # Runs after the index of `name` is committed: in save(), or on the async writer thread. Under a
        # process group every rank keeps the same list; only rank 0 (writes) records it and deletes files.
        with self._lock:
            if state_format is not None:  # the state file in the format of the checkpoints (TF's text for TF's)
                self._state_format = state_format
            self._scores[name] = score
            self._maybe_delete.pop(name, None)
            self._maybe_delete[name] = _clock()
            self._latest = name
            # Record before deleting anything: a crash while sweeping still finds the new checkpoint.
            if writes:
                self._record_state()
            if self._sweep(writes) and writes:
                self._record_state()
        if writes:
            self._cleanup_partial_files()

    def _record_state(self) -> None:
        state = CheckpointState(latest=self._latest, all=list(self._maybe_delete),
                                timestamps=list(self._maybe_delete.values()),
                                last_preserved_timestamp=self._last_preserved_timestamp)
        if self._state_format == "ckptcore":
            write_state(self._storage, self._dir, state)
        else:  # e.g. "tensorflow": TensorFlow's text CheckpointState, which tf.train.latest_checkpoint reads
            from .formats.base import writer

            writer(self._state_format).write_state(self._storage, self._dir, state)

    def _sweep(self, writes: bool = True) -> bool:
        """Drop the oldest (with ``best_fn``: the worst) checkpoints beyond ``max_to_keep``; True if it changed.

        With ``writes=False`` (a rank other than 0 of a process group) only the list changes: rank 0
        deletes the files.
        """
        if not self._max_to_keep:
            return False
        if self._best_fn is not None:
            return self._sweep_best(writes)
        changed = False
        while len(self._maybe_delete) > self._max_to_keep:
            name, stamp = self._maybe_delete.popitem(last=False)
            changed = True
            if self._keep_hours and stamp - self._keep_hours * 3600.0 >= self._last_preserved_timestamp:
                # Kept on disk, but no longer listed, so the state file does not grow forever (TF semantics).
                self._last_preserved_timestamp = stamp
                continue
            if not writes:
                continue
            try:
                self._delete_checkpoint(name)
            except Exception as e:  # retention is best effort: retry this one after the next save
                _log.warning("could not delete old checkpoint %s: %s", name, e)
                self._maybe_delete[name] = stamp
                self._maybe_delete.move_to_end(name, last=False)
                break
        return changed

    def _score_of(self, name: str) -> float | None:
        """``best_fn`` of the metrics saved in checkpoint ``name`` (read from its index once), or None."""
        if name not in self._scores:
            from .reader import CheckpointReader

            score = None
            try:
                prefix = self._storage.join(self._dir, name)
                reader = CheckpointReader(prefix, storage=self._storage, storage_path=prefix)
                metrics = reader.index.metadata.get(fmt.METRICS_KEY)
                if isinstance(metrics, dict) and self._best_fn is not None:
                    score = retention.score(self._best_fn, metrics)
            except Exception as e:  # unreadable, or best_fn fails on old metrics: ranked as without metrics
                _log.warning("no metric for checkpoint %s: %s", name, e)
            self._scores[name] = score
        return self._scores[name]

    def _sweep_best(self, writes: bool = True) -> bool:
        """Keep the ``max_to_keep`` best checkpoints by ``best_fn`` (and the newest); True if the list changed."""
        entries = list(self._maybe_delete.items())
        doomed = retention.best_n_doomed([(n, self._score_of(n)) for n, _ in entries], self._max_to_keep or 0,
                                         self._best_mode, self._keep_without_metrics)
        failed: set[str] = set()
        for name in doomed:
            stamp = self._maybe_delete.pop(name)
            self._scores.pop(name, None)
            if self._keep_hours and stamp - self._keep_hours * 3600.0 >= self._last_preserved_timestamp:
                self._last_preserved_timestamp = stamp  # kept on disk, no longer listed (as the newest-N policy)
                continue
            if not writes:
                continue
            try:
                self._delete_checkpoint(name)
            except Exception as e:  # best effort: retried after the next save
                _log.warning("could not delete checkpoint %s: %s", name, e)
                failed.add(name)
        if failed:  # back in their places
            self._maybe_delete = OrderedDict((n, t) for n, t in entries if n in self._maybe_delete or n in failed)
        return bool(doomed)

    # -- steps ---------------------------------------------------------------------------
    def _step_of(self, name: str) -> int | None:
        m = re.fullmatch(re.escape(self._checkpoint_name) + r"-(\d+)", name)
        return int(m.group(1)) if m else None

    def all_steps(self) -> list[int]:
        """The numbers of the checkpoints this manager lists (``checkpoints``), ascending.

        Checkpoints preserved by ``keep_checkpoint_every_n_hours`` are not listed, as in TF.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> m = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), "memory://doc/manager/steps", None)
            >>> _ = m.save(checkpoint_number=10); _ = m.save(checkpoint_number=20)
            >>> m.all_steps(), m.latest_step()
            ([10, 20], 20)
        """
        with self._lock:
            steps = [self._step_of(n) for n in self._maybe_delete]
        return sorted(s for s in steps if s is not None)

    def latest_step(self) -> int | None:
        """The number of ``latest_checkpoint``, or None.

        Example:
            >>> import ckptcore as ck
            >>> ck.CheckpointManager(ck.Checkpoint(), "memory://doc/manager/nostep", 1).latest_step() is None
            True
        """
        with self._lock:
            return None if self._latest is None else self._step_of(self._latest)

    def best_step(self) -> int | None:
        """The listed step whose metrics ``best_fn`` ranks best (the latest step without ``best_fn``), or None.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> m = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), "memory://doc/manager/best", 2,
            ...                          best_fn=lambda metrics: metrics["loss"], best_mode="min")
            >>> for step, loss in [(1, 0.5), (2, 0.2), (3, 0.9), (4, 0.7)]:
            ...     _ = m.save(checkpoint_number=step, metrics={"loss": loss})
            >>> m.all_steps(), m.best_step()      # the two best (2 and 1), and the newest
            ([1, 2, 4], 2)
        """
        if self._best_fn is None:
            return self.latest_step()
        with self._lock:
            scored = [(s, n) for n in self._maybe_delete if (s := self._score_of(n)) is not None]
        if not scored:
            return None
        pick = max if self._best_mode == "max" else min
        return self._step_of(pick(scored, key=lambda sn: sn[0])[1])

    def delete(self, step: int) -> None:
        """Delete the checkpoint numbered ``step`` from the directory and from this manager's list.

        Only checkpoints this manager lists can be deleted (``all_steps()``); a
        pending async save is waited for first. If it was the latest, the
        previous one becomes the latest.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> m = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), "memory://doc/manager/delete", None)
            >>> _ = m.save(checkpoint_number=1); _ = m.save(checkpoint_number=2)
            >>> m.delete(2); m.all_steps(), m.latest_checkpoint
            ([1], 'memory://doc/manager/delete/ckpt-1')
        """
        step = _as_int(step, "step")
        with self._save_lock:
            self._checkpoint.sync()
            name = f"{self._checkpoint_name}-{step}"
            with self._lock:
                if name not in self._maybe_delete:
                    raise NotFoundError(f"step {step} is not one of the checkpoints this manager lists in "
                                        f"{self._directory} (all_steps(): {self.all_steps()}); ckptcore deletes "
                                        "only checkpoints its manager recorded")
                del self._maybe_delete[name]
                self._scores.pop(name, None)
                if self._latest == name:
                    self._latest = next(reversed(self._maybe_delete), None)
                # the state file first: a crash part way leaves unlisted files, never a state naming a deleted one
                if _writes_storage(self._options(None)):  # under a process group: rank 0 only
                    self._record_state()
                    self._delete_checkpoint(name)

    def _delete_checkpoint(self, name: str) -> None:
        prefix = self._storage.join(self._dir, name)
        index = fmt.index_path(prefix)
        files = checkpoint_files(self._storage, prefix)
        # The index first: from then on the checkpoint is gone, and leftovers are mere partial files. On object
        # stores the DELETE is conditional: applied late, it cannot remove a checkpoint re-saved under this name.
        remove_index(self._storage, index)
        self._storage.remove([f for f in files if f != index])

    def _data_tag(self, name: str) -> str | None:
        """The data tag the index of checkpoint ``name`` names (None: none, or unreadable: then nothing goes)."""
        try:
            prefix = self._storage.join(self._dir, name)
            return fmt.decode_index(self._storage.read_bytes(fmt.index_path(prefix)), fmt.index_path(prefix)).data_tag
        except Exception:
            return None

    def _cleanup_partial_files(self) -> None:
        """Remove this manager's partial files left by crashed saves (best effort)."""
        esc = re.escape(self._checkpoint_name)
        shard = r"data-\d{5}-of-\d{5}(?:\.[0-9a-f]{16})?"   # (.tag: a save attempt's, on object stores)
        temp = re.compile(rf"\.{esc}-\d+\.(?:index|{shard}){_TMP_SUFFIX}|\.{re.escape(STATE_FILENAME)}{_TMP_SUFFIX}")
        data = re.compile(rf"({esc}-\d+)\.data-\d{{5}}-of-\d{{5}}(?:\.([0-9a-f]{{16}}))?")
        try:
            names = self._storage.listdir(self._dir)
            present = set(names)
            doomed = []
            tags: dict[str, set[str]] = {}
            for n in names:
                m = data.fullmatch(n)
                if temp.fullmatch(n) or (m and m.group(1) + fmt.INDEX_SUFFIX not in present):
                    doomed.append(n)
                elif m and m.group(2):
                    tags.setdefault(m.group(1), set()).add(m.group(2))
            for base, found in tags.items():   # data of several attempts under one index: keep the index's own
                if len(found) > 1:
                    live = self._data_tag(base)
                    doomed.extend(n for n in names if (m := data.fullmatch(n)) and m.group(1) == base
                                  and m.group(2) and m.group(2) != live and live is not None)
            grace = self.partial_file_grace_seconds
            now = time.time()
            for n in doomed:
                path = self._storage.join(self._dir, n)
                if grace > 0:
                    mtime = _mtime(self._storage, path)
                    if mtime is None or now - mtime < grace:
                        continue
                m = data.fullmatch(n)
                if m and self._exists(m.group(1)) and (not m.group(2) or self._data_tag(m.group(1)) == m.group(2)):
                    continue   # the listing lagged behind a fresh commit (that uses this file)
                self._storage.remove([path])
                _log.info("removed partial checkpoint file %s", path)
            abort = getattr(self._storage, "abort_stale_uploads", None)
            if abort is not None:  # S3: the parts of a killed save's multipart upload are billed until aborted
                n = abort(self._dir, re.compile(rf"{esc}-\d+\.(?:index|{shard})"), grace)
                if n:
                    _log.info("aborted %d incomplete multipart uploads in %s", n, self._directory)
        except (OSError, NotFoundError) as e:  # cleanup never fails a save that already committed
            _log.warning("could not clean up partial checkpoint files in %s: %s", self._directory, e)

    # -- restoring, waiting -------------------------------------------------------------
    def restore_or_initialize(self) -> str | None:
        """Restore the latest checkpoint and return its path, or call ``init_fn`` and return None.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> called = []
            >>> m = ck.CheckpointManager(ck.Checkpoint(), "memory://doc/manager/roi", 1,
            ...                          init_fn=lambda: called.append(1))
            >>> m.restore_or_initialize(), called
            (None, [1])
        """
        self.sync()
        latest = self.latest_checkpoint
        if latest is not None:
            self._checkpoint.restore(latest, options=self._options(None))
            if self._checkpoint_interval is not None:
                self._last_checkpoint_step = _as_int(self._step_counter, "step_counter")
            return latest
        if self._init_fn is not None:
            self._init_fn()
        return None

    def sync(self) -> None:
        """Wait for a pending async save; re-raise its error if it failed.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> m = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), "memory://doc/manager/sync", 1)
            >>> p = m.save(options=ck.CheckpointOptions(enable_async=True)); m.sync()
            >>> m.latest_checkpoint == p
            True
        """
        self._checkpoint.sync()
