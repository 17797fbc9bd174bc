"""The fast I/O paths: vectored writes/reads, scattered reads into live arrays, overlapped checksums.

Each test checks what a user relies on: bytes round-trip exactly through every
path (short system calls included), and corruption is still caught.
"""

from __future__ import annotations

import gc
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import _perf, data_reads
from ckptcore.storage import local as storage

DTYPES = [np.float32, np.float64, np.int8, np.uint16, np.bool_, ml_dtypes.bfloat16, np.dtype("<U3")]


def _array(rng, dtype, shape):
    dtype = np.dtype(dtype)
    if dtype.kind == "U":
        return np.array(["ab", "xyz", ""] * (int(np.prod(shape)) // 3 + 1))[: int(np.prod(shape))].reshape(shape)
    return np.asarray(rng.random(shape) * 100).astype(dtype)  # 0-d stays an array


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(range(len(DTYPES))), st.lists(st.integers(0, 70), max_size=3)),
                min_size=1, max_size=12), st.booleans())
def test_mixed_arrays_round_trip_into_live_arrays(tmp_path_factory, specs, verify):
    rng = np.random.default_rng(0)
    src, dst = ck.Module(), ck.Module()
    for i, (d, shape) in enumerate(specs):
        a = _array(rng, DTYPES[d], tuple(shape))
        setattr(src, f"a{i}", a)
        setattr(dst, f"a{i}", np.zeros_like(a))
    path = ck.Checkpoint(m=src).write(str(tmp_path_factory.mktemp("mixed") / "ckpt"))
    ck.Checkpoint(m=dst).read(path, options=ck.CheckpointOptions(verify_checksums=verify)).assert_consumed()
    for i in range(len(specs)):
        np.testing.assert_array_equal(getattr(dst, f"a{i}"), getattr(src, f"a{i}"))


