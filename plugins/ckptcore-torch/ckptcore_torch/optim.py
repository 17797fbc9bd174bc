"""``torch.optim.Optimizer`` (every built-in optimizer) as a TF-style checkpoint object.

* Per-parameter tensor state (``exp_avg``, ``momentum_buffer``, the ``step``
  tensor, ...) is saved as **slot variables** attached to the parameter's
  node: ``model/0/weight/.OPTIMIZER_SLOT/optimizer/exp_avg/.ATTRIBUTES/VARIABLE_VALUE``.
  Tensors inside lists (LBFGS history) are slots named ``old_dirs/0``, ...
* ``param_groups`` hyperparameters (everything but ``params``) and
  non-tensor per-parameter state are the optimizer's JSON state;
  hyperparameters that are tensors (``lr=torch.tensor(...)``) are values of
  the optimizer node (``param_groups/0/lr``), restored in place.
* Restoring into a fresh optimizer before its first step gives it exactly
  the state the saved one had, so resumed training is bit-identical.

As in TF, slots of a parameter that is not part of the checkpoint are not
saved: checkpoint the model together with its optimizer.

Example:
    >>> import torch, ckptcore as ck
    >>> net = torch.nn.Linear(2, 1); opt = torch.optim.Adam(net.parameters())
    >>> net(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> path = ck.Checkpoint(model=net, optimizer=opt).write("memory://doc/torch/opt")
    >>> for k in ck.load_checkpoint(path).keys():
    ...     if k.startswith("model/weight/.OPTIMIZER_SLOT"):
    ...         print(k)
    model/weight/.OPTIMIZER_SLOT/optimizer/exp_avg/.ATTRIBUTES/VARIABLE_VALUE
    model/weight/.OPTIMIZER_SLOT/optimizer/exp_avg_sq/.ATTRIBUTES/VARIABLE_VALUE
    model/weight/.OPTIMIZER_SLOT/optimizer/step/.ATTRIBUTES/VARIABLE_VALUE
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import numpy as np

from ckptcore.adapters import Adapter, SlotVariable
from ckptcore.distributed import ShardBuffer
from ckptcore.errors import CheckpointError

from . import codec
from .convert import (
    _AS_IS,
    _dtype_table,
    _plain_types,
    check_materialized,
    from_numpy,
    numpy_dtype,
    shares_memory,
    to_numpy,
    writable_view,
)
from .dtensor import from_buffer, is_dtensor, shard_buffer

__all__ = ["OptimizerAdapter"]

_GROUP_PREFIX = "param_groups"


def _params(opt) -> list:
    return [p for g in opt.param_groups for p in g["params"]]


def _opt_name(opt) -> str:
    return f"{type(opt).__module__}.{type(opt).__qualname__}"


def _encode_groups(opt):
    """JSON for every group's hyperparameters, plus their tensors by attribute name."""
    groups, tensors = [], {}
    for gi, group in enumerate(opt.param_groups):
        hyper = {k: v for k, v in group.items() if k != "params"}
        enc, ts = codec.encode(hyper, what=f"param_groups[{gi}] of {_opt_name(opt)}",
                               tensor_name=lambda path, gi=gi: "/".join([_GROUP_PREFIX, str(gi), *map(str, path)]))
        groups.append(enc)
        tensors.update(ts)
    return groups, tensors


def _encode_param_state(opt, index: int, param_state: dict):
    """``codec.encode`` of one parameter's state: JSON with placeholders, and its tensors by slot name.

    The state of every built-in optimizer but LBFGS (Adam's ``step``/``exp_avg``/``exp_avg_sq``,
    SGD's ``momentum_buffer``) is a flat dict of tensors under string keys: that is encoded here
    in one pass, with the result ``codec.encode`` gives (tested against it); anything else goes
    through ``codec.encode``.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> enc, ts = _encode_param_state(opt, 0, {"momentum_buffer": torch.zeros(1)})
        >>> enc, list(ts)
        ({'momentum_buffer': {'__tensor__': 'momentum_buffer'}}, ['momentum_buffer'])
    """
    tensor = _torch_tensor()
    enc, tensors = {}, {}
    for k, v in param_state.items():
        if type(k) is not str or k in codec.TAGS or not isinstance(v, tensor) or "/" in k:
            what = f"state of parameter {index} of {_opt_name(opt)}"
            return codec.encode(dict(param_state), what=what, tensor_name=slot_tensor_name(what))
        enc[k] = {"__tensor__": k}
        tensors[k] = v
    return enc, tensors


