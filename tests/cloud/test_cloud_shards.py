"""Data shards on object stores: several objects written and read concurrently, committed as one checkpoint."""

from __future__ import annotations

import re

import numpy as np
import pytest

import ckptcore as ck
from ckptcore.storage import retry as ck_retry

pytestmark = pytest.mark.cloud

SHARD = 256 << 10   # a shard per 256 KiB of tensors in these tests (64 MiB by default)


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    from ckptcore.storage import cloud

    monkeypatch.setattr(cloud, "DEFAULT_SHARD_BYTES", SHARD)
    monkeypatch.setattr(cloud, "DEFAULT_SHARD_CONCURRENCY", 3)
    # fast backoff keeps the fault tests quick
    monkeypatch.setattr(ck_retry, "DEFAULT_POLICY", ck_retry.RetryPolicy(initial_delay=0.001, max_delay=0.01))


def _model(seed: int) -> ck.Module:
    rng = np.random.default_rng(seed)
    m = ck.Module()
    m.big = rng.standard_normal(100_000).astype(np.float32)                  # 400 KB: a shard of its own
    m.mid = [rng.standard_normal(20_000).astype(np.float32) for _ in range(9)]   # 80 KB each: three per shard
    m.small = [np.full(3, i, np.int64) for i in range(50)]                  # packed with their neighbours
    return m


def _zeros_like(m: ck.Module) -> ck.Module:
    z = ck.Module()
    z.big = np.zeros_like(m.big)
    z.mid = [np.zeros_like(a) for a in m.mid]
    z.small = [np.zeros_like(a) for a in m.small]
    return z


def _assert_same(a: ck.Module, b: ck.Module) -> None:
    np.testing.assert_array_equal(a.big, b.big)
    for x, y in zip(a.mid + a.small, b.mid + b.small):
        np.testing.assert_array_equal(x, y)


def _untag(name: str) -> str:
    """An object name without its save attempt's data tag (``.data-00000-of-00001.<16 hex>``, docs/format.md)."""
    return re.sub(r"(\.data-\d{5}-of-\d{5})\.[0-9a-f]{16}$", r"\1", name)


def _names(store, *parts) -> list[str]:
    fs = store.fs()
    fs.invalidate_cache()
    d = "/".join((store.bucket,) + parts)
    if not fs.exists(d):
        return []
    return sorted(_untag(p.rsplit("/", 1)[1]) for p in fs.ls(d, detail=False, refresh=True))


def test_large_checkpoint_is_several_shards_and_round_trips(store):
    so = store.storage_options
    opts = ck.CheckpointOptions(storage_options=so)
    src = _model(1)
    path = ck.Checkpoint(model=src).save(store.url("run", "ckpt"), options=opts)
    r = ck.load_checkpoint(path, storage_options=so)
    n = r.index.num_shards
    assert n == 4     # [big] [save_counter, mid0-2] [mid3-5] [mid6-8, the 50 small ones]
    assert _names(store, "run") == sorted(["checkpoint", "ckpt-1.index"] + [f"ckpt-1.data-{i:05d}-of-{n:05d}"
                                                                            for i in range(n)])
    big = r.entry("model/big/.ATTRIBUTES/VARIABLE_VALUE")
    assert big.offset == 0 and r.index.shard_sizes[big.shard] == big.nbytes   # a large tensor is a shard of its own
    assert all(size <= SHARD for i, size in enumerate(r.index.shard_sizes) if i != big.shard)
    dst = _zeros_like(src)
    ck.Checkpoint(model=dst).restore(ck.latest_checkpoint(store.url("run"), storage_options=so),
                                     options=opts).assert_consumed()
    _assert_same(src, dst)
    assert r.verify() == 8 + src.big.nbytes + sum(a.nbytes for a in src.mid + src.small)   # 8: save_counter
    np.testing.assert_array_equal(r.get_tensor("model/mid/7/.ATTRIBUTES/VARIABLE_VALUE"), src.mid[7])


def test_every_shard_is_committed_before_the_index_s3(s3, s3_requests):
    src = _model(2)
    s3_requests.clear()
    ck.Checkpoint(model=src).write(s3.url("order", "ckpt"))
    written = [_untag(key.rsplit("/", 1)[1]) for op, key in s3_requests
               if op in ("put_object", "complete_multipart_upload")]
    assert written[-1] == "ckpt.index"
    assert sorted(written[:-1]) == [f"ckpt.data-{i:05d}-of-00004" for i in range(4)]
    # shards of at most single_put_bytes are one PUT each, not multipart uploads
    assert not any(op == "create_multipart_upload" for op, _ in s3_requests)


