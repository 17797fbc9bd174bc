"""Shared fixtures for the core test suite."""

from __future__ import annotations

import gc
import os
import sys
import uuid

import fsspec
import pytest

# --import-mode=importlib does not put this directory on sys.path: make the helper modules
# (faulty_fs, ckpt_samples) importable from every test module
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def prefix(tmp_path):
    """A local checkpoint prefix inside a fresh directory."""
    return str(tmp_path / "ckpt")


@pytest.fixture
def mem_dir():
    """A unique memory:// directory, removed afterwards."""
    name = f"tests-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    try:
        fs.rm(f"/{name}", recursive=True)
    except FileNotFoundError:
        pass


@pytest.fixture
def collect():
    """Run a full garbage collection (weakref callbacks and finalizers fire)."""
    def run():
        for _ in range(3):
            gc.collect()
    return run