def _named_tensors_check():
    """Whether one parameter's state is tensors under plain string keys alone (Adam's, SGD's, ...): its
    slots are then its keys and tensors as they are, and its JSON would be placeholders only.

    Returns the check for one pass over an optimizer's parameters: it remembers the answer for
    each tuple of keys met (20,000 parameters of Adam have one) and then checks only the values.

    Example:
        >>> import torch
        >>> check = _named_tensors_check()
        >>> check({"exp_avg": torch.zeros(1)}), check({"exp_avg": 1.0}), check({"a/b": torch.zeros(1)})
        (True, False, False)
    """
    tensor, tags, plain = _torch_tensor(), codec.TAGS, _plain_types()
    keys_seen: dict[tuple, bool] = {}

    def named_tensors_only(param_state: dict) -> bool:
        keys = tuple(param_state)
        plain_keys = keys_seen.get(keys)
        if plain_keys is None:
            plain_keys = keys_seen[keys] = all(type(k) is str and k not in tags and "/" not in k for k in keys)
        if not plain_keys:
            return False
        for v in param_state.values():
            if type(v) not in plain and not isinstance(v, tensor):
                return False
        return True
    return named_tensors_only


def slot_tensor_name(what: str):
    """``codec.encode``'s ``tensor_name`` for per-parameter state: the keys joined by ``/`` (the slot's
    name), refusing a key that holds a ``/`` itself (restored, it would become one level deeper).

    Example:
        >>> slot_tensor_name("state of parameter 0")(("old_dirs", 1))
        'old_dirs/1'
    """
    def name(path: tuple) -> str:
        for seg in path:
            if "/" in str(seg):
                raise CheckpointError(
                    f"{what}: the state key {seg!r} holds a '/', which slot names put between the keys of "
                    "nested state, so a tensor under it would be restored one level deeper. Rename the key.")
        return "/".join(map(str, path))
    return name


def _torch_tensor():
    import torch

    return torch.Tensor


def _merge(enc: Any, existing: Any) -> Any:
    """Decode ``enc``; tensor placeholders keep what ``existing`` holds there (a restored slot) or None."""
    if isinstance(enc, list):
        old = existing if isinstance(existing, (list, tuple)) else ()
        return [_merge(x, old[i] if i < len(old) else None) for i, x in enumerate(enc)]
    if isinstance(enc, dict):
        if len(enc) == 1:
            (tag, inner), = enc.items()
            if tag == "__tensor__":
                return existing
            if tag == "__tuple__":
                return tuple(_merge(enc=[*inner], existing=existing))
            if tag in ("__float__", "__dict__"):
                return codec.decode(enc, {})
        old = existing if isinstance(existing, dict) else {}
        return {k: _merge(x, old.get(k)) for k, x in enc.items()}
    return enc


def _is_placeholder(enc: Any) -> bool:
    return isinstance(enc, dict) and len(enc) == 1 and "__tensor__" in enc


def _put(container: Any, segments: list[str], value: Any) -> Any:
    """Return ``container`` with ``value`` stored at the slot path ``segments``."""
    if not segments:
        return value
    seg, rest = segments[0], segments[1:]
    if container is None:
        container = [] if seg.isdigit() else {}
    if isinstance(container, (list, tuple)):
        if not seg.isdigit():
            raise CheckpointError(f"slot path segment {seg!r} indexes a list")
        i = int(seg)
        items = list(container) + [None] * max(0, i + 1 - len(container))
        items[i] = _put(items[i], rest, value)
        return tuple(items) if isinstance(container, tuple) else items
    if isinstance(container, dict):
        key: Any = seg
        if seg not in container and seg.lstrip("-").isdigit() and int(seg) in container:
            key = int(seg)
        container[key] = _put(container.get(key), rest, value)
        return container
    raise CheckpointError(f"cannot store slot at {seg!r} inside a {type(container).__qualname__}")


