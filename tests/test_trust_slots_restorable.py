"""An adapter that saves slot variables must be able to give them back.

``ck.Adapter.restore_slot`` defaults to doing nothing, so an adapter that
overrode ``slots()`` alone had its slots written at save, read at restore,
counted as restored by ``assert_consumed()`` and then dropped: the optimizer
resumed with zero momentum and nothing said so. Such an adapter is refused
where it is registered.
"""

from __future__ import annotations

import numpy as np
import pytest

import ckptcore as ck


class _Optim:
    def __init__(self, w):
        self.w = w
        self.momentum = None


def _saving_only():
    class SavesSlots(ck.Adapter):
        name = "test.saves_slots"

        def slots(self, obj):
            return [ck.SlotVariable(variable=obj.w, name="momentum", value=np.full(2, 0.5, np.float32))]

    return SavesSlots()


def _register_expecting_refusal(adapter, match):
    plugin = None
    try:
        with pytest.raises(ck.InvalidArgumentError, match=match):
            plugin = ck.register_adapter(_Optim, adapter)
    finally:
        if plugin is not None:  # accepted after all: leave no adapter behind for the other tests
            ck.registry.unregister_plugin(plugin)


def test_an_adapter_that_saves_slots_it_cannot_restore_is_refused_at_registration():
    _register_expecting_refusal(_saving_only(), r"'test.saves_slots' defines slots\(\) but neither "
                                                r"restore_slot\(\) nor restore_slots\(\)")


def test_a_duck_typed_adapter_with_slots_and_no_restore_slot_is_refused_too():
    class Duck:
        name = "test.duck_slots"

        def attributes(self, obj):
            return []

        def slots(self, obj):
            return []

    _register_expecting_refusal(Duck(), r"'test.duck_slots' defines slots\(\) but neither")


@pytest.mark.parametrize("method", ["restore_slot", "restore_slots"])
def test_an_adapter_that_restores_its_slots_is_accepted_and_gets_them_back(tmp_path, method):
    class Restores(ck.Adapter):
        name = "test.restores_slots"

        def slots(self, obj):
            return [ck.SlotVariable(variable=obj.w, name="momentum", value=obj.momentum)]

    def restore_slot(self, obj, variable, name, value):
        obj.momentum = np.array(value)

    def restore_slots(self, obj, slots):
        (_, name, value), = slots
        assert name == "momentum"
        obj.momentum = np.array(value)

    setattr(Restores, method, restore_slot if method == "restore_slot" else restore_slots)
    plugin = ck.register_adapter(_Optim, Restores())
    try:
        w = ck.Variable(np.zeros(2, np.float32))
        opt = _Optim(w)
        opt.momentum = np.array([0.25, -1.5], np.float32)
        path = ck.Checkpoint(w=w, opt=opt).write(str(tmp_path / "ckpt"))
        w2 = ck.Variable(np.zeros(2, np.float32))
        opt2 = _Optim(w2)
        ck.Checkpoint(w=w2, opt=opt2).read(path).assert_consumed()
        np.testing.assert_array_equal(opt2.momentum, [0.25, -1.5])
    finally:
        ck.registry.unregister_plugin(plugin)
