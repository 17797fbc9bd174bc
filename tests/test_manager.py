"""CheckpointManager: numbering, retention and recovery as tf.train.CheckpointManager does them."""

from __future__ import annotations

import json
import os
import time
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import manager as manager_mod


def make(value=0.0):
    model = ck.Module()
    model.w = ck.Variable(np.full(16, value))
    return model, ck.Checkpoint(model=model)


def files(d) -> list[str]:
    return sorted(os.listdir(d))


def ckpt_files(d, *numbers) -> list[str]:
    out = ["checkpoint"]
    for n in numbers:
        out += [f"ckpt-{n}.data-00000-of-00001", f"ckpt-{n}.index"]
    return sorted(out)


def state(d) -> dict:
    with open(os.path.join(d, "checkpoint")) as f:
        return json.load(f)


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock(10_000.0)
    monkeypatch.setattr(manager_mod, "_clock", c)
    return c


def test_save_numbers_by_save_counter_and_keeps_max_to_keep(tmp_path):
    model, ckpt = make()
    d = str(tmp_path)
    m = ck.CheckpointManager(ckpt, d, max_to_keep=2)
    assert m.directory == d and m.latest_checkpoint is None and m.checkpoints == []
    paths = [m.save() for _ in range(3)]
    assert paths == [os.path.join(d, f"ckpt-{i}") for i in (1, 2, 3)]
    assert int(ckpt.save_counter) == 3
    assert m.checkpoints == paths[1:] and m.latest_checkpoint == paths[2]
    assert files(d) == ckpt_files(d, 2, 3)  # every file of ckpt-1 is gone
    st_ = state(d)
    assert st_["model_checkpoint_path"] == "ckpt-3" and st_["all_model_checkpoint_paths"] == ["ckpt-2", "ckpt-3"]
    assert ck.latest_checkpoint(d) == paths[2]


def test_removing_a_checkpoint_removes_all_of_its_shards(tmp_path):
    _, ckpt = make()
    d = str(tmp_path)
    m = ck.CheckpointManager(ckpt, d, max_to_keep=1)
    m.save()
    # a checkpoint written with more shards (by a sharding writer) has more data files
    for extra in ("ckpt-1.data-00001-of-00003", "ckpt-1.data-00002-of-00003"):
        (tmp_path / extra).write_bytes(b"x")
    m.save()
    assert files(d) == ckpt_files(d, 2)


def test_max_to_keep_none_keeps_everything(tmp_path):
    _, ckpt = make()
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=None)
    for _ in range(6):
        m.save()
    assert [os.path.basename(p) for p in m.checkpoints] == [f"ckpt-{i}" for i in range(1, 7)]
    assert files(tmp_path) == ckpt_files(tmp_path, *range(1, 7))


def test_checkpoint_number_and_custom_name(tmp_path):
    _, ckpt = make()
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=3, checkpoint_name="model")
    assert m.save(checkpoint_number=100) == os.path.join(str(tmp_path), "model-100")
    assert m.save(checkpoint_number=np.int64(200)) == os.path.join(str(tmp_path), "model-200")
    assert int(ckpt.save_counter) == 2  # incremented by every save, as TF's manager does


def test_resaving_a_number_moves_it_to_the_end(tmp_path):
    model, ckpt = make()
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=3)
    for n in (1, 2, 3):
        m.save(checkpoint_number=n)
    model.w.assign(np.full(16, 9.0))
    m.save(checkpoint_number=1)
    assert [os.path.basename(p) for p in m.checkpoints] == ["ckpt-2", "ckpt-3", "ckpt-1"]
    assert m.latest_checkpoint.endswith("ckpt-1")
    fresh, c = make(-1.0)
    c.restore(m.latest_checkpoint).assert_consumed()
    assert np.all(fresh.w.numpy() == 9.0)


