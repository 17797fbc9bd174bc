"""Format version 1 of the index: one JSON object per node and per tensor.

Checkpoints of ckptcore before format version 2 store their index this way (see
``docs/format.md``, "Version 1"). ckptcore still reads them, with the same
validation, and writes them when asked for ``Index(version=1)``; the current
format lives in :mod:`ckptcore.formats.ckpt`.

Example:
    >>> from ckptcore.formats import ckpt as fmt
    >>> raw = fmt.Index(nodes=[fmt.Node(adapter="a")], version=1).encode()
    >>> b'"nodes":[{"adapter":"a"' in raw, fmt.decode_index(raw, "x.index").version
    (True, 1)
"""

from __future__ import annotations

import math
from typing import Any

from ..dtypes import dtype_from_name
from ..errors import CorruptCheckpointError
from .ckpt import FAST_DTYPES, MAX_NDIM, Index, Node, TensorEntry, _bad, _dumps, _head, _int, _json_str, _str

__all__ = ["encode_v1", "parse_v1"]


def encode_v1(index: Index) -> str:
    """The JSON text of ``index`` in format version 1.

    Example:
        >>> encode_v1(Index(nodes=[Node(adapter="a")], version=1))[:40]
        '{"format":"ckptcore","version":1,"num_sh'
    """
    # The same text as json.dumps of {..., "nodes": [n.to_json() for n in nodes]} (compact, ASCII),
    # but the per-node and per-tensor records are formatted directly: 3x faster for many small arrays.
    return f'{_head(index)[:-1]},"nodes":[{",".join(map(_node_json, index.nodes))}]}}'


_TENSOR_JSON = '{"key":%s,"dtype":%s,"shape":[%s],"shard":%d,"offset":%d,"nbytes":%d,"crc32c":%d}'


def _tensor_json(e: TensorEntry) -> str:
    return _TENSOR_JSON % (_json_str(e.key), _json_str(e.dtype), ",".join([str(int(d)) for d in e.shape]),
                           e.shard, e.offset, e.nbytes, e.crc32c)


def _node_json(n: Node) -> str:
    """``_dumps(n.to_json())``, formatted directly."""
    out = (f'{{"adapter":{_json_str(n.adapter)},"type":{_json_str(n.type)},"children":['
           f'{",".join([f"[{_json_str(name)},{int(i)}]" for name, i in n.children])}]')
    if n.attributes:
        out += f',"attributes":{{{",".join([_json_str(a) + ":" + _tensor_json(e) for a, e in n.attributes.items()])}}}'
    if n.state is not None:
        out += ',"state":' + _dumps(n.state)
    if n.slots:
        out += ',"slots":' + _dumps([{"variable": v, "name": name, "slot": s} for v, name, s in n.slots])
    return out + "}"


def parse_v1(doc: Any, path: str, version: int) -> Index:
    """Validate a parsed version-1 document and build its :class:`Index`.

    Example:
        >>> parse_v1({"format": "ckptcore", "num_shards": 1, "shard_sizes": [0],
        ...           "nodes": [{"adapter": "a"}]}, "x.index", 1).nodes[0].adapter
        'a'
    """
    if not isinstance(doc, dict) or doc.get("format") != "ckptcore":
        raise _bad(path, "not a ckptcore index document")
    num_shards = _int(doc["num_shards"], "num_shards", path, 1, 1 << 16)
    sizes = doc["shard_sizes"]
    if not isinstance(sizes, list) or len(sizes) != num_shards:
        raise _bad(path, "shard_sizes does not match num_shards")
    sizes = [_int(s, "shard size", path) for s in sizes]
    raw_nodes = doc["nodes"]
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise _bad(path, "the object graph has no root node")
    n = len(raw_nodes)
    nodes: list[Node] = []
    seen_keys: set[str] = set()
    for i, rn in enumerate(raw_nodes):
        if type(rn) is not dict:
            raise _bad(path, f"node {i} is not an object")
        get = rn.get
        adapter, typ = get("adapter", ""), get("type", "")
        if type(adapter) is not str or type(typ) is not str:
            _str(adapter, f"node {i} adapter", path)
            _str(typ, f"node {i} type", path)
        children, slots = get("children", ()), get("slots", ())
        # most nodes (leaves) have neither children nor slots: they share one empty tuple, which keeps
        # tens of thousands of empty lists away from the garbage collector
        node = Node(adapter, typ, [] if children else (), {}, get("state"), [] if slots else ())  # type: ignore[arg-type]
        if type(children) is not list and children != ():
            raise _bad(path, f"node {i} children must be a list")
        names: Any = set() if children else None
        for c in children:
            if not isinstance(c, list) or len(c) != 2:
                raise _bad(path, f"node {i} has a malformed child reference")
            name, cid = c
            if type(name) is not str:
                _str(name, f"node {i} child name", path)
            if name in names:
                raise _bad(path, f"node {i} has two children named {name!r}")
            names.add(name)
            if type(cid) is not int or not 0 <= cid < n:
                _int(cid, f"node {i} child id", path, 0, n - 1)
            node.children.append((name, cid))
        attrs = get("attributes", ())
        if attrs != ():
            if type(attrs) is not dict:
                raise _bad(path, f"node {i} attributes must be an object")
            node_attrs = node.attributes
            for aname, e in attrs.items():
                if type(e) is not dict:
                    raise _bad(path, f"node {i} attribute {aname!r} is malformed")
                key = e["key"]
                if type(key) is not str:
                    _str(key, "tensor key", path)
                if key in seen_keys:
                    raise _bad(path, f"tensor key {key!r} appears twice")
                seen_keys.add(key)
                node_attrs[aname] = _parse_tensor(e, key, path, sizes)
        if type(slots) is not list and slots != ():
            raise _bad(path, f"node {i} slots must be a list")
        for s in slots:
            if not isinstance(s, dict):
                raise _bad(path, f"node {i} has a malformed slot")
            node.slots.append((_int(s["variable"], "slot variable", path, 0, n - 1),
                               _str(s["name"], "slot name", path),
                               _int(s["slot"], "slot node", path, 0, n - 1)))
        nodes.append(node)
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _bad(path, "metadata must be an object")
    return Index(nodes=nodes, num_shards=num_shards, shard_sizes=sizes, metadata=metadata, version=version)


