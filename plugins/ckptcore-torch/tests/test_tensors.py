"""Tensors and parameters: restored in place, every dtype, on their own device; modules' keys."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptcore as ck

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16,
          torch.int32, torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2]


def _values(dtype, shape, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=dtype)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 4).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=g, dtype=dtype)


def _bits(t):
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.int64}
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(ints[t.element_size()])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtype_round_trip_in_place(dtype, prefix):
    src = _values(dtype, (3, 5), 1)
    path = ck.Checkpoint(t=src).write(prefix)
    dst = torch.zeros((3, 5), dtype=dtype)
    ptr = dst.data_ptr()
    ck.Checkpoint(t=dst).read(path).assert_consumed()
    assert dst.data_ptr() == ptr and dst.dtype == dtype
    assert torch.equal(_bits(dst), _bits(src))  # bit for bit, NaN payloads included


def test_stored_dtype_names(prefix):
    path = ck.Checkpoint(a=torch.zeros(2, dtype=torch.bfloat16), b=torch.zeros(2, dtype=torch.float8_e4m3fn),
                         c=torch.zeros(2, dtype=torch.int16)).write(prefix)
    dtypes = ck.load_checkpoint(path).get_variable_to_dtype_map()
    assert dtypes["a/.ATTRIBUTES/VARIABLE_VALUE"] == np.dtype(ml_dtypes.bfloat16)
    assert dtypes["b/.ATTRIBUTES/VARIABLE_VALUE"] == np.dtype(ml_dtypes.float8_e4m3fn)
    assert dtypes["c/.ATTRIBUTES/VARIABLE_VALUE"] == np.dtype(np.int16)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(0, 4), max_size=3), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_any_shape_and_dtype_round_trips(shape, dtype, seed):
    src = _values(dtype, tuple(shape), seed)
    path = ck.Checkpoint(t=src).write(f"memory://torch-hyp/{seed}-{dtype}-{'x'.join(map(str, shape))}")
    dst = torch.zeros(tuple(shape), dtype=dtype)
    ck.Checkpoint(t=dst).read(path)
    assert torch.equal(_bits(dst), _bits(src))


def test_parameter_keeps_identity_grad_flag_and_storage(prefix):
    net = torch.nn.Linear(3, 2)
    path = ck.Checkpoint(model=net).write(prefix)
    fresh = torch.nn.Linear(3, 2)
    w = fresh.weight
    ptr = w.data_ptr()
    ck.Checkpoint(model=fresh).read(path).assert_consumed()
    assert fresh.weight is w and w.data_ptr() == ptr and w.requires_grad and w.is_leaf
    assert torch.equal(w, net.weight)


def test_non_contiguous_tensors_save_logical_values_and_restore_through_copy(prefix):
    src = torch.arange(12.0).reshape(3, 4)
    path = ck.Checkpoint(t=src.t()).write(prefix)    # a transposed view saves its logical values
    assert ck.load_checkpoint(path).get_tensor("t/.ATTRIBUTES/VARIABLE_VALUE").tolist() == src.t().tolist()
    base = torch.zeros(4, 3)
    view = base.t()                                   # non-contiguous (3, 4) view into base
    ck.Checkpoint(t=view).read(ck.Checkpoint(t=src).write(prefix + "2"))
    assert torch.equal(base, src.t())


def test_sequential_keys_and_persistent_buffers_only(prefix):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
            self.register_buffer("cache", torch.ones(2), persistent=False)
            self.register_buffer("scale", torch.full((1,), 3.0))

    path = ck.Checkpoint(model=Net()).write(prefix)
    keys = set(ck.load_checkpoint(path).keys())
    assert {"model/body/0/weight/.ATTRIBUTES/VARIABLE_VALUE", "model/body/0/bias/.ATTRIBUTES/VARIABLE_VALUE",
            "model/body/1/running_var/.ATTRIBUTES/VARIABLE_VALUE",
            "model/body/1/num_batches_tracked/.ATTRIBUTES/VARIABLE_VALUE",
            "model/scale/.ATTRIBUTES/VARIABLE_VALUE"} <= keys
    assert not any("cache" in k for k in keys)
    fresh = Net()
    fresh.cache.fill_(7.0)
    ck.Checkpoint(model=fresh).read(path).assert_consumed()
    assert fresh.cache.tolist() == [7.0, 7.0]


def test_tied_weights_saved_once_and_stay_tied(prefix):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(3, 3, bias=False)
            self.dec = torch.nn.Linear(3, 3, bias=False)
            self.dec.weight = self.enc.weight

    src = Tied()
    path = ck.Checkpoint(model=src).write(prefix)
    keys = [k for k in ck.load_checkpoint(path).keys() if "weight" in k]
    assert keys == ["model/enc/weight/.ATTRIBUTES/VARIABLE_VALUE"]
    dst = Tied()
    ck.Checkpoint(model=dst).read(path).assert_consumed()
    assert dst.dec.weight is dst.enc.weight and torch.equal(dst.enc.weight, src.enc.weight)


def test_shape_mismatch_names_the_parameter(prefix):
    path = ck.Checkpoint(model=torch.nn.Sequential(torch.nn.Linear(3, 2))).write(prefix)
    wrong = torch.nn.Sequential(torch.nn.Linear(4, 2))
    before = wrong[0].bias.clone()
    with pytest.raises(ck.ShapeMismatchError, match=r"model/0/weight"):
        ck.Checkpoint(model=wrong).read(path)
    assert torch.equal(wrong[0].bias, before)  # nothing assigned when any check fails


def test_dtype_mismatch_is_an_error(prefix):
    path = ck.Checkpoint(t=torch.zeros(2, dtype=torch.bfloat16)).write(prefix)
    with pytest.raises(ck.DtypeMismatchError, match="bfloat16"):
        ck.Checkpoint(t=torch.zeros(2, dtype=torch.float16)).read(path)


def test_lazy_and_meta_tensors_give_clear_errors(prefix):
    path = ck.Checkpoint(model=torch.nn.Linear(3, 2)).write(prefix)
    with pytest.raises(ck.CheckpointError, match="lazy module"):
        ck.Checkpoint(model=torch.nn.LazyLinear(2)).read(path)
    with torch.device("meta"):
        meta = torch.nn.Linear(3, 2)
    with pytest.raises(ck.CheckpointError, match="meta device"):
        ck.Checkpoint(model=meta).read(path)
    with pytest.raises(ck.CheckpointError, match="sparse"):
        ck.Checkpoint(t=torch.eye(2).to_sparse()).write(prefix + "-sparse")
    with pytest.warns(UserWarning, match="ComplexHalf"):
        c32 = torch.zeros(2, dtype=torch.complex32)
    with pytest.raises(ck.UnsupportedDtypeError, match="complex32"):
        ck.Checkpoint(t=c32).write(prefix + "-c32")


def test_tensor_with_grad_history_and_conj_view_save_their_values(prefix):
    x = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    path = ck.Checkpoint(t=x.conj()).write(prefix)
    assert ck.load_checkpoint(path).get_tensor("t/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [1 - 2j, 3 + 1j]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_restored_on_their_device(prefix):
    net = torch.nn.Linear(3, 2).to(torch.bfloat16)
    path = ck.Checkpoint(model=net).write(prefix)
    gpu = torch.nn.Linear(3, 2).to("cuda", torch.bfloat16)
    ptr = gpu.weight.data_ptr()
    ck.Checkpoint(model=gpu).read(path).assert_consumed()
    assert gpu.weight.device.type == "cuda" and gpu.weight.data_ptr() == ptr
    assert torch.equal(gpu.weight.cpu(), net.weight)
    back = torch.nn.Linear(3, 2).to(torch.bfloat16)
    ck.Checkpoint(model=back).read(ck.Checkpoint(model=gpu).write(prefix + "-gpu"))
    assert torch.equal(back.weight, net.weight)


class WithExtra(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.version, self.amax = 1, torch.zeros(3)

    def get_extra_state(self):
        return {"version": self.version, "amax": self.amax, "recipe": ("e4m3", 2)}

    def set_extra_state(self, state):
        self.version, self.amax, self.recipe = state["version"], state["amax"], state["recipe"]


def test_module_extra_state_round_trips(prefix):
    src = WithExtra()
    src.version, src.amax = 7, torch.tensor([1.0, 2.0, 3.0])
    path = ck.Checkpoint(model=src).write(prefix)
    assert "model/.ATTRIBUTES/_extra_state.Samax" in ck.load_checkpoint(path).keys()
    dst = WithExtra()
    ck.Checkpoint(model=dst).read(path).assert_consumed()
    assert dst.version == 7 and dst.recipe == ("e4m3", 2) and torch.equal(dst.amax, src.amax)
    assert torch.equal(dst.lin.weight, src.lin.weight)


def test_pickled_extra_state_is_refused(prefix):
    import io

    class Opaque(torch.nn.Module):
        def get_extra_state(self):
            return io.BytesIO(b"pickle")

        def set_extra_state(self, state):
            pass

    with pytest.raises(ck.CheckpointError, match="get_extra_state.*BytesIO.*never pickles"):
        ck.Checkpoint(model=Opaque()).write(prefix)


def test_views_of_tensors_are_the_tensors_memory_or_none_never_a_copy():
    # restore reads straight into writable_view(t); a view that were a copy would drop the restored values
    from ckptcore_torch.convert import to_numpy, writable_view

    for t in (torch.zeros(4), torch.nn.Parameter(torch.zeros(2, 3)), torch.zeros(3, dtype=torch.bfloat16),
              torch.zeros(0), torch.zeros(()), torch.zeros(2, requires_grad=True)):
        view = writable_view(t)
        view[...] = 1
        assert torch.all(t == 1), t
    refused = {"strided": torch.zeros(4, 4).t(), "meta": torch.zeros(2, device="meta"),
               "conj": torch.zeros(2, dtype=torch.complex64).conj(), "neg": torch._neg_view(torch.zeros(2)),
               "sparse": torch.zeros(3).to_sparse(), "lazy": torch.nn.UninitializedParameter()}
    assert {k: writable_view(t) for k, t in refused.items()} == dict.fromkeys(refused)
    # saving reads the values through to_numpy: lazy bits resolved, meta refused with the fix
    assert to_numpy(torch._neg_view(torch.ones(2))).tolist() == [-1.0, -1.0]
    assert to_numpy(torch.tensor([1 + 2j]).conj()).tolist() == [1 - 2j]
    with pytest.raises(ck.CheckpointError, match="meta device"):
        to_numpy(torch.zeros(2, device="meta"))


@pytest.mark.parametrize("dtype", ["float32", "int64", "bool", "float16", "complex64", ml_dtypes.bfloat16])
def test_from_numpy_gives_the_same_tensor_before_and_after_its_dtype_is_known(dtype):
    # from_numpy remembers dtypes torch takes as they are (a shortcut for the 60,000 slots of a
    # fresh optimizer); the first and later calls must agree, bit-viewed dtypes (bfloat16) included
    from ckptcore_torch.convert import from_numpy

    a = (np.arange(6) % 2).astype(dtype)

    def values(t):  # bfloat16 has no numpy view in torch: compare it as float32
        return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()

    want = a.astype(np.float32) if a.dtype == np.dtype(ml_dtypes.bfloat16) else a
    first, again = from_numpy(a), from_numpy(a)
    assert first.dtype == again.dtype
    assert np.array_equal(values(first), want) and np.array_equal(values(again), want)
    assert again.data_ptr() == a.ctypes.data  # no copy: the tensor is the array's memory
    ro = a.copy()
    ro.flags.writeable = False
    got = from_numpy(ro)
    assert np.array_equal(values(got), want) and got.data_ptr() != ro.ctypes.data


def test_from_numpy_refuses_a_byte_swapped_array_every_time():
    from ckptcore_torch.convert import from_numpy

    a = np.arange(3, dtype=">f4")
    for _ in range(2):
        with pytest.raises(ck.UnsupportedDtypeError, match=">f4"):
            from_numpy(a)
    from_numpy(np.arange(3, dtype="<f4"))  # the native twin is known now: the swapped one still is not
    with pytest.raises(ck.UnsupportedDtypeError, match=">f4"):
        from_numpy(a)


def test_cpu_parameters_are_read_in_place_without_spec_or_set_value(prefix, monkeypatch):
    # TensorAdapter.value_in_place: a plain CPU parameter's memory is the read's destination, and
    # nothing else of the adapter runs for it (the cost of 20,000 small parameters)
    from ckptcore_torch.adapters import TensorAdapter

    src = torch.nn.Linear(3, 2)
    path = ck.Checkpoint(model=src).save(prefix)
    dst = torch.nn.Linear(3, 2)
    ptrs = {n: p.data_ptr() for n, p in dst.named_parameters()}
    called = []
    for method in ("spec", "restore_buffer", "set_value"):
        real = getattr(TensorAdapter, method)
        monkeypatch.setattr(TensorAdapter, method,
                            lambda self, *a, _m=method, _r=real: called.append(_m) or _r(self, *a))
    ck.Checkpoint(model=dst).restore(path).assert_consumed()
    assert called == []
    for (n, p), q in zip(dst.named_parameters(), src.parameters()):
        assert torch.equal(p, q) and p.data_ptr() == ptrs[n]
    # a shape mismatch still goes the usual way, and is named
    with pytest.raises(ck.ShapeMismatchError, match="model/weight"):
        ck.Checkpoint(model=torch.nn.Linear(4, 2)).restore(path)
