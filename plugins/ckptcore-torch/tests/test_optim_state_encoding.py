"""One parameter's optimizer state encodes the same through the flat fast path as through the codec.

``optim._encode_param_state`` handles the common state (a flat dict of tensors under string keys)
in one pass and hands everything else to ``codec.encode``; a saved checkpoint must not depend on
which of the two ran.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptcore.errors import CheckpointError
from ckptcore_torch import codec
from ckptcore_torch.optim import _encode_param_state, _opt_name, slot_tensor_name

_OPT = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

_keys = st.one_of(st.sampled_from(["step", "exp_avg", "exp_avg_sq", "momentum_buffer", "a/b", "", *codec.TAGS]),
                  st.text(max_size=6))
_tensors = st.builds(lambda n, p: torch.nn.Parameter(torch.zeros(n)) if p else torch.zeros(n),
                     st.integers(0, 3), st.booleans())
_plain = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=3))
_values = st.one_of(_tensors, _tensors, _tensors, _plain, st.lists(_tensors, max_size=2),
                    st.dictionaries(st.text(max_size=2), _tensors, max_size=2))
_state_keys = st.one_of(_keys, _keys, _keys, st.integers(0, 3))


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_state_keys, _values, max_size=5))
def test_fast_path_gives_what_the_codec_gives(state):
    want = got = None
    try:
        what = f"state of parameter 3 of {_opt_name(_OPT)}"
        want = codec.encode(dict(state), what=what, tensor_name=slot_tensor_name(what))
    except CheckpointError as e:
        with pytest.raises(CheckpointError) as got_err:
            _encode_param_state(_OPT, 3, state)
        assert str(got_err.value) == str(e)
        return
    got = _encode_param_state(_OPT, 3, state)
    assert _same(got[0], want[0])
    assert list(got[1]) == list(want[1])
    assert all(got[1][k] is want[1][k] for k in want[1])  # the live tensors themselves, no copies


def test_adam_state_takes_the_flat_path_and_names_each_slot():
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.ones(2)
    opt.step()
    enc, tensors = _encode_param_state(opt, 0, opt.state[p])
    assert enc == {k: {"__tensor__": k} for k in opt.state[p]}
    assert sorted(tensors) == ["exp_avg", "exp_avg_sq", "step"]
    assert all(tensors[k] is opt.state[p][k] for k in tensors)


def _opt_state_json(path):
    import ckptcore as ck

    g = ck.load_checkpoint(path).index.graph
    (node,) = [i for i, a in enumerate(g.adapter) if a == "ckptcore_torch.optimizer"]
    return g.state[node]


def test_state_of_tensors_alone_is_left_to_the_slots_and_restores_the_same(tmp_path):
    # Adam's per-parameter state is three tensors: the slots carry it, so the JSON state holds no entry per
    # parameter (it held a placeholder per tensor: a quarter of the index for a model of small parameters)
    import ckptcore as ck

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    path = ck.Checkpoint(net=net, opt=opt).write(str(tmp_path / "adam"))
    assert _opt_state_json(path)["state"] == {}
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(net2.parameters(), lr=0.5)
    ck.Checkpoint(net=net2, opt=opt2).read(path).assert_consumed()
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i, s in a["state"].items():
        assert s.keys() == b["state"][i].keys() and all(torch.equal(s[k], b["state"][i][k]) for k in s)


def test_state_with_a_plain_value_beside_tensors_keeps_its_json(tmp_path):
    import ckptcore as ck

    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    opt.state[p].update(momentum_buffer=torch.full((2,), 0.5), count=3)
    path = ck.Checkpoint(p=p, opt=opt).write(str(tmp_path / "mixed"))
    assert _opt_state_json(path)["state"] == {"0": {"momentum_buffer": {"__tensor__": "momentum_buffer"},
                                                     "count": 3}}
    p2 = torch.nn.Parameter(torch.zeros(2))
    opt2 = torch.optim.SGD([p2], lr=0.1, momentum=0.9)
    ck.Checkpoint(p=p2, opt=opt2).read(path).assert_consumed()
    assert opt2.state[p2]["count"] == 3 and opt2.state[p2]["momentum_buffer"].tolist() == [0.5, 0.5]


@pytest.mark.parametrize("state", [{"a/b": torch.ones(2)}, {"hist": {"x/y": torch.ones(2)}},
                                   {"a/b": torch.ones(2), "count": 3}])
def test_a_state_key_holding_a_slash_is_refused_at_save_naming_it(tmp_path, state):
    # slot names join nested keys with "/": a tensor under the key "a/b" came back under "a" -> "b"
    import ckptcore as ck

    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    opt.state[p].update(state)
    with pytest.raises(CheckpointError, match=r"state of parameter 0 of .*holds a '/'.*Rename the key"):
        ck.Checkpoint(p=p, opt=opt).write(str(tmp_path / "c"))
    opt.state[p] = {"old_dirs": [torch.ones(2), torch.zeros(2)]}   # list positions are path segments: fine
    path = ck.Checkpoint(p=p, opt=opt).write(str(tmp_path / "ok"))
    p2 = torch.nn.Parameter(torch.zeros(2))
    opt2 = torch.optim.SGD([p2], lr=0.1)
    ck.Checkpoint(p=p2, opt=opt2).read(path).assert_consumed()
    assert [t.tolist() for t in opt2.state[p2]["old_dirs"]] == [[1.0, 1.0], [0.0, 0.0]]
