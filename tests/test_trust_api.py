"""Issue 13: Checkpoint's constructor as TF's; options and adapters validated where they are made."""

from __future__ import annotations

import copy
import gc
import weakref

import numpy as np
import pytest

import ckptcore as ck


# -- Checkpoint(root=..., **kwargs) ----------------------------------------------------------------
def test_a_keyword_clashing_with_a_dependency_of_root_is_a_value_error_at_construction():
    root = ck.Module()
    root.v = ck.Variable(1.0)
    with pytest.raises(ValueError, match=r"keyword argument 'v'.*root already has a dependency named 'v'"):
        ck.Checkpoint(root=root, v=ck.Variable(2.0))
    # the same object is fine (TF: nothing is attached twice)
    ck.Checkpoint(root=root, v=root.v).write("memory://trust_api/same/c")


def test_root_given_as_a_weakref_is_held_weakly(tmp_path):
    class Model(ck.Module):
        pass

    m = Model()
    m.w = ck.Variable(np.arange(3.0))
    ckpt = ck.Checkpoint(root=weakref.ref(m), step=ck.Variable(7))
    path = ckpt.save(str(tmp_path / "ckpt"))
    assert {k for k, _ in ck.list_variables(path)} == {
        "w/.ATTRIBUTES/VARIABLE_VALUE", "step/.ATTRIBUTES/VARIABLE_VALUE", "save_counter/.ATTRIBUTES/VARIABLE_VALUE"}
    m2 = Model()
    m2.w = ck.Variable(np.zeros(3))
    ck.Checkpoint(root=weakref.ref(m2), step=ck.Variable(0)).restore(path).assert_consumed()
    assert m2.w.numpy().tolist() == [0.0, 1.0, 2.0]
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None  # the Checkpoint kept no strong reference
    with pytest.raises(ck.CheckpointError, match="no longer exists"):
        ckpt.save(str(tmp_path / "ckpt"))


def test_deepcopy_of_a_checkpoint(tmp_path):
    w = ck.Variable(np.ones(2))
    ckpt = ck.Checkpoint(w=w, heads={"a": np.full(1, 3.0)})
    ckpt.save(str(tmp_path / "a" / "ckpt"))
    ckpt.restore(str(tmp_path / "a" / "ckpt-1"))
    twin = copy.deepcopy(ckpt)
    assert twin.w is not w and twin.w.numpy().tolist() == [1.0, 1.0]
    assert int(twin.save_counter) == 1 and twin.save_counter is not ckpt.save_counter
    w.assign(np.zeros(2))
    path = twin.save(str(tmp_path / "b" / "ckpt"))  # its own writer and lock, counter continues
    assert path.endswith("ckpt-2")
    assert ck.load_checkpoint(path).get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [1.0, 1.0]
    assert int(ckpt.save_counter) == 1


# -- options -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"enable_async": "yes"}, {"verify_checksums": 1}, {"verify_before_restore": None},
    {"max_retries": -1}, {"max_retries": 2.5}, {"max_retries": True}, {"storage_options": ["anon"]},
    {"experimental_io_device": 3},
])
def test_invalid_options_fail_where_they_are_made(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ck.InvalidArgumentError, match=name) as e:
        ck.CheckpointOptions(**kwargs)
    assert isinstance(e.value, ValueError) and isinstance(e.value, TypeError)


def test_valid_options_still_work():
    o = ck.CheckpointOptions(enable_async=True, max_retries=0, storage_options=None, experimental_io_device="/cpu:0")
    assert o.enable_async and o.max_retries == 0 and dict(o.storage_options) == {}


@pytest.mark.parametrize("call", ["write", "save", "read", "restore", "manager"])
def test_options_passed_as_a_dict_are_refused(tmp_path, call):
    ckpt = ck.Checkpoint(w=np.ones(1))
    path = ckpt.write(str(tmp_path / "w"))
    with pytest.raises(ck.InvalidArgumentError, match=r"options must be a ck\.CheckpointOptions, got dict"):
        if call == "manager":
            ck.CheckpointManager(ckpt, str(tmp_path / "m"), max_to_keep=1).save(options={"enable_async": True})
        elif call in ("write", "save"):
            getattr(ckpt, call)(str(tmp_path / "x"), options={"enable_async": True})
        else:
            getattr(ckpt, call)(path, options={"verify_checksums": False})


