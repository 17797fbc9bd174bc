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

import threading
from collections.abc import Iterable
from operator import is_ as _is
from typing import Any, SupportsIndex

from .errors import ContainerModifiedError
from .registry import _by_type_cache as _adapter_cache
from .registry import adapter_or_none
from .unclaimed import holds_array_data

__all__ = ["Module", "TrackedList", "TrackedDict", "wrap"]


def _notify(parent: Any, name: str, child: Any) -> None:
    from .restore import notify_dependency_added

    notify_dependency_added(parent, name, child)


def _is_trackable(value: Any) -> bool:
    return adapter_or_none(value) is not None


def _all_adapted(values: Iterable[Any]) -> bool:
    """Whether every value's type has a cached adapter (``adapter_or_none`` would return it), in one C-level pass."""
    try:
        return None not in map(_adapter_cache.get, map(type, values))
    except TypeError:  # an unhashable metaclass
        return False


_INDEX_NAMES: list[str] = []  # "0", "1", ...: the names of list items, made once
_INDEX_LOCK = threading.Lock()


def _index_names(n: int) -> list[str]:
    """A list whose first ``n`` items are ``str(0)`` ... ``str(n - 1)`` (maybe longer)."""
    names = _INDEX_NAMES
    if len(names) < n:
        with _INDEX_LOCK:
            if len(names) < n:
                names.extend(map(str, range(len(names), n)))
    return names


def _is_dependency(value: Any) -> bool:
    """Trackable, or array data no adapter claims: kept so that saving it fails loudly (ckptcore.unclaimed)."""
    return adapter_or_none(value) is not None or holds_array_data(value)


def wrap(value: Any) -> Any:
    """Wrap a plain ``list``/``dict`` into its tracked counterpart; other values unchanged.

    Example:
        >>> type(wrap([1])).__name__, type(wrap(3)).__name__
        ('TrackedList', 'int')
    """
    kind = type(value)
    if kind is not list and kind is not dict:
        return value
    # A container that holds itself (``lst.append(lst)``, ``d["me"] = d``) is wrapped once: its wrapper
    # holds itself too, as the user's container does (wrapping item by item would recurse forever).
    inside: dict[int, Any] = _wrapping.__dict__.setdefault("inside", {})
    tracked: Any = inside.get(id(value))
    if tracked is not None:
        return tracked
    cls: Any = TrackedList if kind is list else TrackedDict
    tracked = cls.__new__(cls)
    inside[id(value)] = tracked
    try:
        cls.__init__(tracked, value)
    finally:
        del inside[id(value)]
    tracked._ck_origin = value  # the user's own container: kept in step, checked at save (as TF's wrappers)
    return tracked


_wrapping = threading.local()  # .inside: id -> wrapper of the containers being wrapped now, on this thread


def _stale_state(container: Any) -> dict | None:
    """The state a copy (``copy``, ``deepcopy``, pickle) of ``container`` inherits: its staleness, if any.

    A copy of a wrapper whose container was changed behind its back holds the outdated items, so it
    refuses to save too (TF: "dirtiness should be inherited").
    """
    try:
        container._ck_check()
    except ContainerModifiedError as e:
        return {"_ck_stale": str(e)}
    return None


