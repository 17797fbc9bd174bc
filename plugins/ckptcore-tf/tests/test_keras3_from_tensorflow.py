"""A checkpoint TensorFlow 2.21 wrote for a Keras 3 model and its Adam optimizer, restored into Keras 3 on torch.

The golden file (tests/fixtures/tf/tf2_keras3, written by real TensorFlow: make_fixtures.py) tracks the
objects TensorFlow's way (``_functional/_operations/1/_kernel``, the moments as ``optimizer/_variables/N``);
ckptcore's TensorBundle reader also gives them the names ckptcore's Keras adapters use, and the moments become
slot variables of the model variables they belong to.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import ckptcore as ck

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests", "fixtures", "tf")
ITERATIONS = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture
def golden():
    with open(os.path.join(FIXTURES, "expected.json")) as f:
        info = json.load(f)["tf2_keras3"]
    return os.path.join(FIXTURES, info["path"]), info


def _model_and_adam(keras, build=True):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    opt = keras.optimizers.Adam(0.1)
    if build:
        opt.build(model.trainable_variables)
    return model, opt


def _check(model, opt, info):
    for v, want in zip(model.trainable_variables, info["weights"]):
        np.testing.assert_array_equal(np.asarray(v).ravel(), want)
    for slot in ("momentum", "velocity"):
        for v, want in zip(getattr(opt, {"momentum": "_momentums", "velocity": "_velocities"}[slot]), info[slot]):
            np.testing.assert_array_equal(np.asarray(v).ravel(), want)


def test_tensorflows_keras3_adam_moments_restore_as_slots_into_torch_keras(keras, golden):
    path, info = golden
    model, opt = _model_and_adam(keras)
    status = ck.Checkpoint(model=model, optimizer=opt).read(path)
    _check(model, opt, info)
    # TF's Keras counts iterations in int64, the torch backend in int32: the Keras variable adapter takes the
    # other integer width (accepts_dtype), so every live object is matched, the count included
    status.assert_existing_objects_matched()
    assert ck.load_checkpoint(path).get_tensor(ITERATIONS).dtype == np.int64
    assert int(opt.iterations) == info["iterations"] == 1
    assert str(opt.iterations.dtype) == "int32"
    status.expect_partial()


def test_an_integer_that_does_not_fit_the_keras_variable_is_refused_naming_it(keras, tmp_path):
    path = ck.Checkpoint(v=np.array(1000, np.int64), w=np.array(-3, np.int64)).write(str(tmp_path / "c"))
    small = keras.Variable(np.int8(0), dtype="int8", trainable=False)
    with pytest.raises(ck.DtypeMismatchError, match=r"holds int8.*int64 value \(range 1000\.\.1000\)"):
        ck.Checkpoint(v=small).read(path)
    assert int(small) == 0
    fits = keras.Variable(np.int8(0), dtype="int8", trainable=False)
    ck.Checkpoint(w=fits).read(path).expect_partial()
    assert int(fits) == -3 and str(fits.dtype) == "int8"
    with pytest.raises(ck.DtypeMismatchError):  # floats are never taken for integers
        ck.Checkpoint(v=keras.Variable(np.float32(0))).read(path)


def test_moments_wait_for_an_optimizer_built_later(keras, golden):
    path, info = golden
    model, opt = _model_and_adam(keras, build=False)
    status = ck.Checkpoint(model=model, optimizer=opt).read(path)
    opt.build(model.trainable_variables)  # (as on its first step): the restored moments land now
    _check(model, opt, info)
    status.expect_partial()


def test_a_torch_optimizer_refuses_kerass_slot_names(keras, golden):
    # shapes that match Keras's (a torch Linear's weight is (out, in): no real torch model matches a Keras one)
    import torch

    path, _ = golden
    net = torch.nn.Module()
    layers = []
    for i, (a, b) in enumerate([(3, 2), (2, 1)]):
        layer = torch.nn.Module()
        layer.kernel = torch.nn.Parameter(torch.zeros(a, b))
        layer.bias = torch.nn.Parameter(torch.zeros(b))
        net.add_module(f"layer_with_weights-{i}", layer)
        layers.append(layer)
    opt = torch.optim.Adam(net.parameters())
    with pytest.raises(ck.CheckpointError, match="'momentum'.*Keras.*exp_avg"):
        ck.Checkpoint(model=net, optimizer=opt).read(path)
    assert not opt.state  # nothing half-installed under a name torch's Adam does not use
