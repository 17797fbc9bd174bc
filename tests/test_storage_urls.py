"""Any path or URL fsspec understands works: local paths, file://, memory://."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ckptcore as ck


@pytest.fixture(params=["local", "file", "memory"])
def directory(request, tmp_path, mem_dir):
    if request.param == "local":
        return str(tmp_path / "run")
    if request.param == "file":
        return "file://" + str(tmp_path / "run")
    return mem_dir + "/run"


def test_save_restore_latest(directory):
    prefix = directory + "/ckpt"
    w = np.arange(4.0)
    ckpt = ck.Checkpoint(w=w)
    assert ck.latest_checkpoint(directory) is None
    p1 = ckpt.save(prefix)
    assert p1 == prefix + "-1"
    w[...] = 10
    p2 = ckpt.save(prefix)
    assert ck.latest_checkpoint(directory) == p2
    assert ck.latest_checkpoint(directory + "/") == p2
    w2 = np.zeros(4)
    fresh = ck.Checkpoint(w=w2)
    fresh.restore(ck.latest_checkpoint(directory)).assert_consumed()
    assert w2.tolist() == [10.0] * 4 and int(fresh.save_counter) == 2
    fresh.restore(p1).assert_consumed()
    assert w2.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_write_read(directory):
    path = ck.Checkpoint(v=ck.Variable([1, 2], dtype=np.int16)).write(directory + "/w")
    assert path == directory + "/w"
    v = ck.Variable([0, 0], dtype=np.int16)
    ck.Checkpoint(v=v).read(path).assert_consumed()
    assert v.numpy().tolist() == [1, 2]
    assert ck.latest_checkpoint(directory) is None
    assert ck.list_variables(path) == [("v/.ATTRIBUTES/VARIABLE_VALUE", [2])]
    assert ck.load_checkpoint(path).get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [1, 2]


def test_deferred_restore(directory):
    m = ck.Module()
    m.sub = ck.Module()
    m.sub.k = np.full(3, 2.0)
    path = ck.Checkpoint(model=m).save(directory + "/ckpt")
    m2 = ck.Module()
    status = ck.Checkpoint(model=m2).restore(path)
    m2.sub = ck.Module()
    m2.sub.k = np.zeros(3)
    assert m2.sub.k.tolist() == [2.0] * 3
    status.assert_consumed()


def test_missing_checkpoint_not_found(directory):
    with pytest.raises(ck.NotFoundError):
        ck.Checkpoint(a=np.ones(1)).restore(directory + "/ckpt-9")
    with pytest.raises(FileNotFoundError):
        ck.load_checkpoint(directory + "/nothing")


def test_file_url_and_local_path_are_the_same_checkpoint(tmp_path):
    local = str(tmp_path / "ckpt")
    ck.Checkpoint(a=np.full(2, 3.0)).write(local)
    a = np.zeros(2)
    ck.Checkpoint(a=a).read("file://" + local).assert_consumed()
    assert a.tolist() == [3.0, 3.0]
    assert os.path.exists(local + ".index")


def test_state_file_records_relative_names(tmp_path):
    """Moving a directory keeps latest_checkpoint working (names are relative)."""
    d = tmp_path / "a"
    ck.Checkpoint(a=np.ones(1)).save(str(d / "ckpt"))
    moved = tmp_path / "b"
    os.rename(d, moved)
    assert ck.latest_checkpoint(str(moved)) == str(moved / "ckpt-1")
