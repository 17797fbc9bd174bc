"""An edited optimizer state (checksums recomputed) fails the restore before any weight is assigned.

(issue 13) It used to raise ValueError/KeyError/TypeError from set_state after the model's
weights were overwritten, even with verify_before_restore=True.
"""

from __future__ import annotations

import copy

import pytest
import torch

import ckptcore as ck
from ckptcore.formats import ckpt as fmt


def _trained(prefix):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    return ck.Checkpoint(net=net, opt=opt).write(prefix)


def _edit_state(path, edit):
    with open(path + ".index", "rb") as f:
        index = fmt.decode_index(f.read(), path)
    g = index.graph
    opt_node = next(i for i, a in enumerate(g.adapter) if a == "ckptcore.torch.optimizer" or "optim" in a)
    state = copy.deepcopy(g.state[opt_node])
    edit(state)
    g.state[opt_node] = state
    with open(path + ".index", "wb") as f:
        f.write(index.encode())   # a valid index: its checksum is recomputed


EDITS = {
    "group sizes": lambda s: s.__setitem__("group_sizes", [99]),
    "param index not a number": lambda s: s["state"].__setitem__("abc", {"x": 1}),
    "param index out of range": lambda s: s["state"].__setitem__("7", {}),
    "groups not a list": lambda s: s.__setitem__("param_groups", {"x": 1}),
    "per-param state not a dict": lambda s: s["state"].__setitem__("0", [1, 2]),
    "state not a dict": lambda s: s.__setitem__("state", 5),
}


@pytest.mark.parametrize("name", sorted(EDITS))
@pytest.mark.parametrize("verify", [False, True])
def test_edited_optimizer_state_fails_before_any_assignment(prefix, name, verify):
    path = _trained(prefix)
    _edit_state(path, EDITS[name])
    net = torch.nn.Linear(3, 2)
    torch.nn.init.zeros_(net.weight)
    torch.nn.init.zeros_(net.bias)
    opt = torch.optim.Adam(net.parameters(), lr=0.5)
    with pytest.raises(ck.AdapterStateError, match=r"cannot restore opt: its saved state does not fit"):
        ck.Checkpoint(net=net, opt=opt).read(path, options=ck.CheckpointOptions(verify_before_restore=verify))
    assert not net.weight.detach().any() and not net.bias.detach().any()   # nothing was assigned
    assert opt.param_groups[0]["lr"] == 0.5 and not opt.state


def test_an_unedited_checkpoint_still_restores(prefix):
    path = _trained(prefix)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.5)
    ck.Checkpoint(net=net, opt=opt).read(path).assert_consumed()
    assert opt.param_groups[0]["lr"] == 0.01 and len(opt.state) == 2


def _edit_node_state(path, adapter_part, edit):
    with open(path + ".index", "rb") as f:
        index = fmt.decode_index(f.read(), path)
    g = index.graph
    node = next(i for i, a in enumerate(g.adapter) if adapter_part in a)
    state = copy.deepcopy(g.state[node])
    edit(state["state_dict"])
    g.state[node] = state
    with open(path + ".index", "wb") as f:
        f.write(index.encode())


SCHEDULER_EDITS = {
    "a number made a string": lambda sd: sd.__setitem__("last_epoch", "seven"),
    "a list made a number": lambda sd: sd.__setitem__("base_lrs", 0.1),
    "a list element made a dict": lambda sd: sd["_last_lr"].__setitem__(0, {"lr": 1}),
}


@pytest.mark.parametrize("name", sorted(SCHEDULER_EDITS))
def test_an_edited_scheduler_state_fails_before_any_assignment(prefix, name):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    path = ck.Checkpoint(net=net, sched=sched).write(prefix)
    _edit_node_state(path, "lr_scheduler", SCHEDULER_EDITS[name])
    net2 = torch.nn.Linear(3, 2)
    torch.nn.init.zeros_(net2.weight)
    sched2 = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(net2.parameters(), lr=0.1), step_size=1, gamma=0.5)
    refused = r"cannot restore sched: its saved state does not fit.*checkpoint has"
    with pytest.raises(ck.AdapterStateError, match=refused):
        ck.Checkpoint(net=net2, sched=sched2).read(path)
    assert not net2.weight.detach().any() and sched2.last_epoch == 0   # nothing was assigned


def test_a_scheduler_state_with_keys_of_another_version_still_restores(prefix):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    path = ck.Checkpoint(sched=sched).write(prefix)
    _edit_node_state(path, "lr_scheduler", lambda sd: sd.__setitem__("_from_a_newer_torch", 1))
    sched2 = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1),
                                             step_size=1, gamma=0.5)
    ck.Checkpoint(sched=sched2).read(path).assert_consumed()
    assert sched2.last_epoch == 1
