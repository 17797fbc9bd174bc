"""Issue 13, late requests on real object-store servers (moto S3, the GCS emulator).

A failed save's clean-up DELETE that the server applies after the user's retry re-saved the same
names must not leave a visible checkpoint whose data object is gone. The wrapper below holds
requests back at the request layer (s3fs ``_call_s3``, gcsfs ``_call``): the client sees a reset,
ckptcore's retries give up, and :meth:`Held.land` applies them late, as a server would.
"""

from __future__ import annotations

import numpy as np
import pytest
from fsspec.asyn import sync

import ckptcore as ck
from ckptcore.storage import retry as ck_retry

pytestmark = pytest.mark.cloud


class Held:
    def __init__(self):
        self.hold_deletes = False
        self.fail_index_puts = 0
        self.held: list = []

    @staticmethod
    def is_delete(method, kwargs) -> bool:
        return method in ("delete_object", "delete_objects", "DELETE")

    @staticmethod
    def is_index_put(method, args, kwargs) -> bool:
        if method == "put_object":
            return str(kwargs.get("Key", "")).endswith(".index")
        if method == "POST":  # gcsfs simple upload: the bytes are in the multipart body
            data = kwargs.get("data")
            return isinstance(data, (bytes, bytearray)) and b"CKPTIDX1" in data
        return False


@pytest.fixture
def held(store, monkeypatch):
    return _hold(store, monkeypatch)


@pytest.fixture
def held_s3(s3, monkeypatch):
    return _hold(s3, monkeypatch)


def _hold(store, monkeypatch):
    h = Held()
    if store.name == "s3":
        import s3fs

        cls, attr = s3fs.S3FileSystem, "_call_s3"
    else:
        import gcsfs

        cls, attr = gcsfs.GCSFileSystem, "_call"
    orig = getattr(cls, attr)

    async def call(self, method, *args, **kwargs):
        if h.fail_index_puts and h.is_index_put(method, args, kwargs):
            h.fail_index_puts -= 1
            raise ConnectionResetError(f"injected: {method} of an index never reached the server")
        if h.hold_deletes and h.is_delete(method, kwargs):
            h.held.append((self, method, args, kwargs))
            raise ConnectionResetError(f"injected: {method} timed out on the client, reaches the server later")
        return await orig(self, method, *args, **kwargs)

    def land():
        requests, h.held = h.held, []
        for fs, method, args, kwargs in requests:
            try:
                sync(fs.loop, orig, fs, method, *args, **kwargs)
            except Exception:   # a conditional DELETE whose precondition no longer holds: refused
                pass

    h.land = land
    monkeypatch.setattr(cls, attr, call)
    monkeypatch.setattr(ck_retry, "DEFAULT_POLICY", ck_retry.RetryPolicy(initial_delay=0.001, max_delay=0.01))
    return store, h


def _restored(path, so) -> list[float]:
    back = ck.Module()
    back.w = np.zeros(3)
    status = ck.Checkpoint(m=back).read(path, options=ck.CheckpointOptions(storage_options=so))
    status.assert_existing_objects_matched().expect_partial()
    return back.w.tolist()


@pytest.mark.parametrize("via", ["write", "manager"])
def test_a_failed_commits_late_clean_up_never_breaks_the_retry(held, via):
    store, h = held
    so = store.storage_options
    opts = ck.CheckpointOptions(storage_options=so)
    m = ck.Module()
    m.w = np.ones(3)
    ckpt = ck.Checkpoint(m=m)
    d = store.url("run")
    manager = ck.CheckpointManager(ckpt, d, max_to_keep=3, storage_options=so) if via == "manager" else None

    def save():
        return manager.save() if manager else ckpt.write(store.url("run", "ckpt-1"), options=opts)

    h.fail_index_puts, h.hold_deletes = 1000, True
    with pytest.raises(ck.StorageError):
        save()                           # every index PUT fails; its clean-up DELETEs are held back
    h.fail_index_puts, h.hold_deletes = 0, False
    m.w[...] = 2.0
    path = save()                        # the user's retry, under the same names
    h.land()                             # the failed attempt's clean-up reaches the server only now
    assert path.endswith("ckpt-1")
    assert ck.load_checkpoint(path, storage_options=so).verify() > 0
    assert _restored(path, so) == [2.0, 2.0, 2.0]


