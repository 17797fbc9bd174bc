"""Restore-on-create: values for objects that do not exist at restore() time."""

from __future__ import annotations

import weakref

import numpy as np
import pytest

import ckptcore as ck
from ckptcore.restore import session as core_restore


def _saved(prefix, **deps):
    return ck.Checkpoint(**deps).write(prefix)


def _module(**attrs):
    m = ck.Module()
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


# -- Module attributes -----------------------------------------------------------------

def test_attribute_set_after_restore_receives_value(prefix):
    path = _saved(prefix, model=_module(w=ck.Variable([1.0, 2.0]), b=np.full(3, 4.0)))
    model = _module(w=ck.Variable([0.0, 0.0]))
    status = ck.Checkpoint(model=model).read(path)
    assert model.w.numpy().tolist() == [1.0, 2.0]  # existed: restored now
    b = np.zeros(3)
    model.b = b
    assert b.tolist() == [4.0, 4.0, 4.0]
    status.assert_consumed()


def test_late_module_subtree_restored_recursively(prefix):
    src = _module(enc=_module(layer=_module(k=ck.Variable(np.eye(2)), extra=[np.ones(1), {"z": np.full(2, 3.0)}])))
    path = _saved(prefix, model=src)
    model = ck.Module()
    status = ck.Checkpoint(model=model).read(path)
    # build the whole subtree first, then attach it: every level gets its value
    enc = _module(layer=_module(k=ck.Variable(np.zeros((2, 2))), extra=[np.zeros(1), {"z": np.zeros(2)}]))
    model.enc = enc
    np.testing.assert_array_equal(enc.layer.k.numpy(), np.eye(2))
    assert enc.layer.extra[0].tolist() == [1.0]
    assert enc.layer.extra[1]["z"].tolist() == [3.0, 3.0]
    status.assert_consumed()


def test_grandchildren_created_after_their_late_parent(prefix):
    src = _module(enc=_module(layer=_module(k=ck.Variable(np.eye(2)))))
    path = _saved(prefix, model=src)
    model = ck.Module()
    status = ck.Checkpoint(model=model).read(path)
    model.enc = ck.Module()          # empty parent arrives
    model.enc.layer = ck.Module()    # then its child
    model.enc.layer.k = ck.Variable(np.zeros((2, 2)))  # then the variable
    np.testing.assert_array_equal(model.enc.layer.k.numpy(), np.eye(2))
    status.assert_consumed()
    assert model not in core_restore._PENDING and model.enc not in core_restore._PENDING


def test_reassigned_attribute_after_consumed_is_not_restored_again(prefix):
    path = _saved(prefix, model=_module(w=np.ones(2)))
    model = ck.Module()
    ck.Checkpoint(model=model).read(path)
    model.w = np.zeros(2)
    assert model.w.tolist() == [1.0, 1.0]
    model.w = np.zeros(2)  # the queued value was consumed by the first assignment
    assert model.w.tolist() == [0.0, 0.0]


def test_untrackable_value_does_not_consume_queue(prefix):
    path = _saved(prefix, model=_module(w=np.ones(2)))
    model = ck.Module()
    ck.Checkpoint(model=model).read(path)
    model.w = None
    model.w = "x"
    w = np.zeros(2)
    model.w = w
    assert w.tolist() == [1.0, 1.0]


# -- containers ------------------------------------------------------------------------

def _list_ckpt(prefix, n=3):
    return _saved(prefix, xs=[np.full(2, float(i + 1)) for i in range(n)])


def test_list_append(prefix):
    path = _list_ckpt(prefix)
    ckpt = ck.Checkpoint(xs=[])
    status = ckpt.read(path)
    for _ in range(3):
        ckpt.xs.append(np.zeros(2))
    assert [a[0] for a in ckpt.xs] == [1.0, 2.0, 3.0]
    status.assert_consumed()


def test_list_extend_and_iadd(prefix):
    path = _list_ckpt(prefix)
    ckpt = ck.Checkpoint(xs=[])
    status = ckpt.read(path)
    ckpt.xs.extend([np.zeros(2), np.zeros(2)])
    ckpt.xs += [np.zeros(2)]
    assert [a[0] for a in ckpt.xs] == [1.0, 2.0, 3.0]
    status.assert_consumed()


