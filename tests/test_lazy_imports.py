"""Start-up cost: ``import ckptcore`` and float32 work import no ml_dtypes; bf16/fp8 still load it when met.

ml_dtypes' extension takes most of a second to import, so ckptcore imports it only when a
checkpoint or an array needs one of its dtypes. Each case runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("ml_dtypes", "torch", "s3fs", "gcsfs", "crc32c", "keras", "tensorflow", "typer", "rich")


def _run(code: str) -> dict:
    code = "import json, sys\n" + code + (
        f"\nprint(json.dumps({{'loaded': sorted(m for m in {HEAVY!r} if m in sys.modules), 'out': out}}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_import_loads_no_heavy_dependency():
    assert _run("import ckptcore\nout = None") == {"loaded": [], "out": None}


def test_float32_save_restore_and_reader_need_no_ml_dtypes(tmp_path):
    res = _run(f"""
import numpy as np, ckptcore as ck
m = ck.Module(); m.w = np.arange(4, dtype=np.float32); m.xs = [np.ones(3, np.int64), ck.Variable(2.0)]
path = ck.Checkpoint(model=m).save({str(tmp_path / 'c')!r})
n = ck.Module(); n.w = np.zeros(4, np.float32); n.xs = [np.zeros(3, np.int64), ck.Variable(0.0)]
ck.Checkpoint(model=n).restore(path).assert_consumed()
r = ck.load_checkpoint(path)
out = [n.w.tolist(), sorted(str(d) for d in r.get_variable_to_dtype_map().values())]
""")
    assert res["out"] == [[0.0, 1.0, 2.0, 3.0], ["float32", "float64", "int64", "int64"]]
    assert "ml_dtypes" not in res["loaded"]


def test_bfloat16_checkpoint_loads_ml_dtypes_when_met(tmp_path):
    # written by a process that uses bfloat16 ...
    path = _run(f"""
import ml_dtypes, numpy as np, ckptcore as ck
out = ck.Checkpoint(a=np.arange(3).astype(ml_dtypes.bfloat16)).save({str(tmp_path / 'c')!r})
""")["out"]
    # ... and read by one that never imported ml_dtypes itself
    res = _run(f"""
import ckptcore as ck
r = ck.load_checkpoint({path!r})
t = r.get_tensor('a/.ATTRIBUTES/VARIABLE_VALUE')
out = [t.dtype.name, t.astype('float32').tolist()]
""")
    assert res["out"] == ["bfloat16", [0.0, 1.0, 2.0]]
    assert "ml_dtypes" in res["loaded"]


def test_dtype_name_of_an_ml_dtypes_array_before_anything_loaded_it():
    res = _run("""
import ml_dtypes, numpy as np
from ckptcore import dtypes
out = [dtypes.dtype_name(np.dtype(ml_dtypes.float8_e4m3fn)), dtypes.dtype_from_name('int4').name]
""")
    assert res["out"] == ["float8_e4m3fn", "int4"]


def test_unknown_names_stay_refused_after_ml_dtypes_loads():
    from ckptcore import dtypes

    assert "bfloat16" in dtypes.SUPPORTED
    with pytest.raises(ValueError):
        dtypes.dtype_from_name("object")
    with pytest.raises(ValueError):
        dtypes.dtype_from_name("float8_not_a_type")
