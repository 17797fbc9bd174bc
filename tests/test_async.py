"""Async saves: snapshot semantics, ordering, sync() surfacing failures, and waiting at interpreter exit."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import ckptcore as ck
from ckptcore.adapters import Adapter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # --import-mode=importlib: make the helper importable
from faulty_fs import FaultyFS  # noqa: E402

DIR = "ckfault://async"
ASYNC = ck.CheckpointOptions(enable_async=True)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def clean_fs():
    FaultyFS.reset()
    yield
    FaultyFS.reset()


@pytest.fixture
def gate():
    """Holds every data-file write of ckfault:// until set (always released at teardown)."""
    ev = threading.Event()
    FaultyFS.reset(gate=ev, fail_paths=r"\.data-")
    yield ev
    ev.set()


class Meta:
    """A trackable with JSON state, to show that state is snapshotted too."""

    def __init__(self):
        self.info = {"epoch": 0, "tags": ["a"]}


class MetaAdapter(Adapter):
    name = "tests.meta"

    def get_state(self, obj):
        return obj.info

    def set_state(self, obj, state):
        obj.info = state


@pytest.fixture
def meta_adapter():
    name = ck.register_adapter(Meta, MetaAdapter())
    yield
    ck.registry.unregister_plugin(name)


def make(value=0.0):
    model = ck.Module()
    model.w = ck.Variable(np.full((256, 256), value, np.float32))
    model.raw = np.full(1000, value)  # a plain numpy array, mutated in place below
    return model, ck.Checkpoint(model=model)


def restored(path):
    model, ckpt = make(-1.0)
    ckpt.restore(path).assert_consumed()
    return model


def test_async_save_returns_before_the_write_and_snapshots_values(gate):
    model, ckpt = make(1.0)
    manager = ck.CheckpointManager(ckpt, DIR, max_to_keep=3)
    path = manager.save(options=ASYNC)  # returns although the data write is held by the gate
    assert path == f"{DIR}/ckpt-1"
    # not visible yet: no index, no state file entry, the manager still has nothing
    assert "/async/ckpt-1.index" not in FaultyFS.store
    assert ck.latest_checkpoint(DIR) is None and manager.latest_checkpoint is None
    # mutate everything after save() returned
    model.w.assign(np.full((256, 256), 2.0, np.float32))
    model.raw[:] = 2.0
    gate.set()
    manager.sync()
    assert manager.latest_checkpoint == ck.latest_checkpoint(DIR) == path
    got = restored(path)
    assert np.all(got.w.numpy() == 1.0) and np.all(got.raw == 1.0)
    ck.load_checkpoint(path).verify()


def test_async_snapshot_covers_json_state(gate, meta_adapter):
    meta = Meta()
    ckpt = ck.Checkpoint(meta=meta, w=ck.Variable(np.zeros(4)))
    path = ckpt.save(f"{DIR}/m", options=ASYNC)
    meta.info["epoch"] = 99
    meta.info["tags"].append("mutated")
    gate.set()
    ckpt.sync()
    fresh = Meta()
    ck.Checkpoint(meta=fresh, w=ck.Variable(np.ones(4))).restore(path).assert_consumed()
    assert fresh.info == {"epoch": 0, "tags": ["a"]}


def test_next_save_waits_for_the_previous_one(gate):
    model, ckpt = make(1.0)
    manager = ck.CheckpointManager(ckpt, DIR, max_to_keep=None)
    manager.save(options=ASYNC)
    done = threading.Event()

    def second():
        model.w.assign(np.full((256, 256), 2.0, np.float32))
        manager.save(options=ASYNC)
        done.set()

    t = threading.Thread(target=second)
    t.start()
    # the first save is held by the gate, so the second cannot even start
    assert not done.wait(0.3)
    assert "/async/ckpt-1.index" not in FaultyFS.store
    gate.set()
    t.join(30)
    assert done.is_set()
    manager.sync()
    assert manager.checkpoints == [f"{DIR}/ckpt-1", f"{DIR}/ckpt-2"]
    assert np.all(restored(f"{DIR}/ckpt-1").w.numpy() == 1.0)
    assert np.all(restored(f"{DIR}/ckpt-2").w.numpy() == 2.0)


