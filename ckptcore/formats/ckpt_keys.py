"""Tensor keys that follow from the object graph (index version 6 stores none).

Every key ckptcore writes is a function of the graph: an object's attribute is
``<object path>/.ATTRIBUTES/<attribute>`` (:func:`ckptcore.naming.object_key`), an
optimizer slot ``<variable path>/.OPTIMIZER_SLOT/<optimizer path>/<slot>/.ATTRIBUTES/VARIABLE_VALUE``
(:func:`ckptcore.naming.slot_key`). The object path of node ``j`` is its first path in
breadth-first order: the edge that first points at ``j`` (in node order, then edge
order), from a parent ``p < j``. That is how the saver numbers the objects it reaches.

A version-6 index leaves the keys out (for a model of a million arrays they were more
than two thirds of its bytes, and of the time it took to open). :class:`KeyDerivation`
checks, when an index is opened, that every row's key is defined and that no two rows
can share one; the keys themselves are made only when something asks for them
(:attr:`TensorTable.key <ckptcore.formats.ckpt_tables.TensorTable>` for all,
:meth:`KeyDerivation.one` for one row). The encoder writes version 6 only when the
derived keys equal the table's own, so no key ever changes by being left out.

Example:
    >>> from ckptcore.formats import ckpt as fmt
    >>> g = fmt.Graph.from_nodes([fmt.Node(children=[("a.b", 1)]), fmt.Node(attributes={"VARIABLE_VALUE": None})])
    >>> d = KeyDerivation.of(g, [1])
    >>> d.all(), d.one(0)
    (['a..b/.ATTRIBUTES/VARIABLE_VALUE'], 'a..b/.ATTRIBUTES/VARIABLE_VALUE')
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..naming import ATTRIBUTES, OPTIMIZER_SLOT, VARIABLE_VALUE, escape_local_name, unescape_local_name
from .ckpt_tables import int64_column

__all__ = ["KeyDerivation", "NotDerivable"]


class NotDerivable(ValueError):
    """The graph does not determine one distinct key per row (the reason is the message)."""


class KeyDerivation(Sequence):
    """How each row's key follows from a graph; checked when made (:meth:`of`), keys made on demand.

    ``parent[j]``/``edge[j]``: node ``j``'s first parent and the edge from it (-1 for the root
    and slot nodes); ``_slot_of``: slot node -> (optimizer node, variable node, slot name);
    ``node``: each table row's node.
    """

    __slots__ = ("_graph", "_names", "_attrs", "_parent", "_edge", "_slots", "_slot_map", "_by_triple", "_node",
                 "_keys")

    def __init__(self, graph, parent: np.ndarray, edge: np.ndarray, slots, node):
        # slots: None, or (slot nodes, optimizer nodes, variable nodes, names), one entry per slot row
        self._graph, self._names, self._attrs = graph, graph.child_name, graph.attr_name
        self._by_triple: dict[tuple[int, int, str], int] | None = None
        self._parent, self._edge, self._slots, self._node = parent, edge, slots, node
        self._slot_map: dict[int, tuple[int, int, str]] | None = None
        self._keys: list[str] | None = None

    @property
    def _slot_of(self) -> dict[int, tuple[int, int, str]]:
        """slot node -> (optimizer node, variable node, slot name), made on first use."""
        if self._slot_map is None:
            if self._slots is None:
                self._slot_map = {}
            else:
                slot, opt, var, names = self._slots
                self._slot_map = dict(zip(np.asarray(slot).tolist(), zip(np.asarray(opt).tolist(),
                                                                      np.asarray(var).tolist(), names)))
        return self._slot_map

    @classmethod
    def of(cls, graph, node, child: np.ndarray | None = None, slot_cols: tuple | None = None,
           counts: tuple[np.ndarray, np.ndarray] | None = None) -> KeyDerivation:
        """The derivation for ``graph`` whose table rows belong to nodes ``node``; raises :class:`NotDerivable`.

        The graph's child and attribute names are assumed unique per node (the index checks that).
        ``child``: ``graph.child`` as an array, and ``slot_cols`` the slot rows as columns (optimizer ids
        array, variable ids, slot ids, name ids array, each row's name, the names table) and ``counts`` the
        children and attributes per node as arrays, where the caller has them.

        Example:
            >>> from ckptcore.formats import ckpt as fmt
            >>> g = fmt.Graph.from_nodes([fmt.Node(), fmt.Node()])   # node 1 is reached by no edge
            >>> KeyDerivation.of(g, [])
            Traceback (most recent call last):
            ...
            ckptcore.formats.ckpt_keys.NotDerivable: node 1 is reached by no edge and is no optimizer slot
        """
        n = len(graph.attr_start) - 1
        child = int64_column(graph.child if child is None else child)
        if counts is None:
            counts = (np.diff(int64_column(graph.child_start)), np.diff(int64_column(graph.attr_start)))
        num_children = int64_column(counts[0])
        num_attrs = int64_column(counts[1])
        parent, edge = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
        k = len(child)
        if k:
            src = np.repeat(np.arange(n, dtype=np.int64), num_children)
            if child[0] == 1 and child[-1] == k and (child == np.arange(1, k + 1)).all():
                first = np.arange(k)   # a tree, numbered as reached (no object shared): edge e reaches node e + 1
            else:
                _targets, first = np.unique(child, return_index=True)
            targets = child[first]
            parent[targets], edge[targets] = src[first], first
            parent[0] = edge[0] = -1   # (an edge back to the root: the root's path is empty all the same)
        is_slot = np.zeros(n, bool)
        if slot_cols is None and graph.slots:
            rows = [r for opt in graph.slots for r in graph.slots[opt]]
            var_l, names_l, slot_l = zip(*rows)
            distinct = {x: i for i, x in enumerate(dict.fromkeys(names_l))}
            slot_cols = (np.repeat(np.fromiter(graph.slots, np.int64, len(graph.slots)),
                                   [len(v) for v in graph.slots.values()]),
                         var_l, slot_l, np.fromiter(map(distinct.__getitem__, names_l), np.int64, len(names_l)),
                         names_l, list(distinct))
        slots = None
        if slot_cols is not None:
            # checked as columns (an optimizer over 20,000 parameters has 60,000 slots)
            opt_a, var, slot, name_a, names, table = slot_cols
            var_a, slot_a = int64_column(var), int64_column(slot)
            if len(set(table)) != len(table):   # one name twice in the table: compare names, not their indexes
                name_a = np.array([table.index(x) for x in table], np.int64)[name_a]
            is_slot[slot_a] = True
            if int(is_slot.sum()) != len(slot_a):
                raise NotDerivable("a slot node appears in two slot rows")
            order = np.lexsort((name_a, var_a, opt_a))
            same = ((opt_a[order][1:] == opt_a[order][:-1]) & (var_a[order][1:] == var_a[order][:-1])
                    & (name_a[order][1:] == name_a[order][:-1]))
            if same.any():
                raise NotDerivable("two slot rows name the same optimizer, variable and slot")
            if is_slot[0]:
                raise NotDerivable("the root is an optimizer slot")
            if (parent[is_slot] != -1).any():
                raise NotDerivable(f"slot node {int(np.flatnonzero(is_slot & (parent != -1))[0])} is also reached "
                                   "by an edge")
            if is_slot[opt_a].any() or is_slot[var_a].any():
                raise NotDerivable("a slot belongs to a slot node")
            if (num_attrs[is_slot] > 1).any():
                raise NotDerivable("a slot node has more than one attribute")
            slots = (slot, opt_a, var, names)
        ids = np.arange(n)
        lost = (parent < 0) & ~is_slot
        lost[0] = False
        if lost.any():
            raise NotDerivable(f"node {int(np.flatnonzero(lost)[0])} is reached by no edge and is no optimizer slot")
        late = parent >= ids
        if late.any():
            j = int(np.flatnonzero(late)[0])
            raise NotDerivable(f"node {j} is first reached from node {int(parent[j])}, not from an earlier node")
        if n > 1 and (is_slot[parent[parent >= 0]]).any():
            raise NotDerivable("a slot node has children")
        a, b = graph.child_start[0], graph.child_start[1]
        if "" in graph.child_name[a:b]:
            raise NotDerivable("the root has a child named '' (its keys would be the root's)")
        return cls(graph, parent, edge, slots, node)

    def all(self) -> list[str]:
        """Every row's key, in row order (made once).

        Example:
            >>> from ckptcore.formats import ckpt as fmt
            >>> g = fmt.Graph.from_nodes([fmt.Node(attributes={"x": None})])
            >>> KeyDerivation.of(g, [0]).all()
            ['/.ATTRIBUTES/x']
        """
        if self._keys is not None:
            return self._keys
        names, parent_a, slot_of = self._names, self._parent, self._slot_of
        esc_of = {x: escape_local_name(x) for x in set(names)}   # each distinct edge name escaped once
        ename = list(map(esc_of.__getitem__, names))
        parent, edge = parent_a.tolist(), self._edge.tolist()
        # the escaped paths of the nodes that are some node's parent, or a slot's variable or optimizer
        inner = set(np.unique(parent_a[parent_a > 0]).tolist())
        if self._slots is not None:
            _slot, opt_a, var, _names = self._slots
            for nid in set(np.asarray(opt_a).tolist()).union(np.asarray(var).tolist()):
                inner.update(_ancestors(parent, nid))
        escs: list[str | None] = [None] * len(parent)
        escs[0] = ""
        for j in sorted(inner):   # (a parent comes before its children: parent[j] < j)
            p = parent[j]
            escs[j] = f"{escs[p]}/{ename[edge[j]]}" if p else ename[edge[j]]
        tail = f"/{ATTRIBUTES}/"
        tails = {a: tail + escape_local_name(a) for a in set(self._attrs)}
        node = self._node.tolist() if type(self._node) is np.ndarray else list(self._node)
        keys: list[str] = []
        append = keys.append
        for nid, attr in zip(node, self._attrs):
            e = escs[nid]
            if e is not None:
                append(e + tails[attr])
                continue
            p = parent[nid]
            if p > 0:   # a leaf (most rows): its parent's path and its own edge
                append(f"{escs[p]}/{ename[edge[nid]]}{tails[attr]}")
            elif p == 0:
                append(ename[edge[nid]] + tails[attr])
            else:   # an optimizer slot
                opt, var, name = slot_of[nid]
                append(f"{escs[var]}/{OPTIMIZER_SLOT}/{escs[opt]}/{escape_local_name(name)}{tail}{VARIABLE_VALUE}")
        self._keys = keys
        return keys

    def _path(self, nid: int) -> str:
        parts = []
        parent, edge = self._parent, self._edge
        while nid > 0:
            parts.append(escape_local_name(self._names[int(edge[nid])]))
            nid = int(parent[nid])
        return "/".join(reversed(parts))

    def one(self, row: int) -> str:
        """Row ``row``'s key, without making the others (error messages, reports of a few rows).

        Example:
            >>> from ckptcore.formats import ckpt as fmt
            >>> g = fmt.Graph.from_nodes([fmt.Node(children=[("w", 1)]), fmt.Node(attributes={"v": None})])
            >>> KeyDerivation.of(g, [1]).one(0)
            'w/.ATTRIBUTES/v'
        """
        if self._keys is not None:
            return self._keys[row]
        nid = int(self._node[row])
        s = self._slot_of.get(nid)
        if s is not None:
            opt, var, name = s
            return (f"{self._path(var)}/{OPTIMIZER_SLOT}/{self._path(opt)}/{escape_local_name(name)}/"
                    f"{ATTRIBUTES}/{VARIABLE_VALUE}")
        return f"{self._path(nid)}/{ATTRIBUTES}/{escape_local_name(self._attrs[row])}"

    def find(self, key: str) -> int | None:
        """The row whose key is ``key``, or None, found by walking the graph (no other key is made).

        Example:
            >>> from ckptcore.formats import ckpt as fmt
            >>> g = fmt.Graph.from_nodes([fmt.Node(children=[("a.b", 1)]), fmt.Node(attributes={"v": None})])
            >>> d = KeyDerivation.of(g, [1])
            >>> d.find("a..b/.ATTRIBUTES/v"), d.find("a.b/.ATTRIBUTES/v")
            (0, None)
        """
        if type(key) is not str:
            return None
        segs = key.split("/")
        if len(segs) < 3 or segs[-2] != ATTRIBUTES:
            return None
        if OPTIMIZER_SLOT in segs:
            i = segs.index(OPTIMIZER_SLOT)
            rest = segs[i + 1:]
            if len(rest) < 4 or rest[-1] != VARIABLE_VALUE:
                return None
            var, opt = self._node_at(segs[:i]), self._node_at(rest[:-3])
            name = unescape_local_name(rest[-3])
            if var is None or opt is None or escape_local_name(name) != rest[-3]:
                return None
            if self._by_triple is None:
                self._by_triple = {(o, v, n): slot for slot, (o, v, n) in self._slot_of.items()}
            slot = self._by_triple.get((opt, var, name))
            if slot is None:
                return None
            a, b = self._graph.attr_start[slot], self._graph.attr_start[slot + 1]
            return a if b > a else None
        nid = self._node_at(segs[:-2])
        attr = unescape_local_name(segs[-1])
        if nid is None or nid in self._slot_of or escape_local_name(attr) != segs[-1]:
            return None
        a, b = self._graph.attr_start[nid], self._graph.attr_start[nid + 1]
        for row in range(a, b):
            if self._attrs[row] == attr:
                return row
        return None

    def _node_at(self, segs: list[str]) -> int | None:
        """The node whose (first) escaped path is ``"/".join(segs)``, or None."""
        if segs == [""]:
            return 0
        if not segs:
            return None   # (the older root keys, ".ATTRIBUTES/...", are not version 6's)
        g, parent, edge = self._graph, self._parent, self._edge
        nid = 0
        for seg in segs:
            name = unescape_local_name(seg)
            if escape_local_name(name) != seg:
                return None   # (not how the key of any node is spelled)
            a, b = g.child_start[nid], g.child_start[nid + 1]
            for e in range(a, b):
                if g.child_name[e] == name:
                    c = g.child[e]
                    if parent[c] != nid or edge[c] != e:
                        return None   # a second path to a shared object: its key is the first path's
                    nid = c
                    break
            else:
                return None
        return nid

    def __getitem__(self, row):   # (validation errors index keys by row: keys[i])
        return self.all()[row] if isinstance(row, slice) else self.one(row)

    def __len__(self) -> int:
        return len(self._attrs)

    def __iter__(self) -> Iterator[str]:
        return iter(self.all())


def _ancestors(parent: list[int], nid: int) -> list[int]:
    """``nid`` and every node on its first path but the root."""
    out = []
    while nid > 0:
        out.append(nid)
        nid = parent[nid]
    return out


def derived_keys_match(graph, table: Any) -> bool:
    """Whether ``table``'s keys are exactly those ``graph`` determines (then an index may leave them out).

    A table marked ``derived`` (the saver's: it made its keys by this very rule, see
    ``tests/test_index_v6_keys.py``) is not derived again; the graph is still checked to give one
    distinct key per row.

    Example:
        >>> from ckptcore.formats import ckpt as fmt
        >>> idx = fmt.Index(nodes=[fmt.Node(children=[("w", 1)]),
        ...                        fmt.Node(attributes={"VARIABLE_VALUE": fmt.TensorEntry(
        ...                            "w/.ATTRIBUTES/VARIABLE_VALUE", "float32", (1,), 0, 0, 4, 0)})])
        >>> derived_keys_match(idx.graph, idx.table)
        True
    """
    try:
        derived = KeyDerivation.of(graph, table.node)
    except NotDerivable:
        return False
    if getattr(table, "derived", False):
        return True
    keys = table.key
    return len(keys) == len(derived) and derived.all() == list(keys)