def _fail_one_shard(store, monkeypatch, shard: str) -> list[int]:
    """Make every write of the data object whose name contains ``shard`` fail with a 503; returns a counter."""
    hits = [0]
    if store.name == "s3":
        import s3fs
        from botocore.exceptions import ClientError
        from s3fs.errors import translate_boto_error

        def _s3_error(op):
            return translate_boto_error(ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "injected"},
                                                     "ResponseMetadata": {"HTTPStatusCode": 503}}, op))

        orig = s3fs.S3FileSystem._call_s3

        async def call(self, method, *args, **kwargs):
            if method in ("put_object", "upload_part") and shard in (kwargs.get("Key") or ""):
                hits[0] += 1
                raise _s3_error(method)
            return await orig(self, method, *args, **kwargs)

        monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", call)
    else:
        import gcsfs.core
        from gcsfs.retry import HttpError

        def _gcs_error(op):
            return HttpError({"code": 503, "message": f"injected ({op})"})

        orig = gcsfs.core.simple_upload

        async def upload(fs, bucket, key, *args, **kwargs):
            if shard in key:
                hits[0] += 1
                raise _gcs_error("POST")
            return await orig(fs, bucket, key, *args, **kwargs)

        monkeypatch.setattr(gcsfs.core, "simple_upload", upload)
    return hits


def test_a_failing_shard_leaves_no_checkpoint_and_no_shard(store, monkeypatch):
    so = store.storage_options
    src = _model(3)
    ckpt = ck.Checkpoint(model=src)
    first = ckpt.save(store.url("run", "ckpt"), options=ck.CheckpointOptions(storage_options=so))
    before = _names(store, "run")
    hits = _fail_one_shard(store, monkeypatch, "ckpt-2.data-00002-of-")
    with pytest.raises(ck.StorageError, match=r"ckpt-2\.data-00002-of-00004"):
        ckpt.save(store.url("run", "ckpt"), options=ck.CheckpointOptions(storage_options=so, max_retries=2))
    assert hits[0] == 3    # the first attempt and two retries
    monkeypatch.undo()
    assert _names(store, "run") == before        # the other shards were removed; no ckpt-2 object at all
    assert ck.latest_checkpoint(store.url("run"), storage_options=so) == first
    dst = _zeros_like(src)
    ck.Checkpoint(model=dst).restore(first, options=ck.CheckpointOptions(storage_options=so)).assert_consumed()
    _assert_same(src, dst)
    if store.name == "s3":
        assert store.fs().call_s3("list_multipart_uploads", Bucket=store.bucket).get("Uploads", []) == []


def test_retention_deletes_every_shard(store):
    so = store.storage_options
    src = _model(4)
    mgr = ck.CheckpointManager(ck.Checkpoint(model=src), store.url("run"), max_to_keep=1, storage_options=so)
    mgr.save()
    assert sum(n.startswith("ckpt-1.data-") for n in _names(store, "run")) == 4
    src.mid = src.mid[:3]          # a smaller model: fewer shards
    second = mgr.save()
    r = ck.load_checkpoint(second, storage_options=so)
    n = r.index.num_shards
    assert n == 2                  # [big] [save_counter, mid0-2, small]
    assert _names(store, "run") == sorted(["checkpoint", "ckpt-2.index"] + [f"ckpt-2.data-{i:05d}-of-{n:05d}"
                                                                            for i in range(n)])


def test_overwriting_with_fewer_shards_removes_the_old_ones(s3):
    src = _model(5)
    path = ck.Checkpoint(model=src).write(s3.url("w", "weights"))
    assert len(_names(s3, "w")) == 5
    small = ck.Module()
    small.x = np.arange(10.0)
    ck.Checkpoint(model=small).write(path)
    assert _names(s3, "w") == ["weights.data-00000-of-00001", "weights.index"]
    dst = ck.Module()
    dst.x = np.zeros(10)
    ck.Checkpoint(model=dst).read(path).assert_consumed()
    np.testing.assert_array_equal(dst.x, small.x)


def test_corrupt_or_missing_shard_is_reported_by_name(s3):
    src = _model(6)
    path = ck.Checkpoint(model=src).write(s3.url("bad", "ckpt"))
    fs = s3.fs()
    victim = next(p for p in fs.ls(f"{s3.bucket}/bad", detail=False, refresh=True) if ".data-00002-of-00004" in p)
    data = bytearray(fs.cat_file(victim))
    data[100] ^= 0xFF
    fs.pipe_file(victim, bytes(data))
    with pytest.raises(ck.CorruptCheckpointError, match=r"checksum mismatch .*data-00002-of-00004"):
        ck.Checkpoint(model=_zeros_like(src)).read(path)
    with pytest.raises(ck.CorruptCheckpointError, match="data-00002-of-00004"):
        ck.load_checkpoint(path).verify()
    fs.rm_file(victim)
    with pytest.raises(ck.CorruptCheckpointError, match=r"missing its data file .*data-00002-of-00004"):
        ck.Checkpoint(model=_zeros_like(src)).read(path)


