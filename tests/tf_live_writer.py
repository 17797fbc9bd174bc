"""ckptcore's TensorFlow writer side as real TensorFlow sees it: the oracle's ``writer`` cases.

:func:`build` writes, in ckptcore, what TensorFlow then reads in the one oracle subprocess of
tests/test_tensorflow_live.py (``writer_case`` in tests/tf_oracle.py):

- ``convert_graph``: ``ckptcore convert --to tensorflow`` of a ckptcore checkpoint with an object
  graph and adapter state, restored into TensorFlow objects;
- ``convert_flat``: the same of a safetensors file: TF1 name keys, read by ``tf.train.load_checkpoint``;
- ``manager``: a ``CheckpointManager`` directory saved in TensorFlow's format, seen by
  ``tf.train.latest_checkpoint`` and ``tf.train.CheckpointManager``, which then saves into it too.
"""

from __future__ import annotations

import os

import numpy as np

import ckptcore as ck
from ckptcore.distributed.shards import ShardedValue

TF = ck.CheckpointOptions(format="tensorflow")
STATE = {"lr": 0.1, "betas": [0.9, 0.999], "name": "adam-ß"}


class Hyper:
    """An object with a variable and JSON adapter state (as a torch optimizer's param_groups)."""

    def __init__(self, step: int = 0):
        self.step = ck.Variable(np.int64(step))
        self.state: dict = {}


class HyperAdapter(ck.Adapter):
    name = "tests.hyper"

    def children(self, obj):
        return [("step", obj.step)]

    def get_state(self, obj):
        return obj.state or None

    def set_state(self, obj, state):
        obj.state = state


class Part:
    """A value whose global array (6 x 2) is split across workers by rows: this worker's box only."""

    def __init__(self, rank, world):
        rows = 6 // world
        full = np.arange(12, dtype=np.float32).reshape(6, 2)
        self.value = ShardedValue((6, 2), np.float32, [((rank * rows, 0), full[rank * rows:(rank + 1) * rows])])


class PartAdapter(ck.Adapter):
    name = "tests.c12w_part"

    def attributes(self, obj):
        return ["VARIABLE_VALUE"]

    def get_value(self, obj, attr):
        return obj.value


def _var(dtype: str, shape) -> dict:
    return {"__var__": dtype, "shape": list(shape)}


def build(d, main) -> tuple[list[dict], dict]:
    """The oracle's cases (written under ``d``) and the values TensorFlow must restore; ``main`` is the CLI."""
    from safetensors.numpy import save_file

    cases, expected = [], {}

    model = ck.Module()
    model.dense = ck.Module()
    model.dense.kernel = ck.Variable(np.arange(6, dtype=np.float32).reshape(3, 2))
    model.dense.bias = ck.Variable(np.array([0.5, -0.5], np.float32))
    model.blocks = [ck.Variable(np.arange(3, dtype=np.int32))]
    opt = Hyper(7)
    opt.state = dict(STATE)
    plugin = ck.register_adapter(Hyper, HyperAdapter())
    try:
        src = ck.Checkpoint(model=model, opt=opt).write(str(d / "graph-src" / "ckpt"))
    finally:
        ck.registry.unregister_plugin(plugin)
    dst = str(d / "graph-tf" / "ckpt")
    assert main(["convert", src, dst, "--to", "tensorflow", "--no-progress"]) == 0
    spec = {"model": {"dense": {"kernel": _var("float32", (3, 2)), "bias": _var("float32", (2,))},
                      "blocks": [_var("int32", (3,))]},
            "opt": {"step": _var("int64", ())}}
    cases.append({"name": "convert_graph", "kind": "graph", "path": dst, "spec": spec})
    expected["convert_graph"] = {"model/dense/kernel": model.dense.kernel.numpy(),
                                 "model/dense/bias": model.dense.bias.numpy(),
                                 "model/blocks/0": model.blocks[0].numpy(), "opt/step": np.int64(7)}

    flat = {"encoder.layers.0.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
            "encoder.layers.0.bias": np.array([1, 2], np.float64), "head": np.array([True, False])}
    save_file(flat, str(d / "model.safetensors"))
    dst = str(d / "flat-tf" / "ckpt")
    assert main(["convert", str(d / "model.safetensors"), dst, "--to", "tensorflow", "--no-progress"]) == 0
    cases.append({"name": "convert_flat", "kind": "flat", "path": dst})
    expected["convert_flat"] = {k.replace(".", "/"): v for k, v in flat.items()}

    # a multi-worker save: three workers (threads), each its own data shard, one merged index
    import threading

    from ckptcore.distributed.collective import ThreadGroup

    def worker_save(g):
        mm = ck.Module()
        mm.layers = [ck.Variable(np.full((2, 2), i, np.float32)) for i in range(5)]
        mm.bias = ck.Variable(np.arange(3, dtype=np.int64))
        ck.Checkpoint(model=mm, part=Part(g.rank, 3)).write(str(d / "multi" / "ckpt"), ck.CheckpointOptions(
            format="tensorflow", process_group=g, collective_timeout=60))

    part_plugin = ck.register_adapter(Part, PartAdapter())
    try:
        threads = [threading.Thread(target=worker_save, args=(g,)) for g in ThreadGroup.create(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        ck.registry.unregister_plugin(part_plugin)
    assert len([n for n in os.listdir(d / "multi") if ".data-" in n]) == 3
    spec = {"model": {"layers": [_var("float32", (2, 2)) for _ in range(5)], "bias": _var("int64", (3,))},
            "part": _var("float32", (6, 2))}  # saved as a partitioned variable: three slices, one per worker
    cases.append({"name": "multi", "kind": "graph", "path": str(d / "multi" / "ckpt"), "spec": spec})
    expected["multi"] = {**{f"model/layers/{i}": np.full((2, 2), i, np.float32) for i in range(5)},
                         "model/bias": np.arange(3, dtype=np.int64),
                         "part": np.arange(12, dtype=np.float32).reshape(6, 2)}

    directory = d / "managed"
    w = ck.Variable(np.zeros(3, np.float32))
    m = ck.Module()
    m.w = w
    manager = ck.CheckpointManager(ck.Checkpoint(model=m), str(directory), max_to_keep=2)
    for step in range(1, 4):
        w.assign(np.full(3, step, np.float32))
        manager.save(options=TF)
    cases.append({"name": "manager", "kind": "manager", "directory": str(directory), "max_to_keep": 2,
                  "spec": {"model": {"w": _var("float32", (3,))}}, "tf_number": 10})
    expected["manager"] = {"model/w": np.full(3, 3, np.float32)}
    return cases, expected
