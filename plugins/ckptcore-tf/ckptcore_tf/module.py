"""Adapter for ``tf.Module``-like objects: children from ``_trackable_children`` or attributes.

Real ``tf.Module`` objects (and TF's trackable list/dict wrappers) report
their dependencies through ``_trackable_children("checkpoint")``; for other
classes registered with this adapter, children are the instance attributes
that some ckptcore adapter can handle, in assignment order.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> class Block:                      # a tf.Module look-alike
    ...     def __init__(self): self.w = np.ones(2); self.note = "x"
    ...     def _trackable_children(self, save_type="checkpoint", **kw): return {"w": self.w}
    >>> [n for n, _ in ModuleLikeAdapter().children(Block())]
    ['w']
"""

from __future__ import annotations

from typing import Any

import ckptcore as ck

__all__ = ["ModuleLikeAdapter", "has_trackable_children"]


def has_trackable_children(obj: Any) -> bool:
    """True for objects that list their dependencies the way TF trackables do.

    Example:
        >>> has_trackable_children(object())
        False
    """
    return callable(getattr(type(obj), "_trackable_children", None))


class ModuleLikeAdapter(ck.Adapter):
    """``tf.Module`` and look-alikes: a node with named dependencies and no values of its own.

    Example:
        >>> import numpy as np
        >>> class Plain:
        ...     def __init__(self): self.b = np.zeros(1); self.a = np.ones(1)
        >>> [n for n, _ in ModuleLikeAdapter().children(Plain())]
        ['b', 'a']
    """

    name = "ckptcore_tf.module"

    def children(self, obj):
        from ckptcore.registry import adapter_or_none

        if has_trackable_children(obj):
            try:
                kids = obj._trackable_children("checkpoint")
            except TypeError:
                kids = obj._trackable_children()
            return [(str(k), v) for k, v in dict(kids).items() if adapter_or_none(v) is not None]
        out = []
        for k, v in vars(obj).items():
            if k.startswith("_") or v is obj:
                continue
            if adapter_or_none(v) is not None:
                out.append((k, v))
        return out