# -- adapters ------------------------------------------------------------------------------------------
class Thing:
    def __init__(self):
        self.v = np.arange(2.0)


class GoodAdapter(ck.Adapter):
    name = "test.trust_api.good"

    def attributes(self, obj):
        return ["v"]

    def get_value(self, obj, attr):
        return obj.v

    def _helper(self):  # private helpers are fine
        return None


def test_an_adapter_class_instead_of_an_instance():
    with pytest.raises(ck.InvalidArgumentError, match=r"instance.*register GoodAdapter\(\)"):
        ck.register_adapter(Thing, GoodAdapter)


def test_an_adapter_without_a_name():
    class Nameless:
        def children(self, obj):
            return []

    with pytest.raises(ck.InvalidArgumentError, match="has no name"):
        ck.register_adapter(Thing, Nameless())

    class Empty(GoodAdapter):
        name = ""

    with pytest.raises(ck.InvalidArgumentError, match="has no name"):
        ck.AdapterRegistration(types=(Thing,), adapter=Empty())


def test_an_adapter_inheriting_the_placeholder_name_is_refused_where_registered():
    class Inherits(ck.Adapter):   # no `name`: it would be recorded as ck.Adapter's "unnamed"
        def children(self, obj):
            return []

    for register in (lambda a: ck.register_adapter(Thing, a),
                     lambda a: ck.AdapterRegistration(types=(Thing,), adapter=a)):
        refused = r"Inherits has no name of its own.*give \S*Inherits a `name`"
        with pytest.raises(ck.InvalidArgumentError, match=refused):
            register(Inherits())
        with pytest.raises(ck.InvalidArgumentError, match="no name of its own"):
            register(ck.Adapter())

    class Named(Inherits):
        name = "test.trust_api.named"

    class Sub(Named):   # a name inherited from a class of one's own is a name
        pass

    ck.registry.unregister_plugin(ck.register_adapter(Thing, Sub()))
    instance = Inherits()
    instance.name = "test.trust_api.instance"   # set on the instance: fine too
    ck.registry.unregister_plugin(ck.register_adapter(Thing, instance))


def test_a_method_outside_the_protocol():
    class Typo(GoodAdapter):
        def set_values(self, obj, attr, value):
            obj.v[...] = value

    with pytest.raises(ck.InvalidArgumentError, match=r"set_values\(\).*not part of the adapter protocol.*set_value"):
        ck.register_adapter(Thing, Typo())


def test_bad_types_and_predicates():
    with pytest.raises(ck.InvalidArgumentError, match="neither a class nor a dotted class name"):
        ck.AdapterRegistration(types=(3,), adapter=GoodAdapter())
    with pytest.raises(ck.InvalidArgumentError, match="predicate.*not callable"):
        ck.AdapterRegistration(adapter=GoodAdapter(), predicate=True)


def test_get_value_returning_none_is_named_as_such():
    class NoneValue(GoodAdapter):
        def get_value(self, obj, attr):
            return None

    plugin = ck.register_adapter(Thing, NoneValue())
    try:
        with pytest.raises(ck.CheckpointError, match=r"'?t'? \(v\).*get_value\(\) returned None") as e:
            ck.Checkpoint(t=Thing()).write("memory://trust_api/none/c")
        assert "unpickling" not in str(e.value)
    finally:
        ck.registry.unregister_plugin(plugin)


def test_a_good_adapter_registers(tmp_path):
    plugin = ck.register_adapter(Thing, GoodAdapter())
    try:
        path = ck.Checkpoint(t=Thing()).write(str(tmp_path / "c"))
    finally:
        ck.registry.unregister_plugin(plugin)
    assert ck.list_variables(path) == [("t/.ATTRIBUTES/v", [2])]


@pytest.mark.parametrize("call", [ck.load_checkpoint, ck.list_variables, ck.CheckpointReader])
def test_a_nul_in_a_path_given_to_the_readers_is_an_invalid_path(tmp_path, call):
    """As for save/restore/latest_checkpoint (before: a bare ValueError 'embedded null byte' from os.stat)."""
    with pytest.raises(ck.InvalidPathError, match="NUL"):
        call(str(tmp_path / "ck\x00pt"))


