"""TensorBundle checkpoints (TensorFlow's ``<prefix>.index`` + ``<prefix>.data-NNNNN-of-NNNNN``), read.

The index is a table (:mod:`.table`) whose entry ``""`` is a ``BundleHeaderProto`` and
every other entry maps a tensor key to a ``BundleEntryProto`` (dtype, shape, shard,
offset, size, masked CRC32C). Numeric tensors are their raw little-endian bytes in a data
file. A TF2 object-based checkpoint also holds the scalar string tensor
``_CHECKPOINTABLE_OBJECT_GRAPH``: a serialized ``TrackableObjectGraph`` naming, per
object, its children, its attributes' keys and its optimizer slots. It becomes the
object graph of a ckptcore :class:`~ckptcore.formats.ckpt.Index`, so restore matches a
TensorFlow checkpoint exactly as it matches its own. A checkpoint without one (written by
``tf.compat.v1.train.Saver``) gets a graph built from its keys, ``dense/kernel`` being
the object ``dense`` with child ``kernel``: live objects are then matched by path (and
``ck.Variable`` objects by name, see :mod:`ckptcore.formats.byname`).

Example:
    >>> from ckptcore.formats.tensorbundle import bundle
    >>> bundle.TF_DTYPES[1], bundle.TF_DTYPES[14]
    ('float32', 'bfloat16')
"""

from __future__ import annotations

import numpy as np

from ...dtypes import dtype_from_name
from ...errors import CorruptCheckpointError
from .. import ckpt as fmt
from ..byname import nodes_from_keys
from ..pieces import Pieces
from . import table as tbl
from .adapter_state import adopt_states
from .keras3 import add_keras3_names
from .protos import message
from .slices import check_tiling, decode_slice_key, encode_slice_key, slice_boxes
from .strings import read_strings

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
DT_STRING = 7
MAX_GRAPH_BYTES = 1 << 30
MAX_SHARDS = 1 << 16
MAX_DATA_BYTES = 1 << 56  # offsets and sizes past this are no file anyone wrote

# TensorFlow's DataType numbers (types.proto) -> ckptcore's stored dtype names
TF_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 8: "complex64", 9: "int64",
             10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128", 19: "float16", 22: "uint32", 23: "uint64",
             24: "float8_e5m2", 25: "float8_e4m3fn", 26: "float8_e4m3fnuz", 27: "float8_e4m3b11fnuz",
             28: "float8_e5m2fnuz", 29: "int4", 30: "uint4", 31: "int2", 32: "uint2"}
DTYPE_NUMBERS = {v: k for k, v in TF_DTYPES.items()}
# TensorFlow's quantized types, read as the integers they are stored as (their scale lives elsewhere):
# reading only, so DTYPE_NUMBERS never maps int8 back to qint8
QUANTIZED = {11: "int8", 12: "uint8", 13: "int32", 15: "int16", 16: "uint16"}
_TF_NAMES = {7: "string", 11: "qint8", 12: "quint8", 13: "qint32", 15: "qint16", 16: "quint16", 20: "resource",
             21: "variant"}


def _bad(path: str, msg: str, key: str | None = None) -> CorruptCheckpointError:
    where = f"tensor {key!r}: " if key is not None else ""
    return CorruptCheckpointError(f"corrupt TensorFlow checkpoint index {path}: {where}{msg}", path=path, key=key)


def _parse(name: str, raw: bytes, path: str, key: str | None):
    try:
        return message(name).FromString(raw)
    except Exception as e:  # google.protobuf.message.DecodeError, or recursion on a hostile nesting
        raise _bad(path, f"its {name} does not parse ({type(e).__name__})", key) from None


def key_text(kb: bytes) -> str:
    """A table key as text: UTF-8, else Latin-1 (the binary slice keys of partitioned variables).

    Example:
        >>> key_text(b"dense/kernel"), key_text(b"\\xff")
        ('dense/kernel', '\xff')
    """
    try:
        return kb.decode("utf-8")
    except UnicodeDecodeError:
        return kb.decode("latin-1")


def parse_entries(raw, path: str):
    """The header and ``{key: BundleEntryProto}`` of a TensorBundle index file's bytes, validated.

    Keys are :func:`key_text` of the stored bytes.
    """
    header, items = _raw_entries(raw, path)
    return header, {key_text(kb): e for kb, e in items.items()}


