"""Issue 13, late requests: a failed save's clean-up never reaches another attempt's objects.

On object stores a request the client gave up on may still be applied later. Each save attempt
there names its data objects with its own tag, recorded in the index; a failed commit removes
nothing another attempt could use; index DELETEs name the version they mean. These tests run the
mechanism on local disk through a test-double storage (``lateloc://``) that has object-store naming
and can hold DELETEs back and apply them late; tests/cloud/test_trust_late_deletes.py does the same
against moto S3 and the GCS emulator. Local disk itself never applies a request late: its names
stay TensorFlow's (no tag).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from thread_ranks import on_threads

import ckptcore as ck
from ckptcore.formats import ckpt as fmt
from ckptcore.storage import LocalStorage

DOUBLE = None


class LateLocal(LocalStorage):
    """Local disk with object-store naming; DELETEs and index PUTs can be held back and applied late."""

    unique_data_names = True
    listing_may_lag = True

    def __init__(self):
        super().__init__()
        self.hold_deletes = False
        self.fail_index_puts = 0
        self.held: list[tuple[str, tuple | None]] = []   # (path, version the DELETE names, or None)

    def write_atomic(self, path, data):
        if self.fail_index_puts and path.endswith(".index"):
            self.fail_index_puts -= 1
            raise ck.StorageError(f"injected: the PUT of {path} timed out")
        return super().write_atomic(path, data)

    def remove(self, paths):
        paths = list(paths)
        if self.hold_deletes:
            self.held.extend((p, None) for p in paths)
            raise ck.StorageError("injected: the DELETE timed out (it reaches the server later)")
        return super().remove(paths)

    @staticmethod
    def _version(path):
        st = os.stat(path)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def remove_unchanged(self, path):
        try:
            version = self._version(path)
        except FileNotFoundError:
            return
        if self.hold_deletes:
            self.held.append((path, version))
            raise ck.StorageError("injected: the DELETE timed out (it reaches the server later)")
        super().remove([path])

    def land(self):
        """Apply every held DELETE now, as a server would apply late requests (conditional ones checked)."""
        held, self.held = self.held, []
        for path, version in held:
            try:
                if version is None or self._version(path) == version:
                    os.remove(path)
            except FileNotFoundError:
                pass


@pytest.fixture
def late(tmp_path):
    storage = LateLocal()
    plugin = ck.registry.register_plugin(_Plugin(storage), name="test-lateloc")
    yield storage, f"lateloc://{tmp_path}"
    ck.registry.unregister_plugin(plugin)


class _Plugin:
    def __init__(self, storage):
        self.storage = storage

    @ck.hookimpl
    def ckptcore_register_storage(self):
        return [ck.StorageRegistration(protocols=("lateloc",),
                                       factory=lambda p, o, url: (self.storage, url[len("lateloc://"):]))]


def model(value):
    m = ck.Module()
    m.w = np.full(4, float(value), np.float32)
    return m


def restored(path) -> list[float]:
    back = model(0.0)
    ck.Checkpoint(m=back).read(path).assert_existing_objects_matched().expect_partial()
    return back.w.tolist()


def test_data_objects_carry_the_attempts_tag_and_read_back(late, tmp_path):
    storage, d = late
    path = ck.Checkpoint(m=model(1.0)).write(f"{d}/c")
    names = sorted(os.listdir(tmp_path))
    assert names[0] == "c.data-00000-of-00001." + names[0].rsplit(".", 1)[1] and names[1] == "c.index"
    tag = names[0].rsplit(".", 1)[1]
    assert fmt.is_data_tag(tag)
    assert ck.load_checkpoint(path).index.data_tag == tag
    assert ck.load_checkpoint(path).verify() > 0
    assert restored(path) == [1.0] * 4
    again = ck.Checkpoint(m=model(2.0)).write(f"{d}/c")   # overwriting: the old attempt's data goes
    assert len([n for n in os.listdir(tmp_path) if ".data-" in n]) == 1 and restored(again) == [2.0] * 4


def test_local_disk_keeps_tensorflows_names(tmp_path):
    ck.Checkpoint(m=model(1.0)).write(str(tmp_path / "c"))
    assert sorted(os.listdir(tmp_path)) == ["c.data-00000-of-00001", "c.index"]
    assert ck.load_checkpoint(str(tmp_path / "c")).index.data_tag is None


@pytest.mark.parametrize("via", ["write", "manager"])
def test_a_failed_commits_late_clean_up_never_breaks_the_retry(late, via):
    storage, d = late
    ckpt = ck.Checkpoint(m=model(1.0))
    manager = ck.CheckpointManager(ckpt, d, max_to_keep=3) if via == "manager" else None

    def save():
        return manager.save() if manager else ckpt.write(f"{d}/ckpt-1")

    storage.fail_index_puts, storage.hold_deletes = 1, True
    with pytest.raises(ck.StorageError):
        save()                       # its index PUT "timed out"; whatever it deletes is held back
    storage.hold_deletes = False
    ckpt.m.w[...] = 2.0
    path = save()                    # the retry, under the same name
    storage.land()                   # the failed attempt's clean-up reaches the server only now
    assert path.endswith("ckpt-1")
    assert ck.load_checkpoint(path).verify() > 0
    assert restored(path) == [2.0] * 4
    if manager:
        assert ck.latest_checkpoint(d) == path


def _lose_index_put_responses(storage):
    """Index PUTs land, but their responses are lost: the client sees an error."""
    real = LocalStorage.write_atomic

    def landed_but_lost(path, data):
        real(storage, path, data)
        if path.endswith(".index"):
            raise ck.StorageError(f"injected: the response to the PUT of {path} was lost")

    storage.write_atomic = landed_but_lost


def test_a_failed_commit_whose_put_landed_is_a_committed_save(late):
    storage, d = late
    _lose_index_put_responses(storage)
    path = ck.Checkpoint(m=model(3.0)).write(f"{d}/c")   # no error: the index on storage is the one it sent
    del storage.write_atomic
    assert restored(path) == [3.0] * 4


def test_a_late_retention_delete_never_removes_a_checkpoint_saved_again_under_its_name(late):
    storage, d = late
    manager = ck.CheckpointManager(ck.Checkpoint(m=model(1.0)), d, max_to_keep=1)
    first = manager.save()
    storage.hold_deletes = True
    manager.save()                   # retention deletes ckpt-1: held back
    storage.hold_deletes = False
    again = ck.Checkpoint(m=model(5.0)).write(first)   # ckpt-1 saved again (another run, say)
    storage.land()                   # the old DELETEs land: they name the old index and the old data
    assert restored(again) == [5.0] * 4


def test_a_later_save_removes_data_no_index_names(late, tmp_path):
    storage, d = late
    ckpt = ck.Checkpoint(m=model(1.0))
    manager = ck.CheckpointManager(ckpt, d, max_to_keep=3)
    manager.partial_file_grace_seconds = 0
    storage.fail_index_puts = 1
    with pytest.raises(ck.StorageError):
        manager.save()               # leaves its (tagged) data: a late index PUT could still need them
    assert [n for n in os.listdir(tmp_path) if ".data-" in n]
    first = manager.save()           # the retry: the same name, its own tag
    second = manager.save()
    data = sorted(n for n in os.listdir(tmp_path) if ".data-" in n)
    assert [n.split(".")[0] for n in data] == ["ckpt-1", "ckpt-2"]   # the failed attempt's data are gone
    assert restored(first) == restored(second) == [1.0] * 4


def _on_two_ranks(save):
    """Run ``save(options)`` on the two workers of a group of threads; their results (or exceptions)."""
    return on_threads(2, lambda g: save(ck.CheckpointOptions(process_group=g, collective_timeout=20)))


def _two_values(value):
    m = ck.Module()
    m.w = np.full(4, float(value), np.float32)
    m.v = np.full(1000, float(value), np.float32)   # two values: each worker writes one (the balanced assignment)
    return m


def test_a_multi_worker_save_names_every_workers_data_with_one_tag(late, tmp_path):
    _storage, d = late
    paths = _on_two_ranks(lambda o: ck.Checkpoint(m=_two_values(1.0)).write(f"{d}/c", o))
    assert paths[0] == paths[1] == f"{d}/c"
    data = sorted(n for n in os.listdir(tmp_path) if ".data-" in n)
    tags = {n.rsplit(".", 1)[1] for n in data}
    assert [n.rsplit(".", 1)[0] for n in data] == ["c.data-00000-of-00002", "c.data-00001-of-00002"]
    assert len(tags) == 1 and fmt.is_data_tag(tags.pop())
    reader = ck.load_checkpoint(paths[0])
    assert reader.index.data_tag == data[0].rsplit(".", 1)[1] and reader.verify() > 0
    back = _two_values(0.0)
    ck.Checkpoint(m=back).read(paths[0]).assert_consumed()
    assert back.w.tolist() == [1.0] * 4 and back.v.tolist() == [1.0] * 1000


def test_a_failed_multi_worker_commits_late_clean_up_never_breaks_the_retry(late):
    storage, d = late
    storage.fail_index_puts, storage.hold_deletes = 1, True
    failed = _on_two_ranks(lambda o: ck.Checkpoint(m=_two_values(1.0)).write(f"{d}/ckpt-1", o))
    assert all(isinstance(e, ck.CheckpointError) for e in failed)   # rank 0's PUT error; rank 1 names rank 0
    storage.hold_deletes = False
    paths = _on_two_ranks(lambda o: ck.Checkpoint(m=_two_values(2.0)).write(f"{d}/ckpt-1", o))
    storage.land()                   # whatever the failed attempt asked to delete reaches the server only now
    assert paths[0] == f"{d}/ckpt-1" and ck.load_checkpoint(paths[0]).verify() > 0
    back = _two_values(0.0)
    ck.Checkpoint(m=back).read(paths[0]).assert_consumed()
    assert back.w.tolist() == [2.0] * 4 and back.v.tolist() == [2.0] * 1000


def test_a_multi_worker_commit_whose_put_landed_is_a_committed_save(late):
    storage, d = late
    _lose_index_put_responses(storage)
    try:
        paths = _on_two_ranks(lambda o: ck.Checkpoint(m=_two_values(3.0)).write(f"{d}/c", o))
    finally:
        del storage.write_atomic
    assert paths == [f"{d}/c", f"{d}/c"]   # no error on any worker: the index on storage is the one sent
    assert ck.load_checkpoint(paths[0]).verify() > 0