@pytest.mark.parametrize("kwargs", [
    {"checkpoint_name": "../elsewhere"}, {"checkpoint_name": ""}, {"max_to_keep": 0}, {"max_to_keep": "many"},
    {"keep_checkpoint_every_n_hours": -1}, {"checkpoint_interval": 5}, {"best_fn": 3}, {"best_mode": "up"},
], ids=lambda k: next(iter(k)))
def test_manager_arguments_are_refused_with_ckptcore_errors(tmp_path, kwargs):
    """Still ValueError/TypeError (InvalidArgumentError is both), and a CheckpointError (before: builtins only)."""
    kwargs = {"max_to_keep": 2, **kwargs}
    with pytest.raises(ck.InvalidArgumentError):
        ck.CheckpointManager(ck.Checkpoint(), str(tmp_path), **kwargs)
    with pytest.raises(ck.InvalidArgumentError, match="needs a ck.Checkpoint"):
        ck.CheckpointManager(object(), str(tmp_path), 2)  # type: ignore[arg-type]


def test_a_best_fn_returning_no_number_fails_the_save_with_a_ckptcore_error(tmp_path):
    m = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), str(tmp_path), max_to_keep=1, best_fn=lambda mt: "high")
    with pytest.raises(ck.InvalidArgumentError, match="best_fn must return a number"):
        m.save(metrics={"acc": 1.0})


def _deep(n):
    out: list = []
    for _ in range(n):
        out = [out]
    return out


def test_state_or_metadata_nested_too_deeply_is_a_ckptcore_error(tmp_path):
    """Before: json.dumps' RecursionError escaped from the save (and from CheckpointOptions)."""
    class Holder:
        pass

    class DeepState(ck.Adapter):
        name = "test.deep_state"

        def get_state(self, obj):
            return _deep(100_000)

        def set_state(self, obj, state):
            pass

    plugin = ck.register_adapter(Holder, DeepState())
    try:
        for fmt_name in ("ckptcore", "tensorflow"):
            with pytest.raises(ck.CheckpointError, match="state of h is not JSON-serializable"):
                ck.Checkpoint(h=Holder()).write(str(tmp_path / fmt_name), ck.CheckpointOptions(format=fmt_name))
    finally:
        ck.registry.unregister_plugin(plugin)
    with pytest.raises(ck.CheckpointError, match="metadata is not JSON-serializable"):
        ck.CheckpointOptions(metadata={"deep": _deep(100_000)})


@pytest.mark.parametrize("attrs, children, match", [
    (["x", "x"], [], "names 'x' twice"),
    ([3], [], "must be a list of names"),
    ([None], [], "must be a list of names"),
    ("xy", [], "must be a list of names"),
    ([], [("a",)], r"must give \(name, object\) pairs"),
    ([], None, r"must give a list of \(name, object\) pairs, got None"),
], ids=["duplicate attribute", "int attribute", "None attribute", "a string", "a child without its object",
        "children None"])
@pytest.mark.parametrize("fmt_name", ["ckptcore", "tensorflow"])
def test_an_adapter_naming_its_values_wrongly_fails_the_save_before_writing(tmp_path, attrs, children, match,
                                                                            fmt_name):
    """Before: a duplicate attribute name made ckptcore's format commit an index no reader accepts
    ("appears twice"); int/None names and bad children pairs leaked AttributeError/ValueError."""
    class Obj:
        pass

    class Sloppy(ck.Adapter):
        name = "test.sloppy_names"

        def attributes(self, obj):
            return attrs

        def get_value(self, obj, attr):
            return np.ones(2)

        def set_value(self, obj, attr, value):
            pass

        def children(self, obj):
            return children

    plugin = ck.register_adapter(Obj, Sloppy())
    try:
        with pytest.raises(ck.CheckpointError, match=f"o: .*test.sloppy_names.*{match}"):
            ck.Checkpoint(o=Obj()).write(str(tmp_path / "c"), ck.CheckpointOptions(format=fmt_name))
        assert not list(tmp_path.iterdir())
    finally:
        ck.registry.unregister_plugin(plugin)


