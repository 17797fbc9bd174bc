"""The on-disk format (version 1). See ``docs/format.md`` for the full description.

A checkpoint at prefix ``P`` is two kinds of file:

* ``P.data-00000-of-00001``: tensor bytes, each starting at a 64-byte aligned
  offset, little-endian, C order; nothing else (no pickles, no headers);
* ``P.index``: a 32-byte header (magic ``CKPTIDX1``, format version, JSON
  length, CRC32C of the JSON) followed by UTF-8 JSON that holds the object
  graph, each object's adapter, and per tensor its key, dtype, shape, offset,
  length and CRC32C. It is written last: a checkpoint exists when its index does.

Everything read back is validated before use; nothing is unpickled or evaluated.

Example:
    >>> from ckptcore import format as fmt
    >>> fmt.index_path("/tmp/ckpt-1"), fmt.data_path("/tmp/ckpt-1", 0, 1)
    ('/tmp/ckpt-1.index', '/tmp/ckpt-1.data-00000-of-00001')
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import crc32c as _crc32c
import numpy as np

from .dtypes import SUPPORTED, dtype_from_name
from .errors import CorruptCheckpointError

FORMAT_VERSION = 1
MAGIC = b"CKPTIDX1"
_HEADER = struct.Struct("<8sIIQI4x")  # magic, version, flags, json length, json crc32c, pad -> 32 bytes
HEADER_SIZE = _HEADER.size
ALIGNMENT = 64
MAX_INDEX_BYTES = 1 << 31  # 2 GiB of JSON is far beyond any sane graph
MAX_NDIM = 64
INDEX_SUFFIX = ".index"
_FAST_DTYPES = {name: dtype_from_name(name) for name in SUPPORTED}  # stored name -> dtype, for the hot paths


def crc32c(buf, value: int = 0, release_gil: bool = False) -> int:
    """CRC32C (Castagnoli) of a bytes-like object, continuing from ``value``.

    The GIL is released for buffers of 32 KiB and more, or always with
    ``release_gil=True`` (for checksums on a helper thread while another thread runs).

    Example:
        >>> crc32c(b"123456789")
        3808858755
    """
    return _crc32c.crc32c(buf, value, 1 if release_gil else -1)


def index_path(prefix: str) -> str:
    """Path of the index file of the checkpoint at ``prefix``.

    Example:
        >>> index_path("ckpt-3")
        'ckpt-3.index'
    """
    return prefix + INDEX_SUFFIX


def data_path(prefix: str, shard: int, num_shards: int) -> str:
    """Path of data shard ``shard`` of ``num_shards``.

    Example:
        >>> data_path("ckpt-3", 0, 2)
        'ckpt-3.data-00000-of-00002'
    """
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def align(offset: int) -> int:
    """Round ``offset`` up to the tensor alignment.

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
        dt = _FAST_DTYPES.get(self.dtype)
        return dt if dt is not None else dtype_from_name(self.dtype)

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


@dataclass
class Index:
    """A parsed index: graph nodes plus data-file layout.

    Example:
        >>> Index(nodes=[Node()], num_shards=1, shard_sizes=[0]).num_shards
        1
    """

    nodes: list[Node]
    num_shards: int
    shard_sizes: list[int]
    metadata: dict = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        # The same bytes as json.dumps of {..., "nodes": [n.to_json() for n in nodes]} (compact, ASCII),
        # but the per-node and per-tensor records are formatted directly: 3x faster for many small arrays.
        head = _dumps({"format": "ckptcore", "version": self.version, "num_shards": self.num_shards,
                       "shard_sizes": self.shard_sizes, "metadata": self.metadata})
        body = f'{head[:-1]},"nodes":[{",".join(map(_node_json, self.nodes))}]}}'.encode("ascii")
        return _HEADER.pack(MAGIC, self.version, 0, len(body), crc32c(body)) + body

    def tensors(self):
        for node in self.nodes:
            yield from node.attributes.values()


_json_str = json.encoder.encode_basestring_ascii  # a string as a JSON literal, exactly as json.dumps writes it
_TENSOR_JSON = '{"key":%s,"dtype":%s,"shape":[%s],"shard":%d,"offset":%d,"nbytes":%d,"crc32c":%d}'


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _tensor_json(e: TensorEntry) -> str:
    return _TENSOR_JSON % (_json_str(e.key), _json_str(e.dtype), ",".join(["%d" % d for d in e.shape]),
                           e.shard, e.offset, e.nbytes, e.crc32c)


def _node_json(n: Node) -> str:
    """``_dumps(n.to_json())``, formatted directly."""
    out = (f'{{"adapter":{_json_str(n.adapter)},"type":{_json_str(n.type)},"children":['
           f'{",".join(["[%s,%d]" % (_json_str(name), i) for name, i in n.children])}]')
    if n.attributes:
        out += f',"attributes":{{{",".join([_json_str(a) + ":" + _tensor_json(e) for a, e in n.attributes.items()])}}}'
    if n.state is not None:
        out += ',"state":' + _dumps(n.state)
    if n.slots:
        out += ',"slots":' + _dumps([{"variable": v, "name": name, "slot": s} for v, name, s in n.slots])
    return out + "}"


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
    if version > FORMAT_VERSION or version < 1:
        raise _bad(path, f"format version {version} is not supported (this ckptcore reads up to {FORMAT_VERSION})")
    body = raw[HEADER_SIZE:]
    if length != len(body):
        raise _bad(path, f"header says {length} bytes of JSON but {len(body)} follow (truncated?)")
    if crc32c(body) != crc:
        raise _bad(path, "index checksum mismatch")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _bad(path, f"invalid JSON ({e})") from None
    try:
        return _parse_doc(doc, path, version)
    except CorruptCheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise _bad(path, f"malformed content ({type(e).__name__}: {e})") from None


def _int(v: Any, what: str, path: str, lo: int = 0, hi: int = 1 << 62) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(path, f"{what} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _str(v: Any, what: str, path: str) -> str:
    if not isinstance(v, str):
        raise _bad(path, f"{what} must be a string, got {type(v).__name__}")
    return v


def _parse_doc(doc: Any, path: str, version: int) -> Index:
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
        node = Node(adapter, typ, [] if children else (), {}, get("state"), [] if slots else ())
        if type(children) is not list and children != ():
            raise _bad(path, f"node {i} children must be a list")
        names = set() if children else None
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
    dt = _FAST_DTYPES.get(dtype_name) if type(dtype_name) is str else None
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
