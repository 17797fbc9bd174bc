"""The plugin manager and typed lookups over it.

The manager is built lazily on first use: ``import ckptcore`` loads no plugin.
Built-in plugins come from the ``ckptcore`` entry-point group like any other;
set ``CKPTCORE_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-ins, and
``CKPTCORE_BLOCK_PLUGINS=name,name`` to block entry points by name.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> ck.registry.find_adapter(np.zeros(3)).name
    'ckptcore.numpy'
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pluggy

from . import hookspec as _hookspec
from .adapters import AdapterRegistration, StorageRegistration
from .errors import AdapterConflictError, CheckpointError, NotTrackableError, StorageError

__all__ = [
    "get_plugin_manager",
    "find_adapter",
    "adapter_or_none",
    "register_adapter",
    "register_plugin",
    "unregister_plugin",
    "find_storage_factory",
    "install_creation_hooks",
]

BUILTIN_PLUGINS = {
    "core": "ckptcore.builtin.core_adapters",
    "numpy": "ckptcore.builtin.numpy_adapters",
    "fsspec": "ckptcore.builtin.fsspec_storage",
    "formats": "ckptcore.builtin.formats",
}

_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_adapter_regs: list[AdapterRegistration] | None = None
_storage_regs: list[StorageRegistration] | None = None
_format_regs: list | None = None
_by_type_cache: dict[type, Any] = {}
_creation_hooks_installed = False


def _blocked() -> set[str]:
    raw = os.environ.get("CKPTCORE_BLOCK_PLUGINS", "")
    return {n.strip() for n in raw.split(",") if n.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first call.

    Example:
        >>> import ckptcore as ck
        >>> ck.registry.get_plugin_manager().project_name
        'ckptcore'
    """
    global _pm
    if _pm is not None:
        return _pm
    with _lock:
        if _pm is not None:
            return _pm
        pm = pluggy.PluginManager(_hookspec.PROJECT)
        pm.add_hookspecs(_hookspec)
        blocked = _blocked()
        for name in blocked:
            pm.set_blocked(name)
        if not os.environ.get("CKPTCORE_DISABLE_PLUGIN_AUTOLOAD"):
            try:
                pm.load_setuptools_entrypoints(_hookspec.PROJECT)
            except Exception as e:
                raise _plugin_load_error(e, blocked) from e
        # Built-ins always load, even from a source tree with no entry points.
        for name, modname in BUILTIN_PLUGINS.items():
            if name in blocked or pm.get_plugin(name) is not None or pm.is_blocked(name):
                continue
            pm.register(importlib.import_module(modname), name=name)
        _pm = pm
        return pm


def _plugin_load_error(exc: Exception, blocked: set[str]) -> CheckpointError:
    """A CheckpointError naming the entry point that failed to load, and how to skip it."""
    from importlib.metadata import entry_points

    culprit = None
    for ep in entry_points(group=_hookspec.PROJECT):
        if ep.name in blocked:
            continue
        try:
            ep.load()
        except Exception:
            culprit = ep
            break
    who = f"ckptcore plugin {culprit.name!r} ({culprit.value})" if culprit else "a ckptcore plugin"
    name = culprit.name if culprit else "<name>"
    return CheckpointError(
        f"{who} failed to load: {type(exc).__name__}: {exc}. Fix or uninstall it, or skip it with "
        f"CKPTCORE_BLOCK_PLUGINS={name} (CKPTCORE_DISABLE_PLUGIN_AUTOLOAD=1 loads only the built-ins).")


