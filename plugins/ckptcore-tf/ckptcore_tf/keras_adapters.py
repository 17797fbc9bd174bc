"""Adapters for Keras 3 layers, models, seed generators and optimizers (any backend).

Graph shape (TF naming conventions where practical):

* a layer's own variables are children named by their Keras name
  (``Dense`` -> ``kernel``, ``bias``; ``BatchNormalization`` -> ``gamma``,
  ``beta``, ``moving_mean``, ``moving_variance``);
* ``Sequential``/functional models: sublayers are ``layer_with_weights-N``
  (layers that own weights) and ``layer-N`` (all of ``model.layers``), as in
  ``tf.keras``;
* other layers and subclassed models: sublayers and seed generators under the
  attribute name that holds them (``encoder``, ``_query_dense``; public lists
  become ``blocks/0``, ``blocks/1``...), else ``layer-N`` by position in the
  layer's tracked sublayers;
* optimizers: ``iter``, ``learning_rate`` (when a variable) and any other
  non-slot variables by name; per-variable slots (Adam's ``momentum`` and
  ``velocity``, SGD's ``momentum``, ...) are TF-style slot variables attached
  to the model variable they belong to.

Restore-on-create: weights, sublayers and optimizer slots created *after*
``restore()`` (a model built lazily, an optimizer built on its first step)
receive their values when Keras creates them. This works by wrapping
``Layer._track_variable``, ``Layer.__setattr__``, ``BaseOptimizer.__setattr__``,
``BaseOptimizer.add_variable`` and ``BaseOptimizer.add_variable_from_reference``
once per process (:func:`install_keras_hooks`); the wrappers call the
original, then :func:`ckptcore.notify_dependency_added`, which is a no-op when
no restore is waiting.

Example:
    >>> import os; os.environ.setdefault("KERAS_BACKEND", "torch")  # doctest: +SKIP
    >>> import keras, numpy as np, ckptcore as ck                    # doctest: +SKIP
    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])  # doctest: +SKIP
    >>> path = ck.Checkpoint(model=m).write("memory://doc/keras")          # doctest: +SKIP
    >>> sorted(ck.list_variables(path))[0][0]                               # doctest: +SKIP
    'model/layer_with_weights-0/bias/.ATTRIBUTES/VARIABLE_VALUE'
"""

from __future__ import annotations

import contextvars
import functools
import re
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

import ckptcore as ck
from ckptcore.restore import WeakIdTable

__all__ = [
    "LayerAdapter",
    "SeedGeneratorAdapter",
    "OptimizerAdapter",
    "install_keras_hooks",
    "layer_children",
    "optimizer_slot_map",
    "name_variables",
    "own_variables",
    "pending_slot_count",
]

_lock = threading.RLock()
_installed = False
_notify: Callable[[Any, str, Any], None] = ck.notify_dependency_added
# optimizer -> {id(model variable): (weakref(model variable), {slot name: value})}
_PENDING_SLOTS = WeakIdTable()
# layer of a Sequential/functional model -> weakref(model): its ``layer_with_weights-N``
# edge appears only once the layer has weights, so the model is told then.
_INDEXED_PARENT = WeakIdTable()


# -- naming ------------------------------------------------------------------------------
def _keras():
    import keras

    return keras


def _is_variable(v: Any) -> bool:
    return isinstance(v, _keras().Variable)


