"""dtypes: every numeric dtype round-trips bit-exactly, in place; unsupported ones fail at save time."""

from __future__ import annotations

import itertools
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import dtypes

KEY = "a/.ATTRIBUTES/VARIABLE_VALUE"

NUMPY_DTYPES = [np.dtype(n) for n in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                      "uint64", "float16", "float32", "float64", "complex64", "complex128")]
NUMPY_DTYPES += [np.dtype(np.longdouble), np.dtype(np.clongdouble)]
ML_NAMES = ["bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz",
            "float8_e3m4", "float8_e4m3", "float8_e8m0fnu", "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn",
            "int2", "int4", "uint2", "uint4"]
ML_DTYPES = [np.dtype(getattr(ml_dtypes, n)) for n in ML_NAMES if hasattr(ml_dtypes, n)]
ALL_DTYPES = NUMPY_DTYPES + ML_DTYPES


def _values(dtype: np.dtype, shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if dtype == np.bool_:
        flat = rng.integers(0, 2, n).astype(bool)
    elif dtype in ML_DTYPES and "int" in dtype.name:
        info = ml_dtypes.iinfo(dtype)
        flat = rng.integers(int(info.min), int(info.max) + 1, n).astype(dtype)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        flat = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    elif dtype.kind == "c":
        flat = (rng.standard_normal(n) * 100 + 1j * rng.standard_normal(n)).astype(dtype)
    else:
        flat = (rng.standard_normal(n) * 4).astype(dtype)
    return flat.reshape(shape)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _native(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder("=")) if a.dtype.byteorder == ">" else a


def test_every_supported_dtype_is_on_the_allowlist():
    for dt in ALL_DTYPES:
        assert dtypes.dtype_from_name(dtypes.dtype_name(dt)) == dt


_counter = itertools.count()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(ALL_DTYPES),
       shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
       seed=st.integers(0, 2**32 - 1),
       layout=st.sampled_from(["contiguous", "strided", "transposed", "big-endian"]))
def test_roundtrip_property(mem_dir, dtype, shape, seed, layout):
    value = _values(dtype, shape, seed)
    if layout == "strided":
        big = np.zeros(tuple(s * 2 for s in shape) or (), dtype)
        idx = tuple(slice(None, None, 2) for _ in shape)
        big[idx] = value
        value = big[idx] if shape else big
    elif layout == "transposed":
        value = np.ascontiguousarray(value.T).T
    elif layout == "big-endian" and dtype in NUMPY_DTYPES and dtype.itemsize > 1 and dtype.kind != "b":
        value = value.astype(dtype.newbyteorder(">"))
    original = value.copy()
    path = ck.Checkpoint(a=value, v=ck.Variable(value)).write(f"{mem_dir}/p{next(_counter)}")
    assert _same_bits(value, original)  # saving does not touch the source

    # numpy array destination: filled in place, same object and buffer
    dest = np.zeros(value.shape, _native(value).dtype)
    buf = dest.__array_interface__["data"][0]
    var = ck.Variable(np.zeros(value.shape, _native(value).dtype))
    ckpt = ck.Checkpoint(a=dest, v=var)
    ckpt.read(path).assert_consumed()
    assert ckpt.a is dest and dest.__array_interface__["data"][0] == buf
    assert _same_bits(dest, _native(original))
    assert _same_bits(var.numpy(), _native(original))
    got = ck.load_checkpoint(path).get_tensor(KEY)
    assert _same_bits(got, _native(original))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_zero_d_and_empty_arrays(mem_dir, dtype):
    scalar = _values(dtype, (), 1)
    empty = np.zeros((0, 3), dtype)
    path = ck.Checkpoint(s=scalar, e=empty).write(f"{mem_dir}/c")
    s2, e2 = np.zeros((), dtype), np.zeros((0, 3), dtype)
    ck.Checkpoint(s=s2, e=e2).read(path).assert_consumed()
    assert _same_bits(s2, scalar) and e2.shape == (0, 3)
    assert ck.list_variables(path) == [("e/.ATTRIBUTES/VARIABLE_VALUE", [0, 3]), ("s/.ATTRIBUTES/VARIABLE_VALUE", [])]


