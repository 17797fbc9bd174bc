"""Reading checkpoints: ``ck.load_checkpoint`` and ``ck.list_variables``.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> path = ck.Checkpoint(w=np.arange(3.0)).write("memory://doc/reader/ckpt")
    >>> r = ck.load_checkpoint(path)
    >>> r.get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE").tolist()
    [0.0, 1.0, 2.0]
    >>> ck.list_variables(path)
    [('w/.ATTRIBUTES/VARIABLE_VALUE', [3])]
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from typing import Any

import numpy as np

from ._perf import paused_gc
from .data_reads import (
    _mismatch,
    _offset_of,
    _read_rows_sorted,
    _shard_offset_of,
    _short,
    _Stopped,
    read_tensors,
)
from .errors import CorruptCheckpointError, KeyNotFoundError, NotFoundError
from .formats import base as formats
from .formats import ckpt as fmt
from .storage import open_storage
from .storage.paths import missing_checkpoint_hint

__all__ = ["CheckpointReader", "load_checkpoint", "list_variables", "read_tensors"]

VERIFY_CHUNK = 8 << 20      # verify() reads data files through one buffer of this size


class CheckpointReader:
    """Random access to the tensors of one checkpoint.

    Parsing validates the whole index; data files are checked against the
    sizes it records. Tensor reads verify CRC32C unless ``verify=False``.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> path = ck.Checkpoint(b=np.zeros((2, 2), np.float32)).write("memory://doc/reader2/ckpt")
        >>> r = ck.load_checkpoint(path)
        >>> r.get_variable_to_shape_map(), r.has_tensor("nope")
        ({'b/.ATTRIBUTES/VARIABLE_VALUE': [2, 2]}, False)
    """

    def __init__(self, path: str, storage_options: Mapping[str, Any] | None = None, *, verify: bool = True,
                 storage=None, storage_path: str | None = None):
        self.path = os.fspath(path)
        if storage is None:
            from .storage.paths import check_checkpoint_path

            check_checkpoint_path(self.path, "restore")
            storage, storage_path = open_storage(self.path, storage_options)
        self.storage = storage
        self.prefix: str = storage_path  # type: ignore[assignment]  # given together with storage
        self.verify_checksums = verify
        self.index_file = fmt.index_path(self.prefix)
        try:
            size = storage.size(self.index_file)
        except (NotFoundError, FileNotFoundError):
            size = None
        if size is None:  # no index: perhaps a single file of a format read by name (model.safetensors)
            try:
                self.format, self.index = formats.open_file(storage, self.prefix, self.path, self.index_file)
            except NotFoundError as e:
                # a "did you mean" names a prefix of self.path; the same cut of the storage path is what exists
                sp = self.prefix
                hint = missing_checkpoint_hint(self.path, lambda p: storage.exists(
                    sp[:len(sp) - len(self.path) + len(p) - len(fmt.INDEX_SUFFIX)] + fmt.INDEX_SUFFIX))
                if not hint:
                    raise
                raise NotFoundError(f"{e}{hint}") from None
        else:
            if size > fmt.MAX_INDEX_BYTES:
                raise CorruptCheckpointError(f"corrupt checkpoint index {self.index_file}: {size} bytes is too "
                                             "large for an index", path=self.index_file)
            raw = storage.read_bytes(self.index_file)
            with paused_gc():
                self.format, self.index = formats.decode(raw, self.index_file, storage, self.prefix)
        with paused_gc():
            self.index.table  # noqa: B018 -- version 1 and saved indexes: the columns, built once
        self._row_of: dict[str, int] | None = None  # key -> row of the tensor table, built when first needed
        self._checked_sizes = False
        #: ``progress(nbytes)`` is called with the bytes of each data read when set (progress bars, byte counts).
        self.progress: Callable[[int], None] | None = None

    def _open_reader(self, f: str):
        rd = self.storage.open_reader(f)
        if self.progress is not None:
            from .progress import CountingReader
            return CountingReader(rd, self.progress)
        return rd

    @property
    def _rows(self) -> dict[str, int]:
        if self._row_of is None:
            keys = self.index.table.key
            self._row_of = dict(zip(keys, range(len(keys))))
        return self._row_of

    def data_file(self, shard: int) -> str:
        if self.index.data_files is not None:  # a format whose tensors live in a file of another name
            return self.index.data_files[shard]
        return fmt.data_path(self.prefix, shard, self.index.num_shards, self.index.data_tag)

    def check_data_files(self) -> None:
        """Check every data file exists and has the size the index records.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> ck.load_checkpoint(ck.Checkpoint(a=np.ones(1)).write("memory://doc/cdf/c")).check_data_files()
        """
        if self._checked_sizes:
            return

        check = self._check_data_file
        workers = self._shard_workers(self.index.num_shards)
        if workers > 1:   # object stores: one request per shard, so ask concurrently
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckptcore-head") as pool:
                for f in [pool.submit(check, i) for i in range(self.index.num_shards)]:
                    f.result()
        else:
            for shard in range(self.index.num_shards):
                check(shard)
        self._checked_sizes = True

    def _check_data_file(self, shard: int) -> None:
        f = self.data_file(shard)
        expected = self.index.shard_sizes[shard]
        try:
            actual = self.storage.size(f)
        except (NotFoundError, FileNotFoundError):
            raise CorruptCheckpointError(f"checkpoint {self.path!r} is missing its data file {f}", path=f) from None
        if actual < expected:
            raise CorruptCheckpointError(
                f"data file {f} is truncated: {actual} bytes, the index records {expected}", path=f)

    def _shard_workers(self, n: int) -> int:
        return max(1, min(int(getattr(self.storage, "shard_concurrency", 1) or 1), n))

    @property
    def metadata(self) -> dict:
        """The user metadata saved with the checkpoint (``CheckpointOptions(metadata=...)``,
        ``CheckpointManager.save(metadata=...)``); ``{}`` if none.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> p = ck.Checkpoint(a=np.ones(1)).write("memory://doc/meta/c",
            ...                                       ck.CheckpointOptions(metadata={"loss": 0.5}))
            >>> ck.load_checkpoint(p).metadata
            {'loss': 0.5}
        """
        user = self.index.metadata.get(fmt.USER_METADATA_KEY)
        return dict(user) if isinstance(user, dict) else {}

    # --- TF-compatible accessors -------------------------------------------------
    def _row(self, key: str) -> int | None:
        """The table row of ``key``, or None; a version-6 index finds it in the graph (no key made)."""
        if self._row_of is None:
            row = self.index.table.find(key)
            if row is not False:
                return row
        return self._rows.get(key)

    def has_tensor(self, key: str) -> bool:
        return self._row(key) is not None

    def keys(self) -> list[str]:
        return sorted(self.index.table.key)

    def entry(self, key: str) -> fmt.TensorEntry:
        row = self._row(key)
        if row is None:
            raise KeyNotFoundError(f"key {key!r} not found in checkpoint {self.path!r}")
        return self.index.table.entry(row)

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        t = self.index.table
        return {k: list(t.shape[i]) for k, i in sorted(self._rows.items())}

    def get_variable_to_dtype_map(self) -> dict[str, np.dtype]:
        t = self.index.table
        return {k: t.np_dtype(i) for k, i in sorted(self._rows.items())}

    def get_tensor(self, key: str) -> np.ndarray:
        """Read one tensor into a new array (checksum verified).

        A TensorFlow string tensor is an array of dtype ``object`` holding ``bytes``; a scalar
        string is returned as ``bytes`` itself, as TensorFlow's ``get_tensor`` returns it.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> p = ck.Checkpoint(v=ck.Variable(5)).write("memory://doc/gt/c")
            >>> int(ck.load_checkpoint(p).get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE"))
            5
        """
        entry = self.entry(key)
        out: list[np.ndarray] = []
        self.read([(entry, None, out.append)])
        if out[0].dtype == object and out[0].ndim == 0:  # a scalar string (TensorFlow's): bytes, as TF returns it
            return out[0][()]
        return out[0]

    def verify(self, errors: list | None = None) -> int:
        """Read every tensor and check its checksum without restoring anything.

        Each data file is read in order through one 8 MiB buffer, so memory stays
        bounded whatever the size of the checkpoint or of its largest tensor.
        Returns the number of bytes verified; raises
        :class:`~ckptcore.CorruptCheckpointError` naming the key and file on failure.
        With a list as ``errors``, each problem is appended to it instead (a
        missing or truncated data file once, a corrupt tensor each) and checking
        goes on, so one pass names every corrupt file and key.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> ck.load_checkpoint(ck.Checkpoint(a=np.ones(4)).write("memory://doc/verify/c")).verify()
            32
            >>> found = []; ck.load_checkpoint("memory://doc/verify/c").verify(found), found
            (32, [])
        """
        def fail(e: CorruptCheckpointError) -> None:
            if errors is None:
                raise e
            errors.append(e)

        decoded = self.index.decoded_rows or {}
        done = 0
        for r, decode in decoded.items():  # rows the format decodes itself (TensorFlow strings): decoding checks
            try:
                decode(self, r, True)
            except CorruptCheckpointError as e:
                fail(e)
            done += self.index.table.nbytes[r]
        if self.index.pieces is not None:  # sharded tensors: every ordinary row and every piece
            from .distributed.reshard import verify_pieces
            return verify_pieces(self) + done
        t = self.index.table
        shard, offset, nbytes = t.shard, t.offset, t.nbytes
        sizes = self.index.shard_sizes
        if errors is None:
            self.check_data_files()
            bad_shards: set[int] = set()
        else:
            bad_shards = set()
            for s in range(self.index.num_shards):
                try:
                    self._check_data_file(s)
                except CorruptCheckpointError as e:
                    errors.append(e)
                    bad_shards.add(s)
        if not self.index.checksummed:  # safetensors stores no checksums: nothing to verify against
            return 0
        scratch = memoryview(np.empty(min(VERIFY_CHUNK, max(sizes, default=0)), np.uint8))  # type: ignore[arg-type]
        order = sorted((r for r in range(len(t)) if r not in decoded), key=lambda r: (shard[r], offset[r]))
        for s, rows in groupby(order, key=shard.__getitem__):
            if s in bad_shards:
                continue
            f = self.data_file(s)
            size = sizes[s]
            lo = hi = 0  # the file range [lo, hi) now in the scratch buffer
            with self._open_reader(f) as rd:
                for r in rows:
                    pos, end, crc = offset[r], offset[r] + nbytes[r], 0
                    while pos < end:
                        if not lo <= pos < hi:
                            lo, hi = pos, min(pos + len(scratch), size)
                            if rd.readinto(lo, scratch[:hi - lo]) != hi - lo:
                                break
                        stop = min(end, hi)
                        crc = fmt.crc32c(scratch[pos - lo:stop - lo], crc)
                        pos = stop
                    if pos < end:
                        fail(_short(t.entry(r), f))
                        break  # the rest of this file cannot be read either
                    if crc != t.crc32c[r]:
                        fail(_mismatch(t.entry(r), f))
        return sum(nbytes)  # (decoded rows included)

    def read(self, requests: Iterable[tuple[fmt.TensorEntry, np.ndarray | None, Callable | None]],
             verify: bool | None = None) -> None:
        """Read tensors, each into its destination array (or a new one), then call back.

        ``requests`` holds ``(entry, dest, callback)``; ``dest`` must be a
        C-contiguous writable array of the entry's shape and dtype, or None;
        two requests' destinations must not share memory (checksums are
        verified after filling). ``callback(array)`` receives the filled array once its checksum passed.
        """
        verify = (self.verify_checksums if verify is None else verify) and self.index.checksummed
        if self.index.decoded_rows:  # rows the format decodes itself: served here, the rest read below
            requests = [r for r in requests if not self._decoded(self._rows[r[0].key], r[1], r[2], verify)]
        if self.index.pieces is not None:  # sharded tensors: assembled from their pieces
            requests = list(requests)
            rows = [self._rows[r[0].key] for r in requests]
            from .distributed.reshard import read_rows as read_pieces
            read_pieces(self, rows, [r[1] for r in requests], [r[2] for r in requests], verify)
            return
        self.check_data_files()
        if self.index.num_shards == 1:
            reqs = sorted(requests, key=_offset_of)  # one pass when already in file order
        else:
            reqs = sorted(requests, key=_shard_offset_of)
        by_shard: dict[int, list] = {}
        for r in reqs:
            by_shard.setdefault(r[0].shard, []).append(r)
        workers = self._shard_workers(len(by_shard))
        if workers > 1:
            self._read_parallel(by_shard, verify, workers)
            return
        for shard, items in by_shard.items():
            f = self.data_file(shard)
            with self._open_reader(f) as rd:
                read_tensors(rd, f, items, verify)

    def read_rows(self, rows: list[int], dests: list, callbacks: list, verify: bool | None = None) -> None:
        """:meth:`read` for the tensors at ``rows`` of the index's table (restore's path).

        ``dests[i]`` and ``callbacks[i]`` go with ``rows[i]``, as in :meth:`read`; a None
        callback means the destination itself is the result. A single local data file is
        read by runs of neighbouring tensors, laid out with numpy (no object per tensor);
        anything else goes through :meth:`read`.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> r = ck.load_checkpoint(ck.Checkpoint(a=np.arange(3.0)).write("memory://doc/read_rows/c"))
            >>> out = np.zeros(3); r.read_rows([0], [out], [None]); out.tolist()
            [0.0, 1.0, 2.0]
        """
        verify = (self.verify_checksums if verify is None else verify) and self.index.checksummed
        if self.index.decoded_rows:  # rows the format decodes itself: served here, the rest read below
            keep = [i for i, r in enumerate(rows) if not self._decoded(r, dests[i], callbacks[i], verify)]
            if len(keep) < len(rows):
                rows, dests, callbacks = [rows[i] for i in keep], [dests[i] for i in keep], [callbacks[i] for i in keep]
        if not rows:
            return
        if self.index.pieces is not None:  # sharded tensors: assembled from their pieces
            from .distributed.reshard import read_rows as read_pieces
            read_pieces(self, rows, dests, callbacks, verify)
            return
        table = self.index.table
        if self.index.num_shards != 1:
            self.read([(table.entry(t), d, cb) for t, d, cb in zip(rows, dests, callbacks)], verify)
            return
        self.check_data_files()
        _shards, offset, nbytes = table.arrays()
        r = np.array(rows, np.int64)
        offs = offset[r]
        if len(r) > 1 and not (offs[1:] >= offs[:-1]).all():  # restores usually ask in file order already
            order = np.argsort(offs, kind="stable")
            r, offs = r[order], offs[order]
            order = order.tolist()
            rows, dests, callbacks = [rows[i] for i in order], [dests[i] for i in order], [callbacks[i] for i in order]
        f = self.data_file(0)
        with self._open_reader(f) as rd:
            if getattr(rd, "readv", None) is None:
                read_tensors(rd, f, [(table.entry(t), d, cb) for t, d, cb in zip(rows, dests, callbacks)], verify)
            else:
                _read_rows_sorted(rd, f, table, rows, offs, nbytes[r], dests, callbacks, verify)

    def _decoded(self, row: int, dest, callback, verify: bool) -> bool:
        """Serve ``row`` if the format decodes it itself (``Index.decoded_rows``); False if it is an ordinary row."""
        decode = (self.index.decoded_rows or {}).get(row)
        if decode is None:
            return False
        value = decode(self, row, verify)
        if dest is not None:
            dest[...] = value
            value = dest
        if callback is not None:
            callback(value)
        return True

    def _read_parallel(self, by_shard: dict[int, list], verify: bool, workers: int) -> None:
        """Read several shards at once (object stores); callbacks run on this thread, as the tensors arrive."""
        ready: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()
        done = object()

        def work(shard: int, items: list) -> None:
            try:
                if stop.is_set():
                    return
                f = self.data_file(shard)

                def deliver(arr, cb):
                    if stop.is_set():
                        raise _Stopped()
                    ready.put((cb, arr))

                wrapped = [(e, d, (lambda arr, cb=cb: deliver(arr, cb)) if cb is not None else None)
                           for e, d, cb in items]
                with self._open_reader(f) as rd:
                    read_tensors(rd, f, wrapped, verify)
            except _Stopped:
                pass
            except BaseException as e:
                errors.append(e)
            finally:
                ready.put(done)

        errors: list[BaseException] = []
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckptcore-shard")
        try:
            for shard, items in by_shard.items():
                pool.submit(work, shard, items)
            remaining = len(by_shard)
            while remaining and not errors:
                item = ready.get()
                if item is done:
                    remaining -= 1
                    continue
                cb, arr = item
                cb(arr)
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
        if errors:
            raise errors[0]


def load_checkpoint(path: str, storage_options: Mapping[str, Any] | None = None) -> CheckpointReader:
    """Open a checkpoint for reading tensors by key (``tf.train.load_checkpoint``).

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> r = ck.load_checkpoint(ck.Checkpoint(a=np.ones(2)).write("memory://doc/lc/c"))
        >>> r.get_variable_to_dtype_map()
        {'a/.ATTRIBUTES/VARIABLE_VALUE': dtype('float64')}
    """
    return CheckpointReader(resolve_checkpoint(path, storage_options), storage_options)


def resolve_checkpoint(path: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """``path`` itself, or for a directory its latest checkpoint (as TF's ``load_checkpoint`` resolves it).

    A directory without checkpoints raises :class:`~ckptcore.NotFoundError`.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> p = ck.Checkpoint(a=np.ones(1)).save("memory://doc/resolve/ckpt")
        >>> resolve_checkpoint("memory://doc/resolve") == p
        True
    """
    from .state import STATE_FILENAME, latest_checkpoint
    from .storage.paths import check_checkpoint_path

    path = check_checkpoint_path(path, "restore")  # a NUL, a broken URL: a clear error, before any I/O
    storage, spath = open_storage(path, storage_options)
    if storage.exists(fmt.index_path(spath)) or not storage.isdir(spath):
        return path
    latest = latest_checkpoint(path, storage_options=storage_options)
    if latest is None:
        raise NotFoundError(f"no checkpoint in directory {path!r}: it has no {STATE_FILENAME!r} state file naming "
                            "an existing checkpoint. Pass a checkpoint's path (the one save() returned).")
    return latest


def list_variables(path: str, storage_options: Mapping[str, Any] | None = None) -> list[tuple[str, list[int]]]:
    """``[(key, shape), ...]`` for every tensor of a checkpoint, sorted by key.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> ck.list_variables(ck.Checkpoint(a=np.ones((1, 2))).write("memory://doc/lv/c"))
        [('a/.ATTRIBUTES/VARIABLE_VALUE', [1, 2])]
    """
    t = CheckpointReader(resolve_checkpoint(path, storage_options), storage_options).index.table
    # straight from the table's columns (keys are unique: the sort never compares shapes); no entry per
    # tensor, and no collection of the caller's heap triggered by the million pairs a big model gives
    with paused_gc():
        return sorted(zip(t.key, map(list, t.shape)))
