"""Real object-store servers on loopback, started (and stopped) by the tests.

* S3: ``moto`` in server mode, reached through ``s3fs`` with ``AWS_ENDPOINT_URL``
  and dummy credentials in the environment (so the env-based credential path
  is what the tests exercise).
* GCS: ``gcp-storage-emulator``, reached through ``gcsfs`` with
  ``storage_options={"endpoint_url": ..., "token": "anon"}``.

Both come from the project's ``test`` extras; nothing is assumed running.
"""

from __future__ import annotations

import os

# Current gcsfs probes the bucket type over gRPC first, which stalls ~60 s against an emulator.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], url: str, env: dict[str, str], log_path) -> subprocess.Popen:
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            log.close()
            raise RuntimeError(f"{cmd} exited with {proc.returncode}: {open(log_path, 'rb').read()[-2000:]!r}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                r.read()
            break
        except Exception:
            if time.monotonic() > deadline:
                _stop(proc)
                raise RuntimeError(f"{cmd} did not answer on {url} within 60 s") from None
            time.sleep(0.1)
    proc._ckpt_log = log  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    log = getattr(proc, "_ckpt_log", None)
    if log is not None:
        log.close()


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    return env


@dataclass
class Store:
    """One object store under test: how to build URLs and storage options for it."""

    name: str                       # "s3" or "gs"
    endpoint: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    bucket: str = ""

    def url(self, *parts: str) -> str:
        return f"{self.name}://" + "/".join((self.bucket,) + parts)

    def fs(self):
        import fsspec

        return fsspec.filesystem(self.name, **self.storage_options)

    def new_bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:16]}"
        self.fs().mkdir(name)
        return name


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """A moto S3 server on 127.0.0.1; the AWS environment points at it for the whole session."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = _start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                  endpoint + "/", _server_env(), log)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        try:
            yield endpoint
        finally:
            _stop(proc)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """A gcp-storage-emulator on 127.0.0.1 (in memory)."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs") / "gcs.log"
    proc = _start([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port",
                   str(port), "--in-memory"], endpoint + "/", _server_env(), log)
    try:
        yield endpoint
    finally:
        _stop(proc)


def _s3_store(endpoint: str) -> Store:
    import fsspec

    fsspec.filesystem("s3").invalidate_cache()
    st = Store("s3", endpoint)  # credentials and endpoint come from the environment
    st.bucket = st.new_bucket()
    return st


def _gcs_store(endpoint: str) -> Store:
    st = Store("gs", endpoint, {"endpoint_url": endpoint, "token": "anon", "project": "ckptcore-test"})
    st.bucket = st.new_bucket()
    return st


@pytest.fixture
def s3(moto_server) -> Store:
    """A fresh S3 bucket on the moto server."""
    return _s3_store(moto_server)


@pytest.fixture
def gcs(gcs_server) -> Store:
    """A fresh GCS bucket on the emulator."""
    return _gcs_store(gcs_server)


@pytest.fixture(params=["s3", "gs"])
def store(request) -> Store:
    """A fresh bucket on each store in turn."""
    if request.param == "s3":
        return _s3_store(request.getfixturevalue("moto_server"))
    return _gcs_store(request.getfixturevalue("gcs_server"))


@pytest.fixture
def s3_requests(monkeypatch, moto_server):
    """Every S3 API call s3fs makes during the test, as ``(operation, key)`` pairs."""
    import s3fs

    calls: list[tuple[str, str | None]] = []
    orig = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        calls.append((method, kwargs.get("Key")))
        return await orig(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    return calls


@pytest.fixture
def gcs_requests(monkeypatch, gcs_server):
    """Every HTTP request gcsfs makes during the test, as ``(method, path template)``."""
    import gcsfs

    calls: list[tuple[str, str]] = []
    orig = gcsfs.GCSFileSystem._call

    async def counting(self, method, path, *args, **kwargs):
        calls.append((method, path))
        return await orig(self, method, path, *args, **kwargs)

    monkeypatch.setattr(gcsfs.GCSFileSystem, "_call", counting)
    return calls
