"""``ck.Module`` and the tracked containers it wraps lists and dicts into.

Assigning a trackable value to a Module attribute makes it a named
dependency (so does array data no adapter claims, such as a torch tensor without
the torch plugin: saving it then fails with an error naming it, see
:mod:`ckptcore.unclaimed`); lists and dicts become :class:`TrackedList`/:class:`TrackedDict`
whose items are dependencies named ``"0"``, ``"1"``, ... or by key. Every
addition notifies the core, so restore-on-create works for values added after
``restore()``.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> class Dense(ck.Module):
    ...     def __init__(self, n):
    ...         super().__init__()
    ...         self.kernel = ck.Variable(np.zeros((n, n)))
    ...         self.layers = [ck.Variable(1.0), ck.Variable(2.0)]
    >>> [name for name, _ in ck.Module.tracked_children(Dense(2))]
    ['kernel', 'layers']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, SupportsIndex

from .registry import adapter_or_none
from .unclaimed import holds_array_data

__all__ = ["Module", "TrackedList", "TrackedDict", "wrap"]


def _notify(parent: Any, name: str, child: Any) -> None:
    from .restore import notify_dependency_added

    notify_dependency_added(parent, name, child)


def _is_trackable(value: Any) -> bool:
    return adapter_or_none(value) is not None


def _is_dependency(value: Any) -> bool:
    """Trackable, or array data no adapter claims: kept so that saving it fails loudly (ckptcore.unclaimed)."""
    return adapter_or_none(value) is not None or holds_array_data(value)


def wrap(value: Any) -> Any:
    """Wrap a plain ``list``/``dict`` into its tracked counterpart; other values unchanged.

    Example:
        >>> type(wrap([1])).__name__, type(wrap(3)).__name__
        ('TrackedList', 'int')
    """
    if type(value) is list:
        return TrackedList(value)
    if type(value) is dict:
        return TrackedDict(value)
    return value


class Module:
    """Base class whose attribute assignment tracks dependencies, as ``tf.Module`` does.

    Trackable attributes (Variables, numpy arrays, Modules, lists/dicts of
    them, any object a plugin adapts) become named edges of the checkpoint
    graph. Reassigning replaces the edge; deleting removes it.

    Example:
        >>> import ckptcore as ck
        >>> m = ck.Module(); m.w = ck.Variable(1.0); m.lr = 0.1
        >>> [n for n, _ in m.tracked_children()]
        ['w']
    """

    def __init__(self, name: str | None = None):
        object.__setattr__(self, "_ck_deps", {})
        object.__setattr__(self, "_ck_name", name)

    def _ck_deps_dict(self) -> dict:
        try:
            return object.__getattribute__(self, "_ck_deps")
        except AttributeError:
            deps: dict = {}
            object.__setattr__(self, "_ck_deps", deps)
            return deps

    @property
    def name(self) -> str:
        """The module's name (its class name unless given).

        Example:
            >>> import ckptcore as ck
            >>> ck.Module(name="enc").name
            'enc'
        """
        return getattr(self, "_ck_name", None) or type(self).__name__

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_ck_"):
            object.__setattr__(self, name, value)
            return
        value = wrap(value)
        object.__setattr__(self, name, value)
        deps = self._ck_deps_dict()
        if _is_dependency(value):
            deps[name] = value
            _notify(self, name, value)
        else:
            deps.pop(name, None)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        self._ck_deps_dict().pop(name, None)

    def tracked_children(self) -> list[tuple[str, Any]]:
        """The module's named dependencies, in assignment order.

        Example:
            >>> import ckptcore as ck
            >>> m = ck.Module(); m.b = ck.Variable(0); m.a = ck.Variable(1)
            >>> [n for n, _ in m.tracked_children()]
            ['b', 'a']
        """
        return list(self._ck_deps_dict().items())

    def variables(self) -> list[Any]:
        """Every ``ck.Variable`` reachable from this module, each once.

        Example:
            >>> import ckptcore as ck
            >>> m = ck.Module(); m.w = ck.Variable(1.0); m.sub = ck.Module(); m.sub.v = ck.Variable(2.0)
            >>> len(m.variables())
            2
        """
        from .graph import walk
        from .variable import Variable

        return [n.obj for n in walk(self) if isinstance(n.obj, Variable)]


class TrackedList(list):
    """A list whose trackable items are dependencies named by index.

    Example:
        >>> import ckptcore as ck
        >>> m = ck.Module(); m.vs = []; m.vs.append(ck.Variable(1.0))
        >>> type(m.vs).__name__, len(m.vs)
        ('TrackedList', 1)
    """

    def __init__(self, items: Iterable[Any] = ()):
        super().__init__(wrap(v) for v in items)

    def _ck_notify_all(self) -> None:
        for i, v in enumerate(self):
            if _is_trackable(v):
                _notify(self, str(i), v)

    def append(self, value: Any) -> None:
        value = wrap(value)
        super().append(value)
        if _is_trackable(value):
            _notify(self, str(len(self) - 1), value)

    def extend(self, values: Iterable[Any]) -> None:
        super().extend(wrap(v) for v in values)
        self._ck_notify_all()

    def insert(self, index: SupportsIndex, value: Any) -> None:
        super().insert(index, wrap(value))
        self._ck_notify_all()

    def __setitem__(self, index, value) -> None:
        if isinstance(index, slice):
            super().__setitem__(index, [wrap(v) for v in value])
        else:
            super().__setitem__(index, wrap(value))
        self._ck_notify_all()

    def __iadd__(self, values):  # type: ignore[misc]
        self.extend(values)
        return self

    def children(self) -> list[tuple[str, Any]]:
        return [(str(i), v) for i, v in enumerate(self) if _is_dependency(v)]


class TrackedDict(dict):
    """A dict whose trackable values are dependencies named by key.

    Example:
        >>> import ckptcore as ck
        >>> m = ck.Module(); m.heads = {"a": ck.Variable(1.0)}
        >>> [n for n, _ in m.heads.children()]
        ['a']
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        for k, v in dict(*args, **kwargs).items():
            super().__setitem__(k, wrap(v))

    def __setitem__(self, key, value) -> None:
        value = wrap(value)
        super().__setitem__(key, value)
        if _is_trackable(value):
            _notify(self, str(key), value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other):  # type: ignore[misc]
        self.update(other)
        return self

    def children(self) -> list[tuple[str, Any]]:
        return [(str(k), v) for k, v in self.items() if _is_dependency(v)]
