"""The compiled planner of plain arrays (``ckptcore/restore/_plan_fast.pyx``) changes nothing but speed.

``make venv`` builds it; the Python planner stays, for builds without a C compiler and with
``CKPTCORE_PURE_PYTHON=1``. Each restore below runs once with each planner on identical live
models, and everything a user can see must agree: the error (type and message) or the values,
and what the status reports as unused and as unmatched.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import _perf
from ckptcore.formats import ckpt as fmt
from ckptcore.restore import _compiled, session
from ckptcore.restore.values import _unalias


def test_make_venv_builds_the_compiled_planner():
    # A build that silently lost the extension would leave the suite testing only the Python planner.
    if _perf.PURE_PYTHON:  # (CKPTCORE_PURE_PYTHON=1)
        assert session._plan_plain_arrays is None and _compiled.data_spans is None
        return
    from ckptcore.restore import _plan_fast

    assert _plan_fast.__file__.endswith((".so", ".pyd")), _plan_fast.__file__
    assert session._plan_plain_arrays is _plan_fast.plan_plain_arrays
    assert _compiled.data_spans is _plan_fast.data_spans


def test_ckptcore_pure_python_turns_every_compiled_helper_off():
    # the restore's planner and matcher (here) and the save walk's steps (tests/test_compiled_save_walk.py)
    code = ("from ckptcore.save import plan as saver, write; from ckptcore.restore import _compiled, session; "
            "print(session._plan_plain_arrays is None and _compiled.data_spans is None "
            "and _compiled.match_aligned is None and saver._plain_leaves is None and saver._add_children is None "
            "and _compiled.slot_dests is None and _compiled.due_once is None and _compiled.slot_specs is None "
            "and _compiled.fresh_slot_arrays is None and saver._add_slots is None "
            "and _compiled.live_all_matched is None and write._array_columns is None)")
    env = {**os.environ, "CKPTCORE_PURE_PYTHON": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


class Odd(np.ndarray):
    """An ndarray subclass: the inlined numpy case must not take it (its adapter may differ)."""


# How a live array may differ from the saved one (each is a case the compiled planner must hand back).
TWEAKS = {
    "same": lambda a: np.zeros_like(a),
    "read-only": lambda a: _readonly(np.zeros_like(a)),
    "strided view": lambda a: np.zeros(a.shape + (2,), a.dtype)[..., 0],
    "fortran order": lambda a: np.asfortranarray(np.zeros_like(a)),
    "other shape": lambda a: np.zeros(a.shape + (1,), a.dtype),
    "other dtype": lambda a: np.zeros(a.shape, np.float64 if a.dtype != np.float64 else np.float32),
    "swapped byte order": lambda a: np.zeros(a.shape, a.dtype.newbyteorder()),
    "subclass": lambda a: np.zeros_like(a).view(Odd),
    "python list": lambda a: [0] * 3,
    "missing": None,
}


def _readonly(a):
    a.flags.writeable = False
    return a


def _model(values: list, tweaks: list[str] | None, nested: bool):
    root = ck.Module()
    items = []
    for v, t in zip(values, tweaks or ["same"] * len(values)):
        if t == "missing":
            continue
        items.append(TWEAKS[t](v) if tweaks else v)
    if nested:
        root.xs = [ck.Module() for _ in items]
        for m, v in zip(root.xs, items):
            m.w = v
    else:
        root.xs = items
    return root


def _outcome(path, values, tweaks, nested):
    dst = _model(values, tweaks, nested)
    try:
        status = ck.Checkpoint(model=dst).read(path)
    except ck.CheckpointError as e:
        return ("error", type(e).__name__, str(e))
    status.expect_partial()
    leaves = [m.w for m in dst.xs] if nested else list(dst.xs)
    got = [np.asarray(x).tolist() for x in leaves]
    return ("ok", got, sorted(status.session.unmatched_checkpoint_keys()), status.session.live_extra)


DTYPES = [np.float32, np.float64, np.int8, np.int64, np.bool_, np.complex64, np.uint16]
arrays = st.lists(
    st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 3), min_size=0, max_size=3)),
    min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=arrays, data=st.data(), nested=st.booleans())
def test_both_planners_agree_on_every_restore(specs, data, nested, monkeypatch):
    values = [(np.arange(int(np.prod(shape))).reshape(shape) % 7 + 1).astype(dt) for dt, shape in specs]
    tweaks = data.draw(st.lists(st.sampled_from(sorted(TWEAKS)), min_size=len(values), max_size=len(values)))
    path = ck.Checkpoint(model=_model(values, None, nested)).write(f"memory://planner/{id(values)}/c")
    compiled = _outcome(path, values, tweaks, nested)   # (shapes compared against the index's columns)
    with monkeypatch.context() as m:
        m.setattr(fmt.TensorTable, "shape_index", lambda self: None)   # against shape tuples
        by_tuples = _outcome(path, values, tweaks, nested)
    with monkeypatch.context() as m:
        m.setattr(session, "_plan_plain_arrays", None)
        m.setattr(session, "_match_aligned", None)
        python = _outcome(path, values, tweaks, nested)
    assert compiled == by_tuples == python


@pytest.mark.skipif(_compiled.plan_plain_arrays is None, reason="the compiled planner is turned off in this run")
def test_a_restore_of_plain_arrays_makes_no_shape_tuple(tmp_path):
    # the compiled planner compares live shapes with the decoded index's columns (TensorTable.shape_index)
    src = ck.Module()
    src.xs = [np.full((i % 3 + 1, 2), float(i), np.float32) for i in range(50)]
    path = ck.Checkpoint(model=src).write(str(tmp_path / "c"))
    dst = ck.Module()
    dst.xs = [np.zeros((i % 3 + 1, 2), np.float32) for i in range(50)]
    status = ck.Checkpoint(model=dst).read(path)
    status.assert_consumed()
    assert status.session.table._shape is None
    assert all(np.array_equal(a, b) for a, b in zip(dst.xs, src.xs))
    dst.xs[7] = np.zeros((9, 9), np.float32)   # a live shape the checkpoint does not have: refused by name
    with pytest.raises(ck.CheckpointError, match=r"xs/7.*\(2, 2\).*\(9, 9\)"):
        ck.Checkpoint(model=dst).read(path)


def test_the_compiled_planner_hands_back_what_it_does_not_know():
    plan = session._plan_plain_arrays
    if plan is None:
        pytest.skip("the compiled planner is turned off in this run (CKPTCORE_PURE_PYTHON=1)")
    from ckptcore.builtin.numpy_adapters import NumpyArrayAdapter
    from ckptcore.formats import ckpt as fmt

    class Sub(NumpyArrayAdapter):
        pass

    good = np.zeros((2, 3), np.float32)
    ad = NumpyArrayAdapter()
    cases = [
        (good, ad, 1),                               # 0: planned
        (good, Sub(), 1),                            # 1: another adapter class
        (np.zeros((2, 3), np.float64), ad, 1),       # 2: another dtype
        (np.zeros((3, 2), np.float32), ad, 1),       # 3: another shape
        (np.zeros((2, 3), np.float32)[:, ::-1], ad, 1),  # 4: not C-contiguous
        (good, ad, 2),                               # 5: a node with state
        (good, ad, 3),                               # 6: an attribute that is not the value
        (good, ad, 4),                               # 7: two attributes
        (good, ad, 99),                              # 8: no such node
    ]
    matches = [(o, a, nid, -1, None) for o, a, nid in cases]
    attr_start = [0, 0, 1, 2, 3, 5]
    attr_name = ["VARIABLE_VALUE", "VARIABLE_VALUE", "other", "VARIABLE_VALUE", "more"]
    shapes, dtypes = [(2, 3)] * 5, ["float32"] * 5
    rows, dests, cbs = [], [], []
    rest = plan(matches, attr_start, attr_name, {2: b"state"}, shapes, dtypes, fmt.FAST_DTYPES,
                NumpyArrayAdapter, "VARIABLE_VALUE", {}, rows, dests, cbs)
    assert rest == [1, 2, 3, 4, 5, 6, 7, 8]
    assert rows == [0] and dests[0] is good and cbs == [None]


class Cell:
    """A leaf whose adapter offers its memory through ``value_in_place`` (as torch's tensor adapter does)."""

    def __init__(self, value, offer: str):
        self.value, self.offer = value, offer


# What value_in_place may give: the cell's own memory, or each thing the compiled planner must hand back
# (never usable memory other than the cell's: the adapter's contract).
OFFERS = {
    "own": lambda c: c.value,
    "none": lambda c: None,
    "raises": lambda c: (_ for _ in ()).throw(RuntimeError("no memory today")),
    "read-only": lambda c: _readonly(c.value.copy()),
    "strided": lambda c: _strided(c.value),
    "other shape": lambda c: np.zeros(c.value.shape + (1,), c.value.dtype),
    "other dtype": lambda c: np.zeros(c.value.shape, np.float64 if c.value.dtype != np.float64 else np.float32),
    "subclass": lambda c: c.value.view(Odd),
    "list": lambda c: [0],
}


def _strided(v):
    x = np.zeros(v.shape + (2,), v.dtype)[..., 0]
    return x if not x.flags.c_contiguous else [0]   # (a 0-d or 1-element view is contiguous: usable, not ours)


class CellAdapter(ck.Adapter):
    name = "test.planner.cell"

    def attributes(self, obj):
        return ["VARIABLE_VALUE"]

    def get_value(self, obj, attr):
        return obj.value

    def spec(self, obj, attr):
        return obj.value.shape, obj.value.dtype

    def value_in_place(self, obj):
        return OFFERS[obj.offer](obj)

    def set_value(self, obj, attr, value):
        if value is not obj.value:
            obj.value[...] = value


def _cell_outcome(path, values, offers):
    cells = [Cell(np.zeros_like(v), o) for v, o in zip(values, offers)]
    root = ck.Module()
    root.cells = cells
    try:
        status = ck.Checkpoint(model=root).read(path)
    except ck.CheckpointError as e:
        return ("error", type(e).__name__, str(e))
    status.assert_consumed()
    return ("ok", [c.value.tolist() for c in cells])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=arrays, data=st.data())
