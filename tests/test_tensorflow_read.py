"""TensorFlow checkpoints read without TensorFlow: golden files written by real TF (tests/fixtures/tf)."""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

import ckptcore as ck

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tf")
with open(os.path.join(FIXTURES, "expected.json")) as _f:
    EXPECTED = json.load(_f)


def _fixture(name: str) -> str:
    return os.path.join(FIXTURES, EXPECTED[name]["path"])


def _values(info) -> np.ndarray:
    dt = np.dtype(ml_dtypes.bfloat16) if info["dtype"] == "bfloat16" else np.dtype(info["dtype"])
    data = info["data"]
    if dt.kind == "c":
        arr = np.array(data[0]) + 1j * np.array(data[1])
    else:
        arr = np.array(data)
    return arr.astype(dt).reshape(info["shape"])


def test_list_variables_matches_tensorflow():
    # TensorFlow's list, _CHECKPOINTABLE_OBJECT_GRAPH included
    for name in ("tf2_nested", "tf1_saver"):
        assert dict(ck.list_variables(_fixture(name))) == EXPECTED[name]["keys"]


def test_every_dtype_reads_bit_exact():
    r = ck.load_checkpoint(_fixture("tf2_dtypes"))
    for name, info in EXPECTED["tf2_dtypes"]["values"].items():
        got = r.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")
        want = _values(info)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name


def test_every_dtype_restores_into_variables():
    live = {name: ck.Variable(np.zeros(info["shape"], _values(info).dtype))
            for name, info in EXPECTED["tf2_dtypes"]["values"].items()}
    ck.Checkpoint(**live).read(_fixture("tf2_dtypes")).assert_consumed()
    for name, info in EXPECTED["tf2_dtypes"]["values"].items():
        assert live[name].numpy().tobytes() == _values(info).tobytes(), name


def _nested(value=0):
    m = ck.Module()
    m.dense = ck.Module()
    m.dense.kernel = ck.Variable(np.full((2, 3), value, np.float32))
    m.dense.bias = ck.Variable(np.full(3, value, np.float32))
    m.layers = [ck.Variable(np.zeros(2, np.int64)), ck.Variable(np.float64(0))]
    m.table = {"alpha": ck.Variable(np.zeros(1, np.int32))}
    return m


def test_tf2_object_graph_restores_nested_modules_lists_and_dicts():
    m = _nested()
    ckpt = ck.Checkpoint(model=m)
    ckpt.restore(_fixture("tf2_nested")).assert_consumed()
    assert m.dense.kernel.numpy().tolist() == [[1, 2, 3], [4, 5, 6]]
    assert m.layers[0].numpy().tolist() == [1, 2]
    assert float(m.layers[1].numpy()) == 1.0
    assert m.table["alpha"].numpy().tolist() == [1]
    assert int(ckpt.save_counter) == 1


def test_tf2_restore_waits_for_objects_created_later():
    m = ck.Module()
    status = ck.Checkpoint(model=m).restore(_fixture("tf2_nested"))
    m.dense = ck.Module()
    m.dense.kernel = ck.Variable(np.zeros((2, 3), np.float32))
    assert m.dense.kernel.numpy()[1, 2] == 6
    with pytest.raises(AssertionError):
        status.assert_consumed()
    status.expect_partial()


def test_tf2_shape_mismatch_names_the_object():
    m = _nested()
    m.dense.kernel = ck.Variable(np.zeros((3, 3), np.float32))
    with pytest.raises(ck.ShapeMismatchError, match="dense/kernel"):
        ck.Checkpoint(model=m).restore(_fixture("tf2_nested"))


def test_latest_checkpoint_and_manager_read_tensorflows_state_file(tmp_path):
    d = tmp_path / "run"
    shutil.copytree(os.path.dirname(_fixture("tf2_nested")), d)
    assert ck.latest_checkpoint(str(d)) == str(d / "ckpt-1")
    manager = ck.CheckpointManager(ck.Checkpoint(model=_nested()), str(d), max_to_keep=3)
    assert manager.latest_checkpoint == str(d / "ckpt-1")
    m = _nested()
    ck.Checkpoint(model=m).restore(str(d)).assert_consumed()  # a directory restores its latest
    assert m.dense.bias.numpy().tolist() == [1, 2, 3]


def test_absolute_paths_in_tensorflows_state_file(tmp_path):
    d = tmp_path / "run"
    shutil.copytree(os.path.dirname(_fixture("tf1_saver")), d)
    (d / "checkpoint").write_text(f'model_checkpoint_path: "{d}/model.ckpt-7"\n'
                                  f'all_model_checkpoint_paths: "{d}/model.ckpt-7"\n')
    assert ck.latest_checkpoint(str(d)) == str(d / "model.ckpt-7")


