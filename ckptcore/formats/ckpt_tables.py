"""The columns of a ckptcore index: the saved object graph and the tensor table.

:class:`Graph` (nodes, edges, attribute names) and :class:`TensorTable` (one row per
tensor) are what restore walks; :class:`Node` and :class:`TensorEntry` are the
per-object records an index is built from when saving and that version 1 stores.
:mod:`ckptcore.formats.ckpt` re-exports all four; the file layout is there.

Example:
    >>> from ckptcore.formats import ckpt as fmt
    >>> e = fmt.TensorEntry("m/w", "float32", (2,), 0, 0, 8, 0)
    >>> g = fmt.Graph.from_nodes([fmt.Node(children=[("w", 1)]), fmt.Node(attributes={"VARIABLE_VALUE": e})])
    >>> g.children(0), list(g.attributes(1))
    ([('w', 1)], [0])
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field
from itertools import accumulate, chain
from types import MappingProxyType
from typing import Any

import numpy as np

from ..dtypes import _BY_NAME, dtype_from_name

__all__ = ["FAST_DTYPES", "STRING_DTYPE", "Gathered", "Graph", "Node", "TensorEntry", "TensorTable", "int64_column",
           "shapes_from_columns", "uint64_column"]

# stored name -> dtype, for hot paths: the allowlist itself (ml_dtypes' names join it once loaded)
FAST_DTYPES = _BY_NAME
# TensorFlow's string tensors (formats.tensorbundle): object arrays of bytes, which that format decodes itself.
# Never on the allowlist: a ckptcore index naming it is refused (dtype_from_name), so none asks for object arrays.
STRING_DTYPE = "string"
_OBJECT = np.dtype(object)
_EMPTY_ATTRS: Any = MappingProxyType({})  # shared by decoded nodes without attributes (read-only)


_Q_IS_U64 = array.array("Q").itemsize == 8   # (C's unsigned long long: 8 bytes wherever numpy runs)


def _u64_of_list(values) -> np.ndarray | None:
    """A list of ints in [0, 2**64) through ``array.array("Q")`` (3-6x faster than ``np.asarray``); else None."""
    if type(values) is list and _Q_IS_U64:
        try:
            return np.frombuffer(array.array("Q", values), np.uint64)
        except (OverflowError, TypeError):   # negative, too large, or not ints: np.asarray decides
            pass
    return None


def int64_column(values) -> np.ndarray:
    """``values`` (an index column: node ids, counts, offsets) as an int64 array.

    A list of non-negative ints goes through ``array.array("Q")``: 3x faster than ``np.asarray``
    for the 100,000-row columns of a large index. Anything else is ``np.asarray(values, np.int64)``.

    Example:
        >>> int64_column([0, 3, 7]).tolist(), int64_column([-1]).dtype
        ([0, 3, 7], dtype('int64'))
    """
    out = _u64_of_list(values)
    if out is not None:
        out = out.view(np.int64)
        if not out.size or out.min() >= 0:   # (2**63 and more would wrap: np.asarray refuses them)
            return out
    return np.asarray(values, np.int64)


def uint64_column(values) -> np.ndarray:
    """``values`` as a uint64 array (what an encoder narrows); lists as in :func:`int64_column`.

    Example:
        >>> uint64_column([1, 2**64 - 1]).tolist()
        [1, 18446744073709551615]
    """
    out = _u64_of_list(values)
    return out if out is not None else np.asarray(values, dtype=np.uint64)


def shapes_from_columns(ndim: np.ndarray, dims: np.ndarray) -> list[tuple[int, ...]]:
    """Each row's shape tuple from the ``ndim`` and flat ``dims`` columns, in numpy passes per rank.

    Equal shapes share one tuple: models repeat a few shapes many times, and a million tuples
    would be that many more objects for the garbage collector to scan after a restore.

    Example:
        >>> shapes_from_columns(np.array([2, 0, 1]), np.array([2, 3, 5]))
        [(2, 3), (), (5,)]
    """
    m = len(ndim)
    if not m:
        return []
    starts = np.cumsum(ndim) - ndim
    out = np.empty(m, object)
    ranks = np.unique(ndim).tolist()
    for k in ranks:
        rows = np.flatnonzero(ndim == k) if len(ranks) > 1 else np.arange(m)
        if k == 0:
            out[rows] = np.fromiter([()], object, 1)[np.zeros(len(rows), np.intp)]
        elif k == 1:
            uniq, inverse = np.unique(dims[starts[rows]], return_inverse=True)
            out[rows] = np.fromiter(((d,) for d in uniq.tolist()), object, len(uniq))[inverse]
        else:
            uniq, inverse = np.unique(dims[starts[rows, None] + np.arange(k)], axis=0, return_inverse=True)
            out[rows] = np.fromiter(map(tuple, uniq.tolist()), object, len(uniq))[inverse.reshape(-1)]
    return out.tolist()


class _ShapeRows:
    """Row ``t``'s shape tuple by ``[t]``, made from the shape columns on each call (TensorTable.shapes_for)."""

    __slots__ = ("_ndim", "_dims", "_starts")

    def __init__(self, ndim: np.ndarray, dims: np.ndarray, starts: np.ndarray):
        self._ndim, self._dims, self._starts = ndim, dims, starts

    def __len__(self) -> int:
        return len(self._ndim)

    def __getitem__(self, t: int) -> tuple[int, ...]:
        start = int(self._starts[t])
        return tuple(self._dims[start:start + int(self._ndim[t])].tolist())


