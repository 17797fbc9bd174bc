"""tf.Variable look-alikes (duck typing), tf.Module look-alikes, and real TensorFlow where installed."""

from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ckptcore as ck
from ckptcore_tf.module import ModuleLikeAdapter
from ckptcore_tf.variables import VariableLikeAdapter, to_numpy_dtype


class DuckVariable:
    """Shaped like tf.Variable; no ckptcore or TF anywhere in its ancestry."""

    def __init__(self, value):
        self._v = np.array(value)
        self.assigned = 0

    @property
    def shape(self):
        return self._v.shape

    @property
    def dtype(self):
        return self._v.dtype.name          # a string, as Keras reports dtypes

    def numpy(self):
        return self._v.copy()

    def assign(self, value):
        self._v = np.array(value, dtype=self._v.dtype)
        self.assigned += 1


class ArrayOnlyVariable(DuckVariable):
    """No numpy() method, only __array__."""

    numpy = None

    def __array__(self, dtype=None, copy=None):
        return self._v


class Block:
    """A tf.Module look-alike: reports its dependencies through _trackable_children."""

    def __init__(self, n):
        self.w = DuckVariable(np.zeros(n, np.float32))
        self.inner = [DuckVariable(np.zeros(2, np.int64))]
        self.label = "not trackable"

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        return {"w": self.w, "inner": self.inner}


def test_duck_typed_variable_is_claimed_by_predicate():
    assert ck.registry.find_adapter(DuckVariable(1.0)).name == "ckptcore_tf.variable"
    assert ck.registry.find_adapter(ArrayOnlyVariable(1.0)).name == "ckptcore_tf.variable"
    assert ck.registry.adapter_or_none(object()) is None


@settings(max_examples=25, deadline=None)
@given(arr=hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int8, np.int64, np.bool_, np.float16]),
                      shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)))
def test_duck_typed_variable_round_trip(tmp_path_factory, arr):
    path = ck.Checkpoint(v=DuckVariable(arr)).write(str(tmp_path_factory.mktemp("duck") / "c"))
    dst = DuckVariable(np.zeros_like(arr))
    ck.Checkpoint(v=dst).read(path).assert_consumed()
    assert dst.assigned == 1
    assert dst._v.dtype == arr.dtype
    np.testing.assert_array_equal(dst._v, arr)


def test_array_only_variable_and_bfloat16_round_trip(prefix):
    src = ArrayOnlyVariable(np.arange(6, dtype=ml_dtypes.bfloat16).reshape(2, 3))
    path = ck.Checkpoint(v=src).write(prefix)
    assert ck.load_checkpoint(path).get_variable_to_dtype_map()["v/.ATTRIBUTES/VARIABLE_VALUE"].name == "bfloat16"
    dst = ArrayOnlyVariable(np.zeros((2, 3), ml_dtypes.bfloat16))
    ck.Checkpoint(v=dst).read(path).assert_consumed()
    np.testing.assert_array_equal(dst._v.astype(np.float32), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_duck_variable_shape_mismatch_is_a_ckptcore_error(prefix):
    path = ck.Checkpoint(v=DuckVariable(np.zeros(3))).write(prefix)
    dst = DuckVariable(np.zeros(4))
    with pytest.raises(ck.ShapeMismatchError, match="v/.ATTRIBUTES/VARIABLE_VALUE"):
        ck.Checkpoint(v=dst).read(path)
    assert dst.assigned == 0


def test_concrete_adapter_wins_over_the_duck_typing_predicate(ckptcore_registry):
    class Mine(ck.Adapter):
        name = "test.mine"

    ck.register_adapter(DuckVariable, Mine())
    assert ck.registry.find_adapter(DuckVariable(0.0)).name == "test.mine"


def test_module_like_round_trip_uses_trackable_children(prefix):
    src = Block(3)
    src.w.assign(np.array([1.0, 2.0, 3.0]))
    src.inner[0].assign(np.array([7, 8]))
    path = ck.Checkpoint(block=src).write(prefix)
    keys = {k for k, _ in ck.list_variables(path)}
    assert keys == {"block/w/.ATTRIBUTES/VARIABLE_VALUE", "block/inner/0/.ATTRIBUTES/VARIABLE_VALUE"}
    dst = Block(3)
    ck.Checkpoint(block=dst).read(path).assert_consumed()
    assert dst.w.numpy().tolist() == [1.0, 2.0, 3.0]
    assert dst.inner[0].numpy().tolist() == [7, 8]


def test_module_like_adapter_falls_back_to_public_attributes():
    class Plain:
        def __init__(self):
            self.b = DuckVariable(1.0)
            self._private = DuckVariable(2.0)
            self.a = np.zeros(1)
            self.n = 3

    assert [n for n, _ in ModuleLikeAdapter().children(Plain())] == ["b", "a"]


@pytest.mark.parametrize("given_, expected", [("float32", "float32"), ("bfloat16", "bfloat16"),
                                              (np.int16, "int16"), (np.dtype("uint8"), "uint8")])
def test_to_numpy_dtype(given_, expected):
    assert to_numpy_dtype(given_).name == expected


def test_importing_ckptcore_and_the_plugin_imports_no_framework(tmp_path):
    code = (
        "import sys, numpy as np, ckptcore as ck\n"
        "import ckptcore_tf\n"
        f"p = ck.Checkpoint(a=np.ones(2)).write({str(tmp_path / 'c')!r})\n"
        "ck.Checkpoint(a=np.zeros(2)).read(p).assert_consumed()\n"
        "assert ck.registry.get_plugin_manager().get_plugin('tf') is not None\n"
        "bad = [m for m in ('keras', 'tensorflow', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, CKPTCORE_BLOCK_PLUGINS="torch")   # only this plugin's imports are under test
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- real TensorFlow (optional; not installed by `make venv`) ----------------------------------
def test_real_tf_variable_and_module_round_trip(prefix):
    tf = pytest.importorskip("tensorflow")

    class Net(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.normal((3, 2)))
            self.layers = [tf.Variable(1.5), tf.Variable([1, 2], dtype=tf.int64)]

    src = Net()
    assert isinstance(ck.registry.find_adapter(src), ModuleLikeAdapter)
    assert isinstance(ck.registry.find_adapter(src.w), VariableLikeAdapter)
    path = ck.Checkpoint(net=src).write(prefix)
    dst = Net()
    ck.Checkpoint(net=dst).read(path).assert_consumed()
    np.testing.assert_array_equal(src.w.numpy(), dst.w.numpy())
    assert dst.layers[1].numpy().tolist() == [1, 2]
