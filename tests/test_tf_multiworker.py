"""Multi-worker saves in TensorFlow's format: each worker its own data-0000r-of-0000W shard, one merged index.

Workers are threads of a ThreadGroup (ckptcore.distributed.collective), so no torch is needed; real
TensorFlow restoring such a checkpoint is checked in tests/test_tensorflow_live.py.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from tf_live_writer import Part, PartAdapter  # a value split across workers by rows

import ckptcore as ck
from ckptcore.distributed.collective import ThreadGroup


def _run(world: int, fn):
    """``fn(group)`` on every worker; returns (results, errors) by rank."""
    groups = ThreadGroup.create(world)
    results: list = [None] * world
    errors: list = [None] * world

    def work(g):
        try:
            results[g.rank] = fn(g)
        except BaseException as e:  # noqa: BLE001
            errors[g.rank] = e

    threads = [threading.Thread(target=work, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def _model():
    m = ck.Module()
    m.dense = ck.Module()
    m.dense.kernel = ck.Variable(np.arange(12, dtype=np.float32).reshape(3, 4))
    m.dense.bias = ck.Variable(np.arange(4, dtype=np.float64))
    m.blocks = [ck.Variable(np.full(5, i, np.int32)) for i in range(4)]
    return m


def _opts(g, **kw):
    return ck.CheckpointOptions(format="tensorflow", process_group=g, collective_timeout=30, **kw)


@pytest.mark.parametrize("world", [2, 3])
def test_each_worker_writes_its_shard_and_one_index_names_them(tmp_path, world):
    path = str(tmp_path / "ckpt")
    results, errors = _run(world, lambda g: ck.Checkpoint(model=_model()).write(path, _opts(g)))
    assert errors == [None] * world and results == [path] * world
    names = sorted(os.listdir(tmp_path))
    assert names == [f"ckpt.data-{r:05d}-of-{world:05d}" for r in range(world)] + ["ckpt.index"]
    r = ck.load_checkpoint(path)
    assert r.format.name == "tensorflow" and r.index.num_shards == world
    assert len(set(r.index.table.shard)) == world  # the values are spread over the workers
    single = ck.Checkpoint(model=_model()).write(str(tmp_path / "single" / "ckpt"),
                                                 options=ck.CheckpointOptions(format="tensorflow"))
    assert ck.list_variables(path) == ck.list_variables(single)
    r.verify()
    m = _model()
    for v in (m.dense.kernel, m.dense.bias, *m.blocks):
        v.assign(np.zeros_like(v.numpy()))
    ck.Checkpoint(model=m).read(path).assert_consumed()
    assert m.blocks[3].numpy().tolist() == [3] * 5 and m.dense.kernel.numpy()[2, 3] == 11


def test_a_failing_worker_leaves_nothing_and_every_worker_says_which(tmp_path):
    path = str(tmp_path / "ckpt")

    def save(g):
        m = _model()
        if g.rank == 1:
            m.bad = np.zeros(2, np.dtype("U3"))  # a dtype TensorFlow cannot hold: planning fails on rank 1
        return ck.Checkpoint(model=m).write(path, _opts(g))

    _, errors = _run(2, save)
    assert isinstance(errors[1], ck.CheckpointError) and "dtype" in str(errors[1])
    assert isinstance(errors[0], ck.CheckpointError) and "rank 1 failed planning its save" in str(errors[0])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("world", [2, 3])
def test_a_value_sharded_across_workers_becomes_a_partitioned_variable(tmp_path, world):
    from ckptcore.formats.tensorbundle.bundle import parse_entries
    from ckptcore.formats.tensorbundle.slices import decode_slice_key

    plugin = ck.register_adapter(Part, PartAdapter())
    try:
        _, errors = _run(world, lambda g: ck.Checkpoint(p=Part(g.rank, world), b=np.ones(3)).write(
            str(tmp_path / "c"), _opts(g)))
    finally:
        ck.registry.unregister_plugin(plugin)
    assert errors == [None] * world
    key = "p/.ATTRIBUTES/VARIABLE_VALUE"
    _, entries = parse_entries((tmp_path / "c.index").read_bytes(), "c.index")
    assert len(entries[key].slices) == world  # TensorFlow's full entry: dtype, shape, the slices, no data
    boxes = sorted(decode_slice_key(k.encode("latin-1")) for k in entries if k.startswith("\x00"))
    rows = 6 // world
    assert boxes == [(key, (r * rows, 0), (rows, 2)) for r in range(world)]
    r = ck.load_checkpoint(str(tmp_path / "c"))
    assert r.get_tensor(key).tolist() == np.arange(12, dtype=np.float32).reshape(6, 2).tolist()
    r.verify()


def test_overwriting_and_async_multi_worker_saves(tmp_path):
    path = str(tmp_path / "ckpt")
    _, errors = _run(3, lambda g: ck.Checkpoint(model=_model()).write(path, _opts(g)))
    assert errors == [None] * 3

    def again(g):
        ckpt = ck.Checkpoint(model=_model())
        ckpt.write(path, _opts(g, enable_async=True))
        ckpt.sync()

    _, errors = _run(2, again)  # fewer workers: the old third shard must go
    assert errors == [None] * 2
    assert sorted(os.listdir(tmp_path)) == ["ckpt.data-00000-of-00002", "ckpt.data-00001-of-00002", "ckpt.index"]
    assert ck.load_checkpoint(path).index.num_shards == 2


def test_a_manager_of_multi_worker_saves_writes_tensorflows_state_file(tmp_path):
    def save(g):
        manager = ck.CheckpointManager(ck.Checkpoint(model=_model()), str(tmp_path), max_to_keep=1)
        manager.save(options=_opts(g))
        return manager.save(options=_opts(g))

    results, errors = _run(2, save)
    assert errors == [None, None]
    raw = (tmp_path / "checkpoint").read_bytes()
    assert b'model_checkpoint_path: "ckpt-2"' in raw
    assert ck.latest_checkpoint(str(tmp_path)) == results[0]
    assert not (tmp_path / "ckpt-1.index").exists()


def test_rank_0_dying_after_its_index_leaves_a_complete_checkpoint_and_the_others_say_so(tmp_path):
    """The failure rules of ckptcore's collective save hold for TensorFlow's format (its helpers are shared)."""
    from ckptcore.distributed import CollectiveTimeoutError
    from ckptcore.formats.tensorbundle.collective import collective_write
    from ckptcore.save import plan_save
    from ckptcore.storage import open_storage

    storage, spath = open_storage(str(tmp_path / "ckpt"))
    gone = threading.Event()

    def save(g):
        def on_commit():
            if g.rank == 0:  # rank 0 "killed" right after its index write: no message to the others
                g.abort()
                gone.set()
                raise SystemExit
        collective_write(g, storage, spath, lambda: plan_save(ck.Checkpoint(model=_model())._ck_graph()[0]),
                         timeout=20, on_commit=on_commit)

    _, errors = _run(2, save)
    assert gone.is_set()
    assert isinstance(errors[1], CollectiveTimeoutError) and "its index exists" in str(errors[1])
    ck.load_checkpoint(str(tmp_path / "ckpt")).verify()  # complete, all shards
