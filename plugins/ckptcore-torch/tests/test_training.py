"""Resumed training is bit-identical to uninterrupted training, for every built-in optimizer."""

from __future__ import annotations

import pytest
import torch
from training_loop import train

import ckptcore as ck


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.BatchNorm1d(8),
                               torch.nn.Linear(8, 1))


def batches(n, seed=123):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)) for _ in range(n)]


OPTIMIZERS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resume_is_bit_identical(name, prefix):
    make_opt = OPTIMIZERS[name]
    data = batches(8)
    # Uninterrupted run.
    ref_model = make_model()
    ref_opt = make_opt(ref_model.parameters())
    ref_losses = train(ref_model, ref_opt, data)
    # Interrupted run: 4 steps, save, restore into fresh objects before their first step, 4 more.
    model = make_model()
    opt = make_opt(model.parameters())
    first = train(model, opt, data[:4])
    path = ck.Checkpoint(model=model, optimizer=opt).save(prefix)
    del model, opt
    fresh_model = make_model(seed=99)
    fresh_opt = make_opt(fresh_model.parameters())
    ck.Checkpoint(model=fresh_model, optimizer=fresh_opt).restore(path).assert_consumed()
    second = train(fresh_model, fresh_opt, data[4:])
    assert first + second == ref_losses
    for (n, a), b in zip(ref_model.state_dict().items(), fresh_model.state_dict().values()):
        assert torch.equal(a, b), n


def test_slot_keys_are_attached_to_parameters(prefix):
    model = make_model()
    opt = torch.optim.Adam(model.parameters())
    train(model, opt, batches(1))
    keys = set(ck.load_checkpoint(ck.Checkpoint(model=model, optimizer=opt).write(prefix)).keys())
    assert "model/0/weight/.ATTRIBUTES/VARIABLE_VALUE" in keys
    for slot in ("exp_avg", "exp_avg_sq", "step"):
        assert f"model/0/weight/.OPTIMIZER_SLOT/optimizer/{slot}/.ATTRIBUTES/VARIABLE_VALUE" in keys
    # BatchNorm buffers are values; they have no optimizer state.
    assert "model/2/running_mean/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert not any(k.startswith("model/2/running_mean/.OPTIMIZER_SLOT") for k in keys)


def _all_builtin_optimizers():
    out = {
        "ASGD": lambda ps: torch.optim.ASGD(ps, lr=1e-2, t0=1),
        "Adadelta": lambda ps: torch.optim.Adadelta(ps),
        "Adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2),
        "Adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
        "AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-2),
        "Adamax": lambda ps: torch.optim.Adamax(ps, lr=1e-2),
        "NAdam": lambda ps: torch.optim.NAdam(ps, lr=1e-2, decoupled_weight_decay=True, weight_decay=0.01),
        "RAdam": lambda ps: torch.optim.RAdam(ps, lr=1e-2),
        "RMSprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.5, centered=True),
        "Rprop": lambda ps: torch.optim.Rprop(ps, lr=1e-2),
        "SGD": lambda ps: torch.optim.SGD(ps, lr=1e-2),
        "LBFGS": lambda ps: torch.optim.LBFGS(ps, lr=0.5, history_size=3, max_iter=3),
    }
    if hasattr(torch.optim, "Adafactor"):
        out["Adafactor"] = lambda ps: torch.optim.Adafactor(ps, lr=1e-2)
    return out


BUILTIN = _all_builtin_optimizers()


def _steps(model, opt, data):
    losses = []
    for x, y in data:
        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)  # noqa: B023 -- opt.step(closure) calls it at once
            loss.backward()
            return loss
        losses.append(opt.step(closure).item())
    return losses


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_optimizer_resumes_bit_identically(name, prefix):
    make_opt = BUILTIN[name]
    data = batches(6, seed=7)
    ref_model = torch.nn.Linear(4, 1)
    ref_opt = make_opt(ref_model.parameters())
    ref = _steps(ref_model, ref_opt, data)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = make_opt(model.parameters())
    first = _steps(model, opt, data[:3])
    path = ck.Checkpoint(model=model, optimizer=opt).write(prefix)
    fresh = torch.nn.Linear(4, 1)
    fresh_opt = make_opt(fresh.parameters())
    ck.Checkpoint(model=fresh, optimizer=fresh_opt).read(path).assert_consumed()
    assert first + _steps(fresh, fresh_opt, data[3:]) == ref
    assert torch.equal(fresh.weight, ref_model.weight)


def test_sparse_adam_and_muon_resume(prefix):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = torch.optim.SparseAdam(emb.parameters(), lr=0.1)
    idx = torch.tensor([1, 2, 5])
    for _ in range(2):
        opt.zero_grad(); emb(idx).sum().backward(); opt.step()
    path = ck.Checkpoint(model=emb, optimizer=opt).write(prefix)
    fresh = torch.nn.Embedding(10, 3, sparse=True)
    fresh_opt = torch.optim.SparseAdam(fresh.parameters(), lr=0.1)
    ck.Checkpoint(model=emb.__class__(10, 3, sparse=True), optimizer=fresh_opt)  # unrelated graph: no effect
    ck.Checkpoint(model=fresh, optimizer=fresh_opt).read(path).assert_consumed()
    for o, m in ((opt, emb), (fresh_opt, fresh)):
        o.zero_grad(); m(idx).sum().backward(); o.step()
    assert torch.equal(fresh.weight, emb.weight)
    if hasattr(torch.optim, "Muon"):
        w = torch.nn.Parameter(torch.randn(4, 4))
        muon = torch.optim.Muon([w], lr=0.02)
        (w ** 2).sum().backward(); muon.step()
        p2 = ck.Checkpoint(w=w, optimizer=muon).write(prefix + "-muon")
        w2 = torch.nn.Parameter(torch.zeros(4, 4))
        muon2 = torch.optim.Muon([w2], lr=0.5)
        ck.Checkpoint(w=w2, optimizer=muon2).read(p2).assert_consumed()
        assert muon2.param_groups[0]["lr"] == 0.02
        for o, p in ((muon, w), (muon2, w2)):
            o.zero_grad(); (p ** 2).sum().backward(); o.step()
        assert torch.equal(w, w2)


