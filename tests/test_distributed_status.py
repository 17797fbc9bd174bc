"""Status assertions after a collective restore give the same answer on every worker (ckptcore.distributed.status),
on an in-process group of threads (ckptcore.distributed.ThreadGroup)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thread_ranks import on_threads

import ckptcore as ck
from ckptcore.distributed import CollectiveTimeoutError, Group

NAMES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def saved():
    return ck.Checkpoint(**{n: np.full(2, i, np.float32) for i, n in enumerate(NAMES[:2])}).write(
        "memory://test/dstatus/ab")


def _restore(path, g, names, assertion, timeout=30):
    status = ck.Checkpoint(**{n: np.zeros(2, np.float32) for n in names}).read(
        path, ck.CheckpointOptions(process_group=g, collective_timeout=timeout)).expect_partial()
    getattr(status, assertion)()  # (expect_partial silences the warning only, not the assertions)
    return "ok"


def test_one_rank_with_an_extra_object_fails_assert_consumed_on_every_rank(saved):
    out = on_threads(3, lambda g: _restore(saved, g, ["a", "b", "c"] if g.rank == 1 else ["a", "b"],
                                           "assert_consumed"))
    assert all(isinstance(e, ck.AssertionFailedError) for e in out), out
    assert len({str(e) for e in out}) == 1  # the same message everywhere
    msg = str(out[0])
    assert msg.startswith("assert_consumed failed on 1 of 3 ranks (rank 1):")
    assert "rank 1: restore of" in msg and ": c" in msg and "rank 0:" not in msg


def test_one_rank_missing_an_object_fails_on_every_rank_naming_the_value(saved):
    out = on_threads(2, lambda g: _restore(saved, g, ["a"] if g.rank == 0 else ["a", "b"], "assert_consumed"))
    assert all(isinstance(e, AssertionError) for e in out), out
    assert "rank 0:" in str(out[1]) and "b/.ATTRIBUTES/VARIABLE_VALUE" in str(out[1])
    # assert_existing_objects_matched allows unused checkpoint values: it passes on both
    out = on_threads(2, lambda g: _restore(saved, g, ["a"] if g.rank == 0 else ["a", "b"],
                                           "assert_existing_objects_matched"))
    assert out == ["ok", "ok"]


def test_existing_objects_and_nontrivial_match_agree_too(saved):
    out = on_threads(2, lambda g: _restore(saved, g, ["a", "b", "d"] if g.rank == 1 else ["a", "b"],
                                           "assert_existing_objects_matched"))
    assert all(isinstance(e, ck.AssertionFailedError) for e in out) and str(out[0]) == str(out[1])
    assert ": d" in str(out[0])
    out = on_threads(2, lambda g: _restore(saved, g, ["c"] if g.rank == 0 else ["a"], "assert_nontrivial_match"))
    assert all(isinstance(e, ck.AssertionFailedError) for e in out)
    assert str(out[1]).startswith("assert_nontrivial_match failed on 1 of 2 ranks (rank 0):")


def test_different_assertions_on_different_ranks_are_an_error(saved):
    out = on_threads(2, lambda g: _restore(saved, g, ["a", "b"],
                                           "assert_consumed" if g.rank == 0 else "assert_nontrivial_match"))
    assert all(isinstance(e, ck.CheckpointError) and not isinstance(e, AssertionError) for e in out), out
    assert "different status assertions" in str(out[0])


def test_a_rank_that_skips_the_assertion_makes_the_others_fail_in_bounded_time(saved):
    def fn(g):
        status = ck.Checkpoint(a=np.zeros(2, np.float32), b=np.zeros(2, np.float32)).read(
            saved, ck.CheckpointOptions(process_group=g, collective_timeout=0.5)).expect_partial()
        if g.rank == 0:
            status.assert_consumed()
        return "skipped"
    out = on_threads(2, fn)
    assert isinstance(out[0], CollectiveTimeoutError) and "assert_consumed" in str(out[0])
    assert out[1] == "skipped"


def test_a_single_process_restore_does_not_exchange(saved, monkeypatch):
    calls = []
    monkeypatch.setattr(Group, "all_gather", lambda self, data, timeout: calls.append(data) or [data])
    status = ck.Checkpoint(a=np.zeros(2, np.float32)).read(saved)
    with pytest.raises(ck.AssertionFailedError) as e:
        status.assert_consumed()
    assert str(e.value).startswith("restore of")  # the plain single-process message
    assert calls == []
    status.expect_partial()  # b is left out on purpose: no PartialRestoreWarning when the session goes


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True), min_size=1, max_size=4),
       st.sampled_from(["assert_consumed", "assert_existing_objects_matched", "assert_nontrivial_match"]))
def test_every_rank_gets_the_same_outcome_failing_iff_some_rank_fails_alone(saved, graphs, assertion):
    def alone(names):
        try:
            _restore(saved, None, names, assertion)
            return True
        except AssertionError:
            return False
    local_ok = [alone(names) for names in graphs]
    out = on_threads(len(graphs), lambda g: _restore(saved, g, graphs[g.rank], assertion))
    if all(local_ok):
        assert out == ["ok"] * len(graphs)
    else:
        assert all(isinstance(e, ck.AssertionFailedError) for e in out), out
        assert len({str(e) for e in out}) == 1
        failing = [r for r, ok in enumerate(local_ok) if not ok]
        named = [int(line.split(":")[0].split()[1]) for line in str(out[0]).splitlines() if line.startswith("rank ")]
        assert named == failing
