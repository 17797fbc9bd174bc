"""The checkpoint API on real S3 (moto) and GCS (emulator) servers."""

from __future__ import annotations

import re

import numpy as np
import pytest

import ckptcore as ck
from ckptcore.storage.cloud import CloudStorage

pytestmark = pytest.mark.cloud


def _model(seed: int = 0) -> ck.Module:
    rng = np.random.default_rng(seed)
    m = ck.Module()
    m.w = ck.Variable(rng.standard_normal((64, 32)).astype(np.float32))
    m.b = ck.Variable(rng.standard_normal(32))
    m.step = ck.Variable(np.int64(seed))
    return m


def _assert_same(a: ck.Module, b: ck.Module) -> None:
    for name in ("w", "b", "step"):
        np.testing.assert_array_equal(getattr(a, name).numpy(), getattr(b, name).numpy())


def test_save_latest_restore_read(store):
    opts = ck.CheckpointOptions(storage_options=store.storage_options)
    src = _model(1)
    ckpt = ck.Checkpoint(model=src)
    p1 = ckpt.save(store.url("run", "ckpt"), options=opts)
    src.w.assign(src.w.numpy() * 2)
    p2 = ckpt.save(store.url("run", "ckpt"), options=opts)
    assert (p1, p2) == (store.url("run", "ckpt-1"), store.url("run", "ckpt-2"))
    assert ck.latest_checkpoint(store.url("run"), storage_options=store.storage_options) == p2

    dst = _model(7)
    ck.Checkpoint(model=dst).restore(p2, options=opts).assert_consumed()
    _assert_same(src, dst)

    # the directory restores its latest checkpoint
    dst2 = _model(8)
    ck.Checkpoint(model=dst2).restore(store.url("run"), options=opts).assert_existing_objects_matched()
    _assert_same(src, dst2)

    # write()/read() and the reader API
    w = ck.Checkpoint(model=src).write(store.url("exported", "weights"), options=opts)
    dst3 = _model(9)
    ck.Checkpoint(model=dst3).read(w, options=opts).assert_consumed()
    _assert_same(src, dst3)
    r = ck.load_checkpoint(w, storage_options=store.storage_options)
    assert r.verify() > 0
    np.testing.assert_array_equal(r.get_tensor("model/w/.ATTRIBUTES/VARIABLE_VALUE"), src.w.numpy())
    assert dict(ck.list_variables(w, storage_options=store.storage_options))[
        "model/b/.ATTRIBUTES/VARIABLE_VALUE"] == [32]


def test_bucket_urls_get_cloud_storage(store):
    st, path = ck.storage.open_storage(store.url("run", "ckpt"), store.storage_options)
    assert isinstance(st, CloudStorage)
    assert path == f"{store.bucket}/run/ckpt"
    assert st.url(path) == store.url("run", "ckpt")


def test_async_save_snapshots_and_syncs(store):
    opts = ck.CheckpointOptions(enable_async=True, storage_options=store.storage_options)
    src = _model(2)
    expected = src.w.numpy().copy()
    ckpt = ck.Checkpoint(model=src)
    path = ckpt.save(store.url("async", "ckpt"), options=opts)
    src.w.assign(np.zeros_like(expected))   # after the snapshot: must not reach the bucket
    ckpt.sync()
    assert ck.latest_checkpoint(store.url("async"), storage_options=store.storage_options) == path
    dst = _model(3)
    ck.Checkpoint(model=dst).restore(path, options=ck.CheckpointOptions(storage_options=store.storage_options))
    np.testing.assert_array_equal(dst.w.numpy(), expected)


def test_large_tensor_roundtrip_multipart_and_ranged(store, monkeypatch):
    """A tensor bigger than several parts goes up in parts and comes back by ranges, bit-exact."""
    from ckptcore.storage import cloud

    monkeypatch.setattr(cloud, "DEFAULT_PART_SIZE", 1 << 20)   # small parts keep the test small (S3: 5 MiB)
    monkeypatch.setattr(cloud, "DEFAULT_READ_BLOCK", 1 << 20)
    monkeypatch.setattr(cloud, "DEFAULT_READ_AHEAD", 3)
    big = np.random.default_rng(0).standard_normal(3_000_000).astype(np.float32)   # 12 MB
    m = ck.Module()
    m.big = big
    m.small = np.arange(5)
    opts = ck.CheckpointOptions(storage_options=store.storage_options)
    path = ck.Checkpoint(model=m).write(store.url("big", "ckpt"), options=opts)
    m2 = ck.Module()
    m2.big = np.zeros_like(big)
    m2.small = np.zeros(5, np.int64)
    ck.Checkpoint(model=m2).read(path, options=opts).assert_consumed()
    np.testing.assert_array_equal(m2.big, big)
    np.testing.assert_array_equal(m2.small, np.arange(5))
    assert ck.load_checkpoint(path, storage_options=store.storage_options).verify() == big.nbytes + 5 * 8