def test_short_writev_and_preadv_calls_lose_no_bytes(prefix, monkeypatch):
    """The kernel may move fewer bytes than asked; the rest must follow."""
    real_writev, real_preadv = os.writev, os.preadv

    def short_writev(fd, bufs):
        bufs = list(bufs)
        first = memoryview(bufs[0]).cast("B")
        return real_writev(fd, [first[: max(1, len(first) // 2)]] if len(first) > 1 else bufs[:1])

    def short_preadv(fd, bufs, offset):
        bufs = list(bufs)
        first = memoryview(bufs[0]).cast("B")
        return real_preadv(fd, [first[: max(1, len(first) // 3)]], offset)

    monkeypatch.setattr(storage.os, "writev", short_writev)
    monkeypatch.setattr(storage.os, "preadv", short_preadv)
    rng = np.random.default_rng(1)
    src = ck.Module()
    src.xs = [rng.random(n) for n in (1, 7, 300, 0, 5000)]
    path = ck.Checkpoint(m=src).write(prefix)
    dst = ck.Module()
    dst.xs = [np.zeros(n) for n in (1, 7, 300, 0, 5000)]
    ck.Checkpoint(m=dst).read(path).assert_consumed()
    for a, b in zip(src.xs, dst.xs):
        np.testing.assert_array_equal(a, b)


def test_large_tensor_read_in_pieces_checks_every_piece(prefix, monkeypatch):
    monkeypatch.setattr(data_reads, "SMALL_READ", 1024)
    monkeypatch.setattr(storage._LocalReader, "piece_size", 4096)
    a = np.arange(10_000, dtype=np.float32)  # 40,000 bytes: ten pieces
    path = ck.Checkpoint(a=a).write(prefix)
    out = np.zeros_like(a)
    ck.Checkpoint(a=out).read(path).assert_consumed()
    np.testing.assert_array_equal(out, a)
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as f:  # flip one byte in the seventh piece
        f.seek(6 * 4096 + 5)
        b = f.read(1)
        f.seek(6 * 4096 + 5)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ck.CorruptCheckpointError, match="a/.ATTRIBUTES/VARIABLE_VALUE"):
        ck.Checkpoint(a=np.zeros_like(a)).read(path)


def test_truncated_data_file_is_reported_by_the_scattered_read(prefix):
    src = ck.Module()
    src.xs = [np.full(100, float(i)) for i in range(20)]
    path = ck.Checkpoint(m=src).write(prefix)
    r = ck.load_checkpoint(path)
    data = prefix + ".data-00000-of-00001"
    r.check_data_files()  # sizes were fine when checked; the file shrinks afterwards
    os.truncate(data, os.path.getsize(data) - 400)
    with pytest.raises(ck.CorruptCheckpointError, match="truncated"):
        r.verify()


def test_one_array_under_two_keys_gets_one_of_the_values(prefix):
    path = ck.Checkpoint(a=np.full(3, 1.0), b=np.full(3, 2.0)).write(prefix)
    shared = np.zeros(3)
    ck.Checkpoint(a=shared, b=shared).read(path)
    assert shared.tolist() in ([1.0] * 3, [2.0] * 3)


def test_paused_gc_nests_and_restores_the_previous_state():
    assert gc.isenabled()
    with _perf.paused_gc():
        with _perf.paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with _perf.paused_gc():
            pass
        assert not gc.isenabled()  # a caller's own choice is left alone
    finally:
        gc.enable()


def _young_objects_collected_during(fn) -> tuple[int, object]:
    """How many objects the collections that run during ``fn()`` go through (their cost), and its result."""
    seen = [0]

    def watch(phase, info):
        if phase == "start":
            seen[0] += sum(len(gc.get_objects(g)) for g in range(info["generation"] + 1))
    gc.collect()   # a young generation that starts empty: only what the call itself makes is counted
    gc.callbacks.append(watch)
    try:
        out = fn()
    finally:
        gc.callbacks.remove(watch)
    return seen[0], out


def test_a_local_save_leaves_the_collector_nothing_of_its_own(prefix):
    # A sync save to local disk runs with the collector paused and frees its plan before it goes on
    # again. Otherwise collections mid-write, or the first one after, go through the plan's young
    # objects (100,000 arrays: 60 ms of a 350 ms save).
    n = 5000
    m = ck.Module()
    m.xs = [np.full(3, float(i)) for i in range(n)]
    ckpt = ck.Checkpoint(m=m)
    ckpt.save(prefix)   # (the first save makes what every save keeps: the save counter, the state file's objects)
    young, path = _young_objects_collected_during(lambda: ckpt.save(prefix))
    assert young < n // 10
    assert gc.isenabled()
    dst = ck.Module()
    dst.xs = [np.zeros(3) for _ in range(n)]
    ck.Checkpoint(m=dst).restore(path).assert_consumed()
    assert dst.xs[n - 1].tolist() == [n - 1.0] * 3


def test_a_local_save_pauses_the_collector_from_the_walk_on(prefix):
    # What the plan holds from the walk on (an adapter's state here; a torch model's detached parameter
    # tensors) is young too: no collection between the walk and the write goes through it.
    class Holder:
        pass

    class Stateful(ck.Adapter):
        name = "test.stateful_holder"

        def get_state(self, obj):
            return {"rows": [[i] for i in range(5000)]}   # 5,000 fresh lists, held by the plan

        def set_state(self, obj, state):
            obj.rows = state["rows"]

    plugin = ck.register_adapter(Holder, Stateful())
    try:
        ckpt = ck.Checkpoint(h=Holder())
        ckpt.save(prefix)
        young, path = _young_objects_collected_during(lambda: ckpt.save(prefix))
        assert young < 500
        back = Holder()
        ck.Checkpoint(h=back).restore(path).expect_partial()
        assert back.rows[4999] == [4999]
    finally:
        ck.registry.unregister_plugin(plugin)


def test_a_failed_local_save_turns_the_collector_back_on(prefix, monkeypatch):
    from ckptcore.save import write

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(write, "_write_columns", boom)
    with pytest.raises(OSError, match="disk full"):
        ck.Checkpoint(a=np.ones(3)).save(prefix)
    assert gc.isenabled()


def test_checksums_run_inline_when_threads_are_refused(prefix, monkeypatch):
    """At interpreter exit no new work may go to threads: saves and restores still complete."""
    class Refusing:
        def submit(self, *a, **k):
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(_perf, "crc_executor", lambda: Refusing())
    a = np.random.default_rng(2).random(300_000)  # > 1 MiB: checksummed on the helper thread normally
    path = ck.Checkpoint(a=a).write(prefix)
    out = np.zeros_like(a)
    ck.Checkpoint(a=out).read(path).assert_consumed()
    np.testing.assert_array_equal(out, a)
    assert ck.load_checkpoint(path).verify() == a.nbytes


# -- write-behind: data goes to the disk while the save is still writing -----------------------------

def test_large_saves_flush_in_the_background_and_stay_intact(prefix, monkeypatch):
    calls = []
    real = storage.os.fdatasync

    def counting(fd):
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(storage.os, "fdatasync", counting)
    monkeypatch.setattr(storage._LocalWriter, "flush_behind_bytes", 64 << 10)
    src = ck.Module()
    src.xs = [np.random.default_rng(i).random(20_000) for i in range(20)]  # 3.2 MB in 160 kB arrays
    path = ck.Checkpoint(m=src).write(prefix)
    assert calls, "no background flush was started"
    dst = ck.Module()
    dst.xs = [np.zeros(20_000) for _ in range(20)]
    ck.Checkpoint(m=dst).read(path).assert_consumed()
    for a, b in zip(src.xs, dst.xs):
        np.testing.assert_array_equal(a, b)


def test_abort_waits_for_a_running_flush_before_closing(tmp_path, monkeypatch):
    """The descriptor is never closed (and its number reused) under a flush."""
    import threading
    import time

    started, seen_open = threading.Event(), []

    def slow(fd):
        started.set()
        time.sleep(0.2)
        os.fstat(fd)  # raises if the descriptor was closed meanwhile
        seen_open.append(fd)

    monkeypatch.setattr(storage.os, "fdatasync", slow)
    monkeypatch.setattr(storage._LocalWriter, "flush_behind_bytes", 1)
    w = storage._LocalWriter(str(tmp_path / "f"))
    w.writev([np.zeros(8)], [64])
    assert started.wait(5)
    w.abort()
    assert seen_open and not (tmp_path / "f").exists()


def test_an_error_seen_by_the_background_flush_fails_the_commit(tmp_path, monkeypatch):
    """Linux reports a write-back error to one fsync only: the one the flush saw must not be lost."""
    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage.os, "fdatasync", failing)
    monkeypatch.setattr(storage._LocalWriter, "flush_behind_bytes", 1)
    w = storage._LocalWriter(str(tmp_path / "f"))
    w.writev([np.zeros(8)], [64])
    with pytest.raises(OSError, match="Input/output"):
        w.commit()
    w.abort()
    assert not (tmp_path / "f").exists()


def test_a_failed_flush_is_not_forgotten_by_later_writes(tmp_path, monkeypatch):
    calls = []

    def failing_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage.os, "fdatasync", failing_once)
    monkeypatch.setattr(storage._LocalWriter, "flush_behind_bytes", 1)
    w = storage._LocalWriter(str(tmp_path / "f"))
    w.writev([np.zeros(8)], [64])
    w._flush.exception(timeout=5)  # the first flush has failed
    for _ in range(3):
        w.writev([np.zeros(8)], [64])
    with pytest.raises(OSError, match="Input/output"):
        w.commit()
    w.abort()
    assert len(calls) == 1
