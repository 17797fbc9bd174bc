"""Modules, parameters and buffers registered after restore() get their values on registration."""

from __future__ import annotations

import gc

import torch

import ckptcore as ck
from ckptcore.restore import pending_count


class Grower(torch.nn.Module):
    """Builds nothing up front; layers are added later, as lazily built models do."""


def _saved(prefix):
    src = Grower()
    src.encoder = torch.nn.Linear(3, 4)
    src.head = torch.nn.Sequential(torch.nn.Linear(4, 2))
    src.scale = torch.nn.Parameter(torch.full((2,), 0.5))
    src.register_buffer("counts", torch.arange(5))
    return src, ck.Checkpoint(model=src).write(prefix)


def test_submodules_parameters_and_buffers_registered_later(prefix):
    src, path = _saved(prefix)
    dst = Grower()
    status = ck.Checkpoint(model=dst).read(path)
    status.expect_partial()
    dst.encoder = torch.nn.Linear(3, 4)                            # __setattr__ of a module
    assert torch.equal(dst.encoder.weight, src.encoder.weight)
    dst.add_module("head", torch.nn.Sequential(torch.nn.Linear(4, 2)))  # add_module, with a subtree
    assert torch.equal(dst.head[0].bias, src.head[0].bias)
    dst.register_parameter("scale", torch.nn.Parameter(torch.zeros(2)))
    assert dst.scale.tolist() == [0.5, 0.5]
    dst.register_buffer("counts", torch.zeros(5, dtype=torch.int64))
    assert dst.counts.tolist() == [0, 1, 2, 3, 4]
    status.assert_consumed()


def test_container_appends_restore_on_create(prefix):
    src = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    path = ck.Checkpoint(layers=src).write(prefix)
    dst = torch.nn.ModuleList()
    status = ck.Checkpoint(layers=dst).read(path)
    for _ in range(3):
        dst.append(torch.nn.Linear(2, 2))
    for a, b in zip(src, dst):
        assert torch.equal(a.weight, b.weight)
    status.assert_consumed()


def test_wrong_shape_on_registration_raises_and_keeps_waiting(prefix):
    src, path = _saved(prefix)
    dst = Grower()
    ck.Checkpoint(model=dst).read(path).expect_partial()
    try:
        dst.encoder = torch.nn.Linear(5, 4)
    except ck.ShapeMismatchError as e:
        assert "model/encoder/weight" in str(e)
    else:
        raise AssertionError("a wrongly shaped module was accepted")
    dst.encoder = torch.nn.Linear(3, 4)                            # the right one still gets the value
    assert torch.equal(dst.encoder.weight, src.encoder.weight)


def test_unrelated_registrations_are_untouched_and_queue_is_released(prefix):
    src, path = _saved(prefix)
    dst = Grower()
    ck.Checkpoint(model=dst).read(path).expect_partial()
    other = torch.nn.Module()
    other.encoder = torch.nn.Linear(3, 4)                          # same name, different parent
    assert not torch.equal(other.encoder.weight, src.encoder.weight)
    before = pending_count()
    del dst
    gc.collect()
    assert pending_count() < before                                # no leak of queued restores