def test_new_manager_recovers_the_list_from_the_state_file(tmp_path):
    _, ckpt = make()
    d = str(tmp_path)
    m = ck.CheckpointManager(ckpt, d, max_to_keep=3)
    for _ in range(4):
        m.save()
    again = ck.CheckpointManager(make()[1], d, max_to_keep=3)
    assert again.checkpoints == m.checkpoints and again.latest_checkpoint == m.latest_checkpoint
    # only checkpoints whose index exists are recovered
    os.remove(os.path.join(d, "ckpt-3.index"))
    partial = ck.CheckpointManager(make()[1], d, max_to_keep=3)
    assert [os.path.basename(p) for p in partial.checkpoints] == ["ckpt-2", "ckpt-4"]
    os.remove(os.path.join(d, "ckpt-4.index"))
    latest_gone = ck.CheckpointManager(make()[1], d, max_to_keep=3)
    assert latest_gone.latest_checkpoint == os.path.join(d, "ckpt-2") == ck.latest_checkpoint(d)
    # the recovered manager keeps retiring the oldest
    _, c2 = make()
    m2 = ck.CheckpointManager(c2, d, max_to_keep=2)
    m2.save(checkpoint_number=10)
    m2.save(checkpoint_number=11)
    assert [os.path.basename(p) for p in m2.checkpoints] == ["ckpt-10", "ckpt-11"]
    assert not any(f.startswith("ckpt-2.") for f in files(d))


def test_recovery_continues_a_directory_written_by_checkpoint_save(tmp_path):
    _, ckpt = make()
    prefix = str(tmp_path / "ckpt")
    ckpt.save(prefix)
    ckpt.save(prefix)
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=2)
    # as in TF: the manager continues numbering and names the latest, but manages (deletes) none of them
    assert m.checkpoints == [] and m.latest_checkpoint == prefix + "-2"
    assert m.save().endswith("ckpt-3")
    m.save(), m.save()
    assert [os.path.basename(p) for p in m.checkpoints] == ["ckpt-4", "ckpt-5"]
    assert files(tmp_path) == ckpt_files(tmp_path, 1, 2, 4, 5)


def test_corrupt_state_file_is_recovered_from_the_listing(tmp_path):
    _, ckpt = make()
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=5)
    for n in (3, 10, 7):
        m.save(checkpoint_number=n)
    (tmp_path / "checkpoint").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = ck.CheckpointManager(make()[1], str(tmp_path), max_to_keep=5)
    assert [os.path.basename(p) for p in again.checkpoints] == ["ckpt-3", "ckpt-7", "ckpt-10"]
    again.save(checkpoint_number=11)
    assert state(tmp_path)["all_model_checkpoint_paths"] == ["ckpt-3", "ckpt-7", "ckpt-10", "ckpt-11"]


def test_state_file_cannot_make_the_manager_delete_outside_its_directory(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    victims = [tmp_path / "victim.index", tmp_path / "victim.data-00000-of-00001"]
    for v in victims:
        v.write_bytes(b"precious")
    (d / "checkpoint").write_text(json.dumps({
        "model_checkpoint_path": "../victim", "all_model_checkpoint_paths": ["../victim", "/abs/victim"],
        "all_model_checkpoint_timestamps": [1.0, 2.0]}))
    with pytest.warns(RuntimeWarning, match="corrupt"):
        m = ck.CheckpointManager(make()[1], str(d), max_to_keep=1)
    assert m.checkpoints == [] and m.latest_checkpoint is None
    for _ in range(3):
        m.save()
    assert all(v.read_bytes() == b"precious" for v in victims)
    assert files(d) == ckpt_files(d, 3)


def test_keep_checkpoint_every_n_hours(tmp_path, clock):
    _, ckpt = make()
    d = str(tmp_path)
    m = ck.CheckpointManager(ckpt, d, max_to_keep=2, keep_checkpoint_every_n_hours=1)
    times = {}
    for n, t in [(1, 10_001), (2, 10_002), (3, 10_003), (4, 13_700), (5, 13_800), (6, 17_300), (7, 17_400),
                 (8, 21_000)]:
        clock.now = t
        times[n] = t
        m.save()
    # ckpt-4 is the first one retired an hour after the manager started; ckpt-6 an hour after ckpt-4;
    # ckpt-8 is not retired yet. Everything else was deleted.
    assert [os.path.basename(p) for p in m.checkpoints] == ["ckpt-7", "ckpt-8"]
    assert files(d) == ckpt_files(d, 4, 6, 7, 8)
    assert state(d)["last_preserved_timestamp"] == times[6]
    # a recovered manager does not list (and so never deletes) the preserved ones
    clock.now = 21_100
    again = ck.CheckpointManager(make()[1], d, max_to_keep=2, keep_checkpoint_every_n_hours=1)
    assert [os.path.basename(p) for p in again.checkpoints] == ["ckpt-7", "ckpt-8"]
    clock.now = 21_200
    again.save(checkpoint_number=9)  # retires ckpt-7: less than an hour after ckpt-6
    assert files(d) == ckpt_files(d, 4, 6, 8, 9)


def test_without_keep_hours_everything_old_is_deleted(tmp_path, clock):
    _, ckpt = make()
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=1)
    for t in (10_001, 20_000, 30_000, 40_000):
        clock.now = t
        m.save()
    assert files(tmp_path) == ckpt_files(tmp_path, 4)