def test_param_groups_hyperparameters_restored(prefix):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias]}],
                           lr=0.01, betas=(0.8, 0.88))
    path = ck.Checkpoint(model=model, optimizer=opt).write(prefix)
    fresh = torch.nn.Linear(2, 2)
    fresh_opt = torch.optim.Adam([{"params": [fresh.weight]}, {"params": [fresh.bias]}], lr=0.5)
    ck.Checkpoint(model=fresh, optimizer=fresh_opt).read(path)
    assert [g["lr"] for g in fresh_opt.param_groups] == [0.1, 0.01]
    assert fresh_opt.param_groups[0]["betas"] == (0.8, 0.88)  # a tuple again, not a JSON list
    assert fresh_opt.param_groups[0]["params"][0] is fresh.weight


def test_tensor_hyperparameters_restored_in_place(prefix):
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=torch.tensor(0.25))
    path = ck.Checkpoint(w=w, optimizer=opt).write(prefix)
    assert "optimizer/.ATTRIBUTES/param_groups.S0.Slr" in ck.load_checkpoint(path).keys()
    w2 = torch.nn.Parameter(torch.ones(3))
    lr = torch.tensor(1.0)
    opt2 = torch.optim.Adam([w2], lr=lr)
    ck.Checkpoint(w=w2, optimizer=opt2).read(path)
    assert opt2.param_groups[0]["lr"] is lr and float(lr) == 0.25


def test_group_structure_mismatch_is_a_clear_error(prefix):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = ck.Checkpoint(model=model, optimizer=opt).write(prefix)
    fresh = torch.nn.Linear(2, 2)
    fresh_opt = torch.optim.SGD([fresh.weight], lr=0.1)
    with pytest.raises(ck.CheckpointError, match="param groups"):
        ck.Checkpoint(model=fresh, optimizer=fresh_opt).read(path)


def test_slots_restored_when_parameters_arrive_after_restore(prefix):
    """restore_slot can run after the optimizer's state: a layer appended after restore() gets its slots."""
    data = batches(4)

    model = torch.nn.Sequential(torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train(model, opt, data[:2])
    path = ck.Checkpoint(model=model, optimizer=opt).write(prefix)
    ref = train(model, opt, data[2:])

    layer = torch.nn.Linear(4, 1)
    fresh_opt = torch.optim.Adam(layer.parameters(), lr=0.5)
    fresh = torch.nn.Sequential()                       # the layer is not in the model yet
    status = ck.Checkpoint(model=fresh, optimizer=fresh_opt).read(path)
    assert fresh_opt.param_groups[0]["lr"] == 0.01      # the optimizer itself was matched
    assert len(fresh_opt.state) == 0                    # its slots wait for their parameters
    fresh.append(layer)                                 # module registration hook: restored now
    assert set(fresh_opt.state[layer.weight]) == {"step", "exp_avg", "exp_avg_sq"}
    status.assert_consumed()
    assert train(fresh, fresh_opt, data[2:]) == ref


def test_bfloat16_model_with_named_parameters_resumes_bit_identically(prefix):
    data = [(x.to(torch.bfloat16), y.to(torch.bfloat16)) for x, y in batches(6)]

    def build():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)).to(torch.bfloat16)
        return m, torch.optim.Adam(m.named_parameters(), lr=1e-2)

    ref_model, ref_opt = build()
    ref = train(ref_model, ref_opt, data)
    model, opt = build()
    first = train(model, opt, data[:3])
    path = ck.Checkpoint(model=model, optimizer=opt).write(prefix)
    assert ck.load_checkpoint(path).get_variable_to_dtype_map()[
        "model/1/weight/.OPTIMIZER_SLOT/optimizer/exp_avg/.ATTRIBUTES/VARIABLE_VALUE"].name == "bfloat16"
    fresh, fresh_opt = build()
    ck.Checkpoint(model=fresh, optimizer=fresh_opt).read(path).assert_consumed()
    assert fresh_opt.param_groups[0]["param_names"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert first + train(fresh, fresh_opt, data[3:]) == ref


def test_optimizer_created_after_restore_gets_its_state(prefix):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, opt, batches(2))
    holder = ck.Module()
    holder.model, holder.optimizer = model, opt
    path = ck.Checkpoint(trainer=holder).write(prefix)
    fresh_model = make_model(seed=5)
    trainer = ck.Module()
    trainer.model = fresh_model
    status = ck.Checkpoint(trainer=trainer).read(path)
    trainer.optimizer = torch.optim.SGD(fresh_model.parameters(), lr=1.0)   # created after restore()
    status.assert_consumed()
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9
    assert torch.equal(trainer.optimizer.state[fresh_model[0].weight]["momentum_buffer"],
                       opt.state[model[0].weight]["momentum_buffer"])


def test_non_json_hyperparameter_is_a_clear_error(prefix):
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    opt.param_groups[0]["schedule"] = lambda step: step
    with pytest.raises(ck.CheckpointError, match=r"param_groups\[0\].*schedule"):
        ck.Checkpoint(w=w, optimizer=opt).write(prefix)
