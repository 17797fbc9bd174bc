"""ckptcore-tf adapters run through the conformance kit (ckptcore.testing).

Keras 3 runs on the torch backend here (see conftest.py).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import ckptcore as ck
from ckptcore.testing import AdapterConformance


class DuckVariable:
    """A tf.Variable look-alike: assign, numpy, shape, dtype; no ckptcore import, no registration."""

    def __init__(self, value, dtype=np.float32):
        self._v = np.array(value, dtype=dtype)

    shape = property(lambda self: self._v.shape)
    dtype = property(lambda self: self._v.dtype)

    def numpy(self):
        return self._v.copy()

    def assign(self, value):
        value = np.asarray(value)
        if value.shape != self._v.shape:
            raise ValueError(f"cannot assign shape {value.shape} to {self._v.shape}")
        self._v[...] = value
        return self


class DuckModule:
    """A tf.Module look-alike listing its dependencies through _trackable_children."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        self.kernel = DuckVariable(rng.normal(size=(3, 2)))
        self.bias = DuckVariable(rng.normal(size=2), dtype=np.float64)
        self.step = DuckVariable(seed, dtype=np.int64)

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        return {"kernel": self.kernel, "bias": self.bias, "step": self.step}


class TestDuckVariable(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: DuckVariable(np.random.default_rng(seed).normal(size=(2, 3)))


class TestDuckVariableBfloat16(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return lambda seed: DuckVariable(np.random.default_rng(seed).normal(size=4), dtype=ml_dtypes.bfloat16)


class TestDuckModule(AdapterConformance):
    @pytest.fixture
    def make_object(self):
        return DuckModule


@pytest.fixture(scope="module")
def keras_mod(keras):
    return keras


class TestKerasDense(AdapterConformance):
    @pytest.fixture
    def make_object(self, keras_mod):
        def make(seed):
            keras_mod.utils.set_random_seed(seed)
            layer = keras_mod.layers.Dense(3, bias_initializer="random_normal")
            layer.build((None, 4))
            return layer
        return make


class TestKerasSequential(AdapterConformance):
    @pytest.fixture
    def make_object(self, keras_mod):
        def make(seed):
            keras_mod.utils.set_random_seed(seed)
            return keras_mod.Sequential([keras_mod.Input((4,)), keras_mod.layers.Dense(5, activation="relu"),
                                         keras_mod.layers.BatchNormalization(), keras_mod.layers.Dense(1)])
        return make


class TestKerasCustomLayerWithLateSublayer(AdapterConformance):
    """A sublayer assigned after restore() gets its values (Keras __setattr__ is reported)."""

    @pytest.fixture
    def make_object(self, keras_mod):
        class Block(keras_mod.layers.Layer):
            def __init__(self):
                super().__init__()
                self.inner = keras_mod.layers.Dense(2)
                self.inner.build((None, 3))
                self.scale = self.add_weight(shape=(2,), initializer="random_normal", name="scale")

        def make(seed):
            keras_mod.utils.set_random_seed(seed)
            return Block()
        return make

    @pytest.fixture
    def make_late_child(self, keras_mod):
        def make(seed):
            keras_mod.utils.set_random_seed(100 + seed)
            dense = keras_mod.layers.Dense(2)
            dense.build((None, 2))
            return dense
        return make

    @pytest.fixture
    def attach(self):
        return setattr


class TestKerasModelWithOptimizer(AdapterConformance):
    """Model plus Adam after some steps; the fresh optimizer is built but has taken no step."""

    @staticmethod
    def _bundle(keras, seed, steps):
        import torch

        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
        opt = keras.optimizers.Adam(1e-2)
        opt.build(model.trainable_variables)
        rng = np.random.default_rng(seed)
        x = torch.from_numpy(rng.normal(size=(8, 4)).astype("float32"))
        for _ in range(steps):
            loss = model(x).pow(2).mean()
            for v in model.trainable_variables:
                v.value.grad = None
            loss.backward()
            opt.apply([v.value.grad for v in model.trainable_variables], model.trainable_variables)
        bundle = ck.Module()
        bundle.model = model
        bundle.optimizer = opt
        return bundle

    @pytest.fixture
    def make_object(self, keras_mod):
        return lambda seed: self._bundle(keras_mod, seed, steps=2 + seed)

    @pytest.fixture
    def fresh_object(self, keras_mod):
        return lambda: self._bundle(keras_mod, 7, steps=0)
