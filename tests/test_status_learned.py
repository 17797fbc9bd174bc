"""Status assertions answer from what the restore saw, and agree with a full walk of the live graph.

After a restore, ``assert_consumed()``/``assert_existing_objects_matched()`` only walk the live
graph again when matching saw something the checkpoint lacks, when an object's adapter does not
announce new dependencies, or when a dependency was announced since. Every case here is checked
against the walk itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.restore import live_check


def _walked(status) -> list[str]:
    """What the full walk says (the learned shortcut turned off for this call)."""
    s = status.session
    s.live_graph_consumed = lambda: False
    try:
        return s.unmatched_live_paths()
    finally:
        del s.live_graph_consumed


@pytest.fixture
def no_walk(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the live graph was walked again")
    monkeypatch.setattr(live_check, "walk", refuse)
    monkeypatch.setattr(live_check, "_all_matched", refuse)


def _model(n=3, sizes=(2, 3)):
    m = ck.Module()
    m.layers = [ck.Module() for _ in range(n)]
    for i, layer in enumerate(m.layers):
        layer.ws = [np.full(s, float(i)) for s in sizes]
        layer.v = ck.Variable(np.float32(i))
    return m


def test_clean_restore_asserts_without_walking(prefix, no_walk):
    path = ck.Checkpoint(model=_model()).save(prefix)
    status = ck.Checkpoint(model=_model()).restore(path)
    status.assert_consumed().assert_existing_objects_matched().assert_nontrivial_match()


def test_object_added_after_restore_is_seen(prefix):
    path = ck.Checkpoint(model=_model()).save(prefix)
    model = _model()
    status = ck.Checkpoint(model=model).restore(path)
    status.assert_consumed()
    model.layers[1].extra = np.zeros(2)
    with pytest.raises(AssertionError, match="model/layers/1/extra"):
        status.assert_consumed()
    model.layers.append(ck.Module())
    model.layers[-1].w = np.zeros(1)
    with pytest.raises(AssertionError, match="model/layers/3/w"):
        status.assert_existing_objects_matched()
    status.expect_partial()


def test_plain_tuple_in_the_graph_is_walked(prefix):
    # tuples are not tracked containers: the status cannot know they did not change, so it walks
    src = ck.Module(); src.t = (np.ones(2), np.ones(3))
    path = ck.Checkpoint(model=src).save(prefix)
    dst = ck.Module(); dst.t = (np.zeros(2), np.zeros(3))
    status = ck.Checkpoint(model=dst).restore(path)
    assert not status.session.live_graph_consumed()
    status.assert_consumed()


def test_adapter_without_announcements_is_walked(prefix, ckptcore_fresh_registry):
    class Bag:
        def __init__(self, items):
            self.items = list(items)

    class BagAdapter(ck.Adapter):
        name = "test.bag"

        def children(self, obj):
            return [(str(i), x) for i, x in enumerate(obj.items)]

    ck.register_adapter(Bag, BagAdapter())
    path = ck.Checkpoint(bag=Bag([np.ones(2)])).save(prefix)
    bag = Bag([np.zeros(2)])
    status = ck.Checkpoint(bag=bag).restore(path)
    status.assert_consumed()
    bag.items.append(np.zeros(3))  # nobody is told: only a walk can see it
    with pytest.raises(AssertionError, match="bag/1"):
        status.assert_consumed()
    status.expect_partial()


_leaf = st.sampled_from(["array", "variable", "empty_module", "empty_list"])


def _tree(depth):
    if depth == 0:
        return _leaf
    lists = st.lists(_tree(depth - 1), max_size=3).map(lambda xs: ("list", xs))
    modules = st.dictionaries(st.sampled_from("abcd"), _tree(depth - 1), max_size=3).map(lambda d: ("module", d))
    return st.one_of(_leaf, lists, modules)


def _build(spec, seed):
    if spec == "array":
        return np.full(2, float(seed))
    if spec == "variable":
        return ck.Variable(np.float64(seed))
    if spec == "empty_module":
        return ck.Module()
    if spec == "empty_list":
        return ck.TrackedList()
    kind, items = spec
    if kind == "list":
        return ck.TrackedList([_build(x, seed) for x in items])
    m = ck.Module()
    for k, x in items.items():
        setattr(m, k, _build(x, seed))
    return m


@settings(max_examples=60, deadline=None)
@given(saved=_tree(3), live=_tree(3), attr=st.booleans())
def test_learned_answer_agrees_with_the_walk(tmp_path_factory, saved, live, attr):
    path = ck.Checkpoint(model=_build(("module", {"x": saved}), 1)).write(str(tmp_path_factory.mktemp("s") / "c"))
    model = _build(("module", {"x": live}), 2)
    if attr:
        model.y = np.zeros(1)  # a live object the checkpoint lacks
    try:
        status = ck.Checkpoint(model=model).read(path)
    except (ck.CheckpointError, ValueError):
        return  # shapes or kinds that do not fit: nothing to assert about
    status.expect_partial()
    assert status.session.unmatched_live_paths() == _walked(status)
    try:
        status.assert_existing_objects_matched()
        ok = True
    except AssertionError:
        ok = False
    assert ok == (_walked(status) == [])


def test_the_status_walk_runs_with_the_collector_paused(monkeypatch):
    # The walk makes an object per live node; on a large model (a torch model and its optimizer:
    # ~500,000 tracked objects) the collections they trigger cost several times the walk itself.
    import gc

    seen = []
    real_pass = live_check._all_matched

    def watched(*a, **k):
        seen.append(gc.isenabled())
        return real_pass(*a, **k)

    monkeypatch.setattr(live_check, "_all_matched", watched)
    path = ck.Checkpoint(m=_model()).write("memory://status-learned/gc/c")
    status = ck.Checkpoint(m=_model()).read(path)
    assert gc.isenabled()
    assert _walked(status) == []
    assert seen == [False]
    assert gc.isenabled()  # and on again after
