"""`make demo` keeps working: the demo trains, saves, restarts, restores on creation and resumes identically."""

from __future__ import annotations

import importlib.util
import pathlib

DEMO = pathlib.Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def test_demo_resumes_bit_identically(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("ckptcore_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "identical to uninterrupted training: True" in out
    assert "got the saved kernel on creation: True" in out
    assert (tmp_path / "ckpt-3.index").exists() and (tmp_path / "checkpoint").exists()
