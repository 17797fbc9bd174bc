"""Issue 13: repeated, overlapping and deferred restores follow TF's rules.

TF keeps every deferred restore of a dependency (``_deferred_dependencies``: name -> list), and
when the dependency is added restores them newest first (by ``restore_uid``); an object keeps
the values of the newest restore that reached it (``_update_uid``), while older restores still
match it, so their statuses complete.
"""

from __future__ import annotations

import numpy as np
import pytest

import ckptcore as ck


class Opt:
    def __init__(self, params):
        self.params = params
        self.m: dict[int, np.ndarray] = {}


class OptAdapter(ck.Adapter):
    name = "test.restore_queue.opt"

    def slots(self, obj):
        return [ck.SlotVariable(p, "m", obj.m[id(p)]) for p in obj.params if id(p) in obj.m]

    def restore_slot(self, obj, variable, name, value):
        obj.m[id(variable)] = np.array(value)


@pytest.fixture(autouse=True)
def _opt_adapter():
    plugin = ck.register_adapter(Opt, OptAdapter())
    yield
    ck.registry.unregister_plugin(plugin)


def _save(tmp_path, name, value, slot=None):
    m = ck.Module()
    m.w = np.full(2, float(value))
    objs = {"model": m}
    if slot is not None:
        opt = Opt([m.w])
        opt.m[id(m.w)] = np.full(2, float(slot))
        objs["opt"] = opt
    return ck.Checkpoint(**objs).write(str(tmp_path / name))


def test_two_deferred_restores_on_one_parent_both_complete_and_the_newer_wins(tmp_path):
    a = _save(tmp_path, "a", 1.0)
    b = _save(tmp_path, "b", 2.0)
    m = ck.Module()
    ckpt = ck.Checkpoint(model=m)
    first = ckpt.read(a)
    second = ckpt.read(b)
    m.w = np.zeros(2)                # both wait for model.w
    assert m.w.tolist() == [2.0, 2.0]  # the newer restore's value, as TF
    first.assert_consumed()            # the first status completes too (it used to wait forever)
    second.assert_consumed()
    assert not ck.has_pending(m)


def test_the_older_restore_fills_what_the_newer_checkpoint_lacks(tmp_path):
    src = ck.Module()
    src.w = np.full(2, 1.0)
    src.extra = np.full(1, 5.0)
    a = ck.Checkpoint(model=src).write(str(tmp_path / "a"))
    b = _save(tmp_path, "b", 2.0)   # no model.extra
    m = ck.Module()
    ckpt = ck.Checkpoint(model=m)
    first, second = ckpt.read(a), ckpt.read(b)
    m.w = np.zeros(2)
    m.extra = np.zeros(1)
    assert m.w.tolist() == [2.0, 2.0] and m.extra.tolist() == [5.0]
    first.assert_consumed()
    second.assert_nontrivial_match()  # it has no value for model.extra: that one is the older restore's


def test_deferred_optimizer_slots_of_both_restores(tmp_path):
    a = _save(tmp_path, "a", 1.0, slot=10.0)
    b = _save(tmp_path, "b", 2.0, slot=20.0)
    m = ck.Module()
    ckpt = ck.Checkpoint(model=m)
    first, second = ckpt.read(a), ckpt.read(b)
    m.w = np.zeros(2)
    opt = Opt([m.w])
    ckpt.opt = opt                      # created after both restores: its slots are created then
    assert m.w.tolist() == [2.0, 2.0]
    assert opt.m[id(m.w)].tolist() == [20.0, 20.0]
    first.assert_consumed()
    second.assert_consumed()


