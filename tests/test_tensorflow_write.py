"""CheckpointOptions(format="tensorflow"): TensorBundle checkpoints, checked against TF-written golden files."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ckptcore as ck

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tf")
TF = ck.CheckpointOptions(format="tensorflow")


def _nested():
    """The same objects as the golden file tf2_nested (tests/fixtures/tf/make_fixtures.py), in ckptcore."""
    m = ck.Module()
    m.dense = ck.Module()
    m.dense.kernel = ck.Variable(np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    m.dense.bias = ck.Variable(np.arange(1, 4, dtype=np.float32))
    m.layers = [ck.Variable(np.arange(1, 3, dtype=np.int64)), ck.Variable(np.float64(1))]
    m.table = {"alpha": ck.Variable(np.array([1], np.int32))}
    return m


def test_files_are_byte_identical_to_tensorflows(tmp_path):
    path = ck.Checkpoint(model=_nested()).save(str(tmp_path / "ckpt"), options=TF)
    golden = os.path.join(FIXTURES, "tf2_nested")
    for name in ("ckpt-1.index", "ckpt-1.data-00000-of-00001", "checkpoint"):
        with open(os.path.join(golden, name), "rb") as f:
            assert (tmp_path / name).read_bytes() == f.read(), name
    assert path == str(tmp_path / "ckpt-1")


def test_tensorflow_format_round_trips_through_ckptcore(tmp_path):
    src = _nested()
    path = ck.Checkpoint(model=src).write(str(tmp_path / "w"), options=TF)
    assert ck.load_checkpoint(path).format.name == "tensorflow"
    dst = _nested()
    for v in (dst.dense.kernel, dst.dense.bias):
        v.assign(np.zeros_like(v.numpy()))
    ck.Checkpoint(model=dst).read(path).assert_consumed()
    assert dst.dense.kernel.numpy().tolist() == src.dense.kernel.numpy().tolist()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16", "int8", "uint64", "bool",
                                   "complex128", "float8_e4m3fn", "float8_e5m2", "int4"])
def test_every_tensorflow_dtype_round_trips(tmp_path, dtype):
    import ml_dtypes

    dt = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    value = np.arange(6).reshape(2, 3).astype(dt)
    path = ck.Checkpoint(v=ck.Variable(value)).write(str(tmp_path / "d"), options=TF)
    got = ck.load_checkpoint(path).get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE")
    assert got.dtype == dt and got.tobytes() == value.tobytes()


def test_what_tensorflow_cannot_hold_is_refused_not_dropped(tmp_path):
    refused = r"'s/\.ATTRIBUTES/VARIABLE_VALUE' has dtype U3.*object array of bytes"
    with pytest.raises(ck.CheckpointError, match=refused):
        ck.Checkpoint(s=np.array(["abc"])).write(str(tmp_path / "s"), options=TF)
    assert not (tmp_path / "s.index").exists()


def test_unknown_format_name_fails_where_the_options_are_made():
    with pytest.raises(ck.CheckpointError, match="tensorflow"):
        ck.CheckpointOptions(format="tensorflw")
    with pytest.raises(TypeError):
        ck.CheckpointOptions(format=1)


def test_the_default_format_is_ckptcores(tmp_path):
    path = ck.Checkpoint(a=np.ones(1)).write(str(tmp_path / "c"))
    assert (tmp_path / "c.index").read_bytes()[:8] == b"CKPTIDX1"
    assert ck.load_checkpoint(path).format.name == "ckptcore"


def test_a_failed_tensorflow_save_leaves_no_index(tmp_path, monkeypatch):
    from ckptcore.formats.tensorbundle import writer

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "encode_index", boom)
    with pytest.raises(OSError):
        ck.Checkpoint(a=ck.Variable(np.ones(2))).write(str(tmp_path / "c"), options=TF)
    assert not (tmp_path / "c.index").exists()


def _rooted():
    """The objects of the golden file tests/fixtures/tf_root_edge (Checkpoint(root=m, w=w)), in ckptcore."""
    m = ck.Module()
    m.v = ck.Variable(np.float32(1.0))
    m.a = ck.Variable(np.float32(3.0))
    return m, ck.Variable(np.float32(2.0))


def test_a_checkpoint_with_root_has_tensorflows_root_self_edge_and_identical_files(tmp_path):
    m, w = _rooted()
    path = ck.Checkpoint(root=m, w=w).write(str(tmp_path / "ckpt"), options=TF)
    golden = os.path.join(os.path.dirname(__file__), "fixtures", "tf_root_edge")
    for name in ("ckpt.index", "ckpt.data-00000-of-00001"):
        with open(os.path.join(golden, name), "rb") as f:
            assert (tmp_path / name).read_bytes() == f.read(), name
    m2, w2 = ck.Module(), ck.Variable(np.float32(0.0))
    m2.v, m2.a = ck.Variable(np.float32(0.0)), ck.Variable(np.float32(0.0))
    ck.Checkpoint(root=m2, w=w2).read(path).assert_consumed()
    assert (float(m2.v.numpy()), float(m2.a.numpy()), float(w2.numpy())) == (1.0, 3.0, 2.0)
    assert not ck.has_pending(m2)


def test_the_root_self_edge_is_tensorflows_only_not_in_ckptcores_format(tmp_path):
    m, w = _rooted()
    path = ck.Checkpoint(root=m, w=w).write(str(tmp_path / "native"))
    reader = ck.load_checkpoint(path)
    assert not any(k.startswith("root/") for k in reader.keys())
    assert [name for name, _ in reader.index.graph.children(0)] == ["v", "a", "w"]


def _strings():
    return dict(v=ck.Variable(np.array([b"a", b"bc", b""], dtype=object)),
                m=ck.Variable(np.array([[b"x" * 300], [b"\x00\xff"]], dtype=object)),
                s=ck.Variable(np.array(b"scalar", dtype=object)))


def test_string_variables_are_written_as_tensorflows_string_tensors(tmp_path):
    # TensorFlow's tf.Variable([b"a", ...]) is a DT_STRING tensor; ckptcore's object arrays of bytes are
    # written the same, byte for byte (tests/fixtures/tf_strings is TensorFlow's own file)
    path = ck.Checkpoint(**_strings()).write(str(tmp_path / "ckpt"), options=TF)
    golden = os.path.join(os.path.dirname(__file__), "fixtures", "tf_strings")
    for name in ("ckpt.index", "ckpt.data-00000-of-00001"):
        with open(os.path.join(golden, name), "rb") as f:
            assert (tmp_path / name).read_bytes() == f.read(), name
    live = {k: ck.Variable(np.full(v.numpy().shape, b"?", dtype=object)) for k, v in _strings().items()}
    ck.Checkpoint(**live).read(path).assert_consumed()
    for k, v in _strings().items():
        assert live[k].numpy().tolist() == v.numpy().tolist(), k


def test_string_variables_are_refused_in_ckptcores_format_naming_the_fix(tmp_path):
    with pytest.raises(ck.UnsupportedDtypeError, match=r"cannot save v .*object array.*format='tensorflow'"):
        ck.Checkpoint(v=_strings()["v"]).write(str(tmp_path / "native"))
    assert not list(tmp_path.iterdir())


def test_str_elements_are_refused_in_tensorflows_format_not_silently_turned_into_bytes(tmp_path):
    with pytest.raises(ck.UnsupportedDtypeError, match=r"cannot save v .*elements of type str.*encode"):
        ck.Checkpoint(v=np.array(["a", "bc"], dtype=object)).write(str(tmp_path / "s"), options=TF)
    assert not (tmp_path / "s.index").exists()