def _raw_entries(raw, path: str):
    items = tbl.read_table(raw, path)
    if not items or items[0][0] != b"":
        raise _bad(path, "the header entry is missing")
    header = _parse("BundleHeaderProto", items[0][1], path, None)
    if not 1 <= header.num_shards <= MAX_SHARDS:
        raise _bad(path, f"num_shards {header.num_shards} is out of range")
    if header.endianness != 0:
        raise CorruptCheckpointError(f"TensorFlow checkpoint {path} was written on a big-endian machine; ckptcore "
                                     "reads little-endian checkpoints only", path=path)
    if header.version.min_consumer > 1:
        raise CorruptCheckpointError(
            f"TensorFlow checkpoint {path} needs a reader of bundle version {header.version.min_consumer} or newer "
            "(ckptcore reads version 1, as TensorFlow 2 writes)", path=path)
    entries = {}
    texts: set[str] = set()
    for kb, vb in items[1:]:
        key = key_text(kb)
        if key in texts:
            raise _bad(path, "two keys read as the same text", key)
        texts.add(key)
        entries[bytes(kb)] = _parse("BundleEntryProto", vb, path, key)
    return header, entries


def _shape(entry, path: str, key: str) -> tuple[int, ...]:
    if entry.shape.unknown_rank:
        raise _bad(path, "the shape has unknown rank", key)
    dims = tuple(int(d.size) for d in entry.shape.dim)
    if len(dims) > fmt.MAX_NDIM or any(d < 0 for d in dims):
        raise _bad(path, f"impossible shape {dims}", key)
    return dims


def _position(key: str, e, num_shards: int, path: str) -> None:
    if not 0 <= e.shard_id < num_shards or e.offset < 0 or e.size < 0 or e.offset + e.size > MAX_DATA_BYTES:
        raise _bad(path, f"shard {e.shard_id} / offset {e.offset} / size {e.size} out of range", key)


def _tensor_entry(key: str, e, num_shards: int, path: str) -> fmt.TensorEntry:
    name = TF_DTYPES.get(e.dtype) or QUANTIZED.get(e.dtype)
    if name is None:
        what = _TF_NAMES.get(e.dtype, f"number {e.dtype}")
        raise CorruptCheckpointError(
            f"TensorFlow checkpoint {path}: tensor {key!r} has dtype {what}, which ckptcore cannot read into an "
            "array", path=path, key=key)
    shape = _shape(e, path, key)
    nbytes = _nbytes(name, shape, path, key)
    if e.size != nbytes:
        raise _bad(path, f"{e.size} bytes recorded for {nbytes} bytes of {name}{list(shape)}", key)
    _position(key, e, num_shards, path)
    return fmt.TensorEntry(key, name, shape, int(e.shard_id), int(e.offset), nbytes, tbl.unmask(e.crc32c))


def _nbytes(name: str, shape: tuple[int, ...], path: str, key: str) -> int:
    itemsize = dtype_from_name(name).itemsize
    bits = sum(np.log2(max(d, 1)) for d in shape) + np.log2(itemsize)
    if bits >= 61.9:
        raise _bad(path, f"impossible shape {shape}", key)
    return int(np.prod(shape, dtype=np.int64)) * itemsize if shape else itemsize


def _string_entry(key: str, e, num_shards: int, path: str) -> fmt.TensorEntry:
    """A ``DT_STRING`` entry as a table row of dtype ``"string"`` (``nbytes``: its stored size)."""
    shape = _shape(e, path, key)
    n = 1
    for d in shape:
        n *= d
    if n > e.size:  # each element has at least one length byte
        raise _bad(path, f"{e.size} bytes cannot hold {n} strings", key)
    _position(key, e, num_shards, path)
    return fmt.TensorEntry(key, fmt.STRING_DTYPE, shape, int(e.shard_id), int(e.offset), int(e.size),
                           tbl.unmask(e.crc32c))


def read_string_row(reader, row: int, verify: bool = True) -> np.ndarray:
    """The value of string row ``row`` of a TensorFlow index's table: an object array of ``bytes``, checksum verified.

    (What ``Index.decoded_rows`` maps string rows to; ``verify`` is ignored: decoding checks everything.)
    """
    t = reader.index.table
    return read_strings(reader.storage, reader.data_file(t.shard[row]), t.offset[row], t.nbytes[row], t.shape[row],
                        t.crc32c[row], reader.index_file, t.key[row])


