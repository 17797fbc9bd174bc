"""With the torch plugin blocked, torch objects are never dropped silently: saving fails, naming them.

(issue 13) Before, ``ck.Checkpoint(ms=[net]).write(p)`` wrote nothing, a ``ck.Module`` holding a
torch module saved only its numpy attributes, and ``ck.Checkpoint(sd={"w": torch.ones(3)})``
saved nothing yet restored with ``assert_consumed()`` passing.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import ckptcore as ck

INSTALL = r"pip install ckptcore-torch"


@pytest.fixture
def no_torch_plugin(monkeypatch):
    monkeypatch.setenv("CKPTCORE_BLOCK_PLUGINS", "torch")
    ck.registry._reset_for_tests()
    assert ck.registry.adapter_or_none(torch.ones(1)) is None  # really blocked
    yield
    monkeypatch.delenv("CKPTCORE_BLOCK_PLUGINS")
    ck.registry._reset_for_tests()


def test_module_in_a_list(no_torch_plugin, prefix):
    with pytest.raises(ck.NotTrackableError, match=rf"'ms/0'.*torch\.nn\.modules\.linear\.Linear.*{INSTALL}"):
        ck.Checkpoint(ms=[torch.nn.Linear(2, 2)]).write(prefix)
    assert not os.path.exists(prefix + ".index")


def test_torch_module_inside_a_ck_module(no_torch_plugin, prefix):
    m = ck.Module()
    m.w = np.ones(2)
    m.net = torch.nn.Linear(2, 2)
    with pytest.raises(ck.NotTrackableError, match=rf"'m/net'.*Linear.*{INSTALL}"):
        ck.Checkpoint(m=m).write(prefix)


def test_tensor_in_a_dict_is_an_error_at_save_and_at_restore(no_torch_plugin, prefix):
    with pytest.raises(ck.NotTrackableError, match=rf"'sd/w'.*torch\.Tensor.*{INSTALL}"):
        ck.Checkpoint(sd={"w": torch.ones(3)}).write(prefix)
    # a checkpoint that has no value for it cannot pass assert_consumed either
    path = ck.Checkpoint(sd={}).write(prefix)
    with pytest.raises(ck.NotTrackableError, match="sd/w"):
        ck.Checkpoint(sd={"w": torch.ones(3)}).read(path).assert_consumed()


def test_optimizer_and_top_level_keyword(no_torch_plugin, prefix):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ck.NotTrackableError, match=rf"'opt'.*SGD.*{INSTALL}"):
        ck.Checkpoint(opt=opt)
    with pytest.raises(ck.NotTrackableError, match=rf"'opts/0'.*SGD.*{INSTALL}"):
        ck.Checkpoint(opts=(opt,)).write(prefix)


def test_with_the_plugin_the_same_graphs_save(prefix):
    net = torch.nn.Linear(2, 2)
    path = ck.Checkpoint(ms=[net], sd={"w": torch.ones(3)}).write(prefix)
    keys = dict(ck.list_variables(path))
    assert "sd/w/.ATTRIBUTES/VARIABLE_VALUE" in keys and any(k.startswith("ms/0/") for k in keys)
