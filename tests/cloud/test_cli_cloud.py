"""The ``ckptcore`` console script against a real S3 server (moto, on loopback): every command on s3:// URLs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptcore as ck

pytestmark = pytest.mark.cloud

CLI = str(Path(sys.executable).parent / "ckptcore")
W = "w/.ATTRIBUTES/VARIABLE_VALUE"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, env=env or dict(os.environ))


def test_cli_on_s3(s3, tmp_path):
    run = s3.url("run")
    ckpt = ck.Checkpoint(w=ck.Variable(np.arange(4.0)))
    mgr = ck.CheckpointManager(ckpt, run, max_to_keep=None)
    first = mgr.save(metadata={"step": 1})
    ckpt.w.assign(np.arange(4.0) * 2)
    second = mgr.save()
    s3.fs().pipe(s3.url("run", "ckpt-3.data-00000-of-00001")[5:], b"leftover of a crashed save")

    # the endpoint as a --storage-option rather than from the environment
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    r = cli("ls", run + "/", "--json", "-o", f"endpoint_url={s3.endpoint}", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [c["name"] for c in doc["checkpoints"]] == ["ckpt-1", "ckpt-2"] and doc["latest"] == "ckpt-2"
    assert all(c["complete"] for c in doc["checkpoints"]) and doc["partial"][0]["name"] == "ckpt-3"

    r = cli("inspect", first, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["metadata"] == {"step": 1}

    r = cli("diff", first, second, "--values", "--json")
    assert r.returncode == 1, r.stderr
    values = {v["key"]: v for v in json.loads(r.stdout)["values"]}
    assert values[W] == {"key": W, "max_abs": 3.0, "max_rel": 0.5}  # (save_counter changed too)

    st_file = s3.url("export", "model.safetensors")
    local = str(tmp_path / "local")
    r = cli("convert", second, st_file)
    assert r.returncode == 0, r.stderr
    r = cli("convert", st_file, local)
    assert r.returncode == 0, r.stderr
    assert ck.load_checkpoint(local).get_tensor(W).tolist() == [0.0, 2.0, 4.0, 6.0]

    # corrupt one byte of the first checkpoint's data object
    reader = ck.load_checkpoint(first)
    data_key = reader.data_file(0)
    raw = bytearray(s3.fs().cat_file(data_key))
    raw[reader.entry(W).offset] ^= 0xFF
    s3.fs().pipe(data_key, bytes(raw))
    r = cli("verify", first, second)
    assert r.returncode == 1
    assert f"CORRUPT  {first}" in r.stdout and f"key {W}" in r.stdout and f"ok  {second}" in r.stdout
    assert data_key in r.stdout
