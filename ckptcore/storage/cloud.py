"""Object-store storage (S3, GCS, Azure, ...): retries, parallel ranged reads, parallel multipart writes.

:class:`CloudStorage` is what the built-in fsspec plugin returns for bucket
URLs (``s3://``, ``gs://``, ``az://``, ...). Compared with the plain
:class:`~ckptcore.storage.FsspecStorage` it

* retries every request that fails transiently (5xx, throttling, connection
  resets) with exponential backoff (:mod:`ckptcore.storage.retry`);
* reads data objects through a read-ahead window of concurrent ranged GETs
  (``read_block_size`` each, ``read_ahead`` in flight), so the next tensors
  download while one is checksummed; a small single read is one GET;
* asks the saver to split a large checkpoint into data shards of about
  ``shard_bytes`` (``preferred_shard_bytes``), ``shard_concurrency`` of them
  written and read at once;
* writes each data object of up to ``single_put_bytes`` as one PUT, larger
  ones in parallel (``part_size`` bytes per part,
  ``max_concurrency`` parts in flight): an S3 multipart upload, a GCS
  parallel composite upload, elsewhere the filesystem's streaming upload;
* turns failures into ckptcore errors naming the URL: a missing key or bucket
  is :class:`~ckptcore.NotFoundError`, denied access or missing credentials
  is :class:`~ckptcore.StorageError`.

Object stores have no rename. Objects are written under their final names;
the ``.index`` object is written last and is the commit point, and the
``checkpoint`` state object is read directly (never by listing).

Example:
    >>> import fsspec
    >>> from ckptcore.storage.cloud import CloudStorage
    >>> st = CloudStorage(fsspec.filesystem("memory"), protocol="memory")
    >>> st.write_atomic("/doc/cloud/x", b"hello"); st.read_bytes("/doc/cloud/x")
    b'hello'
    >>> st.url("/doc/cloud/x")
    'memory:///doc/cloud/x'
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import CheckpointError, NotFoundError, StorageError, StoragePermissionError
from .cloud_writers import _BufferedWriter, _GCSComposeWriter, _S3MultipartWriter
from .local import FsspecStorage
from .retry import RetryPolicy, acall_with_retry, call_with_retry, is_transient

__all__ = ["CloudStorage", "OBJECT_STORE_PROTOCOLS", "DEFAULT_PART_SIZE", "DEFAULT_MAX_CONCURRENCY",
           "DEFAULT_SHARD_BYTES", "DEFAULT_SHARD_CONCURRENCY", "DEFAULT_SINGLE_PUT"]

#: Protocols served by :class:`CloudStorage` (others fall back to :class:`FsspecStorage`).
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})
DEFAULT_PART_SIZE = 16 << 20
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_READ_BLOCK = 32 << 20
DEFAULT_READ_AHEAD = 8
DEFAULT_SHARD_BYTES = 64 << 20      # object stores: a data shard per ~64 MiB of tensors (or per larger tensor)
DEFAULT_SHARD_CONCURRENCY = 4       # shards written / read at once
DEFAULT_SINGLE_PUT = 64 << 20       # objects up to this size are one PUT, not a multipart upload

_CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                                "DefaultCredentialsError", "RefreshError", "InvalidAccessKeyId",
                                "SignatureDoesNotMatch", "ExpiredToken", "UnrecognizedClientException"})


def _chain(exc: BaseException):
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _is_credentials_error(exc: BaseException) -> bool:
    for e in _chain(exc):
        if type(e).__name__ in _CREDENTIAL_ERRORS:
            return True
        code = ((getattr(e, "response", None) or {}).get("Error") or {}).get("Code") \
            if isinstance(getattr(e, "response", None), dict) else None
        if code in _CREDENTIAL_ERRORS:
            return True
        text = str(e)
        if any(name in text for name in ("Unable to locate credentials", "InvalidAccessKeyId",
                                         "SignatureDoesNotMatch", "Invalid Credentials")):
            return True
    return False


class CloudStorage(FsspecStorage):
    """An fsspec object store with retries, ranged parallel reads and parallel multipart writes.

    Args:
        fs: the fsspec filesystem (``s3fs.S3FileSystem``, ``gcsfs.GCSFileSystem``, ...).
        protocol: the URL scheme the user wrote, for error messages.
        retry: a :class:`~ckptcore.storage.retry.RetryPolicy`; ``max_retries`` can also be set directly.
        part_size: bytes per multipart/composite upload part.
        max_concurrency: parts in flight at once for one object being written.
        read_block_size: bytes per ranged GET of the read-ahead window.
        read_ahead: ranged GETs a reader keeps in flight (window = this times the block size).
        shard_bytes: target size of a data shard on object stores (``preferred_shard_bytes``).
        shard_concurrency: data shards written, and read, at once.
        single_put_bytes: objects up to this size (at least one part) are written with one PUT.

    Example:
        >>> import fsspec
        >>> st = CloudStorage(fsspec.filesystem("memory"), protocol="memory", part_size=4)
        >>> w = st.open_writer("/doc/cloud2/data"); w.write(b"0123456789"); w.commit()
        >>> buf = bytearray(6)
        >>> with st.open_reader("/doc/cloud2/data") as r:
        ...     r.readinto(2, buf)
        6
        >>> bytes(buf)
        b'234567'
    """

    listing_may_lag = True

    def __init__(self, fs, *, protocol: str | None = None, retry: RetryPolicy | None = None,
                 part_size: int | None = None, max_concurrency: int | None = None,
                 read_block_size: int | None = None, read_ahead: int | None = None,
                 shard_bytes: int | None = None, shard_concurrency: int | None = None,
                 single_put_bytes: int | None = None):
        super().__init__(fs)
        from . import retry as _retry

        retry = _retry.DEFAULT_POLICY if retry is None else retry
        part_size = DEFAULT_PART_SIZE if part_size is None else part_size
        max_concurrency = DEFAULT_MAX_CONCURRENCY if max_concurrency is None else max_concurrency
        protos = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self.protocol = protocol or protos[0]
        self.retry = retry
        if part_size < 1 or max_concurrency < 1:
            raise ValueError("part_size and max_concurrency must be positive")
        self.part_size = int(part_size)
        self.max_concurrency = int(max_concurrency)
        #: bytes per read-ahead GET, and how many such blocks a reader keeps in flight
        self.read_block_size = int(DEFAULT_READ_BLOCK if read_block_size is None else read_block_size)
        self.read_ahead = int(DEFAULT_READ_AHEAD if read_ahead is None else read_ahead)
        if self.read_block_size < 1 or self.read_ahead < 1:
            raise ValueError("read_block_size and read_ahead must be positive")
        self.object_store = self.protocol in OBJECT_STORE_PROTOCOLS
        shard_bytes = DEFAULT_SHARD_BYTES if shard_bytes is None else int(shard_bytes)
        self.shard_concurrency = int(DEFAULT_SHARD_CONCURRENCY if shard_concurrency is None else shard_concurrency)
        self.single_put_bytes = int(DEFAULT_SINGLE_PUT if single_put_bytes is None else single_put_bytes)
        if shard_bytes < 1 or self.shard_concurrency < 1 or self.single_put_bytes < 0:
            raise ValueError("shard_bytes and shard_concurrency must be positive, single_put_bytes not negative")
        #: several data objects, written and read concurrently, beat one big multipart object
        self.preferred_shard_bytes = shard_bytes if self.object_store else None
        self._is_s3 = hasattr(fs, "_call_s3") and self.protocol in ("s3", "s3a")
        self._is_gcs = hasattr(fs, "_merge") and hasattr(fs, "_pipe_file") and self.protocol in ("gs", "gcs")

    # -- configuration ---------------------------------------------------------------------
    @property
    def max_retries(self) -> int:
        """Retries after the first attempt of each request (``CheckpointOptions(max_retries=...)``)."""
        return self.retry.max_retries

    @max_retries.setter
    def max_retries(self, n: int) -> None:
        if int(n) < 0:
            raise ValueError(f"max_retries must be >= 0, got {n}")
        self.retry = RetryPolicy(max_retries=int(n), initial_delay=self.retry.initial_delay,
                                 max_delay=self.retry.max_delay, multiplier=self.retry.multiplier,
                                 jitter=self.retry.jitter)

    def url(self, path: str) -> str:
        """The URL of a storage path, as users write it (for messages)."""
        return f"{self.protocol}://{path}"

    # -- error handling --------------------------------------------------------------------
    def _translate(self, exc: BaseException, what: str, path: str) -> CheckpointError:
        url = self.url(path)
        if isinstance(exc, FileNotFoundError):
            bucket = path.lstrip("/").split("/", 1)[0]
            return NotFoundError(f"cannot {what} {url}: it does not exist (or its bucket {bucket!r} does not). {exc}")
        if _is_credentials_error(exc):
            return StoragePermissionError(
                f"cannot {what} {url}: no valid credentials ({exc}). Set the usual environment variables "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE for S3, GOOGLE_APPLICATION_CREDENTIALS "
                "for GCS) or pass CheckpointOptions(storage_options={...}).")
        if isinstance(exc, PermissionError):
            return StoragePermissionError(f"cannot {what} {url}: access denied ({exc}). Check the credentials and the "
                                "bucket's permissions.")
        retried = f" (retried up to {self.retry.max_retries} times)" if is_transient(exc) else ""
        return StorageError(f"cannot {what} {url}{retried}: {type(exc).__name__}: {exc}")

    @contextlib.contextmanager
    def translated(self, what: str, path: str):
        """Let ckptcore errors through; turn any other error into one naming ``path`` (``_translate``)."""
        try:
            yield
        except CheckpointError:
            raise
        except Exception as e:
            raise self._translate(e, what, path) from e

    def _call(self, what: str, path: str, fn: Callable, *args: Any, **kwargs: Any):
        with self.translated(what, path):
            return call_with_retry(self.retry, fn, *args, **kwargs)

    # -- Storage interface -----------------------------------------------------------------
    def _head(self, path: str) -> int:
        """Size of the object at ``path`` in one request (``fs.info`` may also list, for directories)."""
        fs = self.fs
        self.fs.invalidate_cache(path)
        if self._is_s3:
            bucket, key, _ = fs.split_path(path)
            out = self._run(fs._call_s3("head_object", Bucket=bucket, Key=key))
            return int(out["ContentLength"])
        if hasattr(fs, "_get_object") and getattr(fs, "loop", None) is not None:  # gcsfs
            return int(self._run(fs._get_object(path))["size"])
        info = fs.info(path)
        if info.get("type") == "directory":
            raise FileNotFoundError(path)
        return int(info["size"])

    def exists(self, path: str) -> bool:
        def check():
            try:
                self._head(path)
                return True
            except FileNotFoundError:
                return False

        return self._call("check", path, check)

    def isdir(self, path: str) -> bool:
        self.fs.invalidate_cache(path)
        try:
            return bool(self._call("inspect", path, self.fs.isdir, path))
        except NotFoundError:
            return False

    def size(self, path: str) -> int:
        return self._call("read", path, self._head, path)

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        # start=0 makes it one ranged GET: no HEAD first, no concurrent split.
        def get():
            try:
                return self.fs.cat_file(path, start=0, end=limit)
            except OSError as e:
                text = f"{e} {e.__cause__!r}"
                if any(t in text for t in ("InvalidRange", "not satisfiable", "416")):  # empty: no byte 0
                    data = self.fs.cat_file(path)
                    return data if limit is None else data[:limit]
                raise

        return self._call("read", path, get)

    def open_reader(self, path: str):
        return _RangeReader(self, path)

    def open_writer(self, path: str):
        if self._is_s3:
            return _S3MultipartWriter(self, path)
        if self._is_gcs:
            return _GCSComposeWriter(self, path)
        return _BufferedWriter(self, path)

    def write_atomic(self, path: str, data: bytes) -> None:
        self._call("write", path, self.fs.pipe_file, path, bytes(data))
        self.fs.invalidate_cache(path)

    def listdir(self, path: str) -> list[str]:
        self.fs.invalidate_cache(path)

        def ls():
            try:
                return self.fs.ls(path, detail=False, refresh=True)
            except TypeError:  # filesystems without ``refresh``
                return self.fs.ls(path, detail=False)
            except FileNotFoundError:
                return []

        return sorted(posixpath.basename(p.rstrip("/")) for p in self._call("list", path, ls))

    #: A request the client gave up on may still be applied later (a late state-file PUT): readers of the
    #: state file check it against the indexes on storage (see ckptcore.state.latest_checkpoint).
    @property
    def state_may_roll_back(self) -> bool:
        return self.object_store

    def list_modified(self, path: str) -> dict[str, float]:
        """``{name: modification time (s since the epoch)}`` of the objects directly in ``path``, in one listing.

        Objects whose store reports no time are left out.
        """
        self.fs.invalidate_cache(path)

        def ls():
            try:
                return self.fs.ls(path, detail=True, refresh=True)
            except TypeError:
                return self.fs.ls(path, detail=True)
            except FileNotFoundError:
                return []

        out: dict[str, float] = {}
        for info in self._call("list", path, ls):
            t = _modified_of(info)
            if t is not None and info.get("type", "file") != "directory":
                out[posixpath.basename(str(info.get("name", "")).rstrip("/"))] = t
        return out

    def abort_stale_uploads(self, directory: str, names: re.Pattern, older_than: float) -> int:
        """Abort the incomplete S3 multipart uploads of objects directly in ``directory`` whose name
        ``names`` matches, started at least ``older_than`` seconds ago (a killed save's); returns how many.

        A save that fails aborts its own upload; one killed (SIGKILL, a lost machine) cannot, and S3
        keeps (and bills) the uploaded parts until someone aborts it. ``CheckpointManager`` calls this
        after each save with its own names and its grace period. Other stores: 0.
        """
        if not self._is_s3:
            return 0
        fs = self.fs
        bucket, key, _ = fs.split_path(directory)
        prefix = key.rstrip("/") + "/" if key else ""
        now = time.time()
        aborted = 0
        kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        with self.translated("list the multipart uploads of", directory):
            while True:
                out = self._run(acall_with_retry(self.retry, fs._call_s3, "list_multipart_uploads", **kw))
                for up in out.get("Uploads") or []:
                    k = str(up.get("Key", ""))
                    if "/" in k[len(prefix):] or not names.fullmatch(k[len(prefix):]):
                        continue
                    started = up.get("Initiated")
                    if older_than > 0 and (started is None or now - started.timestamp() < older_than):
                        continue
                    try:
                        self._run(acall_with_retry(self.retry, fs._call_s3, "abort_multipart_upload", Bucket=bucket,
                                                   Key=k, UploadId=up["UploadId"]))
                        aborted += 1
                    except FileNotFoundError:  # completed or aborted meanwhile
                        pass
                if not out.get("IsTruncated"):
                    break
                kw["KeyMarker"], kw["UploadIdMarker"] = out.get("NextKeyMarker"), out.get("NextUploadIdMarker")
        return aborted

    #: Each save attempt names its data objects with its own tag (recorded in the index): a request of a failed
    #: attempt that the server applies late (a clean-up DELETE) never reaches another attempt's objects.
    @property
    def unique_data_names(self) -> bool:
        return self.object_store

    def remove_unchanged(self, path: str) -> None:
        """Delete ``path`` as it is now: the DELETE names the version just read (S3 ``If-Match`` on its ETag,
        GCS ``ifGenerationMatch``), so applied late it cannot remove an object written under the name since.

        Absent: nothing to do. Replaced meanwhile (the precondition fails): left alone. Other stores: a plain
        DELETE. (The GCS emulator the tests use ignores preconditions; real GCS honours them.)
        """
        fs = self.fs
        fs.invalidate_cache(path)
        if not (self._is_s3 or self._is_gcs):
            self.remove([path])
            return
        bucket, key, _ = fs.split_path(path)

        def version():   # read once: a retried DELETE must still name this version, not a newer one
            try:
                if self._is_s3:
                    return {"IfMatch": self._run(fs._call_s3("head_object", Bucket=bucket, Key=key))["ETag"]}
                generation = self._run(fs._get_object(path)).get("generation")
                return {} if generation is None else {"ifGenerationMatch": generation}
            except FileNotFoundError:
                return None

        condition = self._call("check", path, version)
        if condition is None:
            return

        def rm():
            try:
                if self._is_s3:
                    self._run(fs._call_s3("delete_object", Bucket=bucket, Key=key, **condition))
                else:
                    self._run(fs._call("DELETE", "b/{}/o/{}", bucket, key, **condition))
            except FileNotFoundError:
                pass
            except OSError as e:
                if not _precondition_failed(e):
                    raise

        self._call("delete", path, rm)
        fs.invalidate_cache(path)

    def remove(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        if not paths:
            return

        def rm(p):
            try:
                self.fs.rm_file(p)   # one DELETE; fs.rm would list first
            except FileNotFoundError:
                pass

        for p in paths:
            self._call("delete", p, rm, p)
            self.fs.invalidate_cache(p)

    def makedirs(self, path: str) -> None:
        if path and not self.object_store:  # object stores have no directories
            try:
                self.fs.makedirs(path, exist_ok=True)
            except Exception:
                pass

    # -- async helpers -----------------------------------------------------------------------
    def _run(self, coro):
        from fsspec.asyn import sync

        return sync(self.fs.loop, lambda: coro)


def _precondition_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is HTTP 412: the object is no longer the version named."""
    for e in _chain(exc):
        text = f"{type(e).__name__} {e} {getattr(e, 'code', '')}"
        if "PreconditionFailed" in text or "412" in text or "conditionNotMet" in text:
            return True
    return False


def _modified_of(info: dict) -> float | None:
    """A listing entry's modification time: s3fs ``LastModified``, gcsfs ``mtime``/``updated``, others ``mtime``."""
    import datetime

    for key in ("LastModified", "mtime", "updated", "last_modified", "modified"):
        v = info.get(key)
        if v is None:
            continue
        if isinstance(v, datetime.datetime):
            if v.tzinfo is None:
                v = v.replace(tzinfo=datetime.timezone.utc)
            return v.timestamp()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            try:
                d = datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (d if d.tzinfo else d.replace(tzinfo=datetime.timezone.utc)).timestamp()
    return None


class _RangeReader:
    """Ranged reads with a read-ahead window of concurrent GETs.

    Reads of ``SMALL_READ`` bytes or more go through blocks of
    ``read_block_size`` bytes: the blocks a read needs and up to
    ``read_ahead`` blocks after them are fetched concurrently, so the next
    tensors download while this one is copied out and checksummed (the
    reader walks a data file in offset order). Memory is bounded by the
    window. Smaller reads, such as one ``get_tensor``, are a single ranged
    GET unless the window already holds their bytes.
    """

    SMALL_READ = 1 << 20

    def __init__(self, storage: CloudStorage, path: str):
        self._st = storage
        self.path = path
        self._block = storage.read_block_size
        self._ahead = storage.read_ahead
        self._blocks: dict[int, Any] = {}   # block number -> concurrent.futures.Future of bytes
        self._size: int | None = None
        self._pool: ThreadPoolExecutor | None = None

    def _read_range(self, start: int, end: int) -> bytes:
        return self._st._call("read", self.path, self._st.fs.cat_file, self.path, start=start, end=end)

    def _file_size(self) -> int:
        if self._size is None:
            self._size = self._st.size(self.path)
        return self._size

    def _fetch(self, b: int) -> None:
        if b in self._blocks:
            return
        start = b * self._block
        size = self._file_size()
        if start >= size:
            return
        end = min(start + self._block, size)
        st = self._st
        fs = st.fs
        if getattr(fs, "async_impl", False) and getattr(fs, "loop", None) is not None:
            coro = acall_with_retry(st.retry, fs._cat_file, self.path, start=start, end=end)
            self._blocks[b] = asyncio.run_coroutine_threadsafe(coro, fs.loop)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self._ahead), thread_name_prefix="ckptcore-get")
            self._blocks[b] = self._pool.submit(call_with_retry, st.retry, fs.cat_file, self.path, start=start,
                                                end=end)

    def _result(self, b: int) -> bytes:
        with self._st.translated("read", self.path):
            return self._blocks[b].result()

    def readinto(self, offset: int, buf) -> int:
        mv = memoryview(buf).cast("B")
        n = len(mv)
        if n == 0:
            return 0
        B = self._block
        if n < self.SMALL_READ and not (offset // B in self._blocks and (offset + n - 1) // B in self._blocks):
            data: Any = self._read_range(offset, offset + n)
            mv[:len(data)] = data
            return len(data)
        size = self._file_size()
        if offset >= size:
            return 0
        end = min(offset + n, size)
        first, last = offset // B, (end - 1) // B
        for b in [b for b in self._blocks if b < first]:
            self._blocks.pop(b).cancel()
        total = 0
        for b in range(first, last + 1):
            for ahead in range(b, b + max(1, self._ahead)):
                self._fetch(ahead)
            data = memoryview(self._result(b))
            bstart = b * B
            lo = max(offset, bstart)
            hi = min(end, bstart + len(data))
            if hi <= lo:
                break
            mv[lo - offset:hi - offset] = data[lo - bstart:hi - bstart]
            total += hi - lo
            if b < last:
                del self._blocks[b]   # fully consumed; the last block may hold the next tensor's start
            if len(data) < min(B, size - bstart):
                break   # the object is shorter than expected
        return total

    def close(self) -> None:
        for fut in self._blocks.values():
            fut.cancel()
        self._blocks.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