def test_restore_waits_for_a_pending_save(gate):
    model, ckpt = make(1.0)
    path = ckpt.save(f"{DIR}/r", options=ASYNC)
    threading.Timer(0.2, gate.set).start()
    model.w.assign(np.zeros((256, 256), np.float32))
    ckpt.restore(path).assert_consumed()  # waits for the write, then reads it back
    assert np.all(model.w.numpy() == 1.0)


@pytest.mark.parametrize("via_manager", [False, True], ids=["Checkpoint", "CheckpointManager"])
def test_sync_reraises_a_background_failure_once(via_manager):
    model, ckpt = make(1.0)
    manager = ck.CheckpointManager(ckpt, DIR, max_to_keep=3)
    good = manager.save()
    FaultyFS.fail_after_bytes, FaultyFS.fail_paths, FaultyFS.written = 1000, r"\.data-", 0
    if via_manager:
        manager.save(options=ASYNC)
    else:
        ckpt.save(f"{DIR}/ckpt", options=ASYNC)
    with pytest.raises(OSError, match="injected write fault"):
        (manager if via_manager else ckpt).sync()
    (manager if via_manager else ckpt).sync()  # collected: a second sync does not raise again
    assert ck.latest_checkpoint(DIR) == good == manager.latest_checkpoint
    FaultyFS.fail_after_bytes = None
    later = manager.save(options=ASYNC)
    manager.sync()
    assert manager.latest_checkpoint == later == ck.latest_checkpoint(DIR)


def test_an_uncollected_failure_surfaces_at_the_next_save():
    model, ckpt = make(1.0)
    manager = ck.CheckpointManager(ckpt, DIR, max_to_keep=3)
    FaultyFS.fail_after_bytes, FaultyFS.fail_paths = 0, r"\.index$"
    manager.save(options=ASYNC)
    with pytest.raises(OSError, match="injected write fault"):
        manager.save(options=ASYNC)  # raises the first save's error before writing anything
    assert FaultyFS.faults == 1 and manager.latest_checkpoint is None
    FaultyFS.fail_after_bytes = None
    path = manager.save(options=ASYNC)  # the error was reported once; saving works again
    manager.sync()
    assert manager.latest_checkpoint == path


