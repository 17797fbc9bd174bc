"""Fixtures for ckptcore-tf tests. Keras 3 runs on the torch backend (TensorFlow is optional)."""

from __future__ import annotations

import os
import sys

if "keras" not in sys.modules:  # must happen before keras is imported anywhere
    os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def keras():
    """Keras 3 on the torch backend."""
    keras = pytest.importorskip("keras")  # a test extra: always installed by `make venv`
    assert keras.backend.backend() == "torch" or "tensorflow" in sys.modules
    return keras


@pytest.fixture
def prefix(tmp_path):
    """A local checkpoint prefix inside a fresh directory."""
    return str(tmp_path / "ckpt")


@pytest.fixture
def data():
    """A small fixed regression data set."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")


def pytest_configure(config):
    # Keras' torch backend calls np.array(tensor), which numpy 2 flags; not ours to fix.
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