@dataclass(slots=True)
class TensorEntry:
    """One stored tensor: where it lives and how to check it.

    Example:
        >>> TensorEntry("k", "float32", (2,), 0, 0, 8, 0).nbytes
        8
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    shard: int
    offset: int
    nbytes: int
    crc32c: int

    @property
    def np_dtype(self) -> np.dtype:
        dt = FAST_DTYPES.get(self.dtype)
        if dt is not None:
            return dt
        return _OBJECT if self.dtype == STRING_DTYPE else dtype_from_name(self.dtype)

    def to_json(self) -> dict:
        return {"key": self.key, "dtype": self.dtype, "shape": list(self.shape), "shard": self.shard,
                "offset": self.offset, "nbytes": self.nbytes, "crc32c": self.crc32c}


@dataclass(slots=True)
class Node:
    """One object of the saved graph.

    ``children`` and ``slots`` are read-only sequences: saved and decoded leaves share
    an empty tuple (fewer objects for the garbage collector with many small arrays).

    Example:
        >>> Node(adapter="ckptcore.module").children
        []
    """

    adapter: str = ""
    type: str = ""
    children: list[tuple[str, int]] = field(default_factory=list)
    attributes: dict[str, TensorEntry] = field(default_factory=dict)
    state: Any = None
    slots: list[tuple[int, str, int]] = field(default_factory=list)  # (variable node, slot name, slot node)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"adapter": self.adapter, "type": self.type,
                               "children": [[n, c] for n, c in self.children]}
        if self.attributes:
            out["attributes"] = {a: e.to_json() for a, e in self.attributes.items()}
        if self.state is not None:
            out["state"] = self.state
        if self.slots:
            out["slots"] = [{"variable": v, "name": n, "slot": s} for v, n, s in self.slots]
        return out


class Graph:
    """The saved object graph, column by column: what restore walks.

    Node ``i``'s edges are ``child_name[child_start[i]:child_start[i + 1]]`` (pointing at the
    nodes in ``child`` at the same positions); its attributes are ``attr_name[a:b]`` with
    ``a, b = attr_start[i], attr_start[i + 1]``, and attribute ``k`` is tensor ``k`` of the
    :class:`TensorTable`. ``state`` and ``slots`` map node ids to their state and slot rows.

    Example:
        >>> g = Graph.from_nodes([Node(children=[("w", 1)]), Node()])
        >>> g.children(0), g.children(1)
        ([('w', 1)], [])
    """

    __slots__ = ("_adapter", "_type", "child_start", "child_name", "child", "attr_start", "attr_name", "state", "slots")

    def __init__(self, adapter, type, child_start, child_name, child, attr_start, attr_name, state, slots):
        # adapter and type: lists, or Gathered (a decoded index: built on first use, restore never needs them)
        self._adapter, self._type = adapter, type
        self.child_start, self.child_name, self.child = child_start, child_name, child
        self.attr_start, self.attr_name = attr_start, attr_name
        self.state, self.slots = state, slots

    @property
    def adapter(self) -> list[str]:
        """Each node's adapter name."""
        if type(self._adapter) is Gathered:
            self._adapter = self._adapter.list()
        return self._adapter

    @property
    def type(self) -> list[str]:
        """Each node's type name."""
        if type(self._type) is Gathered:
            self._type = self._type.list()
        return self._type

    def __len__(self) -> int:
        return len(self._adapter)

    def children(self, nid: int) -> list[tuple[str, int]]:
        """Node ``nid``'s edges as ``(name, node id)`` pairs, in order.

        Example:
            >>> Graph.from_nodes([Node(children=[("a", 1), ("b", 1)]), Node()]).children(0)
            [('a', 1), ('b', 1)]
        """
        a, b = self.child_start[nid], self.child_start[nid + 1]
        return list(zip(self.child_name[a:b], self.child[a:b]))

    def attributes(self, nid: int) -> range:
        """The tensor ids (rows of the table) of node ``nid``'s attributes.

        Example:
            >>> e = TensorEntry("k", "float32", (1,), 0, 0, 4, 0)
            >>> list(Graph.from_nodes([Node(), Node(attributes={"VARIABLE_VALUE": e})]).attributes(1))
            [0]
        """
        return range(self.attr_start[nid], self.attr_start[nid + 1])

    @classmethod
    def from_nodes(cls, nodes: list[Node]) -> Graph:
        """The columns of a list of :class:`Node` (a version-1 index, or one built by hand).

        Example:
            >>> len(Graph.from_nodes([Node(), Node()]))
            2
        """
        counts = [len(n.children) for n in nodes]
        acounts = [len(n.attributes) for n in nodes]
        return cls([n.adapter for n in nodes], [n.type for n in nodes], [0, *accumulate(counts)],
                   [name for n in nodes for name, _ in n.children], [c for n in nodes for _, c in n.children],
                   [0, *accumulate(acounts)], [a for n in nodes for a in n.attributes],
                   {i: n.state for i, n in enumerate(nodes) if n.state is not None},
                   {i: list(n.slots) for i, n in enumerate(nodes) if n.slots})


