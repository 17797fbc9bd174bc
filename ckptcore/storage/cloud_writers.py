"""The object-store writers behind :meth:`CloudStorage.open_writer <ckptcore.storage.cloud.CloudStorage.open_writer>`.

* :class:`_S3MultipartWriter`: S3 multipart uploads, parts in flight concurrently (one PUT for small objects);
* :class:`_GCSComposeWriter`: GCS composite objects (parts uploaded as temporary objects, then composed);
* :class:`_BufferedWriter`: any other fsspec store (one PUT, or the filesystem's own streaming upload).

Each writer's call order is ``write``/``writev`` ... then ``commit`` or ``abort``. An aborted
writer deletes the final-name object only if it sent the request that could have created it.

Example:
    >>> import fsspec
    >>> from ckptcore.storage.cloud import CloudStorage
    >>> st = CloudStorage(fsspec.filesystem("memory"), protocol="memory")
    >>> w = _BufferedWriter(st, "/doc/cloud_writers/x"); w.write(b"abc"); w.commit()
    >>> st.read_bytes("/doc/cloud_writers/x")
    b'abc'
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import uuid
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from .retry import acall_with_retry

if TYPE_CHECKING:
    from .cloud import CloudStorage

_MIN_S3_PART = 5 << 20  # S3's smallest part (except the last)


class _BufferedWriter:
    """Small objects: one PUT at commit (retried). Large ones: the filesystem's streaming upload."""

    def __init__(self, storage: CloudStorage, path: str):
        self._st = storage
        self.path = path
        self._buf = bytearray()
        self._f: Any = None
        self._sent_final = False  # a request that may have created the object under its name was sent

    def write(self, buf) -> None:
        mv = memoryview(buf).cast("B")
        if self._f is None:
            if len(self._buf) + len(mv) <= self._st.part_size:
                self._buf += mv
                return
            fs = self._st.fs
            try:
                self._f = fs.open(self.path, "wb", block_size=max(self._st.part_size, 5 << 20))
            except TypeError:
                self._f = fs.open(self.path, "wb")
            except Exception as e:
                raise self._st._translate(e, "write", self.path) from e
            self._stream(self._buf)
            self._buf = bytearray()
        self._stream(mv)

    def writev(self, bufs) -> None:
        for b in bufs:
            self.write(b)

    def _stream(self, data) -> None:
        try:
            self._f.write(data)
        except Exception as e:
            raise self._st._translate(e, "write", self.path) from e

    def commit(self) -> None:
        self._sent_final = True
        if self._f is None:
            self._st.write_atomic(self.path, bytes(self._buf))
            self._buf = bytearray()
            return
        try:
            self._f.close()
        except Exception as e:
            raise self._st._translate(e, "write", self.path) from e
        self._st.fs.invalidate_cache(self.path)

    def abort(self) -> None:
        self._buf = bytearray()
        if self._f is not None:
            try:
                discard = getattr(self._f, "discard", None)
                if discard is not None:
                    discard()
            except Exception:
                pass
            self._f = None
        if self._sent_final:  # never delete an object of this name that another save wrote
            _rm_quietly(self._st, self.path)


@contextlib.contextmanager
def _commit_errors(st: CloudStorage, path: str):
    """Around a writer's commit: failures become ckptcore errors naming ``path``; the listing cache is dropped.

    Example:
        >>> import fsspec
        >>> from ckptcore.storage.cloud import CloudStorage
        >>> st = CloudStorage(fsspec.filesystem("memory"), protocol="memory")
        >>> with _commit_errors(st, "/doc/commit-errors/x"):
        ...     pass
    """
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:
        raise st._translate(e, "write", path) from e
    finally:
        st.fs.invalidate_cache(path)


def _rm_quietly(storage: CloudStorage, path: str) -> None:
    """Best-effort removal of an aborted upload's object (it may never have been created)."""
    try:
        storage.fs.rm_file(path)
    except Exception:
        pass


class _PartSplitter:
    """Cuts a stream of buffers into ``part``-byte chunks, copying each byte once.

    Example:
        >>> sp = _PartSplitter(4)
        >>> [bytes(p) for p in sp.feed(memoryview(b"abcdefghij"))], bytes(sp.take_rest())
        ([b'abcd', b'efgh'], b'ij')
    """

    def __init__(self, part: int):
        self.part = part
        self.buf = bytearray()

    def feed(self, mv: memoryview):
        """Yield every chunk that ``mv`` completes; the remainder stays buffered."""
        while len(mv):
            if not self.buf and len(mv) >= self.part:
                chunk: bytes | bytearray = bytes(mv[:self.part])   # one copy, not two
                mv = mv[self.part:]
                yield chunk
                continue
            room = self.part - len(self.buf)
            self.buf += mv[:room]
            mv = mv[room:]
            if len(self.buf) >= self.part:
                chunk, self.buf = self.buf, bytearray()
                yield chunk

    def take_rest(self) -> bytearray:
        rest, self.buf = self.buf, bytearray()
        return rest