class OptimizerAdapter(Adapter):
    """Adapter for ``torch.optim.Optimizer`` and its subclasses (see the module docstring).

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5, momentum=0.9)
        >>> OptimizerAdapter().get_state(opt)["param_groups"][0]["lr"]
        0.5
    """

    name = "ckptcore_torch.optimizer"

    #: the buffers slot_restore_buffers offers are views of the state tensors themselves
    slot_buffers_in_place = True

    # -- tensor hyperparameters: values of the optimizer node ---------------------------
    def attributes(self, obj):
        return list(_encode_groups(obj)[1])

    def _hyper_tensor(self, obj, attr):
        tensors = _encode_groups(obj)[1]
        if attr not in tensors:
            raise CheckpointError(f"{_opt_name(obj)} has no tensor hyperparameter {attr!r}")
        return tensors[attr]

    def get_value(self, obj, attr):
        return to_numpy(self._hyper_tensor(obj, attr))

    def spec(self, obj, attr):
        t = self._hyper_tensor(obj, attr)
        check_materialized(t)
        return tuple(int(d) for d in t.shape), numpy_dtype(t.dtype)

    def restore_buffer(self, obj, attr):
        return writable_view(self._hyper_tensor(obj, attr))

    def set_value(self, obj, attr, value):
        t = self._hyper_tensor(obj, attr)
        if shares_memory(value, t):
            return
        import torch

        with torch.no_grad():
            t.copy_(from_numpy(np.asarray(value)))

    # -- JSON state: hyperparameters and non-tensor per-parameter state -------------------
    def get_state(self, obj):
        groups, _ = _encode_groups(obj)
        index = {id(p): i for i, p in enumerate(_params(obj))}
        state = {}
        named_tensors_only = _named_tensors_check()
        for p, s in obj.state.items():
            i = index.get(id(p))
            if i is None or not s:
                continue
            if named_tensors_only(s):
                # only tensors under plain names (Adam, SGD, ...): its slots carry all of it, and the JSON
                # would hold nothing but a placeholder per tensor (2.5 of 10 MB of index for 20,000
                # parameters with Adam), which set_state skips
                continue
            state[str(i)] = _encode_param_state(obj, i, s)[0]
        return {"param_groups": groups, "group_sizes": [len(g["params"]) for g in obj.param_groups],
                "state": state}

    def validate_state(self, obj, state):
        """Everything :meth:`set_state` relies on, checked before a restore assigns anything.

        Example:
            >>> import torch
            >>> p = torch.nn.Parameter(torch.zeros(2)); opt = torch.optim.SGD([p], lr=0.1)
            >>> try:
            ...     OptimizerAdapter().validate_state(opt, {"param_groups": [], "group_sizes": []})
            ... except Exception as e:
            ...     print("param groups" in str(e))
            True
        """
        where = _opt_name(obj)
        if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
            raise CheckpointError(f"saved state of {where} has no list of param_groups")
        saved_groups, sizes = state["param_groups"], state.get("group_sizes", [])
        if not isinstance(sizes, list) or not all(type(n) is int for n in sizes):
            raise CheckpointError(f"saved state of {where}: group_sizes must be a list of ints, got {sizes!r}")
        live_sizes = [len(g["params"]) for g in obj.param_groups]
        if len(saved_groups) != len(obj.param_groups) or sizes != live_sizes:
            raise CheckpointError(
                f"{where}: the checkpoint's optimizer has {len(saved_groups)} param groups of sizes {sizes}, "
                f"the live one {len(obj.param_groups)} of sizes {live_sizes}. Build the optimizer over the same "
                "parameters, in the same groups, as the one that was saved.")
        _, live_tensors = _encode_groups(obj)
        for enc in saved_groups:
            hyper = codec.decode(enc, _LiveTensors(live_tensors, where))
            if not isinstance(hyper, dict):
                raise CheckpointError(f"saved state of {where}: a param group is a {type(hyper).__name__}, not a dict")
        per_param = state.get("state", {})
        if not isinstance(per_param, dict):
            raise CheckpointError(f"saved state of {where}: 'state' must be a mapping, got {type(per_param).__name__}")
        n = sum(live_sizes)
        for key, enc in per_param.items():
            if not (isinstance(key, str) and key.isdigit() and int(key) < n):
                raise CheckpointError(f"{where}: the checkpoint has state for parameter {key!r}, "
                                      f"the live optimizer has {n} parameters")
            if not isinstance(enc, dict):
                raise CheckpointError(f"saved state of {where}: the state of parameter {key} is a "
                                      f"{type(enc).__name__}, not a dict")
            if not all(map(_is_placeholder, enc.values())):  # (placeholders alone decode to nothing)
                _merge(enc, None)  # decodes every value: malformed encodings raise here

    def set_state(self, obj, state):
        where = _opt_name(obj)
        if not isinstance(state, dict) or "param_groups" not in state:
            raise CheckpointError(f"saved state of {where} has no param_groups")
        saved_groups, sizes = state["param_groups"], state.get("group_sizes", [])
        live_sizes = [len(g["params"]) for g in obj.param_groups]
        if len(saved_groups) != len(obj.param_groups) or list(sizes) != live_sizes:
            raise CheckpointError(
                f"{where}: the checkpoint's optimizer has {len(saved_groups)} param groups of sizes {list(sizes)}, "
                f"the live one {len(obj.param_groups)} of sizes {live_sizes}. Build the optimizer over the same "
                "parameters, in the same groups, as the one that was saved.")
        _, live_tensors = _encode_groups(obj)
        for group, enc in zip(obj.param_groups, saved_groups):
            hyper = codec.decode(enc, _LiveTensors(live_tensors, where))
            params = group["params"]
            names = group.get("param_names")
            group.clear()
            group["params"] = params
            group.update(hyper)
            if names is not None and "param_names" not in hyper:
                group["param_names"] = names
        params = _params(obj)
        for key, enc in state.get("state", {}).items():
            i = int(key)
            if not 0 <= i < len(params):
                raise CheckpointError(f"{where}: the checkpoint has state for parameter {i}, "
                                      f"the live optimizer has {len(params)} parameters")
            p = params[i]
            existing = obj.state.get(p, {})
            merged = dict(existing)
            for k, v in enc.items():
                if _is_placeholder(v):
                    # a slot: restore_slots put it in the state already (then it is in merged), or
                    # adds it when it comes (_merge of a placeholder is what the state holds there)
                    continue
                merged[k] = _merge(v, existing.get(k))
            if merged:
                obj.state[p] = merged
        # Let the optimizer fill defaults and upgrade old state, as load_state_dict does.
        obj.__setstate__({"state": obj.state, "param_groups": obj.param_groups})

    # -- slots: per-parameter tensor state ---------------------------------------------
    def slots(self, obj):
        index = {id(p): i for i, p in enumerate(_params(obj))}
        out: list = []
        add = out.append
        named_tensors_only = _named_tensors_check()
        plain, direct = _plain_types(), _DIRECT
        for p, s in obj.state.items():
            i = index.get(id(p))
            if i is None or not s:
                continue
            items = s.items() if named_tensors_only(s) else _encode_param_state(obj, i, s)[1].items()
            for name, t in items:
                arr = None
                if type(t) in plain:  # to_numpy's plain case, inlined (state tensors need no detach())
                    ok = direct.get(t.dtype)
                    if ok is None:
                        ok = _views_directly(t.dtype)
                    if ok:
                        try:
                            arr = t.numpy()
                        except (RuntimeError, TypeError):  # (requires grad, another device, meta, ...)
                            arr = None
                add(SlotVariable(p, name, to_numpy(t) if arr is None else arr))   # (positional: 25 % less)
        return out

    def slot_restore_buffers(self, obj, requests):
        """The memory of state tensors the optimizer has already, where a slot can land in place.

        Example:
            >>> import numpy as np, torch
            >>> p = torch.nn.Parameter(torch.zeros(2)); opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
            >>> opt.state[p]["momentum_buffer"] = torch.zeros(2)
            >>> buf, = OptimizerAdapter().slot_restore_buffers(opt, [(p, "momentum_buffer", (2,), np.dtype("float32"))])
            >>> buf[:] = 3; opt.state[p]["momentum_buffer"].tolist()
            [3.0, 3.0]
        """
        state = obj.state
        out: list = []
        add = out.append
        group_of = None
        plain, kinds, direct = _plain_types(), _KINDS, _DIRECT
        last = None   # the variable of the previous request: a parameter's slots come one after another
        for variable, name, shape, dtype in requests:
            if type(variable) in plain:  # a plain parameter (never a DTensor): the checks below, inlined
                if variable is not last:
                    s = state.get(variable)
                    last, v_dtype, v_cpu, s_dict = variable, variable.dtype, variable.is_cpu, type(s) is dict
                kind = kinds.get(name) or _slot_kind(name)
                t = s.get(name) if s_dict and kind[0] else (_at(s, name) if s else None)
                buf = None
                if type(t) in plain and t.is_cpu and t.shape == (shape if type(shape) is tuple else tuple(shape)):
                    if not kind[1] and t.dtype is v_dtype and v_cpu:
                        landed = True   # what _landing gives (t is on the CPU, of the parameter's dtype)
                    else:
                        if group_of is None:
                            group_of = _group_index(obj)
                        landed = _landing(t, variable, name, dtype, group_of.get(id(variable))) is t
                    if landed:
                        ok = direct.get(t.dtype)
                        if ok is None:
                            ok = _views_directly(t.dtype)
                        if ok and not t.requires_grad:  # writable_view's plain case, inlined
                            try:
                                buf = t.numpy()
                            except (RuntimeError, TypeError):  # (another device, meta, conjugate/negative bits)
                                buf = None
                            else:
                                f = buf.flags
                                if not (f.c_contiguous and f.writeable and buf.dtype == dtype):
                                    buf = None
                        else:
                            buf = writable_view(t)
                            if buf is not None and buf.dtype != dtype:  # (also what _landing's dtype check refuses)
                                buf = None
                add(buf)
                continue
            last = None   # (``s`` is reused below for this variable's state)
            if is_dtensor(variable) and tuple(variable.shape) == tuple(shape):
                add(shard_buffer(variable).like(dtype))  # read this worker's boxes of the slot only
                continue
            buf = None
            s = state.get(variable) if _is_tensor(variable) else None   # .get: state is a defaultdict
            if s:
                t = _at(s, name)
                if _is_tensor(t) and t.device.type == "cpu" and tuple(t.shape) == tuple(shape):
                    if group_of is None:
                        group_of = _group_index(obj)
                    if _landing(t, variable, name, dtype, group_of.get(id(variable))) is t:
                        buf = writable_view(t)
                        if buf is not None and buf.dtype != dtype:
                            buf = None
            out.append(buf)
        return out

    def restore_slot(self, obj, variable, name, value):
        self.restore_slots(obj, [(variable, name, value)])

    def restore_slots(self, obj, items):
        """Install restored slots as state tensors: in place, or adopting the array read (no copy).

        Example:
            >>> import numpy as np, torch
            >>> p = torch.nn.Parameter(torch.zeros(2)); opt = torch.optim.Adam([p])
            >>> OptimizerAdapter().restore_slots(opt, [(p, "exp_avg", np.ones(2, np.float32))])
            >>> opt.state[p]["exp_avg"].tolist()
            [1.0, 1.0]
        """
        import torch

        _refuse_foreign_slots(obj, items)
        group_of = _group_index(obj)   # once per call: no scan of the parameters per slot
        state = obj.state
        tensor, as_is, ndarray, from_np = torch.Tensor, _AS_IS, np.ndarray, torch.from_numpy
        last = None   # the variable of the previous item: a parameter's slots come one after another
        kinds = _KINDS
        for variable, name, value in items:
            if variable is not last:
                if not isinstance(variable, tensor):
                    raise CheckpointError(f"{_opt_name(obj)}: slot {name!r} belongs to a "
                                          f"{type(variable).__qualname__}, not a torch parameter")
                group = group_of.get(id(variable))
                if group is None:
                    raise CheckpointError(f"{_opt_name(obj)}: the parameter of slot {name!r} is not optimized by it")
                s = state[variable]
                last, v_dtype, v_cpu = variable, variable.dtype, variable.is_cpu
                step_as_is = not (group.get("capturable", False) or group.get("fused", False))
            kind = kinds.get(name) or _slot_kind(name)
            if type(value) is not ndarray and isinstance(value, ShardBuffer):
                # a sharded (DTensor) parameter's slot: a DTensor laid out like it
                s = state[variable] = _put(s, name.split("/"), from_buffer(value, like=variable))
                continue
            one = kind[0] and type(s) is dict   # one key of the state dict
            old = s.get(name) if one else _at(s, name)
            if old is not None and _is_tensor(old) and shares_memory(value, old):
                continue   # read in place, into the state tensor itself
            # The array read for this slot becomes the state tensor without a copy (it is ours:
            # fresh memory), converted only where load_state_dict would convert it.
            t = None
            if type(value) is ndarray and value.dtype in as_is:
                f = value.flags
                if f.writeable and f.c_contiguous:
                    t = from_np(value)
            if t is None:
                t = from_numpy(value)
            if kind[1]:
                if not step_as_is:   # (_landing of a step slot: kept as read unless the group is capturable/fused)
                    t = _landing(t, variable, name, None, group)
            elif t.dtype is not v_dtype or not v_cpu:   # else _landing gives t itself (t is on the CPU)
                t = _landing(t, variable, name, None, group)
            if one:
                s[name] = t   # what _put does for one key of the state dict
            else:
                s = state[variable] = _put(s, name.split("/"), t)


