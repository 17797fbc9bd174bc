"""Split a ``state_dict()`` into tensors and JSON, and put it back together.

Nothing is pickled. Tensors become checkpoint values (named by their path in
the state dict, ``"state/0/exp_avg"``); everything else must be JSON
representable: ``None``, bools, ints, floats (``inf``/``nan`` included),
strings, lists, tuples and dicts (any int/str/float/bool keys). Anything else
raises :class:`~ckptcore.CheckpointError` naming the path of the value.

The encoding is unambiguous: plain JSON for the common case, and a one-key
tagged object (``{"__tuple__": [...]}``, ``{"__float__": "inf"}``,
``{"__dict__": [[key, value], ...]}``, ``{"__tensor__": "name"}``) otherwise.

Example:
    >>> import torch
    >>> from ckptcore_torch.codec import encode, decode
    >>> state, tensors = encode({"step": 3, "betas": (0.9, 0.99), "m": torch.ones(2)})
    >>> state["betas"], list(tensors)
    ({'__tuple__': [0.9, 0.99]}, ['m'])
    >>> decode(state, tensors)["betas"]
    (0.9, 0.99)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

from ckptcore.errors import CheckpointError

__all__ = ["encode", "decode", "TAGS"]

TAGS = ("__tuple__", "__float__", "__dict__", "__tensor__")


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def encode(value: Any, *, what: str = "state_dict()", tensor_name: Callable[[tuple], str] | None = None):
    """Encode ``value`` as JSON plus a ``{name: tensor}`` dict of its tensors.

    ``tensor_name(path)`` names a tensor from its path of keys/indices
    (default: the path joined by ``/``).

    Example:
        >>> encode({"lr": float("inf")})[0]
        {'lr': {'__float__': 'inf'}}
    """
    tensors: dict[str, Any] = {}
    name_of = tensor_name or (lambda path: "/".join(str(p) for p in path))

    def enc(v: Any, path: tuple) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            if math.isfinite(v):
                return float(v)
            return {"__float__": repr(float(v))}
        if _is_tensor(v):
            name = name_of(path)
            if name in tensors:
                raise CheckpointError(f"{what}: two tensors would both be stored as {name!r}")
            tensors[name] = v
            return {"__tensor__": name}
        if isinstance(v, tuple):
            return {"__tuple__": [enc(x, path + (i,)) for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [enc(x, path + (i,)) for i, x in enumerate(v)]
        if isinstance(v, dict):
            if all(type(k) is str for k in v) and not any(k in TAGS for k in v):
                return {k: enc(x, path + (k,)) for k, x in v.items()}
            pairs = []
            for k, x in v.items():
                if k is not None and not isinstance(k, (bool, int, float, str)):
                    raise CheckpointError(f"{what}: key {k!r} at {_where(path)} is of type "
                                          f"{type(k).__qualname__}; only str/int/float/bool keys can be saved")
                pairs.append([enc(k, path), enc(x, path + (k,))])
            return {"__dict__": pairs}
        try:
            import numpy as np

            if isinstance(v, np.generic) and v.dtype.kind in "biuf":
                return enc(v.item(), path)
        except ImportError:  # pragma: no cover
            pass
        raise CheckpointError(
            f"{what}: the value at {_where(path)} is of type {type(v).__module__}.{type(v).__qualname__}, "
            "which is neither a tensor nor JSON-representable (None, bool, int, float, str, list, tuple, dict); "
            "ckptcore never pickles. Register an adapter for this type (ck.register_adapter) instead.")

    return enc(value, ()), tensors


def _where(path: tuple) -> str:
    return "/".join(str(p) for p in path) or "(top level)"


def decode(value: Any, tensors: dict[str, Any]) -> Any:
    """Invert :func:`encode`; ``tensors`` maps the names it produced to values.

    Example:
        >>> decode({"__dict__": [[0, {"__float__": "nan"}]]}, {})
        {0: nan}
    """
    if isinstance(value, list):
        return [decode(x, tensors) for x in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == "__tuple__":
                return tuple(decode(x, tensors) for x in inner)
            if tag == "__float__":
                return float(inner)
            if tag == "__dict__":
                return {decode(k, tensors): decode(x, tensors) for k, x in inner}
            if tag == "__tensor__":
                if inner not in tensors:
                    raise CheckpointError(f"the checkpoint has no value for tensor {inner!r} of this state")
                return tensors[inner]
        return {k: decode(x, tensors) for k, x in value.items()}
    return value
