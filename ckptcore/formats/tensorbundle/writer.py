"""Writing TensorBundle checkpoints that TensorFlow itself restores (``CheckpointOptions(format="tensorflow")``).

Layout, as TensorFlow's ``BundleWriter`` lays out a single-shard bundle: each tensor's
raw little-endian bytes, one after another with no padding, in the order of the object
graph (breadth-first, as TensorFlow orders its saveables), then the serialized
``TrackableObjectGraph`` as the scalar string tensor ``_CHECKPOINTABLE_OBJECT_GRAPH``.
The index is a table (:func:`.table.build`) of the header and one ``BundleEntryProto``
per key in key order, each with its masked CRC32C.

The commit protocol is ckptcore's: the data file is written and made durable first,
the index last and atomically; a failure leaves no index behind.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> opts = ck.CheckpointOptions(format="tensorflow")
    >>> p = ck.Checkpoint(w=ck.Variable(np.ones(2, np.float32))).write("memory://doc/tfw/c", options=opts)
    >>> ck.load_checkpoint(p).get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE").tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import numpy as np

from ...errors import CheckpointError
from .. import ckpt as fmt
from ..byname import _tf_name
from . import table as tbl
from .bundle import DT_STRING, DTYPE_NUMBERS, OBJECT_GRAPH_KEY
from .protos import message


def object_graph(plan) -> bytes:
    """The serialized ``TrackableObjectGraph`` of a save plan (ckptcore's graph in TensorFlow's message).

    ``has_checkpoint_values`` is set on every node as TensorFlow sets it: true where the
    node or a descendant holds a value (TensorFlow's restore skips subtrees marked false).
    """
    g = plan.graph
    names = getattr(plan, "full_names", {})
    keys = [e.key for e, _ in plan.tensors]
    n = len(g)
    has = [g.attr_start[i + 1] > g.attr_start[i] for i in range(n)]
    has_slots = {s for rows in g.slots.values() for _, _, s in rows}
    for s in has_slots:
        has[s] = True
    order = _bfs(g)
    for i in reversed(order):  # children before parents
        for _, c in g.children(i):
            if has[c]:
                has[i] = True
    proto = message("TrackableObjectGraph")()
    for i in range(n):
        node = proto.nodes.add()
        for name, c in g.children(i):
            node.children.add(node_id=c, local_name=name)
        full_name = _tf_name(names.get(i, ""))
        for t in g.attributes(i):
            node.attributes.add(name=g.attr_name[t], full_name=full_name, checkpoint_key=keys[t])
        for var, name, slot in g.slots.get(i, ()):
            node.slot_variables.add(original_variable_node_id=var, slot_name=name, slot_variable_node_id=slot)
        node.has_checkpoint_values.value = has[i]
    return proto.SerializeToString()


def _bfs(g) -> list[int]:
    seen, order = {0}, [0]
    k = 0
    while k < len(order):
        for _, c in g.children(order[k]):
            if c not in seen:
                seen.add(c)
                order.append(c)
        k += 1
    return order


def string_scalar(value: bytes) -> tuple[bytes, int]:
    """A scalar string tensor's bytes in a data file, and its (unmasked) CRC32C.

    Example:
        >>> data, crc = string_scalar(b"abc")
        >>> data[:1], data[5:]
        (b'\\x03', b'abc')
    """
    head = bytearray()
    tbl.put_varint(head, len(value))
    length_crc = fmt.crc32c(len(value).to_bytes(4, "little"))
    masked = tbl.mask(length_crc).to_bytes(4, "little")
    return bytes(head) + masked + value, fmt.crc32c(masked + value, length_crc)


def _entry_bytes(dtype: int, shape, offset: int, size: int, crc: int) -> bytes:
    e = message("BundleEntryProto")(dtype=dtype, offset=offset, size=size, crc32c=tbl.mask(crc))
    e.shape.SetInParent()  # TensorFlow always writes the shape, even a scalar's (empty) one
    for d in shape:
        e.shape.dim.add(size=int(d))
    return e.SerializeToString()


def encode_index(entries: list[tuple[str, bytes]]) -> bytes:
    """The ``.index`` bytes for ``(key, serialized BundleEntryProto)`` pairs (any order)."""
    header = message("BundleHeaderProto")(num_shards=1)
    header.version.producer = 1
    items = [(b"", header.SerializeToString())]
    items += sorted((k.encode("utf-8"), v) for k, v in entries)
    return tbl.build(items)


def check_plan(plan) -> None:
    """Refuse what TensorFlow's format cannot hold, naming it, instead of dropping it."""
    g = plan.graph
    if g.state:
        nid = min(g.state)
        raise CheckpointError(
            f"object {_path(g, nid)!r} ({g.type[nid]}) carries adapter state that a TensorFlow checkpoint cannot "
            "hold (TensorFlow stores tensors only); save it in ckptcore's format (the default)")
    for entry, _ in plan.tensors:
        if entry.dtype not in DTYPE_NUMBERS:
            raise CheckpointError(f"tensor {entry.key!r} has dtype {entry.dtype}, which TensorFlow checkpoints "
                                  "cannot hold; save it in ckptcore's format (the default)")


def _path(g, nid: int) -> str:
    parent: dict[int, tuple[int, str]] = {}
    for i in _bfs(g):
        for name, c in g.children(i):
            parent.setdefault(c, (i, name))
    names = []
    while nid in parent:
        nid, name = parent[nid]
        names.append(name)
    return "/".join(reversed(names)) or "(root)"


def write(storage, prefix: str, plan, progress=None) -> None:
    """Write ``plan`` as a single-shard TensorBundle at ``prefix``: data (made durable), then the index."""
    from ...saver import _commit_index, checkpoint_files

    check_plan(plan)
    graph_bytes, graph_crc = string_scalar(object_graph(plan))
    d = storage.dirname(prefix)
    if d:
        storage.makedirs(d)
    index_file = fmt.index_path(prefix)
    data = fmt.data_path(prefix, 0, 1)
    overwrite = storage.exists(index_file)
    if overwrite:
        storage.remove([index_file])
    entries: list[tuple[str, bytes]] = []
    writer = storage.open_writer(data)
    try:
        offset = 0
        for entry, arr in plan.tensors:
            buf = memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            crc = fmt.crc32c(buf)
            entry.offset, entry.crc32c = offset, crc
            if buf.nbytes:
                writer.write(buf)
            if progress is not None:
                progress(buf.nbytes)
            entries.append((entry.key, _entry_bytes(DTYPE_NUMBERS[entry.dtype], arr.shape, offset, buf.nbytes, crc)))
            offset += buf.nbytes
        writer.write(graph_bytes)
        entries.append((OBJECT_GRAPH_KEY, _entry_bytes(DT_STRING, (), offset, len(graph_bytes), graph_crc)))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    plan.num_shards, plan.shard_sizes = 1, [offset + len(graph_bytes)]
    _commit_index(storage, index_file, encode_index(entries), [data])
    if overwrite:
        try:
            storage.remove([f for f in checkpoint_files(storage, prefix) if f not in (index_file, data)])
        except Exception:
            pass
