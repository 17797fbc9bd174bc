"""A filesystem that fails partway through a save leaves no visible checkpoint and the older ones intact."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # --import-mode=importlib: make the helper importable
from faulty_fs import FaultyFS  # noqa: E402

DIR = "ckfault://run"
N = 50_000  # float64 elements per array: 400 KB, so a fault can land anywhere inside the data file


@pytest.fixture(autouse=True)
def clean_fs():
    FaultyFS.reset()
    yield
    FaultyFS.reset()


def make(value: float = 0.0):
    model = ck.Module()
    model.a = ck.Variable(np.full(N, value))
    model.b = ck.Variable(np.full(N // 7, value, np.float32))
    return model, ck.Checkpoint(model=model)


def set_values(model, value: float) -> None:
    model.a.assign(np.full(N, value))
    model.b.assign(np.full(N // 7, value, np.float32))


def assert_restores(path: str, value: float) -> None:
    ck.load_checkpoint(path).verify()
    model, ckpt = make(-1.0)
    ckpt.restore(path).assert_consumed()
    assert np.all(model.a.numpy() == value) and np.all(model.b.numpy() == value)


def visible_indexes() -> list[str]:
    return sorted(p for p in FaultyFS.store if p.endswith(".index"))


def data_size() -> int:
    return N * 8 + (N // 7) * 4


def save_two_good(manager, model):
    for v in (1.0, 2.0):
        set_values(model, v)
        manager.save()
    return manager.latest_checkpoint


FAULTS = [
    pytest.param(r"\.data-", 0, id="data-first-byte"),
    pytest.param(r"\.data-", 123_457, id="data-midway"),
    pytest.param(r"\.data-", N * 8 - 3, id="data-near-end"),
    pytest.param(r"\.index$", 0, id="index"),
]


@pytest.mark.parametrize("enable_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("fail_paths,after", FAULTS)
def test_failed_save_is_invisible_and_previous_checkpoints_survive(fail_paths, after, enable_async):
    model, ckpt = make()
    manager = ck.CheckpointManager(ckpt, DIR, max_to_keep=2)
    before = save_two_good(manager, model)
    indexes_before = visible_indexes()
    state_before = FaultyFS.store["/run/checkpoint"].getvalue()
    FaultyFS.fail_after_bytes, FaultyFS.fail_paths, FaultyFS.written = after, fail_paths, 0
    set_values(model, 3.0)
    opts = ck.CheckpointOptions(enable_async=enable_async)
    if enable_async:
        manager.save(options=opts)  # returns: the failure happens in the background
        with pytest.raises(OSError, match="injected write fault"):
            manager.sync()
    else:
        with pytest.raises(OSError, match="injected write fault"):
            manager.save(options=opts)
    assert FaultyFS.faults == 1
    # nothing new is visible, nothing old was touched, the failed data file was removed
    assert visible_indexes() == indexes_before
    assert not any(p.startswith("/run/ckpt-3") for p in FaultyFS.store)
    assert FaultyFS.store["/run/checkpoint"].getvalue() == state_before
    assert manager.latest_checkpoint == before == ck.latest_checkpoint(DIR) == f"{DIR}/ckpt-2"
    assert manager.checkpoints == [f"{DIR}/ckpt-1", f"{DIR}/ckpt-2"]
    assert_restores(f"{DIR}/ckpt-1", 1.0)
    assert_restores(before, 2.0)
    assert ck.CheckpointManager(make()[1], DIR, max_to_keep=2).checkpoints == manager.checkpoints
    # the next save succeeds; a failed synchronous save gives its number back, an async one (like TF) cannot
    FaultyFS.fail_after_bytes = None
    number = 4 if enable_async else 3
    path = manager.save()
    assert path == f"{DIR}/ckpt-{number}" and int(ckpt.save_counter) == number
    assert_restores(path, 3.0)
    assert manager.checkpoints == [f"{DIR}/ckpt-2", path]


@pytest.mark.parametrize("enable_async", [False, True], ids=["sync", "async"])
def test_state_file_is_written_after_the_index(enable_async):
    """A failure writing the state file leaves a committed checkpoint that the state file does not name yet."""
    model, ckpt = make()
    manager = ck.CheckpointManager(ckpt, DIR, max_to_keep=3)
    save_two_good(manager, model)
    FaultyFS.fail_after_bytes, FaultyFS.fail_paths, FaultyFS.written = 0, r"/checkpoint$", 0
    set_values(model, 3.0)
    with pytest.raises(OSError, match="injected write fault"):
        manager.save(options=ck.CheckpointOptions(enable_async=enable_async))
        manager.sync()
    assert "/run/ckpt-3.index" in FaultyFS.store  # the index was committed before the state file was tried
    assert_restores(f"{DIR}/ckpt-3", 3.0)
    assert ck.latest_checkpoint(DIR) == f"{DIR}/ckpt-2"


def test_checkpoint_save_and_write_fail_cleanly():
    model, ckpt = make()
    set_values(model, 1.0)
    first = ckpt.save(f"{DIR}/plain")
    FaultyFS.fail_after_bytes, FaultyFS.fail_paths, FaultyFS.written = 4096, r"\.data-", 0
    set_values(model, 2.0)
    with pytest.raises(OSError):
        ckpt.save(f"{DIR}/plain")
    with pytest.raises(OSError):
        ckpt.write(f"{DIR}/written")
    assert visible_indexes() == ["/run/plain-1.index"]
    assert ck.latest_checkpoint(DIR) == first and int(ckpt.save_counter) == 1
    assert_restores(first, 1.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(after=st.integers(min_value=0, max_value=N * 8 + (N // 7) * 4 + 300),
       target=st.sampled_from([r"\.data-", r"\.index$", r"\.data-|\.index$"]))
def test_any_fault_point_leaves_latest_checkpoint_restorable(after, target):
    FaultyFS.reset()
    model, ckpt = make()
    manager = ck.CheckpointManager(ckpt, DIR, max_to_keep=1)
    set_values(model, 1.0)
    manager.save()
    FaultyFS.fail_after_bytes, FaultyFS.fail_paths, FaultyFS.written = after, target, 0
    set_values(model, 2.0)
    try:
        manager.save()
    except OSError:
        saved = False
    else:
        saved = True  # the budget covered the whole write
    latest = ck.latest_checkpoint(DIR)
    assert latest == (f"{DIR}/ckpt-2" if saved else f"{DIR}/ckpt-1")
    assert_restores(latest, 2.0 if saved else 1.0)
    if not saved:
        assert visible_indexes() == ["/run/ckpt-1.index"]
