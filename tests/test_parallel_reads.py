"""Runs of small tensors read by two threads at once (``data_reads._read_runs_on_two_threads``).

On local disk the reading thread and the checksum thread both read runs of neighbouring small
tensors, each checking what it read. What a user sees must not change: the values, the first
corrupt or missing tensor named in file order, storage errors, and a restore that returns only
once no thread writes into its arrays any more, even when the helper thread is busy elsewhere.
"""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest
from ckpt_samples import flip_byte
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import _perf, data_reads
from ckptcore.storage import local

N, SIZE = 1200, 1024  # 1,200 float32 arrays of 4 KiB: 4.7 MiB, five runs of 1 MiB


def _model(fill: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    m = ck.Module()
    m.xs = [rng.standard_normal(SIZE).astype(np.float32) if fill else np.zeros(SIZE, np.float32) for _ in range(N)]
    return m


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    src = _model()
    path = ck.Checkpoint(model=src).write(str(tmp_path_factory.mktemp("par") / "c"))
    return src, path


def _calls(monkeypatch) -> list:
    seen: list = []
    real = data_reads._read_runs_on_two_threads

    def counted(*a, **k):
        seen.append(len(a[4]))  # the runs
        return real(*a, **k)

    monkeypatch.setattr(data_reads, "_read_runs_on_two_threads", counted)
    return seen


@pytest.mark.parametrize("verify", [True, False])
def test_small_tensors_are_read_by_two_threads_and_restored_exactly(saved, monkeypatch, verify):
    src, path = saved
    seen = _calls(monkeypatch)
    dst = _model(fill=False)
    ck.Checkpoint(model=dst).read(path, options=ck.CheckpointOptions(verify_checksums=verify)).assert_consumed()
    assert seen and seen[0] >= 4
    assert all(np.array_equal(a, b) for a, b in zip(src.xs, dst.xs))


def test_fresh_arrays_are_delivered_in_order_through_callbacks(saved, monkeypatch):
    src, path = saved
    seen = _calls(monkeypatch)
    r = ck.load_checkpoint(path)
    rows = [r._row(f"model/xs/{k}/.ATTRIBUTES/VARIABLE_VALUE") for k in range(N)]
    out: list = []
    r.read_rows(rows, [None] * N, [out.append] * N)   # no destinations: the reader makes the arrays
    assert seen and len(out) == N
    assert all(np.array_equal(a, b) for a, b in zip(src.xs, out))


def test_a_progress_bar_keeps_reads_on_one_thread(saved, monkeypatch):
    # its byte counts are reported from the calling thread only
    src, path = saved
    seen = _calls(monkeypatch)
    dst = _model(fill=False)
    ck.Checkpoint(model=dst).read(path, options=ck.CheckpointOptions(progress=True)).assert_consumed()
    assert seen == [] and all(np.array_equal(a, b) for a, b in zip(src.xs, dst.xs))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.lists(st.integers(0, N - 1), min_size=1, max_size=3, unique=True))
def test_the_first_corrupt_tensor_in_file_order_is_named(tmp_path_factory, bad):
    src = _model()
    path = ck.Checkpoint(model=src).write(str(tmp_path_factory.mktemp("corrupt") / "c"))
    r = ck.load_checkpoint(path)
    t = r.index.table
    rows = {k: r._row(f"model/xs/{k}/.ATTRIBUTES/VARIABLE_VALUE") for k in range(N)}
    data = r.data_file(0)
    for k in bad:
        flip_byte(data, t.offset[rows[k]] + 7)
    first = min(bad, key=lambda k: t.offset[rows[k]])
    with pytest.raises(ck.CorruptCheckpointError, match=rf"checksum mismatch for tensor 'model/xs/{first}/"):
        ck.Checkpoint(model=_model(fill=False)).read(path)


def _failing_preadv(monkeypatch, at: int, result):
    """``os.preadv`` as it is, except for a call whose range holds byte ``at``: it returns ``result()``."""
    real = os.preadv

    def preadv(fd, bufs, offset):
        size = sum(memoryview(b).nbytes for b in bufs)
        if offset <= at < offset + size:
            return result()
        return real(fd, bufs, offset)

    monkeypatch.setattr(local.os, "preadv", preadv)


def test_a_short_read_names_the_first_incomplete_tensor(saved, monkeypatch):
    _src, path = saved
    r = ck.load_checkpoint(path)
    row = r._row("model/xs/700/.ATTRIBUTES/VARIABLE_VALUE")
    at = int(r.index.table.offset[row])
    _failing_preadv(monkeypatch, at, lambda: 0)  # the file ends there (it shrank after it was opened)
    with pytest.raises(ck.CorruptCheckpointError, match=r"is truncated: tensor 'model/xs/\d+/"):
        ck.Checkpoint(model=_model(fill=False)).read(path)


def test_a_storage_error_on_either_thread_reaches_the_caller(saved, monkeypatch):
    _src, path = saved
    r = ck.load_checkpoint(path)
    for k in (10, 1190):  # a run near the start and the last one: one thread or the other meets it
        at = int(r.index.table.offset[r._row(f"model/xs/{k}/.ATTRIBUTES/VARIABLE_VALUE")])

        def eio():
            raise OSError(errno.EIO, "Input/output error")

        with monkeypatch.context() as m:
            _failing_preadv(m, at, eio)
            with pytest.raises(ck.StorageError, match="Input/output error"):
                ck.Checkpoint(model=_model(fill=False)).read(path)


def test_a_busy_helper_thread_does_not_hold_up_the_restore(saved):
    # The checksum thread is held by other work (an async save's checksums, say): this thread reads
    # every run itself, and the helper's share is cancelled rather than waited for.
    src, path = saved
    release = threading.Event()
    blocker = _perf.submit(release.wait, 120)
    done: list = []

    def restore():
        dst = _model(fill=False)
        ck.Checkpoint(model=dst).read(path).assert_consumed()
        done.append(all(np.array_equal(a, b) for a, b in zip(src.xs, dst.xs)))

    t = threading.Thread(target=restore)
    t.start()
    t.join(timeout=60)
    finished_while_blocked = not t.is_alive() and not blocker.done()
    release.set()
    t.join(timeout=60)
    blocker.result(timeout=60)
    assert finished_while_blocked and done == [True]
