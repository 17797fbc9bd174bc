"""Issue 13 (trust): the manager deletes only its own checkpoints, the state file detects damage,
storage failures are ckptcore errors naming the file, path mistakes are caught, and local storage
works where the vectored POSIX calls are missing."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import state as state_mod
from ckptcore.storage import local as local_mod

HERE = os.path.dirname(os.path.abspath(__file__))


def names(d) -> list[str]:
    return sorted(os.listdir(d))


def state_doc(d) -> dict:
    with open(os.path.join(d, "checkpoint"), "rb") as f:
        return json.loads(f.read())


# -- the manager leaves checkpoints it did not create alone (TF semantics) -----------------------

def test_new_manager_never_deletes_checkpoints_saved_by_checkpoint_save(tmp_path):
    d = str(tmp_path)
    ckpt = ck.Checkpoint(a=np.ones(1))
    ckpt.save(d + "/unusual")
    ckpt.save(d + "/unusual")
    m = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), d, max_to_keep=1)
    assert m.checkpoints == []
    for _ in range(3):
        m.save()
    assert os.path.exists(d + "/unusual-1.index") and os.path.exists(d + "/unusual-2.index")
    assert [os.path.basename(p) for p in m.checkpoints] == ["ckpt-3"]


def test_manager_leaves_another_checkpoint_name_alone(tmp_path):
    d = str(tmp_path)
    a = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), d, max_to_keep=2, checkpoint_name="a")
    a.save(), a.save()
    b = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), d, max_to_keep=1, checkpoint_name="b")
    assert b.checkpoints == []
    b.save(), b.save()
    assert os.path.exists(d + "/a-1.index") and os.path.exists(d + "/a-2.index")
    assert not os.path.exists(d + "/b-1.index") and os.path.exists(d + "/b-2.index")


def test_checkpoint_save_records_only_the_latest(tmp_path):
    ckpt = ck.Checkpoint(a=np.ones(1))
    for _ in range(4):
        p = ckpt.save(str(tmp_path / "ckpt"))
    doc = state_doc(tmp_path)
    assert doc["model_checkpoint_path"] == "ckpt-4" and doc["all_model_checkpoint_paths"] == ["ckpt-4"]
    assert ck.latest_checkpoint(str(tmp_path)) == p


# -- the state file detects damage; the manager recovers from what is on storage -----------------

def _managed_dir(d, n=4):
    m = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), d, max_to_keep=3)
    for _ in range(n):
        m.save()
    return m


def test_every_single_byte_flip_of_the_state_file_is_detected_or_harmless(tmp_path):
    d = str(tmp_path)
    m = _managed_dir(d)
    good_latest, good_list = m.latest_checkpoint, m.checkpoints
    path = os.path.join(d, "checkpoint")
    raw = open(path, "rb").read()
    silent_changes = []
    for i in range(0, len(raw)):
        for flip in (0x01, 0x20):
            bad = bytearray(raw)
            bad[i] ^= flip
            with open(path, "wb") as f:
                f.write(bad)
            try:
                latest = ck.latest_checkpoint(d)
            except ck.CorruptCheckpointError as e:
                assert path in str(e)
                continue
            state = state_mod.read_state(local_mod.LocalStorage(), d)
            if latest != good_latest or [os.path.join(d, n) for n in state.all] != good_list:
                silent_changes.append((i, flip))
    assert silent_changes == []
    with open(path, "wb") as f:
        f.write(raw)


def test_a_damaged_state_file_is_recovered_from_the_listing(tmp_path):
    d = str(tmp_path)
    m = _managed_dir(d)
    path = os.path.join(d, "checkpoint")
    doc = state_doc(d)
    doc["all_model_checkpoint_timestamps"][0] -= 1e6   # would make a new manager stop managing ckpt-2
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(ck.CorruptCheckpointError, match="checksum"):
        ck.latest_checkpoint(d)
    with pytest.warns(RuntimeWarning, match="recovering"):
        again = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), d, max_to_keep=3)
    assert again.checkpoints == m.checkpoints and again.latest_checkpoint == m.latest_checkpoint
    again.save(checkpoint_number=5)
    assert [os.path.basename(p) for p in again.checkpoints] == ["ckpt-3", "ckpt-4", "ckpt-5"]
    assert ck.latest_checkpoint(d) == again.latest_checkpoint


def test_state_file_is_self_describing():
    raw = state_mod.CheckpointState(latest="c-1", all=["c-1"], timestamps=[1.0]).encode()
    assert raw.startswith(b'{\n "format": "ckptcore-state"') and state_mod.is_ckptcore_state(raw)
    assert not state_mod.is_ckptcore_state(b'model_checkpoint_path: "c-1"\n')
    assert not state_mod.is_ckptcore_state(b'# comment\nmodel_checkpoint_path: "c-1"\n')


def test_version_1_state_files_without_checksum_are_still_read(tmp_path):
    ck.Checkpoint(a=np.ones(1)).write(str(tmp_path / "ckpt-1"))
    (tmp_path / "checkpoint").write_text(json.dumps({"format": "ckptcore-state", "version": 1,
                                                     "model_checkpoint_path": "ckpt-1",
                                                     "all_model_checkpoint_paths": ["ckpt-1"]}))
    assert ck.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-1")
    doc = json.loads((tmp_path / "checkpoint").read_text())
    doc["version"] = 2   # a version-2 file must carry its checksum
    (tmp_path / "checkpoint").write_text(json.dumps(doc))
    with pytest.raises(ck.CorruptCheckpointError, match="checksum is missing"):
        ck.latest_checkpoint(str(tmp_path))


# -- load_checkpoint / list_variables of a directory ------------------------------------------

def test_load_checkpoint_and_list_variables_resolve_a_directory(tmp_path):
    ckpt = ck.Checkpoint(a=np.arange(3.0))
    ckpt.save(str(tmp_path / "ckpt"))
    ckpt.a[...] = 7
    latest = ckpt.save(str(tmp_path / "ckpt"))
    r = ck.load_checkpoint(str(tmp_path))
    assert r.path == latest
    assert r.get_tensor("a/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [7.0, 7.0, 7.0]
    assert ck.list_variables(str(tmp_path)) == ck.list_variables(latest)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ck.NotFoundError, match="no checkpoint in directory"):
        ck.load_checkpoint(str(empty))


# -- path mistakes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix,fix", [
    ("s3:/bucket/run/ckpt", "s3://bucket/run/ckpt"),
    ("gs:bucket/run/ckpt", "gs://bucket/run/ckpt"),
    ("memory:/run/ckpt", "memory://run/ckpt"),
    ("", "ckpt"),
    ("run/", "run/ckpt"),
    ("run/ckpt-1.index", "run/ckpt-1"),
    ("run/ckpt.data-00000-of-00001", "run/ckpt"),
])
def test_path_mistakes_are_errors_with_a_fix(tmp_path, monkeypatch, prefix, fix):
    monkeypatch.chdir(tmp_path)
    for call in (lambda: ck.Checkpoint(a=np.ones(1)).save(prefix), lambda: ck.Checkpoint(a=np.ones(1)).write(prefix)):
        with pytest.raises(ck.InvalidPathError, match="did you mean") as info:
            call()
        assert repr(fix) in str(info.value) or (fix == "ckpt" and "'ckpt'" in str(info.value))
        assert isinstance(info.value, ValueError)
    assert os.listdir(tmp_path) == []   # nothing was written


def test_broken_url_is_refused_by_restore_and_manager(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ck.InvalidPathError, match="s3://bucket/run"):
        ck.CheckpointManager(ck.Checkpoint(), "s3:/bucket/run", max_to_keep=1)
    with pytest.raises(ck.InvalidPathError, match="did you mean 's3://bucket/run/ckpt-1'"):
        ck.Checkpoint().restore("s3:/bucket/run/ckpt-1")
    with pytest.raises(ck.InvalidPathError):
        ck.latest_checkpoint("gs:/bucket/run")
    assert os.listdir(tmp_path) == []


def test_restore_of_an_index_file_says_which_prefix_to_pass(tmp_path):
    path = ck.Checkpoint(a=np.ones(1)).save(str(tmp_path / "ckpt"))
    with pytest.raises(ck.CheckpointError, match="prefix") as info:
        ck.Checkpoint(a=np.ones(1)).restore(path + ".index")
    assert "'ckpt-1'" in str(info.value) or repr(path) in str(info.value)
    with pytest.raises(ck.NotFoundError, match="did you mean"):
        ck.load_checkpoint(path + ".data-00000-of-00001")


def test_ordinary_paths_pass_unchanged():
    from ckptcore.storage.paths import check_checkpoint_path

    for p in ("ckpt", "run/ckpt", "/abs/run/ckpt", "s3://b/run/ckpt", "C:/run/ckpt", "memory://x/ckpt",
              "run.v2/ckpt", "weird:name"):
        assert check_checkpoint_path(p, "save") == p
    assert check_checkpoint_path("run/ckpt-1.index", "restore") == "run/ckpt-1.index"


# -- storage failures are ckptcore errors naming the file, and earlier checkpoints survive -----------

def _fail(exc_errno, target, real, monkeypatch, module_os=os):
    calls = {"n": 0}

    def bad(*a, **k):
        calls["n"] += 1
        raise OSError(exc_errno, os.strerror(exc_errno))

    monkeypatch.setattr(module_os, target, bad)
    return calls


@pytest.mark.parametrize("target,code", [
    ("write", errno.ENOSPC), ("writev", errno.ENOSPC), ("writev", errno.EIO), ("fsync", errno.EIO),
    ("replace", errno.EIO), ("fsync", errno.ENOSPC),
])
def test_storage_failures_during_save_are_ckptcore_errors(tmp_path, monkeypatch, target, code):
    d = str(tmp_path)
    m = ck.CheckpointManager(ck.Checkpoint(a=np.arange(1000.0)), d, max_to_keep=2)
    first = m.save()
    before = names(d)
    _fail(code, target, getattr(os, target), monkeypatch)
    with pytest.raises(ck.StorageError) as info:
        m.save()
    monkeypatch.undo()
    e = info.value
    assert isinstance(e, OSError) and isinstance(e, ck.CheckpointError) and e.errno == code
    assert d in str(e) and e.filename.startswith(d)
    assert names(d) == before and m.latest_checkpoint == first == ck.latest_checkpoint(d)
    ck.load_checkpoint(first).verify()


def _fail_directory_fsync(monkeypatch, code: int) -> None:
    """os.fsync raises ``OSError(code)`` on directories and works on files."""
    import stat

    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_failed_directory_fsync_fails_the_save(tmp_path, monkeypatch):
    _fail_directory_fsync(monkeypatch, errno.EIO)
    with pytest.raises(ck.StorageError, match="fsync the directory"):
        ck.Checkpoint(a=np.ones(1)).save(str(tmp_path / "ckpt"))


def test_directory_fsync_unsupported_by_the_file_system_is_not_an_error(tmp_path, monkeypatch):
    _fail_directory_fsync(monkeypatch, errno.EINVAL)
    assert ck.Checkpoint(a=np.ones(1)).save(str(tmp_path / "ckpt")).endswith("ckpt-1")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_directory_is_one_error_everywhere(tmp_path, monkeypatch, code):
    """A read-only directory (simulated: the tests may run as root, whom permissions do not stop)."""
    ro = str(tmp_path / "ro")
    os.mkdir(ro)
    real_open, real_makedirs = os.open, os.makedirs

    def open_(path, flags, *a):
        if str(path).startswith(ro) and flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), path)
        return real_open(path, flags, *a)

    def makedirs(path, *a, **k):
        if str(path).startswith(ro) and not os.path.isdir(path):
            raise OSError(code, os.strerror(code), path)
        return real_makedirs(path, *a, **k)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "makedirs", makedirs)
    for call in (lambda: ck.Checkpoint(a=np.ones(1)).save(ro + "/ckpt"),
                 lambda: ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), ro, 1).save(),
                 lambda: ck.Checkpoint(a=np.ones(1)).write(ro + "/sub/w")):
        with pytest.raises(ck.StoragePermissionError) as info:
            call()
        assert isinstance(info.value, PermissionError) and ro in str(info.value)
    assert os.listdir(ro) == []


def test_permission_errors_map_to_storage_permission_error(tmp_path, monkeypatch):
    real_open = os.open

    def denied(path, flags, *a):
        if ".tmp-" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", denied)
    for call in (lambda: ck.Checkpoint(a=np.ones(1)).save(str(tmp_path / "ckpt")),
                 lambda: ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), str(tmp_path / "m"), 1).save()):
        with pytest.raises(ck.StoragePermissionError) as info:
            call()
        assert isinstance(info.value, PermissionError) and str(tmp_path) in str(info.value)


# -- portability: no preadv / writev / pread / fdatasync -----------------------------------------

@pytest.fixture(params=["macos", "windows"])
def platform_without_vectored_io(request, monkeypatch):
    removed = {"macos": ("preadv", "fdatasync"), "windows": ("preadv", "fdatasync", "pread", "writev")}
    for name in removed[request.param]:
        monkeypatch.delattr(os, name, raising=False)
    return request.param


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12), dtype=st.sampled_from(["f8", "f4", "i1", "u2"]))
def test_round_trip_without_vectored_io(tmp_path_factory, platform_without_vectored_io, sizes, dtype):
    prefix = str(tmp_path_factory.mktemp("novec") / "ckpt")
    rng = np.random.default_rng(len(sizes))
    src = ck.Module()
    src.xs = [(rng.random(n) * 100).astype(dtype) for n in sizes]
    path = ck.Checkpoint(m=src).save(prefix)
    dst = ck.Module()
    dst.xs = [np.zeros(n, dtype) for n in sizes]
    ck.Checkpoint(m=dst).restore(path).assert_consumed()
    for a, b in zip(src.xs, dst.xs):
        np.testing.assert_array_equal(a, b)
    ck.load_checkpoint(path).verify()


def test_many_tensors_beyond_iov_max_without_vectored_io(tmp_path, platform_without_vectored_io):
    src = ck.Module()
    src.xs = [np.full(3, i, np.float32) for i in range(local_mod._IOV_MAX + 50)]
    path = ck.Checkpoint(m=src).write(str(tmp_path / "w"))
    dst = ck.Module()
    dst.xs = [np.zeros(3, np.float32) for _ in src.xs]
    ck.Checkpoint(m=dst).read(path).assert_consumed()
    assert [float(x[0]) for x in dst.xs] == [float(i) for i in range(len(src.xs))]


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["macos", "windows"])
def test_storage_test_modules_pass_without_vectored_io(platform):
    env = dict(os.environ, CKPTCORE_TEST_PLATFORM=platform, PYTHONPATH=HERE)
    mods = [os.path.join(HERE, m) for m in ("test_io_paths.py", "test_fast_paths.py", "test_failing_fs.py",
                                             "test_crash_safety.py")]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "_no_vectored_io", "-p",
                          "no:cacheprovider", "-k", "not short and not flush", *mods],
                         capture_output=True, text=True, timeout=600, env=env, cwd=os.path.dirname(HERE))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