def _cancel_all(pending: list) -> None:
    """Cancel in-flight part uploads ``[(tag, future), ...]`` and wait for them to settle."""
    for _, fut in pending:
        fut.cancel()
    for _, fut in pending:
        try:
            fut.result()
        except BaseException:
            pass
    pending.clear()


class _S3MultipartWriter:
    """S3: parts of ``part_size`` uploaded concurrently while the saver keeps producing bytes.

    Up to ``max_concurrency`` parts are in flight; each part is retried on its
    own. An object of at most ``single_put_bytes`` (at least one part) -- a data
    shard -- is sent as a single PUT, its buffers joined with one copy at
    ``commit`` (so they must stay unchanged until then, as the storage call
    order allows). The object appears only when ``commit`` completes the
    upload; ``abort`` cancels it.
    """

    def __init__(self, storage: CloudStorage, path: str):
        self._st = storage
        self.path = path
        self._bucket, self._key, _ = storage.fs.split_path(path)
        self._part = max(storage.part_size, _MIN_S3_PART)
        self._single = max(getattr(storage, "single_put_bytes", 0), self._part)
        self._parts_of = _PartSplitter(self._part)
        # the caller's buffers (not copies: the saver leaves them untouched until commit) while the
        # object may still be one PUT; joined into its body with a single copy
        self._whole: list | None = []
        self._upload_id: str | None = None
        self._pending: list = []          # concurrent.futures.Future of (part_number, etag)
        self._parts: list[dict] = []
        self._total = 0
        self._sent_final = False  # a PUT or "complete" that may have created the object was sent

    def _s3(self, method: str, **kw):
        fs = self._st.fs
        return self._st._run(acall_with_retry(self._st.retry, fs._call_s3, method, Bucket=self._bucket,
                                              Key=self._key, **kw))

    def write(self, buf) -> None:
        mv = memoryview(buf).cast("B")
        self._total += len(mv)
        if self._whole is not None:
            if self._total <= self._single:
                self._whole.append(mv)
                return
            whole, self._whole = self._whole, None   # too big for one PUT: a multipart upload
            for piece in whole:
                self._feed(piece)
        self._feed(mv)

    def _feed(self, mv: memoryview) -> None:
        for chunk in self._parts_of.feed(mv):
            self._send(chunk)

    def writev(self, bufs) -> None:
        for b in bufs:
            self.write(b)

    def _send(self, data: bytearray) -> None:
        with self._st.translated("write", self.path):
            if self._upload_id is None:
                self._upload_id = self._s3("create_multipart_upload")["UploadId"]
            while len(self._pending) >= self._st.max_concurrency:
                self._collect(self._pending.pop(0))
        number = len(self._parts) + len(self._pending) + 1
        fs = self._st.fs
        coro = acall_with_retry(self._st.retry, fs._call_s3, "upload_part", Bucket=self._bucket, Key=self._key,
                                PartNumber=number, UploadId=self._upload_id, Body=bytes(data))
        fut = asyncio.run_coroutine_threadsafe(coro, fs.loop)
        self._pending.append((number, fut))

    def _collect(self, item) -> None:
        number, fut = item
        try:
            out = fut.result()
        except Exception as e:
            raise self._st._translate(e, "write", self.path) from e
        self._parts.append({"PartNumber": number, "ETag": out["ETag"]})

    def commit(self) -> None:
        st = self._st
        with _commit_errors(st, self.path):
            if self._whole is not None:
                data, self._whole = b"".join(self._whole), []
                self._sent_final = True
                self._s3("put_object", Body=data)
            else:
                rest = self._parts_of.take_rest()
                if rest:
                    self._send(rest)
                while self._pending:
                    self._collect(self._pending.pop(0))
                parts = sorted(self._parts, key=lambda p: p["PartNumber"])
                self._sent_final = True
                try:
                    self._s3("complete_multipart_upload", UploadId=self._upload_id, MultipartUpload={"Parts": parts})
                except Exception as e:
                    # A retried "complete" whose first attempt succeeded finds no upload any more.
                    if "NoSuchUpload" not in repr(e) or not self._landed():
                        raise
                self._upload_id = None

    def _landed(self) -> bool:
        try:
            return self._st.size(self.path) == self._total
        except Exception:
            return False

    def abort(self) -> None:
        _cancel_all(self._pending)
        self._parts_of.take_rest()
        self._whole = None
        if self._upload_id is not None:
            try:
                self._s3("abort_multipart_upload", UploadId=self._upload_id)
            except Exception:
                pass
            self._upload_id = None
        if self._sent_final:  # never delete an object of this name that another save wrote
            _rm_quietly(self._st, self.path)


