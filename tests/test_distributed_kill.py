"""A worker that dies at each moment of a collective save (ckptcore.distributed.protocol), on an in-process group
of threads: the dead worker stops where it is (it does nothing more: no cleanup, no message) and the group
reports it broken, as a SIGKILLed process's closed connections do. (The gloo tests of the torch plugin kill
real processes at some of these moments.)

Whatever the moment: the survivor returns or raises a ckptcore error in bounded time, ``latest_checkpoint``
names a complete checkpoint, an index that exists describes a complete checkpoint, and a later save of the
same number removes what the dead save left (its sections and temp files)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import ckptcore as ck
import ckptcore.distributed.protocol as dsave  # the steps every collective save runs
import ckptcore.save.write as saver
from ckptcore.distributed import CollectiveTimeoutError, ThreadGroup
from ckptcore.storage import LocalStorage

KEY = "w/.ATTRIBUTES/VARIABLE_VALUE"


class _Killed(BaseException):
    """Raised in a 'killed' thread once the test is over, so that it ends."""


_released = threading.Event()


@pytest.fixture(autouse=True, scope="module")
def _release_dead_threads():
    yield
    _released.set()


def _die(group):
    group.abort()            # the peers' pending and later calls fail, like a closed connection
    _released.wait(120)      # and this worker does nothing more
    raise _Killed


# moment -> (victim rank, where it dies)
MOMENTS = {
    "plan-1": (1, "plan"), "plan-0": (0, "plan"), "write-1": (1, "write"), "write-0": (0, "write"),
    "after-index-0": (0, "index"), "after-record-0": (0, "commit"), "before-commit-1": (1, "commit"),
}


def _patch(monkeypatch, victim_name: str, where: str, groups):
    def victim():
        return threading.current_thread().name == victim_name

    def group():
        return groups[int(victim_name[4:])]
    if where == "plan":
        real_describe = dsave.describe
        monkeypatch.setattr(dsave, "describe", lambda plan: _die(group()) if victim() else real_describe(plan))
    elif where == "write":
        real_write = saver._write_tensors

        def write(writer, items, progress):
            if victim():
                writer.write(b"half a section")  # a partial temp file stays behind
                _die(group())
            return real_write(writer, items, progress)
        monkeypatch.setattr(saver, "_write_tensors", write)
    elif where == "index":
        real_atomic = LocalStorage.write_atomic

        def atomic(self, path, data):
            real_atomic(self, path, data)
            if victim() and path.endswith(".index"):
                _die(group())
        monkeypatch.setattr(LocalStorage, "write_atomic", atomic)
    else:  # the last message: rank 0 has committed (and recorded) by then
        real_bcast = dsave.broadcast_json

        def bcast(g, value, src, timeout, what="broadcast"):
            if victim() and what == "commit":
                _die(g)
            return real_bcast(g, value, src, timeout, what)
        monkeypatch.setattr(dsave, "broadcast_json", bcast)


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_worker_killed_at_each_moment_of_a_save(tmp_path, monkeypatch, moment):
    rank_dead, where = MOMENTS[moment]
    prefix = str(tmp_path / "run" / "ckpt")
    first_values, second_values = np.arange(6.0), np.arange(6.0) + 10
    groups = ThreadGroup.create(2)
    results = [None, None]
    ckpts = [ck.Checkpoint(w=first_values.copy()) for _ in range(2)]

    def save(g, opts):
        try:
            results[g.rank] = ckpts[g.rank].save(prefix, opts)
        except BaseException as e:  # noqa: BLE001
            results[g.rank] = e

    def run(timeout=10.0):
        threads = [threading.Thread(target=save, args=(g, ck.CheckpointOptions(process_group=g,
                                                                            collective_timeout=timeout)),
                                    name=f"rank{g.rank}", daemon=True) for g in groups]
        for t in threads:
            t.start()
        return threads
    for t in run():
        t.join(30)
    assert results == [prefix + "-1"] * 2

    for c in ckpts:
        c.w[...] = second_values
    _patch(monkeypatch, f"rank{rank_dead}", where, groups)
    threads = run()
    survivor = 1 - rank_dead
    threads[survivor].join(30)
    assert not threads[survivor].is_alive(), "the survivor hung"
    got = results[survivor]

    index_exists = os.path.exists(prefix + "-2.index")
    latest = ck.latest_checkpoint(str(tmp_path / "run"))
    if where in ("plan", "write"):  # before the commit point: nothing visible
        assert isinstance(got, ck.CheckpointError), got
        assert not index_exists and latest == prefix + "-1"
    elif rank_dead == 0:  # rank 0 died after its index write: complete, maybe not yet recorded
        assert isinstance(got, CollectiveTimeoutError) and "its index exists" in str(got), got
        assert index_exists
        assert latest == (prefix + "-2" if where == "commit" else prefix + "-1")
    else:  # another worker died after rank 0 committed: rank 0's save succeeded
        assert got == prefix + "-2"
        assert index_exists and latest == prefix + "-2"
    # latest, and any checkpoint with an index, is complete and holds its values
    want = {prefix + "-1": first_values, prefix + "-2": second_values}
    for p in {latest} | ({prefix + "-2"} if index_exists else set()):
        reader = ck.load_checkpoint(p)
        assert reader.verify() > 0
        np.testing.assert_array_equal(reader.get_tensor(KEY), want[p])

    if not index_exists:  # a later save of the same number, by 3 workers, removes the dead save's leftovers
        monkeypatch.undo()
        groups3, paths = ThreadGroup.create(3), [None] * 3

        def again(g):
            c = ck.Checkpoint(w=np.zeros(6))
            c.restore(prefix + "-1", ck.CheckpointOptions(process_group=g)).assert_consumed()  # save_counter 1
            c.w[...] = second_values
            paths[g.rank] = c.save(prefix, ck.CheckpointOptions(process_group=g, collective_timeout=10))
        ts = [threading.Thread(target=again, args=(g,)) for g in groups3]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert paths == [prefix + "-2"] * 3
        left = sorted(f for f in os.listdir(tmp_path / "run") if "ckpt-2" in f)
        assert left == ["ckpt-2.data-00000-of-00003", "ckpt-2.data-00001-of-00003", "ckpt-2.data-00002-of-00003",
                        "ckpt-2.index"]
        np.testing.assert_array_equal(ck.load_checkpoint(prefix + "-2").get_tensor(KEY), second_values)
