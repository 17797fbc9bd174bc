"""A save's shortcuts change nothing but speed: ``Adapter.leaf_value`` and the compiled slot step.

``leaf_value`` lets a save take a leaf's one array without asking the adapter for children,
attributes, state and slots; the compiled ``add_slots`` (``_save_fast.pyx``) adds optimizer slots
of plain arrays in one loop. Each plan below is made with and without the shortcut, on the same
live graph, and must agree: the graph's columns and slots, the keys, dtypes and written arrays
(the live arrays themselves where written as they are), or the error (type and message).
"""

from __future__ import annotations

import numpy as np
import pytest
from ckpt_samples import plan_summary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.save import plan as saver


class Box:
    """A leaf of one value, whose adapter offers it through leaf_value (as torch's tensor adapter does)."""

    def __init__(self, value, offer: str = "own"):
        self.value, self.offer = value, offer


def _raise(box):
    raise RuntimeError("leaf_value exploded")


# What leaf_value may give: the value itself, None, or things the saver must take the usual path for.
OFFERS = {
    "own": lambda b: b.value,
    "none": lambda b: None,
    "strided": lambda b: b.value,          # (the value may itself be strided, swapped, ...: see VALUES)
    "list": lambda b: b.value.tolist(),    # not an array: the usual path converts get_value's
    "raises": _raise,
}
VALUES = {
    "plain": lambda k: np.full((k % 3) + 1, k, np.float32),
    "0-d": lambda k: np.array(k, np.int64),
    "strided": lambda k: np.arange(8, dtype=np.float64)[::2],
    "swapped": lambda k: np.ones(3, np.dtype(np.int32).newbyteorder()),
    "fortran": lambda k: np.asfortranarray(np.ones((2, 3), np.float32)),
}


class BoxAdapter(ck.Adapter):
    name = "test.shortcuts.box"

    def attributes(self, obj):
        return ["VARIABLE_VALUE"]

    def get_value(self, obj, attr):
        return obj.value

    def leaf_value(self, obj):
        return OFFERS[obj.offer](obj)


class Opt:
    """A toy optimizer: slots of the variables it was given (some of them not in the checkpoint)."""

    def __init__(self, slots):
        self.slot_list = slots


class OptAdapter(ck.Adapter):
    name = "test.shortcuts.opt"

    def slots(self, obj):
        return [ck.SlotVariable(v, n, x) for v, n, x in obj.slot_list]

    def restore_slot(self, obj, variable, name, value):
        pass   # (these tests only save)


class Parent:
    def __init__(self, kids):
        self.kids = kids


class ParentAdapter(ck.Adapter):
    """Has children, so a save never asks it for leaf_value (even though it defines one)."""

    name = "test.shortcuts.parent"

    def children(self, obj):
        return list(obj.kids.items())

    def leaf_value(self, obj):
        raise AssertionError("leaf_value asked of an adapter with children")


@pytest.fixture
def adapters(ckptcore_fresh_registry):
    ck.register_adapter(Box, BoxAdapter())
    ck.register_adapter(Opt, OptAdapter())
    ck.register_adapter(Parent, ParentAdapter())


def _without_shortcuts(m):
    m.setattr(saver, "_LEAF_VALUE", {})
    m.setattr(saver, "_offers_leaf_value", lambda cls: False)
    m.setattr(saver, "_add_slots", None)
    m.setattr(saver, "_plain_leaves", None)
    m.setattr(saver, "_add_children", None)


# slot names, some of which need escaping in keys
SLOT_NAMES = st.sampled_from(["m", "v", "exp_avg", "a/b", ".x", "old_dirs/0", "ü"])


@st.composite
def models(draw):
    pool = [VALUES[draw(st.sampled_from(sorted(VALUES)))](k) for k in range(draw(st.integers(1, 6)))]
    offers = sorted(set(OFFERS) - {"raises"})   # (a failing leaf_value is an error of its own: tested below)
    boxes = [Box(pool[draw(st.integers(0, len(pool) - 1))], draw(st.sampled_from(offers)))
             for _ in range(draw(st.integers(0, 5)))]
    arrays = [pool[draw(st.integers(0, len(pool) - 1))] for _ in range(draw(st.integers(0, 3)))]
    variables = boxes + arrays
    outside = np.zeros(2)   # a variable no checkpoint edge reaches: its slots are dropped
    slot_values = list(VALUES) + ["list", "object array"]
    slots = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(slot_values))
        value = ([1.0, 2.0] if kind == "list" else np.array([object()], dtype=object) if kind == "object array"
                 else VALUES[kind](len(slots)))
        var = outside if not variables or draw(st.integers(0, 5)) == 0 else draw(st.sampled_from(variables))
        slots.append((var, draw(SLOT_NAMES), value))
    root = ck.Module()
    root.boxes = boxes
    root.arrays = arrays
    root.parent = Parent({"b": boxes[0]} if boxes else {})
    root.opt = Opt(slots)
    if draw(st.booleans()):
        root.opt2 = Opt(list(reversed(slots)))   # a second optimizer over the same variables
    return root, pool + [s[2] for s in slots]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=models())
def test_shortcuts_plan_every_save_alike(adapters, model, monkeypatch):
    root, pool = model
    fast = plan_summary(root, pool)
    with monkeypatch.context() as m:
        _without_shortcuts(m)
        usual = plan_summary(root, pool)
    assert fast == usual


def test_a_failing_leaf_value_is_named(adapters):
    root = ck.Module()
    root.box = Box(np.zeros(2), "raises")
    with pytest.raises(ck.CheckpointError, match=r"box.*leaf_value\(\).*exploded"):
        saver.plan_save(root)


def test_leaf_value_is_asked_of_leaf_adapters_only(adapters):
    # ParentAdapter defines leaf_value but has children: the save walks them (and never calls it)
    root = ck.Module()
    root.p = Parent({"w": np.ones(2)})
    plan = saver.plan_save(root)
    assert plan._columns[0] == ["p/w/.ATTRIBUTES/VARIABLE_VALUE"]


def test_the_shortcuts_are_taken(adapters, monkeypatch):
    # a leaf whose leaf_value gives a plain array is planned without attributes()/get_value()/get_state()/
    # slots(), and a plain slot array without _as_array (compiled, or the Python loop's own check)
    calls = []

    def record(name, result):
        def method(self, *args):
            calls.append(name)
            return result
        return method
    for name, result in (("attributes", ["VARIABLE_VALUE"]), ("get_state", None), ("slots", ())):
        monkeypatch.setattr(BoxAdapter, name, record(name, result))
    monkeypatch.setattr(BoxAdapter, "get_value", lambda self, obj, attr: calls.append("get_value") or obj.value)
    box, w = Box(np.ones(3, np.float32)), np.zeros(2, np.float32)
    root = ck.Module()
    root.box, root.w, root.opt = box, w, Opt([(w, "m", np.ones(2, np.float32))])
    monkeypatch.setattr(saver, "_as_array", lambda *a, **k: pytest.fail("a plain slot went through _as_array"))
    plan = saver.plan_save(root)
    keys, _dtypes, arrays = plan._columns
    assert calls == []
    assert arrays[keys.index("box/.ATTRIBUTES/VARIABLE_VALUE")] is box.value
    assert "w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE" in keys