def _parse_tensor(e: dict, key: str, path: str, sizes: list[int]) -> TensorEntry:
    # Fast path: a well-formed entry is checked without building any message; anything
    # unusual (or wrong) goes through _parse_tensor_checked, which names the problem.
    try:
        dtype_name, shape, shard, offset, nbytes, crc = (e["dtype"], e["shape"], e["shard"], e["offset"], e["nbytes"],
                                                         e["crc32c"])
    except KeyError:
        return _parse_tensor_checked(e, key, path, sizes)
    dt = FAST_DTYPES.get(dtype_name) if type(dtype_name) is str else None
    if (dt is not None and type(shape) is list and type(shard) is int and type(offset) is int and type(nbytes) is int
            and type(crc) is int and 0 <= shard < len(sizes) and 0 <= offset and 0 <= nbytes
            and 0 <= crc <= 0xFFFFFFFF and offset + nbytes <= sizes[shard]):
        shape = tuple(shape)
        if len(shape) == 1:  # the common case, without a generator
            d = shape[0]
            ok = type(d) is int and d > 0
        else:
            ok = len(shape) <= MAX_NDIM and all(type(d) is int and d > 0 for d in shape)
        if ok and math.prod(shape) * dt.itemsize == nbytes:
            return TensorEntry(key, dtype_name, shape, shard, offset, nbytes, crc)
    return _parse_tensor_checked(e, key, path, sizes)


def _parse_tensor_checked(e: dict, key: str, path: str, sizes: list[int]) -> TensorEntry:
    dtype_name = _str(e["dtype"], f"dtype of {key}", path)
    try:
        dt = dtype_from_name(dtype_name)
    except ValueError as err:
        raise CorruptCheckpointError(f"corrupt checkpoint index {path}: tensor {key!r}: {err}",
                                     path=path, key=key) from None
    shape_raw = e["shape"]
    if not isinstance(shape_raw, list) or len(shape_raw) > MAX_NDIM:
        raise CorruptCheckpointError(f"corrupt checkpoint index {path}: tensor {key!r} has an invalid shape",
                                     path=path, key=key)
    shape = tuple(_int(d, f"dimension of {key}", path) for d in shape_raw)
    shard = _int(e["shard"], f"shard of {key}", path, 0, len(sizes) - 1)
    offset = _int(e["offset"], f"offset of {key}", path)
    nbytes = _int(e["nbytes"], f"nbytes of {key}", path)
    crc = _int(e["crc32c"], f"crc32c of {key}", path, 0, 0xFFFFFFFF)
    if math.prod(d or 1 for d in shape) * max(dt.itemsize, 1) >= 1 << 62:
        raise CorruptCheckpointError(f"corrupt checkpoint index {path}: tensor {key!r} has an impossible shape {shape}",
                                     path=path, key=key)
    expected = math.prod(shape) * dt.itemsize
    if expected != nbytes:
        raise CorruptCheckpointError(
            f"corrupt checkpoint index {path}: tensor {key!r} has shape {shape} of {dtype_name} "
            f"({expected} bytes) but records {nbytes} bytes", path=path, key=key)
    if offset + nbytes > sizes[shard]:
        raise CorruptCheckpointError(
            f"corrupt checkpoint index {path}: tensor {key!r} extends past the end of its data file",
            path=path, key=key)
    return TensorEntry(key=key, dtype=dtype_name, shape=shape, shard=shard, offset=offset, nbytes=nbytes, crc32c=crc)
