"""A bounded pool of pinned host buffers for device-to-host and host-to-device copies.

A save or restore with ``CheckpointOptions(pinned_memory_bytes=N)`` gets one
:class:`PinnedPool` of at most ``N`` bytes (kept in the operation's
:class:`ckptcore.staging.Staging`, released when it ends):

* **save**: a CUDA tensor is copied into a pinned buffer (the device-to-host copy at full
  bus speed) and the saver writes that buffer; it is a private copy, so an async save does
  not snapshot it a second time. An async save then blocks only for these copies.
* **restore**: the reader reads a CUDA tensor's bytes straight into a pinned buffer, which
  is copied to the device and given back to the pool for the next tensor.

Tensors that do not fit in what is left of the pool (or are smaller than
:data:`MIN_STAGED_BYTES`) take the ordinary path through pageable memory, so the pool
never blocks and never exceeds its size. Buffers are sized in powers of two (at least
:data:`MIN_STAGED_BYTES`) and reused best-fit. The allocator is a parameter: the default
pins ordinary memory with ``cudaHostRegister`` and unpins it when the operation ends (torch's
own pinned allocator would keep it cached, pinned, for the life of the process), and tests
pass a fake one, so the pool's logic runs without a GPU.

Example:
    >>> pool = PinnedPool(1 << 20, allocate=bytearray)
    >>> b = pool.take(100_000); pool.size_of(b), pool.allocated_bytes
    (131072, 131072)
    >>> pool.give(b); pool.take(70_000) is b     # reused
    True
    >>> pool.take(1 << 21) is None                # more than the pool holds: the ordinary path
    True
    >>> pool.release(); pool.allocated_bytes
    0
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["MIN_STAGED_BYTES", "PinnedPool", "pool_for", "pinned_allocate", "pinned_free"]

#: tensors smaller than this are not staged (pinning pays off for large copies), and no buffer is smaller
MIN_STAGED_BYTES = 1 << 16

_RESOURCE = "ckptcore_torch.pinned"


def pinned_allocate(nbytes: int) -> Any:
    """A page-locked uint8 CPU tensor of ``nbytes``: ordinary memory pinned with ``cudaHostRegister``.

    Not torch's pinned allocator (``pin_memory=True``), which keeps freed pinned blocks cached
    for the life of the process: :func:`pinned_free` unpins this memory for good.
    """
    import torch

    t = torch.empty(nbytes, dtype=torch.uint8)
    err = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), nbytes, 0)
    if int(getattr(err, "value", err)):
        raise RuntimeError(f"cudaHostRegister of {nbytes} bytes failed (error {err})")
    return t


def pinned_free(buf: Any) -> None:
    """Unpin a buffer from :func:`pinned_allocate` (its memory stays valid until no array refers to it)."""
    import torch

    torch.cuda.cudart().cudaHostUnregister(buf.data_ptr())


def _round(nbytes: int) -> int:
    return max(MIN_STAGED_BYTES, 1 << (max(1, nbytes) - 1).bit_length())


class PinnedPool:
    """At most ``capacity`` bytes of buffers from ``allocate(nbytes)``, lent with :meth:`take`.

    ``free(buffer)``, if given, is called for each buffer when the pool frees it: at
    :meth:`release`, for every buffer, lent or not (the operation that borrowed them has
    ended; :func:`pinned_free` only unpins, so arrays still viewing a buffer stay valid), and
    for idle buffers evicted to make room. Thread-safe.

    Example:
        >>> freed = []
        >>> pool = PinnedPool(1 << 18, allocate=bytearray, free=freed.append)
        >>> a, b = pool.take(1 << 17), pool.take(1 << 17)
        >>> pool.take(1), pool.in_use_bytes          # full: None, the caller copies the ordinary way
        (None, 262144)
        >>> pool.give(a); pool.release(); len(freed), pool.allocated_bytes, pool.peak_bytes
        (2, 0, 262144)
    """

    def __init__(self, capacity: int, allocate: Callable[[int], Any] = pinned_allocate,
                 free: Callable[[Any], None] | None = None):
        self.capacity = int(capacity)
        self._allocate = allocate
        self._free = free
        self._lock = threading.Lock()
        self._sizes: dict[int, tuple[Any, int]] = {}  # id(buffer) -> (buffer, size): every buffer allocated
        self._idle: list[Any] = []                     # buffers given back, not lent
        self.allocated_bytes = 0
        self.in_use_bytes = 0
        self.peak_bytes = 0
        self.released = False

    def size_of(self, buf: Any) -> int:
        return self._sizes[id(buf)][1]

    def take(self, nbytes: int) -> Any | None:
        """A buffer of at least ``nbytes``: an idle one (the smallest that fits), else a new one
        while the pool has room; None when neither (or ``nbytes`` is below :data:`MIN_STAGED_BYTES`)."""
        if nbytes < MIN_STAGED_BYTES:
            return None
        with self._lock:
            if self.released:
                return None
            fits = [b for b in self._idle if self._sizes[id(b)][1] >= nbytes]
            if fits:
                buf = min(fits, key=lambda b: self._sizes[id(b)][1])
                self._idle.remove(buf)
                self.in_use_bytes += self._sizes[id(buf)][1]
                return buf
            size = _round(nbytes)
            while self.allocated_bytes + size > self.capacity and self._idle:
                # idle buffers too small for this request: free them to make room
                self._drop(self._idle.pop())
            if self.allocated_bytes + size > self.capacity:
                return None
            self.allocated_bytes += size  # reserved before allocating outside the lock
        try:
            buf = self._allocate(size)
        except Exception:  # out of pinned memory, no driver...: the ordinary path
            with self._lock:
                self.allocated_bytes -= size
            return None
        with self._lock:
            self._sizes[id(buf)] = (buf, size)
            self.in_use_bytes += size
            self.peak_bytes = max(self.peak_bytes, self.allocated_bytes)
            if self.released:  # released while allocating: not lent after all
                self._drop(buf)
                return None
        return buf

    def give(self, buf: Any) -> None:
        """Return a buffer from :meth:`take` for the next :meth:`take` (after :meth:`release`: nothing to do)."""
        with self._lock:
            if self.released:
                return
            entry = self._sizes.get(id(buf))
            if entry is None or entry[0] is not buf:
                raise ValueError("this buffer was not lent by this pool")
            self.in_use_bytes -= entry[1]
            self._idle.append(buf)

    def release(self) -> None:
        """Free every buffer, lent or idle (their operation has ended), and lend nothing more. Idempotent."""
        with self._lock:
            self.released = True
            self._idle.clear()
            for buf, _ in list(self._sizes.values()):
                self._drop(buf)
            self.in_use_bytes = 0

    def _drop(self, buf: Any) -> None:
        _, size = self._sizes.pop(id(buf))
        self.allocated_bytes -= size
        if self._free is not None:
            self._free(buf)


def pool_for(stage: Any, allocate: Callable[[int], Any] = pinned_allocate,
             free: Callable[[Any], None] | None = None) -> PinnedPool | None:
    """The pinned pool of the running save/restore (``ckptcore.staging.current()``), made on first
    use and released when the operation ends; None when it allows no pinned memory.

    Example:
        >>> from ckptcore.staging import Staging
        >>> s = Staging(pinned_memory_bytes=1 << 20)
        >>> p = pool_for(s, allocate=bytearray); p is pool_for(s), p.capacity
        (True, 1048576)
        >>> s.end(); p.released, pool_for(Staging(0)) is None
        (True, True)
    """
    if stage is None or stage.pinned_memory_bytes <= 0 or stage.ended:
        return None
    pool = stage.resources.get(_RESOURCE)
    if pool is None:
        if allocate is pinned_allocate and free is None:
            free = pinned_free
        pool = stage.resources[_RESOURCE] = PinnedPool(stage.pinned_memory_bytes, allocate, free)
        stage.on_end(pool.release)
    return pool
