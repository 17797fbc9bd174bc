"""The plugin registry: matching, priorities, conflicts, blocking, lazy loading."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import registry


def make_dist(root, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Put a distribution on ``root`` (a sys.path entry) that importlib.metadata discovers."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = ["[ckptcore]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for modname, source in modules.items():
        (root / f"{modname}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()


class Base:
    pass


class Sub(Base):
    pass


class SubSub(Sub):
    pass


def named(name: str) -> ck.Adapter:
    adapter = ck.Adapter()
    adapter.name = name
    return adapter


# -- conflicts and priorities ---------------------------------------------------------------------
def test_two_plugins_claiming_a_type_with_equal_priority_is_an_error_naming_both(ckptcore_registry):
    ck.register_adapter(Base, named("first.adapter"), name="plugin-one")
    ck.register_adapter(Base, named("second.adapter"), name="plugin-two")
    with pytest.raises(ck.AdapterConflictError) as info:
        registry.find_adapter(Base())
    msg = str(info.value)
    for part in ("plugin-one", "plugin-two", "first.adapter", "second.adapter", "test_registry.Base", "priority"):
        assert part in msg
    assert isinstance(info.value, ck.CheckpointError)


def test_a_higher_priority_resolves_the_conflict(ckptcore_registry):
    ck.register_adapter(Base, named("low"), name="plugin-low")
    ck.register_adapter(Base, named("high"), name="plugin-high", priority=5)
    assert registry.find_adapter(Base()).name == "high"
    registry.unregister_plugin("plugin-high")
    assert registry.find_adapter(Base()).name == "low"


def test_a_plugin_with_priority_overrides_a_builtin(ckptcore_registry):
    ck.register_adapter(np.ndarray, named("mine.numpy"), name="my-numpy", priority=10)
    assert registry.find_adapter(np.zeros(1)).name == "mine.numpy"
    registry.unregister_plugin("my-numpy")
    assert registry.find_adapter(np.zeros(1)).name == "ckptcore.numpy"


@settings(max_examples=40, deadline=None)
@given(priorities=st.lists(st.integers(-3, 3), min_size=1, max_size=5))
def test_the_highest_priority_wins_and_a_tie_at_the_top_names_both(priorities):
    class Claimed:
        pass

    names = [f"prio-{i}" for i in range(len(priorities))]
    try:
        for name, priority in zip(names, priorities):
            ck.register_adapter(Claimed, named(name), name=name, priority=priority)
        top = max(priorities)
        winners = [n for n, p in zip(names, priorities) if p == top]
        if len(winners) == 1:
            assert registry.find_adapter(Claimed()).name == winners[0]
        else:
            with pytest.raises(ck.AdapterConflictError) as info:
                registry.find_adapter(Claimed())
            assert sum(f"'{n}'" in str(info.value) for n in winners) == 2
    finally:
        for name in names:
            registry.unregister_plugin(name)


def test_the_most_specific_class_in_the_mro_wins_over_priority(ckptcore_registry):
    ck.register_adapter(Base, named("base"), name="p-base", priority=100)
    ck.register_adapter(Sub, named("sub"), name="p-sub")
    assert registry.find_adapter(Base()).name == "base"
    assert registry.find_adapter(Sub()).name == "sub"
    assert registry.find_adapter(SubSub()).name == "sub"


# -- dotted names and predicates ------------------------------------------------------------------------
def test_dotted_name_registration_does_not_import_the_module(ckptcore_registry):
    ck.register_adapter("ckptcore_nonexistent_pkg.layers.Thing", named("dotted"), name="p-dotted")
    assert registry.find_adapter(np.zeros(1)).name == "ckptcore.numpy"   # lookups still work
    assert "ckptcore_nonexistent_pkg" not in sys.modules
    # A class from that module (defined here without importing anything) is matched by name.
    Thing = type("Thing", (), {"__module__": "ckptcore_nonexistent_pkg.layers"})
    assert registry.find_adapter(Thing()).name == "dotted"


def test_dotted_name_may_use_the_top_level_package(ckptcore_registry):
    # torch.nn.Module is defined in torch.nn.modules.module; "torch.Module"-style short names match too.
    Deep = type("Deep", (), {"__module__": "ckptcore_fakefw.nn.modules.deep"})
    ck.register_adapter("ckptcore_fakefw.Deep", named("short"), name="p-short")
    assert registry.find_adapter(Deep()).name == "short"


def test_predicate_is_a_fallback_used_only_when_no_type_matches(ckptcore_registry):
    class Duck:
        def quack(self):
            return "quack"

    def is_duck(obj):
        return hasattr(obj, "quack")

    def broken(obj):
        raise RuntimeError("a predicate that raises means 'no'")

    ck.register_adapter((), named("duck"), predicate=is_duck, name="p-duck")
    ck.register_adapter((), named("broken"), predicate=broken, name="p-broken")
    assert registry.find_adapter(Duck()).name == "duck"
    ck.register_adapter(Duck, named("by-type"), name="p-type")
    assert registry.find_adapter(Duck()).name == "by-type"
    assert registry.adapter_or_none(3) is None


def test_two_predicates_claiming_an_object_conflict_unless_prioritised(ckptcore_registry):
    class Duck:
        pass

    ck.register_adapter((), named("a"), predicate=lambda o: isinstance(o, Duck), name="pred-a")
    ck.register_adapter((), named("b"), predicate=lambda o: isinstance(o, Duck), name="pred-b")
    with pytest.raises(ck.AdapterConflictError, match="pred-a.*pred-b|pred-b.*pred-a"):
        registry.find_adapter(Duck())
    registry.unregister_plugin("pred-b")
    ck.register_adapter((), named("b"), predicate=lambda o: isinstance(o, Duck), name="pred-b", priority=1)
    assert registry.find_adapter(Duck()).name == "b"


def test_an_unclaimed_object_is_not_trackable_with_a_hint():
    with pytest.raises(ck.NotTrackableError, match="register an adapter"):
        registry.find_adapter(object())


# -- storage protocols ------------------------------------------------------------------------------------
class StoragePlugin:
    def __init__(self, protocols, priority, tag):
        self.reg = ck.StorageRegistration(protocols=protocols, factory=lambda p, o, u: tag, priority=priority)

    @ck.hookimpl
    def ckptcore_register_storage(self):
        return [self.reg]


def test_storage_protocol_conflicts_name_both_plugins(ckptcore_registry):
    registry.register_plugin(StoragePlugin(("myproto",), 0, "a"), name="store-a")
    registry.register_plugin(StoragePlugin(("myproto",), 0, "b"), name="store-b")
    with pytest.raises(ck.AdapterConflictError, match="store-a.*store-b|store-b.*store-a"):
        registry.find_storage_factory("myproto")
    registry.unregister_plugin("store-b")
    registry.register_plugin(StoragePlugin(("myproto",), 3, "b"), name="store-b")
    assert registry.find_storage_factory("myproto")(None, None, None) == "b"


def test_a_specific_storage_claim_beats_the_fsspec_wildcard(ckptcore_registry):
    assert registry.find_storage_factory("myproto2").__name__ == "fsspec_factory"
    registry.register_plugin(StoragePlugin(("myproto2",), 0, "mine"), name="store-mine")
    assert registry.find_storage_factory("myproto2")(None, None, None) == "mine"


# -- hook validation --------------------------------------------------------------------------------------
def test_a_hookimpl_with_a_wrong_signature_is_rejected_at_registration(ckptcore_registry):
    class Bad:
        @ck.hookimpl
        def ckptcore_register_adapters(self, unexpected):
            return []

    with pytest.raises(pluggy.PluginValidationError, match="unexpected"):
        registry.register_plugin(Bad(), name="bad")


# -- entry points, blocking, kill switch --------------------------------------------------------------------
PLUGIN_SOURCE = """
    import ckptcore as ck

    class Gadget:
        pass

    class GadgetAdapter(ck.Adapter):
        name = "gadget.adapter"

    @ck.hookimpl
    def ckptcore_register_adapters():
        return [ck.AdapterRegistration(types=("ckptcore_gadget_plugin.Gadget",), adapter=GadgetAdapter())]
