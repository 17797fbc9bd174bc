"""Writing TensorBundle checkpoints that TensorFlow itself restores (``CheckpointOptions(format="tensorflow")``).

Layout, as TensorFlow's ``BundleWriter`` lays out a single-shard bundle: each tensor's
raw little-endian bytes, one after another with no padding, in the order they are added
(for a save: the order of the object graph, breadth-first, as TensorFlow orders its
saveables), then the serialized ``TrackableObjectGraph`` as the scalar string tensor
``_CHECKPOINTABLE_OBJECT_GRAPH``. The index is a table (:func:`.table.build`) of the
header and one ``BundleEntryProto`` per key in key order, each with its masked CRC32C.

:class:`BundleWriter` is the streaming entry: tensors are added one at a time (an array,
bytes, a function returning either, or an iterable of byte chunks), so memory is bounded
by the largest tensor (or chunk), not the checkpoint. The commit protocol is ckptcore's:
the data file is written and made durable first, the index last and atomically; a
failure leaves no index behind.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> opts = ck.CheckpointOptions(format="tensorflow")
    >>> p = ck.Checkpoint(w=ck.Variable(np.ones(2, np.float32))).write("memory://doc/tfw/c", options=opts)
    >>> ck.load_checkpoint(p).get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE").tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ...errors import CheckpointError
from .. import ckpt as fmt
from ..byname import _tf_name
from . import table as tbl
from .adapter_state import STATE_ATTRIBUTE, encode_state, state_key
from .bundle import DT_STRING, DTYPE_NUMBERS, OBJECT_GRAPH_KEY
from .protos import message

__all__ = ["BundleWriter", "object_graph", "string_tensor", "encode_index", "write"]

STRING = "string"  # the dtype name BundleWriter.add takes for TensorFlow's DT_STRING


def reachable(g) -> list[int]:
    """Node ids reachable from the root through children and slot references, breadth-first."""
    seen, order = {0}, [0]
    k = 0
    while k < len(order):
        i = order[k]
        nxt = [c for _, c in g.children(i)]
        for var, _, slot in g.slots.get(i, ()):
            nxt += [var, slot]
        for c in nxt:
            if c not in seen:
                seen.add(c)
                order.append(c)
        k += 1
    return order


def object_graph(graph, keys: Sequence[str], full_names: dict[int, str] | None = None) -> bytes:
    """The serialized ``TrackableObjectGraph`` of a ckptcore graph (tensor ``t`` of ``graph`` has key ``keys[t]``).

    ``has_checkpoint_values`` is set on every node as TensorFlow sets it: true where the
    node or a descendant holds a value (TensorFlow's restore skips subtrees marked false).
    A node's adapter state (``graph.state``) is one more attribute, ``CKPTCORE_STATE``
    (see :mod:`.adapter_state`). Nodes not reachable from the root (keys a TensorFlow
    graph did not name) are left out of the graph; their tensors stay readable by key.
    """
    g = graph
    names = full_names or {}
    order = reachable(g)
    new_id = {old: new for new, old in enumerate(sorted(order))}
    n = len(g)
    has = [g.attr_start[i + 1] > g.attr_start[i] or i in g.state for i in range(n)]
    for rows in g.slots.values():
        for _, _, s in rows:
            has[s] = True
    for i in reversed(order):  # children before parents
        for _, c in g.children(i):
            if has[c]:
                has[i] = True
    paths = _paths(g) if g.state else {}
    proto = message("TrackableObjectGraph")()
    for i in sorted(order):
        node = proto.nodes.add()
        for name, c in g.children(i):
            node.children.add(node_id=new_id[c], local_name=name)
        full_name = _tf_name(names.get(i, ""))
        for t in g.attributes(i):
            node.attributes.add(name=g.attr_name[t], full_name=full_name, checkpoint_key=keys[t])
        if i in g.state:
            node.attributes.add(name=STATE_ATTRIBUTE, full_name=full_name, checkpoint_key=state_key(paths[i]))
        for var, name, slot in g.slots.get(i, ()):
            node.slot_variables.add(original_variable_node_id=new_id[var], slot_name=name,
                                    slot_variable_node_id=new_id[slot])
        node.has_checkpoint_values.value = has[i]
    return proto.SerializeToString()


def _paths(g) -> dict[int, tuple[str, ...]]:
    """Each reachable node's shortest path of edge names (the path its keys are built from)."""
    out: dict[int, tuple[str, ...]] = {0: ()}
    for i in reachable(g):
        for name, c in g.children(i):
            if c not in out and i in out:
                out[c] = out[i] + (name,)
    return out


def _path(g, nid: int) -> str:
    return "/".join(_paths(g).get(nid, ())) or "(root)"


def string_tensor(elements: Iterable[bytes]) -> tuple[bytes, int]:
    """A string tensor's bytes in a data file, and its (unmasked) CRC32C, as TensorFlow lays them out.

    All lengths as varints, the masked CRC32C of the lengths (each as a little-endian
    ``uint32``, or ``uint64`` past 4 GiB), then every element's bytes. The CRC32C covers
    the lengths (as integers), the length checksum and the bytes.

    Example:
        >>> data, crc = string_tensor([b"abc"])
        >>> data[:1], data[5:]
        (b'\\x03', b'abc')
    """
    elems = [bytes(e) for e in elements]
    head = bytearray()
    crc = 0
    for e in elems:
        tbl.put_varint(head, len(e))
        width = 4 if len(e) <= 0xFFFFFFFF else 8
        crc = fmt.crc32c(len(e).to_bytes(width, "little"), crc)
    masked = tbl.mask(crc).to_bytes(4, "little")
    crc = fmt.crc32c(masked, crc)
    for e in elems:
        crc = fmt.crc32c(e, crc)
    return bytes(head) + masked + b"".join(elems), crc


def string_scalar(value: bytes) -> tuple[bytes, int]:
    """A scalar string tensor's bytes and (unmasked) CRC32C (:func:`string_tensor` of one element).

    Example:
        >>> string_scalar(b"abc") == string_tensor([b"abc"])
        True
    """
    return string_tensor([value])


def _entry_bytes(dtype: int, shape, offset: int, size: int, crc: int, shard: int = 0) -> bytes:
    e = message("BundleEntryProto")(dtype=dtype, shard_id=shard, offset=offset, size=size, crc32c=tbl.mask(crc))
    e.shape.SetInParent()  # TensorFlow always writes the shape, even a scalar's (empty) one
    for d in shape:
        e.shape.dim.add(size=int(d))
    return e.SerializeToString()


def entry_bytes(row: Sequence) -> bytes:
    """A serialized ``BundleEntryProto`` from ``[dtype number, shape, shard, offset, size, crc32c]`` (JSON-ready)."""
    number, shape, shard, offset, size, crc = row
    return _entry_bytes(int(number), shape, int(offset), int(size), int(crc), int(shard))


def encode_index(entries: list[tuple[str | bytes, bytes]], num_shards: int = 1) -> bytes:
    """The ``.index`` bytes for ``(key, serialized BundleEntryProto)`` pairs (any order; slice keys are bytes)."""
    header = message("BundleHeaderProto")(num_shards=num_shards)
    header.version.producer = 1
    items = [(b"", header.SerializeToString())]
    items += sorted((k.encode("utf-8") if isinstance(k, str) else k, v) for k, v in entries)
    return tbl.build(items)


def sliced_entries(slices: dict[str, dict]) -> list[tuple[str | bytes, bytes]]:
    """Index entries of partitioned tensors: per key a full entry listing its slices, and one entry per slice.

    ``slices[key]`` is ``{"dtype": number, "shape": [...], "boxes": [[start, extent, shard, offset, size,
    crc32c], ...]}`` (every worker's boxes of a multi-worker save, gathered).
    """
    from .slices import encode_slice_key

    out: list[tuple[str | bytes, bytes]] = []
    for key, rec in slices.items():
        number, shape = int(rec["dtype"]), rec["shape"]
        full = message("BundleEntryProto")(dtype=number)
        full.shape.SetInParent()
        for d in shape:
            full.shape.dim.add(size=int(d))
        for start, extent, shard, offset, size, crc in sorted(rec["boxes"]):
            sl = full.slices.add()
            for s, n in zip(start, extent):
                sl.extent.add(start=int(s), length=int(n))
            out.append((encode_slice_key(key, start, extent), entry_bytes([number, extent, shard, offset, size, crc])))
        out.append((key, full.SerializeToString()))
    return out


def _elements(value: Any, key: str, n: int) -> list[bytes]:
    """The ``n`` elements of a string tensor given as a numpy ``S``/object array, bytes, or a list."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        flat: list = [bytes(value)]
    else:
        flat = list(np.asarray(value, dtype=object).reshape(-1))
    out = []
    for e in flat:
        if isinstance(e, str):
            e = e.encode("utf-8")
        if not isinstance(e, (bytes, bytearray, memoryview, np.bytes_)):
            raise CheckpointError(f"tensor {key!r}: a string tensor's elements must be bytes or str, got "
                                  f"{type(e).__name__}")
        out.append(bytes(e))
    if len(out) != n:
        raise CheckpointError(f"tensor {key!r}: {len(out)} string elements for a shape of {n} elements")
    return out


class BundleWriter:
    """Write one TensorBundle checkpoint at ``prefix``, one tensor at a time.

    Call order: :meth:`add` for each tensor (any order; the index lists keys sorted,
    as TensorFlow's does), then :meth:`commit` with the serialized object graph (or
    None for a TF1-style checkpoint of name keys), which makes the data file durable
    and then writes the index atomically: the commit point. :meth:`abort` (or leaving a
    ``with`` block by an exception) removes what was written; an existing checkpoint at
    ``prefix`` is uncommitted (its index removed) when the writer opens.

    ``add`` takes the value as a numpy array, a bytes-like object, a function returning
    either (called once, when the tensor is written), or an iterable of byte chunks; so
    a conversion holds one tensor (or one chunk) in memory at a time.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> from ckptcore.storage import open_storage
        >>> st, p = open_storage("memory://doc/tfw/stream/ckpt")
        >>> with BundleWriter(st, p) as w:
        ...     offset, crc = w.add("dense/kernel", "float32", (2,), lambda: np.arange(2, dtype=np.float32))
        ...     _ = w.add("names", "string", (2,), [b"a", b"bc"])
        ...     size = w.commit()
        >>> ck.load_checkpoint("memory://doc/tfw/stream/ckpt").get_tensor("dense/kernel").tolist()
        [0.0, 1.0]
    """

    def __init__(self, storage, prefix: str, progress: Callable[[int], Any] | None = None, *,
                 shard: int = 0, num_shards: int = 1):
        from ...save.write import checkpoint_files

        self._storage, self._prefix, self._progress = storage, prefix, progress
        self._shard = shard
        d = storage.dirname(prefix)
        if d:
            storage.makedirs(d)
        self.index_file = fmt.index_path(prefix)
        self.data_file = fmt.data_path(prefix, shard, num_shards)
        self._stale: list[str] = []
        if num_shards == 1 and storage.exists(self.index_file):
            # Overwriting (write() to the same path): uncommit the old checkpoint first, so its index never
            # describes the new data; its other data files go once the new one is committed.
            storage.remove([self.index_file])
            self._stale = [f for f in checkpoint_files(storage, prefix) if f not in (self.index_file, self.data_file)]
        self._entries: dict[str, list] = {}  # key -> [dtype number, shape, shard, offset, size, crc32c]
        self._slices: dict[str, dict] = {}  # key -> {"dtype", "shape", "boxes": [[start, extent, shard, ...]]}
        self._offset = 0
        self._writer = storage.open_writer(self.data_file)
        self._done = False

    @property
    def size(self) -> int:
        """Bytes written to the data file so far."""
        return self._offset

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._done:
            self.abort()

    def _check_key(self, key: str) -> None:
        if self._done:
            raise CheckpointError(f"the TensorBundle writer of {self._prefix} is closed")
        if not isinstance(key, str) or not key:
            raise CheckpointError(f"a TensorBundle key must be a non-empty string, got {key!r}")
        if key in self._entries or key in self._slices or key == OBJECT_GRAPH_KEY:
            raise CheckpointError(f"tensor {key!r} is added twice to {self._prefix} (or is the name TensorFlow "
                                  "reserves for the object graph)")

    def add(self, key: str, dtype: str, shape: Sequence[int], data: Any) -> tuple[int, int]:
        """Append tensor ``key`` (ckptcore dtype name, or ``"string"``) to the data file.

        The byte count must match the dtype and shape; the CRC32C is computed as it is
        written. Returns the tensor's offset in the data file and its (unmasked) CRC32C.
        """
        self._check_key(key)
        shape = tuple(int(d) for d in shape)
        number, offset, size, crc = self._write(key, dtype, shape, data)
        self._entries[key] = [number, list(shape), self._shard, offset, size, crc]
        return offset, crc

    def add_slice(self, key: str, dtype: str, shape: Sequence[int], start: Sequence[int], extent: Sequence[int],
                  data: Any) -> None:
        """Append one slice (box ``start``/``extent``) of tensor ``key`` of global ``shape``.

        The index then lists ``key`` as a partitioned variable, TensorFlow's way: a full entry
        (dtype, shape, the ``TensorSliceProto`` of every slice, no data) and one entry per
        slice under TensorFlow's slice key (``EncodeTensorNameSlice``). The slices of one
        key must tile it; a multi-worker save gathers every worker's slices into one index.
        """
        if self._done:
            raise CheckpointError(f"the TensorBundle writer of {self._prefix} is closed")
        if key in self._entries or key == OBJECT_GRAPH_KEY:
            raise CheckpointError(f"tensor {key!r} is added twice to {self._prefix}")
        shape, start, extent = (tuple(int(d) for d in x) for x in (shape, start, extent))
        if len(start) != len(shape) or len(extent) != len(shape) or any(
                s < 0 or n < 1 or s + n > d for s, n, d in zip(start, extent, shape)):
            raise CheckpointError(f"tensor {key!r}: slice at {list(start)} of {list(extent)} is not inside its shape "
                                  f"{list(shape)}")
        if dtype == STRING:
            raise CheckpointError(f"tensor {key!r}: TensorFlow partitions no string tensors")
        number, offset, size, crc = self._write(key, dtype, extent, data)
        rec = self._slices.setdefault(key, {"dtype": number, "shape": list(shape), "boxes": []})
        if rec["dtype"] != number or rec["shape"] != list(shape):
            raise CheckpointError(f"tensor {key!r}: slices of different dtypes or shapes")
        rec["boxes"].append([list(start), list(extent), self._shard, offset, size, crc])

    def _write(self, key: str, dtype: str, shape: tuple, data: Any) -> tuple[int, int, int, int]:
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if callable(data):
            data = data()
        if dtype == STRING:
            buf, crc = string_tensor(_elements(data, key, count))
            return (DT_STRING, *self._put(key, shape, [buf], len(buf), crc))
        number = DTYPE_NUMBERS.get(dtype)
        if number is None:
            raise CheckpointError(f"tensor {key!r} has dtype {dtype}, which TensorFlow checkpoints cannot hold; "
                                  "save it in ckptcore's format (the default)")
        from ...dtypes import dtype_from_name

        want = count * dtype_from_name(dtype).itemsize
        if isinstance(data, np.ndarray):
            arr = data if data.flags.c_contiguous else data.copy(order="C")
            chunks: Iterable = [memoryview(arr.reshape(-1).view(np.uint8))]  # type: ignore[arg-type]
        elif isinstance(data, (bytes, bytearray, memoryview)):
            chunks = [memoryview(data).cast("B")]
        else:
            chunks = data  # an iterable of byte chunks
        return (number, *self._put(key, shape, chunks, want, None))

    def _put(self, key: str, shape: tuple, chunks: Iterable, want: int, crc: int | None) -> tuple[int, int, int]:
        written, running = 0, 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B") if not isinstance(chunk, memoryview) else chunk
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            written += view.nbytes
            if written > want:
                break
            if crc is None:
                running = fmt.crc32c(view, running)
            if view.nbytes:
                self._writer.write(view)
            if self._progress is not None:
                self._progress(view.nbytes)
        if written != want:
            raise CheckpointError(f"tensor {key!r}: {written} bytes given for a shape of {list(shape)} "
                                  f"({want} bytes)")
        crc = running if crc is None else crc
        offset = self._offset
        self._offset += want
        return offset, want, crc

    def commit_data(self, graph: bytes | None = None) -> dict[str, list]:
        """Write the object graph (if any) and make the data file durable; no index.

        Returns the entries, ``{key: [dtype number, shape, shard, offset, size, crc32c]}``
        (for a multi-worker save, whose rank 0 merges every worker's into one index).
        """
        if self._done:
            raise CheckpointError(f"the TensorBundle writer of {self._prefix} is closed")
        try:
            if graph is not None:
                buf, crc = string_scalar(graph)
                self._writer.write(buf)
                self._entries[OBJECT_GRAPH_KEY] = [DT_STRING, [], self._shard, self._offset, len(buf), crc]
                self._offset += len(buf)
            self._writer.commit()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return dict(self._entries)

    @property
    def slices(self) -> dict[str, dict]:
        """The slices added (:meth:`add_slice`), by key: ``{"dtype", "shape", "boxes"}`` (JSON-ready)."""
        return self._slices

    def commit(self, graph: bytes | None = None) -> int:
        """Write the object graph (if any), make the data durable, then write the index. Returns the data size."""
        from ...save.write import _commit_index

        entries = self.commit_data(graph)
        try:
            encoded = encode_index([(k, entry_bytes(v)) for k, v in entries.items()] + sliced_entries(self._slices))
        except BaseException:
            try:
                self._storage.remove([self.data_file])  # committed data without an index: a partial file
            except Exception:
                pass
            raise
        _commit_index(self._storage, self.index_file, encoded, [self.data_file])
        if self._stale:
            try:
                self._storage.remove(self._stale)
            except Exception:
                pass
        return self._offset

    def abort(self) -> None:
        """Drop what was written (nothing is committed)."""
        if not self._done:
            self._done = True
            self._writer.abort()


def check_plan(plan) -> None:
    """Refuse what TensorFlow's format cannot hold, naming it, instead of dropping it."""
    for entry, _ in plan.tensors:
        if entry.dtype not in DTYPE_NUMBERS and entry.dtype != STRING:
            hint = (" or, for TensorFlow's variable-length strings, hold it as an object array of bytes "
                    "(np.array(values, dtype=object))" if entry.dtype[:1] in ("S", "U") else "")
            raise CheckpointError(f"tensor {entry.key!r} has dtype {entry.dtype}, which TensorFlow checkpoints "
                                  f"cannot hold; save it in ckptcore's format (the default){hint}")


def write(storage, prefix: str, plan, progress=None) -> None:
    """Write ``plan`` as a single-shard TensorBundle at ``prefix``: data (made durable), then the index."""
    check_plan(plan)
    keys = [e.key for e, _ in plan.tensors]
    graph = object_graph(plan.graph, keys, getattr(plan, "full_names", {}))
    paths = _paths(plan.graph) if plan.graph.state else {}
    with BundleWriter(storage, prefix, progress) as w:
        for entry, arr in plan.tensors:
            entry.offset, entry.crc32c = w.add(entry.key, entry.dtype, arr.shape, arr)
        for nid in sorted(plan.graph.state):
            w.add(state_key(paths[nid]), STRING, (), encode_state(plan.graph.state[nid], _path(plan.graph, nid)))
        size = w.commit(graph)
    plan.num_shards, plan.shard_sizes = 1, [size]
