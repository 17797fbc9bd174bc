"""Every docstring example in ckptcore runs and is true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import ckptcore


def _module_names() -> list[str]:
    names = ["ckptcore"]
    for info in pkgutil.walk_packages(ckptcore.__path__, prefix="ckptcore."):
        names.append(info.name)
    return sorted(names)


def test_docstring_examples_exist():
    """Public modules carry examples (the style rule: every public function shows one)."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    total = sum(len(t.examples) for name in _module_names() for t in finder.find(importlib.import_module(name)))
    assert total > 100


@pytest.mark.filterwarnings("ignore::ckptcore.PartialRestoreWarning")  # examples of failing assertions
@pytest.mark.parametrize("name", _module_names())
def test_module_doctests(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write relative paths stay inside the test's directory
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    for test in finder.find(module, name):
        result = runner.run(test, out=failures.append)
        del result
    summary = runner.summarize(verbose=False)
    assert summary.failed == 0, "".join(failures)