def test_a_failed_sharded_commits_late_clean_up_never_breaks_the_retry(held, monkeypatch):
    store, h = held
    so = dict(store.storage_options)
    from ckptcore.storage import cloud

    monkeypatch.setattr(cloud, "DEFAULT_SHARD_BYTES", 64)   # several data objects per checkpoint
    m = ck.Module()
    m.a, m.b, m.c = np.ones(40), np.ones(40), np.ones(40)
    ckpt = ck.Checkpoint(m=m)
    target = store.url("run", "ckpt-1")
    opts = ck.CheckpointOptions(storage_options=so)
    h.fail_index_puts, h.hold_deletes = 1000, True
    with pytest.raises(ck.StorageError):
        ckpt.write(target, options=opts)
    h.fail_index_puts, h.hold_deletes = 0, False
    m.a[...] = 3.0
    path = ckpt.write(target, options=opts)
    h.land()
    reader = ck.load_checkpoint(path, storage_options=so)
    assert reader.index.num_shards > 1 and reader.verify() > 0
    assert reader.get_tensor("m/a/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [3.0] * 40


def test_a_late_retention_delete_never_removes_a_checkpoint_saved_again(held_s3):
    """S3: the DELETE is conditional (If-Match). GCS uses ifGenerationMatch, which the emulator ignores."""
    store, h = held_s3
    so = store.storage_options
    m = ck.Module()
    m.w = np.ones(3)
    manager = ck.CheckpointManager(ck.Checkpoint(m=m), store.url("run"), max_to_keep=1, storage_options=so)
    first = manager.save()
    h.hold_deletes = True
    manager.save()                       # retention deletes ckpt-1: held back
    h.hold_deletes = False
    m.w[...] = 5.0
    again = ck.Checkpoint(m=m).write(first, options=ck.CheckpointOptions(storage_options=so))
    h.land()                             # the old DELETEs land: conditional on the old index, old data names
    assert _restored(again, so) == [5.0, 5.0, 5.0]


def test_gcs_index_deletes_name_the_generation_they_mean(gcs, monkeypatch):
    """The emulator ignores preconditions, so what is checked here is the request: the DELETE of an index
    carries ifGenerationMatch with the generation just read (real GCS then refuses it, 412, once the name
    holds a newer object), and a 412 leaves the object alone without an error."""
    import gcsfs

    from ckptcore.storage import open_storage

    st, path = open_storage(gcs.url("run", "ckpt-1.index"), gcs.storage_options)
    st.write_atomic(path, b"an index")
    generation = st.fs.info(path)["generation"]
    sent = []
    orig = gcsfs.GCSFileSystem._call

    async def call(self, method, *args, **kwargs):
        if method == "DELETE":
            sent.append(kwargs)
        return await orig(self, method, *args, **kwargs)

    monkeypatch.setattr(gcsfs.GCSFileSystem, "_call", call)
    st.remove_unchanged(path)
    assert [str(k.get("ifGenerationMatch")) for k in sent] == [str(generation)]
    assert not st.exists(path)

    st.write_atomic(path, b"a newer index")

    async def refused(self, method, *args, **kwargs):
        if method == "DELETE":
            raise OSError("412 conditionNotMet: Precondition Failed")
        return await orig(self, method, *args, **kwargs)

    monkeypatch.setattr(gcsfs.GCSFileSystem, "_call", refused)
    st.remove_unchanged(path)   # as real GCS answers a DELETE naming an older generation
    assert st.read_bytes(path) == b"a newer index"