def test_garbage_state_file_is_corrupt(tmp_path):
    (tmp_path / "checkpoint").write_bytes(b"model_checkpoint_path: \x00\xff not text")
    with pytest.raises(ck.CorruptCheckpointError, match="checkpoint"):
        ck.latest_checkpoint(str(tmp_path))


def test_tf1_saver_restores_by_object_path():
    m = ck.Module()
    m.dense = ck.Module()
    m.dense.kernel = ck.Variable(np.zeros((2, 3), np.float32))
    m.dense.bias = ck.Variable(np.zeros(3, np.float32))
    m.global_step = ck.Variable(np.int64(0))
    ck.Checkpoint(root=m).restore(_fixture("tf1_saver")).assert_consumed()
    assert m.dense.kernel.numpy().tolist() == [[1, 2, 3], [4, 5, 6]]
    assert int(m.global_step.numpy()) == 7


def test_corrupt_tensor_bytes_name_the_key(tmp_path):
    d = tmp_path / "c"
    shutil.copytree(os.path.dirname(_fixture("tf2_nested")), d)
    data = d / "ckpt-1.data-00000-of-00001"
    r = ck.load_checkpoint(str(d / "ckpt-1"))
    e = r.entry("model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    raw = bytearray(data.read_bytes())
    raw[e.offset] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(ck.CorruptCheckpointError, match="model/dense/kernel") as err:
        ck.Checkpoint(model=_nested()).restore(str(d / "ckpt-1"))
    assert err.value.key == "model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"


def test_tensorflow_page_examples_run(tmp_path, monkeypatch):
    import re

    page = os.path.join(os.path.dirname(__file__), "..", "docs", "tensorflow.md")
    with open(page) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert blocks
    monkeypatch.chdir(os.path.join(os.path.dirname(__file__), ".."))
    for code in blocks:
        exec(compile(code, "docs/tensorflow.md", "exec"), {})


def test_tf1_saver_restores_variables_by_name_anywhere():
    kernel = ck.Variable(np.zeros((2, 3), np.float32), name="dense/kernel")
    bias = ck.Variable(np.zeros(3, np.float32), name="dense/bias:0")  # a TF variable's name, with its output index
    step = ck.Variable(np.int64(0), name="global_step")
    holder = ck.Module()
    holder.weights = [kernel, bias]
    ckpt = ck.Checkpoint(net=holder, step=step)
    status = ckpt.restore(_fixture("tf1_saver"))
    assert kernel.numpy().tolist() == [[1, 2, 3], [4, 5, 6]]
    assert bias.numpy().tolist() == [1, 2, 3]
    assert int(step.numpy()) == 7
    status.assert_consumed()


def test_tf1_name_match_checks_the_shape():
    kernel = ck.Variable(np.zeros((3, 3), np.float32), name="dense/kernel")
    with pytest.raises(ck.ShapeMismatchError, match="dense/kernel"):
        ck.Checkpoint(k=kernel).restore(_fixture("tf1_saver"))


def test_import_and_own_checkpoints_need_no_protobuf(tmp_path):
    import subprocess
    import sys

    code = ("import sys, numpy as np, ckptcore as ck\n"
            f"p = ck.Checkpoint(a=np.ones(1)).write({str(tmp_path / 'c')!r})\n"
            "ck.Checkpoint(a=np.zeros(1)).read(p).assert_consumed()\n"
            "assert not [m for m in sys.modules if m.startswith(('google.protobuf', 'cramjam'))], 'eager import'\n"
            f"ck.list_variables({_fixture('tf2_nested')!r})\n"
            "assert 'google.protobuf' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class _ToyOptimizer:
    """An optimizer with TF-style slots (``m``/``v`` per variable) and two scalar variables."""

    def __init__(self):
        self.beta1_power = ck.Variable(np.float32(0))
        self.beta2_power = ck.Variable(np.float32(0))
        self.slots: dict = {}


class _ToyOptimizerAdapter(ck.Adapter):
    name = "tests.toy_optimizer"

    def children(self, obj):
        return [("beta1_power", obj.beta1_power), ("beta2_power", obj.beta2_power)]

    def restore_slot(self, obj, variable, name, value):
        obj.slots[(id(variable), name)] = np.array(value)


def test_tensorflows_slot_variables_become_the_optimizers_slots():
    name = ck.register_adapter(_ToyOptimizer, _ToyOptimizerAdapter())
    try:
        m = ck.Module()
        m.w = ck.Variable(np.zeros(2, np.float32))
        opt = _ToyOptimizer()
        ck.Checkpoint(model=m, optimizer=opt).read(_fixture("tf2_slots")).assert_consumed()
    finally:
        ck.registry.unregister_plugin(name)
    want = EXPECTED["tf2_slots"]
    assert m.w.numpy().tolist() == want["w"]
    for slot in ("m", "v"):
        assert opt.slots[(id(m.w), slot)].tolist() == pytest.approx(want["slots"][slot])
    assert float(opt.beta1_power.numpy()) == pytest.approx(0.9 ** 2)


def test_slot_keys_are_tensorflows():
    keys = [k for k, _ in ck.list_variables(_fixture("tf2_slots"))]
    assert "model/w/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE" in keys


class _ToyOptimizerWithSlots(_ToyOptimizerAdapter):
    def slots(self, obj):
        return [ck.SlotVariable(variable=var, name=n, value=v) for (var, n), v in obj.saved.items()]


def test_slots_written_in_tensorflows_format_have_tensorflows_keys(tmp_path):
    m = ck.Module()
    m.w = ck.Variable(np.array([0.8, 1.6], np.float32))
    opt = _ToyOptimizer()
    opt.saved = {(m.w, "m"): np.array([0.2, 0.4], np.float32), (m.w, "v"): np.array([0.004, 0.016], np.float32)}
    name = ck.register_adapter(_ToyOptimizer, _ToyOptimizerWithSlots())
    try:
        path = ck.Checkpoint(model=m, optimizer=opt).write(str(tmp_path / "s"),
                                                           options=ck.CheckpointOptions(format="tensorflow"))
        assert sorted(k for k, _ in ck.list_variables(path)) == \
            sorted(k for k, _ in ck.list_variables(_fixture("tf2_slots")))
        m2 = ck.Module()
        m2.w = ck.Variable(np.zeros(2, np.float32))
        opt2 = _ToyOptimizer()
        ck.Checkpoint(model=m2, optimizer=opt2).read(path).assert_consumed()
    finally:
        ck.registry.unregister_plugin(name)
    assert opt2.slots[(id(m2.w), "v")].tolist() == pytest.approx([0.004, 0.016])


SHARED = os.path.join(os.path.dirname(__file__), "fixtures", "tf_shared")


def test_a_variable_tensorflow_stores_once_for_several_edges_restores_into_the_shared_object():
    # tests/fixtures/tf_shared/ckpt (TF 2.21): one variable reached as alias, model/a, model/b, model/inner/c
    path = os.path.join(SHARED, "ckpt")
    assert [k for k, _ in ck.list_variables(path)] == [
        "_CHECKPOINTABLE_OBJECT_GRAPH", "alias/.ATTRIBUTES/VARIABLE_VALUE", "model/own/.ATTRIBUTES/VARIABLE_VALUE"]
    shared = ck.Variable(np.zeros(3, np.float32))
    m = ck.Module()
    m.a = m.b = shared
    m.inner = ck.Module()
    m.inner.c = shared
    m.own = ck.Variable(np.zeros(1, np.float32))
    ck.Checkpoint(model=m, alias=shared).read(path).assert_consumed()
    assert shared.numpy().tolist() == [1.0, 2.0, 3.0] and m.own.numpy().tolist() == [7.0]
    # built later, through the other edges only: the shared node's value reaches the object on any of them
    late = ck.Checkpoint()
    status = late.read(path)
    late.model = m2 = ck.Module()
    m2.inner = ck.Module()
    m2.inner.c = ck.Variable(np.zeros(3, np.float32))
    assert m2.inner.c.numpy().tolist() == [1.0, 2.0, 3.0]
    status.expect_partial()


def test_a_saved_models_variables_bundle_reads_without_tensorflow():
    # tests/fixtures/tf_shared/saved_model/variables/variables: the bundle of tf.saved_model.save (TF 2.21)
    path = os.path.join(SHARED, "saved_model", "variables", "variables")
    assert dict(ck.list_variables(path))["layer/k/.ATTRIBUTES/VARIABLE_VALUE"] == [1, 2]
    m = ck.Module()
    m.w = ck.Variable(np.zeros(3, np.float32))
    m.layer = ck.Module()
    m.layer.k = ck.Variable(np.zeros((1, 2), np.float32))
    ck.Checkpoint(root=m).read(path).assert_existing_objects_matched()
    assert m.w.numpy().tolist() == [1.0, 2.0, 3.0] and m.layer.k.numpy().tolist() == [[4.0, 5.0]]