def test_async_retention_and_state_follow_each_commit(tmp_path):
    model, ckpt = make(0.0)
    manager = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=2)
    for i in range(1, 6):
        model.w.assign(np.full((256, 256), float(i), np.float32))
        manager.save(options=ASYNC)
    manager.sync()
    assert manager.checkpoints == [str(tmp_path / "ckpt-4"), str(tmp_path / "ckpt-5")]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index",
                                            "ckpt-5.data-00000-of-00001", "ckpt-5.index"]
    assert ck.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-5")
    assert np.all(restored(manager.latest_checkpoint).w.numpy() == 5.0)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_interpreter_exit_waits_for_a_pending_save(tmp_path):
    script = """
        import sys, numpy as np, ckptcore as ck
        w = ck.Variable(np.full(8_000_000, 7.0, np.float32))   # 32 MB: the write outlives the main thread
        m = ck.CheckpointManager(ck.Checkpoint(w=w), sys.argv[1], max_to_keep=1)
        print(m.save(options=ck.CheckpointOptions(enable_async=True)), flush=True)
        w.assign(np.zeros(8_000_000, np.float32))
        # no sync(): the interpreter must wait for the background write
    """
    proc = _run(script, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip()
    assert ck.latest_checkpoint(str(tmp_path)) == path
    assert ck.load_checkpoint(path).verify() == 32_000_000 + 8  # w and save_counter
    w = ck.Variable(np.zeros(8_000_000, np.float32))
    ck.Checkpoint(w=w).restore(path).assert_consumed()
    assert np.all(w.numpy() == 7.0)


def test_an_uncollected_failure_is_reported_at_exit():
    script = """
        import numpy as np, ckptcore as ck
        from faulty_fs import FaultyFS
        FaultyFS.reset(fail_after_bytes=10, fail_paths=r"\\.data-")
        ckpt = ck.Checkpoint(w=ck.Variable(np.ones(1000)))
        ckpt.save("ckfault://exit/ckpt", options=ck.CheckpointOptions(enable_async=True))
    """
    proc = _run(script)
    assert proc.returncode == 0, proc.stderr
    assert "async checkpoint save failed and sync() was never called" in proc.stderr
    assert "injected write fault" in proc.stderr


def test_an_uncollected_failure_is_reported_even_if_the_checkpoint_is_gone():
    script = """
        import gc, numpy as np, ckptcore as ck
        from faulty_fs import FaultyFS
        FaultyFS.reset(fail_after_bytes=10, fail_paths=r"\\.data-")
        ckpt = ck.Checkpoint(w=ck.Variable(np.ones(1000)))
        ckpt.save("ckfault://gone/ckpt", options=ck.CheckpointOptions(enable_async=True))
        del ckpt
        gc.collect()
    """
    proc = _run(script)
    assert proc.returncode == 0, proc.stderr
    assert "async checkpoint save failed and sync() was never called" in proc.stderr


def test_a_collected_failure_is_not_reported_again_at_exit():
    script = """
        import numpy as np, ckptcore as ck
        from faulty_fs import FaultyFS
        FaultyFS.reset(fail_after_bytes=10, fail_paths=r"\\.data-")
        ckpt = ck.Checkpoint(w=ck.Variable(np.ones(1000)))
        ckpt.save("ckfault://collected/ckpt", options=ck.CheckpointOptions(enable_async=True))
        try:
            ckpt.sync()
        except OSError:
            print("collected")
    """
    proc = _run(script)
    assert proc.returncode == 0, proc.stderr
    assert "collected" in proc.stdout
    assert "sync() was never called" not in proc.stderr


def test_checkpoint_options_are_keyword_only_and_immutable():
    with pytest.raises(TypeError):
        ck.CheckpointOptions(True)  # noqa: FBT003 -- positional on purpose
    opts = ck.CheckpointOptions(enable_async=True, storage_options={"anon": True})
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.enable_async = False
    with pytest.raises(TypeError):
        opts.storage_options["anon"] = False
    assert opts == ck.CheckpointOptions(enable_async=True, storage_options={"anon": True})


@pytest.mark.parametrize("enable_async", [False, True])
def test_saves_from_several_threads_get_distinct_numbers_in_order(tmp_path, enable_async):
    """One Checkpoint saved from 4 threads at once: every save gets its own number, each written
    checkpoint holds its own number as save_counter, and the state file ends at the last one."""
    v = ck.Variable(np.zeros(3))
    ckpt = ck.Checkpoint(v=v)
    prefix = str(tmp_path / "ckpt")
    paths, errors = [], []
    start = threading.Barrier(4)

    def worker():
        start.wait()
        try:
            for _ in range(10):
                paths.append(ckpt.save(prefix, options=ck.CheckpointOptions(enable_async=enable_async)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ckpt.sync()
    assert not errors
    assert sorted(paths, key=lambda p: int(p.rsplit("-", 1)[1])) == [f"{prefix}-{i}" for i in range(1, 41)]
    assert int(ckpt.save_counter) == 40
    for p in (paths[0], paths[-1], f"{prefix}-17"):
        got = ck.load_checkpoint(p).get_tensor("save_counter/.ATTRIBUTES/VARIABLE_VALUE")
        assert int(got) == int(p.rsplit("-", 1)[1])
    assert ck.latest_checkpoint(str(tmp_path)) == f"{prefix}-40"