@pytest.mark.parametrize("spec", [lambda: "nope", lambda: None, lambda: ((4,), "not a dtype"), lambda: ((4,),)],
                         ids=["a string", "None", "a bad dtype", "no dtype"])
def test_an_adapter_spec_that_is_not_a_shape_and_dtype_fails_the_restore_naming_it(spec):
    """Before: the unpacking's ValueError/TypeError (or numpy's) escaped, raw; now a ckptcore error naming the
    path, raised with the other mismatches before anything is assigned."""
    path = ck.Checkpoint(o=np.arange(4.0), a=np.ones(2)).write("memory://trust/spec/c")

    class Obj:
        pass

    class BadSpec(ck.Adapter):
        name = "test.bad_spec"

        def attributes(self, obj):
            return ["VARIABLE_VALUE"]

        def get_value(self, obj, attr):
            return np.zeros(4)

        def spec(self, obj, attr):
            return spec()

        def set_value(self, obj, attr, value):
            obj.value = value

    plugin = ck.register_adapter(Obj, BadSpec())
    try:
        a = np.zeros(2)
        with pytest.raises(ck.CheckpointError, match=r"cannot restore o \(o/.ATTRIBUTES/VARIABLE_VALUE\).*spec\(\)"):
            ck.Checkpoint(o=Obj(), a=a).read(path)
        assert a.tolist() == [0.0, 0.0]
    finally:
        ck.registry.unregister_plugin(plugin)


@pytest.mark.parametrize("method", ["set_value", "restore_buffer", "attributes", "children"])
def test_an_adapter_method_that_raises_during_a_restore_is_a_ckptcore_error_naming_it(method):
    """Before: the adapter's own exception escaped, raw. Failures found while planning (attributes,
    children, restore_buffer) assign nothing; a set_value failure names the tensor whose value it was given."""
    path = ck.Checkpoint(o=np.arange(4.0), a=np.ones(2)).write(f"memory://trust/raises/{method}")

    class Obj:
        pass

    class Buggy(ck.Adapter):
        name = "test.buggy"

        def attributes(self, obj):
            return ["VARIABLE_VALUE"]

        def get_value(self, obj, attr):
            return np.zeros(4)

        def spec(self, obj, attr):
            return (4,), np.dtype(np.float64)

        def set_value(self, obj, attr, value):
            obj.value = value

    def boom(*args):
        raise RuntimeError("bug in the adapter")

    setattr(Buggy, method, boom)
    plugin = ck.register_adapter(Obj, Buggy())
    try:
        a = np.zeros(2)
        with pytest.raises(ck.CheckpointError, match=r"o.*test\.buggy.*RuntimeError: bug in the adapter") as info:
            ck.Checkpoint(o=Obj(), a=a).read(path)
        if method == "set_value":
            assert isinstance(info.value, ck.AdapterStateError) and "'o/.ATTRIBUTES/VARIABLE_VALUE'" in str(info.value)
        else:
            assert a.tolist() == [0.0, 0.0]
    finally:
        ck.registry.unregister_plugin(plugin)


@pytest.mark.parametrize("method", ["get_value", "attributes", "get_state", "children"])
@pytest.mark.parametrize("fmt_name", ["ckptcore", "tensorflow"])
def test_an_adapter_method_that_raises_during_a_save_is_a_ckptcore_error_naming_it(tmp_path, method, fmt_name):
    """Before: the adapter's own exception escaped the save, raw. Nothing is written."""
    class Obj:
        pass

    class Buggy(ck.Adapter):
        name = "test.buggy_save"

        def attributes(self, obj):
            return ["VARIABLE_VALUE"]

        def get_value(self, obj, attr):
            return np.zeros(4)

        def set_value(self, obj, attr, value):
            pass

    def boom(*args):
        raise RuntimeError("bug in the adapter")

    setattr(Buggy, method, boom)
    plugin = ck.register_adapter(Obj, Buggy())
    try:
        with pytest.raises(ck.CheckpointError, match=r"o: .*test\.buggy_save.*RuntimeError: bug in the adapter"):
            ck.Checkpoint(o=Obj()).write(str(tmp_path / "c"), ck.CheckpointOptions(format=fmt_name))
        assert not list(tmp_path.iterdir())
    finally:
        ck.registry.unregister_plugin(plugin)
