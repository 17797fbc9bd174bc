"""The streaming TensorBundle writer (BundleWriter): one tensor at a time, TF's layout, ckptcore's commit protocol."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.formats.tensorbundle import writer as tfw
from ckptcore.formats.tensorbundle.writer import BundleWriter
from ckptcore.storage import open_storage

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tf")


def _open(path):
    return open_storage(str(path))


def test_streamed_entries_give_tensorflows_bytes_for_the_golden_checkpoint(tmp_path):
    """Adding the golden checkpoint's tensors one by one, from functions, gives TF's index and data bytes."""
    golden = os.path.join(FIXTURES, "tf2_nested", "ckpt-1")
    m = ck.Module()
    m.dense = ck.Module()
    m.dense.kernel = ck.Variable(np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    m.dense.bias = ck.Variable(np.arange(1, 4, dtype=np.float32))
    m.layers = [ck.Variable(np.arange(1, 3, dtype=np.int64)), ck.Variable(np.float64(1))]
    m.table = {"alpha": ck.Variable(np.array([1], np.int32))}
    ckpt = ck.Checkpoint(model=m)
    ckpt.save_counter.assign(1)
    from ckptcore.save import plan_save

    root, extra = ckpt._ck_graph()
    plan = plan_save(root, extra)
    keys = [e.key for e, _ in plan.tensors]
    storage, prefix = _open(tmp_path / "ckpt-1")
    with BundleWriter(storage, prefix) as w:
        for (entry, arr) in plan.tensors:
            w.add(entry.key, entry.dtype, arr.shape, lambda a=arr: a.copy())
        w.commit(tfw.object_graph(plan.graph, keys, plan.full_names))
    for suffix in (".index", ".data-00000-of-00001"):
        with open(golden + suffix, "rb") as f:
            assert (tmp_path / ("ckpt-1" + suffix)).read_bytes() == f.read(), suffix


def test_chunks_bytes_and_arrays_write_the_same_files(tmp_path):
    value = np.arange(1000, dtype=np.float64)
    raw = value.tobytes()
    outs = []
    for i, data in enumerate([value, raw, memoryview(raw), (raw[k:k + 333] for k in range(0, len(raw), 333)),
                              lambda: value]):
        storage, prefix = _open(tmp_path / f"c{i}")
        with BundleWriter(storage, prefix) as w:
            w.add("x", "float64", (1000,), data)
            w.commit()
        outs.append(((tmp_path / f"c{i}.index").read_bytes(), (tmp_path / f"c{i}.data-00000-of-00001").read_bytes()))
    assert all(o == outs[0] for o in outs)
    assert ck.load_checkpoint(str(tmp_path / "c3")).get_tensor("x").tolist() == value.tolist()


def test_wrong_sizes_duplicate_keys_and_tf_less_dtypes_are_errors_that_leave_nothing(tmp_path):
    storage, prefix = _open(tmp_path / "bad")
    cases = [
        (lambda w: w.add("x", "float32", (3,), np.zeros(2, np.float32)), r"'x': 8 bytes given for a shape of \[3\]"),
        (lambda w: w.add("x", "float32", (1,), (b"\0" * 4 for _ in range(2))), r"'x': 8 bytes given"),
        (lambda w: (w.add("x", "int8", (), b"\1"), w.add("x", "int8", (), b"\1")), "added twice"),
        (lambda w: w.add("_CHECKPOINTABLE_OBJECT_GRAPH", "int8", (), b"\1"), "reserves"),
        (lambda w: w.add("f4", "float4_e2m1fn", (2,), b"\0\0"), "TensorFlow checkpoints cannot hold"),
        (lambda w: w.add("s", "string", (2,), [b"a"]), "1 string elements for a shape of 2"),
        (lambda w: w.add("s", "string", (), [3]), "must be bytes or str"),
    ]
    for act, msg in cases:
        with pytest.raises(ck.CheckpointError, match=msg):
            with BundleWriter(storage, prefix) as w:
                act(w)
                w.commit()
        assert sorted(os.listdir(tmp_path)) == [], msg  # no index, no data file, no temporary file


def test_a_failing_producer_uncommits_the_checkpoint_it_replaces(tmp_path):
    p = ck.Checkpoint(w=ck.Variable(np.ones(2))).write(str(tmp_path / "c"), options=ck.CheckpointOptions(
        format="tensorflow"))
    storage, prefix = _open(p)

    def boom():
        raise OSError("source went away")

    with pytest.raises(OSError, match="went away"):
        with BundleWriter(storage, prefix) as w:
            w.add("a", "float32", (1,), np.ones(1, np.float32))
            w.add("b", "float32", (1,), boom)
            w.commit()
    # the old checkpoint's index went first (it must never describe new data); nothing new was committed
    assert not (tmp_path / "c.index").exists()
    with pytest.raises(ck.NotFoundError):
        ck.load_checkpoint(p)


def test_index_failure_leaves_no_index_and_no_data(tmp_path, monkeypatch):
    storage, prefix = _open(tmp_path / "c")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tfw, "encode_index", boom)
    with pytest.raises(OSError, match="disk full"):
        with BundleWriter(storage, prefix) as w:
            w.add("a", "float32", (1,), np.ones(1, np.float32))
            w.commit()
    assert os.listdir(tmp_path) == []


def test_string_tensors_are_laid_out_as_tensorflows():
    data, crc = tfw.string_tensor([b"ab", b"", b"xyz"])
    assert data[:3] == b"\x02\x00\x03" and data[7:] == b"abxyz"
    # the same layout as the scalar the object graph uses, and a checksum over lengths, their checksum, bytes
    one, one_crc = tfw.string_tensor([b"abc"])
    assert (one, one_crc) == tfw.string_scalar(b"abc")
    assert crc != one_crc


def test_memory_is_bounded_by_the_largest_tensor(tmp_path):
    """Eight 2 MiB tensors produced one at a time: the writer holds one, not the 16 MiB checkpoint."""
    storage, prefix = _open(tmp_path / "big")
    with BundleWriter(*_open(tmp_path / "warm")) as w:  # first use imports protobuf: not the writer's memory
        w.add("a", "int8", (1,), b"\1")
        w.commit(b"")
    tracemalloc.start()
    try:
        with BundleWriter(storage, prefix) as w:
            for i in range(8):
                w.add(f"t{i}", "float64", (1 << 18,), lambda i=i: np.full(1 << 18, i, np.float64))
            w.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * (2 << 20), peak
    assert ck.load_checkpoint(str(tmp_path / "big")).get_tensor("t7")[0] == 7


def test_fsspec_storage_and_progress(tmp_path):
    got = []
    storage, prefix = open_storage("memory://c12w/stream/ckpt")
    with BundleWriter(storage, prefix, progress=got.append) as w:
        w.add("a", "int16", (3,), np.arange(3, dtype=np.int16))
        w.add("b", "uint8", (0,), b"")
        size = w.commit()
    assert sum(got) == 6 and size == 6
    r = ck.load_checkpoint("memory://c12w/stream/ckpt")
    assert r.get_tensor("a").tolist() == [0, 1, 2] and r.get_tensor("b").shape == (0,)


DTYPES = ["float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16",
          "uint32", "uint64", "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensors=st.dictionaries(st.text("abc/._", min_size=1, max_size=6).filter(lambda k: k != "/"),
                               st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3),
                                         st.integers(0, 2 ** 31)),
                               min_size=1, max_size=6),
       chunk=st.integers(1, 64))
def test_any_tensors_in_any_order_read_back_bit_exactly(tmp_path_factory, tensors, chunk):
    from ckptcore.dtypes import dtype_from_name

    d = tmp_path_factory.mktemp("prop")
    want = {}
    for key, (dtype, shape, seed) in tensors.items():
        dt = dtype_from_name(dtype)
        raw = np.random.default_rng(seed).integers(0, 256, int(np.prod(shape)) * dt.itemsize, np.uint8)
        if dtype == "bool":
            raw = raw % 2
        want[key] = raw.view(dt).reshape(shape)
    storage, prefix = _open(d / "c")
    with BundleWriter(storage, prefix) as w:
        for key, arr in want.items():
            b = arr.tobytes()
            w.add(key, arr.dtype.name if arr.dtype.name in DTYPES else tensors[key][0], arr.shape,
                  (b[i:i + chunk] for i in range(0, len(b), chunk)))
        w.commit()
    r = ck.load_checkpoint(str(d / "c"))
    r.verify()
    assert sorted(k for k, _ in ck.list_variables(str(d / "c"))) == sorted(want)
    for key, arr in want.items():
        got = r.get_tensor(key)
        assert got.shape == arr.shape and got.tobytes() == arr.tobytes(), key