def _check_stale(container: Any) -> None:
    if container._ck_stale is not None:
        raise ContainerModifiedError(
            f"this {type(container).__name__} was copied from a stale one, so it holds outdated items too "
            f"({container._ck_stale}). Copy your own list or dict instead (copy.copy(layers)), or assign it "
            "again before copying")


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

    Like TensorFlow's ``ListWrapper``, it keeps the user's own list in step: assigning
    ``m.layers = layers`` wraps ``layers``, every change made through ``m.layers`` is made
    to ``layers`` too, and a change made to ``layers`` directly (which the wrapper cannot
    see, so a restore could not follow it) makes saving fail with a
    :class:`~ckptcore.ContainerModifiedError` instead of saving a different list from
    the one the user holds. Assign the list again (``m.layers = layers``) to adopt it.

    Example:
        >>> import ckptcore as ck
        >>> m = ck.Module(); layers = []; m.vs = layers; m.vs.append(ck.Variable(1.0))
        >>> type(m.vs).__name__, len(m.vs), len(layers)
        ('TrackedList', 1, 1)
    """

    def __init__(self, items: Iterable[Any] = ()):
        super().__init__(wrap(v) for v in items)
        # The user's list when ``wrap`` made this one (``m.layers = layers``), kept in step: it holds the
        # raw values (nested plain lists). A TrackedList built directly copies its items and has none.
        self._ck_origin: list | None = None

    _ck_stale: str | None = None   # set on a copy of a wrapper that was stale when copied

    def __reduce_ex__(self, protocol):
        # items after the copy exists (as list's own reduce): a list holding itself copies without recursing
        return (type(self), (), _stale_state(self), iter(list(self)))

    def _ck_check(self) -> None:
        _check_stale(self)
        origin = self._ck_origin
        if origin is not None and (len(origin) != len(self) or not (all(map(_is, origin, self))
                                                                    or all(map(_same, origin, self)))):
            raise ContainerModifiedError(
                f"the list assigned to this tracked list was changed directly, not through it (it now holds "
                f"{len(origin)} items, the tracked list {len(self)}), so a checkpoint would not hold what your list "
                "holds and restore could not follow the change: make changes through the attribute "
                "(m.layers.append(x)), or assign the list again (m.layers = layers)")

    def _ck_notify_all(self) -> None:
        for i, v in enumerate(self):
            if _is_trackable(v):
                _notify(self, str(i), v)

    def _ck_sync(self) -> None:
        """After an operation that reorders or rewrites items: the user's list gets the same items."""
        if self._ck_origin is not None:
            self._ck_origin[:] = [_raw(v) for v in self]

    def append(self, value: Any) -> None:
        raw, value = value, wrap(value)
        super().append(value)
        if self._ck_origin is not None:
            self._ck_origin.append(raw)
        if _is_trackable(value):
            _notify(self, str(len(self) - 1), value)

    def extend(self, values: Iterable[Any]) -> None:
        raws = list(values)
        super().extend(wrap(v) for v in raws)
        if self._ck_origin is not None:
            self._ck_origin.extend(raws)
        self._ck_notify_all()

    def insert(self, index: SupportsIndex, value: Any) -> None:
        super().insert(index, wrap(value))
        if self._ck_origin is not None:
            self._ck_origin.insert(index, value)
        self._ck_notify_all()

    def __setitem__(self, index, value) -> None:
        if isinstance(index, slice):
            super().__setitem__(index, [wrap(v) for v in value])
            self._ck_sync()
        else:
            super().__setitem__(index, wrap(value))
            if self._ck_origin is not None:
                self._ck_origin[index] = value
        self._ck_notify_all()

    def __delitem__(self, index) -> None:
        super().__delitem__(index)
        if self._ck_origin is not None:
            del self._ck_origin[index]

    def pop(self, index: SupportsIndex = -1) -> Any:
        value = super().pop(index)
        if self._ck_origin is not None:
            self._ck_origin.pop(index)
        return value

    def remove(self, value: Any) -> None:
        self.__delitem__(super().index(value))

    def clear(self) -> None:
        super().clear()
        if self._ck_origin is not None:
            self._ck_origin.clear()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        super().sort(*args, **kwargs)
        self._ck_sync()
        self._ck_notify_all()

    def reverse(self) -> None:
        super().reverse()
        self._ck_sync()
        self._ck_notify_all()

    def __iadd__(self, values):  # type: ignore[misc]
        self.extend(values)
        return self

    def __imul__(self, n):  # type: ignore[misc]
        super().__imul__(n)
        self._ck_sync()
        self._ck_notify_all()
        return self

    def children(self) -> list[tuple[str, Any]]:
        self._ck_check()
        if _all_adapted(self):  # the common case, in C-level passes: every item has a known adapter
            return list(zip(_index_names(len(self)), self))
        return [(str(i), v) for i, v in enumerate(self) if _is_dependency(v)]


class TrackedDict(dict):
    """A dict whose trackable values are dependencies named by key.

    Like TensorFlow's ``_DictWrapper``, it keeps the user's own dict in step: changes made
    through the tracked dict are made to it too, and a change made to the user's dict
    directly makes saving fail with a :class:`~ckptcore.ContainerModifiedError` (assign
    the dict again to adopt it).

    Example:
        >>> import ckptcore as ck
        >>> m = ck.Module(); heads = {"a": ck.Variable(1.0)}; m.heads = heads
        >>> m.heads["b"] = ck.Variable(2.0)
        >>> [n for n, _ in m.heads.children()], sorted(heads)
        (['a', 'b'], ['a', 'b'])
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        for k, v in dict(*args, **kwargs).items():
            super().__setitem__(k, wrap(v))
        self._ck_origin: dict | None = None   # the user's dict when ``wrap`` made this one (see TrackedList)

    _ck_stale: str | None = None   # see TrackedList

    def __reduce_ex__(self, protocol):
        return (type(self), (), _stale_state(self), None, iter(list(self.items())))  # (see TrackedList)

    def _ck_check(self) -> None:
        _check_stale(self)
        origin = self._ck_origin
        if origin is not None and (len(origin) != len(self) or list(origin) != list(self)
                                   or not (all(map(_is, origin.values(), self.values()))
                                           or all(map(_same, origin.values(), self.values())))):
            raise ContainerModifiedError(
                f"the dict assigned to this tracked dict was changed directly, not through it (it now has the keys "
                f"{sorted(map(str, origin))[:5]}...), so a checkpoint would not hold what your dict holds and restore "
                "could not follow the change: make changes through the attribute (m.heads[k] = x), or assign the "
                "dict again (m.heads = heads)")

    def __setitem__(self, key, value) -> None:
        raw, value = value, wrap(value)
        super().__setitem__(key, value)
        if self._ck_origin is not None:
            self._ck_origin[key] = raw
        if _is_trackable(value):
            _notify(self, str(key), value)

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        if self._ck_origin is not None:
            del self._ck_origin[key]

    def pop(self, key, *default):
        had = key in self
        value = super().pop(key, *default)
        if had and self._ck_origin is not None:
            self._ck_origin.pop(key, None)
        return value

    def popitem(self):
        key, value = super().popitem()
        if self._ck_origin is not None:
            self._ck_origin.pop(key, None)
        return key, value

    def clear(self) -> None:
        super().clear()
        if self._ck_origin is not None:
            self._ck_origin.clear()

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
        self._ck_check()
        return [(str(k), v) for k, v in self.items() if _is_dependency(v)]


def _raw(value: Any) -> Any:
    """What the user's own container holds for ``value``: the plain list/dict a tracked one wraps."""
    origin = getattr(value, "_ck_origin", None) if type(value) in (TrackedList, TrackedDict) else None
    return value if origin is None else origin


def _same(theirs: Any, mine: Any) -> bool:
    return theirs is mine or _raw(mine) is theirs
