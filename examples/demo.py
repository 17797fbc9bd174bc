"""ckptcore demo: train a tiny numpy model, save, "restart", restore into fresh objects.

Run with ``make demo``. Some objects of the restarted program (the optimizer's
momentum slots and a late-built output layer) are created only *after*
``restore()``; they receive their values the moment they appear.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np

import ckptcore as ck


class Dense(ck.Module):
    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator | None = None):
        super().__init__()
        rng = rng or np.random.default_rng(0)
        self.kernel = ck.Variable(rng.normal(0, 0.5, (n_in, n_out)).astype(np.float32))
        self.bias = ck.Variable(np.zeros(n_out, np.float32))

    def __call__(self, x):
        return x @ self.kernel.numpy() + self.bias.numpy()


class Regressor(ck.Module):
    def __init__(self, build_output: bool = True):
        super().__init__()
        self.hidden = Dense(3, 8, np.random.default_rng(1))
        if build_output:
            self.build_output()

    def build_output(self):
        self.output = Dense(8, 1, np.random.default_rng(2))

    def __call__(self, x):
        h = np.tanh(self.hidden(x))
        return self.output(h), h


class Momentum(ck.Module):
    """SGD with momentum; its velocity slots are created lazily on the first step."""

    def __init__(self, lr: float = 0.05, beta: float = 0.9):
        super().__init__()
        self.lr, self.beta = lr, beta
        self.step = ck.Variable(0, dtype=np.int64)
        self.velocity = {}

    def apply(self, name: str, var: ck.Variable, grad: np.ndarray) -> None:
        if name not in self.velocity:
            self.velocity[name] = ck.Variable(np.zeros_like(grad))  # created on first use
        v = self.velocity[name]
        v.assign(self.beta * v.numpy() + grad)
        var.assign(var.numpy() - self.lr * v.numpy())


def train_step(model: Regressor, opt: Momentum, x, y) -> float:
    pred, h = model(x)
    err = pred - y
    loss = float(np.mean(err ** 2))
    g_out = 2 * err / len(x)
    grads = {
        "output.kernel": h.T @ g_out,
        "output.bias": g_out.sum(0),
    }
    g_h = (g_out @ model.output.kernel.numpy().T) * (1 - h ** 2)
    grads["hidden.kernel"] = x.T @ g_h
    grads["hidden.bias"] = g_h.sum(0)
    for name, g in grads.items():
        layer, attr = name.split(".")
        opt.apply(name, getattr(getattr(model, layer), attr), g.astype(np.float32))
    opt.step.assign_add(1)
    return loss


def main(workdir: str) -> int:
    rng = np.random.default_rng(42)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = (x @ np.array([[1.5], [-2.0], [0.5]], np.float32) + 0.3).astype(np.float32)
    prefix = os.path.join(workdir, "ckpt")

    print(f"== run 1: training and saving to {workdir}")
    model, opt = Regressor(), Momentum()
    ckpt = ck.Checkpoint(model=model, optimizer=opt)
    for i in range(30):
        loss = train_step(model, opt, x, y)
        if (i + 1) % 10 == 0:
            path = ckpt.save(prefix)
            print(f"   step {int(opt.step):3d}  loss {loss:.5f}  saved {os.path.basename(path)}")
    saved_kernel = model.output.kernel.numpy()
    reference = [train_step(model, opt, x, y) for _ in range(5)]

    print("== simulated restart: fresh objects, output layer and momentum slots not built yet")
    model2, opt2 = Regressor(build_output=False), Momentum()
    ckpt2 = ck.Checkpoint(model=model2, optimizer=opt2)
    latest = ck.latest_checkpoint(workdir)
    status = ckpt2.restore(latest)
    print(f"   restored {os.path.basename(latest)}; save_counter={int(ckpt2.save_counter)}, step={int(opt2.step)}")
    try:
        status.assert_consumed()
    except AssertionError as e:
        print("   assert_consumed() before building everything fails, as expected:")
        print("     " + str(e).splitlines()[1])
    status.assert_existing_objects_matched()
    print("   assert_existing_objects_matched() passes: everything that exists got its value")

    model2.build_output()  # created after restore(): gets its value on assignment
    restored = np.array_equal(model2.output.kernel.numpy(), saved_kernel)
    print(f"   output layer built after restore() got the saved kernel on creation: {restored}")
    resumed = [train_step(model2, opt2, x, y) for _ in range(5)]
    status.assert_consumed()
    print("   after the first step created the momentum slots, assert_consumed() passes")
    same = np.array_equal(np.array(reference), np.array(resumed))
    print(f"   resumed losses {[f'{v:.5f}' for v in resumed]}")
    print(f"   identical to uninterrupted training: {same}")
    print("== checkpoint contents:")
    for key, shape in ck.list_variables(latest):
        print(f"   {key:60s} {shape}")
    return 0 if same and restored else 1


if __name__ == "__main__":
    d = tempfile.mkdtemp(prefix="ckptcore-demo-")
    try:
        sys.exit(main(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)