def test_both_planners_agree_on_values_offered_in_place(specs, data, monkeypatch, ckptcore_fresh_registry):
    if ck.registry.adapter_or_none(Cell(None, "own")) is None:   # (once per test: the registry is the test's own)
        ck.register_adapter(Cell, CellAdapter())
    values = [(np.arange(int(np.prod(shape))).reshape(shape) % 7 + 1).astype(dt) for dt, shape in specs]
    offers = data.draw(st.lists(st.sampled_from(sorted(OFFERS)), min_size=len(values), max_size=len(values)))
    src = ck.Module()
    src.cells = [Cell(v, "own") for v in values]
    path = ck.Checkpoint(model=src).write(f"memory://planner-cells/{id(values)}/c")
    compiled = _cell_outcome(path, values, offers)
    with monkeypatch.context() as m:
        m.setattr(session, "_plan_plain_arrays", None)
        m.setattr(session, "_match_aligned", None)
        python = _cell_outcome(path, values, offers)
    assert compiled == python
    if "raises" not in offers:
        assert compiled == ("ok", [v.tolist() for v in values])


def test_the_compiled_planner_reads_into_memory_offered_in_place(ckptcore_fresh_registry):
    plan = session._plan_plain_arrays
    if plan is None:
        pytest.skip("the compiled planner is turned off in this run (CKPTCORE_PURE_PYTHON=1)")
    from ckptcore.builtin.numpy_adapters import NumpyArrayAdapter
    from ckptcore.formats import ckpt as fmt
    from ckptcore.restore.values import _offers_in_place

    cells = [Cell(np.zeros(3, np.float32), o) for o in ("own", "none", "raises", "other shape")]
    matches = [(c, CellAdapter(), 1, -1, None) for c in cells]
    rows, dests, cbs = [], [], []
    rest = plan(matches, [0, 0, 1], ["VARIABLE_VALUE"], {}, [(3,)], ["float32"], fmt.FAST_DTYPES,
                NumpyArrayAdapter, "VARIABLE_VALUE", {}, rows, dests, cbs, _offers_in_place)
    assert rest == [1, 2, 3] and rows == [0] and dests[0] is cells[0].value and cbs == [None]
    rows = []   # without offers_in_place: every such match is handed back
    assert plan(matches, [0, 0, 1], ["VARIABLE_VALUE"], {}, [(3,)], ["float32"], fmt.FAST_DTYPES,
                NumpyArrayAdapter, "VARIABLE_VALUE", {}, rows, [], []) == [0, 1, 2, 3] and rows == []


