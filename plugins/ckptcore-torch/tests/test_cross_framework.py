"""A torch checkpoint restores into ck.Module/numpy objects of the same graph shape, and back."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import ckptcore as ck


def _ck_sequential(shapes, dtype):
    layers = []
    for out_f, in_f in shapes:
        layer = ck.Module()
        layer.weight = np.zeros((out_f, in_f), dtype)
        layer.bias = ck.Variable(np.zeros(out_f, dtype))
        layers.append(layer)
    return layers


@pytest.mark.parametrize("tdtype,npdtype", [(torch.float32, np.float32), (torch.float16, np.float16),
                                            (torch.bfloat16, ml_dtypes.bfloat16)], ids=["f32", "f16", "bf16"])
def test_torch_to_numpy_and_back(tdtype, npdtype, prefix):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).to(tdtype)
    path = ck.Checkpoint(model=net).write(prefix)
    # nn.Sequential's children are "0", "1": so are a ck.Module's attributes of those names.
    layers = _ck_sequential([(4, 3), (2, 4)], npdtype)
    holder = ck.Module()
    setattr(holder, "0", layers[0])
    setattr(holder, "1", layers[1])
    ck.Checkpoint(model=holder).read(path).assert_consumed()
    assert layers[0].weight.dtype == np.dtype(npdtype)
    np.testing.assert_array_equal(layers[0].weight.view(np.uint8),
                                  net[0].weight.detach().numpy().view(np.uint8) if tdtype != torch.bfloat16
                                  else net[0].weight.detach().view(torch.int16).numpy().view(np.uint8))
    # Change the numpy values, save from the numpy graph, restore into torch.
    layers[1].bias.assign(np.asarray([1.5, -2.0], npdtype))
    back = ck.Checkpoint(model=holder).write(prefix + "-np")
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).to(tdtype)
    ck.Checkpoint(model=fresh).read(back).assert_consumed()
    assert fresh[1].bias.dtype == tdtype and fresh[1].bias.tolist() == [1.5, -2.0]
    assert torch.equal(fresh[0].weight, net[0].weight)


def test_module_list_matches_a_tracked_list(prefix):
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    path = ck.Checkpoint(model=net).write(prefix)
    layers = _ck_sequential([(2, 2)], np.float32)
    ck.Checkpoint(model=layers).read(path).assert_consumed()    # a list is a graph node with children "0", ...
    np.testing.assert_array_equal(layers[0].weight, net[0].weight.detach().numpy())


def test_dtype_mismatch_across_frameworks_is_reported(prefix):
    net = torch.nn.Sequential(torch.nn.Linear(2, 2)).to(torch.bfloat16)
    path = ck.Checkpoint(model=net).write(prefix)
    with pytest.raises(ck.DtypeMismatchError, match="model/0/weight"):
        ck.Checkpoint(model=_ck_sequential([(2, 2)], np.float32)).read(path)
