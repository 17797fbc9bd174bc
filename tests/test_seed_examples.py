"""The examples of the founding document (tf.train.Checkpoint), written as ckptcore code."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ckptcore as ck


class Dense(ck.Module):
    def __init__(self, units: int):
        super().__init__()
        self.units = units
        self.kernel = None  # built lazily, like a Keras layer

    def __call__(self, x):
        if self.kernel is None:
            self.kernel = ck.Variable(np.full((x.shape[-1], self.units), 0.1, np.float32))
            self.bias = ck.Variable(np.zeros(self.units, np.float32))
        return x @ self.kernel.numpy() + self.bias.numpy()


class Regress(ck.Module):
    """The seed's ``Regress`` model: a dependency named "input_transform" on its Dense layer."""

    def __init__(self):
        super().__init__()
        self.input_transform = Dense(10)
        self.out = Dense(1)

    def __call__(self, x):
        return self.out(self.input_transform(x))


class Momentum(ck.Module):
    """A toy optimizer whose slot-like state is created on the first step."""

    def __init__(self, lr: float = 0.01):
        super().__init__()
        self.lr = lr
        self.iterations = ck.Variable(0, dtype=np.int64)
        self.velocity = {}

    def minimize(self, model: Regress, x, y):
        pred = model(x)
        grad = (pred - y).mean()
        for i, var in enumerate(model.variables()):
            key = f"v{i}"
            if key not in self.velocity:
                self.velocity[key] = ck.Variable(np.zeros(var.shape, var.dtype))
            vel = self.velocity[key]
            vel.assign(vel.numpy() * 0.9 + grad)
            var.assign(var.numpy() - self.lr * vel.numpy())
        self.iterations.assign_add(1)


def _train(checkpoint_directory: str, steps: int):
    """The seed's "Example usage" block, verbatim in spirit."""
    checkpoint_prefix = os.path.join(checkpoint_directory, "ckpt")
    optimizer, model = Momentum(), Regress()
    checkpoint = ck.Checkpoint(optimizer=optimizer, model=model)
    status = checkpoint.restore(ck.latest_checkpoint(checkpoint_directory))
    x = np.ones((4, 3), np.float32)
    y = np.zeros((4, 1), np.float32)
    for _ in range(steps):
        optimizer.minimize(model, x, y)  # Variables will be restored on creation.
    path = checkpoint.save(file_prefix=checkpoint_prefix)
    return status, optimizer, model, checkpoint, path


def test_example_usage_restores_on_create_across_restarts(tmp_path):
    d = str(tmp_path / "training_checkpoints")
    status, opt, model, ckpt, path = _train(d, steps=3)
    assert path == os.path.join(d, "ckpt-1")
    # no checkpoint yet: the first restore(None) gives an initialization-only status
    with pytest.raises(AssertionError):
        status.assert_consumed()
    saved_kernel = model.input_transform.kernel.numpy()

    # "restart": fresh objects; the model's variables do not exist at restore() time
    opt2, model2 = Momentum(), Regress()
    ckpt2 = ck.Checkpoint(optimizer=opt2, model=model2)
    status2 = ckpt2.restore(ck.latest_checkpoint(d))
    assert model2.input_transform.kernel is None
    assert int(opt2.iterations) == 3  # existed already: restored at once
    with pytest.raises(AssertionError):
        status2.assert_consumed()  # kernels and velocities are still waiting
    x = np.ones((4, 3), np.float32)
    model2(x)  # builds the layers: their variables receive the saved values on creation
    np.testing.assert_array_equal(model2.input_transform.kernel.numpy(), saved_kernel)
    np.testing.assert_array_equal(model2.out.bias.numpy(), model.out.bias.numpy())
    for key, vel in opt.velocity.items():
        opt2.velocity[key] = ck.Variable(np.zeros(vel.shape, vel.dtype))
        np.testing.assert_array_equal(opt2.velocity[key].numpy(), vel.numpy())
    assert status2.assert_consumed() is status2  # Optional sanity checks.
    assert int(ckpt2.save_counter) == 1
    assert ckpt2.save(os.path.join(d, "ckpt")) == os.path.join(d, "ckpt-2")
    assert ck.latest_checkpoint(d) == os.path.join(d, "ckpt-2")


