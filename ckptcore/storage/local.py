"""Storage: the small file-system interface checkpoints are written through.

A :class:`Storage` is obtained for a URL with :func:`open_storage`; the
built-in ``fsspec`` plugin serves every protocol fsspec knows, with a fast
path for local disk. A plugin can claim a protocol (see
:func:`ckptcore.hookspec.ckptcore_register_storage`) and subclass
:class:`FsspecStorage` or :class:`Storage`.

Call order for one checkpoint write (the commit protocol):

1. ``makedirs(dir)``;
2. ``open_writer(data_path)`` -> ``write()``... -> ``commit()`` for each data file
   (``abort()`` on failure). A storage whose ``preferred_shard_bytes`` is set
   gets several data files (shards), up to ``shard_concurrency`` of them written
   at once, each from its own thread; all are committed before step 3. A writer
   may keep a reference to a buffer passed to ``write`` until ``commit``/``abort``
   (the saver never modifies one meanwhile), so it can send it without a copy;
3. ``write_atomic(index_path, bytes)`` -- the index is the commit point: a
   checkpoint exists exactly when its index does;
4. ``write_atomic(state_path, bytes)`` for the ``checkpoint`` state file.

Reads: ``exists``/``size``/``read_bytes`` for the index, then
``open_reader(data_path)`` and ``readinto(offset, buffer)`` per tensor.

Example:
    >>> import ckptcore as ck
    >>> st, path = ck.storage.open_storage("memory://doc/storage/file")
    >>> st.write_atomic(path, b"hello")
    >>> st.read_bytes(path)
    b'hello'
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import NotFoundError, StorageError, storage_error

__all__ = ["Storage", "FsspecStorage", "LocalStorage", "open_storage", "split_protocol"]


def split_protocol(url: str) -> tuple[str, str]:
    """``("s3", "bucket/key")`` for ``"s3://bucket/key"``; ``("file", url)`` for plain paths.

    Example:
        >>> split_protocol("memory://a/b")
        ('memory', 'a/b')
    """
    url = os.fspath(url)
    if "://" in url:
        proto, rest = url.split("://", 1)
        return proto.split("::")[0], rest
    return "file", url


class Storage:
    """Abstract storage; see the module docstring for the call order.

    Paths are the storage's own (what :func:`open_storage` returns), joined
    with ``/``.

    Example:
        >>> Storage().join("a", "b")
        'a/b'
    """

    #: Whether ``write_atomic`` on this storage may be followed by a listing that lags.
    listing_may_lag = False
    #: Target size of one data shard, or None for a single data file. Object stores set it so that a
    #: large checkpoint becomes several objects written (and read) concurrently; see docs/format.md.
    preferred_shard_bytes: int | None = None
    #: How many data shards the saver writes, and the reader reads, at once.
    shard_concurrency: int = 1

    def join(self, *parts: str) -> str:
        return posixpath.join(*parts)

    def dirname(self, path: str) -> str:
        return posixpath.dirname(path.rstrip("/"))

    def basename(self, path: str) -> str:
        return posixpath.basename(path.rstrip("/"))

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def size(self, path: str) -> int:
        raise NotImplementedError

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        raise NotImplementedError

    def open_reader(self, path: str):
        raise NotImplementedError

    def open_writer(self, path: str):
        raise NotImplementedError

    def write_atomic(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def remove(self, paths: Iterable[str]) -> None:
        raise NotImplementedError

    def makedirs(self, path: str) -> None:
        raise NotImplementedError

    def isdir(self, path: str) -> bool:
        return False


_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


def _bytes(buf) -> memoryview:
    """A flat byte view of a C-contiguous buffer; numpy arrays of any dtype (bfloat16, strings) included."""
    if hasattr(buf, "__array_interface__") and not isinstance(buf, memoryview):
        import numpy as np

        buf = np.asarray(buf).reshape(-1).view(np.uint8)
    return memoryview(buf).cast("B")


def _advance(bufs: list, sizes: list, i: int, moved: int) -> int:
    """After a vectored call from ``bufs[i]`` moved ``moved`` bytes: the index of the first buffer
    not yet complete; a partly moved one is replaced by its rest (``bufs``, ``sizes`` updated)."""
    if moved == sum(sizes[i:i + _IOV_MAX]):  # the common case: every buffer of the call complete
        return i + _IOV_MAX
    while i < len(bufs) and moved >= sizes[i]:
        moved -= sizes[i]
        i += 1
    if moved:
        bufs[i] = _bytes(bufs[i])[moved:]
        sizes[i] -= moved
    return i


#: open files in binary mode on Windows (no newline translation); 0 elsewhere
_O_BINARY = getattr(os, "O_BINARY", 0)


def _read_at(fd: int, mv: memoryview, offset: int) -> int:
    """One positional read into ``mv`` where ``os.preadv`` is missing (Windows, older macOS); bytes read."""
    pread = getattr(os, "pread", None)
    n = min(len(mv), 16 << 20)  # a bounded temporary copy per call
    if pread is not None:
        data = pread(fd, n, offset)
    else:  # Windows: no positional read at all; readers of one descriptor are serialised
        with _seek_lock:
            os.lseek(fd, offset, os.SEEK_SET)
            data = os.read(fd, n)
    got = len(data)
    mv[:got] = data
    return got


_seek_lock = threading.Lock()


def _preadv(fd: int, bufs: list, offset: int) -> int:
    """``os.preadv`` where it exists, else positional reads into each buffer in turn; bytes read."""
    preadv = getattr(os, "preadv", None)
    if preadv is not None:
        return preadv(fd, bufs, offset)
    total = 0
    for b in bufs:
        mv = _bytes(b)
        done = 0
        while done < len(mv):
            got = _read_at(fd, mv[done:], offset + total + done)
            if got == 0:
                return total + done
            done += got
        total += done
    return total


def _writev(fd: int, bufs: list) -> int:
    """``os.writev`` where it exists (not on Windows), else ``os.write`` of the first buffer; bytes written."""
    writev = getattr(os, "writev", None)
    if writev is not None:
        return writev(fd, bufs)
    return os.write(fd, _bytes(bufs[0]))


def _fdatasync(fd: int) -> None:
    sync = getattr(os, "fdatasync", None) or os.fsync  # macOS and Windows have no fdatasync
    sync(fd)


def _check_regular(path: str) -> None:
    # a hostile checkpoint may put a directory, FIFO (open would hang) or device (endless data) in
    # place of a file: refuse anything but a regular file before opening it
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise StorageError(f"{path} is not a regular file")


class _LocalReader:
    #: large tensors are read in pieces this big, each checksummed while the next is read
    piece_size = 16 << 20
    #: ``readv`` may be called from two threads at once (``preadv`` at explicit offsets, no shared position)
    concurrent_readv = True

    def __init__(self, path: str):
        try:
            _check_regular(path)
            self._fd = os.open(path, os.O_RDONLY | _O_BINARY)
        except (FileNotFoundError, NotADirectoryError) as e:  # a parent is a file
            raise NotFoundError(f"checkpoint file not found: {path}") from e
        except OSError as e:
            raise storage_error(e, "read checkpoint file", path) from e
        self.path = path
        self.size = os.fstat(self._fd).st_size

    def readinto(self, offset: int, buf) -> int:
        mv = memoryview(buf).cast("B")
        total = 0
        n = len(mv)
        while total < n:
            try:
                got = _preadv(self._fd, [mv[total:]], offset + total)
            except OSError as e:
                raise storage_error(e, "read checkpoint file", self.path) from e
            if got == 0:
                break
            total += got
        return total

    def readv(self, offset: int, bufs, sizes=None) -> int:
        """Fill ``bufs`` in order from ``offset`` with few system calls; returns bytes read.

        ``bufs`` are writable C-contiguous buffers (numpy arrays are passed as they are, without
        a byte view per array); ``sizes``, if given, holds their lengths in bytes.
        """
        if sizes is None:
            sizes = [len(_bytes(b)) for b in bufs]
        if 0 in sizes:
            keep = [i for i, s in enumerate(sizes) if s]
            bufs, sizes = [bufs[i] for i in keep], [sizes[i] for i in keep]
        else:
            bufs, sizes = list(bufs), list(sizes)
        total = 0
        i = 0
        n = len(bufs)
        while i < n:
            try:
                got = _preadv(self._fd, bufs[i:i + _IOV_MAX], offset + total)
            except OSError as e:
                raise storage_error(e, "read checkpoint file", self.path) from e
            if got == 0:
                break
            total += got
            i = _advance(bufs, sizes, i, got)
        return total

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _LocalWriter:
    """Writes to a unique temp file; ``commit`` fsyncs and renames it into place."""

    #: ``commit`` may run on a helper thread (it only waits on the disk) while the caller encodes the index
    background_commit = True

    def __init__(self, path: str):
        self.path = path
        d = os.path.dirname(path) or "."
        self._tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
        self._unflushed = 0
        self._flush = None  # the background write-back in flight, if any
        try:
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o644)
        except OSError as e:
            raise storage_error(e, "write checkpoint file", path) from e

    def write(self, buf) -> None:
        mv = memoryview(buf).cast("B")
        try:
            while len(mv):
                n = os.write(self._fd, mv)
                mv = mv[n:]
        except OSError as e:  # ENOSPC, EIO, EDQUOT...
            raise storage_error(e, "write checkpoint file", self.path) from e

    #: ``writev`` takes arrays as they are (C-contiguous, any dtype) with their sizes: no byte view per array
    accepts_arrays = True

    def writev(self, bufs, sizes=None) -> None:
        """Write buffers in order with as few system calls as possible (no copy into one buffer).

        ``bufs`` are C-contiguous buffers (numpy arrays of any dtype are passed as they are);
        ``sizes``, if given, holds their lengths in bytes.
        """
        if sizes is None:
            sizes = [len(_bytes(b)) for b in bufs]
        bufs, sizes = list(bufs), list(sizes)
        total = sum(sizes)
        i = 0
        n = len(bufs)
        try:
            while i < n:
                i = _advance(bufs, sizes, i, _writev(self._fd, bufs[i:i + _IOV_MAX]))
        except OSError as e:  # ENOSPC, EIO, EDQUOT...
            raise storage_error(e, "write checkpoint file", self.path) from e
        self._written(total)

    #: once this many bytes are written since the last flush, they start going to the disk in the background
    flush_behind_bytes = 64 << 20

    def _written(self, nbytes: int) -> None:
        """Start writing back what is written so far while the caller goes on (one flush at a time).

        ``commit`` still ends with a full ``fsync``; this only lets the disk work while the
        caller is still producing bytes, so that last ``fsync`` has less left to wait for.
        """
        self._unflushed += nbytes
        prev = self._flush
        if self._unflushed < self.flush_behind_bytes or (prev is not None and (not prev.done() or prev.exception())):
            return  # one flush at a time; a failed one is kept for commit to raise
        self._unflushed = 0
        try:
            self._flush = _flush_executor().submit(_fdatasync, self._fd)
        except RuntimeError:  # interpreter shutdown: no new threads; commit's fsync does it all
            self._flush = None

    def _wait_flush(self, raise_error: bool) -> None:
        flush, self._flush = self._flush, None
        if flush is None:
            return
        try:
            flush.result()
        except OSError as e:
            # Linux reports a write-back error to one fsync of a file description only: an error the
            # background flush saw would not reach commit's own fsync, so it is raised here.
            if raise_error:
                raise storage_error(e, "write checkpoint file", self.path) from e

    def commit(self) -> None:
        """fsync the temp file, rename it to its name, fsync the directory; any failure is a ckptcore error.

        After a failure the file is not in place (``abort`` removes the temp
        file), except when only the directory's fsync failed: then the new
        name may or may not survive a crash, and the error says so.
        """
        self._wait_flush(raise_error=True)
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        except OSError as e:
            raise storage_error(e, "write checkpoint file", self.path) from e
        try:
            os.replace(self._tmp, self.path)
        except OSError as e:
            raise storage_error(e, "rename a temporary file into place as", self.path) from e
        _fsync_dir(os.path.dirname(self.path) or ".", self.path)

    def abort(self) -> None:
        self._wait_flush(raise_error=False)  # never close the descriptor under a flush still queued or running
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1
        try:
            os.unlink(self._tmp)
        except OSError:  # gone already, or the directory refuses: nothing more to do while failing
            pass


_flush_pool = None
_flush_lock = threading.Lock()


def _flush_executor():
    """One thread that writes back data files while saves go on (see ``_LocalWriter._written``)."""
    global _flush_pool
    with _flush_lock:
        if _flush_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _flush_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptcore-flush")
        return _flush_pool


#: errors of a directory fsync that mean "this file system does not do that", not "it failed"
_FSYNC_UNSUPPORTED = {getattr(errno, n) for n in ("EINVAL", "ENOTSUP", "EOPNOTSUPP", "EBADF", "EISDIR")
                      if hasattr(errno, n)}


def _fsync_dir(d: str, path: str | None = None) -> None:
    """Make a rename in directory ``d`` durable; a failure (EIO) is a :class:`StorageError`.

    Windows cannot open a directory, and some file systems refuse to fsync
    one (``EINVAL``): there the rename is as durable as the system makes it.
    """
    if os.name == "nt":
        return
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError as e:
        if e.errno in _FSYNC_UNSUPPORTED or e.errno in (errno.EACCES, errno.EPERM):  # no read permission on d
            return
        raise storage_error(e, "open the directory (to make the rename durable) of", path or d) from e
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _FSYNC_UNSUPPORTED:
            raise storage_error(e, "fsync the directory (the rename may not survive a crash) of",
                                path or d) from e
    finally:
        os.close(fd)


class LocalStorage(Storage):
    """Local disk: temp file + fsync + rename commits, ``preadv`` straight into arrays.

    Example:
        >>> import tempfile, os
        >>> st = LocalStorage(); d = tempfile.mkdtemp()
        >>> st.write_atomic(os.path.join(d, "f"), b"x"); st.size(os.path.join(d, "f"))
        1
    """

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def dirname(self, path: str) -> str:
        return os.path.dirname(path)

    def basename(self, path: str) -> str:
        return os.path.basename(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def size(self, path: str) -> int:
        try:
            return os.stat(path).st_size
        except (FileNotFoundError, NotADirectoryError) as e:  # a parent is a file
            raise NotFoundError(f"checkpoint file not found: {path}") from e
        except OSError as e:  # a symlink loop, a name too long, permission, I/O error
            raise storage_error(e, "read the size of checkpoint file", path) from e

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        try:
            _check_regular(path)
            with open(path, "rb") as f:
                return f.read() if limit is None else f.read(limit)
        except (FileNotFoundError, NotADirectoryError) as e:  # a parent is a file
            raise NotFoundError(f"checkpoint file not found: {path}") from e
        except StorageError:
            raise
        except OSError as e:
            raise storage_error(e, "read checkpoint file", path) from e

    def open_reader(self, path: str):
        return _LocalReader(path)

    def open_writer(self, path: str):
        return _LocalWriter(path)

    def write_atomic(self, path: str, data: bytes) -> None:
        w = _LocalWriter(path)
        try:
            w.write(data)
            w.commit()
        except BaseException:
            w.abort()
            raise

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise storage_error(e, "list the checkpoint directory", path) from e

    def remove(self, paths: Iterable[str]) -> None:
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise storage_error(e, "delete checkpoint file", p) from e

    def makedirs(self, path: str) -> None:
        if path:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as e:  # e.g. a parent is a regular file, or no permission
                raise storage_error(e, "create checkpoint directory", path) from e


class _FsspecReader:
    def __init__(self, fs, path: str):
        self._fs = fs
        self.path = path
        try:
            self.size = int(fs.size(path))
            self._f = fs.open(path, "rb")
        except FileNotFoundError as e:
            raise NotFoundError(f"checkpoint file not found: {path}") from e

    def readinto(self, offset: int, buf) -> int:
        mv = memoryview(buf).cast("B")
        self._f.seek(offset)
        total = 0
        while total < len(mv):
            got = self._f.readinto(mv[total:])
            if not got:
                break
            total += got
        return total

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _FsspecWriter:
    """Writes straight to the final name (object stores have no rename).

    Data files are invisible until the index is written, so this is safe.
    """

    def __init__(self, fs, path: str):
        self._fs = fs
        self.path = path
        try:
            self._f = fs.open(path, "wb")
        except OSError as e:
            raise storage_error(e, "write checkpoint file", path) from e

    def write(self, buf) -> None:
        try:
            self._f.write(memoryview(buf).cast("B"))
        except OSError as e:
            raise storage_error(e, "write checkpoint file", self.path) from e

    def commit(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            raise storage_error(e, "write checkpoint file", self.path) from e

    def abort(self) -> None:
        try:
            discard = getattr(self._f, "discard", None)
            if discard is not None:
                discard()
            else:
                self._f.close()
        except Exception:
            pass
        try:
            self._fs.rm_file(self.path)
        except Exception:
            pass


class FsspecStorage(Storage):
    """Any fsspec filesystem. Writes go straight to their final names, index last.

    Example:
        >>> import fsspec
        >>> st = FsspecStorage(fsspec.filesystem("memory"))
        >>> st.write_atomic("/doc/fsspec/x", b"1"); st.exists("/doc/fsspec/x")
        True
    """

    listing_may_lag = True

    def __init__(self, fs):
        self.fs = fs

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(path))

    def isdir(self, path: str) -> bool:
        try:
            return bool(self.fs.isdir(path))
        except Exception:
            return False

    def size(self, path: str) -> int:
        try:
            return int(self.fs.size(path))
        except FileNotFoundError as e:
            raise NotFoundError(f"checkpoint file not found: {path}") from e

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        try:
            if limit is None:
                return self.fs.cat_file(path)
            return self.fs.cat_file(path, start=0, end=limit)
        except FileNotFoundError as e:
            raise NotFoundError(f"checkpoint file not found: {path}") from e

    def open_reader(self, path: str):
        return _FsspecReader(self.fs, path)

    def open_writer(self, path: str):
        return _FsspecWriter(self.fs, path)

    def write_atomic(self, path: str, data: bytes) -> None:
        # A single PUT is atomic on object stores; memory:// replaces in one step.
        try:
            self.fs.pipe_file(path, bytes(data))
        except OSError as e:
            raise storage_error(e, "write checkpoint file", path) from e

    def listdir(self, path: str) -> list[str]:
        try:
            self.fs.invalidate_cache(path)
            return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []

    def remove(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        if not paths:
            return
        try:
            self.fs.rm(paths)
        except FileNotFoundError:
            for p in paths:
                try:
                    self.fs.rm_file(p)
                except FileNotFoundError:
                    pass

    def makedirs(self, path: str) -> None:
        if path:
            try:
                self.fs.makedirs(path, exist_ok=True)
            except Exception:
                pass  # object stores have no directories


def open_storage(url: str, storage_options: Mapping[str, Any] | None = None, *,
                 max_retries: int | None = None) -> tuple[Storage, str]:
    """The :class:`Storage` for ``url`` and the path inside it.

    ``max_retries`` (from ``CheckpointOptions``) is applied to storages that
    retry (those with a ``max_retries`` attribute, such as
    :class:`~ckptcore.storage.cloud.CloudStorage`).

    Example:
        >>> st, path = open_storage("/tmp/ckpt")
        >>> type(st).__name__, path
        ('LocalStorage', '/tmp/ckpt')
    """
    from ..registry import find_storage_factory

    url = os.fspath(url)
    protocol, _ = split_protocol(url)
    factory = find_storage_factory(protocol)
    result = factory(protocol, dict(storage_options or {}), url)
    if max_retries is not None and hasattr(result[0], "max_retries"):
        result[0].max_retries = max_retries
    return result
