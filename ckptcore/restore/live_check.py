"""The status assertions' look at the live graph: which live objects a restore had nothing for.

``assert_consumed()`` and ``assert_existing_objects_matched()`` ask, after a restore, whether
every live object that holds values was matched, with every attribute it has now. Where the
restore cannot answer that from what it saw (some adapter does not announce new dependencies,
e.g. torch modules and optimizers), the live graph is walked again.

That walk is done twice over only when something is unmatched: first a lean pass that visits
each reachable object once, with no per-object record and no paths (about a third of the cost of
:func:`ckptcore.graph.walk`), and answers "all matched" (the common case); only if it finds an
unmatched object (or an invalid live graph) does :func:`unmatched_live_paths` walk again with
paths, to name what is unmatched (or raise the error with the object's path).

Example:
    >>> import numpy as np, ckptcore as ck
    >>> path = ck.Checkpoint(a=np.ones(1)).write("memory://doc/live_check/c")
    >>> ckpt = ck.Checkpoint(a=np.zeros(1)); status = ckpt.read(path)
    >>> unmatched_live_paths(status.session, ckpt, [], set())
    []
    >>> ckpt.b = np.zeros(2)
    >>> unmatched_live_paths(status.session, ckpt, [], set())
    ['b']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..graph import _LEAF_ADAPTERS, _is_leaf_type, live_children, walk
from ..naming import display_path
from ..registry import _by_type_cache as _adapter_cache
from ..registry import adapter_or_none, find_adapter
from . import _compiled
from .values import _DEFAULT_ATTRS, _keeps_default_attributes

__all__ = ["unmatched_live_paths"]


def unmatched_live_paths(session, root: Any, extra: list[tuple[str, Any]], ignore: Iterable[str]) -> list[str]:
    """Paths of the live objects below ``root`` (and of their attributes) ``session`` matched nothing to.

    ``extra`` are more (name, object) children of the root; root children named in ``ignore`` are
    not reported (their descendants are). An unmatched object is reported only if it has
    attributes (TF: only objects that hold values count), so an unmatched container is reported
    through its descendants.

    Example:
        >>> import ckptcore as ck
        >>> m = ck.Module(); m.v = ck.Variable(1.0)
        >>> path = ck.Checkpoint(m=m).write("memory://doc/live_check/u")
        >>> m2 = ck.Module(); m2.v = ck.Variable(0.0); ckpt = ck.Checkpoint(m=m2); status = ckpt.read(path)
        >>> m2.w = ck.Variable(2.0)
        >>> unmatched_live_paths(status.session, ckpt, [], set())
        ['m/w']
    """
    ignore = set(ignore)
    try:
        if _all_matched(session, root, extra, ignore):
            return []
    except Exception:  # noqa: BLE001 - an invalid live graph: the walk below raises it, with the object's path
        pass
    return _named_unmatched(session, root, extra, ignore)


def _all_matched(session, root, extra, ignore: set[str]) -> bool:
    """Whether every reachable object with attributes is matched, with all of them (no paths made)."""
    if session._unfiled:
        session._file_matches()
    refs, nids = session._matched_ref, session._matched_nid
    graph = session.graph
    attr_start, attr_name = graph.attr_start, graph.attr_name
    cache, leaf, no_attrs = _adapter_cache, _LEAF_ADAPTERS, _DEFAULT_ATTRS
    seen = {id(root)}
    skip: set[int] = set()   # root children named in ``ignore``: not checked themselves
    queue: list[tuple[Any, Any]] = []
    for name, child in live_children(root, find_adapter(root), (), extra):
        key = id(child)
        if key in seen:
            continue
        seen.add(key)
        if name in ignore:
            skip.add(key)
        queue.append((child, _adapter(cache, child)))
    if type(attr_start) is not list or type(attr_name) is not list:
        attr_start, attr_name = list(attr_start), list(attr_name)
    drain = _compiled.live_all_matched or _drain
    return drain(queue, seen, skip, refs, nids, attr_start, attr_name, cache, leaf, _is_leaf_type, no_attrs,
                 _keeps_default_attributes, live_children, _adapter)


def _drain(queue: list, seen: set, skip: set, refs: dict, nids: dict, attr_start: list, attr_name: list,
           cache: dict, leaf: dict, is_leaf_type, no_attrs: dict, keeps_default, children_of, adapter_of) -> bool:
    """The lean pass from ``queue`` on (``(object, adapter)`` pairs; ``seen``: their ids): False at the first
    object with attributes that is unmatched, or has an attribute its node lacks. (Compiled twin:
    ``_plan_fast.live_all_matched``.)"""
    i = 0
    while i < len(queue):
        obj, adapter = queue[i]
        i += 1
        key = id(obj)
        cls = type(adapter)
        keeps = no_attrs.get(cls)
        if keeps is None:
            keeps = keeps_default(adapter)
        if not keeps and key not in skip:
            attrs = adapter.attributes(obj)
            if attrs:
                ref = refs.get(key)
                if ref is None or ref() is not obj:
                    return False   # unmatched, and it holds values
                nid = nids[key]
                saved = attr_name[attr_start[nid]:attr_start[nid + 1]]
                if attrs != saved and not set(attrs) <= set(saved):
                    return False   # an attribute the checkpoint lacks
        is_leaf = leaf.get(cls)
        if is_leaf is None:
            is_leaf = is_leaf_type(cls)
        if is_leaf:
            continue
        for _name, child in children_of(obj, adapter, ()):
            ck = id(child)
            if ck not in seen:
                seen.add(ck)
                queue.append((child, adapter_of(cache, child)))
    return True


def _adapter(cache: dict, obj: Any):
    adapter = cache.get(type(obj))
    if adapter is None:
        adapter = adapter_or_none(obj)
        if adapter is None:
            raise LookupError   # unclaimed: the walk with paths names it
    return adapter


def _named_unmatched(session, root, extra, ignore: set[str]) -> list[str]:
    """The same question, answered with paths, by :func:`ckptcore.graph.walk`."""
    live = walk(root, extra, root_adapter=find_adapter(root))  # an invalid live graph is an error, not a pass
    out = []
    g = session.graph
    for ln in live[1:]:
        if ln.path and ln.path[0] in ignore and len(ln.path) == 1:
            continue
        nid = session.matched_node(ln.obj)
        attrs = list(ln.adapter.attributes(ln.obj))
        if nid is None:
            # As in TF, only objects that hold values count: an unmatched Module or container
            # without attributes is reported through its descendants that have some.
            if attrs:
                out.append(display_path(ln.path))
            continue
        saved = set(g.attr_name[g.attr_start[nid]:g.attr_start[nid + 1]])
        for a in attrs:
            if a not in saved:
                out.append(f"{display_path(ln.path)} ({a})")
    return out
