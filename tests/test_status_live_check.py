"""The status's look at the live graph: a lean pass first, the walk with paths only when it must.

Where the restore cannot answer ``assert_consumed()`` from what it saw (an adapter that does not
announce new dependencies, as torch's do not), the live graph is looked at again. A lean pass
(``live_check._all_matched``: no per-object record, no paths) answers "all matched"; only when it
finds something does the walk with paths run, to name it. Both must agree on every graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.restore import _compiled, live_check


class Bag:
    """A container whose adapter announces nothing: the status must look at it again."""

    def __init__(self, items=()):
        self.items = list(items)


class BagAdapter(ck.Adapter):
    name = "test.live_check.bag"

    def children(self, obj):
        return [(str(i), x) for i, x in enumerate(obj.items)]


class Tagged:
    """A leaf with attributes of its own, which may grow after the restore."""

    def __init__(self, attrs):
        self.values = {a: np.full(2, float(i)) for i, a in enumerate(attrs)}


class TaggedAdapter(ck.Adapter):
    name = "test.live_check.tagged"

    def attributes(self, obj):
        return list(obj.values)

    def get_value(self, obj, attr):
        return obj.values[attr]

    def set_value(self, obj, attr, value):
        obj.values[attr][...] = value


@pytest.fixture(params=["compiled", "python"])
def bags(request, ckptcore_fresh_registry, monkeypatch):
    """The adapters, and the lean pass compiled (where built) or in Python (CKPTCORE_PURE_PYTHON's)."""
    ck.register_adapter(Bag, BagAdapter())
    ck.register_adapter(Tagged, TaggedAdapter())
    if request.param == "python":
        monkeypatch.setattr(_compiled, "live_all_matched", None)
    elif _compiled.live_all_matched is None:
        pytest.skip("CKPTCORE_PURE_PYTHON=1: nothing compiled to test")


_leaf = st.sampled_from(["array", "variable", "tagged", "empty_bag", "empty_module"])


def _tree(depth):
    if depth == 0:
        return _leaf
    bags_ = st.lists(_tree(depth - 1), max_size=3).map(lambda xs: ("bag", xs))
    modules = st.dictionaries(st.sampled_from("abc"), _tree(depth - 1), max_size=3).map(lambda d: ("module", d))
    return st.one_of(_leaf, bags_, modules)


def _build(spec):
    if spec == "array":
        return np.zeros(2)
    if spec == "variable":
        return ck.Variable(np.float64(0))
    if spec == "tagged":
        return Tagged(["x", "y"])
    if spec == "empty_bag":
        return Bag()
    if spec == "empty_module":
        return ck.Module()
    kind, items = spec
    if kind == "bag":
        return Bag([_build(x) for x in items])
    m = ck.Module()
    for k, x in items.items():
        setattr(m, k, _build(x))
    return m


def _objects(root):
    """Every object of the built tree, parents first."""
    out, todo = [], [root]
    while todo:
        x = todo.pop(0)
        out.append(x)
        if isinstance(x, Bag):
            todo += x.items
        elif isinstance(x, ck.Module):
            todo += [v for k, v in vars(x).items() if not k.startswith("_")]
    return out


_mutation = st.sampled_from(["none", "bag_gets_array", "bag_gets_bag", "tagged_gets_attr", "bag_shares_object",
                             "bag_replaces_item", "bag_drops_item"])


def _mutate(root, kind: str, pick: int) -> None:
    objs = _objects(root)
    bags_ = [o for o in objs if isinstance(o, Bag)]
    tagged = [o for o in objs if isinstance(o, Tagged)]
    if kind == "tagged_gets_attr" and tagged:
        tagged[pick % len(tagged)].values["z"] = np.zeros(2)
    elif bags_ and kind != "none":
        bag = bags_[pick % len(bags_)]
        if kind == "bag_gets_array":
            bag.items.append(np.zeros(3))
        elif kind == "bag_gets_bag":
            bag.items.append(Bag([ck.Variable(np.float64(1))]))
        elif kind == "bag_shares_object":
            bag.items.append(objs[pick % len(objs)])   # an object matched already, reached again
        elif kind == "bag_replaces_item" and bag.items:
            bag.items[0] = _build("tagged")
        elif kind == "bag_drops_item" and bag.items:
            bag.items.pop()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_tree(3), mutation=_mutation, pick=st.integers(0, 50))
