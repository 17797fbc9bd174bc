"""Breadth-first traversal of the live object graph. No I/O.

Each object reachable from the root is visited once, under its shortest path
(ties broken by edge order); cycles are fine.

Example:
    >>> import ckptcore as ck
    >>> m = ck.Module(); m.a = ck.Variable(1.0); m.b = m.a
    >>> [n.path for n in walk(m)]
    [(), ('a',)]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .adapters import _keeps_method
from .errors import CheckpointError, ContainerModifiedError
from .naming import display_path
from .registry import adapter_or_none, find_adapter

__all__ = ["LiveNode", "adapter_children", "checked_children", "live_children", "walk"]


@dataclass
class LiveNode:
    """One live object in traversal order.

    Example:
        >>> LiveNode(obj=None, adapter=None, path=()).children
        []
    """

    obj: Any
    adapter: Any
    path: tuple[str, ...]
    children: list[tuple[str, int]] = field(default_factory=list)


def live_children(obj: Any, adapter: Any, path: Sequence[str] | Callable[[], Sequence[str]],
                  extra: Iterable[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """``adapter.children(obj)`` plus ``extra``, checked for duplicate names.

    ``path`` names ``obj`` in error messages; it may be a function that returns it, called only
    when there is an error to report (restore matches tens of thousands of containers).

    Example:
        >>> import ckptcore as ck
        >>> m = ck.Module(); m.w = ck.Variable(0)
        >>> [n for n, _ in live_children(m, ck.registry.find_adapter(m), ())]
        ['w']
    """
    return checked_children(adapter_children(obj, adapter, path), adapter, path, extra)


def adapter_children(obj: Any, adapter: Any, path: Sequence[str] | Callable[[], Sequence[str]]) -> Any:
    """``adapter.children(obj)`` as the adapter gives it, unchecked; its failure names the object.

    A restore that finds the children lined up with the saved edges (their names are the saved,
    distinct names) needs no other check; any other caller passes them to :func:`checked_children`.

    Example:
        >>> import ckptcore as ck
        >>> m = ck.Module(); m.w = ck.Variable(0)
        >>> [n for n, _ in adapter_children(m, ck.registry.find_adapter(m), ())]
        ['w']
    """
    try:
        return adapter.children(obj)
    except ContainerModifiedError as e:  # name the container
        raise ContainerModifiedError(f"{display_path(_at(path))}: {e}") from None
    except CheckpointError:
        raise
    except Exception as e:  # an adapter bug: name the object and the adapter
        raise CheckpointError(f"cannot track {display_path(_at(path))}: children() of its adapter "
                              f"{getattr(adapter, 'name', type(adapter).__name__)!r} failed: {type(e).__name__}: "
                              f"{e}") from e


def checked_children(children: Any, adapter: Any, path: Sequence[str] | Callable[[], Sequence[str]],
                     extra: Iterable[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """What :func:`adapter_children` gave, plus ``extra``: ``(name, object)`` pairs with distinct names.

    Example:
        >>> checked_children([("a", 1), ("a", 2)], None, ("m",))
        Traceback (most recent call last):
        ...
        ckptcore.errors.CheckpointError: object m has two different dependencies named 'a'
    """
    if not extra and type(children) is list:  # the common cases, without a check per child:
        if not children:  # leaves
            return []
        try:  # pairs with distinct string names, as Module and the tracked containers give
            names = dict(children)
        except (TypeError, ValueError):
            pass
        else:
            if len(names) == len(children) and set(map(type, names)) == _STR:
                return children
    elif not extra and type(children) is tuple and not children:
        return []
    out: list[tuple[str, Any]] = []
    seen: dict[str, Any] = {}
    try:
        items = list(children) + list(extra)
    except TypeError:   # (None, a number: an adapter bug)
        raise CheckpointError(f"cannot track {display_path(_at(path))}: children() of its adapter "
                              f"{getattr(adapter, 'name', type(adapter).__name__)!r} must give a list of "
                              f"(name, object) pairs, got {children!r:.80}") from None
    for item in items:
        if type(item) not in (tuple, list) or len(item) != 2:
            raise CheckpointError(f"cannot track {display_path(_at(path))}: children() of its adapter "
                                  f"{getattr(adapter, 'name', type(adapter).__name__)!r} must give (name, object) "
                                  f"pairs, got {item!r:.80}")
        name, child = item
        if not isinstance(name, str):
            name = str(name)
        if name in seen:
            if seen[name] is child:
                continue
            raise CheckpointError(
                f"object {display_path(_at(path))} has two different dependencies named {name!r}")
        seen[name] = child
        out.append((name, child))
    return out


def _at(path: Sequence[str] | Callable[[], Sequence[str]]) -> Sequence[str]:
    return path() if callable(path) else path


_STR = {str}
_LEAF_ADAPTERS: dict[type, bool] = {}


def _is_leaf_adapter(adapter: Any) -> bool:
    """Whether ``adapter`` keeps the default ``children()`` (no dependencies, ever): cached per class."""
    return _is_leaf_type(type(adapter))


def _is_leaf_type(cls: type) -> bool:
    """Whether adapter class ``cls`` keeps the default ``children()``: cached."""
    return _keeps_method(_LEAF_ADAPTERS, cls, "children")


def walk(root: Any, extra_root_children: Iterable[tuple[str, Any]] = (), root_adapter: Any = None) -> list[LiveNode]:
    """Every object reachable from ``root``, breadth-first; node 0 is the root.

    Example:
        >>> import ckptcore as ck
        >>> m = ck.Module(); m.xs = [ck.Variable(1), ck.Variable(2)]
        >>> [n.path for n in walk(m)]
        [(), ('xs',), ('xs', '0'), ('xs', '1')]
    """
    nodes = [LiveNode(root, root_adapter or find_adapter(root, what="the checkpoint root"), ())]
    index = {id(root): 0}
    queue = deque([0])
    extra = list(extra_root_children)
    while queue:
        i = queue.popleft()
        node = nodes[i]
        if i and _is_leaf_adapter(node.adapter):
            continue
        kids = live_children(node.obj, node.adapter, node.path, extra if i == 0 else ())
        for name, child in kids:
            j = index.get(id(child))
            if j is None:
                path = node.path + (name,)
                adapter = adapter_or_none(child)
                if adapter is None:  # the message is built only on failure
                    adapter = find_adapter(child, what=f"dependency {display_path(path)!r}")
                j = len(nodes)
                index[id(child)] = j
                nodes.append(LiveNode(child, adapter, path))
                queue.append(j)
            node.children.append((name, j))
    return nodes
