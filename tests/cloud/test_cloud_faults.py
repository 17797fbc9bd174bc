"""Fault injection: requests to the real servers fail at random; nothing is ever torn.

The wrapper sits at the request layer of s3fs/gcsfs (below their own
retries), and fails a fraction of requests either before they reach the
server or after the server acted (the response is "lost"), with 503s and
connection resets.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import ckptcore as ck
from ckptcore.storage import retry as ck_retry

pytestmark = pytest.mark.cloud


class Faults:
    def __init__(self, rate: float, seed: int):
        self.rate = rate
        self.rng = random.Random(seed)
        self.injected = 0
        self.enabled = True

    def roll(self) -> str | None:
        if not self.enabled or self.rng.random() >= self.rate:
            return None
        self.injected += 1
        return self.rng.choice(["reset-before", "503-before", "reset-after"])


def _s3_error(op: str):
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    err = ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "injected"},
                       "ResponseMetadata": {"HTTPStatusCode": 503}}, op)
    return translate_boto_error(err)


def _gcs_error(op: str):
    from gcsfs.retry import HttpError

    return HttpError({"code": 503, "message": f"injected ({op})"})


@pytest.fixture
def faulty(store, monkeypatch):
    """Inject faults into every request the store's client makes; returns (store, Faults)."""
    faults = Faults(rate=0.0, seed=1234)
    if store.name == "s3":
        import s3fs

        cls, attr, make = s3fs.S3FileSystem, "_call_s3", _s3_error
    else:
        import gcsfs

        cls, attr, make = gcsfs.GCSFileSystem, "_call", _gcs_error
    orig = getattr(cls, attr)

    async def call(self, method, *args, **kwargs):
        kind = faults.roll()
        if kind == "reset-before":
            raise ConnectionResetError(f"injected reset before {method}")
        if kind == "503-before":
            raise make(str(method))
        out = await orig(self, method, *args, **kwargs)
        if kind == "reset-after":
            raise ConnectionResetError(f"injected reset after {method}")
        return out

    monkeypatch.setattr(cls, attr, call)
    # fast backoff keeps the test quick; the policy itself is what is under test
    monkeypatch.setattr(ck_retry, "DEFAULT_POLICY", ck_retry.RetryPolicy(initial_delay=0.001, max_delay=0.01))
    return store, faults


def _assert_intact(store, faults, expected: dict[str, np.ndarray]) -> None:
    """Every committed checkpoint (index present) is complete; latest_checkpoint names a good one."""
    faults.enabled = False
    so = store.storage_options
    fs = store.fs()
    fs.invalidate_cache()
    names = [p.rsplit("/", 1)[1] for p in fs.ls(f"{store.bucket}/run", detail=False, refresh=True)] \
        if fs.exists(f"{store.bucket}/run") else []
    for name in names:
        if name.endswith(".index"):
            path = store.url("run", name[:-len(".index")])
            r = ck.load_checkpoint(path, storage_options=so)
            r.verify()
            np.testing.assert_array_equal(r.get_tensor("model/w/.ATTRIBUTES/VARIABLE_VALUE"), expected[path])
    latest = ck.latest_checkpoint(store.url("run"), storage_options=so)
    if latest is not None:
        w = np.zeros_like(expected[latest])
        m = ck.Module()
        m.w = w
        ck.Checkpoint(model=m).restore(latest, options=ck.CheckpointOptions(storage_options=so)).expect_partial()
        np.testing.assert_array_equal(w, expected[latest])
    faults.enabled = True


def test_saves_survive_or_fail_cleanly_under_faults(faulty, monkeypatch):
    store, faults = faulty
    from ckptcore.storage import cloud

    # 6 MB of data: on S3 a 2-part multipart upload (5 MiB minimum part), on GCS a 6-part composite
    # upload; read back in 6 concurrent ranged GETs.
    monkeypatch.setattr(cloud, "DEFAULT_PART_SIZE", 1 << 20)
    monkeypatch.setattr(cloud, "DEFAULT_SINGLE_PUT", 0)
    monkeypatch.setattr(cloud, "DEFAULT_READ_BLOCK", 1 << 20)
    n = 1_500_000
    so = store.storage_options
    m = ck.Module()
    m.w = np.zeros(n, np.float32)
    ckpt = ck.Checkpoint(model=m)
    expected: dict[str, np.ndarray] = {}
    ok = failed = 0
    # Phase 1: 20% of requests fail, default retries: saves succeed.
    # Phase 2: no retries at all: many saves fail, always cleanly.
    for phase, (rate, retries) in enumerate([(0.2, None), (0.15, 0)]):
        faults.rate = rate
        for i in range(6):
            m.w[...] = phase * 100 + i
            number = int(ckpt.save_counter) + 1
            path = store.url("run", f"ckpt-{number}")
            expected[path] = m.w.copy()
            try:
                got = ckpt.save(store.url("run", "ckpt"),
                                options=ck.CheckpointOptions(storage_options=so, max_retries=retries))
                assert got == path
                ok += 1
            except ck.CheckpointError:
                failed += 1
            _assert_intact(store, faults, expected)
    assert faults.injected > 10
    assert ok >= 6 and failed >= 1   # phase 1 always gets through; phase 2 fails some, cleanly
    # restoring under faults works too (retried reads)
    faults.rate = 0.2
    latest = ck.latest_checkpoint(store.url("run"), storage_options=so)
    assert latest is not None
    m2 = ck.Module()
    m2.w = np.zeros(n, np.float32)
    ck.Checkpoint(model=m2).restore(latest, options=ck.CheckpointOptions(storage_options=so)).expect_partial()
    np.testing.assert_array_equal(m2.w, expected[latest])


def test_failed_save_leaves_no_checkpoint_and_keeps_earlier_ones(faulty):
    store, faults = faulty
    so = store.storage_options
    m = ck.Module()
    m.w = np.ones(60_000, np.float32)
    ckpt = ck.Checkpoint(model=m)
    mgr = ck.CheckpointManager(ckpt, store.url("run"), max_to_keep=3, storage_options=so)
    first = mgr.save()
    faults.rate = 1.0   # the store is down
    m.w[...] = 2
    with pytest.raises(ck.CheckpointError):
        mgr.save(options=ck.CheckpointOptions(storage_options=so, max_retries=1))
    faults.rate = 0.0
    assert mgr.latest_checkpoint == first
    assert ck.latest_checkpoint(store.url("run"), storage_options=so) == first
    fs = store.fs()
    fs.invalidate_cache()
    assert not any(p.endswith("ckpt-2.index") for p in fs.ls(f"{store.bucket}/run", detail=False, refresh=True))
    _assert_intact(store, faults, {first: np.ones(60_000, np.float32)})


def test_retry_classification():
    assert ck_retry.is_transient(_s3_error("PutObject"))
    assert ck_retry.is_transient(_gcs_error("POST"))
    assert ck_retry.is_transient(ConnectionResetError())
    assert not ck_retry.is_transient(FileNotFoundError("bucket/key"))
    assert not ck_retry.is_transient(PermissionError("denied"))
    from gcsfs.retry import HttpError

    assert not ck_retry.is_transient(HttpError({"code": 400, "message": "bad request"}))