def test_lean_pass_agrees_with_the_walk_with_paths(bags, tree, mutation, pick):
    src = _build(("module", {"t": tree}))
    path = ck.Checkpoint(model=src).write("memory://live-check/agree/c")
    live = _build(("module", {"t": tree}))
    ckpt = ck.Checkpoint(model=live)
    status = ckpt.read(path)
    _mutate(live, mutation, pick)
    session = status.session
    named = live_check._named_unmatched(session, ckpt, [], set())
    assert live_check._all_matched(session, ckpt, [], set()) == (named == [])
    assert live_check.unmatched_live_paths(session, ckpt, [], set()) == named
    try:
        status.assert_existing_objects_matched()
        ok = True
    except AssertionError:
        ok = False
    assert ok == (named == [])
    status.expect_partial()


def test_a_clean_restore_does_not_walk_with_paths(bags, monkeypatch):
    path = ck.Checkpoint(bag=Bag([np.ones(2), Tagged(["x"]), Bag([np.ones(1)])])).write("memory://live-check/clean/c")
    ckpt = ck.Checkpoint(bag=Bag([np.zeros(2), Tagged(["x"]), Bag([np.zeros(1)])]))
    status = ckpt.read(path)
    assert not status.session.live_graph_consumed()   # the Bag announces nothing: the live graph is looked at

    def refuse(*a, **k):
        raise AssertionError("walked with paths although everything matched")
    monkeypatch.setattr(live_check, "walk", refuse)
    status.assert_consumed()


def test_what_is_unmatched_is_named(bags):
    path = ck.Checkpoint(bag=Bag([np.ones(2), Tagged(["x"])])).write("memory://live-check/named/c")
    bag = Bag([np.zeros(2), Tagged(["x"])])
    status = ck.Checkpoint(bag=bag).read(path)
    status.assert_consumed()
    bag.items[1].values["w"] = np.zeros(1)   # an attribute the checkpoint lacks, on a matched object
    with pytest.raises(AssertionError, match=r"bag/1 \(w\)"):
        status.assert_existing_objects_matched()
    bag.items.append(Bag([np.zeros(3)]))     # and an object it lacks
    with pytest.raises(AssertionError) as e:
        status.assert_existing_objects_matched()
    assert "bag/1 (w)" in str(e.value) and "bag/2/0" in str(e.value)
    status.expect_partial()


def test_ignored_root_names_are_not_reported(bags):
    # restoring a flat (name-based) checkpoint ignores the root's save_counter; its children are still looked at
    path = ck.Checkpoint(bag=Bag([np.ones(2)])).write("memory://live-check/ignore/c")
    bag = Bag([np.zeros(2)])
    ckpt = ck.Checkpoint(bag=bag)
    status = ckpt.read(path)
    session = status.session
    ckpt.extra = np.zeros(1)
    assert live_check.unmatched_live_paths(session, ckpt, [], {"extra"}) == []
    assert live_check.unmatched_live_paths(session, ckpt, [], set()) == ["extra"]
    status.expect_partial()


def test_an_invalid_live_graph_is_an_error_naming_the_object(bags):
    path = ck.Checkpoint(bag=Bag([np.ones(2)])).write("memory://live-check/invalid/c")
    bag = Bag([np.zeros(2)])
    status = ck.Checkpoint(bag=bag).read(path)
    status.assert_consumed()
    bag.items.append(object())   # nothing claims it
    with pytest.raises(ck.CheckpointError, match="bag/1"):
        status.assert_consumed()
    status.expect_partial()
