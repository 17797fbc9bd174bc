"""Every example in the plugin's docstrings runs."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["ckptcore_torch", "ckptcore_torch.plugin", "ckptcore_torch.adapters", "ckptcore_torch.optim",
           "ckptcore_torch.codec", "ckptcore_torch.convert", "ckptcore_torch.hooks"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0


def test_importing_plugin_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, ckptcore, ckptcore_torch.plugin; "
            "ckptcore.registry.find_adapter(ckptcore.Variable(1.0)); "
            "import ckptcore_torch.adapters, ckptcore_torch.optim; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