def read_string_scalar(storage, data_file: str, entry, path: str, key: str, limit: int = MAX_GRAPH_BYTES) -> bytes:
    """The one element of a scalar string tensor stored at ``entry`` in ``data_file``, its checksum verified.

    On disk: the element's length as a varint, the masked CRC32C of that length (as a
    little-endian ``uint32``), then the bytes; the entry's CRC32C covers the length (as
    ``uint32``), the length checksum and the bytes (see :mod:`.strings`).
    """
    if entry.dtype != DT_STRING or _shape(entry, path, key) != ():
        raise _bad(path, "expected a scalar string", key)
    if not 0 < entry.size <= limit:
        raise _bad(path, f"{entry.size} bytes is out of range for this tensor", key)
    try:
        size = storage.size(data_file)
    except (FileNotFoundError, OSError):
        raise CorruptCheckpointError(f"TensorFlow checkpoint {path} is missing its data file {data_file}",
                                     path=data_file) from None
    if entry.offset + entry.size > size:
        raise CorruptCheckpointError(f"data file {data_file} is truncated: tensor {key!r} is incomplete",
                                     path=data_file, key=key)
    return bytes(read_strings(storage, data_file, int(entry.offset), int(entry.size), (), tbl.unmask(entry.crc32c),
                              path, key)[()])


def _sliced_entry(kb: bytes, e, entries: dict, num_shards: int, path: str, used: set[bytes]):
    """The row and pieces of the partitioned variable stored under ``kb``: ``(TensorEntry, [(shard, offset,
    nbytes, crc, start, extent)])``; its slice entries' keys are added to ``used``."""
    key = key_text(kb)
    name = TF_DTYPES.get(e.dtype) or QUANTIZED.get(e.dtype)
    if name is None:
        raise CorruptCheckpointError(
            f"TensorFlow checkpoint {path}: tensor {key!r} is a partitioned variable of dtype "
            f"{_TF_NAMES.get(e.dtype, e.dtype)}, which ckptcore cannot assemble", path=path, key=key)
    shape = _shape(e, path, key)
    nbytes = _nbytes(name, shape, path, key)
    boxes = slice_boxes(e, shape, path, key)
    check_tiling([(b[0], b[1]) for b in boxes], shape, path, key)
    pieces = []
    for i, (start, extent, klen) in enumerate(boxes):
        sk = encode_slice_key(kb, start, klen)
        se = entries.get(sk)
        if se is None:
            raise _bad(path, f"slice {i} (start {list(start)}, extent {list(extent)}) has no entry", key)
        if sk in used:
            raise _bad(path, f"slice {i} is listed twice", key)
        if len(se.slices) or se.dtype != e.dtype or _shape(se, path, key) != extent:
            raise _bad(path, f"the entry of slice {i} does not match it (dtype, shape or slices)", key)
        t = _tensor_entry(key, se, num_shards, path)
        used.add(sk)
        pieces.append((t.shard, t.offset, t.nbytes, t.crc32c, start, extent))
    crc = fmt.crc32c(b"".join(p[3].to_bytes(4, "little") for p in pieces))  # changes with any slice (cli diff)
    return fmt.TensorEntry(key, name, shape, 0, 0, nbytes, crc), pieces