# Slot names TensorFlow's and Keras's optimizers use, which no torch.optim optimizer keeps as state: stored
# under them, a TF/Keras moment would sit in the state unused (and the next step would fail on a missing "step").
_TF_KERAS_SLOTS = frozenset({"m", "v", "vhat", "momentum", "velocity", "accumulator", "linear", "average_gradient",
                             "accumulated_grad", "accumulated_delta_var", "u"})


def _refuse_foreign_slots(obj, items) -> None:
    if not type(obj).__module__.startswith("torch.optim"):
        return  # a user's optimizer may use any name
    for name in dict.fromkeys(map(itemgetter(1), items)):   # each distinct name once (60,000 slots: 3 names)
        if name.split("/", 1)[0] in _TF_KERAS_SLOTS:
            raise CheckpointError(
                f"{_opt_name(obj)}: the checkpoint's optimizer slot {name!r} is TensorFlow's or Keras's (its Adam "
                "keeps 'm'/'momentum' and 'v'/'velocity' and one iteration count; torch's keeps exp_avg, exp_avg_sq "
                "and a step per parameter), so it cannot become this optimizer's state. Restore the model's "
                "variables alone (a checkpoint of the model), or the optimizer into the framework that wrote it.")


# Per-process caches of the per-slot loops (a handful of entries: slot names, torch dtypes).
_KINDS: dict[str, tuple[bool, bool]] = {}   # slot name -> (one key of a state dict, a step slot)
_DIRECT: dict[Any, bool] = {}               # torch dtype -> whether numpy() views it as it is


