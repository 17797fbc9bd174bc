"""The torch plugin imports ml_dtypes only when a bfloat16/float8 tensor is met (fresh interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(code: str):
    code = "import json, sys\n" + code + "\nprint(json.dumps({'ml': 'ml_dtypes' in sys.modules, 'out': out}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_float32_model_and_optimizer_need_no_ml_dtypes(tmp_path):
    res = _run(f"""
import torch, ckptcore as ck
torch.manual_seed(0)
net = torch.nn.Linear(3, 2); opt = torch.optim.Adam(net.parameters())
net(torch.ones(1, 3)).sum().backward(); opt.step()
path = ck.Checkpoint(model=net, opt=opt).save({str(tmp_path / 'c')!r})
net2 = torch.nn.Linear(3, 2); opt2 = torch.optim.Adam(net2.parameters())
ck.Checkpoint(model=net2, opt=opt2).restore(path).assert_consumed()
out = torch.equal(net.weight, net2.weight) and torch.equal(opt.state[net.weight]['exp_avg'],
                                                           opt2.state[net2.weight]['exp_avg'])
""")
    assert res == {"ml": False, "out": True}


def test_bfloat16_tensor_round_trips_without_the_user_importing_ml_dtypes(tmp_path):
    res = _run(f"""
import torch, ckptcore as ck
src = torch.arange(4, dtype=torch.bfloat16)
path = ck.Checkpoint(t=src).save({str(tmp_path / 'c')!r})
dst = torch.zeros(4, dtype=torch.bfloat16)
ck.Checkpoint(t=dst).restore(path).assert_consumed()
out = dst.tolist()
""")
    assert res == {"ml": True, "out": [0.0, 1.0, 2.0, 3.0]}
