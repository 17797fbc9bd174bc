"""The on-disk format (version 2; version 1 is still read). See ``docs/format.md`` for the full description.

A checkpoint at prefix ``P`` is two kinds of file:

* ``P.data-00000-of-00001``: tensor bytes, each starting at an aligned
  offset (:func:`tensor_alignment`), little-endian, C order; nothing else
  (no pickles, no headers);
* ``P.index``: a 32-byte header (magic ``CKPTIDX1``, format version, JSON
  length, CRC32C of the JSON) followed by UTF-8 JSON that holds the object
  graph, each object's adapter, and per tensor its key, dtype, shape, offset,
  length and CRC32C, stored column by column (one list per field) so that
  an index of tens of thousands of tensors parses and validates in a few
  vectorized steps. It is written last: a checkpoint exists when its index does.

Everything read back is validated before use; nothing is unpickled or evaluated.

Example:
    >>> from ckptcore.formats import ckpt as fmt
    >>> fmt.index_path("/tmp/ckpt-1"), fmt.data_path("/tmp/ckpt-1", 0, 1)
    ('/tmp/ckpt-1.index', '/tmp/ckpt-1.data-00000-of-00001')
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from itertools import accumulate, chain
from types import MappingProxyType
from typing import Any

import numpy as np

from ..dtypes import _BY_NAME, dtype_from_name
from ..errors import CorruptCheckpointError
from .base import Format

FORMAT_VERSION = 2
# 3: version 2 plus sharded tensors (formats/pieces.py); 4: version 3 plus the index's data_tag
READABLE_VERSIONS = (1, 2, 3, 4)
DATA_TAG_VERSION = 4
_DATA_TAG = re.compile(r"[0-9a-f]{16}")
MAGIC = b"CKPTIDX1"
_HEADER = struct.Struct("<8sIIQI4x")  # magic, version, flags, json length, json crc32c, pad -> 32 bytes
HEADER_SIZE = _HEADER.size
ALIGNMENT = 64
MAX_INDEX_BYTES = 1 << 31  # 2 GiB of JSON is far beyond any sane graph
MAX_NDIM = 64
INDEX_SUFFIX = ".index"
# stored name -> dtype, for hot paths: the allowlist itself (ml_dtypes' names join it once loaded)
FAST_DTYPES = _BY_NAME
# TensorFlow's string tensors (formats.tensorbundle): object arrays of bytes, which that format decodes itself.
# Never on the allowlist: a ckptcore index naming it is refused (dtype_from_name), so none asks for object arrays.
STRING_DTYPE = "string"
_OBJECT = np.dtype(object)
USER_METADATA_KEY = "user"  # the index metadata entry holding the user's own (CheckpointOptions.metadata)
METRICS_KEY = "metrics"     # the metrics CheckpointManager.save(metrics=...) was given


def crc32c(buf, value: int = 0, release_gil: bool = False) -> int:
    """CRC32C (Castagnoli) of a bytes-like object, continuing from ``value``.

    The GIL is released for buffers of 32 KiB and more, or always with
    ``release_gil=True`` (for checksums on a helper thread while another thread runs).

    Example:
        >>> crc32c(b"123456789")
        3808858755
    """
    fn = _crc32c_fn
    if fn is None:
        fn = _load_crc32c()
    return fn(buf, value, 1 if release_gil else -1)


_crc32c_fn = None


def _load_crc32c():
    """Import the ``crc32c`` package on first use (its ``__init__`` imports ``importlib.metadata``: ~20 ms)."""
    global _crc32c_fn
    import crc32c as _crc32c

    _crc32c_fn = _crc32c.crc32c
    return _crc32c_fn


def index_path(prefix: str) -> str:
    """Path of the index file of the checkpoint at ``prefix``.

    Example:
        >>> index_path("ckpt-3")
        'ckpt-3.index'
    """
    return prefix + INDEX_SUFFIX


def data_path(prefix: str, shard: int, num_shards: int, tag: str | None = None) -> str:
    """Path of data shard ``shard`` of ``num_shards``; ``tag``: the save attempt's (see :func:`new_data_tag`).

    Example:
        >>> data_path("ckpt-3", 0, 2), data_path("ckpt-3", 0, 1, "0123456789abcdef")
        ('ckpt-3.data-00000-of-00002', 'ckpt-3.data-00000-of-00001.0123456789abcdef')
    """
    name = f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"
    return name if tag is None else f"{name}.{tag}"


def new_data_tag() -> str:
    """A fresh per-attempt tag for data object names (16 hex digits), recorded in the index.

    On object stores every save attempt names its data objects with its own tag, so a request of a
    failed attempt that the server applies late (a clean-up DELETE) can never reach the objects of
    another attempt that reuses the checkpoint's name (see docs/format.md, "Data tags").

    Example:
        >>> len(new_data_tag()), is_data_tag(new_data_tag())
        (16, True)
    """
    import secrets

    return secrets.token_hex(8)


def is_data_tag(text: str) -> bool:
    """Whether ``text`` has the form of a data tag.

    Example:
        >>> is_data_tag("0123456789abcdef"), is_data_tag("00001")
        (True, False)
    """
    return _DATA_TAG.fullmatch(text) is not None


ALIGNED_TENSOR_BYTES = 1 << 16  # tensors this big or bigger start at a multiple of ALIGNMENT
_DTYPE_ALIGNMENT: dict[str, int] = {}


def tensor_alignment(nbytes: int, dtype: str) -> int:
    """Where a tensor of ``nbytes`` bytes of the stored dtype ``dtype`` may start in a data file.

    Tensors of 64 KiB or more start at a multiple of 64 bytes (:data:`ALIGNMENT`); smaller
    ones at a multiple of their dtype's alignment (numpy's ``dtype.alignment``: 4 for
    ``float32``, 2 for ``bfloat16``). Either way a view of a mapped data file is an aligned
    numpy array; small tensors are packed without 64-byte padding, which a restore of many
    small arrays would otherwise read into a scratch buffer between every two of them.

    Example:
        >>> tensor_alignment(1 << 20, "float32"), tensor_alignment(400, "float32"), tensor_alignment(3, "int8")
        (64, 4, 1)
    """
    if nbytes >= ALIGNED_TENSOR_BYTES:
        return ALIGNMENT
    a = _DTYPE_ALIGNMENT.get(dtype)
    if a is None:
        a = _DTYPE_ALIGNMENT[dtype] = (FAST_DTYPES.get(dtype) or dtype_from_name(dtype)).alignment
    return a


def align(offset: int) -> int:
    """Round ``offset`` up to a multiple of :data:`ALIGNMENT` (64 bytes).

    Example:
        >>> align(1), align(64), align(65)
        (64, 64, 128)
    """
    return (offset + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


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
        >>> g = Index(nodes=[Node(children=[("w", 1)]), Node()], num_shards=1, shard_sizes=[0]).graph
        >>> g.children(0), g.children(1)
        ([('w', 1)], [])
    """

    __slots__ = ("adapter", "type", "child_start", "child_name", "child", "attr_start", "attr_name", "state", "slots")

    def __init__(self, adapter, type, child_start, child_name, child, attr_start, attr_name, state, slots):
        self.adapter, self.type = adapter, type
        self.child_start, self.child_name, self.child = child_start, child_name, child
        self.attr_start, self.attr_name = attr_start, attr_name
        self.state, self.slots = state, slots

    def __len__(self) -> int:
        return len(self.adapter)

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

    __slots__ = ("key", "dtype", "shape", "shard", "offset", "nbytes", "crc32c", "node", "_arrays")

    def __init__(self, key, dtype, shape, shard, offset, nbytes, crc32c, node):
        self.key, self.dtype, self.shape = key, dtype, shape
        self.shard, self.offset, self.nbytes, self.crc32c, self.node = shard, offset, nbytes, crc32c, node
        self._arrays = None

    def __len__(self) -> int:
        return len(self.key)

    def entry(self, t: int) -> TensorEntry:
        """Row ``t`` as a :class:`TensorEntry` (a new object each call).

        Example:
            >>> TensorTable.from_entries([TensorEntry("k", "int8", (3,), 0, 64, 3, 9)], [0]).entry(0).offset
            64
        """
        return TensorEntry(self.key[t], self.dtype[t], self.shape[t], self.shard[t], self.offset[t], self.nbytes[t],
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


class Index:
    """A parsed index: the object graph plus the data-file layout.

    Decoded version-2 indexes hold their :attr:`graph` and :attr:`table` as columns, and
    build :attr:`nodes` (one :class:`Node` per object) only when asked; indexes built from
    nodes (saving, version 1) derive the columns from them once.

    Example:
        >>> Index(nodes=[Node()], num_shards=1, shard_sizes=[0]).num_shards
        1
    """

    # Set by formats whose tensors live in files not named after the prefix (a single
    # safetensors file), and by formats that store no per-tensor checksums.
    data_files: list[str] | None = None
    checksummed: bool = True
    #: The save attempt's tag in the data file names (:func:`new_data_tag`), or None: TF's plain names.
    data_tag: str | None = None
    # Set by formats with rows that are not raw array bytes (TensorFlow's string tensors): table row ->
    # ``read(reader, row, verify) -> np.ndarray``, which reads, checks and decodes that row's value.
    decoded_rows: dict[int, Any] | None = None

    def __init__(self, nodes: list[Node] | None = None, num_shards: int = 1, shard_sizes: list[int] | None = None,
                 metadata: dict | None = None, version: int = FORMAT_VERSION, *, graph: Graph | None = None,
                 table: TensorTable | None = None, pieces=None):
        if nodes is None and (graph is None or table is None):
            raise ValueError("an Index needs nodes, or a graph and a table")
        self._nodes = nodes
        self._graph, self._table = graph, table
        self.num_shards = num_shards
        self.shard_sizes = [0] if shard_sizes is None else shard_sizes
        self.metadata = {} if metadata is None else metadata
        self.version = version
        self.pieces = pieces  # formats.pieces.Pieces of the sharded tensors (version 3), or None

    def __repr__(self) -> str:
        return (f"Index(version={self.version}, nodes={len(self.graph)}, tensors={len(self.table)}, "
                f"num_shards={self.num_shards})")

    @property
    def nodes(self) -> list[Node]:
        if self._nodes is None:
            self._nodes = _nodes_from_columns(self.graph, self.table)  # both set when _nodes is None
        return self._nodes

    @nodes.setter
    def nodes(self, value: list[Node]) -> None:
        self._nodes, self._graph, self._table = value, None, None

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            self._graph = Graph.from_nodes(self.nodes)  # _nodes is set when _graph is None
        return self._graph

    @property
    def table(self) -> TensorTable:
        if self._table is None:
            nodes = self.nodes  # _nodes is set when _table is None
            self._table = TensorTable.from_entries(
                [e for n in nodes for e in n.attributes.values()],
                [i for i, n in enumerate(nodes) for _ in range(len(n.attributes))])
        return self._table

    def encode(self) -> bytes:
        """The index file's bytes: header, the JSON of this index's ``version``, then (version 2) its binary columns.

        Example:
            >>> raw = Index(nodes=[Node(adapter="a")], num_shards=1, shard_sizes=[0]).encode()
            >>> raw[:8], decode_index(raw, "x.index").nodes[0].adapter
            (b'CKPTIDX1', 'a')
        """
        if self.version == 1:
            from .ckpt_v1 import encode_v1
            body, columns = encode_v1(self).encode("ascii"), b""
        else:
            if self.pieces is not None and len(self.pieces):
                from .pieces import PIECES_VERSION
                self.version = max(self.version, PIECES_VERSION)
            if self.data_tag is not None:
                self.version = max(self.version, DATA_TAG_VERSION)
            body, columns = _encode_v2(self)
        return _HEADER.pack(MAGIC, self.version, 0, len(body), crc32c(body)) + body + columns

    def tensors(self):
        """Every tensor entry, in node order (attributes in their order within a node).

        Example:
            >>> e = TensorEntry("k", "int8", (3,), 0, 0, 3, 0)
            >>> [t.key for t in Index(nodes=[Node(attributes={"VARIABLE_VALUE": e})]).tensors()]
            ['k']
        """
        if self._nodes is None:
            return iter(self._table.entries())
        return (e for node in self._nodes for e in node.attributes.values())


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


def _head(index: Index) -> str:
    doc = {"format": "ckptcore", "version": index.version, "num_shards": index.num_shards,
           "shard_sizes": index.shard_sizes, "metadata": index.metadata}
    if index.data_tag is not None:
        doc["data_tag"] = index.data_tag
    return _dumps(doc)


def _strs(values) -> str:
    return ",".join(map(_json_str, values))


COLUMN_DTYPES: dict[str, np.dtype] = {t: np.dtype(t) for t in ("<u1", "<u2", "<u4", "<u8")}
COLUMN_ALIGNMENT = 8


class _Columns:
    """The binary section of a version-2 index: integer columns, each 8-byte aligned."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def ref(self, values) -> str:
        """Store ``values`` (non-negative integers) in the narrowest unsigned type; the JSON that refers to them."""
        arr = np.asarray(values, dtype=np.uint64)
        top = int(arr.max()) if arr.size else 0
        dt = "<u1" if top < 1 << 8 else "<u2" if top < 1 << 16 else "<u4" if top < 1 << 32 else "<u8"
        data = arr.astype(dt).tobytes()
        ref = f'{{"dtype":"{dt}","offset":{self.size},"count":{arr.size}}}'
        pad = -len(data) % COLUMN_ALIGNMENT
        self.parts.append(data + bytes(pad))
        self.size += len(data) + pad
        return ref


def _encode_v2(index: Index) -> tuple[bytes, bytes]:
    """Version 2: the JSON (names, keys, structure) and the binary integer columns it refers to."""
    g, t = index.graph, index.table
    adapters = {a: i for i, a in enumerate(dict.fromkeys(g.adapter))}
    types = {a: i for i, a in enumerate(dict.fromkeys(g.type))}
    dtypes = {d: i for i, d in enumerate(dict.fromkeys(t.dtype))}
    states = [f"[{i},{_dumps(g.state[i])}]" for i in sorted(g.state)]
    slots = [f"[{i},{var},{_json_str(name)},{slot}]" for i in sorted(g.slots) for var, name, slot in g.slots[i]]
    cs, as_ = np.asarray(g.child_start), np.asarray(g.attr_start)
    col = _Columns()
    graph = (f'{{"adapters":[{_strs(adapters)}],"types":[{_strs(types)}],'
             f'"adapter":{col.ref(list(map(adapters.__getitem__, g.adapter)))},'
             f'"type":{col.ref(list(map(types.__getitem__, g.type)))},'
             f'"num_children":{col.ref(np.diff(cs))},"child_name":[{_strs(g.child_name)}],'
             f'"child":{col.ref(g.child)},"num_attributes":{col.ref(np.diff(as_))},'
             f'"attribute":[{_strs(g.attr_name)}],"state":[{",".join(states)}],"slots":[{",".join(slots)}]}}')
    tensors = (f'{{"dtypes":[{_strs(dtypes)}],"key":[{_strs(t.key)}],'
               f'"dtype":{col.ref(list(map(dtypes.__getitem__, t.dtype)))},"ndim":{col.ref(list(map(len, t.shape)))},'
               f'"dims":{col.ref(list(chain.from_iterable(t.shape)))},"shard":{col.ref(t.shard)},'
               f'"offset":{col.ref(t.offset)},"nbytes":{col.ref(t.nbytes)},"crc32c":{col.ref(t.crc32c)}}}')
    if index.pieces is not None and len(index.pieces):
        from .pieces import encode_pieces
        tensors = f'{tensors[:-1]},"pieces":{encode_pieces(index.pieces, t, col)}}}'
    columns = b"".join(col.parts)
    head = f'{_head(index)[:-1]},"columns":{{"nbytes":{len(columns)},"crc32c":{crc32c(columns)}}}'
    return f'{head},"nodes":{graph},"tensors":{tensors}}}'.encode("ascii"), columns


_json_str = json.encoder.encode_basestring_ascii  # a string as a JSON literal, exactly as json.dumps writes it
def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _bad(path: str, msg: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"corrupt checkpoint index {path}: {msg}", path=path)


def decode_index(raw: bytes, path: str) -> Index:
    """Parse and fully validate index bytes read from ``path``.

    Raises :class:`~ckptcore.CorruptCheckpointError` naming ``path`` for any
    truncation, checksum failure, or structurally invalid content.

    Example:
        >>> idx = Index(nodes=[Node(adapter="a")], num_shards=1, shard_sizes=[0])
        >>> decode_index(idx.encode(), "x.index").nodes[0].adapter
        'a'
    """
    if len(raw) < HEADER_SIZE:
        raise _bad(path, f"file is {len(raw)} bytes, shorter than the {HEADER_SIZE}-byte header (truncated?)")
    magic, version, _flags, length, crc = _HEADER.unpack_from(raw, 0)
    if magic != MAGIC:
        raise _bad(path, f"bad magic {magic!r}; not a ckptcore index")
    if version not in READABLE_VERSIONS:
        raise _bad(path, f"format version {version} is not supported (this ckptcore reads versions "
                         f"{READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]}; a newer ckptcore wrote it?)")
    rest = len(raw) - HEADER_SIZE
    if length != rest if version == 1 else length > rest:  # version 2: binary columns follow the JSON
        raise _bad(path, f"header says {length} bytes of JSON but {rest} follow (truncated?)")
    body = raw[HEADER_SIZE:HEADER_SIZE + length]
    if crc32c(body) != crc:
        raise _bad(path, "index checksum mismatch")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _bad(path, f"invalid JSON ({e})") from None
    try:
        if version == 1:
            from .ckpt_v1 import parse_v1
            index = parse_v1(doc, path, version)
        else:
            index = _parse_doc_v2(doc, path, version, memoryview(raw)[HEADER_SIZE + length:])
    except CorruptCheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise _bad(path, f"malformed content ({type(e).__name__}: {e})") from None
    _upgrade_legacy_keys(index, path)
    return index


def _upgrade_legacy_keys(index: Index, path: str) -> None:
    """Give the keys of checkpoints from before ckptcore followed TF's root keys TF's form.

    Only the root's attributes and the slots of a root variable or optimizer can differ
    (:func:`ckptcore.naming.upgrade_legacy_key`): they are found from the graph, so an index
    costs nothing per tensor here.
    """
    from ..naming import upgrade_legacy_key

    g, t = index.graph, index.table
    rows = [(r, False) for r in g.attributes(0)]
    for opt, entries in g.slots.items():
        for var, _name, slot in entries:
            if opt == 0 or var == 0:
                rows.extend((r, opt == 0) for r in g.attributes(slot))
    changed = {}
    for r, opt_root in rows:
        key = t.key[r]
        new = upgrade_legacy_key(key, optimizer_is_root=opt_root)
        if new != key:
            changed[r] = new
    if not changed:
        return
    keys = set(t.key)
    for r, new in changed.items():
        if new in keys:
            raise _bad(path, f"tensor key {t.key[r]!r} read as {new!r}, which another tensor has")
        keys.add(new)
        t.key[r] = new
    if index._nodes is not None:  # version 1: the nodes hold the entries the table was built from
        flat = [e for n in index._nodes for e in n.attributes.values()]
        for r, new in changed.items():
            flat[r].key = new


def _int(v: Any, what: str, path: str, lo: int = 0, hi: int = 1 << 62) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(path, f"{what} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _str(v: Any, what: str, path: str) -> str:
    if not isinstance(v, str):
        raise _bad(path, f"{what} must be a string, got {type(v).__name__}")
    return v


_EMPTY_ATTRS: Any = MappingProxyType({})  # shared by decoded nodes without attributes (read-only)
_INT = {int}


def _column(table: dict, name: str, path: str, n: int | None = None, lo: int = 0, hi: int = 1 << 62,
            keys: list | None = None) -> list:
    """``table[name]``: a list of ``n`` integers (not booleans) in ``[lo, hi]``, checked in C-speed passes.

    ``keys``: the tensor keys, for a column with one value per tensor (an error then names the key).
    """
    col = table[name]
    if type(col) is not list:
        raise _bad(path, f"{name} must be a list")
    if n is not None and len(col) != n:
        raise _bad(path, f"{name} has {len(col)} entries, expected {n}")
    if col and (set(map(type, col)) != _INT or min(col) < lo or max(col) > hi):
        i, bad = next((i, v) for i, v in enumerate(col) if type(v) is not int or not lo <= v <= hi)
        if keys is not None:
            raise CorruptCheckpointError(f"corrupt checkpoint index {path}: tensor {keys[i]!r}: {name} must be an "
                                         f"integer in [{lo}, {hi}], got {bad!r}", path=path, key=keys[i])
        raise _bad(path, f"{name} must hold integers in [{lo}, {hi}], got {bad!r}")
    return col


def _binary(table: dict, name: str, path: str, section, n: int | None = None, hi: int = 1 << 62,
            keys: list | None = None) -> np.ndarray:
    """The integer column ``table[name]`` refers to: ``n`` values in ``[0, hi]`` read from the binary section.

    ``keys``: the tensor keys, for a column with one value per tensor (an error then names the key).
    """
    ref = table[name]
    if type(ref) is not dict:
        raise _bad(path, f"{name} must refer to a binary column")
    dt = COLUMN_DTYPES.get(ref["dtype"]) if type(ref["dtype"]) is str else None
    if dt is None:
        raise _bad(path, f"{name} has column type {ref['dtype']!r}; expected one of {sorted(COLUMN_DTYPES)}")
    offset = _int(ref["offset"], f"{name} offset", path)
    count = _int(ref["count"], f"{name} count", path)
    if offset % COLUMN_ALIGNMENT or offset + count * dt.itemsize > len(section):
        raise _bad(path, f"{name} ({count} values at byte {offset}) lies outside the {len(section)} bytes of binary "
                         "columns, or is not 8-byte aligned (truncated?)")
    if n is not None and count != n:
        raise _bad(path, f"{name} has {count} entries, expected {n}")
    col = np.frombuffer(section, dt, count, offset)
    if count and col.max() > hi:
        i = int(np.flatnonzero(col > hi)[0])
        if keys is not None:
            raise CorruptCheckpointError(f"corrupt checkpoint index {path}: tensor {keys[i]!r}: {name} must be an "
                                         f"integer in [0, {hi}], got {int(col[i])}", path=path, key=keys[i])
        raise _bad(path, f"{name} must hold integers in [0, {hi}], got {int(col[i])}")
    return col


def _strings(table: dict, name: str, path: str, n: int | None = None) -> list:
    col = table[name]
    if type(col) is not list or (col and set(map(type, col)) != {str}):
        raise _bad(path, f"{name} must be a list of strings")
    if n is not None and len(col) != n:
        raise _bad(path, f"{name} has {len(col)} entries, expected {n}")
    return col


def _parse_doc_v2(doc: Any, path: str, version: int, section) -> Index:
    """Version 2 (columns). Every field is validated before any object is built."""
    if type(doc) is not dict or doc.get("format") != "ckptcore":
        raise _bad(path, "not a ckptcore index document")
    num_shards = _int(doc["num_shards"], "num_shards", path, 1, 1 << 16)
    sizes = _column(doc, "shard_sizes", path, num_shards)
    metadata = doc.get("metadata", {})
    if type(metadata) is not dict:
        raise _bad(path, "metadata must be an object")
    g, t, c = doc["nodes"], doc["tensors"], doc["columns"]
    if type(g) is not dict or type(t) is not dict or type(c) is not dict:
        raise _bad(path, "nodes, tensors and columns must be objects")
    if _int(c["nbytes"], "columns nbytes", path) != len(section):
        raise _bad(path, f"the index records {c['nbytes']} bytes of binary columns but {len(section)} follow "
                         "(truncated?)")
    if crc32c(section) != _int(c["crc32c"], "columns crc32c", path, 0, 0xFFFFFFFF):
        raise _bad(path, "binary column checksum mismatch")

    # -- the graph ------------------------------------------------------------------------
    adapters, types = _strings(g, "adapters", path), _strings(g, "types", path)
    node_adapter = _binary(g, "adapter", path, section, None, len(adapters) - 1)
    n = len(node_adapter)
    if n == 0:
        raise _bad(path, "the object graph has no root node")
    node_type = _binary(g, "type", path, section, n, len(types) - 1)
    # counts up to 2^30 each: their sums cannot overflow (an index holds fewer than 2^31 nodes)
    num_children = _binary(g, "num_children", path, section, n, 1 << 30).astype(np.int64)
    num_attrs = _binary(g, "num_attributes", path, section, n, 1 << 30).astype(np.int64)
    child_ids = _binary(g, "child", path, section, int(num_children.sum()), n - 1).tolist()
    child_names = _strings(g, "child_name", path, len(child_ids))
    attr_names = _strings(g, "attribute", path, int(num_attrs.sum()))
    states, slot_rows = g["state"], g["slots"]
    if type(states) is not list or type(slot_rows) is not list:
        raise _bad(path, "state and slots must be lists")

    # -- the tensor table -------------------------------------------------------------------
    m = len(attr_names)  # one tensor per attribute, in node order
    keys = _strings(t, "key", path, m)
    if len(set(keys)) != m:
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _bad(path, f"tensor key {dup!r} appears twice")
    dtype_names = _strings(t, "dtypes", path)
    dtypes = []
    for name in dtype_names:
        try:
            dtypes.append(FAST_DTYPES.get(name) or dtype_from_name(name))
        except ValueError as err:
            raise _bad(path, f"dtype table: {err}") from None
    dtype_ids = _binary(t, "dtype", path, section, m, len(dtype_names) - 1, keys)
    ndim = _binary(t, "ndim", path, section, m, MAX_NDIM, keys).astype(np.int64)
    dims = _binary(t, "dims", path, section, int(ndim.sum())).astype(np.int64)
    shard = _binary(t, "shard", path, section, m, num_shards - 1, keys).astype(np.int64)
    offset = _binary(t, "offset", path, section, m, keys=keys).astype(np.int64)
    nbytes = _binary(t, "nbytes", path, section, m, keys=keys).astype(np.int64)
    crcs = _binary(t, "crc32c", path, section, m, 0xFFFFFFFF, keys)
    pieces = None
    if version >= 3 and "pieces" in t:  # sharded tensors (formats/pieces.py)
        from .pieces import parse_pieces
        itemsize = np.array([dt.itemsize for dt in dtypes], np.int64)[np.asarray(dtype_ids, np.int64)]
        pieces = parse_pieces(t["pieces"], path, section, _binary, keys, itemsize, ndim, dims.tolist(), shard,
                              offset, nbytes, crcs, sizes, num_shards)
    if m:
        _check_extents(path, keys, dtypes, dtype_ids, ndim, dims, shard, offset, nbytes, sizes,
                       None if pieces is None else list(pieces.by_row))
    # -- per-node checks, then the columns restore works on -----------------------------------------
    child_start = np.concatenate(([0], np.cumsum(num_children))).tolist()
    for nid in np.flatnonzero(num_children > 1).tolist():
        names = child_names[child_start[nid]:child_start[nid + 1]]
        if len(set(names)) != len(names):
            dup = next(x for i, x in enumerate(names) if x in names[:i])
            raise _bad(path, f"node {nid} has two children named {dup!r}")
    attr_start = np.concatenate(([0], np.cumsum(num_attrs))).tolist()
    for nid in np.flatnonzero(num_attrs > 1).tolist():
        names = attr_names[attr_start[nid]:attr_start[nid + 1]]
        if len(set(names)) != len(names):
            raise _bad(path, f"node {nid} has two attributes of one name")
    node_state: dict[int, Any] = {}
    for row in states:
        if type(row) is not list or len(row) != 2:
            raise _bad(path, "a state entry must be [node id, value]")
        nid = _int(row[0], "state node id", path, 0, n - 1)
        if nid in node_state or row[1] is None:
            raise _bad(path, f"node {nid} has two states" if nid in node_state else f"node {nid} has a null state")
        node_state[nid] = row[1]
    node_slots: dict[int, list] = {}
    for row in slot_rows:
        if type(row) is not list or len(row) != 4:
            raise _bad(path, "a slot entry must be [optimizer node, variable node, name, slot node]")
        opt = _int(row[0], "slot optimizer", path, 0, n - 1)
        node_slots.setdefault(opt, []).append((_int(row[1], "slot variable", path, 0, n - 1),
                                               _str(row[2], "slot name", path),
                                               _int(row[3], "slot node", path, 0, n - 1)))
    shapes = _shapes(ndim, dims)
    graph = Graph(_gather(adapters, node_adapter), _gather(types, node_type), child_start,
                  child_names, child_ids, attr_start, attr_names, node_state, node_slots)
    table = TensorTable(keys, _gather(dtype_names, dtype_ids), shapes, shard.tolist(),
                        offset.tolist(), nbytes.tolist(), crcs.tolist(), np.repeat(np.arange(n), num_attrs))
    table._arrays = (shard, offset, nbytes)
    index = Index(num_shards=num_shards, shard_sizes=sizes, metadata=metadata, version=version, graph=graph,
                  table=table, pieces=pieces)
    tag = doc.get("data_tag") if version >= DATA_TAG_VERSION else None
    if tag is not None:
        if type(tag) is not str or not is_data_tag(tag):
            raise _bad(path, f"data_tag must be 16 hex digits, got {tag!r}")
        index.data_tag = tag
    return index


def _shapes(ndim: np.ndarray, dims: np.ndarray) -> list[tuple[int, ...]]:
    """Each row's shape tuple from the ``ndim`` and flat ``dims`` columns, in numpy passes per rank.

    Equal shapes share one tuple: models repeat a few shapes many times, and a million tuples
    would be that many more objects for the garbage collector to scan after a restore.
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


def _gather(names: list[str], ids: np.ndarray) -> list[str]:
    """``[names[i] for i in ids]``, in one numpy pass (the ids are already range-checked)."""
    table = np.empty(len(names), object)
    table[:] = names
    return table[ids].tolist()


def _check_extents(path, keys, dtypes, dtype_ids, ndim, dims, shard, offset, nbytes, sizes, sharded=None) -> None:
    """Sizes and positions of every tensor, vectorized: ``nbytes`` is ``product(shape) * itemsize``
    (no shape of 2^62 bytes or more), and each tensor lies inside its data file (``sharded``: rows
    stored as pieces, whose positions formats.pieces checks instead)."""
    ndim_a = np.asarray(ndim, np.int64)
    itemsize = np.array([dt.itemsize for dt in dtypes], np.int64)[np.asarray(dtype_ids, np.int64)]
    if len(dims):
        dims_a = np.asarray(dims, np.int64)
        starts = np.cumsum(ndim_a) - ndim_a
        has = ndim_a > 0
        # the size in bits of each shape first (zero dimensions count as 1), so that no product overflows
        log2 = np.log2(np.maximum(dims_a, 1).astype(np.float64))
        bits = np.zeros(len(ndim), np.float64)
        bits[has] = np.add.reduceat(log2, starts[has])
        bits += np.log2(np.maximum(itemsize, 1))
        huge = np.flatnonzero(bits >= 61.9)
        if huge.size:
            i = int(huge[0])
            raise CorruptCheckpointError(f"corrupt checkpoint index {path}: tensor {keys[i]!r} has an impossible "
                                         f"shape {tuple(int(d) for d in dims[starts[i]:starts[i] + ndim[i]])}",
                                         path=path, key=keys[i])
        elems = np.ones(len(ndim), np.int64)
        elems[has] = np.multiply.reduceat(dims_a, starts[has])
    else:
        elems = np.ones(len(ndim), np.int64)
    nbytes_a = np.array(nbytes, np.int64)
    wrong = np.flatnonzero(elems * itemsize != nbytes_a)
    if wrong.size:
        i = int(wrong[0])
        raise CorruptCheckpointError(
            f"corrupt checkpoint index {path}: tensor {keys[i]!r} has {int(elems[i])} elements of "
            f"{int(itemsize[i])} bytes but records {int(nbytes[i])} bytes", path=path, key=keys[i])
    ends = np.array(offset, np.int64) + nbytes_a
    if sharded:
        ends[np.asarray(sharded, np.int64)] = 0
    past = np.flatnonzero(ends > np.array(sizes, np.int64)[np.array(shard, np.int64)])
    if past.size:
        i = int(past[0])
        raise CorruptCheckpointError(
            f"corrupt checkpoint index {path}: tensor {keys[i]!r} extends past the end of its data file",
            path=path, key=keys[i])


class CkptFormat(Format):
    """ckptcore's own format (versions 1 and 2), as a :class:`~ckptcore.formats.base.Format`.

    Example:
        >>> CkptFormat().sniff_index(MAGIC + bytes(24), b"")
        True
    """

    name = "ckptcore"

    def sniff_index(self, head: bytes, tail: bytes) -> bool:
        return head.startswith(MAGIC)

    def decode_index(self, raw, path, *, storage=None, prefix=None) -> Index:
        return decode_index(raw, path)

    def sniff_file(self, head: bytes) -> bool:
        return False

    writes = True

    def write_plan(self, storage, prefix, plan, progress=None) -> None:
        from ..saver import write_plan

        write_plan(storage, prefix, plan, progress)

    def record_save(self, storage, directory, name) -> None:
        from ..state import record_save

        record_save(storage, directory, name)

    def write_collective(self, group, storage, prefix, make_plan, *, timeout=None, on_commit=None) -> None:
        from ..distributed.save import collective_write

        collective_write(group, storage, prefix, make_plan, timeout=timeout, on_commit=on_commit)

    def write_state(self, storage, directory, state) -> None:
        from ..state import write_state

        write_state(storage, directory, state)
