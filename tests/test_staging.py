"""The staging context a save or restore lends plugins (ckptcore.staging)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ckptcore as ck
from ckptcore import registry, staging
from ckptcore import save as saver


class Copied:
    """A value held elsewhere (a device, say): its adapter hands out a fresh host copy each time."""

    def __init__(self, n):
        self.data = np.arange(n, dtype=np.float32)
        self.copies = []


class CopiedAdapter(ck.Adapter):
    name = "test.copied"
    events: list = []

    def attributes(self, obj):
        return ["VARIABLE_VALUE"]

    def get_value(self, obj, attr):
        arr = obj.data.copy()
        obj.copies.append(arr)
        stage = staging.current()
        if stage is not None:
            stage.mark_private(arr)
            stage.on_end(lambda: CopiedAdapter.events.append(("end", stage.pinned_memory_bytes)))
        return arr

    def spec(self, obj, attr):
        return obj.data.shape, obj.data.dtype

    def set_value(self, obj, attr, value):
        obj.data[...] = value
        stage = staging.current()
        CopiedAdapter.events.append(("set", None if stage is None else stage.pinned_memory_bytes))


@pytest.fixture(autouse=True)
def copied_adapter():
    CopiedAdapter.events.clear()
    name = registry.register_adapter(Copied, CopiedAdapter())
    yield
    registry.unregister_plugin(name)


def test_an_async_snapshot_keeps_values_a_plugin_copied_and_copies_the_rest():
    c, plain = Copied(4), np.ones(3)
    stage = staging.Staging()
    with staging.active(stage):
        plan = saver.plan_save(ck.Checkpoint(c=c, p=plain)._ck_graph()[0], snapshot=True)
    arrays = dict(zip(plan._columns[0], plan._columns[2]))
    assert any(a is c.copies[-1] for a in arrays.values())  # not copied a second time
    assert not any(np.shares_memory(a, plain) for a in arrays.values())  # the live array is still snapshotted
    plan = saver.plan_save(ck.Checkpoint(c=c)._ck_graph()[0], snapshot=True)  # no staging: every value copied
    assert not any(a is c.copies[-1] for a in plan._columns[2])


@pytest.mark.parametrize("enable_async", [False, True])
def test_staging_ends_after_the_write_and_sees_the_options(tmp_path, enable_async):
    c = Copied(8)
    ckpt = ck.Checkpoint(c=c)
    seen = []
    CopiedAdapter.events.clear()
    prefix = str(tmp_path / "c")
    real_end = staging.Staging.end

    def end(self):
        seen.append(os.path.exists(prefix + ".index"))
        real_end(self)

    staging.Staging.end = end
    try:
        ckpt.write(prefix, options=ck.CheckpointOptions(enable_async=enable_async, pinned_memory_bytes=1 << 20))
        ckpt.sync()
    finally:
        staging.Staging.end = real_end
    assert seen == [True]  # released once, after the index was committed
    assert CopiedAdapter.events == [("end", 1 << 20)]
    assert staging.current() is None
    out = Copied(8)
    out.data[:] = 0
    ck.Checkpoint(c=out).read(prefix, options=ck.CheckpointOptions(pinned_memory_bytes=4096)).assert_consumed()
    assert CopiedAdapter.events[-1] == ("set", 4096) and out.data.tolist() == list(range(8))


def test_a_failed_plan_still_ends_its_staging(tmp_path):
    class Boom(ck.Adapter):
        name = "test.boom"

        def attributes(self, obj):
            return ["VARIABLE_VALUE"]

        def get_value(self, obj, attr):
            raise ck.CheckpointError("boom")

    class B:
        pass

    name = registry.register_adapter(B, Boom())
    ended = []
    real_end = staging.Staging.end
    staging.Staging.end = lambda self: (ended.append(1), real_end(self))
    try:
        with pytest.raises(ck.CheckpointError, match="boom"):
            ck.Checkpoint(c=Copied(2), b=B()).write(str(tmp_path / "c"))
    finally:
        staging.Staging.end = real_end
        registry.unregister_plugin(name)
    assert ended == [1] and staging.current() is None


def test_end_runs_every_release_once_and_raises_the_first_failure():
    s = staging.Staging(1)
    order = []
    s.on_end(lambda: order.append("a"))
    s.on_end(lambda: (_ for _ in ()).throw(OSError("x")))
    s.on_end(lambda: order.append("c"))
    with pytest.raises(OSError):
        s.end()
    s.end()
    assert order == ["c", "a"] and s.resources == {} and not s.has_private
