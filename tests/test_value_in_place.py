"""``Adapter.value_in_place``: an object's own memory, read into with nothing else called.

An adapter of many small leaves (the torch tensor adapter) returns the object's memory; the
restore reads straight into it and skips ``attributes``/``spec``/``restore_buffer``/``set_value``
when the array has the saved shape and dtype. Anything else takes the usual path, which names
every mismatch as before.
"""

from __future__ import annotations

import numpy as np
import pytest

import ckptcore as ck


class Box:
    def __init__(self, value):
        self.value = value


class BoxAdapter(ck.Adapter):
    name = "test.box"
    offer = "memory"   # "memory", "none", "read-only", "raise"

    def __init__(self):
        self.calls = []

    def attributes(self, obj):
        self.calls.append("attributes")
        return ["VARIABLE_VALUE"]

    def get_value(self, obj, attr):
        return obj.value

    def spec(self, obj, attr):
        self.calls.append("spec")
        return obj.value.shape, obj.value.dtype

    def restore_buffer(self, obj, attr):
        self.calls.append("restore_buffer")
        return None

    def set_value(self, obj, attr, value):
        self.calls.append("set_value")
        obj.value[...] = value

    def value_in_place(self, obj):
        self.calls.append("value_in_place")
        if self.offer == "raise":
            raise RuntimeError("no memory today")
        if self.offer == "none":
            return None
        if self.offer == "read-only":
            v = obj.value.view()
            v.flags.writeable = False
            return v
        return obj.value


_ADAPTER = BoxAdapter()


@pytest.fixture(autouse=True)
def _registered(ckptcore_fresh_registry):
    ck.register_adapter(Box, _ADAPTER)
    _ADAPTER.offer = "memory"
    _ADAPTER.calls.clear()
    yield


def _saved(prefix, shapes=((3,), (2, 2))):
    boxes = [Box(np.arange(int(np.prod(s)), dtype=np.float32).reshape(s) + 1) for s in shapes]
    return ck.Checkpoint(boxes=boxes).save(prefix), boxes


def test_the_object_memory_is_read_into_and_nothing_else_is_called(prefix):
    path, boxes = _saved(prefix)
    live = [Box(np.zeros_like(b.value)) for b in boxes]
    before = [b.value for b in live]
    _ADAPTER.calls.clear()
    status = ck.Checkpoint(boxes=live).restore(path)
    assert _ADAPTER.calls == ["value_in_place", "value_in_place"]
    for b, v, src in zip(live, before, boxes):
        assert b.value is v
        np.testing.assert_array_equal(b.value, src.value)
    status.assert_consumed()  # (its walk of the live graph asks attributes(), as for any adapter)


@pytest.mark.parametrize("offer", ["none", "read-only"])
def test_no_usable_memory_takes_the_usual_path(prefix, offer):
    path, boxes = _saved(prefix)
    _ADAPTER.offer = offer
    live = [Box(np.zeros_like(b.value)) for b in boxes]
    _ADAPTER.calls.clear()
    ck.Checkpoint(boxes=live).restore(path).assert_consumed()
    for b, src in zip(live, boxes):
        np.testing.assert_array_equal(b.value, src.value)
    assert _ADAPTER.calls.count("set_value") == 2 and _ADAPTER.calls.count("spec") == 2


def test_a_shape_mismatch_is_named_as_before_and_nothing_is_assigned(prefix):
    path, boxes = _saved(prefix)
    live = [Box(np.zeros(3, np.float32)), Box(np.zeros((3, 3), np.float32))]
    with pytest.raises(ck.ShapeMismatchError, match=r"boxes/1.*\(2, 2\).*\(3, 3\)"):
        ck.Checkpoint(boxes=live).restore(path)
    assert not live[0].value.any()  # checked before anything was read


def test_a_dtype_mismatch_is_named_as_before(prefix):
    path, boxes = _saved(prefix)
    live = [Box(np.zeros(3, np.float64)), Box(np.zeros((2, 2), np.float32))]
    with pytest.raises(ck.DtypeMismatchError, match=r"boxes/0.*float32.*float64"):
        ck.Checkpoint(boxes=live).restore(path)


def test_a_failing_value_in_place_is_a_ckptcore_error_naming_the_object(prefix):
    path, boxes = _saved(prefix)
    _ADAPTER.offer = "raise"
    live = [Box(np.zeros_like(b.value)) for b in boxes]
    with pytest.raises(ck.CheckpointError, match=r"boxes/0.*value_in_place\(\).*no memory today"):
        ck.Checkpoint(boxes=live).restore(path)
    assert not any(b.value.any() for b in live)
