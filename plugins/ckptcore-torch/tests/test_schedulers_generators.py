"""LR schedulers and torch.Generator state."""

from __future__ import annotations

import math

import pytest
import torch

import ckptcore as ck


def _opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)


SCHEDULERS = {
    "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10),
    "onecycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=20),
    "lambda": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 0.9 ** e),
    "sequential": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=3),
            torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8)], milestones=[3]),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_resumes_its_schedule(name, prefix):
    make = SCHEDULERS[name]
    ref_opt = _opt(); ref = make(ref_opt)
    opt = _opt(); sched = make(opt)
    lrs_ref = []
    for _ in range(10):
        ref_opt.step(); ref.step(); lrs_ref.append(ref_opt.param_groups[0]["lr"])
    lrs = []
    for _ in range(4):
        opt.step(); sched.step(); lrs.append(opt.param_groups[0]["lr"])
    path = ck.Checkpoint(optimizer=opt, scheduler=sched).write(prefix)
    opt2 = _opt(); sched2 = make(opt2)
    ck.Checkpoint(optimizer=opt2, scheduler=sched2).read(path).assert_consumed()
    for _ in range(6):
        opt2.step(); sched2.step(); lrs.append(opt2.param_groups[0]["lr"])
    assert lrs == lrs_ref


def test_reduce_on_plateau_with_infinite_best(prefix):
    opt = _opt()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    path = ck.Checkpoint(optimizer=opt, scheduler=sched).write(prefix)      # best is still inf
    sched.step(1.0); sched.step(2.0)
    path2 = ck.Checkpoint(optimizer=opt, scheduler=sched).write(prefix + "2")
    opt2 = _opt(); s2 = torch.optim.lr_scheduler.ReduceLROnPlateau(opt2, patience=0, factor=0.5)
    s2.best = 0.0
    ck.Checkpoint(optimizer=opt2, scheduler=s2).read(path)
    assert math.isinf(s2.best)
    ck.Checkpoint(optimizer=opt2, scheduler=s2).read(path2)
    assert s2.best == 1.0 and opt2.param_groups[0]["lr"] == 0.5
    assert s2.state_dict() == sched.state_dict()


def test_generator_state_restored(prefix):
    g = torch.Generator().manual_seed(42)
    torch.rand(3, generator=g)
    path = ck.Checkpoint(rng=g).write(prefix)
    expected = torch.rand(5, generator=g)
    g2 = torch.Generator().manual_seed(0)
    ck.Checkpoint(rng=g2).read(path).assert_consumed()
    assert torch.equal(torch.rand(5, generator=g2), expected)
    key = "rng/.ATTRIBUTES/VARIABLE_VALUE"
    assert ck.load_checkpoint(path).get_variable_to_dtype_map()[key].name == "uint8"


def test_global_default_generator(prefix):
    torch.manual_seed(3)
    path = ck.Checkpoint(rng=torch.default_generator).write(prefix)
    expected = torch.randn(4)
    torch.manual_seed(99)
    ck.Checkpoint(rng=torch.default_generator).read(path)
    assert torch.equal(torch.randn(4), expected)