def test_list_insert(prefix):
    path = _list_ckpt(prefix, n=2)
    ckpt = ck.Checkpoint(xs=[])
    status = ckpt.read(path)
    ckpt.xs.insert(0, np.zeros(2))
    ckpt.xs.insert(1, np.zeros(2))
    assert [a[0] for a in ckpt.xs] == [1.0, 2.0]
    status.assert_consumed()


def test_list_setitem(prefix):
    path = _list_ckpt(prefix, n=2)
    ckpt = ck.Checkpoint(xs=[None, None])
    status = ckpt.read(path)
    ckpt.xs[1] = np.zeros(2)
    assert ckpt.xs[1].tolist() == [2.0, 2.0]
    ckpt.xs[0:1] = [np.zeros(2)]
    assert ckpt.xs[0].tolist() == [1.0, 1.0]
    status.assert_consumed()


def test_list_of_late_modules(prefix):
    path = _saved(prefix, layers=[_module(k=np.full(2, 1.0)), _module(k=np.full(2, 2.0))])
    ckpt = ck.Checkpoint(layers=[])
    status = ckpt.read(path)
    for _ in range(2):
        layer = ck.Module()
        ckpt.layers.append(layer)
        layer.k = np.zeros(2)  # the variable comes after the layer joined the list
    assert [m.k[0] for m in ckpt.layers] == [1.0, 2.0]
    status.assert_consumed()


def test_list_attached_late_to_module(prefix):
    path = _saved(prefix, model=_module(xs=[np.ones(1), np.full(1, 2.0)]))
    model = ck.Module()
    status = ck.Checkpoint(model=model).read(path)
    model.xs = [np.zeros(1), np.zeros(1)]
    assert [a[0] for a in model.xs] == [1.0, 2.0]
    status.assert_consumed()


def _dict_ckpt(prefix):
    return _saved(prefix, heads={"a": np.full(1, 1.0), "b": np.full(1, 2.0), "c": np.full(1, 3.0)})


def test_dict_setitem_update_setdefault(prefix):
    path = _dict_ckpt(prefix)
    ckpt = ck.Checkpoint(heads={})
    status = ckpt.read(path)
    ckpt.heads["a"] = np.zeros(1)
    ckpt.heads.update({"b": np.zeros(1)})
    got = ckpt.heads.setdefault("c", np.zeros(1))
    assert got[0] == 3.0
    assert {k: v[0] for k, v in ckpt.heads.items()} == {"a": 1.0, "b": 2.0, "c": 3.0}
    status.assert_consumed()


def test_dict_update_with_kwargs_and_ior(prefix):
    path = _dict_ckpt(prefix)
    ckpt = ck.Checkpoint(heads={})
    status = ckpt.read(path)
    ckpt.heads.update(a=np.zeros(1))
    ckpt.heads |= {"b": np.zeros(1), "c": np.zeros(1)}
    assert {k: v[0] for k, v in ckpt.heads.items()} == {"a": 1.0, "b": 2.0, "c": 3.0}
    status.assert_consumed()


def test_notify_dependency_added_for_custom_adapter(prefix):
    class Box:
        def __init__(self):
            self.items = {}

        def add(self, name, value):
            self.items[name] = value
            ck.notify_dependency_added(self, name, value)

    class BoxAdapter(ck.Adapter):
        name = "tests.box"

        def children(self, obj):
            return list(obj.items.items())

    plugin = ck.register_adapter(Box, BoxAdapter())
    try:
        box = Box()
        box.items["w"] = np.full(2, 5.0)
        path = _saved(prefix, box=box)
        box2 = Box()
        status = ck.Checkpoint(box=box2).read(path)
        w = np.zeros(2)
        box2.add("w", w)
        assert w.tolist() == [5.0, 5.0]
        status.assert_consumed()
    finally:
        ck.registry.unregister_plugin(plugin)


# -- shared objects and cycles ---------------------------------------------------------------