def _views(data) -> list:
    """Destinations as a restore may plan them: views of a few buffers (overlapping or not), Nones, empties."""
    bufs = [np.zeros(data.draw(st.integers(1, 64)), np.uint8) for _ in range(data.draw(st.integers(1, 3)))]
    out = []
    for _ in range(data.draw(st.integers(0, 12))):
        kind = data.draw(st.sampled_from(["view", "view", "own", "none", "empty", "whole"]))
        b = data.draw(st.sampled_from(bufs))
        if kind == "none":
            out.append(None)
        elif kind == "own":
            out.append(np.zeros(data.draw(st.integers(1, 8)), np.float32))
        elif kind == "empty":
            out.append(b[:0])
        elif kind == "whole":
            out.append(b)
        else:
            i = data.draw(st.integers(0, len(b) - 1))
            out.append(b[i:data.draw(st.integers(i + 1, len(b)))])
    return out


_DATA_SPANS = _compiled.data_spans  # (None in a build without the extension, or CKPTCORE_PURE_PYTHON=1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_compiled_and_python_aliasing_checks_agree(data, monkeypatch):
    # _unalias gives overlapping destinations fresh memory; with the compiled span helper or
    # without it, the same reads must be redirected, with the same fill-in callbacks
    dests = _views(data)
    results = []
    for spans in (_DATA_SPANS, None):
        monkeypatch.setattr(_compiled, "data_spans", spans)
        d, cbs = list(dests), [None] * len(dests)
        _unalias(d, cbs)
        results.append(([x is None for x in d], [cb is None for cb in cbs]))
    assert results[0] == results[1]
    monkeypatch.setattr(_compiled, "data_spans", _DATA_SPANS)
    d = list(dests)
    _unalias(d, [None] * len(d))
    kept = [x for x in d if x is not None and x.nbytes]
    assert not any(np.shares_memory(a, b) for i, a in enumerate(kept) for b in kept[i + 1:])


