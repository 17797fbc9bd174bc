"""The examples in ckptcore_tf's docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["ckptcore_tf", "ckptcore_tf.plugin", "ckptcore_tf.variables", "ckptcore_tf.module",
           "ckptcore_tf.keras_adapters"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