def test_env_credentials_and_explicit_storage_options_s3(s3, moto_server, monkeypatch):
    """S3 works with credentials from the environment, and with storage_options alone."""
    a = _model(4)
    path = ck.Checkpoint(model=a).save(s3.url("env", "ckpt"))       # environment only
    explicit = {"key": "testing", "secret": "testing", "endpoint_url": moto_server,
                "client_kwargs": {"region_name": "us-east-1"}, "skip_instance_cache": True}
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    b = _model(5)
    ck.Checkpoint(model=b).restore(path, options=ck.CheckpointOptions(storage_options=explicit)).assert_consumed()
    _assert_same(a, b)
    assert ck.latest_checkpoint(s3.url("env"), storage_options=explicit) == path


def test_manager_on_bucket_prefix(store):
    """Retention, latest, recovery and restore_or_initialize on a bucket prefix; deletion removes every object."""
    src = _model(6)
    ckpt = ck.Checkpoint(model=src)
    directory = store.url("managed")
    mgr = ck.CheckpointManager(ckpt, directory, max_to_keep=2, storage_options=store.storage_options)
    paths = [mgr.save() for _ in range(4)]
    assert paths == [store.url("managed", f"ckpt-{i}") for i in range(1, 5)]
    assert mgr.checkpoints == paths[2:]
    assert mgr.latest_checkpoint == paths[-1]
    assert ck.latest_checkpoint(directory, storage_options=store.storage_options) == paths[-1]

    fs = store.fs()
    fs.invalidate_cache()
    names = sorted(re.sub(r"\.[0-9a-f]{16}$", "", p.rsplit("/", 1)[1])   # without the data tags
                   for p in fs.ls(f"{store.bucket}/managed", detail=False, refresh=True))
    assert names == ["checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index",
                     "ckpt-4.data-00000-of-00001", "ckpt-4.index"]

    # a new manager recovers the list from the state object
    mgr2 = ck.CheckpointManager(ck.Checkpoint(model=_model(0)), directory, max_to_keep=2,
                                storage_options=store.storage_options)
    assert mgr2.checkpoints == paths[2:]
    dst = _model(11)
    mgr3 = ck.CheckpointManager(ck.Checkpoint(model=dst), directory, max_to_keep=2,
                                storage_options=store.storage_options)
    assert mgr3.restore_or_initialize() == paths[-1]
    _assert_same(src, dst)


def test_manager_async_saves_on_bucket(store):
    src = _model(12)
    ckpt = ck.Checkpoint(model=src)
    mgr = ck.CheckpointManager(ckpt, store.url("amgr"), max_to_keep=1, storage_options=store.storage_options)
    opts = ck.CheckpointOptions(enable_async=True, storage_options=store.storage_options)
    mgr.save(options=opts)
    last = mgr.save(options=opts)
    mgr.sync()
    assert mgr.checkpoints == [last]
    assert ck.latest_checkpoint(store.url("amgr"), storage_options=store.storage_options) == last
    dst = _model(13)
    ck.Checkpoint(model=dst).restore(last, options=ck.CheckpointOptions(storage_options=store.storage_options))
    _assert_same(src, dst)


def test_empty_objects_roundtrip(store):
    """A checkpoint without tensors has an empty data object; empty objects read back as b''."""
    opts = ck.CheckpointOptions(storage_options=store.storage_options)
    path = ck.Checkpoint().write(store.url("empty", "ckpt"), options=opts)
    assert ck.load_checkpoint(path, storage_options=store.storage_options).verify() == 0
    st, p = ck.storage.open_storage(store.url("empty", "blob"), store.storage_options)
    st.write_atomic(p, b"")
    assert st.read_bytes(p) == b"" and st.size(p) == 0 and st.exists(p)
