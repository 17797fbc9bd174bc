"""The adapter conformance kit (ckptcore.testing) run against every built-in adapter."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import ckptcore as ck
from ckptcore.dtypes import SUPPORTED
from ckptcore.testing import AdapterConformance


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


class TestNumpyFloat32(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: _rng(seed).normal(size=(2, 3)).astype(np.float32)


@pytest.mark.parametrize("dtype", SUPPORTED)
class TestNumpyEveryDtype(AdapterConformance):
    """Every dtype ckptcore accepts, ml_dtypes' included, through the numpy adapter."""

    @pytest.fixture
    def make_object(self, dtype):
        return lambda seed: _rng(seed).integers(0, 2, size=(2, 4)).astype(dtype)

    @pytest.fixture
    def ckpt_prefix(self, mem_dir):
        return f"{mem_dir}/ckpt"        # many small checkpoints: skip the disk's fsyncs


class TestNumpyScalarInt64(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: np.array(seed + 7, np.int64)


class TestNumpyBfloat16InMemory(AdapterConformance):
    """bfloat16 through ml_dtypes, written to memory:// instead of local disk."""

    @pytest.fixture
    def make_object(self):
        return lambda seed: _rng(seed).normal(size=(4,)).astype(ml_dtypes.bfloat16)

    @pytest.fixture
    def ckpt_prefix(self, mem_dir):
        return f"{mem_dir}/ckpt"


class TestVariable(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: ck.Variable(_rng(seed).normal(size=(3,)), dtype="float64", name="w")


class Block(ck.Module):
    """A nested module: variables, an array, a sub-module, a list and a dict."""

    def __init__(self, seed: int):
        super().__init__()
        rng = _rng(seed)
        self.kernel = ck.Variable(rng.normal(size=(3, 2)).astype(np.float32))
        self.bias = np.zeros(2, np.float32) + seed
        self.sub = ck.Module()
        self.sub.scale = ck.Variable(float(seed) + 0.5)
        self.layers = [ck.Variable(rng.integers(0, 9, size=2)), np.full(1, seed, np.int32)]
        self.heads = {"a": ck.Variable(rng.normal(size=()))}


class TestModule(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return Block

    @pytest.fixture
    def make_late_child(self):
        return lambda seed: ck.Variable(np.full((2,), seed, np.float32))

    @pytest.fixture
    def attach(self):
        return setattr


class TestTrackedList(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: ck.TrackedList([ck.Variable(float(seed)), _rng(seed).normal(size=2), "not trackable"])

    @pytest.fixture
    def make_late_child(self):
        return lambda seed: np.full(3, seed, np.float64)

    @pytest.fixture
    def attach(self):
        return lambda parent, name, child: parent.append(child)


class TestTrackedDict(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: ck.TrackedDict(w=ck.Variable(float(seed)), nested={"x": _rng(seed).normal(size=2)})

    @pytest.fixture
    def make_late_child(self):
        return lambda seed: ck.Variable(np.full(2, seed))

    @pytest.fixture
    def attach(self):
        return lambda parent, name, child: parent.__setitem__(name, child)


class TestPlainList(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: [_rng(seed).normal(size=3), ck.Variable(seed)]


class TestPlainDict(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: {"a": _rng(seed).normal(size=3), "b": [ck.Variable(seed)]}


class TestPlainTuple(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: (_rng(seed).normal(size=3), ck.Variable(np.int64(seed)))