def test_stored_dtype_names(prefix):
    ckpt = ck.Checkpoint(b=np.zeros(1, ml_dtypes.bfloat16), f=np.zeros(1, ml_dtypes.float8_e4m3fn),
                         be=np.zeros(1, ">f4"))
    dmap = ck.load_checkpoint(ckpt.write(prefix)).get_variable_to_dtype_map()
    assert dmap["b/.ATTRIBUTES/VARIABLE_VALUE"] == np.dtype(ml_dtypes.bfloat16)
    assert dmap["f/.ATTRIBUTES/VARIABLE_VALUE"] == np.dtype(ml_dtypes.float8_e4m3fn)
    assert dmap["be/.ATTRIBUTES/VARIABLE_VALUE"] == np.dtype("<f4")  # stored little-endian


def test_data_file_is_little_endian_and_aligned(prefix):
    path = ck.Checkpoint(a=np.array([1], ">i4"), b=np.array([2], "<i4")).write(prefix)
    r = ck.load_checkpoint(path)
    data = open(path + ".data-00000-of-00001", "rb").read()
    for key, value in (("a", 1), ("b", 2)):
        e = r.entry(f"{key}/.ATTRIBUTES/VARIABLE_VALUE")
        assert e.offset % 4 == 0
        assert data[e.offset:e.offset + 4] == value.to_bytes(4, "little")


