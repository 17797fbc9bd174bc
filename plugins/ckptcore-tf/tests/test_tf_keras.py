"""Keras 3 layers, models and optimizers (torch backend): resume, lazy build, naming, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.restore import pending_count
from ckptcore_tf.keras_adapters import pending_slot_count


def _np(keras, v):
    return np.asarray(keras.ops.convert_to_numpy(v))


def _make(keras, seed, dropout=False, build=True):
    keras.utils.set_random_seed(seed)
    layers = [keras.layers.Dense(8, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(0.3, seed=7))  # seeded: its RNG state is checkpointed
    layers.append(keras.layers.Dense(1))
    return keras.Sequential(([keras.Input((4,))] if build else []) + layers)


def _step(keras, model, opt, data):
    import torch

    x, y = (torch.from_numpy(a) for a in data)
    loss = ((model(x, training=True) - y) ** 2).mean()
    for v in model.trainable_variables:
        v.value.grad = None
    loss.backward()
    opt.apply([v.value.grad for v in model.trainable_variables], model.trainable_variables)
    return float(loss.detach())


OPTIMIZERS = {
    "adam": lambda k: k.optimizers.Adam(1e-2),
    "sgd_momentum": lambda k: k.optimizers.SGD(1e-2, momentum=0.9),
    "adamw": lambda k: k.optimizers.AdamW(1e-2, weight_decay=0.01),
    "rmsprop": lambda k: k.optimizers.RMSprop(1e-2, momentum=0.5),
    "nadam": lambda k: k.optimizers.Nadam(1e-2),       # u_product: a non-slot variable made in build()
    "adagrad": lambda k: k.optimizers.Adagrad(1e-1),
    "lion": lambda k: k.optimizers.Lion(1e-3),
    "adam_ema_amsgrad": lambda k: k.optimizers.Adam(1e-2, amsgrad=True, use_ema=True, ema_overwrite_frequency=2),
    "adam_schedule": lambda k: k.optimizers.Adam(k.optimizers.schedules.ExponentialDecay(1e-2, 2, 0.5)),
    "adam_accumulation": lambda k: k.optimizers.Adam(1e-2, gradient_accumulation_steps=2),
    "loss_scale": lambda k: k.optimizers.LossScaleOptimizer(k.optimizers.Adam(1e-2)),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_resume_into_fresh_model_and_optimizer_is_bit_identical(keras, prefix, data, opt_name):
    model, opt = _make(keras, 0, dropout=True), OPTIMIZERS[opt_name](keras)
    for _ in range(3):
        _step(keras, model, opt, data)
    path = ck.Checkpoint(model=model, optimizer=opt).write(prefix)
    expected = [_step(keras, model, opt, data) for _ in range(4)]

    model2, opt2 = _make(keras, 1, dropout=True), OPTIMIZERS[opt_name](keras)
    assert not np.array_equal(_np(keras, model2.layers[0].kernel), _np(keras, ck.load_checkpoint(path).get_tensor(
        "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE")))
    status = ck.Checkpoint(model=model2, optimizer=opt2).read(path)
    slot_owner = getattr(opt2, "inner_optimizer", opt2)   # LossScaleOptimizer: the inner optimizer has the slots
    assert pending_slot_count(slot_owner) > 0    # slots wait for the optimizer's first step
    resumed = [_step(keras, model2, opt2, data) for _ in range(4)]
    assert resumed == expected
    assert pending_slot_count(slot_owner) == 0
    status.assert_consumed()


def test_checkpoint_keys_follow_tf_conventions(keras, prefix, data):
    model, opt = _make(keras, 0, dropout=True), keras.optimizers.Adam()
    _step(keras, model, opt, data)
    keys = {k for k, _ in ck.list_variables(ck.Checkpoint(model=model, optimizer=opt).write(prefix))}
    assert "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "model/layer_with_weights-1/bias/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "model/layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/momentum/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "model/layer_with_weights-1/bias/.OPTIMIZER_SLOT/optimizer/velocity/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "optimizer/learning_rate/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "model/layer-1/seed_generator/state/.ATTRIBUTES/VARIABLE_VALUE" in keys   # Dropout's RNG state
    assert not any("sequential" in k or "dense" in k for k in keys)   # no process-dependent layer names


def test_model_built_lazily_after_restore_receives_values(keras, prefix, data):
    src, opt = _make(keras, 0), keras.optimizers.Adam(1e-2)
    for _ in range(2):
        _step(keras, src, opt, data)
    path = ck.Checkpoint(model=src).write(prefix)

    dst = _make(keras, 1, build=False)             # no Input: weights are created on first call
    assert dst.weights == []
    baseline = pending_count()
    status = ck.Checkpoint(model=dst).read(path)
    with pytest.raises(AssertionError):
        status.assert_consumed()                   # kernels and biases are still waiting
    assert pending_count() > baseline
    dst.build((None, 4))
    assert pending_count() == baseline             # nothing is left queued once the model is built
    for a, b in zip(src.weights, dst.weights):
        np.testing.assert_array_equal(_np(keras, a), _np(keras, b))
    np.testing.assert_array_equal(_np(keras, src(data[0])), _np(keras, dst(data[0])))
    status.assert_consumed()


def test_optimizer_restored_before_build_gets_slots_when_built(keras, prefix, data):
    model, opt = _make(keras, 0), keras.optimizers.Adam(1e-2)
    for _ in range(3):
        _step(keras, model, opt, data)
    path = ck.Checkpoint(model=model, optimizer=opt).write(prefix)
    model2, opt2 = _make(keras, 0), keras.optimizers.Adam(1e-2)
    ck.Checkpoint(model=model2, optimizer=opt2).read(path).assert_existing_objects_matched()
    assert int(_np(keras, opt2.iterations)) == 3
    opt2.build(model2.trainable_variables)
    for a, b in zip(opt.variables, opt2.variables):
        np.testing.assert_array_equal(_np(keras, a), _np(keras, b))


def test_restore_into_built_optimizer_assigns_slots_at_once(keras, prefix, data):
    model, opt = _make(keras, 0), keras.optimizers.Adam(1e-2)
    _step(keras, model, opt, data)
    path = ck.Checkpoint(model=model, optimizer=opt).write(prefix)
    model2, opt2 = _make(keras, 1), keras.optimizers.Adam(1e-2)
    opt2.build(model2.trainable_variables)
    ck.Checkpoint(model=model2, optimizer=opt2).read(path).assert_consumed()
    assert pending_slot_count(opt2) == 0
    for a, b in zip(opt.variables, opt2.variables):
        np.testing.assert_array_equal(_np(keras, a), _np(keras, b))


def _subclassed(keras):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = keras.layers.Dense(3)
            self.blocks = [keras.layers.Dense(3), keras.layers.BatchNormalization()]
            self.head = keras.layers.Dense(1)

        def call(self, x, training=False):
            x = self.encoder(x)
            for b in self.blocks:
                x = b(x, training=training)
            return self.head(x)
    return Net()


def test_subclassed_model_uses_attribute_names_and_restores_lazily(keras, prefix, data):
    src = _subclassed(keras)
    src(data[0], training=True)                     # builds and moves BatchNorm statistics
    path = ck.Checkpoint(model=src).write(prefix)
    keys = {k for k, _ in ck.list_variables(path)}
    assert {"model/encoder/kernel/.ATTRIBUTES/VARIABLE_VALUE", "model/blocks/0/bias/.ATTRIBUTES/VARIABLE_VALUE",
            "model/blocks/1/moving_mean/.ATTRIBUTES/VARIABLE_VALUE",
            "model/head/kernel/.ATTRIBUTES/VARIABLE_VALUE"} <= keys

    dst = _subclassed(keras)
    status = ck.Checkpoint(model=dst).read(path)
    dst(data[0])                                    # builds: every weight gets its value as it is created
    status.assert_consumed()
    np.testing.assert_array_equal(_np(keras, src(data[0])), _np(keras, dst(data[0])))
    np.testing.assert_array_equal(_np(keras, src.blocks[1].moving_mean), _np(keras, dst.blocks[1].moving_mean))


def test_shape_mismatch_names_the_path_and_assigns_nothing(keras, prefix):
    src = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    path = ck.Checkpoint(model=src).write(prefix)
    dst = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(3)])
    before = _np(keras, dst.layers[0].kernel).copy()
    with pytest.raises(ck.ShapeMismatchError, match="layer_with_weights-1"):
        ck.Checkpoint(model=dst).read(path)
    np.testing.assert_array_equal(before, _np(keras, dst.layers[0].kernel))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64", "int32"])
def test_keras_variable_dtypes_round_trip(keras, prefix, dtype):
    rng = np.random.default_rng(1)
    init = rng.normal(size=(3, 2)).astype("float32") * 10
    trainable = dtype != "int32"          # torch refuses gradients for integer tensors
    v = keras.Variable(init, dtype=dtype, trainable=trainable)
    path = ck.Checkpoint(v=v).write(prefix)
    assert ck.load_checkpoint(path).get_variable_to_dtype_map()["v/.ATTRIBUTES/VARIABLE_VALUE"].name == dtype
    w = keras.Variable(np.zeros((3, 2)), dtype=dtype, trainable=trainable)
    ck.Checkpoint(v=w).read(path).assert_consumed()
    a, b = _np(keras, v), _np(keras, w)
    assert w.dtype == dtype
    np.testing.assert_array_equal(a.astype(np.float64), b.astype(np.float64))


def test_model_fit_resumes_bit_identically(keras, prefix, data):
    def make(seed):
        keras.utils.set_random_seed(seed)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
        m.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        return m

    fit = dict(epochs=2, batch_size=4, shuffle=False, verbose=0)
    model = make(0)
    model.fit(*data, **fit)
    path = ck.Checkpoint(model=model, optimizer=model.optimizer).write(prefix)
    expected = model.fit(*data, **fit).history["loss"]

    fresh = make(1)                                   # its optimizer is built inside fit()
    status = ck.Checkpoint(model=fresh, optimizer=fresh.optimizer).read(path)
    assert fresh.fit(*data, **fit).history["loss"] == expected
    status.assert_consumed()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(widths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       kinds=st.lists(st.sampled_from(["dense", "dropout", "batchnorm"]), min_size=1, max_size=4),
       lazy=st.booleans())
def test_random_sequential_round_trip(keras, tmp_path_factory, widths, kinds, lazy):
    def make(seed, build):
        keras.utils.set_random_seed(seed)
        layers, w = [], iter(widths * 4)
        for kind in kinds:
            layers.append(keras.layers.Dense(next(w)) if kind == "dense" else
                          keras.layers.Dropout(0.2, seed=3) if kind == "dropout" else
                          keras.layers.BatchNormalization())
        return keras.Sequential(([keras.Input((3,))] if build else []) + layers)

    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    src = make(0, True)
    src(x, training=True)                           # moves BatchNorm statistics and RNG states
    path = ck.Checkpoint(model=src).write(str(tmp_path_factory.mktemp("seq") / "c"))
    dst = make(1, not lazy)
    status = ck.Checkpoint(model=dst).read(path)
    if lazy:
        dst.build((None, 3))
    status.assert_consumed()
    for a, b in zip(src.weights, dst.weights):
        np.testing.assert_array_equal(_np(keras, a), _np(keras, b))
    np.testing.assert_array_equal(_np(keras, src(x, training=True)), _np(keras, dst(x, training=True)))


def test_lazy_model_and_fresh_optimizer_restored_together_resume_bit_identically(keras, prefix, data):
    opt = keras.optimizers.Adam(1e-2)
    model = _make(keras, 0, dropout=True)
    for _ in range(3):
        _step(keras, model, opt, data)
    path = ck.Checkpoint(model=model, optimizer=opt).write(prefix)
    expected = [_step(keras, model, opt, data) for _ in range(3)]

    model2, opt2 = _make(keras, 1, dropout=True, build=False), keras.optimizers.Adam(1e-2)
    status = ck.Checkpoint(model=model2, optimizer=opt2).read(path)
    # weights and slots do not exist yet: each arrives when Keras creates it
    assert [_step(keras, model2, opt2, data) for _ in range(3)] == expected
    status.assert_consumed()
