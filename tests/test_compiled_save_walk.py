"""The compiled steps of the save walk (``ckptcore/save/_save_fast.pyx``) change nothing but speed.

``make venv`` builds them; the Python walk stays, for builds without a C compiler and with
``CKPTCORE_PURE_PYTHON=1`` (tests/test_compiled_planner.py checks that it turns them off). Each
save below is planned once with each walk on the same live graph, and everything that reaches
the checkpoint must agree: the graph's columns, the keys, dtypes and arrays (the very objects),
the state, or else the error (type and message).
"""

from __future__ import annotations

import numpy as np
import pytest
from ckpt_samples import plan_summary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import _perf
from ckptcore.save import plan as saver
from ckptcore.save import write


def test_make_venv_builds_the_compiled_walk():
    # A build that silently lost the extension would leave the suite testing only the Python walk.
    if _perf.PURE_PYTHON:  # (CKPTCORE_PURE_PYTHON=1)
        assert saver._plain_leaves is None and saver._add_children is None and saver._add_slots is None
        assert write._array_columns is None
        return
    from ckptcore.save import _save_fast

    assert _save_fast.__file__.endswith((".so", ".pyd")), _save_fast.__file__
    assert saver._plain_leaves is _save_fast.plain_leaves
    assert saver._add_children is _save_fast.add_children
    assert saver._add_slots is _save_fast.add_slots
    assert write._array_columns is _save_fast.array_columns


_SHAPES = st.lists(st.integers(0, 4), max_size=4).map(tuple)
_DTYPES = st.sampled_from([np.float32, np.int8, np.float64, np.uint16, np.bool_, np.complex64])


@pytest.mark.skipif(write._array_columns is None, reason="the compiled walk is turned off in this run")
@given(specs=st.lists(st.tuples(_SHAPES, _DTYPES), max_size=12))
def test_compiled_array_columns_are_the_python_columns(specs):
    # the column writer's sizes, ranks and dimensions: from the compiled helper, or np.fromiter
    # over each array's nbytes, ndim and shape (what the writer does without it)
    arrays = [np.zeros(shape, dtype) for shape, dtype in specs]
    nbytes, ndim, dims = write._array_columns(arrays)
    assert nbytes.tolist() == [a.nbytes for a in arrays]
    assert ndim.tolist() == [a.ndim for a in arrays]
    assert dims.tolist() == [d for a in arrays for d in a.shape]
    assert write._array_columns(arrays + [[1, 2]]) is None   # not an array: the writer's Python path


@pytest.mark.parametrize("compiled", [True, False])
def test_a_column_written_index_holds_every_shape(tmp_path, monkeypatch, compiled):
    # the tensor table of a column write keeps (ndim, dims) columns, no tuple per tensor; the index and
    # the plan's own table give back every shape, ranks 0 to 3 mixed
    if not compiled:
        monkeypatch.setattr(write, "_array_columns", None)
    m = ck.Module()
    m.xs = [np.full((2,) * (i % 4), float(i), np.float32) for i in range(40)]
    plan = saver.plan_save(m)
    from ckptcore.storage import open_storage

    st_, p = open_storage(str(tmp_path / "c"))
    write.write_plan(st_, p, plan)
    shapes = [tuple(x.shape) for x in m.xs]
    assert plan.index.table.shape == shapes
    r = ck.load_checkpoint(p)
    saved = r.get_variable_to_shape_map()
    assert [saved[f"xs/{i}/.ATTRIBUTES/VARIABLE_VALUE"] for i in range(40)] == list(map(list, shapes))
    assert all(np.array_equal(r.get_tensor(f"xs/{i}/.ATTRIBUTES/VARIABLE_VALUE"), x) for i, x in enumerate(m.xs))


class Odd(np.ndarray):
    """An ndarray subclass: the plain-array step must leave it to the adapters."""


# Leaves the walk meets; each but "plain" is one the compiled step must hand back (or refuse alike).
LEAVES = {
    "plain": lambda k: np.full((k % 3) + 1, k, np.float32),
    "0-d": lambda k: np.array(k, np.int64),
    "empty": lambda k: np.zeros((0, 2), np.int8),
    "bool": lambda k: np.array([True, k % 2 == 0]),
    "strided view": lambda k: np.arange(8, dtype=np.float64)[::2],
    "fortran order": lambda k: np.asfortranarray(np.ones((2, 3), np.float32)),
    "swapped byte order": lambda k: np.ones(3, np.dtype(np.int32).newbyteorder()),
    "subclass": lambda k: np.ones(2, np.float32).view(Odd),
    "object array": lambda k: np.array([object()], dtype=object),
    "variable": lambda k: ck.Variable(np.float32(k)),
    "python int": lambda k: k,
}
# Edge names, including ones that need escaping in keys ("/" and "." are escaped; see naming.py).
NAMES = st.sampled_from(["w", "b", "a/b", ".x", "..", "kernel", "0", "VARIABLE_VALUE", "ü"])