def _slot_kind(name: str) -> tuple[bool, bool]:
    """``(one key of a state dict, a step slot)`` for slot ``name``, remembered in ``_KINDS``.

    Example:
        >>> _slot_kind("exp_avg"), _slot_kind("step"), _slot_kind("old_dirs/0")
        ((True, False), (True, True), (False, False))
    """
    kind = _KINDS[name] = (_one_key(name), name == "step" or name.startswith("step/"))
    return kind


def _views_directly(torch_dtype) -> bool:
    """Whether ``numpy()`` of a plain CPU tensor of ``torch_dtype`` is its memory with the numpy dtype
    ckptcore stores it as (not bfloat16/float8, which need an ml_dtypes view), remembered in ``_DIRECT``."""
    e = _dtype_table().get(torch_dtype)
    ok = _DIRECT[torch_dtype] = e is not None and e[1] is None
    return ok


def _is_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def _group_index(opt) -> dict:
    """id(parameter) -> its param group."""
    return {id(p): g for g in opt.param_groups for p in g["params"]}


def _one_key(name: str) -> bool:
    """Whether slot ``name`` is one key of a parameter's state dict (not a path, not an index)."""
    return "/" not in name and not name.lstrip("-").isdigit()


def _at(state: Any, name: str):
    """What the slot path ``name`` (``"exp_avg"``, ``"old_dirs/0"``) holds in a parameter's state, or None."""
    if type(state) is dict and "/" not in name:  # the common slot: one key of the state dict
        x = state.get(name)
        if x is not None or not name.lstrip("-").isdigit():
            return x
    x = state
    for seg in name.split("/"):
        if isinstance(x, dict):
            x = x.get(seg, x.get(int(seg)) if seg.lstrip("-").isdigit() else None)
        elif isinstance(x, (list, tuple)) and seg.isdigit() and int(seg) < len(x):
            x = x[int(seg)]
        else:
            return None
        if x is None:
            return None
    return x


def _landing(t, variable, name: str, dtype, group):
    """``t`` with the device and dtype ``Optimizer.load_state_dict`` gives a slot (``t`` itself if already so).

    ``dtype`` is the stored numpy dtype when ``t`` is a live state tensor being considered as read
    memory (its dtype must then be the stored one), else None.
    """
    import torch

    if dtype is not None and numpy_dtype(t.dtype) != dtype:
        return None
    if name.split("/", 1)[0] == "step":
        if group is not None and (group.get("capturable", False) or group.get("fused", False)):
            return t.to(dtype=torch.float32, device=variable.device)
        return t
    if variable.is_floating_point() and t.is_floating_point():
        return t.to(dtype=variable.dtype, device=variable.device)
    return t.to(device=variable.device)


class _LiveTensors(dict):
    """Tensor lookup for decoding hyperparameters: live tensors, restored in place already."""

    def __init__(self, live: dict, where: str):
        super().__init__(live)
        self._where = where

    def __contains__(self, name) -> bool:
        if not super().__contains__(name):
            raise CheckpointError(
                f"{self._where}: the saved hyperparameter {name!r} is a tensor but the live optimizer's is not; "
                "construct the optimizer with the same tensor hyperparameters")
        return True
