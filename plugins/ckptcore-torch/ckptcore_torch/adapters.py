"""Adapters for ``nn.Module``, tensors and parameters, ``torch.Generator``,
LR schedulers and any object with ``state_dict()``/``load_state_dict()``.

The optimizer adapter lives in :mod:`ckptcore_torch.optim`. None of these
modules imports torch at import time; torch is imported inside the methods
that need it (by then the user has torch objects, so it is loaded already).

Example:
    >>> import torch, ckptcore as ck
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 1))
    >>> sorted(ck.load_checkpoint(ck.Checkpoint(model=net).write("memory://doc/torch/a")).keys())[:2]
    ['model/0/bias/.ATTRIBUTES/VARIABLE_VALUE', 'model/0/weight/.ATTRIBUTES/VARIABLE_VALUE']
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from ckptcore.adapters import Adapter
from ckptcore.errors import CheckpointError
from ckptcore.naming import VARIABLE_VALUE
from ckptcore.restore import WeakIdTable

from . import codec, hooks
from .convert import (
    _plain_types,
    check_materialized,
    finish_staged,
    from_numpy,
    numpy_dtype,
    plain_view,
    shares_memory,
    staged_restore_buffer,
    to_numpy,
    writable_view,
)

__all__ = ["ModuleAdapter", "TensorAdapter", "GeneratorAdapter", "StateDictAdapter", "LRSchedulerAdapter",
           "has_state_dict"]

_ATTRS = [VARIABLE_VALUE]


class ModuleAdapter(Adapter):
    """``nn.Module``: submodules, parameters and persistent buffers are its children.

    Children are named as in ``_modules``/``_parameters``/``_buffers``, so an
    ``nn.Sequential``'s first weight is ``model/0/weight``. Each parameter and
    buffer is a tensor node of its own (one ``VARIABLE_VALUE``), which lets
    optimizer slots attach to it as TF attaches them to variables.

    Example:
        >>> import torch
        >>> [n for n, _ in ModuleAdapter().children(torch.nn.BatchNorm1d(2))]
        ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    """

    name = "ckptcore_torch.module"

    def __init__(self):
        self._extra = StateDictAdapter(getter=_get_extra_state, setter=_set_extra_state,
                                       prefix=_EXTRA_STATE, what="get_extra_state()")

    def children(self, obj):
        hooks.ensure_installed()  # a torch module may now be waiting for children: listen for them
        out = [(n, p) for n, p in obj._parameters.items() if p is not None]
        skip = obj._non_persistent_buffers_set
        out += [(n, b) for n, b in obj._buffers.items() if b is not None and n not in skip]
        out += [(n, m) for n, m in obj._modules.items() if m is not None]
        return out

    # A module that overrides get_extra_state()/set_extra_state() gets that state saved too:
    # JSON on the module's node, tensors in it as values named ``_extra_state/...``.
    def attributes(self, obj):
        return self._extra.attributes(obj) if _has_extra_state(obj) else []

    def get_value(self, obj, attr):
        return self._extra.get_value(obj, attr)

    def spec(self, obj, attr):
        return self._extra.spec(obj, attr)

    def set_value(self, obj, attr, value):
        self._extra.set_value(obj, attr, value)

    def get_state(self, obj):
        return self._extra.get_state(obj) if _has_extra_state(obj) else None

    def validate_state(self, obj, state):
        if not _has_extra_state(obj):
            raise CheckpointError(
                f"the checkpoint has extra state (get_extra_state()) for a {type(obj).__qualname__}, "
                "but this module does not override set_extra_state()")
        self._extra.validate_state(obj, state)

    def set_state(self, obj, state):
        if not _has_extra_state(obj):
            raise CheckpointError(
                f"the checkpoint has extra state (get_extra_state()) for a {type(obj).__qualname__}, "
                "but this module does not override set_extra_state()")
        self._extra.set_state(obj, state)


_EXTRA_STATE = "_extra_state"


def _has_extra_state(module) -> bool:
    from torch.nn import Module

    return type(module).get_extra_state is not Module.get_extra_state


def _get_extra_state(module):
    return module.get_extra_state()


def _set_extra_state(module, state) -> None:
    module.set_extra_state(state)


class TensorAdapter(Adapter):
    """``torch.Tensor`` and ``nn.Parameter``: one value, restored in place on its own device.

    CPU contiguous tensors are read straight into their memory (a numpy view
    sharing it); others are filled with ``tensor.copy_`` under ``no_grad``.
    Every dtype with a numpy or ml_dtypes counterpart works, bfloat16 and
    float8 included, bit for bit.

    Example:
        >>> import torch, ckptcore as ck
        >>> src = torch.arange(4, dtype=torch.bfloat16)
        >>> path = ck.Checkpoint(t=src).write("memory://doc/torch/t")
        >>> dst = torch.zeros(4, dtype=torch.bfloat16); ptr = dst.data_ptr()
        >>> _ = ck.Checkpoint(t=dst).read(path)
        >>> dst.tolist(), dst.data_ptr() == ptr
        ([0.0, 1.0, 2.0, 3.0], True)
    """

    name = "ckptcore_torch.tensor"

    def attributes(self, obj):
        return _ATTRS

    def get_value(self, obj, attr):
        if obj.is_sparse:
            raise CheckpointError("sparse tensors cannot be checkpointed; convert with .to_dense()")
        return to_numpy(obj)

    def spec(self, obj, attr):
        check_materialized(obj)
        return tuple(int(d) for d in obj.shape), numpy_dtype(obj.dtype)

    def leaf_value(self, obj):
        """A plain CPU tensor's (or parameter's) values as a numpy view, for a save's shortcut.

        Example:
            >>> import torch
            >>> a = TensorAdapter()
            >>> a.leaf_value(torch.ones(2)).tolist(), a.leaf_value(torch.ones(2, device="meta"))
            ([1.0, 1.0], None)
        """
        return plain_view(obj)   # (None: the usual path, get_value, handles the tensor)

    def value_in_place(self, obj):
        """A plain CPU tensor's (or parameter's) memory: the restore reads into it and is done.

        Example:
            >>> import torch
            >>> t = torch.zeros(2); TensorAdapter().value_in_place(t)[:] = 1; t.tolist()
            [1.0, 1.0]
        """
        if type(obj) in _plain_types() and obj.is_cpu:  # (lazy and meta tensors are neither)
            return writable_view(obj)
        return None

    def restore_buffer(self, obj, attr):
        if obj.device.type != "cpu":  # a pinned buffer when the restore has pinned memory to stage through
            return staged_restore_buffer(obj)
        return writable_view(obj)

    def set_value(self, obj, attr, value):
        if shares_memory(value, obj) or finish_staged(obj, value):
            return  # already read in place, or staged through pinned memory and copied to the device
        import torch

        src = from_numpy(np.asarray(value))
        with torch.no_grad():
            obj.copy_(src)


class GeneratorAdapter(Adapter):
    """``torch.Generator``: its RNG state (a uint8 tensor) is one value.

    Example:
        >>> import torch, ckptcore as ck
        >>> g = torch.Generator().manual_seed(1)
        >>> path = ck.Checkpoint(rng=g).write("memory://doc/torch/g")
        >>> a = torch.rand(2, generator=g)
        >>> _ = ck.Checkpoint(rng=g).read(path)
        >>> torch.equal(torch.rand(2, generator=g), a)
        True
    """

    name = "ckptcore_torch.generator"

    def attributes(self, obj):
        return _ATTRS

    def get_value(self, obj, attr):
        return to_numpy(obj.get_state())

    def spec(self, obj, attr):
        state = obj.get_state()
        return tuple(state.shape), numpy_dtype(state.dtype)

    def set_value(self, obj, attr, value):
        obj.set_state(from_numpy(np.array(value, copy=True)))


def has_state_dict(obj: Any) -> bool:
    """Predicate of the fallback adapter: the type has ``state_dict`` and ``load_state_dict``.

    Example:
        >>> class S:
        ...     def state_dict(self): return {}
        ...     def load_state_dict(self, sd): pass
        >>> has_state_dict(S()), has_state_dict(S)
        (True, False)
    """
    cls = type(obj)
    return callable(getattr(cls, "state_dict", None)) and callable(getattr(cls, "load_state_dict", None))


class _Encoded(threading.local):
    obj_ref: Any = None
    encoded: Any = None


class StateDictAdapter(Adapter):
    """Fallback for any object with ``state_dict()``/``load_state_dict()``.

    Tensors in the state dict become values named by their path
    (``"state/0/exp_avg"``), everything else is saved as JSON; a value that
    is neither raises :class:`~ckptcore.CheckpointError` (nothing is ever
    pickled). Restore rebuilds the dict and calls ``load_state_dict`` once.

    A tensor is restored only if the live object's ``state_dict()`` already
    has a tensor at that path (its shape and dtype are checked against it).

    Example:
        >>> import torch, ckptcore as ck
        >>> class Counter:
        ...     def __init__(self): self.n, self.total = 0, torch.zeros(2)
        ...     def state_dict(self): return {"n": self.n, "total": self.total}
        ...     def load_state_dict(self, sd): self.n, self.total = sd["n"], sd["total"]
        >>> c = Counter(); c.n = 3; c.total += 1.5
        >>> path = ck.Checkpoint(c=c).write("memory://doc/torch/sd")
        >>> d = Counter(); _ = ck.Checkpoint(c=d).read(path)
        >>> d.n, d.total.tolist()
        (3, [1.5, 1.5])
    """

    name = "ckptcore_torch.state_dict"

    def __init__(self, getter=None, setter=None, prefix: str = "", what: str = "state_dict()"):
        self._get = getter or (lambda obj: obj.state_dict())
        self._set = setter or (lambda obj, state: obj.load_state_dict(state))
        self._prefix = prefix
        self._what = what
        self._cache = _Encoded()
        self._restored = WeakIdTable()   # obj -> {attr: tensor} between set_value and set_state
        self._lock = threading.Lock()

    def _encode(self, obj, fresh: bool):
        cache = self._cache
        if not fresh and cache.obj_ref is not None and cache.obj_ref() is obj:
            return cache.encoded
        what = f"{self._what} of {type(obj).__module__}.{type(obj).__qualname__}"
        prefix = (self._prefix,) if self._prefix else ()
        encoded = codec.encode(self._get(obj), what=what,
                               tensor_name=lambda path: "/".join(str(p) for p in prefix + tuple(path)))
        try:
            cache.obj_ref = weakref.ref(obj)   # never keeps the object alive
        except TypeError:
            cache.obj_ref = None               # not weakly referenceable: no cache
            return encoded
        cache.encoded = encoded
        return encoded

    def attributes(self, obj):
        return list(self._encode(obj, fresh=True)[1])

    def get_value(self, obj, attr):
        return to_numpy(self._encode(obj, fresh=False)[1][attr])

    def spec(self, obj, attr):
        t = self._encode(obj, fresh=False)[1][attr]
        check_materialized(t)
        return tuple(int(d) for d in t.shape), numpy_dtype(t.dtype)

    def get_state(self, obj):
        return {"state_dict": self._encode(obj, fresh=True)[0]}

    def set_value(self, obj, attr, value):
        live = self._encode(obj, fresh=False)[1].get(attr)
        t = from_numpy(np.array(value, copy=True))
        if live is not None and live.device.type != "cpu":
            t = t.to(live.device)
        with self._lock:
            entry = self._restored.get(obj)
            if entry is None:
                entry = {}
                self._restored[obj] = entry
            entry[attr] = t

    def validate_state(self, obj, state):
        if not isinstance(state, dict) or "state_dict" not in state:
            raise CheckpointError(f"saved state of {type(obj).__qualname__} is not a {self._what} record")
        problem = _state_mismatch(state["state_dict"], self._encode(obj, fresh=True)[0], ())
        if problem is not None:   # load_state_dict would fail (or take it) after the weights were assigned
            raise CheckpointError(f"saved {self._what} of {type(obj).__qualname__} does not fit the live one: "
                                  f"{problem}")

    def set_state(self, obj, state):
        with self._lock:
            tensors = dict(self._restored.pop(obj, None) or {})
        if not isinstance(state, dict) or "state_dict" not in state:
            raise CheckpointError(f"saved state of {type(obj).__qualname__} is not a {self._what} record")
        live = self._encode(obj, fresh=True)[1]
        for name, t in live.items():
            tensors.setdefault(name, t)  # values the checkpoint lacks keep their live tensor
        self._set(obj, codec.decode(state["state_dict"], tensors))


def _kind(value) -> str | None:
    """The JSON kind of a codec-encoded value (None: ``None``, which matches anything)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        if len(value) == 1:
            tag = next(iter(value))
            if tag in codec.TAGS:
                return {"__tuple__": "list", "__float__": "number", "__dict__": "dict", "__tensor__": "tensor"}[tag]
        return "dict"
    return type(value).__name__