def test_clock_moving_backwards_keeps_recovered_checkpoints(tmp_path, clock):
    _, ckpt = make()
    d = str(tmp_path)
    m = ck.CheckpointManager(ckpt, d, max_to_keep=3, keep_checkpoint_every_n_hours=1)
    for t in (10_001, 10_002):
        clock.now = t
        m.save()
    clock.now = 5_000  # earlier than what the state file recorded
    with pytest.warns(RuntimeWarning, match="clock"):
        again = ck.CheckpointManager(make()[1], d, max_to_keep=1, keep_checkpoint_every_n_hours=1)
    # as in TF, checkpoints "from the future" are set aside, never deleted
    assert again.checkpoints == [] and again.latest_checkpoint == os.path.join(d, "ckpt-2")
    for n in (3, 4, 5):
        again.save(checkpoint_number=n)
    assert files(d) == ckpt_files(d, 1, 2, 5)


def test_step_counter_and_checkpoint_interval(tmp_path):
    step = ck.Variable(0, dtype=np.int64)
    ckpt = ck.Checkpoint(step=step, w=ck.Variable(np.zeros(3)))
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=None, step_counter=step, checkpoint_interval=5)
    assert m.checkpoint_interval == 5
    saved = []
    for s in range(13):
        step.assign(s)
        saved.append(m.save())
    names = [os.path.basename(p) if p else None for p in saved]
    assert [n for n in names if n] == ["ckpt-0", "ckpt-5", "ckpt-10"]
    assert names[3] is None
    step.assign(12)
    assert m.save() is None  # interval not reached
    assert m.save(check_interval=False).endswith("ckpt-12")  # forced
    assert m.save(check_interval=False) is None  # but never the same step twice
    assert int(ckpt.save_counter) == 4


def test_step_counter_without_interval_numbers_checkpoints(tmp_path):
    step = ck.Variable(41, dtype=np.int64)
    m = ck.CheckpointManager(ck.Checkpoint(step=step), str(tmp_path), max_to_keep=2, step_counter=step)
    assert m.save().endswith("ckpt-41")
    assert m.save().endswith("ckpt-41")  # no interval: the same step may be saved again
    assert m.checkpoints == [os.path.join(str(tmp_path), "ckpt-41")]


def test_restore_or_initialize(tmp_path):
    d = str(tmp_path)
    step = ck.Variable(0, dtype=np.int64)
    model, _ = make()
    ckpt = ck.Checkpoint(model=model, step=step)
    calls = []

    def init():
        calls.append(1)
        model.w.assign(np.full(16, 3.0))

    m = ck.CheckpointManager(ckpt, d, max_to_keep=2, step_counter=step, checkpoint_interval=10, init_fn=init)
    assert m.restore_or_initialize() is None and calls == [1]
    step.assign(20)
    path = m.save()
    # a new process: fresh objects, a new manager
    step2 = ck.Variable(0, dtype=np.int64)
    model2, _ = make(-1.0)
    ckpt2 = ck.Checkpoint(model=model2, step=step2)
    m2 = ck.CheckpointManager(ckpt2, d, max_to_keep=2, step_counter=step2, checkpoint_interval=10, init_fn=init)
    assert m2.restore_or_initialize() == path and calls == [1]
    assert int(step2) == 20 and np.all(model2.w.numpy() == 3.0) and int(ckpt2.save_counter) == 1
    step2.assign(25)
    assert m2.save() is None  # the restored step counts as the last saved one
    step2.assign(30)
    assert m2.save().endswith("ckpt-30")


