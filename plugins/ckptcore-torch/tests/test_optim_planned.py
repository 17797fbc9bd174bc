"""Optimizer slots ride the restore's one planned read, straight into the optimizer's tensors.

* No slot is read by a call of its own (``CheckpointReader.get_tensor``).
* An optimizer that already has state receives the bytes in place: same tensor objects, same memory.
* A fresh optimizer adopts the arrays read for it as its state tensors (no copy).
* Resumed training is bit-identical for random models, optimizers and parameter groups.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.reader import CheckpointReader

from .training_loop import train

OPTIMIZERS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.5, centered=True),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2),
}


def _model(widths, seed):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def _groups(model, n_groups):
    params = list(model.parameters())
    return [{"params": params[i::n_groups], "lr": 1e-2 * (i + 1)} for i in range(n_groups) if params[i::n_groups]]


def _data(widths, seed, steps=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, widths[0], generator=g), torch.randn(4, widths[-1], generator=g)) for _ in range(steps)]


def test_slots_are_read_in_the_planned_pass(prefix, monkeypatch):
    model = _model([3, 4, 2], 0)
    opt = torch.optim.Adam(model.parameters())
    train(model, opt, _data([3, 4, 2], 0))
    path = ck.Checkpoint(model=model, opt=opt).save(prefix)
    model2 = _model([3, 4, 2], 1)
    opt2 = torch.optim.Adam(model2.parameters())

    def refuse(self, key):
        raise AssertionError(f"slot {key} read on its own, outside the planned read")
    monkeypatch.setattr(CheckpointReader, "get_tensor", refuse)
    ck.Checkpoint(model=model2, opt=opt2).restore(path).assert_consumed()
    for p, q in zip(model.parameters(), model2.parameters()):
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][k], opt2.state[q][k])


def test_existing_state_is_filled_in_place(prefix, monkeypatch):
    from ckptcore_torch.optim import OptimizerAdapter

    handed = []
    real = OptimizerAdapter.restore_slots
    monkeypatch.setattr(OptimizerAdapter, "restore_slots",
                        lambda self, o, items: handed.append(len(items)) or real(self, o, items))
    model = _model([3, 5, 2], 0)
    opt = torch.optim.AdamW(model.parameters())
    train(model, opt, _data([3, 5, 2], 0))
    path = ck.Checkpoint(model=model, opt=opt).save(prefix)
    train(model, opt, _data([3, 5, 2], 7))  # move on: live state now differs from the checkpoint's
    before = {(id(p), k): (t, t.data_ptr()) for p in model.parameters() for k, t in opt.state[p].items()}
    saved = ck.load_checkpoint(path)
    ck.Checkpoint(model=model, opt=opt).restore(path).assert_consumed()
    for _i, p in enumerate(model.parameters()):
        for k, t in opt.state[p].items():
            old, ptr = before[(id(p), k)]
            assert t is old and t.data_ptr() == ptr  # the same tensor, the same memory
    assert handed == []  # slot_buffers_in_place: nothing left to hand over
    key = next(k for k in saved.keys() if "OPTIMIZER_SLOT" in k and k.endswith("exp_avg/.ATTRIBUTES/VARIABLE_VALUE")
               and k.startswith("model/0/weight"))
    np.testing.assert_array_equal(opt.state[model[0].weight]["exp_avg"].numpy(), saved.get_tensor(key))


def test_fresh_state_adopts_the_arrays_read(prefix, monkeypatch):
    model = _model([2, 3], 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, opt, _data([2, 3], 0))
    path = ck.Checkpoint(model=model, opt=opt).save(prefix)
    copies = []
    real_clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda self, *a, **k: copies.append(1) or real_clone(self, *a, **k))
    model2 = _model([2, 3], 1)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    ck.Checkpoint(model=model2, opt=opt2).restore(path).assert_consumed()
    assert copies == []
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])


class _Param(torch.nn.Parameter):
    """A parameter subclass: not a plain type, so the adapter's general path looks at it."""


def test_slot_buffers_follow_each_request_variable():
    # Requests of one parameter, then another's, then the first one's again: every buffer is the
    # requested parameter's own state tensor (the inlined path keeps the previous variable's state).
    from ckptcore_torch.optim import OptimizerAdapter

    p, q = torch.nn.Parameter(torch.zeros(3)), _Param(torch.zeros(3))
    opt = torch.optim.Adam([p, q])
    for x in (p, q):
        x.grad = torch.ones(3)
    opt.step()
    f32 = np.dtype(np.float32)
    requests = [(p, "exp_avg", (3,), f32), (q, "exp_avg", (3,), f32), (p, "exp_avg_sq", (3,), f32),
                (q, "exp_avg_sq", (3,), f32), (p, "step", (), f32)]
    bufs = OptimizerAdapter().slot_restore_buffers(opt, requests)
    for (var, name, _shape, _dtype), buf in zip(requests, bufs):
        assert buf is not None, name
        buf[...] = 7
        assert torch.all(opt.state[var][name] == 7), (type(var).__name__, name)
    # a request whose shape or dtype differs from the live state gets no buffer (a fresh array is read)
    assert OptimizerAdapter().slot_restore_buffers(opt, [(p, "exp_avg", (4,), f32),
                                                         (p, "exp_avg_sq", (3,), np.dtype(np.float64))]) == [None, None]


def test_two_optimizers_over_the_same_parameters_get_their_own_tensors(prefix):
    model = _model([2, 2], 0)
    a, b = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), torch.optim.Adam(model.parameters())
    for opt in (a, b):
        train(model, opt, _data([2, 2], 0, steps=1))
    path = ck.Checkpoint(model=model, a=a, b=b).save(prefix)
    model2 = _model([2, 2], 1)
    a2, b2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9), torch.optim.Adam(model2.parameters())
    ck.Checkpoint(model=model2, a=a2, b=b2).restore(path).assert_consumed()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a.state[p]["momentum_buffer"], a2.state[q]["momentum_buffer"])
        assert torch.equal(b.state[p]["exp_avg"], b2.state[q]["exp_avg"])
        ptrs = [a2.state[q]["momentum_buffer"].data_ptr(), b2.state[q]["exp_avg"].data_ptr(),
                b2.state[q]["exp_avg_sq"].data_ptr()]
        assert len(set(ptrs)) == 3


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=5), opt_name=st.sampled_from(sorted(OPTIMIZERS)),
       n_groups=st.integers(1, 3), warm=st.booleans(), seed=st.integers(0, 2**16))
def test_resume_is_bit_identical(tmp_path_factory, widths, opt_name, n_groups, warm, seed):
    prefix = str(tmp_path_factory.mktemp("resume") / "ckpt")
    data = _data(widths, seed, steps=4)
    model = _model(widths, seed)
    opt = OPTIMIZERS[opt_name](_groups(model, n_groups))
    train(model, opt, data[:2])
    path = ck.Checkpoint(model=model, opt=opt).save(prefix)
    expected = train(model, opt, data[2:])

    model2 = _model(widths, seed + 1)
    opt2 = OPTIMIZERS[opt_name](_groups(model2, n_groups))
    if warm:  # an optimizer with state of its own already: restored in place
        train(model2, opt2, data[:1])
    ck.Checkpoint(model=model2, opt=opt2).restore(path).assert_consumed()
    assert train(model2, opt2, data[2:]) == expected
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
        assert opt.state[p].keys() == opt2.state[q].keys()
        for k, v in opt.state[p].items():
            assert torch.equal(v, opt2.state[q][k]) and v.dtype == opt2.state[q][k].dtype
