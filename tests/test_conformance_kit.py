"""The conformance kit must fail adapters that break its contract (so passing it means something)."""

from __future__ import annotations

import numpy as np
import pytest

import ckptcore as ck
from ckptcore.testing import AdapterConformance, assert_values_equal, values_of

pytest_plugins = ["pytester"]

KIT = AdapterConformance()


class Box:
    """A user type holding one array in ``.data``."""

    def __init__(self, data):
        self.data = np.asarray(data, np.float64)


class GoodBoxAdapter(ck.Adapter):
    name = "tests.box"

    def attributes(self, obj):
        return ["data"]

    def get_value(self, obj, attr):
        return obj.data

    def restore_buffer(self, obj, attr):
        return obj.data

    def set_value(self, obj, attr, value):
        if value is not obj.data:
            obj.data[...] = value


class ForgetfulAdapter(GoodBoxAdapter):
    """Reports a buffer it never uses, and ignores the restored value."""

    def restore_buffer(self, obj, attr):
        return None

    def set_value(self, obj, attr, value):
        pass


class ReplacingAdapter(GoodBoxAdapter):
    """Swaps in a new array instead of filling the one the user holds."""

    def set_value(self, obj, attr, value):
        obj.data = np.array(value, copy=True)


_HOARD = []


class HoardingAdapter(GoodBoxAdapter):
    """Keeps every restored object alive (a leak)."""

    def set_value(self, obj, attr, value):
        _HOARD.append(obj)
        super().set_value(obj, attr, value)


class MutatingSpecAdapter(GoodBoxAdapter):
    """Writes while being asked for the spec: a failed restore modifies the object."""

    def spec(self, obj, attr):
        obj.data[...] = -1
        return obj.data.shape, obj.data.dtype


class UnnamedAdapter(GoodBoxAdapter):
    """Keeps ck.Adapter's placeholder name, so checkpoints cannot say who wrote them."""

    name = ck.Adapter.name


class InPlaceBoxAdapter(GoodBoxAdapter):
    """A one-value object that hands over its own memory (Adapter.value_in_place)."""

    def attributes(self, obj):
        return ["VARIABLE_VALUE"]

    def value_in_place(self, obj):
        return obj.data


class CopyingInPlaceAdapter(InPlaceBoxAdapter):
    """Hands over a copy as if it were the object's memory: a restore through it changes nothing."""

    def value_in_place(self, obj):
        return obj.data.copy()


def _make(seed):
    return Box(np.random.default_rng(seed).normal(size=(2, 2)))


@pytest.fixture
def box_adapter(request, ckptcore_registry):
    ck.register_adapter(Box, request.param(), name="tests.box")
    yield
    _HOARD.clear()


def _run(test_name, tmp_path):
    test = getattr(KIT, test_name)
    kwargs = dict(make_object=_make, fresh_object=lambda: _make(1), values_of=values_of,
                  make_late_child=None, attach=None, make_mismatched_object=None,
                  ckpt_prefix=str(tmp_path / "ckpt"))
    names = test.__code__.co_varnames[1:test.__code__.co_argcount]
    test(**{n: kwargs[n] for n in names})


ALL_TESTS = sorted(n for n in dir(AdapterConformance) if n.startswith("test_") and n != "test_deferred_restore_native")


@pytest.mark.parametrize("box_adapter", [GoodBoxAdapter, InPlaceBoxAdapter], indirect=True)
@pytest.mark.parametrize("test_name", ALL_TESTS)
def test_a_correct_adapter_passes_every_test(box_adapter, test_name, tmp_path):
    _run(test_name, tmp_path)


@pytest.mark.parametrize("box_adapter, test_name, message", [
    (ForgetfulAdapter, "test_round_trip_write_read", "restored values differ"),
    (ReplacingAdapter, "test_restore_is_in_place", "was replaced by restore"),
    (HoardingAdapter, "test_restored_objects_are_not_kept_alive", "still alive"),
    (MutatingSpecAdapter, "test_shape_mismatch_names_path_and_modifies_nothing", "failed restore"),
    (MutatingSpecAdapter, "test_dtype_mismatch_names_path_and_modifies_nothing", "failed restore"),
    (UnnamedAdapter, "test_checkpoint_records_a_stable_adapter_name", "needs a stable `name`"),
    (CopyingInPlaceAdapter, "test_value_in_place_is_the_value_and_restores_as_the_usual_path",
     r"value_in_place\(\) \(against the usual path\) differ"),
], indirect=["box_adapter"])
def test_a_broken_adapter_fails_the_kit(box_adapter, test_name, message, tmp_path):
    with pytest.raises(AssertionError, match=message):
        _run(test_name, tmp_path)


def test_a_nondeterministic_fixture_is_reported(ckptcore_registry, tmp_path):
    ck.register_adapter(Box, GoodBoxAdapter(), name="tests.box")
    rng = np.random.default_rng()
    with pytest.raises(AssertionError, match="called twice"):
        KIT.test_fixtures_are_deterministic(lambda seed: Box(rng.normal(size=2)), lambda: _make(1), values_of)


def test_a_subclass_without_make_object_says_what_to_define(pytester):
    pytester.makepyfile("""
        from ckptcore.testing import AdapterConformance
        class TestNothing(AdapterConformance):
            pass
    """)
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-k", "round_trip_write_read")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*must define a `make_object` fixture*"])


def test_assert_values_equal_checks_dtype_and_keys():
    with pytest.raises(AssertionError, match="differ at 'a'"):
        assert_values_equal({"a": np.ones(2, np.float32)}, {"a": np.ones(2, np.float64)})
    with pytest.raises(AssertionError, match="different keys"):
        assert_values_equal({"a": np.ones(2)}, {"b": np.ones(2)})