def test_shared_object_saved_once_restored_at_every_path(prefix):
    shared = ck.Variable([1.0, 2.0])
    src = _module(a=shared, sub=_module(b=shared))
    path = _saved(prefix, model=src)
    assert [k for k, _ in ck.list_variables(path)] == ["model/a/.ATTRIBUTES/VARIABLE_VALUE"]
    # the new program has two distinct objects at the two paths: both get the value
    a, b = ck.Variable([0.0, 0.0]), ck.Variable([0.0, 0.0])
    dst = _module(a=a, sub=ck.Module())
    status = ck.Checkpoint(model=dst).read(path)
    dst.sub.b = b  # late, at the second path
    assert a.numpy().tolist() == [1.0, 2.0] and b.numpy().tolist() == [1.0, 2.0]
    status.assert_consumed()


def test_shared_object_in_new_program_matched_once(prefix):
    shared = np.ones(2)
    path = _saved(prefix, model=_module(a=shared, b=shared))
    s2 = np.zeros(2)
    dst = _module(a=s2, b=s2)
    ck.Checkpoint(model=dst).read(path).assert_consumed()
    assert s2.tolist() == [1.0, 1.0]


def test_shared_in_live_but_distinct_in_checkpoint(prefix):
    path = _saved(prefix, model=_module(a=np.full(1, 1.0), b=np.full(1, 2.0)))
    s = np.zeros(1)
    dst = _module(a=s, b=s)
    ck.Checkpoint(model=dst).read(path).expect_partial()
    assert s[0] in (1.0, 2.0)  # one object cannot hold both; no crash


def test_cycles_save_and_restore(prefix):
    src = _module(w=np.full(2, 7.0))
    src.child = _module(v=np.full(1, 8.0))
    src.child.parent = src
    src.self_ref = src
    path = _saved(prefix, model=src)
    assert sorted(k for k, _ in ck.list_variables(path)) == ["model/child/v/.ATTRIBUTES/VARIABLE_VALUE",
                                                             "model/w/.ATTRIBUTES/VARIABLE_VALUE"]
    dst = _module(w=np.zeros(2))
    status = ck.Checkpoint(model=dst).read(path)
    child = _module(v=np.zeros(1))
    child.parent = dst
    dst.child = child  # late object whose subtree cycles back
    dst.self_ref = dst
    assert dst.w.tolist() == [7.0, 7.0] and child.v.tolist() == [8.0]
    status.assert_consumed()


def test_cycle_through_list(prefix):
    m = _module(w=np.ones(1))
    m.peers = [m]
    path = _saved(prefix, model=m)
    d = _module(w=np.zeros(1))
    d.peers = [d]
    ck.Checkpoint(model=d).read(path).assert_consumed()
    assert d.w[0] == 1.0


# -- partial restores ------------------------------------------------------------------------

def test_partial_restore_of_a_bigger_checkpoint(prefix):
    path = _saved(prefix, model=_module(enc=_module(k=np.ones(2)), dec=_module(k=np.full(2, 2.0))),
                  opt=_module(m=np.ones(3)))
    enc = _module(k=np.zeros(2))
    status = ck.Checkpoint(model=_module(enc=enc)).read(path)
    assert enc.k.tolist() == [1.0, 1.0]
    status.assert_existing_objects_matched().assert_nontrivial_match().expect_partial()
    with pytest.raises(AssertionError):
        status.assert_consumed()


def test_new_objects_not_in_checkpoint_keep_their_values(prefix):
    path = _saved(prefix, model=_module(a=np.ones(1)))
    extra = np.full(1, 9.0)
    dst = _module(a=np.zeros(1), extra=extra)
    status = ck.Checkpoint(model=dst).read(path)
    assert extra[0] == 9.0 and dst.a[0] == 1.0
    with pytest.raises(AssertionError, match="model/extra"):
        status.assert_existing_objects_matched()