def _items(value) -> list | dict:
    if isinstance(value, dict) and len(value) == 1:
        tag = next(iter(value))
        if tag == "__tuple__":
            return value[tag]
        if tag == "__dict__":
            return {str(k): v for k, v in value[tag]}
    return value


def _state_mismatch(saved, live, path: tuple) -> str | None:
    """Where a saved (encoded) state dict differs in kind from the live one, or None.

    Keys only one side has are allowed (a newer or older version of the class); ``None`` on
    either side matches anything; lists of different lengths are compared element by element
    against the live list's first element.
    """
    ks, kl = _kind(saved), _kind(live)
    if ks is None or kl is None:
        return None
    where = "/".join(map(str, path)) or "the top level"
    if ks != kl:
        return f"at {where} the checkpoint has a {ks}, the live object a {kl}"
    if ks == "dict":
        s_items, l_items = _items(saved), _items(live)
        for key in s_items:
            if key in l_items:
                found = _state_mismatch(s_items[key], l_items[key], path + (key,))
                if found is not None:
                    return found
    elif ks == "list":
        s_list, l_list = _items(saved), _items(live)
        if not l_list:
            return None
        for i, item in enumerate(s_list):
            found = _state_mismatch(item, l_list[i] if len(l_list) == len(s_list) else l_list[0], path + (i,))
            if found is not None:
                return found
    return None


class LRSchedulerAdapter(StateDictAdapter):
    """``torch.optim.lr_scheduler.LRScheduler`` (and ``ReduceLROnPlateau``): its state dict as JSON.

    The optimizer it drives is saved by the optimizer adapter, not here.

    Example:
        >>> import torch, ckptcore as ck
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        >>> opt.step(); sched.step()
        >>> LRSchedulerAdapter().get_state(sched)["state_dict"]["last_epoch"]
        1
    """

    name = "ckptcore_torch.lr_scheduler"
