"""Shared fixtures for the core test suite."""

from __future__ import annotations

import gc
import uuid

import fsspec
import numpy as np
import pytest

import ckptcore as ck


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


class Dense(ck.Module):
    """A tiny layer: kernel and bias as ck.Variables."""

    def __init__(self, n_in: int, n_out: int, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.kernel = ck.Variable(rng.normal(size=(n_in, n_out)).astype(np.float32))
        self.bias = ck.Variable(np.zeros(n_out, np.float32))


@pytest.fixture
def dense_cls():
    return Dense
