"""Adapter.accepts_dtype: a value saved with another dtype reaches set_value only where the adapter converts it."""

from __future__ import annotations

import numpy as np
import pytest

import ckptcore as ck


class Counter:
    def __init__(self, value, dtype):
        self.value = np.array(value, dtype)


class CounterAdapter(ck.Adapter):
    name = "test.counter"
    widths = False

    def attributes(self, obj):
        return ["VARIABLE_VALUE"]

    def get_value(self, obj, attr):
        return obj.value

    def accepts_dtype(self, obj, attr, stored):
        return self.widths and stored.kind == obj.value.dtype.kind == "i"

    def set_value(self, obj, attr, value):
        obj.got = value.dtype
        obj.value = value.astype(obj.value.dtype)


@pytest.fixture
def adapter():
    a = CounterAdapter()
    plugin = ck.register_adapter(Counter, a)
    yield a
    ck.registry.unregister_plugin(plugin)


def test_a_dtype_mismatch_is_an_error_unless_the_adapter_converts_it(adapter, tmp_path):
    path = ck.Checkpoint(c=Counter(7, np.int64), s=np.ones(1, np.float32)).write(str(tmp_path / "c"))
    live = Counter(0, np.int32)
    with pytest.raises(ck.DtypeMismatchError, match="the checkpoint has int64, the live object has int32"):
        ck.Checkpoint(c=live).read(path)
    adapter.widths = True
    ck.Checkpoint(c=live).read(path).expect_partial()
    assert live.got == np.int64 and live.value.dtype == np.int32 and int(live.value) == 7
    # restore-on-create takes the same path
    ckpt = ck.Checkpoint()
    status = ckpt.read(path)
    ckpt.c = later = Counter(0, np.int16)
    status.expect_partial()
    assert later.got == np.int64 and int(later.value) == 7


def test_what_the_adapter_does_not_accept_stops_the_whole_restore(adapter, tmp_path):
    adapter.widths = True
    path = ck.Checkpoint(c=Counter(7, np.int64), f=Counter(1.5, np.float64)).write(str(tmp_path / "c"))
    c, f = Counter(0, np.int32), Counter(0, np.float32)
    with pytest.raises(ck.DtypeMismatchError, match="float64"):
        ck.Checkpoint(c=c, f=f).read(path)
    assert int(c.value) == 0 and not hasattr(c, "got")  # nothing assigned anywhere
