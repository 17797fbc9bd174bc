"""Live round trips with real TensorFlow (the .venv-tf environment that `make test` builds), both directions.

One TensorFlow subprocess serves the whole module (importing TensorFlow takes seconds): it restores
every checkpoint ckptcore wrote in TensorFlow's format into TensorFlow objects with
``assert_consumed()``, and writes the TensorFlow checkpoints ckptcore then reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import ckptcore as ck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_PYTHON = os.path.join(ROOT, ".venv-tf", "bin", "python")
TF = ck.CheckpointOptions(format="tensorflow")

if not os.path.exists(TF_PYTHON):  # `make test` builds it first (make tf-venv)
    pytest.skip("the TensorFlow oracle environment is missing: run `make tf-venv`", allow_module_level=True)

DTYPES = ["float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16",
          "uint32", "uint64", "bool", "complex64", "complex128"]


def _np_dtype(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _value(name, shape):
    n = int(np.prod(shape))
    if name == "bool":
        return (np.arange(n) % 3 == 0).reshape(shape)
    return (np.arange(n) + 1).astype(_np_dtype(name)).reshape(shape)


def _var(spec_dtype, shape):
    return {"__var__": spec_dtype, "shape": list(shape)}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    d = tmp_path_factory.mktemp("tf-live")
    cases, expected = [], {}

    # nested modules, a list and a dict, through save() (save_counter included)
    m = ck.Module()
    m.dense = ck.Module()
    m.dense.kernel = ck.Variable(_value("float32", (3, 2)))
    m.dense.bias = ck.Variable(_value("float32", (2,)))
    m.blocks = [ck.Variable(_value("int64", (2,))), ck.Variable(_value("float64", ()))]
    m.named = {"alpha": ck.Variable(_value("int32", (1,)))}
    path = ck.Checkpoint(model=m).save(str(d / "nested" / "ckpt"), options=TF)
    spec = {"model": {"dense": {"kernel": _var("float32", (3, 2)), "bias": _var("float32", (2,))},
                      "blocks": [_var("int64", (2,)), _var("float64", ())],
                      "named": {"__map__": {"alpha": _var("int32", (1,))}}}}
    cases.append({"name": "nested", "path": path, "spec": spec})
    expected["nested"] = {"model/dense/kernel": m.dense.kernel.numpy(), "model/blocks/1": m.blocks[1].numpy(),
                          "model/named/alpha": m.named["alpha"].numpy(), "save_counter": np.int64(1)}

    # every dtype, scalars and empty tensors, through write()
    live = {dt: ck.Variable(_value(dt, (2, 3))) for dt in DTYPES}
    live["scalar"] = ck.Variable(np.float32(2.5))
    live["empty"] = ck.Variable(np.zeros((0, 4), np.float32))
    path = ck.Checkpoint(**live).write(str(d / "dtypes" / "ckpt"), options=TF)
    spec = {dt: _var(dt, (2, 3)) for dt in DTYPES}
    spec["scalar"], spec["empty"] = _var("float32", ()), _var("float32", (0, 4))
    cases.append({"name": "dtypes", "path": path, "spec": spec, "read": True})
    expected["dtypes"] = {k: v.numpy() for k, v in live.items()}

    # attributes of the root object: TensorFlow's "/.ATTRIBUTES/..." keys
    root = ck.Module()
    root.w = ck.Variable(_value("float32", (2,)))
    path = ck.Checkpoint(root=root).write(str(d / "root" / "ckpt"), options=TF)
    cases.append({"name": "root", "path": path, "spec": {"w": _var("float32", (2,))}, "read": True})
    expected["root"] = {"w": root.w.numpy()}

    # optimizer slot variables (.OPTIMIZER_SLOT keys, slot_variables in the graph) into a tf.compat.v1 Adam
    from test_tensorflow_read import _ToyOptimizer, _ToyOptimizerWithSlots

    w = ck.Variable(np.array([0.8, 1.6], np.float32))
    opt = _ToyOptimizer()
    opt.saved = {(w, "m"): np.array([0.2, 0.4], np.float32), (w, "v"): np.array([0.004, 0.016], np.float32)}
    model = ck.Module()
    model.w = w
    name = ck.register_adapter(_ToyOptimizer, _ToyOptimizerWithSlots())
    try:
        path = ck.Checkpoint(model=model, optimizer=opt).write(str(d / "slots" / "ckpt"), options=TF)
    finally:
        ck.registry.unregister_plugin(name)
    cases.append({"name": "slots", "path": path, "v1_adam": True, "shape": [2]})
    expected["slots"] = {"w": w.numpy(), "m": opt.saved[(w, "m")], "v": opt.saved[(w, "v")]}

    # the writer side (convert --to tensorflow, CheckpointManager, adapter state): tests/tf_live_writer.py
    import tf_live_writer

    from ckptcore.cli import main

    writer, writer_expected = tf_live_writer.build(d, main)
    expected.update(writer_expected)

    job = d / "job.json"
    job.write_text(json.dumps({"restore": cases, "write": True, "writer": writer}))
    out = d / "out"
    out.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow")
    proc = subprocess.run([TF_PYTHON, os.path.join(ROOT, "tests", "tf_oracle.py"), str(job), str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    return {"out": out, "results": results, "expected": expected}


def _check_restored(oracle, name):
    assert name not in oracle["results"]["errors"], oracle["results"]["errors"].get(name)
    got = np.load(oracle["out"] / f"{name}.npz")
    for key, want in oracle["expected"][name].items():
        assert got[key.replace("model/", "model/", 1)].tobytes() == np.asarray(want).tobytes(), key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nested", "dtypes", "root", "slots"])
def test_tensorflow_restores_what_ckptcore_wrote(oracle, name):
    _check_restored(oracle, name)


@pytest.mark.slow
def test_root_attribute_keys_are_tensorflows(oracle):
    assert oracle["results"]["restore"]["root"]["keys"] == ["/.ATTRIBUTES/w", "_CHECKPOINTABLE_OBJECT_GRAPH"] or \
        "w/.ATTRIBUTES/VARIABLE_VALUE" in oracle["results"]["restore"]["root"]["keys"]


def _written(oracle, name):
    assert name not in oracle["results"]["errors"], oracle["results"]["errors"].get(name)
    return oracle["results"]["write"][name]


@pytest.mark.slow
def test_ckptcore_reads_tensorflows_sharded_checkpoints(oracle):
    info = _written(oracle, "sharded")
    assert sum(f.startswith("ckpt.data-") for f in info["files"]) > 1
    want = np.load(oracle["out"] / "sharded.npz")
    live = {k: ck.Variable(np.zeros(16, np.float32)) for k in want.files}
    ck.Checkpoint(**live).read(info["path"]).assert_consumed()
    for k in want.files:
        np.testing.assert_array_equal(live[k].numpy(), want[k])


@pytest.mark.slow
def test_ckptcore_reads_tensorflows_float8(oracle):
    info = _written(oracle, "float8")
    want = np.load(oracle["out"] / "float8.npz")
    r = ck.load_checkpoint(info["path"])
    assert r.get_tensor("e4m3/.ATTRIBUTES/VARIABLE_VALUE").dtype == np.dtype(ml_dtypes.float8_e4m3fn)
    for k in want.files:
        assert r.get_tensor(f"{k}/.ATTRIBUTES/VARIABLE_VALUE").tobytes() == want[k].tobytes()


@pytest.mark.slow
def test_ckptcore_reads_keras3_model_and_optimizer_variables(oracle):
    info = _written(oracle, "keras3")
    want = np.load(oracle["out"] / "keras3.npz")
    r = ck.load_checkpoint(info["path"])
    keys = sorted(k for k, _ in ck.list_variables(info["path"]))
    assert keys == sorted([*want.files, "_CHECKPOINTABLE_OBJECT_GRAPH"])
    for k in want.files:
        np.testing.assert_array_equal(r.get_tensor(k), want[k])
    # the optimizer's moments restore into a ckptcore structure of the same shape
    kernel, bias = ck.Variable(np.zeros((3, 2), np.float32)), ck.Variable(np.zeros(2, np.float32))
    opt = ck.Module()
    opt._iterations = ck.Variable(np.int64(0))
    opt._learning_rate = ck.Variable(np.float32(0))
    opt._trainable_variables = [kernel, bias]  # shared with the model, as in Keras
    # Keras 3's optimizer variables: iterations, learning rate, then each variable's moments
    opt._variables = [opt._iterations, opt._learning_rate] + [ck.Variable(np.zeros(s, np.float32))
                                                              for s in [(3, 2), (3, 2), (2,), (2,)]]
    ck.Checkpoint(optimizer=opt).read(info["path"]).assert_consumed()
    for i in range(2, 6):
        np.testing.assert_array_equal(opt._variables[i].numpy(),
                                      want[f"optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE"])
    assert int(opt._iterations.numpy()) == 1


@pytest.mark.slow
def test_ckptcore_reads_a_saved_models_variables(oracle):
    info = _written(oracle, "saved_model")
    keys = dict(ck.list_variables(info["path"]))
    key = next(k for k in keys if k.endswith("w/.ATTRIBUTES/VARIABLE_VALUE"))
    assert ck.load_checkpoint(info["path"]).get_tensor(key).tolist() == [1.0, 2.0, 3.0]
    m = ck.Module()
    m.w = ck.Variable(np.zeros(3, np.float32))
    ck.Checkpoint(root=m).read(info["path"]).expect_partial()
    assert m.w.numpy().tolist() == [1.0, 2.0, 3.0]


def _writer(oracle, name):
    assert name not in oracle["results"]["errors"], oracle["results"]["errors"].get(name)
    got = np.load(oracle["out"] / f"{name}.npz")
    for key, want in oracle["expected"][name].items():
        assert got[key.replace("/", "|") if name == "convert_flat" else key].tobytes() == \
            np.asarray(want).tobytes(), key
    return oracle["results"]["writer"][name]


@pytest.mark.slow
def test_tensorflow_restores_a_converted_checkpoint_and_sees_adapter_state(oracle):
    """convert --to tensorflow: TF's object graph (TF restores the objects); the state is an attribute TF reports."""
    import tf_live_writer

    seen = _writer(oracle, "convert_graph")
    assert "model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE" in seen["keys"]
    assert "opt/.ATTRIBUTES/CKPTCORE_STATE" in seen["keys"]
    assert json.loads(seen["strings"]["opt/.ATTRIBUTES/CKPTCORE_STATE"]) == tf_live_writer.STATE
    # assert_consumed names the one attribute a TF object at that path has no use for; every object matched
    # (assert_existing_objects_matched passed in the oracle) and every variable was restored (above)
    assert "Unused attributes" in seen["assert_consumed"] and "CKPTCORE_STATE" in seen["assert_consumed"]