def test_large_tensors_start_64_byte_aligned_small_ones_at_their_dtype_alignment(prefix):
    big = 1 << 16  # fmt.ALIGNED_TENSOR_BYTES
    arrays = {"i8": np.ones(3, np.int8), "f64": np.ones(3, np.float64), "big": np.ones(big, np.uint8),
              "bf16": np.ones(3, ml_dtypes.bfloat16), "c128": np.ones(1, np.complex128),
              "u": np.array(["ab"]), "big2": np.ones(big // 4 + 1, np.float32), "b": np.ones(1, bool)}
    path = ck.Checkpoint(**arrays).write(prefix)
    r = ck.load_checkpoint(path)
    mapped = np.memmap(path + ".data-00000-of-00001", np.uint8, mode="r")
    for key, a in arrays.items():
        e = r.entry(f"{key}/.ATTRIBUTES/VARIABLE_VALUE")
        want = 64 if a.nbytes >= big else a.dtype.alignment
        assert e.offset % want == 0, (key, e.offset)
        view = mapped[e.offset:e.offset + e.nbytes].view(a.dtype)  # a zero-copy view of the mapped file
        assert view.flags.aligned and (view == a.reshape(-1)).all()
    # no more padding than alignment needs: each tensor starts at the first aligned offset after the last
    placed = sorted((r.entry(f"{k}/.ATTRIBUTES/VARIABLE_VALUE").offset, a) for k, a in arrays.items())
    for (o1, a1), (o2, a2) in zip(placed, placed[1:]):
        want = 64 if a2.nbytes >= big else a2.dtype.alignment
        assert o2 == -(-(o1 + a1.nbytes) // want) * want


def test_restore_into_non_contiguous_destination_in_place(prefix):
    path = ck.Checkpoint(a=np.arange(6.0).reshape(2, 3)).write(prefix)
    base = np.zeros((3, 2))
    view = base.T  # F-ordered view: restored through the view, base changes
    ckpt = ck.Checkpoint(a=view)
    ckpt.read(path).assert_consumed()
    assert ckpt.a is view
    np.testing.assert_array_equal(base, np.arange(6.0).reshape(2, 3).T)


def test_read_only_destination_is_an_error(prefix):
    path = ck.Checkpoint(a=np.ones(2)).write(prefix)
    dest = np.zeros(2)
    dest.flags.writeable = False
    with pytest.raises(ck.CheckpointError, match="read-only"):
        ck.Checkpoint(a=dest).read(path)


@pytest.mark.parametrize("bad", [
    np.array([{"a": 1}, None], dtype=object),
    np.zeros(2, dtype=[("x", "f4"), ("y", "i4")]),
    np.zeros(2, dtype="V8"),
    np.array(["2020-01-01"], dtype="datetime64[D]"),
    np.array([1], dtype="timedelta64[s]"),
], ids=["object", "structured", "void", "datetime64", "timedelta64"])
def test_unsupported_dtypes_fail_at_save_time(tmp_path, bad):
    prefix = str(tmp_path / "ckpt")
    m = ck.Module()
    m.ok = np.ones(1)
    m.bad = bad
    ckpt = ck.Checkpoint(model=m)
    with pytest.raises(ck.UnsupportedDtypeError) as info:
        ckpt.save(prefix)
    assert isinstance(info.value, ck.CheckpointError)
    assert "model/bad" in str(info.value)
    assert not os.path.exists(prefix + "-1.index")  # nothing committed
    assert ck.latest_checkpoint(str(tmp_path)) is None
    with pytest.raises(ck.UnsupportedDtypeError):
        ckpt.write(prefix)


@pytest.mark.parametrize("value", [np.array([b"ab", b"xyz"]), np.array(["héllo", "", "wörld"]),
                                   np.array("scalar"), np.zeros((2, 0), "U3")], ids=["bytes", "unicode", "0d", "empty"])
def test_string_arrays_roundtrip(prefix, value):
    path = ck.Checkpoint(s=value).write(prefix)
    dest = np.zeros(value.shape, value.dtype)
    ck.Checkpoint(s=dest).read(path).assert_consumed()
    np.testing.assert_array_equal(dest, value)
    np.testing.assert_array_equal(ck.load_checkpoint(path).get_tensor("s/.ATTRIBUTES/VARIABLE_VALUE"), value)


# -- shape and dtype mismatches --------------------------------------------------------------

def _model(**attrs):
    m = ck.Module()
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


def test_shape_mismatch_names_path_and_both_shapes(prefix):
    path = ck.Checkpoint(model=_model(w=np.ones((2, 3)))).write(prefix)
    with pytest.raises(ck.ShapeMismatchError) as info:
        ck.Checkpoint(model=_model(w=np.zeros((3, 2)))).read(path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ck.CheckpointError)
    msg = str(info.value)
    assert "model/w" in msg and "(2, 3)" in msg and "(3, 2)" in msg


def test_dtype_mismatch_names_path_and_both_dtypes(prefix):
    path = ck.Checkpoint(model=_model(w=ck.Variable(np.ones(2, np.float32)))).write(prefix)
    with pytest.raises(ck.DtypeMismatchError) as info:
        ck.Checkpoint(model=_model(w=ck.Variable(np.zeros(2, np.float64)))).read(path)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "model/w" in msg and "float32" in msg and "float64" in msg


def test_mismatch_leaves_every_object_unchanged(prefix):
    src = _model(a=np.full(2, 1.0), b=ck.Variable(np.full(3, 2.0)), c=np.full(2, 3.0),
                 sub=_model(d=np.full(1, 4.0)), xs=[np.full(1, 5.0)])
    path = ck.Checkpoint(model=src, counter=ck.Variable(7)).write(prefix)
    # "c" has the wrong shape; objects traversed before and after it must stay as they were
    dst = _model(a=np.zeros(2), b=ck.Variable(np.zeros(3)), c=np.zeros(5),
                 sub=_model(d=np.zeros(1)), xs=[np.zeros(1)])
    counter = ck.Variable(0)
    with pytest.raises(ck.ShapeMismatchError, match="model/c"):
        ck.Checkpoint(model=dst, counter=counter).read(path)
    assert dst.a.tolist() == [0.0, 0.0]
    assert dst.b.numpy().tolist() == [0.0, 0.0, 0.0]
    assert dst.c.tolist() == [0.0] * 5
    assert dst.sub.d.tolist() == [0.0] and dst.xs[0].tolist() == [0.0]
    assert int(counter) == 0


def test_mismatch_in_late_subtree_leaves_it_unchanged(prefix):
    path = ck.Checkpoint(model=_model(sub=_model(a=np.ones(2), b=np.ones(2)))).write(prefix)
    model = ck.Module()
    status = ck.Checkpoint(model=model).read(path)
    sub = _model(a=np.zeros(2), b=np.zeros(4, np.float32))
    with pytest.raises(ValueError) as info:
        model.sub = sub
    assert "model/sub/b" in str(info.value)
    assert sub.a.tolist() == [0.0, 0.0]
    status.expect_partial()


def test_several_mismatches_reported_together(prefix):
    path = ck.Checkpoint(a=np.ones(2), b=np.ones(2)).write(prefix)
    with pytest.raises(ck.ShapeMismatchError, match="2 values do not fit"):
        ck.Checkpoint(a=np.zeros(3), b=np.zeros(4)).read(path)


def test_c_type_aliases_interoperate(mem_dir):
    """int64 saved from a 'q' (long long) array restores into an 'l' (long) array, and so on."""
    pairs = [("q", "l"), ("l", "q"), ("Q", "L"), ("i", "int32"), ("n", "int64"), ("g", "longdouble")]
    for i, (saved, live) in enumerate(pairs):
        a = np.arange(3).astype(saved)
        path = ck.Checkpoint(a=a).write(f"{mem_dir}/alias{i}")
        b = np.zeros(3, live)
        ck.Checkpoint(a=b).read(path).assert_consumed()
        assert b.tolist() == [0, 1, 2]


def test_restore_into_big_endian_array_converts_byte_order(tmp_path):
    # A value saved from a native array restores into a big-endian live array:
    # byte order is layout, not a different dtype.
    path = ck.Checkpoint(a=np.arange(4, dtype=np.float32)).write(str(tmp_path / "c"))
    dest = np.zeros(4, ">f4")
    ck.Checkpoint(a=dest).read(path).assert_consumed()
    assert dest.dtype == np.dtype(">f4")
    assert dest.tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("fmt_name", ["ckptcore", "tensorflow"])
def test_a_masked_array_is_refused_naming_its_path_not_saved_without_its_mask(tmp_path, fmt_name):
    """Before: ckptcore's format saved the data under the mask as if it were values (the mask silently
    gone); TensorFlow's format failed with a bare ValueError from reshape."""
    m = ck.Module()
    m.ok = np.ones(2)
    m.masked = np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False])
    opts = ck.CheckpointOptions(format=fmt_name)
    with pytest.raises(ck.NotTrackableError, match="model/masked.*mask") as info:
        ck.Checkpoint(model=m).write(str(tmp_path / "c"), opts)
    assert "np.ma.getmaskarray" in str(info.value)
    assert not os.path.exists(tmp_path / "c.index")
    # saving data and mask as two arrays, as the message says, round-trips both
    m.masked = m.masked.data.copy()
    m.mask = np.ma.getmaskarray(np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False]))
    path = ck.Checkpoint(model=m).write(str(tmp_path / "c"), opts)
    assert ck.load_checkpoint(path).get_tensor("model/mask/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [False, True, False]


def test_restoring_into_a_masked_array_is_refused():
    """The checkpoint has no mask: the old mask would hide restored values (before: kept, silently)."""
    path = ck.Checkpoint(a=np.arange(3.0)).write("memory://dtypes/masked-dst/c")
    dest = np.ma.array(np.zeros(3), mask=[True, False, False])
    with pytest.raises(ck.CheckpointError, match="masked array"):
        ck.Checkpoint(a=dest).read(path)
    assert dest.data.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("fmt_name", ["ckptcore", "tensorflow"])
def test_other_ndarray_subclasses_save_their_data(tmp_path, fmt_name):
    mm = np.memmap(tmp_path / "raw", dtype=np.int32, mode="w+", shape=(2, 3))
    mm[:] = np.arange(6).reshape(2, 3)
    sub = np.array([[1.0, 2.0]]).view(type("Sub", (np.ndarray,), {}))
    path = ck.Checkpoint(m=sub, mm=mm).write(str(tmp_path / "c"), ck.CheckpointOptions(format=fmt_name))
    r = ck.load_checkpoint(path)
    assert r.get_tensor("m/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [[1.0, 2.0]]
    assert r.get_tensor("mm/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [[0, 1, 2], [3, 4, 5]]
