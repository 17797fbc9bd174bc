"""A Keras checkpoint restores into ck.Module/numpy objects of the same graph shape, and back."""

from __future__ import annotations

import numpy as np
import pytest

import ckptcore as ck


def _np(keras, v):
    return np.asarray(keras.ops.convert_to_numpy(v))


def _numpy_twin(shapes, dtype=np.float32):
    """The Sequential graph shape, built from ck.Module and numpy arrays only."""
    model = ck.Module()
    layers = []
    for k_shape, b_shape in shapes:
        layer = ck.Module()
        layer.kernel = np.zeros(k_shape, dtype)
        layer.bias = np.zeros(b_shape, dtype)
        layers.append(layer)
    for i, layer in enumerate(layers):
        setattr(model, f"layer_with_weights-{i}", layer)
    for i, layer in enumerate(layers):
        setattr(model, f"layer-{i}", layer)
    return model, layers


def _keras_model(keras, seed, dtype="float32"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, dtype=dtype), keras.layers.Dense(2, dtype=dtype)])


def test_keras_checkpoint_restores_into_ck_module_and_numpy(keras, prefix):
    src = _keras_model(keras, 0)
    opt = keras.optimizers.Adam()
    opt.build(src.trainable_variables)
    path = ck.Checkpoint(model=src, optimizer=opt).write(prefix)

    model, layers = _numpy_twin([((4, 5), (5,)), ((5, 2), (2,))])
    status = ck.Checkpoint(model=model).read(path).expect_partial()   # optimizer values are left over
    status.assert_existing_objects_matched()
    for layer, keras_layer in zip(layers, src.layers):
        np.testing.assert_array_equal(layer.kernel, _np(keras, keras_layer.kernel))
        np.testing.assert_array_equal(layer.bias, _np(keras, keras_layer.bias))


def test_ck_module_checkpoint_restores_into_keras(keras, prefix):
    model, layers = _numpy_twin([((4, 5), (5,)), ((5, 2), (2,))])
    rng = np.random.default_rng(3)
    for layer in layers:
        layer.kernel[...] = rng.normal(size=layer.kernel.shape)
        layer.bias[...] = rng.normal(size=layer.bias.shape)
    path = ck.Checkpoint(model=model).write(prefix)

    dst = _keras_model(keras, 1)
    ck.Checkpoint(model=dst).read(path).assert_consumed()
    x = rng.normal(size=(3, 4)).astype(np.float32)
    expected = (x @ layers[0].kernel + layers[0].bias) @ layers[1].kernel + layers[1].bias
    np.testing.assert_allclose(_np(keras, dst(x)), expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_keras_weights_cross_to_numpy_with_dtype_preserved(keras, prefix):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    src = _keras_model(keras, 0, dtype="bfloat16")
    path = ck.Checkpoint(model=src).write(prefix)
    model, layers = _numpy_twin([((4, 5), (5,)), ((5, 2), (2,))], dtype=ml_dtypes.bfloat16)
    ck.Checkpoint(model=model).read(path).assert_consumed()
    assert layers[0].kernel.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(layers[0].kernel.astype(np.float32),
                                  _np(keras, src.layers[0].kernel).astype(np.float32))
    # and back into a fresh bfloat16 Keras model
    path2 = ck.Checkpoint(model=model).write(prefix + "-back")
    dst = _keras_model(keras, 5, dtype="bfloat16")
    ck.Checkpoint(model=dst).read(path2).assert_consumed()
    np.testing.assert_array_equal(_np(keras, dst.layers[1].kernel).astype(np.float32),
                                  _np(keras, src.layers[1].kernel).astype(np.float32))