def test_deferred_shape_mismatch_raises_on_creation_and_keeps_queue(prefix):
    path = _saved(prefix, model=_module(w=np.ones(3)))
    model = ck.Module()
    status = ck.Checkpoint(model=model).read(path)
    wrong = np.zeros(2)
    with pytest.raises(ck.ShapeMismatchError, match="model/w"):
        model.w = wrong
    assert wrong.tolist() == [0.0, 0.0]
    right = np.zeros(3)
    model.w = right  # the value still waits for a correct object
    assert right.tolist() == [1.0, 1.0, 1.0]
    status.assert_consumed()


def test_later_restore_replaces_queued_value(prefix, tmp_path):
    p1 = ck.Checkpoint(model=_module(w=np.full(1, 1.0))).write(str(tmp_path / "one"))
    p2 = ck.Checkpoint(model=_module(w=np.full(1, 2.0))).write(str(tmp_path / "two"))
    model = ck.Module()
    ckpt = ck.Checkpoint(model=model)
    ckpt.read(p1).expect_partial()
    ckpt.read(p2)
    model.w = np.zeros(1)
    assert model.w[0] == 2.0


def test_save_counter_restored_by_restore(prefix):
    ckpt = ck.Checkpoint(a=np.ones(1))
    ckpt.save(prefix)
    path = ckpt.save(prefix)
    fresh = ck.Checkpoint(a=np.zeros(1))
    fresh.restore(path).assert_consumed()
    assert int(fresh.save_counter) == 2


# -- weak queues: nothing attached, nothing kept alive -------------------------------------

def test_dead_deferred_parent_leaves_no_entry(prefix, collect):
    path = _saved(prefix, model=_module(sub=_module(w=np.ones(2))))
    collect()
    before = core_restore.pending_count()
    model = ck.Module()
    ckpt = ck.Checkpoint(model=model)
    status = ckpt.read(path)
    status.expect_partial()
    assert core_restore.pending_count() == before + 1
    ref = weakref.ref(model)
    del model, ckpt, status
    collect()
    assert ref() is None
    assert core_restore.pending_count() == before


def test_restore_keeps_no_user_object_alive(prefix, collect):
    path = _saved(prefix, model=_module(w=np.ones(2), sub=_module(v=np.ones(1))))
    model = _module(w=np.zeros(2))
    m_ref = weakref.ref(model)
    ckpt = ck.Checkpoint(model=model)
    ckpt.read(path).expect_partial()
    ckpt_ref = weakref.ref(ckpt)
    del model, ckpt
    collect()
    assert m_ref() is None and ckpt_ref() is None


def test_late_child_not_kept_alive_by_session(prefix, collect):
    path = _saved(prefix, model=_module(sub=_module(v=np.ones(1))))
    model = ck.Module()
    ckpt = ck.Checkpoint(model=model)
    status = ckpt.read(path)
    sub = _module(v=np.zeros(1))
    model.sub = sub
    assert sub.v[0] == 1.0
    status.assert_consumed()
    ref = weakref.ref(sub)
    del model.sub, sub
    collect()
    assert ref() is None


def test_nothing_is_attached_to_user_objects(prefix):
    path = _saved(prefix, model=_module(w=ck.Variable([1.0]), sub=_module(v=np.ones(1))))
    model = _module(w=ck.Variable([0.0]))
    before = dict(vars(model))
    status = ck.Checkpoint(model=model).read(path)  # leaves "sub" queued on model
    assert vars(model) == before
    assert not hasattr(model.w, "__dict__")  # Variable has __slots__: nothing could be attached
    sub = ck.Module()
    sub_before = dict(vars(sub))
    model.sub = sub
    assert vars(sub) == sub_before
    sub.v = np.zeros(1)
    assert set(vars(sub)) == set(sub_before) | {"v"}
    status.assert_consumed()
    # the queue lives in the core's own table, keyed weakly by the parent
    assert model not in core_restore._PENDING


def test_pending_entries_removed_when_consumed(prefix):
    path = _saved(prefix, model=_module(w=np.ones(1)))
    model = ck.Module()
    ckpt = ck.Checkpoint(model=model)
    ckpt.read(path)
    assert model in core_restore._PENDING
    model.w = np.zeros(1)
    assert model not in core_restore._PENDING