"""


@pytest.fixture
def gadget_dist(tmp_path, monkeypatch):
    make_dist(tmp_path, "ckptcore-gadget", {"gadget": "ckptcore_gadget_plugin"},
              {"ckptcore_gadget_plugin": PLUGIN_SOURCE})
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("ckptcore_gadget_plugin", None)


def test_entry_point_plugins_are_loaded(gadget_dist, ckptcore_fresh_registry):
    import ckptcore_gadget_plugin as gp

    assert registry.find_adapter(gp.Gadget()).name == "gadget.adapter"
    assert registry.get_plugin_manager().get_plugin("gadget") is gp


def test_blocked_plugins_are_not_loaded(gadget_dist, monkeypatch, ckptcore_fresh_registry):
    monkeypatch.setenv("CKPTCORE_BLOCK_PLUGINS", " gadget , numpy")
    import ckptcore_gadget_plugin as gp

    assert registry.adapter_or_none(gp.Gadget()) is None
    assert registry.adapter_or_none(np.zeros(1)) is None           # built-ins can be blocked too
    assert registry.find_adapter(ck.Variable(1.0)).name == "ckptcore.variable"


def test_the_autoload_kill_switch_loads_only_builtins(gadget_dist, monkeypatch, ckptcore_fresh_registry):
    monkeypatch.setenv("CKPTCORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    import ckptcore_gadget_plugin as gp

    assert registry.adapter_or_none(gp.Gadget()) is None
    names = {name for name, _ in registry.get_plugin_manager().list_name_plugin()}
    assert {"core", "numpy", "fsspec"} <= names
    assert registry.find_adapter(np.zeros(1)).name == "ckptcore.numpy"


def test_an_entry_point_plugin_with_priority_overrides_a_builtin(tmp_path, monkeypatch, ckptcore_fresh_registry):
    source = """
        import numpy as np, ckptcore as ck
        class Mine(ck.Adapter):
            name = "replacement.numpy"
        @ck.hookimpl
        def ckptcore_register_adapters():
            return [ck.AdapterRegistration(types=(np.ndarray,), adapter=Mine(), priority=1)]
    """
    make_dist(tmp_path, "ckptcore-npx", {"npx": "ckptcore_npx_plugin"}, {"ckptcore_npx_plugin": source})
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert registry.find_adapter(np.zeros(1)).name == "replacement.numpy"
    finally:
        sys.modules.pop("ckptcore_npx_plugin", None)


def test_a_plugin_that_fails_to_import_is_named_with_the_way_to_skip_it(tmp_path, monkeypatch,
                                                                        ckptcore_fresh_registry):
    make_dist(tmp_path, "ckptcore-broken", {"broken": "ckptcore_broken_plugin"},
              {"ckptcore_broken_plugin": "raise ImportError('needs libfoo')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ck.CheckpointError, match=r"'broken'.*needs libfoo.*CKPTCORE_BLOCK_PLUGINS=broken"):
        registry.find_adapter(np.zeros(1))
    monkeypatch.setenv("CKPTCORE_BLOCK_PLUGINS", "broken")
    registry._reset_for_tests()
    assert registry.find_adapter(np.zeros(1)).name == "ckptcore.numpy"


# -- import hygiene ---------------------------------------------------------------------------------------------
def _imported_after(statement: str) -> dict:
    code = (f"import json, sys\n{statement}\nimport ckptcore\n"
            "print(json.dumps({'modules': sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'keras', 'tensorflow', 's3fs', 'gcsfs', 'jax', 'pytest', 'ckptcore_tf', 'ckptcore_torch')), "
            "'pm_built': ckptcore.registry._pm is not None}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_import_ckptcore_loads_no_framework_no_pytest_and_no_plugin():
    assert _imported_after("") == {"modules": [], "pm_built": False}


def test_the_pytest_plugin_loads_no_framework_and_no_plugin_either():
    out = _imported_after("import ckptcore.testing.pytest_plugin")
    assert [m for m in out["modules"] if not m.startswith(("pytest", "_pytest"))] == []
    assert out["pm_built"] is False


def test_reset_for_tests_rebuilds_the_manager(ckptcore_fresh_registry):
    pm = registry.get_plugin_manager()
    registry._reset_for_tests()
    assert registry.get_plugin_manager() is not pm
    assert registry.find_adapter(ck.Module()).name == "ckptcore.module"
