"""Regressions for bugs found in review: each test failed before its fix."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import ckptcore as ck

sys.path.insert(0, os.path.dirname(__file__))
from faulty_fs import FaultyFS  # noqa: E402


@pytest.fixture
def faulty():
    FaultyFS.reset()
    FaultyFS.store.clear()
    yield FaultyFS
    FaultyFS.reset()
    FaultyFS.store.clear()


def test_failed_retention_delete_keeps_the_new_checkpoint_and_retries_later(tmp_path, monkeypatch):
    ckpt = ck.Checkpoint(v=ck.Variable(np.zeros(2)))
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=1)
    first = m.save()
    real_remove = m._storage.remove
    calls = []

    def failing_remove(paths):
        calls.append(list(paths))
        raise OSError("disk says no")

    monkeypatch.setattr(m._storage, "remove", failing_remove)
    ckpt.v.assign([1.0, 1.0])
    second = m.save()                      # committed; deleting ckpt-1 failed, but the save stands
    assert calls and second.endswith("ckpt-2")
    assert int(ckpt.save_counter) == 2     # not rolled back: ckpt-2 exists
    assert ck.latest_checkpoint(str(tmp_path)) == second
    monkeypatch.setattr(m._storage, "remove", real_remove)
    third = m.save()                       # the next save retries the old deletion
    assert third.endswith("ckpt-3")
    assert not os.path.exists(first + ".index") and not os.path.exists(second + ".index")
    assert m.checkpoints == [third]


def test_step_of_a_failed_async_save_can_be_saved_again(faulty):
    step = ck.Variable(5, dtype=np.int64)
    ckpt = ck.Checkpoint(v=ck.Variable(np.zeros(1000)), step=step)
    m = ck.CheckpointManager(ckpt, "ckfault://retry-step", max_to_keep=3, step_counter=step,
                             checkpoint_interval=10)
    faulty.reset(fail_after_bytes=100, fail_paths=r"\.data-")
    m.save(options=ck.CheckpointOptions(enable_async=True))
    with pytest.raises(OSError):
        m.sync()
    faulty.reset()
    path = m.save()                        # same step: it never committed, so it is saved now
    assert path is not None
    assert m.latest_checkpoint == path
    assert m.save() is None                # and now the step is recorded


def test_restore_with_root_expects_save_counter_like_the_keyword_form(tmp_path):
    # restore() expects save_counter whether or not root= is used; read() does not.
    path = ck.Checkpoint(root=_fresh(1.0)).write(str(tmp_path / "w"))
    with pytest.raises(AssertionError, match="save_counter"):
        ck.Checkpoint(root=_fresh(0.0)).restore(path).assert_consumed()
    target = _fresh(0.0)
    ck.Checkpoint(root=target).read(path).assert_consumed()
    assert target.w.numpy().tolist() == [1.0, 1.0]


def _fresh(value):
    m = ck.Module()
    m.w = ck.Variable(np.full(2, value))
    return m


def test_repeated_complete_restores_do_not_pile_up_sessions(tmp_path):
    path = ck.Checkpoint(a=np.ones(3)).write(str(tmp_path / "c"))
    a = np.zeros(3)
    ckpt = ck.Checkpoint(a=a)
    for _ in range(50):
        ckpt.read(path).assert_consumed()
    assert len(ckpt._ck_sessions) <= 1


def test_saving_under_a_regular_file_is_a_storage_error_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ck.StorageError, match="file"):
        ck.Checkpoint(a=np.ones(1)).save(str(blocker / "sub" / "ckpt"))