def test_tuple_missing_items_queue_nothing_and_keep_nothing_alive(prefix, collect):
    src = ck.Module()
    src.pair = (np.ones(1), np.full(1, 2.0))
    path = _saved(prefix, model=src)
    collect()
    before = core_restore.pending_count()
    first = np.zeros(1)
    dst = ck.Module()
    dst.pair = (first,)  # a tuple can never gain its second item
    status = ck.Checkpoint(model=dst).read(path)
    assert first[0] == 1.0
    assert core_restore.pending_count() == before
    with pytest.raises(AssertionError, match="model/pair/1"):
        status.assert_consumed()
    status.expect_partial()
    ref = weakref.ref(first)
    del dst, first, status
    collect()
    assert ref() is None


def test_type_change_between_save_and_restore(prefix):
    src = ck.Module()
    src.w = ck.Variable([1.0])
    src.sub = ck.Module()
    path = _saved(prefix, model=src)
    dst = ck.Module()
    dst.w = ck.Module()         # was a variable, now a module
    dst.sub = np.zeros(1)       # was a module, now an array
    status = ck.Checkpoint(model=dst).read(path)
    assert dst.sub[0] == 0.0
    with pytest.raises(AssertionError) as info:
        status.assert_consumed()
    assert "model/w/.ATTRIBUTES/VARIABLE_VALUE" in str(info.value) and "model/sub" in str(info.value)
    status.expect_partial()


def test_restore_twice_into_same_objects(prefix):
    w = np.full(2, 3.0)
    ckpt = ck.Checkpoint(w=w)
    path = ckpt.write(prefix)
    w[...] = 0
    ckpt.read(path).assert_consumed()
    w[...] = 0
    ckpt.read(path).assert_consumed()
    assert w.tolist() == [3.0, 3.0]


def test_checkpoint_root_form_restore_on_create(prefix):
    model = ck.Module()
    model.enc = ck.Module()
    model.enc.k = np.full(2, 4.0)
    path = ck.Checkpoint(root=model).write(prefix)
    fresh = ck.Module()
    status = ck.Checkpoint(root=fresh).read(path)
    fresh.enc = ck.Module()
    fresh.enc.k = np.zeros(2)
    assert fresh.enc.k.tolist() == [4.0, 4.0]
    status.assert_consumed()


def test_overlapping_live_buffers_restore_without_false_corruption(prefix):
    path = _saved(prefix, model=_module(a=np.full(4, 1.0), b=np.full(4, 2.0), big=np.full(300_000, 3.0),
                                        big2=np.full(300_000, 4.0)))
    base = np.zeros(6)
    big = np.zeros(300_000)
    dst = _module(a=base[:4], b=base[2:], big=big, big2=big)  # overlapping views; one array twice
    ck.Checkpoint(model=dst).read(path).assert_consumed()
    assert set(base.tolist()) <= {1.0, 2.0} and base[0] == 1.0 and base[5] == 2.0
    assert big[0] in (3.0, 4.0)


# -- property: any mix of present and late objects ends up fully restored --------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_NAMES = st.sampled_from(["a", "b", "c", "w.x", "k/1"])
_TREE = st.recursive(
    st.tuples(st.just("var"), st.lists(st.integers(0, 3), max_size=2).map(tuple)),
    lambda kids: st.one_of(
        st.tuples(st.just("module"), st.dictionaries(_NAMES, kids, min_size=1, max_size=3)),
        st.tuples(st.just("list"), st.lists(kids, min_size=1, max_size=3)),
        st.tuples(st.just("dict"), st.dictionaries(_NAMES, kids, min_size=1, max_size=3)),
    ),
    max_leaves=8)


def _build(spec, fill, leaves, path=()):
    kind, body = spec
    if kind == "var":
        value = np.full(body, fill(), np.float32)
        leaves.append((path, value))
        return ck.Variable(value) if len(leaves) % 2 else value
    if kind == "module":
        m = ck.Module()
        for k, sub in body.items():
            setattr(m, k, _build(sub, fill, leaves, path + (k,)))
        return m
    if kind == "list":
        return ck.TrackedList(_build(sub, fill, leaves, path + (str(i),)) for i, sub in enumerate(body))
    return ck.TrackedDict({k: _build(sub, fill, leaves, path + (k,)) for k, sub in body.items()})