def test_constructor_validation(tmp_path):
    _, ckpt = make()
    with pytest.raises(ValueError, match="max_to_keep"):
        ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=0)
    with pytest.raises(ValueError, match="step_counter"):
        ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=1, checkpoint_interval=3)
    with pytest.raises(ValueError, match="checkpoint_name"):
        ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=1, checkpoint_name="../x")
    with pytest.raises(TypeError, match="ck.Checkpoint"):
        ck.CheckpointManager(ck.Module(), str(tmp_path), max_to_keep=1)


# -- cleanup of partial files ------------------------------------------------------------
def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_later_save_removes_old_partial_files_and_nothing_else(tmp_path):
    d = str(tmp_path)
    _, ckpt = make()
    m = ck.CheckpointManager(ckpt, d, max_to_keep=5)
    m.save()
    hexid = uuid.uuid4().hex
    partial = [f".ckpt-2.data-00000-of-00001.tmp-{hexid}", f".ckpt-2.index.tmp-{hexid}",
               "ckpt-3.data-00000-of-00001", f".checkpoint.tmp-{hexid}"]
    foreign = ["notes.txt", f".other-1.data-00000-of-00001.tmp-{hexid}", "other-1.data-00000-of-00001",
               "ckpt-x.data-00000-of-00001", "ckpt-4.data-00000-of-00001.bak", f".ckpt-5.index.tmp-{hexid}.keep"]
    fresh = [f".ckpt-6.data-00000-of-00001.tmp-{uuid.uuid4().hex}", "ckpt-7.data-00000-of-00001"]
    for name in partial + foreign + fresh:
        (tmp_path / name).write_bytes(b"junk")
    for name in partial + foreign:
        _age(tmp_path / name, 3600)
    m.save()
    left = set(files(d))
    assert not left & set(partial)
    assert set(foreign) <= left
    assert set(fresh) <= left  # may belong to a save in progress in another process
    assert {"ckpt-1.index", "ckpt-2.index", "ckpt-2.data-00000-of-00001"} <= left
    m.partial_file_grace_seconds = 0
    m.save()
    assert not set(fresh) & set(files(d)) and set(foreign) <= set(files(d))


def test_partial_files_on_object_storage_are_cleaned(mem_dir):
    _, ckpt = make()
    m = ck.CheckpointManager(ckpt, mem_dir, max_to_keep=5)
    m.partial_file_grace_seconds = 0
    m.save()
    from ckptcore.storage import open_storage
    storage, d = open_storage(mem_dir)
    storage.write_atomic(storage.join(d, "ckpt-9.data-00000-of-00001"), b"torn")
    storage.write_atomic(storage.join(d, "unrelated.bin"), b"keep")
    m.save()
    assert sorted(storage.listdir(d)) == ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index",
                                          "ckpt-2.data-00000-of-00001", "ckpt-2.index", "unrelated.bin"]


@settings(max_examples=30, deadline=None)
@given(max_to_keep=st.one_of(st.none(), st.integers(1, 4)),
       numbers=st.lists(st.one_of(st.none(), st.integers(0, 6)), min_size=1, max_size=10))
def test_retention_matches_a_model_of_tf_semantics(max_to_keep, numbers):
    d = f"memory://tests-manager-{uuid.uuid4().hex}"
    _, ckpt = make()
    m = ck.CheckpointManager(ckpt, d, max_to_keep=max_to_keep)
    expected: list[str] = []
    counter = 0
    for n in numbers:
        counter += 1
        name = f"ckpt-{counter if n is None else n}"
        if name in expected:
            expected.remove(name)
        expected.append(name)
        if max_to_keep is not None:
            expected = expected[-max_to_keep:]
        assert m.save(checkpoint_number=n) == f"{d}/{name}"
    assert m.checkpoints == [f"{d}/{x}" for x in expected]
    assert m.latest_checkpoint == f"{d}/{expected[-1]}" == ck.latest_checkpoint(d)
    from ckptcore.storage import open_storage
    storage, path = open_storage(d)
    assert sorted(n[:-6] for n in storage.listdir(path) if n.endswith(".index")) == sorted(expected)
    recovered = ck.CheckpointManager(make()[1], d, max_to_keep=max_to_keep)
    assert recovered.checkpoints == m.checkpoints
    storage.remove([storage.join(path, n) for n in storage.listdir(path)])
