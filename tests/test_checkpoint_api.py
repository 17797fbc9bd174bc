"""ck.Checkpoint constructor, save/write/restore/read, latest_checkpoint, readers, ck.Variable."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ckptcore as ck
from ckptcore.formats import ckpt as fmt

KEY_A = "a/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.mark.parametrize("value, type_name", [(3, "int"), ("text", "str"), (object(), "object"), (0.5, "float")])
def test_untrackable_keyword_raises_value_error_naming_keyword_and_type(value, type_name):
    with pytest.raises(ValueError) as info:
        ck.Checkpoint(ok=ck.Variable(1.0), bad_arg=value)
    msg = str(info.value)
    assert "'bad_arg'" in msg and type_name in msg
    assert isinstance(info.value, ck.CheckpointError)


def test_untrackable_root_raises_value_error():
    with pytest.raises(ValueError, match="int"):
        ck.Checkpoint(root=5)


def test_keywords_become_named_dependencies_including_containers(prefix):
    ckpt = ck.Checkpoint(a=np.ones(2), layers=[ck.Variable(1.0)], heads={"h": np.zeros(1)})
    keys = [k for k, _ in ck.list_variables(ckpt.write(prefix))]
    assert keys == sorted([KEY_A, "layers/0/.ATTRIBUTES/VARIABLE_VALUE", "heads/h/.ATTRIBUTES/VARIABLE_VALUE"])
    assert isinstance(ckpt.layers, ck.TrackedList) and isinstance(ckpt.heads, ck.TrackedDict)


def test_root_form_saves_root_children_at_top_level(prefix):
    model = ck.Module()
    model.w = ck.Variable([1.0, 2.0])
    ckpt = ck.Checkpoint(root=model, step=ck.Variable(3))
    path = ckpt.save(prefix)
    keys = [k for k, _ in ck.list_variables(path)]
    assert keys == ["save_counter/.ATTRIBUTES/VARIABLE_VALUE", "step/.ATTRIBUTES/VARIABLE_VALUE",
                    "w/.ATTRIBUTES/VARIABLE_VALUE"]
    model2 = ck.Module()
    model2.w = ck.Variable([0.0, 0.0])
    ckpt2 = ck.Checkpoint(root=model2, step=ck.Variable(0))
    ckpt2.restore(path).assert_consumed()
    assert model2.w.numpy().tolist() == [1.0, 2.0]
    assert int(ckpt2.step) == 3 and int(ckpt2.save_counter) == 1
    # a model checkpointed as root restores into the same model written as root
    m3 = ck.Module()
    m3.w = ck.Variable([0.0, 0.0])
    ck.Checkpoint(root=m3).read(path).expect_partial().assert_existing_objects_matched()
    assert m3.w.numpy().tolist() == [1.0, 2.0]


def test_save_returns_numbered_path_and_updates_latest(tmp_path):
    prefix = str(tmp_path / "sub" / "ckpt")  # directory created on demand
    ckpt = ck.Checkpoint(a=np.ones(2))
    assert ck.latest_checkpoint(str(tmp_path / "sub")) is None
    p1 = ckpt.save(prefix)
    assert p1 == f"{prefix}-1"
    assert ck.latest_checkpoint(str(tmp_path / "sub")) == p1
    p2 = ckpt.save(prefix)
    assert p2 == f"{prefix}-2"
    assert ck.latest_checkpoint(str(tmp_path / "sub")) == p2
    assert os.path.exists(p1 + ".index") and os.path.exists(p2 + ".index")


def test_write_does_not_number_or_update_latest(tmp_path):
    ckpt = ck.Checkpoint(a=np.ones(2))
    p = ckpt.save(str(tmp_path / "ckpt"))
    w = ckpt.write(str(tmp_path / "written"))
    assert w == str(tmp_path / "written")
    assert ck.latest_checkpoint(str(tmp_path)) == p
    assert int(ckpt.save_counter) == 1
    # write() overwrites in place
    ckpt.a[...] = 7
    ckpt.write(w)
    assert ck.load_checkpoint(w).get_tensor(KEY_A).tolist() == [7.0, 7.0]


def test_write_checkpoint_has_no_save_counter_unless_created(prefix):
    path = ck.Checkpoint(a=np.ones(1)).write(prefix)
    assert [k for k, _ in ck.list_variables(path)] == [KEY_A]


def test_restore_none_gives_status_whose_assertions_fail():
    ckpt = ck.Checkpoint(a=np.ones(1))
    status = ckpt.restore(None)
    for method in ("assert_consumed", "assert_existing_objects_matched", "assert_nontrivial_match"):
        with pytest.raises(AssertionError):
            getattr(status, method)()
    assert status.expect_partial() is status
    with pytest.raises(AssertionError):
        ckpt.read(None).assert_consumed()


@pytest.mark.parametrize("method", ["restore", "read"])
def test_missing_checkpoint_raises_not_found(tmp_path, method):
    missing = str(tmp_path / "nope-3")
    with pytest.raises(ck.NotFoundError) as info:
        getattr(ck.Checkpoint(a=np.ones(1)), method)(missing)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, ck.CheckpointError)
    assert "nope-3" in str(info.value)


def test_reader_functions_raise_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        ck.load_checkpoint(str(tmp_path / "x"))
    with pytest.raises(ck.NotFoundError):
        ck.list_variables(str(tmp_path / "x"))


def test_latest_checkpoint_of_missing_or_empty_directory_is_none(tmp_path):
    assert ck.latest_checkpoint(str(tmp_path)) is None
    assert ck.latest_checkpoint(str(tmp_path / "does-not-exist")) is None


def test_latest_checkpoint_custom_filename_and_deleted_checkpoint(tmp_path):
    prefix = str(tmp_path / "ckpt")
    ckpt = ck.Checkpoint(a=np.ones(1))
    _, p2 = ckpt.save(prefix), ckpt.save(prefix)
    assert ck.latest_checkpoint(str(tmp_path), latest_filename="other") is None
    os.remove(p2 + ".index")  # the newest is gone; save() recorded only it (as TF's does): nothing to name
    assert ck.latest_checkpoint(str(tmp_path)) is None
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=None)
    m.save(), m.save()
    os.remove(m.latest_checkpoint + ".index")  # a manager lists all it keeps: fall back to the newest complete one
    assert ck.latest_checkpoint(str(tmp_path)) == m.checkpoints[0]


def test_restore_of_a_directory_uses_its_latest_checkpoint(tmp_path):
    ckpt = ck.Checkpoint(a=np.arange(2.0))
    ckpt.save(str(tmp_path / "ckpt"))
    ckpt.a[...] = 9
    ckpt.save(str(tmp_path / "ckpt"))
    a = np.zeros(2)
    ck.Checkpoint(a=a).restore(str(tmp_path)).assert_consumed()
    assert a.tolist() == [9.0, 9.0]


def test_list_variables_and_reader_methods(prefix):
    ckpt = ck.Checkpoint(a=np.arange(6, dtype=np.int32).reshape(2, 3), v=ck.Variable(2.5, dtype=np.float16))
    path = ckpt.write(prefix)
    assert ck.list_variables(path) == [(KEY_A, [2, 3]), ("v/.ATTRIBUTES/VARIABLE_VALUE", [])]
    r = ck.load_checkpoint(path)
    assert isinstance(r, ck.CheckpointReader)
    assert r.has_tensor(KEY_A) and not r.has_tensor("a")
    np.testing.assert_array_equal(r.get_tensor(KEY_A), np.arange(6).reshape(2, 3))
    assert r.get_tensor(KEY_A).dtype == np.int32
    assert r.get_variable_to_shape_map() == {KEY_A: [2, 3], "v/.ATTRIBUTES/VARIABLE_VALUE": []}
    assert r.get_variable_to_dtype_map() == {KEY_A: np.dtype(np.int32),
                                             "v/.ATTRIBUTES/VARIABLE_VALUE": np.dtype(np.float16)}
    assert r.get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE") == np.float16(2.5)
    assert r.verify() == 6 * 4 + 2
    with pytest.raises(ck.KeyNotFoundError, match="nope"):
        r.get_tensor("nope")


def test_get_tensor_returns_independent_arrays(prefix):
    path = ck.Checkpoint(a=np.ones(3)).write(prefix)
    r = ck.load_checkpoint(path)
    t = r.get_tensor(KEY_A)
    t[...] = 5
    assert r.get_tensor(KEY_A).tolist() == [1.0, 1.0, 1.0]


def test_pathlike_prefix(tmp_path):
    ckpt = ck.Checkpoint(a=np.ones(1))
    path = ckpt.save(tmp_path / "ckpt")
    assert path == str(tmp_path / "ckpt-1")
    ckpt.restore(tmp_path / "ckpt-1").assert_consumed()


# -- ck.Variable -------------------------------------------------------------------------

def test_variable_api():
    v = ck.Variable([1, 2, 3], dtype="float32", name="w")
    assert v.shape == (3,) and v.dtype == np.float32 and v.name == "w"
    out = v.numpy()
    out[0] = 100  # numpy() is a copy
    assert v.numpy().tolist() == [1.0, 2.0, 3.0]
    assert v.assign([4, 5, 6]) is v
    assert v.numpy().tolist() == [4.0, 5.0, 6.0]
    assert v.dtype == np.float32  # assign keeps the dtype
    with pytest.raises(ValueError, match="shape"):
        v.assign([1, 2])
    v.assign(0)  # scalars broadcast
    assert v.numpy().tolist() == [0.0, 0.0, 0.0]
    assert ck.Variable(2).dtype == np.dtype(int)
    assert ck.Variable(np.float64(1.5)).shape == ()
    w = ck.Variable(v)  # copies
    w.assign(1)
    assert v.numpy().tolist() == [0.0, 0.0, 0.0]
    assert int(ck.Variable(1, dtype=np.int64).assign_add(2).assign_sub(1)) == 2
    assert np.asarray(ck.Variable([1.0, 2.0])).tolist() == [1.0, 2.0]
    with pytest.raises(TypeError):
        ck.Variable(np.array([object()], dtype=object))


def test_variable_restored_in_its_own_buffer(prefix):
    path = ck.Checkpoint(v=ck.Variable(np.arange(4.0))).write(prefix)
    v = ck.Variable(np.zeros(4))
    view = v.value()
    ck.Checkpoint(v=v).read(path).assert_consumed()
    assert view.tolist() == [0.0, 1.0, 2.0, 3.0]  # same buffer, filled in place


def test_restore_returns_load_status_with_options(prefix):
    path = ck.Checkpoint(a=np.ones(1)).save(prefix)
    status = ck.Checkpoint(a=np.zeros(1)).restore(path, options=ck.CheckpointOptions(verify_checksums=False))
    assert isinstance(status, ck.LoadStatus)
    status.assert_consumed()


def test_save_failure_does_not_advance_save_counter(prefix):
    ckpt = ck.Checkpoint(bad=ck.Module())
    ckpt.bad.x = np.array(["a"], dtype=object)
    with pytest.raises(ck.UnsupportedDtypeError):
        ckpt.save(prefix)
    assert int(ckpt.save_counter) == 0
    del ckpt.bad.x
    assert ckpt.save(prefix) == f"{prefix}-1"


def test_checkpoint_describes_itself(prefix):
    model = ck.Module()
    model.w = np.ones(2)
    model.v = ck.Variable(1.0)
    model.xs = [np.ones(1)]
    path = ck.Checkpoint(model=model).write(prefix)
    index = ck.load_checkpoint(path).index
    assert index.version == fmt.DERIVED_KEYS_VERSION == 6   # (keys that follow from the graph: none stored)
    adapters = {n.type.rsplit(".", 1)[-1]: n.adapter for n in index.nodes}
    assert adapters == {"Checkpoint": "ckptcore.checkpoint", "Module": "ckptcore.module", "ndarray": "ckptcore.numpy",
                        "Variable": "ckptcore.variable", "TrackedList": "ckptcore.container"}
    raw = open(path + ".index", "rb").read()
    assert raw[:8] == b"CKPTIDX1"


def test_paths_under_a_regular_file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    assert ck.latest_checkpoint(str(f)) is None
    with pytest.raises(ck.NotFoundError):
        ck.Checkpoint(a=np.ones(1)).restore(str(f / "ckpt-1"))
    with pytest.raises(ck.NotFoundError):
        ck.load_checkpoint(str(f / "ckpt-1"))