def _invalidate() -> None:
    global _adapter_regs, _storage_regs, _format_regs
    with _lock:
        _adapter_regs = None
        _storage_regs = None
        _format_regs = None
        _by_type_cache.clear()


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object (module or instance with hookimpls).

    Example:
        >>> import ckptcore as ck
        >>> class P:
        ...     @ck.hookimpl
        ...     def ckptcore_register_adapters(self):
        ...         return []
        >>> name = ck.registry.register_plugin(P(), name="doc-p")
        >>> ck.registry.unregister_plugin("doc-p")
    """
    pm = get_plugin_manager()
    with _lock:
        registered = pm.register(plugin, name=name)
        _invalidate()
    if registered is None:
        raise ValueError(f"plugin {name!r} is blocked")
    return registered


def unregister_plugin(name: str) -> None:
    """Unregister a plugin by name (no error if absent).

    Example:
        >>> import ckptcore as ck
        >>> ck.registry.unregister_plugin("not-registered")
    """
    pm = get_plugin_manager()
    with _lock:
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        _invalidate()


class _SingleAdapterPlugin:
    def __init__(self, registration: AdapterRegistration):
        self._registration = registration

    @_hookspec.hookimpl
    def ckptcore_register_adapters(self):
        return [self._registration]


def register_adapter(types: Any, adapter: Any, *, priority: int = 0, predicate: Callable[[Any], bool] | None = None,
                     name: str | None = None) -> str:
    """Register one adapter without writing a plugin module.

    ``types`` is a class, a dotted class name, or a tuple of them. Returns the
    plugin name, which :func:`unregister_plugin` accepts.

    Example:
        >>> import ckptcore as ck
        >>> class Thing: pass
        >>> class ThingAdapter(ck.Adapter):
        ...     name = "doc.thing"
        >>> name = ck.register_adapter(Thing, ThingAdapter())
        >>> ck.registry.unregister_plugin(name)
    """
    if not isinstance(types, tuple):
        types = (types,)
    plugin_name = name or f"adapter:{getattr(adapter, 'name', type(adapter).__name__)}:{id(adapter):x}"
    reg = AdapterRegistration(types=types, adapter=adapter, priority=priority, predicate=predicate, plugin=plugin_name)
    return register_plugin(_SingleAdapterPlugin(reg), name=plugin_name)


def _collect(hook_name: str) -> list:
    pm = get_plugin_manager()
    hook = getattr(pm.hook, hook_name)
    out = []
    for impl in reversed(hook.get_hookimpls()):
        plugin_name = impl.plugin_name
        result = impl.function()  # registration hooks take no arguments
        for reg in result or ():
            out.append(reg if reg.plugin else dataclasses.replace(reg, plugin=plugin_name))
    return out


def _adapter_registrations() -> list[AdapterRegistration]:
    global _adapter_regs
    regs = _adapter_regs
    if regs is None:
        with _lock:
            regs = _adapter_regs = _collect("ckptcore_register_adapters")
    return regs


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _type_matches(entry: Any, cls: type) -> bool:
    if isinstance(entry, str):
        return entry == _qualname(cls) or entry == f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"
    return entry is cls


def _describe(reg) -> str:
    if isinstance(reg, StorageRegistration):
        return getattr(reg.factory, "__qualname__", repr(reg.factory))
    return str(getattr(reg.adapter, "name", reg.adapter))


_Reg = TypeVar("_Reg", AdapterRegistration, StorageRegistration)


def _pick(candidates: list[_Reg], what: str) -> _Reg:
    candidates = sorted(candidates, key=lambda r: -r.priority)
    if len(candidates) > 1 and candidates[0].priority == candidates[1].priority:
        a, b = candidates[0], candidates[1]
        raise AdapterConflictError(
            f"plugins {a.plugin!r} ({_describe(a)}) and {b.plugin!r} "
            f"({_describe(b)}) both claim {what} with priority {a.priority}; "
            "give one of them a higher priority or block one (CKPTCORE_BLOCK_PLUGINS)")
    return candidates[0]


def _resolve_type(cls: type):
    regs = _adapter_registrations()
    for klass in cls.__mro__:
        if klass is object:
            break
        matches = [r for r in regs if any(_type_matches(t, klass) for t in r.types)]
        if matches:
            return _pick(matches, f"type {_qualname(klass)}").adapter
    return None


def adapter_or_none(obj: Any):
    """The adapter for ``obj``, or None if nothing claims it.

    Example:
        >>> import ckptcore as ck
        >>> ck.registry.adapter_or_none(3) is None
        True
    """
    cls = type(obj)
    try:
        adapter = _by_type_cache[cls]
    except KeyError:
        adapter = _resolve_type(cls)
        if adapter is not None:
            _by_type_cache[cls] = adapter
    except TypeError:  # unhashable metaclass: resolve each time
        adapter = _resolve_type(cls)
    if adapter is not None:
        return adapter
    preds = [r for r in _adapter_registrations() if r.predicate is not None and _safe_pred(r.predicate, obj)]
    if preds:
        return _pick(preds, f"object of type {_qualname(cls)} (by predicate)").adapter
    return None


def _safe_pred(pred: Callable[[Any], bool], obj: Any) -> bool:
    try:
        return bool(pred(obj))
    except Exception:
        return False


def find_adapter(obj: Any, *, what: str | None = None):
    """The adapter for ``obj``; raises :class:`~ckptcore.NotTrackableError` if none.

    Example:
        >>> import ckptcore as ck
        >>> ck.registry.find_adapter(ck.Variable(1.0)).name
        'ckptcore.variable'
    """
    adapter = adapter_or_none(obj)
    if adapter is None:
        from .unclaimed import install_hint

        label = f"{what} " if what else ""
        hint = install_hint(obj)
        if hint:
            raise NotTrackableError(f"{label}of type {_qualname(type(obj))} cannot be saved: {hint}")
        raise NotTrackableError(
            f"{label}of type {_qualname(type(obj))} is not trackable: no ckptcore adapter claims it. "
            "Use a ck.Variable, a numpy array, a ck.Module, a list/dict of those, an object of an "
            "installed framework plugin, or register an adapter (ck.register_adapter).")
    return adapter


def _storage_registrations() -> list[StorageRegistration]:
    global _storage_regs
    regs = _storage_regs
    if regs is None:
        with _lock:
            regs = _storage_regs = _collect("ckptcore_register_storage")
    return regs


def find_storage_factory(protocol: str):
    """The storage factory for a URL protocol (``"file"``, ``"s3"``, ...).

    Example:
        >>> import ckptcore as ck
        >>> callable(ck.registry.find_storage_factory("memory"))
        True
    """
    regs = _storage_registrations()
    exact = [r for r in regs if protocol in r.protocols]
    if exact:
        best = _pick(exact, f"storage protocol {protocol!r}")
        wildcard = [r for r in regs if "*" in r.protocols and r.priority > best.priority]
        return (_pick(wildcard, "storage protocol '*'") if wildcard else best).factory
    wildcard = [r for r in regs if "*" in r.protocols]
    if wildcard:
        return _pick(wildcard, "storage protocol '*'").factory
    raise StorageError(f"no storage plugin handles protocol {protocol!r}")


def formats() -> list:
    """Every registered checkpoint format, highest priority first (see :mod:`ckptcore.formats.base`).

    Example:
        >>> import ckptcore as ck
        >>> ck.registry.formats()[0].name
        'ckptcore'
    """
    global _format_regs
    regs = _format_regs
    if regs is None:
        with _lock:
            regs = _format_regs = sorted(_collect("ckptcore_register_formats"), key=lambda r: -r.priority)
    return [r.format for r in regs]


def install_creation_hooks(notify: Callable[[Any, str, Any], None]) -> None:
    """Ask plugins to install their restore-on-create hooks (once per process).

    Example:
        >>> import ckptcore as ck
        >>> ck.registry.install_creation_hooks(ck.notify_dependency_added)
    """
    global _creation_hooks_installed
    if _creation_hooks_installed:
        return
    with _lock:
        if _creation_hooks_installed:
            return
        get_plugin_manager().hook.ckptcore_install_creation_hooks.call_historic(kwargs={"notify": notify})
        _creation_hooks_installed = True


def _reset_for_tests() -> None:
    """Forget the plugin manager and every cache, so the next lookup rebuilds them.

    For tests that change entry points or ``CKPTCORE_*`` variables. Framework
    hooks already installed through ``ckptcore_install_creation_hooks`` stay
    installed; plugins must make that hook idempotent.

    Example:
        >>> import ckptcore as ck
        >>> ck.registry._reset_for_tests()
        >>> ck.registry.find_adapter(ck.Module()).name
        'ckptcore.module'
    """
    global _pm, _creation_hooks_installed
    with _lock:
        _pm = None
        _creation_hooks_installed = False
        _invalidate()
