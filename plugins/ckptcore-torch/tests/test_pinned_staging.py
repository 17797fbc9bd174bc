"""The pinned staging pool (``CheckpointOptions(pinned_memory_bytes=...)``), on CPU.

The pool's logic (bounding, reuse, release) runs with a fake allocator; the copies into
and out of pool buffers run with plain CPU tensors standing in for pinned memory. The
same paths on a GPU are in test_cuda.py (skipped without a device).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import staging
from ckptcore_torch import convert
from ckptcore_torch import staging as pinned
from ckptcore_torch.staging import MIN_STAGED_BYTES, PinnedPool

KiB = 1 << 10


class FakeAllocator:
    def __init__(self, fail_after: int | None = None):
        self.live: dict[int, bytearray] = {}
        self.calls = 0
        self.fail_after = fail_after

    def allocate(self, n: int) -> bytearray:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("out of pinned memory")
        b = bytearray(n)
        self.live[id(b)] = b
        return b

    def free(self, b: bytearray) -> None:
        del self.live[id(b)]

    @property
    def live_bytes(self) -> int:
        return sum(map(len, self.live.values()))


def test_buffers_are_reused_best_fit_and_rounded_to_powers_of_two():
    fake = FakeAllocator()
    pool = PinnedPool(4 << 20, fake.allocate, fake.free)
    a, b = pool.take(300 * KiB), pool.take(1 << 20)
    assert (pool.size_of(a), pool.size_of(b)) == (512 * KiB, 1 << 20)
    pool.give(b)
    pool.give(a)
    assert pool.take(200 * KiB) is a  # the smallest idle buffer that fits, not the first given back
    assert pool.take(600 * KiB) is b
    assert fake.calls == 2


def test_small_tensors_are_not_staged():
    pool = PinnedPool(1 << 20, bytearray)
    assert pool.take(MIN_STAGED_BYTES - 1) is None and pool.allocated_bytes == 0


def test_a_full_pool_lends_nothing_more_and_frees_idle_buffers_to_make_room():
    fake = FakeAllocator()
    pool = PinnedPool(1 << 20, fake.allocate, fake.free)
    small = pool.take(256 * KiB)
    pool.give(small)
    big = pool.take(1 << 20)  # the idle 256 KiB buffer is freed: the pool never holds more than 1 MiB
    assert big is not None and fake.live_bytes == 1 << 20 and pool.peak_bytes == 1 << 20
    assert pool.take(MIN_STAGED_BYTES) is None


def test_an_allocation_failure_means_the_ordinary_path():
    fake = FakeAllocator(fail_after=1)
    pool = PinnedPool(8 << 20, fake.allocate, fake.free)
    assert pool.take(1 << 20) is not None
    assert pool.take(1 << 20) is None and pool.allocated_bytes == 1 << 20


def test_release_frees_every_buffer_lent_or_idle_and_lends_no_more():
    fake = FakeAllocator()
    pool = PinnedPool(4 << 20, fake.allocate, fake.free)
    with pytest.raises(ValueError):
        pool.give(bytearray(3))
    lent, idle = pool.take(1 << 20), pool.take(1 << 20)
    pool.give(idle)
    pool.release()
    assert fake.live_bytes == 0 and pool.allocated_bytes == 0 and pool.in_use_bytes == 0
    assert pool.take(1 << 20) is None
    pool.give(lent)  # a late give after the operation ended: nothing to do
    pool.release()
    assert fake.live_bytes == 0 and pool.in_use_bytes == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 3 << 20)), max_size=40), st.integers(0, 6 << 20))
def test_the_pool_never_holds_more_than_its_capacity_and_returns_everything(ops, capacity):
    fake = FakeAllocator()
    pool = PinnedPool(capacity, fake.allocate, fake.free)
    held: list = []
    for give, n in ops:
        if give and held:
            pool.give(held.pop(n % len(held)))
        else:
            buf = pool.take(n)
            if buf is not None:
                assert len(buf) >= n and all(buf is not h for h in held)
                held.append(buf)
        assert fake.live_bytes == pool.allocated_bytes <= capacity
        assert pool.in_use_bytes == sum(map(len, held))
    pool.release()
    assert fake.live_bytes == 0 and pool.allocated_bytes == 0


def test_threads_sharing_a_pool_stay_within_it():
    fake = FakeAllocator()
    pool = PinnedPool(2 << 20, fake.allocate, fake.free)
    over = []

    def work():
        for _ in range(200):
            b = pool.take(512 * KiB)
            if pool.allocated_bytes > pool.capacity:
                over.append(pool.allocated_bytes)
            if b is not None:
                pool.give(b)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not over and pool.in_use_bytes == 0


def test_the_pool_lives_as_long_as_its_operation():
    stage = staging.Staging(pinned_memory_bytes=1 << 20)
    pool = pinned.pool_for(stage, allocate=bytearray)
    assert pinned.pool_for(stage) is pool
    stage.end()
    assert pool.released and pinned.pool_for(stage) is None
    assert pinned.pool_for(staging.Staging(0)) is None and pinned.pool_for(None) is None


@pytest.fixture
def cpu_pool(monkeypatch):
    """Pool buffers that are plain CPU uint8 tensors (pinning needs a CUDA driver)."""
    made = []

    def allocate(n):
        made.append(torch.empty(n, dtype=torch.uint8))
        return made[-1]

    real = pinned.pool_for
    monkeypatch.setattr(pinned, "pool_for", lambda stage: real(stage, allocate))
    return made


@pytest.mark.parametrize("make", [
    lambda: torch.arange(40_000, dtype=torch.float32).reshape(200, 200),
    lambda: torch.arange(40_000, dtype=torch.float32).reshape(200, 200).t(),  # strided
    lambda: torch.linspace(-3, 3, 70_000).to(torch.bfloat16),
    lambda: (torch.arange(100_000) % 3 == 0).reshape(500, 200),
], ids=["float32", "transposed", "bfloat16", "bool"])
def test_a_tensor_staged_to_host_lands_in_a_pool_buffer_bit_for_bit(cpu_pool, make):
    t = make()
    stage = staging.Staging(pinned_memory_bytes=4 << 20)
    with staging.active(stage):
        host = convert._to_host(t)
    assert torch.equal(host, t) and host.is_contiguous()
    assert host.untyped_storage().data_ptr() == cpu_pool[0].data_ptr()  # the pool's memory, not a new copy
    stage.end()


def test_a_restore_buffer_is_copied_into_the_tensor_and_given_back(cpu_pool):
    dst = torch.zeros(400, 100, dtype=torch.bfloat16)
    stage = staging.Staging(pinned_memory_bytes=1 << 20)
    with staging.active(stage):
        buf = convert._lend(dst)
        assert buf.shape == (400, 100) and buf.dtype.name == "bfloat16" and buf.flags.writeable
        buf[...] = np.arange(40_000).reshape(400, 100).astype(buf.dtype)  # what the reader does
        pool = stage.resources["ckptcore_torch.pinned"]
        assert pool.in_use_bytes == 131072
        assert convert.finish_staged(dst, buf)
        assert pool.in_use_bytes == 0 and convert._lend(dst) is not None  # the buffer serves the next tensor
        assert not convert.finish_staged(dst, np.zeros((400, 100)))  # not lent: the ordinary path
    stage.end()
    assert torch.equal(dst, torch.arange(40_000).reshape(400, 100).to(torch.bfloat16))
    assert not convert._LENT  # a buffer never copied back is forgotten when the restore ends


def test_the_option_is_checked():
    assert ck.CheckpointOptions(pinned_memory_bytes=1 << 30).pinned_memory_bytes == 1 << 30
    for bad in (-1, 1.5, "1G", True):
        with pytest.raises(ck.InvalidArgumentError, match="pinned_memory_bytes"):
            ck.CheckpointOptions(pinned_memory_bytes=bad)


def test_cpu_models_save_and_restore_the_same_with_pinned_memory(tmp_path):
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    opts = ck.CheckpointOptions(pinned_memory_bytes=1 << 20)
    path = ck.Checkpoint(model=src).write(str(tmp_path / "c"), options=opts)
    dst = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    ck.Checkpoint(model=dst).read(path, options=opts).assert_consumed()
    assert all(torch.equal(a, b) for a, b in zip(src.parameters(), dst.parameters()))
