"""Any object with state_dict()/load_state_dict(): tensors as values, the rest as JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore_torch import codec


class Tracker:
    """A third-party-style object: only state_dict()/load_state_dict()."""

    def __init__(self):
        self.count = 0
        self.history = torch.zeros(4)
        self.meta = {"name": "t", "window": (1, 2), 3: float("-inf"), "flags": [True, None]}

    def state_dict(self):
        return {"count": self.count, "history": self.history, "meta": self.meta, "nested": {"ema": self.history * 2}}

    def load_state_dict(self, sd):
        self.count = sd["count"]
        self.history = sd["history"]
        self.meta = sd["meta"]
        self.loaded = sd


def test_round_trip_of_tensors_and_json(prefix):
    src = Tracker()
    src.count = 7
    src.history += torch.arange(4.0)
    src.meta["window"] = (5, 6)
    path = ck.Checkpoint(tracker=src).write(prefix)
    keys = set(ck.load_checkpoint(path).keys())
    assert {"tracker/.ATTRIBUTES/history", "tracker/.ATTRIBUTES/nested.Sema"} <= keys
    dst = Tracker()
    ck.Checkpoint(tracker=dst).read(path).assert_consumed()
    assert dst.count == 7 and torch.equal(dst.history, src.history)
    assert dst.meta["window"] == (5, 6) and math.isinf(dst.meta[3]) and dst.meta["flags"] == [True, None]
    assert torch.equal(dst.loaded["nested"]["ema"], src.history * 2)


def test_non_json_state_is_a_clear_error(prefix):
    class Bad(Tracker):
        def state_dict(self):
            return {"ok": 1, "inner": {"fn": object()}}

    with pytest.raises(ck.CheckpointError, match=r"inner/fn.*object.*never pickles"):
        ck.Checkpoint(bad=Bad()).write(prefix)


def test_shape_of_live_tensor_is_checked(prefix):
    path = ck.Checkpoint(tracker=Tracker()).write(prefix)
    other = Tracker()
    other.history = torch.zeros(5)
    with pytest.raises(ck.ShapeMismatchError, match="tracker"):
        ck.Checkpoint(tracker=other).read(path)


def test_specific_adapter_wins_over_fallback(prefix):
    class Special(ck.Adapter):
        name = "tests.tracker"

    name = ck.register_adapter(Tracker, Special())
    try:
        assert ck.registry.find_adapter(Tracker()).name == "tests.tracker"
    finally:
        ck.registry.unregister_plugin(name)
    assert ck.registry.find_adapter(Tracker()).name == "ckptcore_torch.state_dict"
    assert ck.registry.find_adapter(torch.nn.Linear(1, 1)).name == "ckptcore_torch.module"


def test_grad_scaler_through_fallback(prefix):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    path = ck.Checkpoint(scaler=scaler).write(prefix)
    other = torch.amp.GradScaler("cpu", init_scale=2.0)
    ck.Checkpoint(scaler=other).read(path).assert_consumed()
    assert other.state_dict() == scaler.state_dict()


_scalars = (st.none() | st.booleans() | st.integers(-2**62, 2**62) | st.text(max_size=5)
            | st.floats(allow_nan=False) | st.sampled_from([float("inf"), float("-inf")]))
_keys = st.text(max_size=8) | st.integers(-5, 5) | st.sampled_from(["__tuple__", "__tensor__", "__dict__"])
_states = st.recursive(
    _scalars | st.integers(0, 3).map(lambda n: torch.arange(n, dtype=torch.float32)),
    lambda inner: (st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
                   | st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=12)


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=60, deadline=None)
@given(state=_states)
def test_codec_round_trips_through_json(state):
    encoded, tensors = codec.encode(state)
    text = json.dumps(encoded, allow_nan=False)        # strict JSON: what the index stores
    assert _equal(codec.decode(json.loads(text), tensors), state)
