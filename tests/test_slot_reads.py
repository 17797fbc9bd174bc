"""Slot variables are read in the restore's planned pass, into memory the optimizer's adapter offers.

A small numpy optimizer and its adapter exercise the core side of ``slot_restore_buffers`` and
``restore_slots``: in-place reads, refused buffers, slots shared by two optimizers, adapters that
only implement ``restore_slot`` (and do not subclass ``ck.Adapter``), and variables created
after ``restore()``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.reader import CheckpointReader


class Opt:
    def __init__(self, params):
        self.params = list(params)
        self.m = {}   # id(param) -> slot array
        self.calls = []


class OptAdapter(ck.Adapter):
    name = "test.slot_opt"
    offer = "existing"   # "existing", "none", "wrong"

    def slots(self, obj):
        return [ck.SlotVariable(p, "m", obj.m[id(p)]) for p in obj.params if id(p) in obj.m]

    def slot_restore_buffers(self, obj, requests):
        out = []
        for var, _name, _shape, _dtype in requests:
            have = obj.m.get(id(var))
            if self.offer == "existing" and have is not None:
                out.append(have)
            elif self.offer == "wrong":
                out.append(np.zeros((99,), np.int8))
            else:
                out.append(None)
        return out

    def restore_slots(self, obj, items):
        obj.calls.append(len(items))
        for var, _name, value in items:
            have = obj.m.get(id(var))
            if have is not None and have is value:
                continue
            obj.m[id(var)] = value


class PlainAdapter:  # duck-typed: no ck.Adapter base, only restore_slot
    name = "test.plain_opt"

    def children(self, obj):
        return []

    def attributes(self, obj):
        return []

    def get_state(self, obj):
        return None

    def set_state(self, obj, state):
        pass

    def slots(self, obj):
        return [ck.SlotVariable(p, "m", obj.m[id(p)]) for p in obj.params if id(p) in obj.m]

    def restore_slot(self, obj, variable, name, value):
        obj.m[id(variable)] = value


class PlainOpt(Opt):
    pass


_ADAPTER = OptAdapter()


@pytest.fixture(autouse=True)
def _registered(ckptcore_fresh_registry):
    ck.register_adapter(Opt, _ADAPTER)
    ck.register_adapter(PlainOpt, PlainAdapter())
    _ADAPTER.offer = "existing"
    yield


def _saved(prefix, n=3, cls=Opt):
    ws = [np.arange(i + 1, dtype=np.float32) for i in range(n)]
    opt = cls(ws)
    for i, w in enumerate(ws):
        opt.m[id(w)] = w * 10 + i
    return ck.Checkpoint(ws=ws, opt=opt).save(prefix), ws, opt


@pytest.fixture
def no_single_reads(monkeypatch):
    def refuse(self, key):
        raise AssertionError(f"{key} read on its own")
    monkeypatch.setattr(CheckpointReader, "get_tensor", refuse)


def test_existing_slot_memory_is_filled_in_place(prefix, no_single_reads):
    path, ws, opt = _saved(prefix)
    ws2 = [np.zeros_like(w) for w in ws]
    opt2 = Opt(ws2)
    mine = {id(w): np.full_like(w, -1) for w in ws2}
    opt2.m.update(mine)
    ck.Checkpoint(ws=ws2, opt=opt2).restore(path).assert_consumed()
    for w, w2 in zip(ws, ws2):
        assert opt2.m[id(w2)] is mine[id(w2)]
        np.testing.assert_array_equal(opt2.m[id(w2)], opt.m[id(w)])
    assert opt2.calls == [3]  # one call for all slots


@pytest.mark.parametrize("in_place", [False, True])
def test_in_place_adapters_are_not_handed_slots_already_in_their_memory(prefix, no_single_reads, monkeypatch,
                                                                          in_place):
    # slot_buffers_in_place: the offered arrays are the slots themselves, so restore_slots only
    # gets the slots read into fresh arrays (here: the one without state), and is skipped when
    # none are; without it every slot is handed over (an offered array may be staging memory)
    monkeypatch.setattr(OptAdapter, "slot_buffers_in_place", in_place, raising=False)
    path, ws, opt = _saved(prefix)
    ws2 = [np.zeros_like(w) for w in ws]
    opt2 = Opt(ws2)
    mine = {id(w): np.full_like(w, -1) for w in ws2[:2]}
    opt2.m.update(mine)
    ck.Checkpoint(ws=ws2, opt=opt2).restore(path).assert_consumed()
    for w, w2 in zip(ws, ws2):
        np.testing.assert_array_equal(opt2.m[id(w2)], opt.m[id(w)])
    assert all(opt2.m[k] is v for k, v in mine.items())
    assert opt2.calls == ([1] if in_place else [3])
    opt2.m[id(ws2[2])] = np.full_like(ws2[2], -1)  # now every slot has memory
    opt2.calls.clear()
    ck.Checkpoint(ws=ws2, opt=opt2).restore(path).assert_consumed()
    assert opt2.calls == ([] if in_place else [3])
    np.testing.assert_array_equal(opt2.m[id(ws2[2])], opt.m[id(ws[2])])


@pytest.mark.parametrize("offer", ["none", "wrong"])
def test_slots_without_usable_memory_get_fresh_arrays(prefix, no_single_reads, offer):
    _ADAPTER.offer = offer
    path, ws, opt = _saved(prefix)
    ws2 = [np.zeros_like(w) for w in ws]
    opt2 = Opt(ws2)
    ck.Checkpoint(ws=ws2, opt=opt2).restore(path).assert_consumed()
    for w, w2 in zip(ws, ws2):
        np.testing.assert_array_equal(opt2.m[id(w2)], opt.m[id(w)])
        assert opt2.m[id(w2)].dtype == np.float32


def test_duck_typed_adapter_gets_restore_slot_per_slot(prefix):
    path, ws, opt = _saved(prefix, cls=PlainOpt)
    ws2 = [np.zeros_like(w) for w in ws]
    opt2 = PlainOpt(ws2)
    ck.Checkpoint(ws=ws2, opt=opt2).restore(path).assert_consumed()
    for w, w2 in zip(ws, ws2):
        np.testing.assert_array_equal(opt2.m[id(w2)], opt.m[id(w)])


@pytest.mark.parametrize("offer", ["existing", "none"])
def test_one_slot_restored_into_two_live_optimizers_is_not_shared(prefix, offer):
    # one saved optimizer under two names (one node, two edges), two distinct live optimizers there:
    # both match that node, and each must get memory of its own
    _ADAPTER.offer = offer
    ws = [np.arange(3, dtype=np.float32), np.ones(2, np.float32)]
    opt = Opt(ws)
    for w in ws:
        opt.m[id(w)] = w + 5
    path = ck.Checkpoint(ws=ws, opt=opt, alias=opt).save(prefix)
    ws2 = [np.zeros_like(w) for w in ws]
    a, b = Opt(ws2), Opt(ws2)
    if offer == "existing":
        a.m.update({id(w): np.zeros_like(w) for w in ws2})
    ck.Checkpoint(ws=ws2, opt=a, alias=b).restore(path).assert_consumed()
    for w, w2 in zip(ws, ws2):
        np.testing.assert_array_equal(a.m[id(w2)], opt.m[id(w)])
        np.testing.assert_array_equal(b.m[id(w2)], opt.m[id(w)])
        assert not np.shares_memory(a.m[id(w2)], b.m[id(w2)])


def test_slots_of_a_variable_created_after_restore(prefix, no_single_reads):
    path, ws, opt = _saved(prefix, n=2)
    model = ck.Module()
    model.ws = []
    opt2 = Opt([])
    status = ck.Checkpoint(ws=model.ws, opt=opt2).restore(path)
    for w in ws:
        w2 = np.zeros_like(w)
        opt2.params.append(w2)
        model.ws.append(w2)
    status.assert_consumed()
    for w, w2 in zip(ws, opt2.params):
        np.testing.assert_array_equal(w2, w)
        np.testing.assert_array_equal(opt2.m[id(w2)], opt.m[id(w)])


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=12), have=st.lists(st.booleans(), min_size=12,
       max_size=12), offer=st.sampled_from(["existing", "none", "wrong"]))
def test_random_slot_sets_round_trip(tmp_path_factory, sizes, have, offer):
    _ADAPTER.offer = offer
    prefix = str(tmp_path_factory.mktemp("slots") / "c")
    rng = np.random.default_rng(len(sizes))
    ws = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    opt = Opt(ws)
    for w in ws:
        opt.m[id(w)] = rng.standard_normal(w.shape).astype(np.float64)
    path = ck.Checkpoint(ws=ws, opt=opt).save(prefix)
    ws2 = [np.zeros_like(w) for w in ws]
    opt2 = Opt(ws2)
    for w2, h in zip(ws2, have):
        if h:
            opt2.m[id(w2)] = np.zeros(w2.shape, np.float64)
    ck.Checkpoint(ws=ws2, opt=opt2).restore(path).assert_consumed()
    for w, w2 in zip(ws, ws2):
        np.testing.assert_array_equal(w2, w)
        np.testing.assert_array_equal(opt2.m[id(w2)], opt.m[id(w)])
    assert len({id(v) for v in opt2.m.values()}) == len(ws)


def test_slots_of_an_optimizer_attached_after_its_variables_were_restored(prefix, no_single_reads):
    # the variables are matched by the first restore step, the optimizer by a later one: its slots
    # come from the variables matched earlier (restore-on-create of the optimizer)
    path, ws, opt = _saved(prefix, n=3)
    ws2 = [np.zeros_like(w) for w in ws]
    ckpt = ck.Checkpoint(ws=ws2)
    status = ckpt.restore(path)
    for w, w2 in zip(ws, ws2):
        np.testing.assert_array_equal(w2, w)
    opt2 = Opt(ws2)
    opt2.m[id(ws2[0])] = np.full(ws2[0].shape, -1, np.float32)   # one slot exists already: filled in place
    kept = opt2.m[id(ws2[0])]
    ckpt.opt = opt2
    for w, w2 in zip(ws, ws2):
        np.testing.assert_array_equal(opt2.m[id(w2)], opt.m[id(w)])
    assert opt2.m[id(ws2[0])] is kept and opt2.calls == [3]   # all three handed over in one call
    status.assert_existing_objects_matched()


def test_an_optimizer_restored_before_its_variables_gets_its_slots_when_they_come(prefix, no_single_reads):
    path, ws, opt = _saved(prefix, n=3)
    ws2 = [np.zeros_like(w) for w in ws]
    opt2 = Opt(ws2)
    ckpt = ck.Checkpoint(opt=opt2)
    status = ckpt.restore(path)
    assert opt2.calls == [] and not opt2.m   # no variable matched yet: the adapter is not asked at all
    ckpt.ws = ws2
    for w, w2 in zip(ws, ws2):
        np.testing.assert_array_equal(w2, w)
        np.testing.assert_array_equal(opt2.m[id(w2)], opt.m[id(w)])
    assert opt2.calls == [3]
    status.assert_consumed()
