"""The conformance tests behind :mod:`ckptcore.testing` (fixture API documented there)."""

from __future__ import annotations

import gc
import json
import os
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ckptcore as ck
from ckptcore.graph import walk
from ckptcore.naming import display_path, object_key, object_path
from ckptcore.registry import find_adapter
from ckptcore.restore import pending_count

__all__ = ["AdapterConformance", "values_of", "assert_values_equal"]

#: The name under which the kit attaches the object under test to a checkpoint.
OBJ = "obj"


def values_of(obj: Any) -> dict[str, np.ndarray]:
    """Copies of every value reachable from ``obj``, keyed by checkpoint key.

    Walks the graph through the registry: each attribute
    (``adapter.get_value``), each ``adapter.get_state`` (as a JSON string
    array under ``<path>/.STATE``) and each slot variable (under
    ``<path>/.SLOT/<variable path>/<slot name>``).

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> m = ck.Module(); m.w = np.arange(2.0)
        >>> values_of(m)["w/.ATTRIBUTES/VARIABLE_VALUE"].tolist()
        [0.0, 1.0]
    """
    nodes = walk(obj)
    index = {id(n.obj): n.path for n in nodes}
    out: dict[str, np.ndarray] = {}
    for n in nodes:
        for attr in n.adapter.attributes(n.obj):
            out[object_key(n.path, attr)] = np.array(n.adapter.get_value(n.obj, attr), copy=True)
        state = n.adapter.get_state(n.obj)
        if state is not None:
            out[f"{object_path(n.path)}/.STATE"] = np.array(json.dumps(state, sort_keys=True, default=str))
        for slot in n.adapter.slots(n.obj):
            var_path = index.get(id(slot.variable), ("<unreachable>",))
            out[f"{object_path(n.path)}/.SLOT/{object_path(var_path)}/{slot.name}"] = np.array(slot.value, copy=True)
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical: same shape, same dtype, same bytes (NaN payloads and -0.0 included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.hasobject:
        return bool(np.array_equal(a, b))
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def assert_values_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], what: str = "values") -> None:
    """Assert two ``values_of`` dicts have the same keys, shapes, dtypes and bytes (bit-identical).

    Example:
        >>> import numpy as np
        >>> assert_values_equal({"a": np.ones(2)}, {"a": np.ones(2)})
        >>> try:
        ...     assert_values_equal({"a": np.ones(2)}, {"a": np.zeros(2)})
        ... except AssertionError as e:
        ...     print(str(e).split(":")[0])
        values differ at 'a'
    """
    if set(actual) != set(expected):
        missing = sorted(set(expected) - set(actual))
        extra = sorted(set(actual) - set(expected))
        raise AssertionError(f"{what} have different keys: missing {missing[:5]}, unexpected {extra[:5]}")
    for key in expected:
        a, e = np.asarray(actual[key]), np.asarray(expected[key])
        if not _same(a, e):
            raise AssertionError(f"{what} differ at {key!r}: got {a.dtype}{a.shape} {a!r:.200}, "
                                 f"expected {e.dtype}{e.shape} {e!r:.200}")


