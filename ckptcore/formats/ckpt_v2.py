"""Format version 2 of the index (also 3 to 6): the graph and the tensor table as columns.

Names and keys are JSON lists of strings (version 6: no keys, and the edge and attribute
names as tables of distinct names plus columns); integers live in binary columns after the
JSON (the narrowest unsigned type, read with ``numpy.frombuffer`` and checked with
numpy), so that an index of a million tensors encodes and validates in vectorized
steps (``docs/format.md``, "JSON body" and "Binary columns"). The header, the version
dispatch and :class:`~ckptcore.formats.ckpt.Index` live in :mod:`ckptcore.formats.ckpt`.

Example:
    >>> from ckptcore.formats import ckpt as fmt
    >>> idx = fmt.Index(nodes=[fmt.Node(adapter="a")], num_shards=1, shard_sizes=[0])
    >>> body, columns = encode_v2(idx)
    >>> body[:40], len(columns) % COLUMN_ALIGNMENT
    (b'{"format":"ckptcore","version":2,"num_sh', 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dtypes import dtype_from_name
from ..errors import CorruptCheckpointError
from .ckpt import (
    DATA_TAG_VERSION,
    DERIVED_KEYS_VERSION,
    MAX_NDIM,
    SLOT_COLUMNS_VERSION,
    Index,
    _bad,
    _dumps,
    _head,
    _int,
    _json_str,
    _str,
    crc32c,
    is_data_tag,
)
from .ckpt_keys import KeyDerivation, NotDerivable
from .ckpt_tables import FAST_DTYPES, Gathered, Graph, TensorTable, int64_column, uint64_column

__all__ = ["COLUMN_ALIGNMENT", "COLUMN_DTYPES", "encode_v2", "parse_v2"]


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
        arr = uint64_column(values)
        top = int(arr.max()) if arr.size else 0
        dt = "<u1" if top < 1 << 8 else "<u2" if top < 1 << 16 else "<u4" if top < 1 << 32 else "<u8"
        data = arr.astype(dt).tobytes()
        ref = f'{{"dtype":"{dt}","offset":{self.size},"count":{arr.size}}}'
        pad = -len(data) % COLUMN_ALIGNMENT
        self.parts.append(data + bytes(pad))
        self.size += len(data) + pad
        return ref


def encode_v2(index: Index) -> tuple[bytes, bytes]:
    """Version 2: the JSON (names, keys, structure) and the binary integer columns it refers to."""
    g, t = index.graph, index.table
    adapters = {a: i for i, a in enumerate(dict.fromkeys(g.adapter))}
    types = {a: i for i, a in enumerate(dict.fromkeys(g.type))}
    dtypes = {d: i for i, d in enumerate(dict.fromkeys(t.dtype))}
    states = [f"[{i},{_dumps(g.state[i])}]" for i in sorted(g.state)]
    cs, as_ = int64_column(g.child_start), int64_column(g.attr_start)
    shard, offset, nbytes = t.arrays()  # as int64 arrays (kept by decoded and column-written tables)
    ndim, dims = t.shape_columns()
    col = _Columns()

    def slots() -> str:  # (called in its place in the f-string below: its columns follow num_attributes)
        if index.version < SLOT_COLUMNS_VERSION:
            return "[" + ",".join(f"[{i},{var},{_json_str(name)},{slot}]" for i in sorted(g.slots)
                                  for var, name, slot in g.slots[i]) + "]"
        # four columns, the names as indexes into the list of distinct names
        rows = [r for i in sorted(g.slots) for r in g.slots[i]]
        var, name, slot = zip(*rows) if rows else ((), (), ())
        names = {n: k for k, n in enumerate(dict.fromkeys(name))}
        return (f'{{"names":[{_strs(names)}],"optimizer":{col.ref([i for i in sorted(g.slots) for _ in g.slots[i]])},'
                f'"variable":{col.ref(var)},"name":{col.ref(list(map(names.__getitem__, name)))},'
                f'"slot":{col.ref(slot)}}}')
    derived = index.version >= DERIVED_KEYS_VERSION

    def names(values) -> str:   # version 6: the distinct names, and a column of indexes into them
        if not derived:
            return f"[{_strs(values)}]"
        table = {v: k for k, v in enumerate(dict.fromkeys(values))}
        return f'{{"names":[{_strs(table)}],"name":{col.ref(list(map(table.__getitem__, values)))}}}'
    graph = (f'{{"adapters":[{_strs(adapters)}],"types":[{_strs(types)}],'
             f'"adapter":{col.ref(list(map(adapters.__getitem__, g.adapter)))},'
             f'"type":{col.ref(list(map(types.__getitem__, g.type)))},'
             f'"num_children":{col.ref(np.diff(cs))},"child_name":{names(g.child_name)},'
             f'"child":{col.ref(g.child)},"num_attributes":{col.ref(np.diff(as_))},'
             f'"attribute":{names(g.attr_name)},"state":[{",".join(states)}],"slots":{slots()}}}')
    keys = "" if derived else f'"key":[{_strs(t.key)}],'   # version 6: the keys follow from the graph
    tensors = (f'{{"dtypes":[{_strs(dtypes)}],{keys}'
               f'"dtype":{col.ref(list(map(dtypes.__getitem__, t.dtype)))},"ndim":{col.ref(ndim)},'
               f'"dims":{col.ref(dims)},"shard":{col.ref(shard)},'
               f'"offset":{col.ref(offset)},"nbytes":{col.ref(nbytes)},"crc32c":{col.ref(t.crc32c)}}}')
    if index.pieces is not None and len(index.pieces):
        from .pieces import encode_pieces
        tensors = f'{tensors[:-1]},"pieces":{encode_pieces(index.pieces, t, col)}}}'
    columns = b"".join(col.parts)
    head = f'{_head(index)[:-1]},"columns":{{"nbytes":{len(columns)},"crc32c":{crc32c(columns)}}}'
    return f'{head},"nodes":{graph},"tensors":{tensors}}}'.encode("ascii"), columns


_INT = {int}


def _column(table: dict, name: str, path: str, n: int | None = None, lo: int = 0, hi: int = 1 << 62,
            keys: Sequence[str] | None = None) -> list:
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
            keys: Sequence[str] | None = None) -> np.ndarray:
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


def _listed(table: dict, name: str, path: str, section, n: int) -> list:
    """Versions 2-5: ``table[name]`` is a JSON list of ``n`` strings."""
    return _strings(table, name, path, n)


def _named(table: dict, name: str, path: str, section, n: int) -> list:
    """Version 6: ``table[name]`` is ``{"names": [distinct strings], "name": column}``, ``n`` entries gathered."""
    ref = table[name]
    if type(ref) is not dict:
        raise _bad(path, f"{name} must be an object of distinct names and a column of indexes into them")
    names = _strings(ref, "names", path)
    ids = _binary({f"{name}.name": ref["name"]}, f"{name}.name", path, section, n, len(names) - 1)
    return _gather(names, ids) if n else []


def _strings(table: dict, name: str, path: str, n: int | None = None) -> list:
    col = table[name]
    if type(col) is not list or (col and set(map(type, col)) != {str}):
        raise _bad(path, f"{name} must be a list of strings")
    if n is not None and len(col) != n:
        raise _bad(path, f"{name} has {len(col)} entries, expected {n}")
    return col


def parse_v2(doc: Any, path: str, version: int, section) -> Index:
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
    child_col = _binary(g, "child", path, section, int(num_children.sum()), n - 1)
    child_ids = child_col.tolist()
    derived = version >= DERIVED_KEYS_VERSION
    read_names = _named if derived else _listed
    child_names = read_names(g, "child_name", path, section, len(child_ids))
    attr_names = read_names(g, "attribute", path, section, int(num_attrs.sum()))
    states, slot_rows = g["state"], g["slots"]
    if type(states) is not list:
        raise _bad(path, "state must be a list")
    if type(slot_rows) is not (dict if version >= SLOT_COLUMNS_VERSION else list):
        raise _bad(path, "slots must be " + ("an object of columns" if version >= SLOT_COLUMNS_VERSION else "a list"))
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
    slot_cols = None
    if type(slot_rows) is dict:
        node_slots, slot_cols = _slot_columns(slot_rows, path, section, n)
    else:
        node_slots = {}
        for row in slot_rows:
            if type(row) is not list or len(row) != 4:
                raise _bad(path, "a slot entry must be [optimizer node, variable node, name, slot node]")
            opt = _int(row[0], "slot optimizer", path, 0, n - 1)
            node_slots.setdefault(opt, []).append((_int(row[1], "slot variable", path, 0, n - 1),
                                                   _str(row[2], "slot name", path),
                                                   _int(row[3], "slot node", path, 0, n - 1)))
    graph = Graph(Gathered(adapters, node_adapter), Gathered(types, node_type), child_start,
                  child_names, child_ids, attr_start, attr_names, node_state, node_slots)
    row_node = np.repeat(np.arange(n), num_attrs)

    # -- the tensor table -------------------------------------------------------------------
    m = len(attr_names)  # one tensor per attribute, in node order
    keys: Sequence[str]
    if derived:   # version 6: each key follows from the graph, made when asked for (formats/ckpt_keys.py)
        if "key" in t:
            raise _bad(path, f"a version-{version} index derives its tensor keys from the graph; it has a key list")
        try:
            keys = KeyDerivation.of(graph, row_node, child_col, slot_cols, (num_children, num_attrs))
        except NotDerivable as err:
            raise _bad(path, f"the tensor keys do not follow from the object graph: {err}") from None
    else:
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
    # shard, offset and nbytes stay int64 arrays (their lists are made if asked for): restore reads them as
    # arrays; the shape tuples are made on first use (an open that lists keys or reads a few tensors needs none)
    table = TensorTable(keys, _gather(dtype_names, dtype_ids), None, shard, offset, nbytes, crcs.tolist(),
                        row_node, shape_cols=(ndim, dims))
    index = Index(num_shards=num_shards, shard_sizes=sizes, metadata=metadata, version=version, graph=graph,
                  table=table, pieces=pieces)
    tag = doc.get("data_tag") if version >= DATA_TAG_VERSION else None
    if tag is not None:
        if type(tag) is not str or not is_data_tag(tag):
            raise _bad(path, f"data_tag must be 16 hex digits, got {tag!r}")
        index.data_tag = tag
    return index


def _slot_columns(table: dict, path: str, section, n: int) -> tuple[dict[int, list], tuple | None]:
    """Version 5's slots: optimizer node -> [(variable node, name, slot node)], in the columns' order.

    Four columns of one length (``optimizer``, ``variable``, ``slot``: node ids; ``name``: indexes
    into ``names``), checked as columns; no Python step per slot but building its tuple. Also
    returns the columns themselves (for :meth:`KeyDerivation.of`), or None when there are none.
    """
    names = _strings(table, "names", path)
    opt = _binary(table, "optimizer", path, section, None, n - 1)
    k = len(opt)
    var_a = _binary(table, "variable", path, section, k, n - 1)
    slot_a = _binary(table, "slot", path, section, k, n - 1)
    name_ids = _binary(table, "name", path, section, k, len(names) - 1)
    if not k:
        return {}, None
    row_names = _gather(names, name_ids)
    rows = list(zip(var_a.tolist(), row_names, slot_a.tolist()))
    cols = (opt.astype(np.int64), var_a.astype(np.int64), slot_a.astype(np.int64), name_ids.astype(np.int64),
            row_names, names)
    if opt[0] == opt[-1] and (opt == opt[0]).all():   # one optimizer (the usual checkpoint)
        return {int(opt[0]): rows}, cols
    order = np.argsort(opt, kind="stable")   # grouped by optimizer, each group in the columns' order
    sorted_opt = opt[order]
    starts = np.flatnonzero(np.r_[True, sorted_opt[1:] != sorted_opt[:-1]]).tolist()
    order_l = order.tolist()
    return {int(sorted_opt[a]): [rows[i] for i in order_l[a:b]] for a, b in zip(starts, [*starts[1:], k])}, cols


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