class _GCSComposeWriter:
    """GCS: a parallel composite upload, every request retried on its own.

    Parts of ``part_size`` go up concurrently as temporary objects named
    ``.<name>.tmp-<32 hex>`` (the pattern the manager's cleanup removes after
    a crash), are composed into the final object (32 sources per compose
    call, in a tree for more), and are deleted. An object of at most
    ``single_put_bytes`` (at least one part) plus less than a part is a single
    upload. Nothing appears under the final name before the last compose.
    """

    MAX_COMPOSE = 32

    def __init__(self, storage: CloudStorage, path: str):
        self._st = storage
        self.path = path
        self._part = storage.part_size
        self._single = max(getattr(storage, "single_put_bytes", 0), self._part)
        self._parts_of = _PartSplitter(self._part)
        self._held: list = []   # full parts held back while the object may still be one upload
        self._pending: list = []     # (tmp path, future)
        self._done: list[str] = []   # uploaded temporary objects, in order
        self._tmps: list[str] = []   # every temporary object ever started (for cleanup)
        self._sent_final = False     # an upload or compose that may have created the object was sent

    def _tmp(self) -> str:
        d, name = posixpath.split(self.path)
        t = posixpath.join(d, f".{name}.tmp-{uuid.uuid4().hex}")
        self._tmps.append(t)
        return t

    def write(self, buf) -> None:
        for chunk in self._parts_of.feed(memoryview(buf).cast("B")):
            if not self._tmps and (len(self._held) + 1) * self._part <= self._single:
                self._held.append(chunk)
            else:
                held, self._held = self._held, []
                for h in held:
                    self._send(h)
                self._send(chunk)

    def writev(self, bufs) -> None:
        for b in bufs:
            self.write(b)

    def _send(self, data) -> None:
        while len(self._pending) >= self._st.max_concurrency:
            self._collect(self._pending.pop(0))
        fs = self._st.fs
        tmp = self._tmp()
        coro = acall_with_retry(self._st.retry, fs._pipe_file, tmp, bytes(data))
        self._pending.append((tmp, asyncio.run_coroutine_threadsafe(coro, fs.loop)))

    def _collect(self, item) -> None:
        tmp, fut = item
        try:
            fut.result()
        except Exception as e:
            raise self._st._translate(e, "write", self.path) from e
        self._done.append(tmp)

    def _compose(self, dest: str, sources: list[str]) -> None:
        fs = self._st.fs
        self._st._run(acall_with_retry(self._st.retry, fs._merge, dest, sources))

    def commit(self) -> None:
        st = self._st
        with _commit_errors(st, self.path):
            rest = self._parts_of.take_rest()
            if not self._tmps:
                data = b"".join([*self._held, rest])
                self._held = []
                self._sent_final = True
                st.write_atomic(self.path, data)
                return
            if rest:
                self._send(rest)
            while self._pending:
                self._collect(self._pending.pop(0))
            level = self._done
            while len(level) > self.MAX_COMPOSE:
                nxt = []
                for i in range(0, len(level), self.MAX_COMPOSE):
                    group = level[i:i + self.MAX_COMPOSE]
                    if len(group) == 1:
                        nxt.append(group[0])
                        continue
                    t = self._tmp()
                    self._compose(t, group)
                    nxt.append(t)
                level = nxt
            self._sent_final = True
            self._compose(self.path, level)
        self._cleanup()

    def _cleanup(self) -> None:
        tmps, self._tmps, self._done = self._tmps, [], []
        if not tmps:
            return
        st = self._st

        async def rm_all():
            sem = asyncio.Semaphore(st.max_concurrency)

            async def rm(t):
                async with sem:
                    try:
                        await acall_with_retry(st.retry, st.fs._rm_file, t)
                    except FileNotFoundError:
                        pass

            await asyncio.gather(*(rm(t) for t in tmps), return_exceptions=True)

        try:
            st._run(rm_all())
        except Exception:
            pass  # leftover temporary objects; the manager's cleanup removes them later
        for t in tmps:
            st.fs.invalidate_cache(t)

    def abort(self) -> None:
        _cancel_all(self._pending)
        self._parts_of.take_rest()
        self._held = []
        self._cleanup()
        if self._sent_final:  # never delete an object of this name that another save wrote
            _rm_quietly(self._st, self.path)