def test_an_older_deferred_restore_never_overwrites_a_newer_immediate_one(tmp_path):
    old = ck.Module()
    old.q = np.full(2, 1.0)
    a = ck.Checkpoint(model=old).write(str(tmp_path / "a"))      # has model.q
    new = ck.Module()
    new.p = np.full(2, 2.0)
    b = ck.Checkpoint(model=new).write(str(tmp_path / "b"))      # has model.p
    m = ck.Module()
    ckpt = ck.Checkpoint(model=m)
    first = ckpt.read(a)                 # waits for model.q
    arr = np.zeros(2)
    m.p = arr
    second = ckpt.read(b)                # fills arr through model.p now
    assert arr.tolist() == [2.0, 2.0]
    m.q = arr                            # the older restore's wait ends on the same array: it must not win
    assert arr.tolist() == [2.0, 2.0]
    first.assert_consumed()              # matched all the same, as TF binds it
    second.assert_consumed()


def test_repeated_immediate_restores_apply_in_call_order(tmp_path):
    a = _save(tmp_path, "a", 1.0)
    b = _save(tmp_path, "b", 2.0)
    m = ck.Module()
    m.w = np.zeros(2)
    ckpt = ck.Checkpoint(model=m)
    ckpt.read(b).assert_consumed()
    ckpt.read(a).assert_consumed()
    assert m.w.tolist() == [1.0, 1.0]


def test_the_older_restore_rule_is_per_slot_not_per_optimizer(tmp_path):
    # TF gives every slot variable its own _update_uid: a newer restore that filled the optimizer and
    # the slot of w1 leaves the older restore free to fill the slot of w2, which the newer one lacks.
    src = ck.Module()
    src.w1, src.w2 = np.full(2, 1.0), np.full(2, 2.0)
    opt = Opt([src.w1, src.w2])
    opt.m[id(src.w1)], opt.m[id(src.w2)] = np.full(2, 10.0), np.full(2, 11.0)
    a = ck.Checkpoint(model=src, opt=opt).write(str(tmp_path / "a"))   # slots of w1 and w2
    src2 = ck.Module()
    src2.w1 = np.full(2, 3.0)
    opt2 = Opt([src2.w1])
    opt2.m[id(src2.w1)] = np.full(2, 30.0)
    b = ck.Checkpoint(model=src2, opt=opt2).write(str(tmp_path / "b"))  # the slot of w1 only
    m = ck.Module()
    m.w1, m.w2 = np.zeros(2), np.zeros(2)
    ckpt = ck.Checkpoint(model=m)
    first, second = ckpt.read(a), ckpt.read(b)   # both wait for the optimizer
    live = Opt([m.w1, m.w2])
    ckpt.opt = live                              # the newer restore first, then the older one
    assert m.w1.tolist() == [3.0, 3.0] and m.w2.tolist() == [2.0, 2.0]
    assert live.m[id(m.w1)].tolist() == [30.0, 30.0]   # the newer restore's slot is kept
    assert live.m[id(m.w2)].tolist() == [11.0, 11.0]   # the older one fills the slot the newer one lacks
    first.assert_consumed()
    second.assert_nontrivial_match()   # b has no model.w2



def test_a_session_finalized_on_another_thread_while_a_restore_holds_the_lock_does_not_deadlock():
    """A restore from an object store holds the restore lock while fsspec's I/O thread does the reads; a
    collection in that thread finalized an earlier session, whose __del__ (the unused-values warning)
    waited for the same lock: the restore waited for the read, the read for the lock, forever."""
    import gc
    import threading
    import warnings

    from ckptcore.restore.deferred import _LOCK

    path = ck.Checkpoint(a=np.ones(2), b=np.ones(2)).write("memory://queue/deadlock/c")
    ckpt = ck.Checkpoint(a=np.zeros(2))
    holder = [ckpt, ckpt.read(path)]   # b is never restored: its session warns when finalized
    del ckpt
    finalized = threading.Event()

    def drop():
        holder.clear()
        gc.collect()
        finalized.set()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ck.PartialRestoreWarning)
        with _LOCK:   # as a restore step holds it while it waits for its reads
            t = threading.Thread(target=drop, daemon=True)
            t.start()
            assert finalized.wait(20), "the session's finalizer waited for the restore lock"
        t.join(20)