def test_training_loop_resumes_where_it_stopped(tmp_path):
    d = str(tmp_path / "run")
    _, opt, model, _, _ = _train(d, steps=2)
    _, opt2, model2, ckpt2, path2 = _train(d, steps=2)
    assert path2.endswith("ckpt-2")
    assert int(opt2.iterations) == 4  # 2 restored + 2 new


def test_regress_has_named_dependency_input_transform(tmp_path):
    model = Regress()
    model(np.ones((1, 3), np.float32))
    path = ck.Checkpoint(model=model).write(str(tmp_path / "w"))
    keys = [k for k, _ in ck.list_variables(path)]
    assert "model/input_transform/kernel/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "model/input_transform/bias/.ATTRIBUTES/VARIABLE_VALUE" in keys


def test_read_example(tmp_path):
    # Create a checkpoint with write()
    ckpt = ck.Checkpoint(v=ck.Variable(1.0))
    path = ckpt.write(str(tmp_path / "my_checkpoint"))
    assert path == str(tmp_path / "my_checkpoint")
    checkpoint = ck.Checkpoint(v=ck.Variable(0.0))
    # Later, load the checkpoint with read()
    assert checkpoint.read(path).assert_consumed() is not None
    assert float(checkpoint.v) == 1.0
    # With restore() assert_consumed() would have failed.
    with pytest.raises(AssertionError, match="save_counter"):
        ck.Checkpoint(v=ck.Variable(0.0)).restore(path).assert_consumed()
    # You can also pass options.
    options = ck.CheckpointOptions(experimental_io_device="/job:localhost")
    checkpoint.v.assign(5.0)
    checkpoint.read(path, options=options).assert_consumed()
    assert float(checkpoint.v) == 1.0


def test_save_example(tmp_path):
    step = ck.Variable(0, name="step")
    checkpoint = ck.Checkpoint(step=step)
    prefix = str(tmp_path / "ckpt")
    path = checkpoint.save(prefix)
    assert path == prefix + "-1"
    step.assign(7)
    checkpoint.restore(path).assert_consumed()
    assert int(step) == 0
    options = ck.CheckpointOptions(experimental_io_device="/job:localhost")
    step.assign(9)
    path2 = checkpoint.save(prefix, options=options)
    assert path2 == prefix + "-2"
    step.assign(0)
    checkpoint.restore(path2, options=options).assert_consumed()
    assert int(step) == 9


def test_write_example(tmp_path):
    step = ck.Variable(0, name="step")
    checkpoint = ck.Checkpoint(step=step)
    prefix = str(tmp_path / "ckpt")
    assert checkpoint.write(prefix) == prefix
    step.assign(3)
    checkpoint.read(prefix).assert_consumed()
    assert int(step) == 0
    options = ck.CheckpointOptions(experimental_io_device="/job:localhost")
    step.assign(4)
    checkpoint.write(prefix, options=options)
    step.assign(0)
    checkpoint.read(prefix, options=options).assert_consumed()
    assert int(step) == 4
    # write does not number checkpoints, touch save_counter or the state file
    assert int(checkpoint.save_counter) == 0
    assert ck.latest_checkpoint(str(tmp_path)) is None


def test_save_counter_numbers_checkpoints(tmp_path):
    prefix = str(tmp_path / "ckpt")
    checkpoint = ck.Checkpoint(a=np.zeros(2))
    assert isinstance(checkpoint.save_counter, ck.Variable)
    assert checkpoint.save_counter.dtype == np.int64
    paths = [checkpoint.save(prefix) for _ in range(3)]
    assert paths == [f"{prefix}-1", f"{prefix}-2", f"{prefix}-3"]
    assert int(checkpoint.save_counter) == 3
    assert ck.latest_checkpoint(str(tmp_path)) == f"{prefix}-3"
    reader = ck.load_checkpoint(paths[1])
    assert int(reader.get_tensor("save_counter/.ATTRIBUTES/VARIABLE_VALUE")) == 2
    # a new program restoring ckpt-2 continues numbering at 3
    fresh = ck.Checkpoint(a=np.zeros(2))
    fresh.restore(paths[1]).assert_consumed()
    assert int(fresh.save_counter) == 2
    assert fresh.save(prefix) == f"{prefix}-3"