def _unique(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Make names unique (``kernel``, ``kernel_1``, ...) keeping the first as is."""
    seen: dict[str, int] = {}
    out = []
    for name, obj in pairs:
        if name in seen:
            seen[name] += 1
            candidate = f"{name}_{seen[name]}"
            while candidate in seen:
                seen[name] += 1
                candidate = f"{name}_{seen[name]}"
            name = candidate
        seen.setdefault(name, 0)
        out.append((name, obj))
    return out


_AUTO_NAME = re.compile(r"variable(_[0-9]+)?")


def name_variables(owner: Any, variables: list) -> list[tuple[str, Any]]:
    """Stable local names for ``owner``'s variables.

    A variable's Keras name (``kernel``) is used, unless Keras made it up
    (``variable``, ``variable_7``: a process-wide counter); then the name of
    the attribute of ``owner`` that holds it (``_u_product`` -> ``u_product``),
    else ``variable-N`` by position. Duplicates get ``_1``, ``_2``... suffixes.

    Example:
        >>> class V:
        ...     def __init__(self, name): self.name = name
        >>> class Owner: pass
        >>> o = Owner(); o._scale = V("variable_12"); k = V("kernel")
        >>> [n for n, _ in name_variables(o, [k, o._scale, V("variable")])]
        ['kernel', 'scale', 'variable-2']
    """
    held: dict[int, str] | None = None
    pairs = []
    for i, v in enumerate(variables):
        name = str(v.name).rsplit("/", 1)[-1]
        if _AUTO_NAME.fullmatch(name):
            if held is None:
                held = {}
                for attr, value in getattr(owner, "__dict__", {}).items():
                    if attr.lstrip("_"):
                        held.setdefault(id(value), attr.lstrip("_"))
            name = held.get(id(v)) or f"variable-{i}"
        pairs.append((name, v))
    return _unique(pairs)


def own_variables(layer: Any) -> list[tuple[str, Any]]:
    """The variables a layer created itself (not its sublayers'), named by :func:`name_variables`.

    Example:
        >>> own_variables(object())
        []
    """
    vs = list(getattr(layer, "_trainable_variables", ())) + list(getattr(layer, "_non_trainable_variables", ()))
    return name_variables(layer, vs)


def _has_weights(layer: Any) -> bool:
    try:
        return bool(layer.weights)
    except Exception:
        return False


def _attribute_items(obj: Any):
    items = dict(vars(obj))
    modules = items.get("_modules")  # torch backend: sublayers live in nn.Module._modules
    if isinstance(modules, dict):
        for k, v in modules.items():
            items.setdefault(k, v)
    return items.items()


def _contains(container: Any, targets: dict[int, Any]) -> bool:
    values = container.values() if isinstance(container, dict) else container
    return any(id(v) in targets for v in values)


def layer_children(layer: Any) -> list[tuple[str, Any]]:
    """The named dependencies of a Keras layer or model (see the module docstring).

    Example:
        >>> layer_children(object())
        []
    """
    out = own_variables(layer)
    if "keras" not in sys.modules:  # not a Keras object: nothing more to find
        return out
    from keras.src.models.functional import Functional
    from keras.src.models.sequential import Sequential

    if isinstance(layer, (Sequential, Functional)):
        layers = list(layer.layers)
        weighted = [sub for sub in layers if _has_weights(sub)]
        for sub in layers:
            if sub not in _INDEXED_PARENT:
                _INDEXED_PARENT[sub] = weakref.ref(layer)
        out += [(f"layer_with_weights-{j}", sub) for j, sub in enumerate(weighted)]
        out += [(f"layer-{i}", sub) for i, sub in enumerate(layers)]
        return out
    sublayers = list(getattr(layer, "_layers", ()))
    seeds = list(getattr(layer, "_seed_generators", ()))
    targets = {id(o): o for o in sublayers + seeds}
    if not targets:
        return out
    covered: set[int] = set()
    for name, value in _attribute_items(layer):
        if value is layer or id(value) in covered:
            continue
        if id(value) in targets:            # private attributes too, as tf.keras did (``_query_dense``)
            out.append((name, value))
            covered.add(id(value))
        elif not name.startswith("_") and isinstance(value, (list, tuple, dict)) and _contains(value, targets):
            out.append((name, value))
            values = value.values() if isinstance(value, dict) else value
            covered.update(id(v) for v in values)
    out += [(f"layer-{i}", sub) for i, sub in enumerate(sublayers) if id(sub) not in covered]
    out += [(f"seed_generator-{i}", sg) for i, sg in enumerate(seeds) if id(sg) not in covered]
    return out


# -- optimizer slots -----------------------------------------------------------------------
def _slot_prefix(ref: Any) -> str:
    path = getattr(ref, "path", None)
    if path is not None:
        return f"{str(path).replace('/', '_')}_"
    return f"{str(ref.name).replace('/', '_').replace(':', '_')}_"


def _special_variables(opt: Any) -> list[tuple[str, Any]]:
    out = []
    it = getattr(opt, "_iterations", None)
    if it is None:
        it = getattr(opt, "iterations", None)
    if it is not None and _is_variable(it):
        out.append(("iter", it))
    lr = getattr(opt, "_learning_rate", None)
    if lr is not None and _is_variable(lr):
        out.append(("learning_rate", lr))
    return out


def optimizer_slot_map(opt: Any) -> tuple[list[tuple[Any, str, Any]], list[tuple[str, Any]]]:
    """Split a built optimizer's variables into slots and other variables.

    Returns ``([(model_variable, slot_name, slot_variable), ...], [(name, variable), ...])``.
    Keras names a slot ``{model variable path with '/' -> '_'}_{slot name}``
    (``add_variable_from_reference``); slots are matched to model variables by
    that prefix, in creation order when two model variables share a path.

    Example:
        >>> optimizer_slot_map(object())
        ([], [])
    """
    special = {id(v) for _, v in _special_variables(opt)}
    inner = getattr(opt, "inner_optimizer", None)   # LossScaleOptimizer: the inner one saves its own
    if inner is not None and inner is not opt:
        special.update(id(v) for v in getattr(inner, "variables", ()) or ())
    refs = [r for r in getattr(opt, "_trainable_variables", ()) or () if r is not None]
    by_prefix: dict[str, list[Any]] = {}
    for r in refs:
        by_prefix.setdefault(_slot_prefix(r), []).append(r)
    prefixes = sorted(by_prefix, key=len, reverse=True)
    groups: dict[tuple[str, str], list[Any]] = {}
    others: list[Any] = []
    for v in list(getattr(opt, "variables", ()) or ()):
        if id(v) in special:
            continue
        name = str(v.name).rsplit("/", 1)[-1]
        p = next((p for p in prefixes if name.startswith(p) and len(name) > len(p)), None)
        if p is None:
            others.append(v)
            continue
        groups.setdefault((p, name[len(p):]), []).append(v)
    slots = []
    for (p, slot_name), vs in groups.items():
        rs = by_prefix[p]
        if len(vs) == len(rs) and all(tuple(a.shape) == tuple(b.shape) for a, b in zip(rs, vs)):
            slots.extend((r, slot_name, v) for r, v in zip(rs, vs))
        else:
            others.extend(vs)
    order = {id(v): i for i, v in enumerate(getattr(opt, "variables", ()) or ())}
    others.sort(key=lambda v: order.get(id(v), 0))
    return slots, name_variables(opt, others)


# -- creation hooks ----------------------------------------------------------------------------
def _core_waits_for(obj: Any) -> bool:
    # Fast path: skip computing children when no restore waits on ``obj``.
    # ckptcore.notify_dependency_added is itself a no-op in that case.
    import ckptcore

    return ckptcore.has_pending(obj)


def _notify_children(obj: Any, children: Callable[[Any], list]) -> None:
    if not _core_waits_for(obj):
        return
    try:
        kids = list(children(obj))
    except Exception:  # object half-constructed: nothing can be matched yet
        return
    notify = _notify
    for name, child in kids:
        notify(obj, name, child)


def _restore_pending_slot(opt: Any, ref: Any, name: str | None, slot_var: Any) -> None:
    waiting = _PENDING_SLOTS.get(opt)
    if not waiting or name is None:
        return
    entry = waiting.get(id(ref))
    if entry is None or entry[0]() is not ref:
        return
    value = entry[1].pop(name, None)
    if value is None:
        return
    slot_var.assign(_assignable(value))
    if not entry[1]:
        del waiting[id(ref)]
    if not waiting:
        _PENDING_SLOTS.pop(opt)


def _assignable(value):
    from .variables import _assignable as f

    return f(value)


def install_keras_hooks(notify: Callable[[Any, str, Any], None] | None = None) -> bool:
    """Wrap Keras' weight/sublayer/optimizer-variable creation so new objects get pending values.

    Idempotent; returns True once the hooks are in place. Does nothing (and
    returns False) when Keras is not importable.

    Example:
        >>> install_keras_hooks() in (True, False)
        True
    """
    global _installed, _notify
    if notify is not None:
        _notify = notify
    if _installed:
        return True
    with _lock:
        if _installed:
            return True
        try:
            from keras.src.backend.common.variables import Variable
            from keras.src.layers.layer import Layer
            from keras.src.optimizers.base_optimizer import BaseOptimizer
            from keras.src.random.seed_generator import SeedGenerator
        except ImportError:
            return False

        track = Layer._track_variable

        @functools.wraps(track)
        def _track_variable(self, variable):
            result = track(self, variable)
            _notify_children(self, own_variables)
            parent = _INDEXED_PARENT.get(self)
            parent = parent() if parent is not None else None
            if parent is not None:
                _notify_children(parent, layer_children)
            return result

        setattr_ = Layer.__setattr__
        watched = (Layer, SeedGenerator)

        @functools.wraps(setattr_)
        def __setattr__(self, name, value):
            setattr_(self, name, value)
            if isinstance(value, watched) or (isinstance(value, (list, tuple, dict)) and value
                                              and not name.startswith("_")):
                _notify_children(self, layer_children)

        add_variable = BaseOptimizer.add_variable

        @functools.wraps(add_variable)
        def _add_variable(self, *args, **kwargs):
            variable = add_variable(self, *args, **kwargs)
            if not _in_reference.get():
                _notify_children(self, lambda o: optimizer_slot_map(o)[1])
            return variable

        opt_setattr = BaseOptimizer.__setattr__

        @functools.wraps(opt_setattr)
        def _opt_setattr(self, name, value):
            opt_setattr(self, name, value)
            if isinstance(value, Variable):  # e.g. Nadam's ``self._u_product = Variable(...)`` in build()
                _notify_children(self, lambda o: optimizer_slot_map(o)[1])

        add_ref = BaseOptimizer.add_variable_from_reference

        @functools.wraps(add_ref)
        def _add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
            token = _in_reference.set(True)
            try:
                slot = add_ref(self, reference_variable, name=name, initializer=initializer)
            finally:
                _in_reference.reset(token)
            _restore_pending_slot(self, reference_variable, name or "var", slot)
            return slot

        Layer._track_variable = _track_variable
        Layer.__setattr__ = __setattr__
        BaseOptimizer.add_variable = _add_variable
        BaseOptimizer.__setattr__ = _opt_setattr
        BaseOptimizer.add_variable_from_reference = _add_variable_from_reference
        _installed = True
        return True


_in_reference: contextvars.ContextVar[bool] = contextvars.ContextVar("ckptcore_tf_in_reference", default=False)


# -- adapters ----------------------------------------------------------------------------------
class LayerAdapter(ck.Adapter):
    """Keras 3 ``Layer`` and ``Model``: own variables and sublayers as children.

    Example:
        >>> LayerAdapter().attributes(None)
        []
    """

    name = "ckptcore_tf.keras_layer"

    def children(self, obj):
        install_keras_hooks()
        return layer_children(obj)


class SeedGeneratorAdapter(ck.Adapter):
    """``keras.random.SeedGenerator``: its ``state`` variable, so dropout resumes identically.

    Example:
        >>> class SG: state = None
        >>> SeedGeneratorAdapter().children(SG())
        []
    """

    name = "ckptcore_tf.keras_seed_generator"

    def children(self, obj):
        state = getattr(obj, "state", None)
        return [("state", state)] if state is not None else []


class OptimizerAdapter(ck.Adapter):
    """Keras 3 optimizers: ``iter``, ``learning_rate`` and other variables as children, per-variable state as slots.

    A fresh optimizer has no slot variables until it is built (on its first
    step, or ``optimizer.build(model.trainable_variables)``). Restored slots
    wait for that moment and are assigned as Keras creates them, so
    restore-then-train is bit-identical to uninterrupted training.

    Example:
        >>> list(OptimizerAdapter().slots(object()))
        []
    """

    name = "ckptcore_tf.keras_optimizer"

    def children(self, obj):
        install_keras_hooks()
        out = list(_special_variables(obj))
        out += optimizer_slot_map(obj)[1]
        inner = getattr(obj, "inner_optimizer", None)  # LossScaleOptimizer
        if inner is not None and inner is not obj:
            out.append(("inner_optimizer", inner))
        return _unique(out)

    def slots(self, obj):
        adapter = None
        for ref, name, var in optimizer_slot_map(obj)[0]:
            if adapter is None:
                adapter = ck.registry.find_adapter(var)
            yield ck.SlotVariable(variable=ref, name=name, value=adapter.get_value(var, ck.naming.VARIABLE_VALUE))

    def restore_slot(self, obj, variable, name, value):
        for ref, slot_name, var in optimizer_slot_map(obj)[0]:
            if ref is variable and slot_name == name:
                if tuple(var.shape) != tuple(np.shape(value)):
                    raise ck.ShapeMismatchError(
                        f"slot {name!r} of optimizer {obj.name!r} for {getattr(variable, 'path', variable)!r}: "
                        f"the checkpoint has shape {tuple(np.shape(value))}, the live slot has {tuple(var.shape)}")
                var.assign(_assignable(np.asarray(value)))
                return
        install_keras_hooks()
        with _lock:
            waiting = _PENDING_SLOTS.get(obj)
            if waiting is None:
                waiting = {}
                _PENDING_SLOTS[obj] = waiting
            entry = waiting.get(id(variable))
            if entry is None or entry[0]() is not variable:
                entry = (weakref.ref(variable), {})
                waiting[id(variable)] = entry
            entry[1][name] = np.array(value, copy=True)


def pending_slot_count(opt: Any) -> int:
    """How many restored slot values wait for ``opt`` to be built. For tests and debugging.

    Example:
        >>> pending_slot_count(object())
        0
    """
    waiting = _PENDING_SLOTS.get(opt) or {}
    return sum(len(e[1]) for e in waiting.values())