class _Meta(type):
    __hash__ = None  # an unhashable metaclass: its classes cannot key the adapter cache


def test_compiled_matching_hands_back_what_does_not_line_up():
    from ckptcore.builtin.numpy_adapters import NumpyArrayAdapter
    from ckptcore.graph import _LEAF_ADAPTERS, _is_leaf_type

    match = session._match_aligned
    if match is None:
        assert _perf.PURE_PYTHON
        return
    a, b = np.zeros(1), np.ones(1)
    cache = {np.ndarray: NumpyArrayAdapter()}

    def run(children, names=("x", "y"), ids=(1, 2), shared=()):
        matches, visit = [("root",)], []
        ok = match(list(children), list(names), list(ids), set(shared), cache, _LEAF_ADAPTERS, _is_leaf_type,
                   [2, 0, 0], 0, matches, visit)
        return ok, matches[1:], visit

    ok, matches, visit = run([("x", a), ("y", b)])
    assert ok and [m[0] for m in matches] == [a, b] and [m[2:] for m in matches] == [(1, 0, "x"), (2, 0, "y")]
    assert visit == []
    for bad in ([("y", a), ("x", b)],            # other order
                [("x", a)],                       # one missing
                [["x", a], ["y", b]],             # pairs that are lists
                [("x", a), ("y", object())],      # a type without a cached adapter
                [("x", a), ("y", _Meta("M", (), {})())]):  # an unhashable type
        assert run(bad) == (False, [], [])
    assert run([("x", a), ("y", b)], shared={2}) == (False, [], [])  # a node several edges lead to
    ok, _, visit = run([("x", a), ("y", b)], ids=(1, 0))  # a saved child with children of its own
    assert ok and visit == [2]
