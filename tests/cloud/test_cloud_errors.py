"""Clear errors on object stores, the install hint, and storage plugins for custom protocols."""

from __future__ import annotations

import sys

import fsspec
import numpy as np
import pytest

import ckptcore as ck
from ckptcore.storage.cloud import CloudStorage

pytestmark = pytest.mark.cloud


def test_missing_bucket_names_the_url(store):
    url = f"{store.name}://ckptcore-no-such-bucket-{store.bucket}/run/ckpt"
    opts = ck.CheckpointOptions(storage_options=store.storage_options, max_retries=0)
    ckpt = ck.Checkpoint(a=np.ones(3))
    with pytest.raises(ck.NotFoundError) as ei:
        ckpt.save(url, options=opts)
    assert f"ckptcore-no-such-bucket-{store.bucket}" in str(ei.value)
    assert str(ei.value).count(f"{store.name}://") >= 1
    assert int(ckpt.save_counter) == 0          # the failed save did not count
    assert ck.latest_checkpoint(url.rsplit("/", 1)[0], storage_options=store.storage_options) is None


def test_missing_key_names_the_url(store):
    url = store.url("run", "ckpt-3")
    with pytest.raises(ck.NotFoundError, match=f"no checkpoint at '{url}'"):
        ck.Checkpoint(a=np.ones(3)).restore(url, options=ck.CheckpointOptions(storage_options=store.storage_options))
    with pytest.raises(ck.NotFoundError, match=url):
        ck.load_checkpoint(url, storage_options=store.storage_options)
    assert ck.latest_checkpoint(store.url("run"), storage_options=store.storage_options) is None


def test_missing_data_object_is_reported(store):
    opts = ck.CheckpointOptions(storage_options=store.storage_options)
    path = ck.Checkpoint(a=np.ones(3)).save(store.url("run", "ckpt"), options=opts)
    fs = store.fs()
    fs.rm_file(next(p for p in fs.ls(f"{store.bucket}/run", detail=False, refresh=True) if ".data-" in p))
    with pytest.raises(ck.CorruptCheckpointError, match="missing its data file"):
        ck.Checkpoint(a=np.zeros(3)).restore(path, options=opts)


def test_missing_credentials_s3(s3, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    opts = ck.CheckpointOptions(storage_options={"skip_instance_cache": True}, max_retries=0)
    with pytest.raises(ck.StorageError, match="credentials") as ei:
        ck.Checkpoint(a=np.ones(3)).save(s3.url("run", "ckpt"), options=opts)
    assert s3.url("run") in str(ei.value)


def test_wrong_credentials_s3_is_a_storage_error(s3, moto_server):
    """moto accepts any key; what it refuses is a malformed request: still a clean ckptcore error."""
    bad = {"key": "testing", "secret": "testing", "endpoint_url": moto_server + "/nonexistent-prefix",
           "skip_instance_cache": True}
    with pytest.raises(ck.CheckpointError) as ei:
        ck.Checkpoint(a=np.ones(3)).save(s3.url("run", "ckpt"), options=ck.CheckpointOptions(
            storage_options=bad, max_retries=0))
    assert s3.url("run") in str(ei.value)


def test_without_s3fs_a_bucket_url_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)        # `import s3fs` now raises ImportError
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)
    with pytest.raises(ck.StorageError, match=r"pip install 'ckptcore\[s3\]'"):
        ck.Checkpoint(a=np.ones(1)).save("s3://bucket/run/ckpt")
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "gs", raising=False)
    with pytest.raises(ck.StorageError, match=r"pip install 'ckptcore\[gcs\]'"):
        ck.latest_checkpoint("gs://bucket/run")


class _CountingStorage(CloudStorage):
    """A user backend: a custom protocol served from fsspec's memory filesystem, counting writes."""

    writes: list[str] = []

    def write_atomic(self, path, data):
        type(self).writes.append(path)
        super().write_atomic(path, data)


class _Plugin:
    @ck.hookimpl
    def ckptcore_register_storage(self):
        def factory(protocol, storage_options, url):
            return _CountingStorage(fsspec.filesystem("memory"), protocol=protocol), "/vault/" + url.split("://", 1)[1]

        return [ck.StorageRegistration(protocols=("vault",), factory=factory, priority=10, plugin="vault")]


def test_custom_registered_backend_is_used(ckptcore_registry):
    ckptcore_registry.register_plugin(_Plugin(), name="test-vault-plugin")
    _CountingStorage.writes.clear()
    ckpt = ck.Checkpoint(a=np.arange(4.0))
    path = ckpt.save("vault://team/run/ckpt")
    assert path == "vault://team/run/ckpt-1"
    # data, then the index (the commit point), then the state object
    assert _CountingStorage.writes == ["/vault/team/run/ckpt-1.data-00000-of-00001", "/vault/team/run/ckpt-1.index",
                                      "/vault/team/run/checkpoint"]
    assert ck.latest_checkpoint("vault://team/run") == path
    a = np.zeros(4)
    ck.Checkpoint(a=a).restore(path).assert_consumed()
    np.testing.assert_array_equal(a, np.arange(4.0))
    st, p = ck.storage.open_storage("vault://team/run")
    assert isinstance(st, _CountingStorage) and p == "/vault/team/run"


def test_plugin_can_override_a_builtin_protocol(ckptcore_registry, s3):
    """A plugin claiming ``s3`` at a higher priority replaces the built-in fsspec backend."""
    seen = []

    class Tuned:
        @ck.hookimpl
        def ckptcore_register_storage(self):
            def factory(protocol, storage_options, url):
                seen.append(url)
                fs, path = fsspec.core.url_to_fs(url, **storage_options)
                return CloudStorage(fs, protocol=protocol, part_size=8 << 20, max_concurrency=4), path

            return [ck.StorageRegistration(protocols=("s3",), factory=factory, priority=5, plugin="tuned")]

    ckptcore_registry.register_plugin(Tuned(), name="test-tuned-s3")
    path = ck.Checkpoint(a=np.ones(2)).save(s3.url("tuned", "ckpt"))
    assert seen and seen[0] == path


@pytest.mark.parametrize("content", ["not json", '{"type": "service_account"}'])
def test_invalid_gcs_credentials_file(gcs, tmp_path, content):
    creds = tmp_path / "creds.json"
    creds.write_text(content)
    so = dict(gcs.storage_options, token=str(creds))
    with pytest.raises(ck.StorageError, match="cannot open 'gs://") as ei:
        ck.Checkpoint(a=np.ones(2)).save(gcs.url("run", "ckpt"), options=ck.CheckpointOptions(storage_options=so))
    assert gcs.bucket in str(ei.value)