def decode(raw, path: str, storage, prefix: str) -> fmt.Index:
    """A ckptcore :class:`~ckptcore.formats.ckpt.Index` for the TensorBundle index bytes ``raw``.

    Numeric tensors become rows of the index's table (their masked checksums unmasked,
    so the reader verifies them as its own); partitioned variables become rows stored in
    pieces (their slices); string tensors become rows the format decodes itself
    (``Index.decoded_rows``). The object graph, or for a TF1 checkpoint a graph built from
    the keys, becomes its graph; the object graph's own tensor is a last row that belongs to
    no object (listed and readable by key, as in TensorFlow, never restored).
    """
    header, entries = _raw_entries(raw, path)
    num_shards = int(header.num_shards)
    graph_entry = entries.get(OBJECT_GRAPH_KEY.encode())
    tensors: dict[str, fmt.TensorEntry] = {}
    pieces: dict[str, list] = {}
    slice_keys: set[bytes] = set()
    unsupported: list[str] = []
    for kb, e in entries.items():
        if len(e.slices):
            key = key_text(kb)
            if e.dtype in (DT_STRING, 20, 21):
                unsupported.append(key)  # (TensorFlow's reader assembles no partitioned strings either)
                continue
            tensors[key], pieces[key] = _sliced_entry(kb, e, entries, num_shards, path, slice_keys)
    for kb, e in entries.items():
        key = key_text(kb)
        if key in tensors or kb in slice_keys or key == OBJECT_GRAPH_KEY or key in unsupported:
            continue
        if kb.startswith(b"\x00") and decode_slice_key(kb) is not None:
            raise _bad(path, "a slice entry no partitioned variable lists", key)
        if e.dtype == DT_STRING:
            tensors[key] = _string_entry(key, e, num_shards, path)
        elif e.dtype in (20, 21):  # resources, variants: not values ckptcore holds
            unsupported.append(key)
        else:
            tensors[key] = _tensor_entry(key, e, num_shards, path)
    graph_row = None
    if graph_entry is not None:
        if not 0 <= graph_entry.shard_id < num_shards:
            raise _bad(path, "shard out of range", OBJECT_GRAPH_KEY)
        data_file = fmt.data_path(prefix, graph_entry.shard_id, num_shards)
        proto = _parse("TrackableObjectGraph",
                       read_string_scalar(storage, data_file, graph_entry, path, OBJECT_GRAPH_KEY),
                       path, OBJECT_GRAPH_KEY)
        nodes = graph_nodes(proto, tensors, path)
        adopt_states(nodes, entries, storage, prefix, num_shards, path)  # ckptcore's adapter state (JSON)
        graph_row = _string_entry(OBJECT_GRAPH_KEY, graph_entry, num_shards, path)
        kind = "tensorflow"
    else:
        nodes = nodes_from_keys(tensors, "/")
        kind = "tensorflow-v1"
    rows = [e for n in nodes for e in n.attributes.values()]
    owner = [i for i, n in enumerate(nodes) for _ in n.attributes]
    if graph_row is not None:  # a row no node's attributes reach; node 0 (the root, always matched) holds it
        rows.append(graph_row)
        owner.append(0)
    table = fmt.TensorTable.from_entries(rows, owner)
    sizes = [0] * num_shards
    for t in rows:
        if t.key not in pieces:
            sizes[t.shard] = max(sizes[t.shard], t.offset + t.nbytes)
    for ps in pieces.values():
        for shard, offset, n, *_ in ps:
            sizes[shard] = max(sizes[shard], offset + n)
    index = fmt.Index(num_shards=num_shards, shard_sizes=sizes, graph=fmt.Graph.from_nodes(nodes), table=table,
                      metadata={"format": kind, "flat": graph_entry is None, "unsupported_keys": sorted(unsupported)})
    row_of = {t.key: r for r, t in enumerate(rows)}
    if pieces:
        cols: list[list] = [[], [], [], [], [], [], []]
        for key, ps in pieces.items():
            for p in ps:
                for col, v in zip(cols, (row_of[key], *p)):
                    col.append(v)
        index.pieces = Pieces(*cols)
    strings = {r: read_string_row for r, t in enumerate(rows) if t.dtype == fmt.STRING_DTYPE}
    if strings:
        index.decoded_rows = strings
    return index


def graph_nodes(proto, tensors: dict[str, fmt.TensorEntry], path: str) -> list[fmt.Node]:
    """ckptcore nodes for a ``TrackableObjectGraph``; keys no attribute names become orphan nodes."""
    n = len(proto.nodes)
    if n == 0:
        raise _bad(path, "the object graph has no root", OBJECT_GRAPH_KEY)
    nodes = []
    used: set[str] = set()
    full_names: dict[int, str] = {}
    for i, obj in enumerate(proto.nodes):
        children = []
        names = set()
        for ref in obj.children:
            if not 0 <= ref.node_id < n:
                raise _bad(path, f"node {i} has a child {ref.node_id} outside the graph", OBJECT_GRAPH_KEY)
            if ref.local_name in names:
                continue  # TF lists an edge once; a repeated name adds nothing to match
            names.add(ref.local_name)
            children.append((ref.local_name, int(ref.node_id)))
        attrs = {}
        for a in obj.attributes:
            t = tensors.get(a.checkpoint_key)
            if t is None or a.name in attrs or a.checkpoint_key in used:
                continue  # a value TF saves outside the bundle (or a string): nothing to restore here
            used.add(a.checkpoint_key)
            attrs[a.name] = t
        slots = []
        for s in obj.slot_variables:
            if not (0 <= s.original_variable_node_id < n and 0 <= s.slot_variable_node_id < n):
                raise _bad(path, f"node {i} has a slot variable outside the graph", OBJECT_GRAPH_KEY)
            slots.append((int(s.original_variable_node_id), s.slot_name, int(s.slot_variable_node_id)))
        nodes.append(fmt.Node(adapter="", type="", children=children, attributes=attrs, slots=slots))
        if "VARIABLE_VALUE" in attrs:
            full_names[i] = next(a.full_name for a in obj.attributes if a.name == "VARIABLE_VALUE")
    add_keras3_names(nodes, full_names)  # Keras 3 objects as TF tracks them: also under ckptcore's Keras names
    for key in sorted(set(tensors) - used):  # readable by key (load_checkpoint), reported as unused by restore
        attr = key.rsplit("/.ATTRIBUTES/", 1)[1] if "/.ATTRIBUTES/" in key else "VARIABLE_VALUE"
        nodes.append(fmt.Node(attributes={attr: tensors[key]}))
    return nodes
