"""Issue 13: nothing below the top level is dropped silently; the graph saved is the one the user holds."""

from __future__ import annotations

import numpy as np
import pytest

import ckptcore as ck


class ArrayLike:
    """Holds array data through ``__array__``, and no adapter claims it."""

    def __array__(self, dtype=None, copy=None):
        return np.ones(3)


class DLPackOnly:
    def __dlpack__(self, stream=None):  # pragma: no cover - never called
        raise NotImplementedError

    def __dlpack_device__(self):  # pragma: no cover
        return (1, 0)


def _framework_class(module: str, name: str, base: str | None = None) -> type:
    """A class that looks, by its module names, like a framework's (no framework imported).

    ``base`` is the dotted name of the framework base class it derives from.
    """
    bases: tuple = ()
    if base:
        bmod, _, bname = base.rpartition(".")
        bases = (type(bname, (), {"__module__": bmod}),)
    return type(name, bases, {"__module__": module})


# -- unclaimed objects that hold array data ----------------------------------------------------------
@pytest.fixture
def builtins_only(monkeypatch):
    """Only the built-in plugins: the installed framework plugins would claim the look-alike classes."""
    monkeypatch.setenv("CKPTCORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    ck.registry._reset_for_tests()
    yield
    monkeypatch.delenv("CKPTCORE_DISABLE_PLUGIN_AUTOLOAD")
    ck.registry._reset_for_tests()


@pytest.mark.parametrize("value, kind", [
    (ArrayLike(), "ArrayLike"),
    (DLPackOnly(), "DLPackOnly"),
    (_framework_class("torch.nn.modules.linear", "Linear", "torch.nn.modules.module.Module")(),
     "torch.nn.modules.linear.Linear"),
    (_framework_class("jax._src.array", "ArrayImpl")(), "ArrayImpl"),
    (_framework_class("keras.src.layers.core.dense", "Dense", "keras.src.layers.layer.Layer")(), "Dense"),
])
@pytest.mark.parametrize("where", ["list", "dict", "tuple", "module", "nested"])
def test_unclaimed_array_data_below_the_top_level_is_an_error_naming_it(builtins_only, tmp_path, value, kind, where):
    if where == "list":
        ckpt, path = ck.Checkpoint(xs=[np.zeros(1), value]), "xs/1"
    elif where == "dict":
        ckpt, path = ck.Checkpoint(sd={"w": value}), "sd/w"
    elif where == "tuple":
        ckpt, path = ck.Checkpoint(t=(value,)), "t/0"
    elif where == "module":
        m = ck.Module()
        m.w = np.ones(2)
        m.x = value
        ckpt, path = ck.Checkpoint(m=m), "m/x"
    else:
        ckpt, path = ck.Checkpoint(a={"b": [{"c": value}]}), "a/b/0/c"
    with pytest.raises(ck.NotTrackableError, match=rf"'{path}' of type \S*{kind}.*holds array data") as e:
        ckpt.write(str(tmp_path / "c"))
    assert "register an adapter" in str(e.value) or "pip install" in str(e.value)
    assert not (tmp_path / "c.index").exists()


def test_the_message_names_the_plugin_to_install(builtins_only, tmp_path):
    net = _framework_class("torch.nn.modules.container", "Sequential", "torch.nn.modules.module.Module")()
    with pytest.raises(ck.NotTrackableError, match=r"'ms/0'.*pip install ckptcore-torch"):
        ck.Checkpoint(ms=[net]).write(str(tmp_path / "c"))
    var = _framework_class("tensorflow.python.ops.resource_variable_ops", "ResourceVariable")()
    with pytest.raises(ck.NotTrackableError, match=r"'v'.*pip install ckptcore-tf"):
        ck.Checkpoint(v=var)


def test_an_unclaimed_object_in_the_live_graph_fails_restore_assertions(tmp_path):
    path = ck.Checkpoint(sd={}).write(str(tmp_path / "c"))
    with pytest.raises(ck.NotTrackableError, match="sd/w"):
        ck.Checkpoint(sd={"w": ArrayLike()}).read(path).assert_consumed()


def test_values_that_hold_no_array_data_are_still_not_tracked(builtins_only, tmp_path):
    m = ck.Module()
    m.lr, m.name_, m.scale, m.flags = 0.1, "enc", np.float32(2.0), [1, "a", None]
    m.w = np.ones(1)
    t = _framework_class("torch", "device")()  # a framework object that holds no array data
    m.device = t
    path = ck.Checkpoint(m=m, cfg={"lr": 0.1, "dev": t}).write(str(tmp_path / "c"))
    assert [k for k, _ in ck.list_variables(path)] == ["m/w/.ATTRIBUTES/VARIABLE_VALUE"]


def test_a_registered_adapter_makes_it_saveable(tmp_path):
    class ArrayLikeAdapter(ck.Adapter):
        name = "test.arraylike"

        def attributes(self, obj):
            return ["VARIABLE_VALUE"]

        def get_value(self, obj, attr):
            return np.asarray(obj)

    plugin = ck.register_adapter(ArrayLike, ArrayLikeAdapter())
    try:
        path = ck.Checkpoint(sd={"w": ArrayLike()}).write(str(tmp_path / "c"))
    finally:
        ck.registry.unregister_plugin(plugin)
    assert ck.list_variables(path) == [("sd/w/.ATTRIBUTES/VARIABLE_VALUE", [3])]