@st.composite
def graphs(draw):
    """A random module tree of lists, dicts and modules, with arrays shared between places."""
    pool = [LEAVES[draw(st.sampled_from(sorted(LEAVES)))](k) for k in range(draw(st.integers(1, 8)))]

    def leaf():
        return pool[draw(st.integers(0, len(pool) - 1))]  # the same object may turn up twice

    def node(depth: int):
        kind = draw(st.sampled_from(["leaf", "leaf", "list", "dict", "module"] if depth < 3 else ["leaf"]))
        if kind == "leaf":
            return leaf()
        n = draw(st.integers(0, 4))
        if kind == "list":
            return [node(depth + 1) for _ in range(n)]
        if kind == "dict":
            return {draw(NAMES): node(depth + 1) for _ in range(n)}
        m = ck.Module()
        for _ in range(n):
            setattr(m, draw(st.sampled_from(["w", "b", "xs", "layer", "kernel"])), node(depth + 1))
        return m

    root = ck.Module()
    for _ in range(draw(st.integers(1, 4))):
        setattr(root, draw(st.sampled_from(["model", "xs", "head", "w"])), node(0))
    if draw(st.booleans()):  # a cycle: the walk visits each object once
        root.model = getattr(root, "model", ck.Module()) if isinstance(getattr(root, "model", None), ck.Module) \
            else ck.Module()
        root.model.parent = root
    return root, pool


def _plan(root, pool):
    top = ck.Module()  # (the walk's root is walked in Python either way: its children's paths differ)
    top.model = root
    return plan_summary(top, pool)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=graphs())
def test_both_walks_plan_every_save_alike(model, monkeypatch):
    root, pool = model
    compiled = _plan(root, pool)
    with monkeypatch.context() as m:
        m.setattr(saver, "_plain_leaves", None)
        m.setattr(saver, "_add_children", None)
        python = _plan(root, pool)
    assert compiled == python


@pytest.mark.parametrize("kind", sorted(set(LEAVES) - {"plain"}))
def test_a_model_of_plain_arrays_with_one_other_leaf_saves_and_restores(kind, monkeypatch):
    # The compiled step stops at the odd leaf in a run of plain ones, the Python loop takes it and the
    # step goes on after it: what is restored is what was saved, with either walk.
    for walk in ("compiled", "python"):
        if walk == "python":
            monkeypatch.setattr(saver, "_plain_leaves", None)
            monkeypatch.setattr(saver, "_add_children", None)
        src = ck.Module()
        src.xs = [LEAVES["plain"](k) for k in range(5)] + [LEAVES[kind](5)] + [LEAVES["plain"](k) for k in range(5)]
        try:
            path = ck.Checkpoint(model=src).write(f"memory://save-walk/{kind}/{walk}")
        except ck.CheckpointError as e:
            assert kind == "object array" and "object" in str(e)  # refused alike (the test above compares)
            continue
        r = ck.load_checkpoint(path)
        for k in (0, 4, 6, 10):
            assert np.array_equal(r.get_tensor(f"model/xs/{k}/.ATTRIBUTES/VARIABLE_VALUE"), src.xs[k])


class Box:
    """A container whose adapter hands out whatever it holds, claimed or not."""

    def __init__(self, *items):
        self.items = items


class BoxAdapter(ck.Adapter):
    name = "test.box"

    def children(self, obj):
        return [(f"i{k}", v) for k, v in enumerate(obj.items)]


def test_an_unclaimed_child_is_named_by_either_walk(monkeypatch):
    class Gadget:
        pass

    plugin = ck.register_adapter(Box, BoxAdapter())
    try:
        src = ck.Module()
        src.blocks = [Box(np.ones(2), Box(np.zeros(1), Gadget()))]
        msgs = []
        for walk in ("compiled", "python"):
            if walk == "python":
                monkeypatch.setattr(saver, "_add_children", None)
            with pytest.raises(ck.CheckpointError) as e:
                saver.plan_save(ck.Checkpoint(model=src))
            msgs.append(str(e.value))
    finally:
        ck.registry.unregister_plugin(plugin)
    assert msgs[0] == msgs[1] and "model/blocks/0/i1/i1" in msgs[0] and "Gadget" in msgs[0]


@pytest.mark.skipif(saver._add_children is None, reason="the compiled walk is turned off in this run")
def test_add_children_hands_back_at_a_pair_it_does_not_know():
    a, b = object(), object()
    objs, adapters, parents, names, escs, child_name, child_id = [None], [None], [-1], ["m"], ["m"], [], []
    index_of = {id(objs[0]): 0}
    # a list pair (a custom adapter's children() may give lists): the Python loop takes it from there
    done = saver._add_children([("w", a), ["v", b], ("u", b)], 0, "m", index_of, {object: "ad"}, {"w": "w"},
                               None, lambda n: n, objs, adapters, parents, names, escs, child_name, child_id)
    assert done == 1 and child_name == ["w"] and escs == ["m", "m/w"]
