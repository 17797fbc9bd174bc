"""A test fsspec filesystem (``ckfault://``) that fails or stalls writes on demand.

It is fsspec's in-memory filesystem with its own store and a class-level fault
plan: after ``fail_after_bytes`` bytes written to files whose path matches
``fail_paths``, the write that crosses the budget stores its first part and
raises ``OSError(EIO)``, as a full disk or dropped connection would. While
``gate`` is an unset ``threading.Event`` every matching write waits for it, so
a test can hold a save in the middle of writing.

Usage::

    FaultyFS.reset(fail_after_bytes=1000, fail_paths=r"\\.data-")
    ck.Checkpoint(a=np.ones(10**4)).write("ckfault://run/ckpt")   # OSError
"""

from __future__ import annotations

import errno
import re
import threading

import fsspec
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

PROTOCOL = "ckfault"


class FaultyFS(MemoryFileSystem):
    protocol = PROTOCOL
    store: dict = {}
    pseudo_dirs = [""]

    fail_after_bytes: int | None = None
    fail_paths: str = ""
    gate: threading.Event | None = None
    written = 0
    faults = 0
    _plan_lock = threading.Lock()

    @classmethod
    def reset(cls, fail_after_bytes: int | None = None, fail_paths: str = "", gate: threading.Event | None = None):
        """Clear the store and set a new fault plan."""
        cls.store.clear()
        cls.pseudo_dirs[:] = [""]
        cls.fail_after_bytes = fail_after_bytes
        cls.fail_paths = fail_paths
        cls.gate = gate
        cls.written = 0
        cls.faults = 0

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith(PROTOCOL + "://"):
            path = path[len(PROTOCOL) + 3:]
        return super()._strip_protocol(path)

    @classmethod
    def _allowed(cls, path: str, n: int) -> int:
        """How many of the next ``n`` bytes to ``path`` may be written before the fault."""
        if not re.search(cls.fail_paths, path):
            return n
        gate = cls.gate
        if gate is not None and not gate.wait(timeout=60):
            raise TimeoutError(f"test gate never opened for {path}")
        with cls._plan_lock:
            if cls.fail_after_bytes is None:
                cls.written += n
                return n
            allowed = max(0, min(n, cls.fail_after_bytes - cls.written))
            cls.written += allowed
            return allowed

    @classmethod
    def _fault(cls, path: str) -> OSError:
        cls.faults += 1
        return OSError(errno.EIO, "injected write fault", path)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode not in ("wb", "xb", "w+b", "x+b"):
            return super()._open(path, mode, block_size, autocommit, cache_options, **kwargs)
        path = self._strip_protocol(path)
        if "x" in mode and self.exists(path):
            raise FileExistsError(path)
        f = _FaultyFile(self, path, kwargs.get("data"))
        f.commit()  # like MemoryFileSystem: the object is visible from open() on
        return f

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        value = bytes(value)
        allowed = self._allowed(self._strip_protocol(path), len(value))
        if allowed < len(value):
            raise self._fault(path)  # a PUT is all or nothing
        return super().pipe_file(path, value, mode=mode, **kwargs)


class _FaultyFile(MemoryFile):
    def write(self, b):
        mv = memoryview(b).cast("B")
        allowed = type(self.fs)._allowed(self.path, len(mv))
        if allowed < len(mv):
            super().write(mv[:allowed])
            raise type(self.fs)._fault(self.path)
        return super().write(mv)


fsspec.register_implementation(PROTOCOL, FaultyFS, clobber=True)