def _differ(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return set(a) != set(b) or any(not _same(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _collect_until(done: Callable[[], bool], rounds: int = 3) -> bool:
    """Return once ``done()``; run full garbage collections (at most ``rounds``) until it is.

    Reference counting frees most objects on ``del``; a collection (slow with a
    large framework heap) only runs when something is still alive.
    """
    for _ in range(rounds):
        if done():
            return True
        gc.collect()
    return done()


# -- the mirror: same keys as a live graph, one shape changed ------------------------------
class _Mirror:
    __slots__ = ("attrs", "kids", "state", "__weakref__")

    def __init__(self):
        self.attrs: dict[str, np.ndarray] = {}
        self.kids: list[tuple[str, Any]] = []
        self.state: Any = None


class _MirrorAdapter(ck.Adapter):
    name = "ckptcore.testing.mirror"

    def children(self, obj):
        return obj.kids

    def attributes(self, obj):
        return list(obj.attrs)

    def get_value(self, obj, attr):
        return obj.attrs[attr]

    def get_state(self, obj):
        return obj.state


def _other_shape(value: np.ndarray) -> np.ndarray:
    shape = (2,) if value.ndim == 0 else value.shape[:-1] + (value.shape[-1] + 1,)
    return np.zeros(shape, value.dtype)


def _other_dtype(value: np.ndarray) -> np.ndarray:
    other = np.float32 if value.dtype != np.float32 else np.float64
    return np.zeros(value.shape, other)


def _mirror_with(obj: Any, change: Callable[[np.ndarray], np.ndarray]) -> tuple[_Mirror, tuple[str, ...], str]:
    """A mirror of ``obj``'s graph whose first attribute is replaced by ``change(value)``."""
    nodes = walk(obj)
    mirrors = [_Mirror() for _ in nodes]
    changed: tuple[tuple[str, ...], str] | None = None
    for node, mirror in zip(nodes, mirrors):
        mirror.kids = [(name, mirrors[j]) for name, j in node.children]
        mirror.state = node.adapter.get_state(node.obj)
        for attr in node.adapter.attributes(node.obj):
            value = np.array(node.adapter.get_value(node.obj, attr), copy=True)
            if changed is None:
                value = change(value)
                changed = (node.path, attr)
            mirror.attrs[attr] = value
    if changed is None:
        raise AssertionError("make_object(0) owns no attribute anywhere in its graph: nothing to restore")
    return mirrors[0], changed[0], changed[1]


class AdapterConformance:
    """Subclass as ``Test...`` and provide a ``make_object`` fixture (see :mod:`ckptcore.testing`).

    Example:
        >>> import numpy as np, pytest
        >>> class TestArrays(AdapterConformance):
        ...     @pytest.fixture
        ...     def make_object(self):
        ...         return lambda seed: np.random.default_rng(seed).normal(size=3)
        >>> [t for t in dir(TestArrays) if t.startswith("test_round")]
        ['test_round_trip_as_root', 'test_round_trip_save_restore', 'test_round_trip_write_read']
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The native deferred-restore test exists only where the adapter's objects can gain
        # children after restore(): subclasses that define make_late_child and attach.
        def defined_below_kit(name: str) -> bool:
            owner = next(k for k in cls.__mro__ if name in vars(k))
            return owner is not AdapterConformance

        if not (defined_below_kit("make_late_child") and defined_below_kit("attach")):
            cls.test_deferred_restore_native = None  # type: ignore[method-assign,assignment]

    # -- fixtures with defaults ------------------------------------------------------------
    @pytest.fixture
    def make_object(self) -> Callable[[int], Any]:
        """Required: ``make(seed) -> object`` (see :mod:`ckptcore.testing`)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `make_object` fixture returning make(seed) -> object "
            "(see ckptcore.testing)")

    @pytest.fixture
    def fresh_object(self, make_object) -> Callable[[], Any]:
        """``fresh() -> object`` with values unlike ``make_object(0)``'s; default ``make_object(1)``."""
        return lambda: make_object(1)

    @pytest.fixture
    def values_of(self) -> Callable[[Any], dict[str, np.ndarray]]:
        """``values_of(obj) -> {name: array}``; default :func:`values_of` (graph walk)."""
        return values_of

    @pytest.fixture
    def make_late_child(self) -> Callable[[int], Any] | None:
        """Optional ``make(seed) -> child`` for the native deferred-restore test."""
        return None

    @pytest.fixture
    def attach(self) -> Callable[[Any, str, Any], None] | None:
        """Optional ``attach(parent, name, child)``, the framework's way of adding a child."""
        return None

    @pytest.fixture
    def make_mismatched_object(self) -> Callable[[], Any] | None:
        """Optional ``make() -> object`` with one value of another shape; default: a mirror checkpoint."""
        return None

    @pytest.fixture
    def ckpt_prefix(self, tmp_path) -> str:
        """Where checkpoints are written; default: a fresh local directory."""
        return os.path.join(str(tmp_path), "ckpt")

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _write(obj: Any, prefix: str, **extra: Any) -> str:
        return ck.Checkpoint(**{OBJ: obj}, **extra).write(prefix)

    # -- the author's fixtures behave as documented ---------------------------------------------
    def test_fixtures_are_deterministic(self, make_object, fresh_object, values_of):
        a, b = make_object(0), make_object(0)
        assert a is not b, "make_object(seed) must return a new object on every call"
        va = values_of(a)
        assert va, "values_of(make_object(0)) is empty: the object has nothing to checkpoint"
        assert_values_equal(values_of(b), va, "make_object(0) called twice gave values that")
        assert _differ(values_of(make_object(1)), va), "make_object(1) has the same values as make_object(0)"
        assert _differ(values_of(fresh_object()), va), "fresh_object() has the same values as make_object(0)"
        assert find_adapter(a) is not None

    # -- round trip ------------------------------------------------------------------------
    def test_round_trip_write_read(self, make_object, fresh_object, values_of, ckpt_prefix):
        src = make_object(0)
        path = self._write(src, ckpt_prefix)
        dst = fresh_object()
        ck.Checkpoint(**{OBJ: dst}).read(path).assert_consumed().assert_nontrivial_match()
        assert_values_equal(values_of(dst), values_of(src), "restored values")

    def test_round_trip_save_restore(self, make_object, fresh_object, values_of, ckpt_prefix):
        src = make_object(0)
        path = ck.Checkpoint(**{OBJ: src}).save(ckpt_prefix)
        assert ck.latest_checkpoint(os.path.dirname(ckpt_prefix)) == path
        dst = fresh_object()
        ckpt = ck.Checkpoint(**{OBJ: dst})
        ckpt.restore(ck.latest_checkpoint(os.path.dirname(ckpt_prefix))).assert_consumed()
        assert int(ckpt.save_counter) == 1
        assert_values_equal(values_of(dst), values_of(src), "restored values")

    def test_round_trip_as_root(self, make_object, fresh_object, values_of, ckpt_prefix):
        src = make_object(0)
        path = ck.Checkpoint(root=src).write(ckpt_prefix)
        dst = fresh_object()
        ck.Checkpoint(root=dst).read(path).assert_consumed()
        assert_values_equal(values_of(dst), values_of(src), "restored values (object as root)")

    # -- in place -------------------------------------------------------------------------
    def test_restore_is_in_place(self, make_object, fresh_object, ckpt_prefix):
        src = make_object(0)
        path = self._write(src, ckpt_prefix)
        dst = fresh_object()
        before = walk(dst)
        buffers = []
        for n in before:
            for attr in n.adapter.attributes(n.obj):
                buf = n.adapter.restore_buffer(n.obj, attr)
                if isinstance(buf, np.ndarray):
                    buffers.append((n.path, attr, buf, buf.__array_interface__["data"][0]))
        ck.Checkpoint(**{OBJ: dst}).read(path).assert_consumed()
        after = walk(dst)
        assert [n.path for n in after] == [n.path for n in before], "restore changed the object graph"
        for b, a in zip(before, after):
            assert a.obj is b.obj, f"restore replaced the object at {display_path(a.path)!r} instead of filling it"
        src_nodes = {n.path: n for n in walk(src)}
        for path_, attr, buf, address in buffers:
            where = f"{display_path(path_)} ({attr})"
            node = next(n for n in after if n.path == path_)
            again = node.adapter.restore_buffer(node.obj, attr)
            assert isinstance(again, np.ndarray) and again.__array_interface__["data"][0] == address, (
                f"the buffer of {where} was replaced by restore (it must be filled in place)")
            s = src_nodes[path_]
            expected = np.asarray(s.adapter.get_value(s.obj, attr))
            assert _same(np.asarray(buf), expected), f"the buffer of {where} does not hold the restored value"

    def test_value_in_place_is_the_value_and_restores_as_the_usual_path(self, make_object, fresh_object, values_of,
                                                                       ckpt_prefix):
        # Adapter.value_in_place lets a restore skip attributes/spec/restore_buffer/set_value: what it
        # returns must be the value's own memory, as spec() describes it, and restoring through it
        # must give what the usual path gives
        path = self._write(make_object(0), ckpt_prefix)
        dst = fresh_object()
        for n in walk(dst):
            buf = n.adapter.value_in_place(n.obj)
            if buf is None:
                continue
            where = f"value_in_place() of {display_path(n.path)}"
            attrs = list(n.adapter.attributes(n.obj))
            assert attrs == ["VARIABLE_VALUE"], f"{where} returned memory, but the object's attributes are {attrs}"
            assert isinstance(buf, np.ndarray) and buf.flags.writeable and buf.flags.c_contiguous, (
                f"{where} must return None or a writable C-contiguous numpy array")
            shape, dtype = n.adapter.spec(n.obj, "VARIABLE_VALUE")
            assert buf.shape == tuple(shape) and buf.dtype == np.dtype(dtype), (
                f"{where} has shape {buf.shape} and dtype {buf.dtype}; spec() says {tuple(shape)}, {np.dtype(dtype)}")
        ck.Checkpoint(**{OBJ: dst}).read(path).assert_consumed()
        from ckptcore.restore import session

        usual = fresh_object()
        with pytest.MonkeyPatch.context() as m:
            m.setattr(session, "_offers_in_place", lambda cls: False)
            ck.Checkpoint(**{OBJ: usual}).read(path).assert_consumed()
        assert_values_equal(values_of(dst), values_of(usual),
                            "values restored through value_in_place() (against the usual path)")

    def test_leaf_value_saves_what_the_usual_path_saves(self, make_object, ckpt_prefix):
        # Adapter.leaf_value lets a save skip children/attributes/get_value/get_state/slots: where it
        # returns an array, the object must be a leaf with VARIABLE_VALUE alone, the array must be
        # get_value's, and the checkpoint must hold what the usual path writes
        from ckptcore.save import plan as saver

        src = make_object(0)
        for n in walk(src):
            got = n.adapter.leaf_value(n.obj)
            if got is None:
                continue
            where = f"leaf_value() of {display_path(n.path)}"
            assert not list(n.adapter.children(n.obj)), f"{where} returned a value, but the object has children"
            attrs = list(n.adapter.attributes(n.obj))
            assert attrs == ["VARIABLE_VALUE"], f"{where} returned a value, but the object's attributes are {attrs}"
            assert n.adapter.get_state(n.obj) is None and not list(n.adapter.slots(n.obj) or ()), (
                f"{where} returned a value, but the object has state or slots to save")
            assert _same(np.asarray(got), np.asarray(n.adapter.get_value(n.obj, "VARIABLE_VALUE"))), (
                f"{where} is not what get_value() gives")
        shortcut = ck.load_checkpoint(self._write(src, ckpt_prefix + "-leaf"))
        with pytest.MonkeyPatch.context() as m:
            m.setattr(saver, "_LEAF_VALUE", {})
            m.setattr(saver, "_offers_leaf_value", lambda cls: False)
            usual = ck.load_checkpoint(self._write(make_object(0), ckpt_prefix + "-usual"))
        assert sorted(shortcut.keys()) == sorted(usual.keys()), "leaf_value() changed the checkpoint's keys"
        for key in usual.keys():
            assert _same(shortcut.get_tensor(key), usual.get_tensor(key)), f"leaf_value() changed {key}"

    # -- deferred restore (restore-on-create) -------------------------------------------------------
    def test_deferred_restore_under_module(self, make_object, fresh_object, values_of, ckpt_prefix):
        src = ck.Module()
        setattr(src, OBJ, make_object(0))
        path = ck.Checkpoint(model=src).write(ckpt_prefix)
        baseline = pending_count()
        dst = ck.Module()
        status = ck.Checkpoint(model=dst).read(path)
        assert pending_count() == baseline + 1, "restore did not queue the value for the missing object"
        setattr(dst, OBJ, fresh_object())           # created after restore()
        assert_values_equal(values_of(getattr(dst, OBJ)), values_of(getattr(src, OBJ)),
                            "values of an object attached after restore()")
        status.assert_consumed()
        assert pending_count() == baseline

    def test_deferred_restore_native(self, make_object, fresh_object, make_late_child, attach, values_of,
                                     ckpt_prefix):
        assert make_late_child is not None and attach is not None, "make_late_child and attach must return callables"
        src = make_object(0)
        attach(src, "late", make_late_child(0))
        expected = values_of(src)
        path = self._write(src, ckpt_prefix)
        dst = fresh_object()
        status = ck.Checkpoint(**{OBJ: dst}).read(path)
        with pytest.raises(AssertionError):
            status.assert_consumed()                 # "late" is still waiting
        attach(dst, "late", make_late_child(1))
        assert_values_equal(values_of(dst), expected, "values after attaching a child created after restore()")
        status.assert_consumed()

    # -- partial restores ------------------------------------------------------------------------
    def test_partial_restore_unused_values(self, make_object, fresh_object, values_of, ckpt_prefix):
        src = make_object(0)
        path = self._write(src, ckpt_prefix, extra=np.arange(3.0))
        dst = fresh_object()
        status = ck.Checkpoint(**{OBJ: dst}).read(path).expect_partial()
        with pytest.raises(ck.AssertionFailedError, match="extra"):
            status.assert_consumed()
        status.assert_existing_objects_matched().assert_nontrivial_match()
        assert_values_equal(values_of(dst), values_of(src), "values restored by a partial restore")

    def test_partial_restore_missing_values(self, make_object, fresh_object, ckpt_prefix):
        path = self._write(make_object(0), ckpt_prefix)
        status = ck.Checkpoint(**{OBJ: fresh_object()}, extra=np.zeros(3)).read(path)
        with pytest.raises(ck.AssertionFailedError, match="extra"):
            status.assert_existing_objects_matched()
        with pytest.raises(AssertionError, match="extra"):
            status.assert_consumed()

    def test_partial_restore_warning_and_expect_partial(self, make_object, fresh_object, ckpt_prefix):
        path = self._write(make_object(0), ckpt_prefix, extra=np.arange(3.0))

        def restore(expect_partial: bool) -> list:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ckpt = ck.Checkpoint(**{OBJ: fresh_object()})
                status = ckpt.read(path)
                if expect_partial:
                    status.expect_partial()
                ref = weakref.ref(ckpt)
                del ckpt, status
                assert _collect_until(lambda: ref() is None), "the Checkpoint outlived its last reference"
            return [w for w in caught if issubclass(w.category, ck.PartialRestoreWarning)]

        warned = restore(expect_partial=False)
        assert len(warned) == 1 and "extra" in str(warned[0].message)
        assert restore(expect_partial=True) == []

    # -- errors ----------------------------------------------------------------------------------
    def _write_mirror(self, obj: Any, change, prefix: str) -> tuple[str, str]:
        mirror, bad_path, attr = _mirror_with(obj, change)
        name = ck.register_adapter(_Mirror, _MirrorAdapter(), name="ckptcore.testing.mirror")
        try:
            path = self._write(mirror, prefix)
        finally:
            ck.registry.unregister_plugin(name)
        return path, object_key((OBJ,) + tuple(bad_path), attr)

    def _assert_rejected(self, path: str, error: type, where: str, fresh_object, values_of) -> None:
        dst = fresh_object()
        before = values_of(dst)
        with pytest.raises(error) as info:
            ck.Checkpoint(**{OBJ: dst}).read(path)
        assert isinstance(info.value, ValueError)
        assert where in str(info.value), f"the error does not name {where!r}: {info.value}"
        assert_values_equal(values_of(dst), before, "values after a failed restore (nothing may change)")

    def test_shape_mismatch_names_path_and_modifies_nothing(self, make_object, fresh_object, make_mismatched_object,
                                                            values_of, ckpt_prefix):
        if make_mismatched_object is not None:
            path, where = self._write(make_mismatched_object(), ckpt_prefix), OBJ
        else:
            path, where = self._write_mirror(make_object(0), _other_shape, ckpt_prefix)
        self._assert_rejected(path, ck.ShapeMismatchError, where, fresh_object, values_of)

    def test_dtype_mismatch_names_path_and_modifies_nothing(self, make_object, fresh_object, values_of, ckpt_prefix):
        path, where = self._write_mirror(make_object(0), _other_dtype, ckpt_prefix)
        self._assert_rejected(path, ck.DtypeMismatchError, where, fresh_object, values_of)

    def test_checkpoint_records_a_stable_adapter_name(self, make_object, ckpt_prefix):
        ckpt = ck.Checkpoint(**{OBJ: make_object(0)})
        adapter = find_adapter(getattr(ckpt, OBJ))     # plain lists and dicts are wrapped on attachment
        name = getattr(adapter, "name", None)
        assert isinstance(name, str) and name and name != ck.Adapter.name, (
            f"{type(adapter).__qualname__} needs a stable `name` (it is written into every checkpoint)")
        index = ck.load_checkpoint(ckpt.write(ckpt_prefix)).index
        node_id = dict(index.nodes[0].children)[OBJ]
        assert index.nodes[node_id].adapter == name

    # -- leaks -----------------------------------------------------------------------------------
    def test_restored_objects_are_not_kept_alive(self, make_object, fresh_object, ckpt_prefix):
        path = self._write(make_object(0), ckpt_prefix)
        baseline = pending_count()
        dst = fresh_object()
        refs = []
        for n in walk(dst):
            try:
                refs.append((display_path(n.path), weakref.ref(n.obj)))
            except TypeError:
                continue
        if not refs:
            pytest.skip("no object in the graph supports weak references")
        ckpt = ck.Checkpoint(**{OBJ: dst})
        status = ckpt.read(path).assert_consumed()
        del dst, n, ckpt, status
        _collect_until(lambda: all(r() is None for _, r in refs))
        alive = [p for p, r in refs if r() is not None]
        assert not alive, f"objects still alive after restore and del: {alive[:5]}"
        assert pending_count() == baseline

    def test_pending_restores_are_released(self, make_object, fresh_object, ckpt_prefix):
        src = ck.Module()
        setattr(src, OBJ, make_object(0))
        path = ck.Checkpoint(model=src).write(ckpt_prefix)
        baseline = pending_count()
        parent = ck.Module()
        ckpt = ck.Checkpoint(model=parent)
        status = ckpt.read(path).expect_partial()
        assert pending_count() == baseline + 1
        ref = weakref.ref(parent)
        del parent, ckpt, status
        _collect_until(lambda: ref() is None and pending_count() == baseline)
        assert ref() is None, "a queued restore keeps its parent alive"
        assert pending_count() == baseline, "the queued restore outlived its parent"
