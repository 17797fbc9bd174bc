"""The compiled per-slot loops of a restore (``_plan_fast.pyx``) give what their Python twins give.

``restore/slots.py`` plans an optimizer's slots with four loops: the slots due (each variable
matched once), the specs offered to the adapter, the check of the arrays it offers, and fresh
arrays for the rest. Each has a Python version (used without the extension and with
``CKPTCORE_PURE_PYTHON=1``) and a compiled one; on random inputs, including every way an offered
array can be unusable, both must leave identical results behind.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptcore import _perf
from ckptcore.distributed import ShardBuffer
from ckptcore.formats import ckpt as fmt
from ckptcore.restore import _compiled, slots

# (CKPTCORE_PURE_PYTHON=1 turns the helpers off: there is nothing compiled to compare then)
compiled = pytest.mark.skipif(_compiled.slot_dests is None, reason="CKPTCORE_PURE_PYTHON=1")


def test_the_extension_is_built_and_used():
    # a build that lost the extension fails here (it would leave only the Python loops tested)
    from ckptcore.restore import _plan_fast

    if _perf.PURE_PYTHON:
        assert slots._helpers(True) == (slots.due_once, slots.slot_specs, slots.slot_dests, slots.fresh_slot_arrays)
        return
    assert _compiled.slot_dests is _plan_fast.slot_dests
    assert slots._helpers(True) == (_plan_fast.due_once, _plan_fast.slot_specs, _plan_fast.slot_dests,
                                    _plan_fast.fresh_slot_arrays)
    assert slots._helpers(False)[2] is slots.slot_dests   # columns that are not lists: the Python loops


class Sub(np.ndarray):
    pass


def _readonly(a):
    a.flags.writeable = False
    return a


# How an offered buffer can be: usable, or each way it is not (the compiled check must refuse each alike).
OFFERS = {
    "none": lambda shape, dt: None,
    "good": lambda shape, dt: np.zeros(shape, dt),
    "subclass": lambda shape, dt: np.zeros(shape, dt).view(Sub),
    "read-only": lambda shape, dt: _readonly(np.zeros(shape, dt)),
    "strided": lambda shape, dt: np.zeros(shape + (2,), dt)[..., 0],   # (contiguous when 0-d or of one element)
    "fortran": lambda shape, dt: np.asfortranarray(np.zeros(shape, dt)),
    "other shape": lambda shape, dt: np.zeros(shape + (1,), dt),
    "other dtype": lambda shape, dt: np.zeros(shape, np.float64 if dt != np.float64 else np.float32),
    "swapped": lambda shape, dt: np.zeros(shape, np.dtype(dt).newbyteorder()),
    "equal dtype, other object": lambda shape, dt: np.zeros(shape, np.dtype(np.dtype(dt).str)),
    "shard": lambda shape, dt: ShardBuffer(shape, np.dtype(dt), []),
    "list": lambda shape, dt: [0],
}

_shape = st.lists(st.integers(0, 3), max_size=3).map(tuple)
_dtype = st.sampled_from(["float32", "float64", "int8", "bool"])
_slot = st.tuples(_shape, _dtype, st.sampled_from(sorted(OFFERS)), st.integers(0, 5))


def _dests_case(fn, slots_spec):
    fast = fmt.FAST_DTYPES
    t_shape = [shape for shape, _dt, _o, _row in slots_spec]
    t_dtype = [dt for _s, dt, _o, _row in slots_spec]
    requests = [(f"var{k}", "m", k if row == 5 else min(row, len(slots_spec) - 1))
                for k, (_s, _dt, _o, row) in enumerate(slots_spec)]   # some rows asked for twice
    specs = slots.slot_specs(requests, t_shape, t_dtype, fast, lambda r: np.dtype(t_dtype[r]))
    offers = [OFFERS[o](t_shape[r], t_dtype[r]) for (_s, _d, o, _row), (_v, _n, r) in zip(slots_spec, requests)]
    buffers = list(offers)
    in_buffers, values, rows, dests, callbacks = {99}, {}, [], [], []
    rest = fn(requests, buffers, specs, in_buffers, values, rows, dests, callbacks)
    return offers, (rest, [id(b) if b is not None else None for b in buffers], sorted(in_buffers),
                    {k: id(v) for k, v in values.items()}, rows, [id(d) for d in dests], callbacks)


@compiled
@settings(max_examples=300, deadline=None)
@given(st.lists(_slot, min_size=1, max_size=12))
def test_offered_arrays_are_checked_alike(slots_spec):
    keep_py, py = _dests_case(slots.slot_dests, slots_spec)
    keep_c, c = _dests_case(_compiled.slot_dests, slots_spec)
    # the same positions of the same offers (ids of each run's own arrays, mapped to positions)
    def norm(offers, result):
        where = {id(o): k for k, o in enumerate(offers) if o is not None}
        rest, buffers, in_buf, values, rows, dests, cbs = result
        return (rest, [where.get(b) for b in buffers], in_buf, {k: where.get(v) for k, v in values.items()},
                rows, [where.get(d) for d in dests], cbs)
    assert norm(keep_py, py) == norm(keep_c, c)


@compiled
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.booleans()), max_size=12),
       st.dictionaries(st.integers(0, 6), st.integers(1, 2), max_size=6))
def test_due_slots_alike(entries, matched):
    # nodes 0-6; nodes 2 and 5 have no value (attr_start[n] == attr_start[n + 1]), the others one each
    attr_start = [0, 1, 2, 2, 3, 4, 4, 5]
    here = {nid: [(f"obj{nid}-{i}", None) for i in range(n)] for nid, n in matched.items()}
    ents = [(var, f"s{k}" if named else "m", slot) for k, (var, slot, named) in enumerate(entries)]
    out = []
    for fn in (slots.due_once, _compiled.due_once):
        slot_ids, requests, wanted = [], [], {}
        done = fn(ents, attr_start, here, slot_ids, requests, wanted)
        out.append((done, slot_ids, requests, list(wanted)))
    assert out[0] == out[1]


@compiled
@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_shape, _dtype), min_size=1, max_size=8), st.sets(st.integers(0, 7)))
def test_fresh_arrays_alike(table, taken):
    t_shape, t_dtype = [s for s, _ in table], [d for _, d in table]
    fast = {"float32": np.dtype("float32")}   # the others through np_dtype
    wanted = list(range(len(table)))
    out = []
    for fn in (slots.fresh_slot_arrays, _compiled.fresh_slot_arrays):
        values, rows, dests, cbs = {}, [], [], []
        fn(wanted, set(taken), t_shape, t_dtype, fast, lambda r: np.dtype(t_dtype[r]), values, rows, dests, cbs)
        assert all(values[r] is d for r, d in zip(rows, dests))
        out.append((rows, [(v.shape, v.dtype, type(v), v.flags.c_contiguous, v.flags.writeable)
                           for v in dests], cbs))
    assert out[0] == out[1]
    assert out[0][0] == [r for r in wanted if r not in taken]


@compiled
@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_shape, _dtype), min_size=1, max_size=8))
def test_specs_alike(table):
    t_shape, t_dtype = [s for s, _ in table], [d for _, d in table]
    requests = [(f"v{k}", "m", k) for k in range(len(table))]
    fast = {"float32": np.dtype("float32")}
    got = [fn(requests, t_shape, t_dtype, fast, lambda r: np.dtype(t_dtype[r]))
           for fn in (slots.slot_specs, _compiled.slot_specs)]
    assert got[0] == got[1]
    assert got[1] == [(v, n, t_shape[r], np.dtype(t_dtype[r])) for v, n, r in requests]
    assert [s[3] is fast["float32"] for s in got[1]] == [d == "float32" for d in t_dtype]   # the table's own
