"""Data shards: the splitting rule, and multi-shard checkpoints on local disk (forced with the storage knob)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

import ckptcore as ck
from ckptcore import save as saver
from ckptcore.formats import ckpt as fmt
from ckptcore.reader import CheckpointReader
from ckptcore.storage import LocalStorage


def _entries(sizes: list[int]) -> list:
    return [(fmt.TensorEntry(key=f"t{i}", dtype="uint8", shape=(n,), shard=0, offset=0, nbytes=n, crc32c=0), None)
            for i, n in enumerate(sizes)]


def _aligned_size(items: list) -> int:
    size = 0
    for e, _ in items:
        size += (-size % fmt.tensor_alignment(e.nbytes, e.dtype)) + e.nbytes
    return size


@settings(max_examples=200, deadline=None)
@given(sizes=hst.lists(hst.integers(0, 3000), max_size=40), shard=hst.integers(1, 2500))
def test_split_rule(sizes, shard):
    tensors = _entries(sizes)
    shards = saver.split_shards(tensors, shard)
    assert shards and all(shards[:-1])              # at least one shard; only a lone last one may be empty
    flat = [item for s in shards for item in s]
    assert sorted(e.key for e, _ in flat) == sorted(e.key for e, _ in tensors)   # every tensor exactly once
    packed = [s for s in shards if not (len(s) == 1 and s[0][0].nbytes >= shard)]
    for s in shards:
        if any(e.nbytes >= shard for e, _ in s):
            assert len(s) == 1                      # a large tensor is a shard of its own
    for s in packed:
        assert _aligned_size(s) <= shard
    # packed tensors keep their order, and a packed shard closes only when the next tensor does not fit
    small = [e.key for e, _ in tensors if e.nbytes < shard]
    assert [e.key for s in packed for e, _ in s] == small
    for a, b in zip(packed, packed[1:]):
        assert _aligned_size(a + b[:1]) > shard
    assert saver.split_shards(tensors, None) == [tensors]


def test_split_stays_within_the_shard_limit():
    tensors = _entries([10] * 200_000)
    shards = saver.split_shards(tensors, 1)
    assert len(shards) < saver.MAX_SHARDS


def _model(seed: int = 0) -> ck.Module:
    rng = np.random.default_rng(seed)
    m = ck.Module()
    m.layers = [rng.standard_normal(40 * (i + 1)).astype(np.float32) for i in range(12)]
    m.big = ck.Variable(rng.integers(0, 255, 5000, dtype=np.uint8))
    m.s = np.array(["ab", "c"])
    return m


def _zeros(m: ck.Module) -> ck.Module:
    z = ck.Module()
    z.layers = [np.zeros_like(a) for a in m.layers]
    z.big = ck.Variable(np.zeros(5000, np.uint8))
    z.s = np.array(["xx", "yy"])
    return z


def _same(a: ck.Module, b: ck.Module) -> None:
    for x, y in zip(a.layers, b.layers):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.big.numpy(), b.big.numpy())
    np.testing.assert_array_equal(a.s, b.s)


def _sharded(concurrency: int) -> LocalStorage:
    st = LocalStorage()
    st.preferred_shard_bytes = 1000
    st.shard_concurrency = concurrency
    return st


@pytest.mark.parametrize("concurrency", [1, 3])
def test_local_multi_shard_round_trip(tmp_path, concurrency):
    st = _sharded(concurrency)
    src = _model(1)
    prefix = str(tmp_path / "ckpt")
    saver.write_plan(st, prefix, saver.plan_save(ck.Checkpoint(model=src)))
    r = CheckpointReader(prefix, storage=st, storage_path=prefix)
    n = r.index.num_shards
    assert n > 3
    assert sorted(os.listdir(tmp_path)) == sorted([f"ckpt.data-{i:05d}-of-{n:05d}" for i in range(n)] + ["ckpt.index"])
    for i, size in enumerate(r.index.shard_sizes):
        assert os.path.getsize(tmp_path / fmt.data_path("ckpt", i, n)) == size
    assert r.verify() == sum(e.nbytes for e in r.index.tensors())
    # restoring reads every shard (the plain local storage reads them one after the other)
    dst = _zeros(src)
    ck.Checkpoint(model=dst).read(prefix).assert_consumed()
    _same(src, dst)
    # the reader with the sharded storage (parallel reads when concurrency > 1) gives the same values
    for e in r.index.tensors():
        if e.key.startswith("model/layers/5/"):
            np.testing.assert_array_equal(r.get_tensor(e.key), src.layers[5])
    assert saver.checkpoint_files(st, prefix) == sorted(
        [str(tmp_path / fmt.data_path("ckpt", i, n)) for i in range(n)] + [prefix + ".index"])


def test_local_corrupt_shard_is_named(tmp_path):
    st = _sharded(3)
    src = _model(2)
    prefix = str(tmp_path / "ckpt")
    saver.write_plan(st, prefix, saver.plan_save(ck.Checkpoint(model=src)))
    n = CheckpointReader(prefix).index.num_shards
    victim = tmp_path / fmt.data_path("ckpt", n - 2, n)
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(ck.CorruptCheckpointError, match=f"checksum mismatch .*{victim.name}"):
        CheckpointReader(prefix, storage=st, storage_path=prefix).verify()
    with pytest.raises(ck.CorruptCheckpointError, match=victim.name):
        ck.Checkpoint(model=_zeros(src)).read(prefix)


class _FailingWrites(LocalStorage):
    """Local storage whose writer for one shard fails halfway."""

    def __init__(self, doomed: str):
        self.doomed = doomed
        self.preferred_shard_bytes = 1000
        self.shard_concurrency = 2

    def open_writer(self, path):
        w = super().open_writer(path)
        if self.doomed in path:
            def write(*_):
                raise OSError(f"disk full writing {path}")
            w.write = w.writev = write
        return w


def test_local_failing_shard_leaves_nothing(tmp_path):
    st = _FailingWrites(".data-00003-of-")
    prefix = str(tmp_path / "ckpt")
    with pytest.raises(OSError, match="data-00003"):
        saver.write_plan(st, prefix, saver.plan_save(ck.Checkpoint(model=_model(3))))
    assert os.listdir(tmp_path) == []      # no index, no shard, no temporary file


def test_local_overwrite_drops_shards_of_the_old_checkpoint(tmp_path):
    prefix = str(tmp_path / "ckpt")
    saver.write_plan(_sharded(2), prefix, saver.plan_save(ck.Checkpoint(model=_model(4))))
    assert len(os.listdir(tmp_path)) > 4
    src = _model(5)
    ck.Checkpoint(model=src).write(prefix)          # plain local storage: one shard
    assert sorted(os.listdir(tmp_path)) == ["ckpt.data-00000-of-00001", "ckpt.index"]
    dst = _zeros(src)
    ck.Checkpoint(model=dst).read(prefix).assert_consumed()
    _same(src, dst)
