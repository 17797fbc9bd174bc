"""Fixtures for the ckptcore-torch tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def prefix(tmp_path):
    """A local checkpoint prefix inside a fresh directory."""
    return str(tmp_path / "ckpt")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
