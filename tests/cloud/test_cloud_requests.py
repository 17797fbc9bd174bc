"""Request counts on object stores: small tensors are packed, large ones go in parallel parts/ranges."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

import ckptcore as ck

pytestmark = pytest.mark.cloud


def _many_small(n: int) -> ck.Module:
    m = ck.Module()
    m.layers = [np.full(4, i, np.float32) for i in range(n)]
    return m


def test_20000_variables_is_a_handful_of_requests_s3(s3, s3_requests):
    m = _many_small(20_000)
    ckpt = ck.Checkpoint(model=m)
    s3_requests.clear()
    path = ckpt.save(s3.url("run", "ckpt"))
    save_ops = Counter(op for op, _ in s3_requests)
    assert sum(save_ops.values()) <= 8, save_ops
    assert save_ops["put_object"] == 3          # data, index, state: nothing per variable
    # the commit order on a store without rename: data, then index, then state
    puts = [re.sub(r"\.[0-9a-f]{16}$", "", key.rsplit("/", 1)[1])   # without the data tag
            for op, key in s3_requests if op in ("put_object", "complete_multipart_upload")]
    assert puts == ["ckpt-1.data-00000-of-00001", "ckpt-1.index", "checkpoint"]

    s3_requests.clear()
    m2 = _many_small(20_000)
    for a in m2.layers:
        a[...] = -1
    ck.Checkpoint(model=m2).restore(path).assert_consumed()
    assert all(int(a[0]) == i for i, a in enumerate(m2.layers))
    restore_ops = Counter(op for op, _ in s3_requests)
    assert sum(restore_ops.values()) <= 8, restore_ops
    assert not restore_ops.get("list_objects_v2")   # the latest checkpoint needs no listing


def test_20000_variables_is_a_handful_of_requests_gcs(gcs, gcs_requests):
    m = _many_small(20_000)
    opts = ck.CheckpointOptions(storage_options=gcs.storage_options)
    gcs_requests.clear()
    path = ck.Checkpoint(model=m).save(gcs.url("run", "ckpt"), options=opts)
    assert len(gcs_requests) <= 8, gcs_requests
    gcs_requests.clear()
    ck.Checkpoint(model=_many_small(20_000)).restore(path, options=opts).assert_consumed()
    assert len(gcs_requests) <= 8, gcs_requests
    gcs_requests.clear()
    assert ck.latest_checkpoint(gcs.url("run"), storage_options=gcs.storage_options) == path
    assert len(gcs_requests) <= 3, gcs_requests   # state object + index check, no listing


def test_large_tensor_uses_parallel_parts_and_ranges_s3(s3, s3_requests, monkeypatch):
    from ckptcore.storage import cloud

    monkeypatch.setattr(cloud, "DEFAULT_PART_SIZE", 5 << 20)
    monkeypatch.setattr(cloud, "DEFAULT_SINGLE_PUT", 0)     # larger than one part: a multipart upload
    monkeypatch.setattr(cloud, "DEFAULT_MAX_CONCURRENCY", 4)
    monkeypatch.setattr(cloud, "DEFAULT_READ_BLOCK", 5 << 20)
    monkeypatch.setattr(cloud, "DEFAULT_READ_AHEAD", 4)
    big = np.random.default_rng(1).integers(0, 255, 23 << 20, dtype=np.uint8)   # 23 MiB
    m = ck.Module()
    m.big = big
    s3_requests.clear()
    path = ck.Checkpoint(model=m).write(s3.url("big", "ckpt"))
    ops = Counter(op for op, _ in s3_requests)
    assert ops["create_multipart_upload"] == 1 and ops["upload_part"] == 5 and ops["complete_multipart_upload"] == 1
    s3_requests.clear()
    m2 = ck.Module()
    m2.big = np.zeros_like(big)
    ck.Checkpoint(model=m2).read(path).assert_consumed()
    np.testing.assert_array_equal(m2.big, big)
    gets = [k for op, k in s3_requests if op == "get_object" and ".data-00000-of-00001" in k]
    assert len(gets) == 5          # five 5 MiB ranges, fetched concurrently


def test_read_ahead_spans_tensors_and_partial_reads_are_exact(s3, s3_requests, monkeypatch):
    """Many mid-size tensors come through a few big ranged GETs; a partial read returns exact values."""
    from ckptcore.storage import cloud

    monkeypatch.setattr(cloud, "DEFAULT_READ_BLOCK", 4 << 20)
    monkeypatch.setattr(cloud, "DEFAULT_READ_AHEAD", 3)
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(300_000 + 1000 * i).astype(np.float32) for i in range(12)]   # ~1.2 MB each
    m = ck.Module()
    m.t = arrays
    path = ck.Checkpoint(model=m).write(s3.url("ra", "ckpt"))
    s3_requests.clear()
    m2 = ck.Module()
    m2.t = [np.zeros_like(a) for a in arrays]
    ck.Checkpoint(model=m2).read(path).assert_consumed()
    for a, b in zip(arrays, m2.t):
        np.testing.assert_array_equal(a, b)
    gets = [k for op, k in s3_requests if op == "get_object" and ".data-00000-of-00001" in k]
    assert len(gets) == 4          # 14.6 MB in 4 MiB blocks, not one GET per tensor
    r = ck.load_checkpoint(path)
    np.testing.assert_array_equal(r.get_tensor("model/t/7/.ATTRIBUTES/VARIABLE_VALUE"), arrays[7])


def test_aborted_multipart_upload_leaves_nothing(s3):
    """A data object that fails mid-upload is aborted: no object, no pending multipart upload."""
    st, path = ck.storage.open_storage(s3.url("abort", "ckpt.data-00000-of-00001"))
    st.single_put_bytes = 0       # past one part, a multipart upload
    w = st.open_writer(path)
    w.write(b"x" * (6 << 20))     # starts a multipart upload
    w.abort()
    assert not st.exists(path)
    fs = s3.fs()
    uploads = fs.call_s3("list_multipart_uploads", Bucket=s3.bucket).get("Uploads", [])
    assert uploads == []


def test_large_object_is_a_parallel_composite_upload_gcs(gcs, gcs_requests, monkeypatch):
    """GCS: parts go up as temporary objects, are composed in a tree (32 per compose) and deleted."""
    from ckptcore.storage import cloud

    monkeypatch.setattr(cloud, "DEFAULT_PART_SIZE", 64 << 10)
    monkeypatch.setattr(cloud, "DEFAULT_SINGLE_PUT", 0)
    big = np.random.default_rng(2).integers(0, 255, 40 * (64 << 10) + 123, dtype=np.uint8)  # 41 parts
    m = ck.Module()
    m.big = big
    opts = ck.CheckpointOptions(storage_options=gcs.storage_options)
    gcs_requests.clear()
    path = ck.Checkpoint(model=m).write(gcs.url("big", "ckpt"), options=opts)
    composes = [p for _, p in gcs_requests if p.endswith("/compose")]
    assert len(composes) == 3        # 41 parts: two first-level composes, then the final one
    fs = gcs.fs()
    fs.invalidate_cache()
    names = sorted(re.sub(r"\.[0-9a-f]{16}$", "", p.rsplit("/", 1)[1])
                   for p in fs.ls(f"{gcs.bucket}/big", detail=False, refresh=True))
    assert names == ["ckpt.data-00000-of-00001", "ckpt.index"]      # no temporary object left
    m2 = ck.Module()
    m2.big = np.zeros_like(big)
    ck.Checkpoint(model=m2).read(path, options=opts).assert_consumed()
    np.testing.assert_array_equal(m2.big, big)


def test_aborted_composite_upload_leaves_nothing_gcs(gcs):
    st, path = ck.storage.open_storage(gcs.url("abort", "ckpt.data-00000-of-00001"), gcs.storage_options)
    st.part_size = 64 << 10
    st.single_put_bytes = 0
    w = st.open_writer(path)
    w.write(b"x" * (300 << 10))    # several temporary part objects
    w.abort()
    fs = gcs.fs()
    fs.invalidate_cache()
    assert not fs.exists(f"{gcs.bucket}/abort") or fs.ls(f"{gcs.bucket}/abort", refresh=True) == []
