"""Load-status assertions (pass and fail), chaining, and the PartialRestoreWarning."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import ckptcore as ck


def _module(**attrs):
    m = ck.Module()
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


@pytest.fixture
def path(prefix):
    return ck.Checkpoint(model=_module(a=np.ones(1), b=np.full(1, 2.0))).write(prefix)


def key(name):
    return f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE"


# -- assert_consumed ---------------------------------------------------------------------

def test_assert_consumed_passes_and_chains(path):
    status = ck.Checkpoint(model=_module(a=np.zeros(1), b=np.zeros(1))).read(path)
    assert status.assert_consumed() is status
    assert status.assert_consumed().assert_existing_objects_matched().assert_nontrivial_match() is status


def test_assert_consumed_fails_on_unused_checkpoint_value(path):
    status = ck.Checkpoint(model=_module(a=np.zeros(1))).read(path)
    with pytest.raises(AssertionError) as info:
        status.assert_consumed()
    assert isinstance(info.value, ck.AssertionFailedError) and isinstance(info.value, ck.CheckpointError)
    msg = str(info.value)
    assert "1 checkpoint values without a matching object" in msg and key("b") in msg
    status.expect_partial()


def test_assert_consumed_fails_on_unmatched_live_object(path):
    status = ck.Checkpoint(model=_module(a=np.zeros(1), b=np.zeros(1), c=np.zeros(1))).read(path)
    with pytest.raises(AssertionError, match=r"1 live objects without a value in the checkpoint: model/c"):
        status.assert_consumed()


def test_assert_consumed_fails_on_unmatched_live_attribute(tmp_path):
    # a Module in the checkpoint matched a Module now holding a variable the checkpoint lacks
    p = ck.Checkpoint(model=_module(sub=ck.Module())).write(str(tmp_path / "c"))
    status = ck.Checkpoint(model=_module(sub=_module(v=np.zeros(1)))).read(p)
    with pytest.raises(AssertionError, match="model/sub/v"):
        status.assert_consumed()


def test_assert_consumed_becomes_true_once_deferred_values_land(path):
    model = _module(a=np.zeros(1))
    status = ck.Checkpoint(model=model).read(path)
    with pytest.raises(AssertionError):
        status.assert_consumed()
    model.b = np.zeros(1)
    status.assert_consumed()


def test_failure_message_lists_count_and_first_few_paths(tmp_path):
    n = 12
    p = ck.Checkpoint(model=_module(**{f"v{i:02d}": np.ones(1) for i in range(n)})).write(str(tmp_path / "c"))
    status = ck.Checkpoint(model=ck.Module()).read(p)
    with pytest.raises(AssertionError) as info:
        status.assert_consumed()
    msg = str(info.value)
    assert f"{n} checkpoint values without a matching object" in msg
    listed = re.findall(r"model/v\d\d/", msg)
    assert 1 <= len(listed) <= 5  # the first few, not all twelve
    assert f"({n - len(listed)} more)" in msg
    assert p in msg  # names the checkpoint
    live_status = ck.Checkpoint(model=_module(**{f"x{i:02d}": np.ones(1) for i in range(n)})).read(p)
    with pytest.raises(AssertionError) as info2:
        live_status.assert_existing_objects_matched()
    assert f"{n} live objects without a value" in str(info2.value)
    assert len(re.findall(r"model/x\d\d", str(info2.value))) <= 5
    status.expect_partial()
    live_status.expect_partial()


# -- assert_existing_objects_matched -------------------------------------------------------

def test_existing_objects_matched_passes_with_unused_checkpoint_values(path):
    status = ck.Checkpoint(model=_module(a=np.zeros(1))).read(path)
    assert status.assert_existing_objects_matched() is status
    status.expect_partial()


def test_existing_objects_matched_fails_on_live_object_without_value(path):
    status = ck.Checkpoint(model=_module(a=np.zeros(1), extra=ck.Variable(1.0))).read(path)
    with pytest.raises(AssertionError, match=r"1 live objects without a value in the checkpoint: model/extra"):
        status.assert_existing_objects_matched()
    status.expect_partial()


def test_existing_objects_rechecked_after_new_objects_appear(path):
    model = _module(a=np.zeros(1))
    status = ck.Checkpoint(model=model).read(path)
    status.assert_existing_objects_matched()
    model.new = np.zeros(1)  # not in the checkpoint
    with pytest.raises(AssertionError, match="model/new"):
        status.assert_existing_objects_matched()
    status.expect_partial()


def test_empty_containers_do_not_fail_existing_objects_matched(path):
    status = ck.Checkpoint(model=_module(a=np.zeros(1), b=np.zeros(1), layers=[], heads={})).read(path)
    status.assert_existing_objects_matched()


# -- assert_nontrivial_match -----------------------------------------------------------------

def test_nontrivial_match_passes_when_something_matched(path):
    status = ck.Checkpoint(model=_module(a=np.zeros(1))).read(path)
    assert status.assert_nontrivial_match() is status
    status.expect_partial()


def test_nontrivial_match_fails_when_only_root_matched(path):
    status = ck.Checkpoint(other=np.zeros(1)).read(path)
    with pytest.raises(AssertionError, match="assert_nontrivial_match"):
        status.assert_nontrivial_match()
    status.expect_partial()


def test_nontrivial_match_ignores_save_counter(prefix):
    p = ck.Checkpoint(a=np.ones(1)).save(prefix)
    status = ck.Checkpoint(b=np.zeros(1)).restore(p)
    with pytest.raises(AssertionError):
        status.assert_nontrivial_match()
    status.expect_partial()


def test_expect_partial_returns_status(path):
    status = ck.Checkpoint(model=ck.Module()).read(path)
    assert status.expect_partial() is status


def test_chained_failure_stops_at_first_failing_assertion(path):
    status = ck.Checkpoint(model=_module(a=np.zeros(1))).read(path)
    with pytest.raises(AssertionError, match="assert_consumed"):
        status.assert_nontrivial_match().assert_existing_objects_matched().assert_consumed()
    status.expect_partial()


# -- PartialRestoreWarning -------------------------------------------------------------------

def _partial_warnings(record):
    return [w for w in record if issubclass(w.category, ck.PartialRestoreWarning)]


def test_partial_restore_warns_once_on_gc_with_one_summary(tmp_path, collect):
    n = 8
    p = ck.Checkpoint(model=_module(**{f"v{i}": np.ones(1) for i in range(n)})).write(str(tmp_path / "c"))
    collect()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ckpt = ck.Checkpoint(model=_module(v0=np.zeros(1)))
        status = ckpt.read(p)
        assert not _partial_warnings(record)  # nothing while the checkpoint lives
        del ckpt, status
        collect()
    got = _partial_warnings(record)
    assert len(got) == 1
    msg = str(got[0].message)
    assert f"{n - 1} values" in msg and "expect_partial" in msg and "more" in msg
    assert msg.count("/.ATTRIBUTES/") <= 5


def test_no_warning_after_expect_partial(path, collect):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ck.Checkpoint(model=_module(a=np.zeros(1))).read(path).expect_partial()
        collect()
    assert not _partial_warnings(record)


def test_no_warning_for_complete_restore(path, collect):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ck.Checkpoint(model=_module(a=np.zeros(1), b=np.zeros(1))).read(path)
        collect()
    assert not _partial_warnings(record)


def test_a_failed_restore_raises_and_does_not_warn_later(path, collect):
    # the error says nothing was restored; the unreachable session must not say it again when collected
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(ck.ShapeMismatchError):
            ck.Checkpoint(model=_module(a=np.zeros(3), b=np.zeros(1))).read(path)
        collect()
    assert not _partial_warnings(record)


def test_no_warning_when_deferred_values_land_after_checkpoint_is_gone(path, collect):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = _module(a=np.zeros(1))
        ck.Checkpoint(model=model).read(path)  # checkpoint and status dropped at once
        collect()
        model.b = np.zeros(1)                  # the queued value still lands
        collect()
        assert model.b[0] == 2.0
    assert not _partial_warnings(record)


def test_warning_when_deferred_parent_dies_unfilled(path, collect):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = _module(a=np.zeros(1))
        ck.Checkpoint(model=model).read(path)
        del model
        collect()
    got = _partial_warnings(record)
    assert len(got) == 1 and key("b") in str(got[0].message)


def test_only_live_objects_holding_values_count(path):
    """As in TF: a new Module without variables is not "unmatched"; its variables are, each once."""
    model = _module(a=np.zeros(1), b=np.zeros(1), empty=ck.Module(), extra=_module(deep=_module(v=np.zeros(1))))
    status = ck.Checkpoint(model=model).read(path)
    with pytest.raises(AssertionError) as info:
        status.assert_consumed()
    msg = str(info.value)
    assert "1 live objects without a value in the checkpoint: model/extra/deep/v" in msg
    assert "model/empty" not in msg
    del model.extra
    status.assert_consumed()


def test_invalid_live_graph_is_an_error_not_a_pass(tmp_path):
    p = ck.Checkpoint(root=_module(a=np.ones(1)), x=np.ones(1)).write(str(tmp_path / "c"))
    model = _module(a=np.zeros(1))
    status = ck.Checkpoint(root=model, x=np.zeros(1)).read(p)
    status.assert_consumed()
    model.x = np.zeros(1)  # now the root has two different dependencies named "x"
    with pytest.raises(ck.CheckpointError, match="'x'"):
        status.assert_consumed()


def test_warning_turned_into_error_is_reported_not_swallowed(path, collect, monkeypatch):
    import sys

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ck.PartialRestoreWarning)
        ck.Checkpoint(model=_module(a=np.zeros(1))).read(path)
        collect()
    assert [type(e) for e in seen] == [ck.PartialRestoreWarning]
