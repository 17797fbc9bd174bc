"""TensorFlow's CheckpointManager tests, ported to ckptcore's API.

Each test names the TF test it follows (tensorflow/python/checkpoint/checkpoint_management_test.py,
TF 2.21). TF patches ``checkpoint_management.time``; ckptcore's manager reads its clock through
``ckptcore.manager._clock``, patched here the same way.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

import ckptcore as ck
import ckptcore.manager as manager_mod
from ckptcore.state import read_state
from ckptcore.storage import open_storage


def exists(path) -> bool:
    return os.path.exists(str(path) + ".index")


def state_of(directory):
    storage, d = open_storage(str(directory))
    return read_state(storage, d)


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock(3.0)
    monkeypatch.setattr(manager_mod, "_clock", c)
    return c


# -- testDeletion, testKeepAll ------------------------------------------------------------------------
def test_max_to_keep_deletes_the_oldest(tmp_path):
    manager = ck.CheckpointManager(ck.Checkpoint(), str(tmp_path), max_to_keep=3)
    paths = [manager.save() for _ in range(4)]
    assert [exists(p) for p in paths] == [False, True, True, True]


def test_keep_all_then_a_new_manager_with_a_limit(tmp_path):
    ckpt = ck.Checkpoint()
    manager = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=None)
    first, second, third = (manager.save() for _ in range(3))
    assert manager.latest_checkpoint == third
    assert manager.checkpoints == [first, second, third]
    del manager
    manager = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=None)
    fourth = manager.save()
    assert manager.checkpoints == [first, second, third, fourth]
    del manager
    manager = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=3)
    assert manager.checkpoints == [first, second, third, fourth]   # nothing deleted before a save
    assert all(exists(p) for p in (first, second, third, fourth))
    fifth = manager.save()
    assert manager.checkpoints == [third, fourth, fifth]
    assert [exists(p) for p in (first, second, third, fourth, fifth)] == [False, False, True, True, True]


# -- testSaveRestoreState --------------------------------------------------------------------------
def test_timestamps_and_keep_every_n_hours_survive_new_managers(tmp_path, clock):
    d = str(tmp_path)
    name = {i: os.path.join(d, f"ckpt-{i}") for i in range(1, 7)}
    ckpt = ck.Checkpoint()
    first_manager = ck.CheckpointManager(ckpt, d, max_to_keep=2)
    first_time = clock.now = 10000.0
    first_manager.save()
    second_time = clock.now = first_time + 3610.0
    first_manager.save()
    assert state_of(d).timestamps == [first_time, second_time]
    assert first_manager.checkpoints == [name[1], name[2]]
    assert first_manager.latest_checkpoint == name[2]
    del first_manager

    second_manager = ck.CheckpointManager(ckpt, d, max_to_keep=2, keep_checkpoint_every_n_hours=1.5)
    assert second_manager.checkpoints == [name[1], name[2]]
    assert second_manager.latest_checkpoint == name[2]
    third_time = clock.now = second_time + 3600.0 * 0.2
    second_manager.save()
    assert exists(name[1]) and exists(name[2])   # ckpt-1 is preserved (kept forever, no longer listed)
    assert second_manager.checkpoints == [name[2], name[3]]
    assert state_of(d).last_preserved_timestamp == first_time
    fourth_time = clock.now = third_time + 3600.0 * 0.5
    second_manager.save()
    assert exists(name[1]) and not exists(name[2])
    assert second_manager.checkpoints == [name[3], name[4]]
    clock.now = fourth_time + 3600.0 * 0.5
    second_manager.save()
    assert second_manager.checkpoints == [name[4], name[5]]
    assert state_of(d).last_preserved_timestamp == first_time
    del second_manager

    third_manager = ck.CheckpointManager(ckpt, d, max_to_keep=2, keep_checkpoint_every_n_hours=1.5)
    assert third_manager.latest_checkpoint == name[5]
    clock.now += 10.0
    third_manager.save()
    assert state_of(d).last_preserved_timestamp == fourth_time
    assert [exists(name[i]) for i in range(1, 7)] == [True, False, False, True, True, True]
    assert third_manager.checkpoints == [name[5], name[6]]


# -- testContinueFromUnmanaged ----------------------------------------------------------------------
def test_a_manager_continues_from_checkpoint_save_but_never_deletes_those(tmp_path):
    prefix = str(tmp_path / "unusual_prefix")
    ckpt = ck.Checkpoint()
    first, second = ckpt.save(prefix), ckpt.save(prefix)
    ckpt = ck.Checkpoint()
    manager = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=2)
    ckpt.restore(manager.latest_checkpoint)
    assert int(ckpt.save_counter) == 2
    third = manager.save()
    assert manager.checkpoints == [third]
    fourth = manager.save()
    fifth = manager.save()
    assert manager.checkpoints == [fourth, fifth]
    assert [exists(p) for p in (first, second, third, fourth, fifth)] == [True, True, False, True, True]


# -- testClockReset -------------------------------------------------------------------------------------
def test_a_clock_set_back_keeps_what_it_cannot_place(tmp_path, clock):
    d = str(tmp_path)
    ckpt = ck.Checkpoint()
    clock.now = 10000.0
    first_manager = ck.CheckpointManager(ckpt, d, max_to_keep=1, keep_checkpoint_every_n_hours=1.0)
    first = first_manager.save()
    clock.now += 3600.0
    second = first_manager.save()
    clock.now += 3600.0
    third = first_manager.save()
    assert [exists(p) for p in (first, second, third)] == [False, True, True]
    assert first_manager.checkpoints == [third]
    assert state_of(d).last_preserved_timestamp == 13600.0
    clock.now = 5000.0
    del first_manager
    with pytest.warns(RuntimeWarning, match="clock is behind"):
        second_manager = ck.CheckpointManager(ckpt, d, max_to_keep=1)
    assert exists(second)
    assert second_manager.latest_checkpoint == third
    assert second_manager.checkpoints == []
    clock.now += 10.0
    fourth = second_manager.save()
    assert exists(second) and exists(third)
    assert second_manager.latest_checkpoint == fourth
    assert second_manager.checkpoints == [fourth]
    clock.now += 10.0
    fifth = second_manager.save()
    assert exists(second) and exists(third)
    assert second_manager.checkpoints == [fifth]
    state = state_of(d)
    assert state.last_preserved_timestamp == 5000.0
    assert state.timestamps == [5020.0]


# -- testCustomNumbering, testCustomCheckpointPrefix ------------------------------------------------
def test_numbering_by_a_step_variable_and_by_plain_integers(tmp_path):
    step = ck.Variable(0, dtype=np.int64)
    ckpt = ck.Checkpoint(step=step)
    manager = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=2)
    for i in range(5):
        path = manager.save(checkpoint_number=step)
        assert path.endswith(f"-{2 * i}")
        step.assign_add(2)
    assert int(ckpt.save_counter) == 5
    last = manager.save(checkpoint_number=32)
    assert "-32" in last
    assert manager.latest_checkpoint == last == ck.latest_checkpoint(str(tmp_path))
    assert [os.path.join(str(tmp_path), n) for n in state_of(tmp_path).all] == [path, last]


def test_checkpoint_name_prefixes_the_files(tmp_path):
    manager = ck.CheckpointManager(ck.Checkpoint(), str(tmp_path), max_to_keep=2, checkpoint_name="ckpt_name")
    assert os.path.basename(manager.save(checkpoint_number=5)) == "ckpt_name-5"
    manager = ck.CheckpointManager(ck.Checkpoint(), str(tmp_path), max_to_keep=2)
    assert os.path.basename(manager.save(checkpoint_number=5)) == "ckpt-5"


# -- testRestoreOrInitialize, FSpath directories ---------------------------------------------------------
def test_restore_or_initialize_calls_init_fn_only_without_a_checkpoint(tmp_path):
    init_v = ck.Variable(np.float32(2.0))
    init_path = ck.Checkpoint(v=init_v).save(str(tmp_path / "init"))
    v = ck.Variable(np.float32(1.0))
    ckpt = ck.Checkpoint(v=v)
    manager = ck.CheckpointManager(ckpt, str(tmp_path / "ckpt"), max_to_keep=None,
                                   init_fn=lambda: ckpt.restore(init_path))
    assert manager.restore_or_initialize() is None
    assert float(v) == 2.0
    manager.save()
    assert manager.restore_or_initialize() is not None


def test_a_path_object_as_the_directory(tmp_path):
    directory = pathlib.Path(tmp_path)
    manager = ck.CheckpointManager(ck.Checkpoint(v=ck.Variable(np.float32(0.0))), directory, max_to_keep=2,
                                   checkpoint_name="ckpt_name")
    assert manager.save() == str(directory / "ckpt_name-1")
    assert manager.restore_or_initialize() == str(directory / "ckpt_name-1")
    assert ck.latest_checkpoint(directory) == str(directory / "ckpt_name-1")


# -- testCheckpointInterval, ...WithLastCheckpointStep, ...WithRestore -----------------------------
def test_checkpoint_interval(tmp_path):
    step = ck.Variable(np.int32(0))
    manager = ck.CheckpointManager(ck.Checkpoint(v=ck.Variable(np.float32(1.0))), str(tmp_path), max_to_keep=None,
                                   step_counter=step, checkpoint_interval=2)
    assert exists(manager.save(check_interval=True))     # step 0: the first save
    step.assign_add(1)
    assert manager.save(check_interval=True) is None      # step 1
    step.assign_add(1)
    assert exists(manager.save(check_interval=True))     # step 2
    assert manager.save(check_interval=True) is None      # step 2 again
    step.assign_add(1)
    assert manager.save(check_interval=True) is None      # step 3
    assert exists(manager.save(check_interval=False))    # always


def test_checkpoint_interval_counts_from_last_checkpoint_step(tmp_path):
    step = ck.Variable(np.int32(1))
    manager = ck.CheckpointManager(ck.Checkpoint(v=ck.Variable(np.float32(1.0))), str(tmp_path), max_to_keep=None,
                                   step_counter=step, checkpoint_interval=2, last_checkpoint_step=1)
    assert manager.save(check_interval=True) is None      # step 1: already saved
    step.assign_add(1)
    assert manager.save(check_interval=True) is None      # step 2: the interval starts at 1
    step.assign_add(1)
    assert exists(manager.save(check_interval=True))     # step 3


def test_checkpoint_interval_after_a_restore(tmp_path):
    v, step = ck.Variable(np.float32(1.0)), ck.Variable(np.int32(0))
    ckpt = ck.Checkpoint(v=v)
    ckpt.save(str(tmp_path / "ckpt"))
    manager = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=None, step_counter=step, checkpoint_interval=2)
    assert manager.restore_or_initialize() is not None
    assert manager.save() is None   # the restored step: nothing new to save


# -- testCheckPointStateFailsWhenIncomplete ------------------------------------------------------------
def test_an_empty_state_file_is_an_error_not_no_checkpoint(tmp_path):
    # TF raises ValueError; ckptcore's error for any damaged state file is ck.CorruptCheckpointError
    # (docs/tf-differences.md). Either way it is never read as "no checkpoint".
    (tmp_path / "checkpoint").write_text("")
    with pytest.raises(ck.CorruptCheckpointError, match="checkpoint state file"):
        ck.latest_checkpoint(str(tmp_path))