@pytest.mark.slow
def test_tensorflow_restores_a_multi_worker_checkpoint(oracle):
    """Three workers' data shards and one merged index: TF's own multi-worker layout, restored by TF."""
    assert _writer(oracle, "multi")["assert_consumed"] is None


@pytest.mark.slow
def test_tensorflow_reads_a_converted_safetensors_file_by_name(oracle):
    seen = _writer(oracle, "convert_flat")
    assert seen["keys"] == ["encoder/layers/0/bias", "encoder/layers/0/weight", "head"]


@pytest.mark.slow
def test_tensorflow_sees_a_ckptcore_managers_checkpoints_and_ckptcore_sees_tensorflows(oracle):
    seen = _writer(oracle, "manager")
    d = next(c["directory"] for c in json.loads((oracle["out"].parent / "job.json").read_text())["writer"]
             if c["name"] == "manager")
    assert seen["latest"] == os.path.join(d, "ckpt-3")
    assert seen["all"] == [os.path.join(d, "ckpt-2"), os.path.join(d, "ckpt-3")]
    assert len(seen["timestamps"]) == 2
    assert seen["manager_latest"] == seen["latest"] and seen["manager_checkpoints"] == seen["all"]
    # TF's manager saved ckpt-10 and, keeping 2, deleted ckpt-2: ckptcore's manager sees exactly that
    assert seen["after_tf_save"] == ["ckpt-3", "ckpt-10"]
    w = ck.Variable(np.zeros(3, np.float32))
    m = ck.Module()
    m.w = w
    manager = ck.CheckpointManager(ck.Checkpoint(model=m), d, max_to_keep=2)
    assert manager.checkpoints == [os.path.join(d, "ckpt-3"), os.path.join(d, "ckpt-10")]
    assert manager.restore_or_initialize() == os.path.join(d, "ckpt-10")
    assert w.numpy().tolist() == [4.0, 4.0, 4.0]
    assert manager.save(checkpoint_number=11, options=TF) == os.path.join(d, "ckpt-11")
    assert [os.path.basename(p) for p in manager.checkpoints] == ["ckpt-10", "ckpt-11"]
    assert not os.path.exists(os.path.join(d, "ckpt-3.index"))