class TensorTable:
    """Every tensor of an index, column by column: row ``t`` is tensor ``t``.

    ``node[t]`` is the node that holds it (a list, or an int64 array in a decoded index).
    :meth:`entry` builds a :class:`TensorEntry` for one row; :meth:`arrays` gives the layout columns as numpy arrays.

    Example:
        >>> e = TensorEntry("k", "float32", (2,), 0, 0, 8, 7)
        >>> TensorTable.from_entries([e], [0]).entry(0) == e
        True
    """

    __slots__ = ("_key", "dtype", "_shape", "_shape_cols", "_shard", "_offset", "_nbytes", "crc32c", "node",
                 "_arrays", "derived")

    def __init__(self, key, dtype, shape, shard, offset, nbytes, crc32c, node, shape_cols=None):
        # key: a list, or a KeyDerivation (a version-6 index: the keys are made on first use, see ckpt_keys).
        # shard, offset, nbytes: lists, or int64 arrays (a decoded index: their lists are made on first use;
        # restore reads the arrays, :meth:`arrays`)
        # shape: a list of tuples, or None with shape_cols = (ndim, dims) int64 arrays (a save's column writer:
        # no tuple per tensor; the tuples are made on first use, see shape)
        self._key, self.dtype, self._shape, self._shape_cols = key, dtype, shape, shape_cols
        self._shard, self._offset, self._nbytes, self.crc32c, self.node = shard, offset, nbytes, crc32c, node
        self._arrays = None
        # True: the keys are known to be those the graph gives (ckpt_keys), so an encoder need not derive them
        # again to compare (the saver's own table; it still checks the graph gives one distinct key per row)
        self.derived = False
        if type(shard) is np.ndarray and type(offset) is np.ndarray and type(nbytes) is np.ndarray:
            self._arrays = (shard, offset, nbytes)

    @property
    def key(self) -> list[str]:
        """Each row's checkpoint key (``model/w/.ATTRIBUTES/VARIABLE_VALUE``)."""
        return self._key if type(self._key) is list else self._key.all()   # (made once, kept by the derivation)

    @key.setter
    def key(self, value: list[str]) -> None:
        self._key = value

    def key_at(self, t: int) -> str:
        """Row ``t``'s key, without making every key of a version-6 index.

        Example:
            >>> TensorTable.from_entries([TensorEntry("k", "int8", (3,), 0, 0, 3, 0)], [0]).key_at(0)
            'k'
        """
        return self._key[t] if type(self._key) is list else self._key.one(t)

    def find(self, key: str) -> int | None | bool:
        """Row of ``key`` in a table whose keys are derived (version 6), found without making them; False
        when the table stores its keys (look them up in a dict of :attr:`key` instead).

        Example:
            >>> TensorTable.from_entries([TensorEntry("k", "int8", (3,), 0, 0, 3, 0)], [0]).find("k")
            False
        """
        return False if type(self._key) is list else self._key.find(key)

    @property
    def shape(self) -> list[tuple[int, ...]]:
        """Each row's shape."""
        if self._shape is None:
            self._shape = shapes_from_columns(self._shape_cols[0], self._shape_cols[1])
        return self._shape

    def shape_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(ndim, dims, starts)`` where this table keeps its shapes as columns (a decoded index), else None.

        ``starts[t]`` is where row ``t``'s dimensions begin in ``dims``: a restore's planner compares
        live shapes with these, and no shape tuple is made.

        Example:
            >>> t = TensorTable(["a", "b"], ["int8", "int8"], None, [0, 0], [0, 6], [6, 1], [0, 0], [0, 1],
            ...                 shape_cols=(np.array([2, 0]), np.array([2, 3])))
            >>> [c.tolist() for c in t.shape_index()]
            [[2, 0], [2, 3], [0, 2]]
        """
        cols = self._shape_cols
        if cols is None:
            return None
        if len(cols) == 2:
            ndim, dims = int64_column(cols[0]), int64_column(cols[1])
            starts = np.cumsum(ndim) - ndim
            cols = self._shape_cols = (np.ascontiguousarray(ndim), np.ascontiguousarray(dims), starts)
        return cols

    def shapes_for(self, rows: int) -> Any:
        """What gives row ``t``'s shape tuple by ``[t]`` to code that looks at about ``rows`` rows.

        :attr:`shape` itself where the tuples exist or most rows are wanted; else a view that makes
        each asked-for row's tuple from the columns (a restore whose few other matches, the save
        counter say, need no tuple for all 100,000 rows).

        Example:
            >>> n = 100
            >>> t = TensorTable([f"k{i}" for i in range(n)], ["int8"] * n, None, [0] * n, list(range(0, 6 * n, 6)),
            ...                 [6] * n, [0] * n, list(range(n)), shape_cols=(np.full(n, 2), np.tile([2, 3], n)))
            >>> rows = t.shapes_for(1)
            >>> rows[0], rows[99], t._shape is None
            ((2, 3), (2, 3), True)
        """
        index = self.shape_index() if self._shape is None else None
        if index is None or rows * 16 >= len(self.dtype):
            return self.shape
        return _ShapeRows(*index)

    def shape_columns(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ndim, dims)``: each row's rank, and every row's dimensions one after another (int64 arrays).

        Example:
            >>> t = TensorTable.from_entries([TensorEntry("k", "int8", (2, 3), 0, 0, 6, 0)], [0])
            >>> [c.tolist() for c in t.shape_columns()]
            [[2], [2, 3]]
        """
        if self._shape_cols is not None:
            return self._shape_cols[0], self._shape_cols[1]
        shape = self._shape
        ndim = np.fromiter(map(len, shape), np.int64, len(shape))
        return ndim, np.fromiter(chain.from_iterable(shape), np.int64, int(ndim.sum()))

    @property
    def shard(self) -> list[int]:
        """Each row's data file."""
        if type(self._shard) is np.ndarray:
            self._shard = self._shard.tolist()
        return self._shard

    @property
    def offset(self) -> list[int]:
        """Each row's offset in its data file."""
        if type(self._offset) is np.ndarray:
            self._offset = self._offset.tolist()
        return self._offset

    @property
    def nbytes(self) -> list[int]:
        """Each row's size in bytes."""
        if type(self._nbytes) is np.ndarray:
            self._nbytes = self._nbytes.tolist()
        return self._nbytes

    def __len__(self) -> int:
        return len(self.dtype)

    def entry(self, t: int) -> TensorEntry:
        """Row ``t`` as a :class:`TensorEntry` (a new object each call).

        Example:
            >>> TensorTable.from_entries([TensorEntry("k", "int8", (3,), 0, 64, 3, 9)], [0]).entry(0).offset
            64
        """
        return TensorEntry(self.key_at(t), self.dtype[t], self.shape[t], self.shard[t], self.offset[t], self.nbytes[t],
                           self.crc32c[t])

    def entries(self) -> list[TensorEntry]:
        """Every row as a :class:`TensorEntry`, in order.

        Example:
            >>> len(TensorTable.from_entries([], []).entries())
            0
        """
        return list(map(TensorEntry, self.key, self.dtype, self.shape, self.shard, self.offset, self.nbytes,
                        self.crc32c))

    def np_dtype(self, t: int) -> np.dtype:
        """The numpy dtype of row ``t``.

        Example:
            >>> TensorTable.from_entries([TensorEntry("k", "int8", (3,), 0, 0, 3, 0)], [0]).np_dtype(0)
            dtype('int8')
        """
        dt = FAST_DTYPES.get(self.dtype[t])
        if dt is not None:
            return dt
        return _OBJECT if self.dtype[t] == STRING_DTYPE else dtype_from_name(self.dtype[t])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``shard``, ``offset`` and ``nbytes`` as int64 arrays (built once).

        Example:
            >>> TensorTable.from_entries([TensorEntry("k", "int8", (3,), 0, 64, 3, 0)], [0]).arrays()[1].tolist()
            [64]
        """
        if self._arrays is None:
            self._arrays = tuple(np.array(c, np.int64) for c in (self.shard, self.offset, self.nbytes))
        return self._arrays

    @classmethod
    def from_entries(cls, entries: list[TensorEntry], node: list[int]) -> TensorTable:
        """The table of ``entries``; ``node[i]`` is the node that holds entry ``i``.

        Example:
            >>> len(TensorTable.from_entries([TensorEntry("k", "int8", (3,), 0, 0, 3, 0)], [0]))
            1
        """
        return cls([e.key for e in entries], [e.dtype for e in entries], [tuple(e.shape) for e in entries],
                   [e.shard for e in entries], [e.offset for e in entries], [e.nbytes for e in entries],
                   [e.crc32c for e in entries], node)


class Gathered:
    """``[names[i] for i in ids]``, made when first asked for (:meth:`list`); ``ids`` are range-checked.

    Example:
        >>> import numpy as np
        >>> Gathered(["a", "b"], np.array([1, 0, 1])).list()
        ['b', 'a', 'b']
    """

    __slots__ = ("names", "ids")

    def __init__(self, names: list[str], ids: np.ndarray):
        self.names, self.ids = names, ids

    def __len__(self) -> int:
        return len(self.ids)

    def list(self) -> list[str]:
        table = np.empty(len(self.names), object)
        table[:] = self.names
        return table[self.ids].tolist()


def _nodes_from_columns(g: Graph, t: TensorTable) -> list[Node]:
    n = len(g)
    entries = t.entries()
    cs, as_ = g.child_start, g.attr_start
    children = [list(zip(g.child_name[cs[i]:cs[i + 1]], g.child[cs[i]:cs[i + 1]])) if cs[i] != cs[i + 1] else ()
                for i in range(n)]
    attrs = [dict(zip(g.attr_name[as_[i]:as_[i + 1]], entries[as_[i]:as_[i + 1]])) if as_[i] != as_[i + 1]
             else _EMPTY_ATTRS for i in range(n)]
    state = [g.state.get(i) for i in range(n)] if g.state else [None] * n
    slots = [g.slots.get(i, ()) for i in range(n)] if g.slots else [()] * n
    return list(map(Node, g.adapter, g.type, children, attrs, state, slots))