@pytest.fixture
def random_faults(store, monkeypatch):
    """Fail a fraction of the store client's requests (503 or a reset, before or after the server acted)."""
    import random

    state = {"rate": 0.0, "rng": random.Random(99), "injected": 0}
    if store.name == "s3":
        import s3fs

        cls, attr = s3fs.S3FileSystem, "_call_s3"
    else:
        import gcsfs

        cls, attr = gcsfs.GCSFileSystem, "_call"
    orig = getattr(cls, attr)

    async def call(self, method, *args, **kwargs):
        roll = state["rng"].random() < state["rate"]
        if roll and state["rng"].random() < 0.5:
            state["injected"] += 1
            raise ConnectionResetError(f"injected reset before {method}")
        out = await orig(self, method, *args, **kwargs)
        if roll:
            state["injected"] += 1
            raise ConnectionResetError(f"injected reset after {method}")
        return out

    monkeypatch.setattr(cls, attr, call)
    return store, state


def test_sharded_saves_and_restores_under_random_faults(random_faults):
    store, faults = random_faults
    so = store.storage_options
    src = _model(7)
    ckpt = ck.Checkpoint(model=src)
    outcomes = {}
    plan = [(0.2, None)] * 4 + [(0.3, 0)] * 6
    for i, (rate, retries) in enumerate(plan):
        faults["rate"] = rate
        src.big[:] = i
        try:
            outcomes[ckpt.save(store.url("run", "ckpt"),
                               options=ck.CheckpointOptions(storage_options=so, max_retries=retries))] = i
        except ck.CheckpointError:
            pass
    assert faults["injected"] >= 10
    assert 4 <= len(outcomes) < len(plan)    # retried saves get through; unretried ones may fail, cleanly
    faults["rate"] = 0.0
    indexes = [n[:-len(".index")] for n in _names(store, "run") if n.endswith(".index")]
    assert sorted(store.url("run", n) for n in indexes) == sorted(outcomes)   # a failed save leaves no index
    for path in outcomes:
        assert ck.load_checkpoint(path, storage_options=so).verify() > 0
    # reading several shards at once, each ranged GET retried on its own
    faults["rate"] = 0.2
    latest = max(outcomes, key=outcomes.get)
    dst = _zeros_like(src)
    ck.Checkpoint(model=dst).restore(latest, options=ck.CheckpointOptions(storage_options=so)).assert_consumed()
    assert (dst.big == outcomes[latest]).all()
    for x, y in zip(src.mid + src.small, dst.mid + dst.small):
        np.testing.assert_array_equal(x, y)


def test_manager_cleans_up_shards_left_by_a_crashed_save(store):
    """Shards written before a crash (no index) are removed by the next save; committed ones stay."""
    so = store.storage_options
    src = _model(8)
    mgr = ck.CheckpointManager(ck.Checkpoint(model=src), store.url("run"), max_to_keep=3, storage_options=so)
    mgr.partial_file_grace_seconds = 0
    mgr.save()
    fs = store.fs()
    crashed = [f"ckpt-7.data-{i:05d}-of-00004" for i in (0, 2)]   # a save that died before its index
    for name in crashed:
        fs.pipe_file(f"{store.bucket}/run/{name}", b"partial")
    assert set(crashed) <= set(_names(store, "run"))
    second = mgr.save()
    names = _names(store, "run")
    assert not set(crashed) & set(names)
    assert sum(n.startswith("ckpt-1.data-") for n in names) == 4
    assert sum(n.startswith("ckpt-2.data-") for n in names) == 4
    assert ck.load_checkpoint(second, storage_options=so).verify() > 0


@pytest.mark.parametrize("pieces, multipart", [(2, False), (4, True)])
def test_s3_writer_single_put_up_to_the_limit_then_multipart(s3, s3_requests, pieces, multipart):
    """Buffers held for a single PUT are sent in order, also when the object outgrows one PUT."""
    st, path = ck.storage.open_storage(s3.url("w", f"obj-{pieces}"))
    st.part_size = 5 << 20
    st.single_put_bytes = 8 << 20
    rng = np.random.default_rng(pieces)
    chunks = [rng.integers(0, 255, 3 << 20, dtype=np.uint8) for _ in range(pieces)]
    s3_requests.clear()
    w = st.open_writer(path)
    w.writev([memoryview(c) for c in chunks[:1]] + [b"\0" * 7])
    for c in chunks[1:]:
        w.write(memoryview(c))
    w.commit()
    ops = [op for op, _ in s3_requests]
    assert ("create_multipart_upload" in ops) == multipart and ("put_object" in ops) != multipart
    expected = chunks[0].tobytes() + b"\0" * 7 + b"".join(c.tobytes() for c in chunks[1:])
    assert st.read_bytes(path) == expected
