"""Fixtures for the ckptcore-torch tests."""

from __future__ import annotations

import os
import sys

import pytest
import torch

# --import-mode=importlib does not put this directory on sys.path: make the helper module
# (training_loop) importable from every test module
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def prefix(tmp_path):
    """A local checkpoint prefix inside a fresh directory."""
    return str(tmp_path / "ckpt")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
