"""Requests the client gave up on, applied by the server later, never move ``latest_checkpoint`` backwards.

A state-file PUT times out on the client (the wrapper holds it back and raises a connection
reset), ckptcore retries and succeeds, a later save moves the state on, and then the held PUT is
applied: the server now holds an older state file. Readers must still name (and a new manager
still manage) the newest checkpoint.
"""

from __future__ import annotations

import numpy as np
import pytest
from fsspec.asyn import sync

import ckptcore as ck
from ckptcore.storage import retry as ck_retry

pytestmark = pytest.mark.cloud


class HeldStatePut:
    """Holds back the next PUT of a state file: the client sees a reset; :meth:`land` applies it late."""

    def __init__(self):
        self.armed = False
        self.held = None   # (fs, args, kwargs)

    def is_state_put(self, method, args, kwargs) -> bool:
        if method == "put_object":
            return str(kwargs.get("Key", "")).endswith("/checkpoint")
        if method == "POST":  # gcsfs simple upload: the object's name is in the multipart body
            data = kwargs.get("data")
            return isinstance(data, (bytes, bytearray)) and b"ckptcore-state" in data
        return False


@pytest.fixture
def held(store, monkeypatch):
    h = HeldStatePut()
    if store.name == "s3":
        import s3fs

        cls, attr = s3fs.S3FileSystem, "_call_s3"
    else:
        import gcsfs

        cls, attr = gcsfs.GCSFileSystem, "_call"
    orig = getattr(cls, attr)

    async def call(self, method, *args, **kwargs):
        if h.armed and h.is_state_put(method, args, kwargs):
            h.armed = False
            h.held = (self, method, args, kwargs)
            raise ConnectionResetError(f"injected: {method} timed out on the client, reaches the server later")
        return await orig(self, method, *args, **kwargs)

    def land():
        fs, method, args, kwargs = h.held
        sync(fs.loop, orig, fs, method, *args, **kwargs)

    h.land = land
    monkeypatch.setattr(cls, attr, call)
    monkeypatch.setattr(ck_retry, "DEFAULT_POLICY", ck_retry.RetryPolicy(initial_delay=0.001, max_delay=0.01))
    return store, h


def test_a_late_state_put_does_not_roll_latest_back(held):
    store, h = held
    so = store.storage_options
    d = store.url("run")
    m = ck.Module()
    m.w = np.zeros(3)
    ckpt = ck.Checkpoint(model=m)
    mgr = ck.CheckpointManager(ckpt, d, max_to_keep=5, storage_options=so)
    mgr.save()
    h.armed = True
    m.w[...] = 2
    second = mgr.save()                  # its state PUT is held back; the retry succeeds
    assert h.held is not None
    m.w[...] = 3
    third = mgr.save()
    h.land()                             # the held PUT lands now: the state file names ckpt-2 again
    assert ck.latest_checkpoint(d, storage_options=so) == third
    again = ck.CheckpointManager(ck.Checkpoint(model=ck.Module()), d, max_to_keep=5, storage_options=so)
    assert again.latest_checkpoint == third
    assert again.checkpoints[-2:] == [second, third]
    w = np.zeros(3)
    restored = ck.Module()
    restored.w = w
    ck.Checkpoint(model=restored).restore(d, options=ck.CheckpointOptions(storage_options=so)).expect_partial()
    assert w.tolist() == [3.0, 3.0, 3.0]


def test_a_late_checkpoint_save_state_put_does_not_roll_latest_back(held):
    store, h = held
    so = store.storage_options
    opts = ck.CheckpointOptions(storage_options=so)
    ckpt = ck.Checkpoint(a=np.ones(2))
    ckpt.save(store.url("run", "ckpt"), options=opts)
    h.armed = True
    ckpt.save(store.url("run", "ckpt"), options=opts)
    last = ckpt.save(store.url("run", "ckpt"), options=opts)
    h.land()
    assert ck.latest_checkpoint(store.url("run"), storage_options=so) == last


# -- a failed or killed save cleans up only its own objects ----------------------------------------

def test_an_aborted_upload_never_deletes_an_object_another_save_wrote(store):
    """A failed attempt's clean-up must not remove what a retry already wrote under the same name."""
    from ckptcore.storage import open_storage

    st, path = open_storage(store.url("run", "ckpt-1.data-00000-of-00001"), store.storage_options)
    st.write_atomic(path, b"the retry's data")
    for size in (10, 3 << 20):   # still one PUT to be; or parts already uploaded (GCS: composite parts)
        w = st.open_writer(path)
        w.write(b"x" * size)
        w.abort()                 # this attempt never sent anything under the final name
        assert st.read_bytes(path) == b"the retry's data"


def test_a_killed_saves_multipart_upload_is_aborted_by_the_next_manager_save(s3):
    so = s3.storage_options
    fs = s3.fs()
    d = s3.url("run")
    mgr = ck.CheckpointManager(ck.Checkpoint(a=np.ones(4)), d, max_to_keep=2, storage_options=so)
    mgr.partial_file_grace_seconds = 0.0
    mine = f"{s3.bucket}/run/ckpt-7.data-00000-of-00001"
    others = [f"{s3.bucket}/run/other-7.data-00000-of-00001", f"{s3.bucket}/elsewhere/ckpt-7.data-00000-of-00001"]
    for key in [mine, *others]:   # a save killed after uploading a part: nobody will complete or abort it
        bucket, k, _ = fs.split_path(key)
        up = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=k)
        fs.call_s3("upload_part", Bucket=bucket, Key=k, PartNumber=1, UploadId=up["UploadId"], Body=b"p" * 1000)
    mgr.save()

    def pending():
        out = fs.call_s3("list_multipart_uploads", Bucket=s3.bucket)
        return sorted(f"{s3.bucket}/{u['Key']}" for u in out.get("Uploads") or [])

    assert pending() == sorted(others)
    # (the grace period for uploads still in progress cannot be shown here: moto reports one fixed
    # "Initiated" date, in 2010, for every upload)