@pytest.mark.slow
def test_ckptcore_reads_tensorflows_sliced_variables_and_strings_as_tensorflow_does(oracle):
    # TF's own list_variables and get_tensor, key for key and byte for byte: a variable its size policy cut
    # into slices across shards, a string tensor, and a TF1 partitioned variable (tf.compat.v1 partitioner)
    info = _written(oracle, "sliced")
    assert len(info["shards"]) > 2
    for path in (info["tf2"], info["tf1"]):
        want = info["read"][path]
        assert dict(ck.list_variables(path)) == want["keys"]
        r = ck.load_checkpoint(path)
        for key, raw in want["values"].items():
            got = r.get_tensor(key)
            if isinstance(got, bytes):
                assert got.hex() == raw, key
            elif got.dtype == object:
                assert [x.hex() for x in got.ravel()] == raw, key
            else:
                assert got.tobytes().hex() == raw and got.dtype.name == want["dtypes"][key], key
        assert r.verify() > 0
    big = ck.Variable(np.zeros((37, 6), np.float32))
    words = np.empty(3, object)
    n = np.zeros(5, np.int16)
    ck.Checkpoint(big=big, words=words, n=n).read(info["tf2"]).assert_consumed()
    assert big.numpy().tobytes().hex() == info["read"][info["tf2"]]["values"]["big/.ATTRIBUTES/VARIABLE_VALUE"]
    assert words.tolist() == [b"xxx", b"", b"\x00yz"]


def test_oracle_script_is_plain_python():
    # the oracle runs in another environment: it must not import ckptcore
    with open(os.path.join(ROOT, "tests", "tf_oracle.py")) as f:
        assert "import ckptcore" not in f.read()
    assert sys.executable != TF_PYTHON