def _edges(obj, out):
    """(parent, name, child) for every container/module edge, parents before children."""
    if isinstance(obj, ck.Module):
        items = obj.tracked_children()
    elif isinstance(obj, (ck.TrackedList, ck.TrackedDict)):
        items = obj.children()
    else:
        return out
    for name, child in items:
        out.append((obj, name, child))
        _edges(child, out)
    return out


def _detach(parent, name):
    if isinstance(parent, ck.Module):
        child = getattr(parent, name)
        delattr(parent, name)
        return lambda: setattr(parent, name, child)
    if isinstance(parent, ck.TrackedDict):
        child = dict.pop(parent, name)
        return lambda: parent.__setitem__(name, child)
    i = int(name)
    child = parent[i]
    list.__setitem__(parent, i, None)  # an untracked placeholder keeps the other indices stable
    return lambda: parent.__setitem__(i, child)


def _value_at(root, path):
    obj = root
    for name in path:
        if isinstance(obj, ck.Module):
            obj = getattr(obj, name)
        elif isinstance(obj, ck.TrackedList):
            obj = obj[int(name)]
        else:
            obj = obj[name]
    return obj.numpy() if isinstance(obj, ck.Variable) else obj


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_TREE, data=st.data())
def test_property_late_objects_in_any_order_are_restored(mem_dir, spec, data):
    counter = iter(range(1, 10_000))
    src_leaves: list = []
    src = ck.Module()
    src.root = _build(spec, lambda: float(next(counter)), src_leaves)
    path = ck.Checkpoint(model=src).write(f"{mem_dir}/p")

    dst_leaves: list = []
    dst = ck.Module()
    dst.root = _build(spec, lambda: 0.0, dst_leaves)
    edges = [(dst, "root", dst.root)] + _edges(dst.root, [])
    chosen = data.draw(st.lists(st.sampled_from(range(len(edges))), unique=True, max_size=len(edges)))
    reattach = []
    for i in sorted(chosen, reverse=True):  # children first, so each detach sees its parent intact
        parent, name, _ = edges[i]
        reattach.append(_detach(parent, name))
    order = data.draw(st.permutations(range(len(reattach))))
    status = ck.Checkpoint(model=dst).read(path)
    for i in order:
        reattach[i]()
    for p, expected in src_leaves:
        np.testing.assert_array_equal(_value_at(dst.root, p), expected, err_msg=str(p))
    status.assert_consumed()


# Graphs with shared objects and cycles: each module gets edges to arrays and to other modules,
# earlier (back edges: cycles, shared parents) or later ones.
_GRAPH = st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.just(n),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n),  # module edges
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 4)), min_size=1, max_size=2 * n),  # arrays
))


def _graph(spec, fill):
    n, module_edges, array_edges = spec
    mods = [ck.Module() for _ in range(n)]
    arrays = []
    for k, (m, target) in enumerate(module_edges):
        setattr(mods[m], f"m{k}", mods[target])
    for k, (m, shared_with) in enumerate(array_edges):
        a = arrays[shared_with] if shared_with < len(arrays) and k % 2 else np.full(2, fill(), np.float32)
        setattr(mods[m], f"a{k}", a)
        arrays.append(a)
    return mods[0], arrays


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_GRAPH)
def test_property_shared_objects_and_cycles_restore_like_their_twin(mem_dir, spec):
    counter = iter(range(1, 10_000))
    src, src_arrays = _graph(spec, lambda: float(next(counter)))
    path = ck.Checkpoint(model=src).write(f"{mem_dir}/g")
    dst, dst_arrays = _graph(spec, lambda: 0.0)
    status = ck.Checkpoint(model=dst).read(path)
    live = {id(n.obj) for n in ck.graph.walk(dst)}
    for s, d in zip(src_arrays, dst_arrays):
        if id(d) in live:  # arrays on modules that the root does not reach are not saved
            np.testing.assert_array_equal(d, s)
    status.assert_consumed()
