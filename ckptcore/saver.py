"""Serializing a live graph and writing it with the commit protocol.

:func:`plan_save` walks the graph and collects every array (no copies unless
``snapshot=True``); :func:`write_plan` streams them to the data file, then
commits the index.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> from ckptcore import saver
    >>> m = ck.Module(); m.w = np.ones(2)
    >>> plan = saver.plan_save(m)
    >>> [e.key for e, _ in plan.tensors]
    ['w/.ATTRIBUTES/VARIABLE_VALUE']
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any

import numpy as np

from . import registry, staging
from ._perf import PURE_PYTHON, paused_gc, submit
from .adapters import _keeps_method
from .builtin.numpy_adapters import NumpyArrayAdapter
from .formats import ckpt as fmt
from .graph import _is_leaf_adapter, _is_leaf_type, live_children
from .naming import ATTRIBUTES, OPTIMIZER_SLOT, VARIABLE_VALUE, display_path, escape_local_name
from .registry import adapter_or_none, find_adapter
from .save_values import (
    _DTYPE_INFO,
    _adapter_failed,
    _as_array,
    _check_attributes,
    _check_state,
    _qualname,
    _refuse_key_clash,
    _refuse_twice_named_slots,
)
from .variable import Variable

_add_children: Callable[..., int] | None
_plain_leaves: Callable[..., int] | None
_add_slots: Callable[..., int] | None
try:  # compiled steps of the walk (setup.py); without them _plan_save does the same work in Python
    from ._save_fast import add_children as _add_children
    from ._save_fast import add_slots as _add_slots
    from ._save_fast import plain_leaves as _plain_leaves
except ImportError:  # pragma: no cover - a build without a C compiler
    _add_children = _plain_leaves = _add_slots = None
if PURE_PYTHON:
    _add_children = _plain_leaves = _add_slots = None

SMALL_TENSOR = 1 << 20   # tensors at least this big get their CRC32C computed on a helper thread
STAGING_BYTES = 8 << 20  # neighbouring tensors are written together, in one writev, up to this size


class SavePlan:
    """What a save will write: the object graph (as columns) and the arrays.

    ``tensors`` holds ``(entry, array)`` pairs in data-file order; writing fills in each
    entry's shard, offset and CRC32C, and :meth:`encode_index` then encodes the index.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> plan = plan_save(ck.Module())
        >>> plan.nbytes, len(plan.graph)
        (0, 1)
    """

    def __init__(self, graph: fmt.Graph, keys: list[str], dtypes: list[str], arrays: list[np.ndarray],
                 node_of: list[int], metadata: dict | None = None):
        self.graph = graph
        self._columns = (keys, dtypes, arrays)
        self._tensors: list[tuple[fmt.TensorEntry, np.ndarray]] | None = None
        self._table: fmt.TensorTable | None = None  # the layout, once written by _write_columns
        self.node_of = node_of  # the node of each tensor
        self.metadata = dict(metadata or {})
        self.num_shards = 1
        self.shard_sizes = [0]
        self.full_names: dict[int, str] = {}  # node -> a ck.Variable's name (TensorFlow's full_name)
        self.data_tag: str | None = None     # set by write_plan on storages with per-attempt data names
        self.keys_derived = False   # True: the keys are those the graph gives (plan_save made them so)

    @property
    def tensors(self) -> list[tuple[fmt.TensorEntry, np.ndarray]]:
        """``(entry, array)`` pairs; built on first use, which for an async save is on its writer thread."""
        if self._tensors is None:
            keys, dtypes, arrays = self._columns
            if self._table is not None:  # written column-wise already: the entries of its layout
                self._tensors = list(zip(self._table.entries(), arrays))
            else:
                self._tensors = [(fmt.TensorEntry(k, d, a.shape, 0, 0, a.nbytes, 0), a)
                                 for k, d, a in zip(keys, dtypes, arrays)]
        return self._tensors

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._columns[2])

    @property
    def index(self) -> fmt.Index:
        """The index as it stands (offsets and checksums are final once the data is written).

        Example:
            >>> import numpy as np
            >>> plan_save([np.zeros(2)]).index.table.key
            ['0/.ATTRIBUTES/VARIABLE_VALUE']
        """
        table = self._table
        if table is None or self._tensors is not None:  # entries made (and maybe changed) since: they hold the layout
            table = fmt.TensorTable.from_entries([e for e, _ in self.tensors], self.node_of)
        table.derived = self.keys_derived   # the keys plan_save made (writing fills in layouts, never keys)
        index = fmt.Index(num_shards=self.num_shards, shard_sizes=self.shard_sizes, metadata=self.metadata,
                          graph=self.graph, table=table)
        index.data_tag = self.data_tag
        return index

    def encode_index(self) -> bytes:
        """The index file's bytes (call after writing the data, which fills in the layout).

        Example:
            >>> plan_save([]).encode_index()[:8]
            b'CKPTIDX1'
        """
        with paused_gc():
            return self.index.encode()


def plan_save(root: Any, extra_root_children: Iterable[tuple[str, Any]] = (), *, snapshot: bool = False,
              metadata: dict | None = None, strings: bool = False) -> SavePlan:
    """Walk the graph from ``root`` and collect every value to write.

    With ``snapshot=True`` each array is copied now, so later mutation of the
    live objects does not change what an async save writes. With ``strings=True``
    (for a format with variable-length strings, TensorFlow's) object arrays of
    ``bytes`` are planned as dtype ``"string"``; otherwise they are refused.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> plan_save(ck.Module()).nbytes
        0
    """
    with paused_gc():
        return _plan_save(root, extra_root_children, snapshot, metadata, strings)


def _plan_save(root, extra_root_children, snapshot, metadata, strings=False) -> SavePlan:
    # One breadth-first pass over the live graph that builds the index columns directly: node i is
    # the i-th object reached, under its shortest path (ties broken by edge order), as graph.walk
    # orders them; cycles and shared objects are visited once.
    root_adapter = find_adapter(root, what="the checkpoint root")
    objs, adapters, escs = [root], [root_adapter], [""]
    parents, names = [-1], [""]  # paths are rebuilt from these only when needed (no tuple per object)

    def path_of(k: int) -> tuple[str, ...]:
        out = []
        while k > 0:
            out.append(names[k])
            k = parents[k]
        return tuple(reversed(out))

    index_of = {id(root): 0}
    extra = list(extra_root_children)
    node_adapter: list[str] = []
    node_type: list[str] = []
    child_start: list[int] = [0]
    child_name: list[str] = []
    child_id: list[int] = []
    attr_start: list[int] = [0]
    attr_name: list[str] = []
    states: dict[int, Any] = {}
    slots: dict[int, list] = {}
    keys: list[str] = []
    dtypes: list[str] = []
    arrays: list[np.ndarray] = []
    node_of: list[int] = []
    pending_slots: list[tuple[int, Any]] = []
    full_names: dict[int, str] = {}
    escaped_names: dict[str, str] = {}  # edge and attribute names repeat ("w", "VARIABLE_VALUE"): escape each once

    def escape(name: str) -> str:
        esc = escaped_names.get(name)
        if esc is None:
            esc = escaped_names[name] = escape_local_name(name)
        return esc

    def resolve(child, name):  # a new child's adapter (also the compiled add_children's, off the type cache)
        child_adapter = adapter_or_none(child)
        if child_adapter is None:  # the message is built only on failure
            child_adapter = find_adapter(child, what=f"dependency {display_path(path_of(i) + (name,))!r}")
        return child_adapter

    value_suffix = f"/{ATTRIBUTES}/{escape(VARIABLE_VALUE)}"
    root_named_child = False
    dtype_info = _DTYPE_INFO
    plain_leaves, add_children, adapter_cache = _plain_leaves, _add_children, registry._by_type_cache
    leaf_offers = _LEAF_VALUE
    i = 0
    while i < len(objs):
        obj, adapter, esc = objs[i], adapters[i], escs[i]
        leaf = None   # a leaf's one value, written as it is, when its adapter says it has nothing else
        if type(adapter) is NumpyArrayAdapter and type(obj) is np.ndarray and esc:
            if plain_leaves is not None:  # this and the plain arrays after it, in one compiled loop
                after = plain_leaves(i, objs, adapters, escs, NumpyArrayAdapter, dtype_info, "numpy.ndarray",
                                     VARIABLE_VALUE, value_suffix, node_adapter, node_type, child_start,
                                     len(child_id), attr_name, attr_start, keys, dtypes, arrays, node_of)
                if after > i:
                    i = after
                    continue
            # The built-in adapter, inlined (most leaves of numpy models): no children, one
            # VARIABLE_VALUE, no state, no slots.
            leaf = obj
        elif esc:
            offers = leaf_offers.get(type(adapter))
            if offers is None:
                offers = _offers_leaf_value(type(adapter))
            if offers:  # Adapter.leaf_value (torch tensors): the same, through the adapter
                try:
                    leaf = adapter.leaf_value(obj)
                except Exception as e:
                    _adapter_failed(e, adapter, "leaf_value()", path_of(i))
        if type(leaf) is np.ndarray:
            # the common array (supported little-endian dtype, C order) is written as it is
            info = dtype_info.get(leaf.dtype)
            if info is not None and info[1] is leaf.dtype and leaf.flags.c_contiguous:
                node_adapter.append(adapter.name)
                node_type.append(_qualname(obj))
                child_start.append(len(child_id))
                attr_name.append(VARIABLE_VALUE)
                attr_start.append(len(attr_name))
                keys.append(esc + value_suffix)
                dtypes.append(info[0])
                arrays.append(leaf)
                node_of.append(i)
                i += 1
                continue
        node_adapter.append(getattr(adapter, "name", type(adapter).__name__))
        node_type.append(_qualname(obj))
        if type(obj) is Variable:  # TensorFlow's object graph records each variable's name
            full_names[i] = obj.name or "Variable"
        if i == 0 or not _is_leaf_adapter(adapter):
            kids = live_children(obj, adapter, lambda: path_of(i), extra if i == 0 else ())  # noqa: B023
            done = 0
            if i and add_children is not None:  # (the root's children are walked below: their paths differ)
                done = add_children(kids, i, esc, index_of, adapter_cache, escaped_names, resolve, escape, objs,
                                    adapters, parents, names, escs, child_name, child_id)
            for name, child in (kids[done:] if done else kids):
                j = index_of.get(id(child))
                if j is None:
                    child_adapter = resolve(child, name)
                    j = len(objs)
                    index_of[id(child)] = j
                    objs.append(child)
                    adapters.append(child_adapter)
                    parents.append(i)
                    names.append(name)
                    escs.append(f"{esc}/{escape(name)}" if i else escape(name))  # ("", "a") -> "/a", as TF
                    if i == 0 and name == "":
                        root_named_child = True  # its keys are the root's ("/.ATTRIBUTES/..."): checked below
                child_name.append(name)
                child_id.append(j)
        child_start.append(len(child_id))
        try:
            attrs = adapter.attributes(obj)
        except Exception as e:
            _adapter_failed(e, adapter, "attributes()", path_of(i))
        if attrs:
            if len(attrs) > 1 or type(attrs[0]) is not str:  # (one name, a str: the common case)
                _check_attributes(attrs, adapter, display_path(path_of(i)))
            key_prefix = f"{esc}/{ATTRIBUTES}/"  # as naming.object_key: the root's are "/.ATTRIBUTES/..."
            for attr in attrs:
                try:
                    value = adapter.get_value(obj, attr)
                except Exception as e:
                    _adapter_failed(e, adapter, f"get_value(obj, {attr!r})", path_of(i))
                arr, name = _as_array(value,
                                      lambda: f"{display_path(path_of(i))} ({attr})",  # noqa: B023 -- called at once
                                      strings)
                attr_name.append(attr)
                keys.append(key_prefix + escape(attr))
                dtypes.append(name)
                arrays.append(arr)
                node_of.append(i)
        attr_start.append(len(attr_name))
        try:
            state = adapter.get_state(obj)
            slots_of = adapter.slots(obj)
        except Exception as e:
            _adapter_failed(e, adapter, "get_state() or slots()", path_of(i))
        if state is not None:
            state = _check_state(state, display_path(path_of(i)))
            states[i] = copy.deepcopy(state) if snapshot else state
        for slot in slots_of or ():
            pending_slots.append((i, slot))
        i += 1
    done = 0
    if _add_slots is not None and pending_slots:  # the slots of plain arrays, in one compiled loop
        done = _add_slots(pending_slots, index_of, dtype_info, escs, f"/{OPTIMIZER_SLOT}/", value_suffix,
                          escaped_names, escape, "ckptcore.slot", "numpy.ndarray", VARIABLE_VALUE, node_adapter,
                          node_type, child_start, len(child_id), attr_name, attr_start, keys, dtypes, arrays,
                          node_of, slots)
    for opt_id, slot in (pending_slots[done:] if done else pending_slots):
        var_id = index_of.get(id(slot.variable))
        if var_id is None:
            continue  # the variable is not part of this checkpoint: TF drops such slots too
        arr = slot.value
        info = dtype_info.get(arr.dtype) if type(arr) is np.ndarray else None
        if info is not None and info[1] is arr.dtype and arr.flags.c_contiguous:
            name = info[0]   # (what _as_array gives the common array)
        else:
            arr, name = _as_array(arr,
                                  lambda: (f"slot {slot.name!r} of {display_path(path_of(opt_id))} "  # noqa: B023
                                           f"for {display_path(path_of(var_id))}"),  # noqa: B023 -- called at once
                                  strings)
        slot_id = len(node_adapter)
        node_adapter.append("ckptcore.slot")
        node_type.append(_qualname(slot.value))
        child_start.append(len(child_id))
        attr_name.append(VARIABLE_VALUE)
        attr_start.append(len(attr_name))
        # naming.slot_key of the two paths, from their escaped forms (escs[k] is object_path(path_of(k)))
        keys.append(f"{escs[var_id]}/{OPTIMIZER_SLOT}/{escs[opt_id]}/{escape(slot.name)}{value_suffix}")
        dtypes.append(name)
        arrays.append(arr)
        node_of.append(slot_id)
        slots.setdefault(opt_id, []).append((var_id, slot.name, slot_id))
    if snapshot:
        # every array copied in one tight pass after the walk (as fast as copying a list of arrays;
        # copying inside the walk above cost ~15 % more for 20,000 small arrays)
        stage = staging.current()
        if stage is not None and stage.has_private:  # values a plugin copied already (device tensors)
            arrays = [a if stage.is_private(a) else a.copy() for a in arrays]
        else:
            arrays = [a.copy() for a in arrays]
    if root_named_child and len(set(keys)) != len(keys):
        _refuse_key_clash(keys)
    _refuse_twice_named_slots(slots, path_of)
    graph = fmt.Graph(node_adapter, node_type, child_start, child_name, child_id, attr_start, attr_name, states, slots)
    plan = SavePlan(graph, keys, dtypes, arrays, node_of, metadata)
    # Every key above is the one its node's first path gives (formats/ckpt_keys.py), unless the root has a
    # child named "": the index then need not store them (version 6) and no save derives them again.
    plan.keys_derived = not root_named_child
    plan.full_names = full_names
    return plan


_LEAF_VALUE: dict[type, bool] = {}   # adapter class -> whether a save asks it for leaf_value()
_KEEPS_LEAF_VALUE: dict[type, bool] = {}


def _offers_leaf_value(cls: type) -> bool:
    """Whether adapter class ``cls`` overrides ``Adapter.leaf_value`` and is a leaf adapter: cached."""
    offers = _LEAF_VALUE[cls] = (not _keeps_method(_KEEPS_LEAF_VALUE, cls, "leaf_value", if_missing=True)
                                 and _is_leaf_type(cls))
    return offers


def _byte_view(arr: np.ndarray) -> memoryview:
    return memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # works for every dtype (bfloat16, strings, ...)


_ZEROS = bytes(fmt.ALIGNMENT)


def _set_crc(entry: fmt.TensorEntry, arr) -> None:
    entry.crc32c = fmt.crc32c(arr)


def _set_crcs(items: list) -> None:
    crc32c = fmt.crc32c
    for entry, arr in items:
        entry.crc32c = crc32c(arr, 0, True)  # releases the GIL: the writing thread goes on meanwhile


def _write_columns(writer, plan: SavePlan, progress) -> int:
    """:func:`_write_tensors` for a writer that takes arrays as they are (local files), column by column.

    The same layout, batches and checksums, worked out with numpy over the whole plan instead of
    per tensor, and no :class:`~ckptcore.formats.ckpt.TensorEntry` made: the plan's table gets the
    offsets and checksums (``plan._table``). Returns the data file's size.
    """
    keys, dtypes, arrays = plan._columns
    n = len(arrays)
    nbytes = np.fromiter(map(_nbytes, arrays), np.int64, n)
    # fmt.tensor_alignment for every tensor: the dtype's alignment, 64 bytes for large ones
    small = {d: fmt.tensor_alignment(0, d) for d in dict.fromkeys(dtypes)}
    align = np.fromiter(map(small.__getitem__, dtypes), np.int64, n)
    align[nbytes >= fmt.ALIGNED_TENSOR_BYTES] = fmt.ALIGNMENT
    ends = np.cumsum(nbytes)
    offs = ends - nbytes
    if n and (offs % align).any():  # padding somewhere (large tensors, mixed dtypes): laid out in order
        off, out = 0, []
        for nb, al in zip(nbytes.tolist(), align.tolist()):
            off += -off % al
            out.append(off)
            off += nb
        offs = np.array(out, np.int64)
        ends = offs + nbytes
    pads = offs - np.concatenate(([0], ends[:-1]))  # the padding before each tensor
    padded = np.concatenate(([0], np.cumsum(pads > 0))).tolist()  # padded[k]: tensors before k that follow padding
    # batches as _write_tensors makes them: each closes after the tensor that brings it to STAGING_BYTES
    data = np.cumsum(nbytes)
    bounds, i = [], 0
    while i < n:
        j = min(int(np.searchsorted(data, (data[i - 1] if i else 0) + STAGING_BYTES, "left")) + 1, n)
        bounds.append((i, j))
        i = j
    nbytes_l, pads_l = nbytes.tolist(), pads.tolist()
    crcs: list = []
    pending = []
    try:
        for i, j in bounds:
            arrs = arrays[i:j]
            pending.append(submit(_checksums, arrs))  # on the helper thread, while this one is in writev
            if padded[j] == padded[i]:
                writer.writev(arrs, nbytes_l[i:j])
            else:
                bufs: list = []
                sizes = []
                for arr, nb, pad in zip(arrs, nbytes_l[i:j], pads_l[i:j]):
                    if pad:
                        bufs.append(_ZEROS[:pad])
                        sizes.append(pad)
                    bufs.append(arr)
                    sizes.append(nb)
                writer.writev(bufs, sizes)
            if progress is not None:
                progress(int(data[j - 1] - (data[i - 1] if i else 0)))
        for f in pending:
            crcs.extend(f.result())
    finally:
        for f in pending:
            f.exception()  # wait for every checksum (their errors, if any, were raised above)
    table = fmt.TensorTable(keys, dtypes, list(map(_shape, arrays)), [0] * n, offs.tolist(), nbytes_l, crcs,
                            plan.node_of)
    table._arrays = (np.zeros(n, np.int64), offs, nbytes)
    plan._table = table
    return int(ends[-1]) if n else 0


_nbytes, _shape = attrgetter("nbytes"), attrgetter("shape")


def _checksums(arrs: list) -> list[int]:
    crc32c = fmt.crc32c
    return [crc32c(a, 0, True) for a in arrs]  # releases the GIL: the writing thread goes on meanwhile


def _write_tensors(writer, tensors, progress) -> int:
    """Lay tensors out (``fmt.tensor_alignment``); write neighbours together with one ``writev``. Returns the size."""
    writev = getattr(writer, "writev", None)
    arrays = writev is not None and getattr(writer, "accepts_arrays", False)  # local files: arrays as they are
    if writev is None:
        def writev(bufs, sizes=None):
            writer.write(b"".join(bufs))
    offset = 0
    batch: list = []
    sizes: list = []
    batch_bytes = 0
    small: list = []  # (entry, buffer) of the batch's small tensors: checksummed together
    pending = []
    alignment = fmt.tensor_alignment
    try:
        for entry, arr in tensors:
            nbytes = entry.nbytes
            pad = -offset % alignment(nbytes, entry.dtype)
            if pad:
                batch.append(_ZEROS[:pad])
                sizes.append(pad)
            buf = arr if arrays else _byte_view(arr)  # arr is C-contiguous (plan_save): CRC32C takes it as it is
            entry.offset = offset + pad
            if nbytes >= SMALL_TENSOR:
                pending.append(submit(_set_crc, entry, arr))
            else:
                small.append((entry, arr))
            batch.append(buf)
            sizes.append(nbytes)
            batch_bytes += nbytes
            offset = entry.offset + nbytes
            if batch_bytes >= STAGING_BYTES:
                if small:  # the helper thread checksums them while this one is in writev
                    pending.append(submit(_set_crcs, small))
                writev(batch, sizes) if arrays else writev(batch)
                if progress is not None:
                    progress(batch_bytes)
                batch, sizes, batch_bytes, small = [], [], 0, []
        if batch:
            if small:
                pending.append(submit(_set_crcs, small))
            writev(batch, sizes) if arrays else writev(batch)
            if progress is not None:
                progress(batch_bytes)
    finally:
        for f in pending:
            f.result()
    return offset


MAX_SHARDS = 1 << 16   # what readers accept (docs/format.md)


def split_shards(tensors: list, shard_bytes: int | None) -> list[list]:
    """Group ``(entry, array)`` pairs into data shards of at most ``shard_bytes``.

    A tensor of ``shard_bytes`` or more is a shard of its own. The others are
    packed, in order, aligned (``fmt.tensor_alignment``): a shard closes when the next one would
    make it larger than ``shard_bytes``. ``None`` (local disk) means one shard.
    There is always at least one shard.

    Example:
        >>> import numpy as np
        >>> from ckptcore import saver
        >>> plan = saver.plan_save([np.zeros(100, np.uint8), np.zeros(300, np.uint8), np.zeros(100, np.uint8),
        ...                         np.zeros(100, np.uint8), np.zeros(100, np.uint8)])
        >>> [[e.nbytes for e, _ in s] for s in split_shards(plan.tensors, 256)]
        [[300], [100, 100], [100, 100]]
        >>> len(split_shards(plan.tensors, None))
        1
    """
    if not shard_bytes or not tensors:
        return [list(tensors)]
    # large tensors make at most total / shard_bytes shards, packing at most 2 * total / shard_bytes + 1
    # (two neighbouring packed shards hold more than shard_bytes): stay within MAX_SHARDS
    total = sum(e.nbytes + fmt.ALIGNMENT for e, _ in tensors)
    shard_bytes = max(int(shard_bytes), 3 * total // (MAX_SHARDS - 2) + 1)
    shards: list[list] = []
    cur: list = []
    size = 0
    for item in tensors:
        nbytes = item[0].nbytes
        if nbytes >= shard_bytes:
            shards.append([item])
            continue
        end = size + (-size % fmt.tensor_alignment(nbytes, item[0].dtype)) + nbytes
        if cur and end > shard_bytes:
            shards.append(cur)
            cur, end = [], nbytes
        cur.append(item)
        size = end
    if cur or not shards:
        shards.append(cur)
    return shards


def write_plan(storage, prefix: str, plan: SavePlan, progress=None) -> None:
    """Write data then index (the commit point). Leaves nothing visible on failure.

    ``progress(nbytes)`` is called as tensor bytes are written. The data is
    split into shards by :func:`split_shards` with the storage's
    ``preferred_shard_bytes`` (one shard on local disk); several shards are
    written ``storage.shard_concurrency`` at a time, all committed before the index.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> from ckptcore.storage import open_storage
        >>> st, p = open_storage("memory://doc/write_plan/ckpt")
        >>> m = ck.Module(); m.w = np.ones(2)
        >>> write_plan(st, p, plan_save(m)); st.exists(p + ".index")
        True
    """
    d = storage.dirname(prefix)
    if d:
        storage.makedirs(d)
    shard_bytes = getattr(storage, "preferred_shard_bytes", None)
    shards = split_shards(plan.tensors, shard_bytes) if shard_bytes else None  # None: one shard (local disk)
    n = len(shards) if shards is not None else 1
    plan.num_shards = n
    index_file = fmt.index_path(prefix)
    # Object stores: this attempt's own data object names (a late request of another attempt cannot reach them)
    plan.data_tag = fmt.new_data_tag() if getattr(storage, "unique_data_names", False) else None
    overwrite = storage.exists(index_file)
    if overwrite:
        # Overwriting a checkpoint (a re-save after a failed state update, write() to the same path):
        # uncommit it first, so its old index never describes the new data.
        remove_index(storage, index_file)
    if shards is not None and n > 1:
        _write_sharded(storage, prefix, plan, shards, progress)
    else:
        _write_one(storage, prefix, plan, progress)
    if overwrite:
        # the old checkpoint may have had another shard count: drop its data files (best effort)
        keep = {fmt.data_path(prefix, i, n, plan.data_tag) for i in range(n)} | {index_file}
        try:
            storage.remove([f for f in checkpoint_files(storage, prefix) if f not in keep])
        except Exception:
            pass


def _write_one(storage, prefix: str, plan: SavePlan, progress) -> None:
    data = fmt.data_path(prefix, 0, 1, plan.data_tag)
    index_file = fmt.index_path(prefix)
    writer = storage.open_writer(data)
    try:
        if plan._tensors is None and getattr(writer, "accepts_arrays", False) and hasattr(writer, "writev"):
            offset = _write_columns(writer, plan, progress)
        else:
            offset = _write_tensors(writer, plan.tensors, progress)
        plan.shard_sizes = [offset]
        if getattr(writer, "background_commit", False):
            # the data file's fsync waits on the disk on the helper thread while this one encodes the index
            committed = submit(writer.commit)
            try:
                encoded = plan.encode_index()
            finally:
                committed.result()  # never abort while the commit is still running
        else:
            writer.commit()
            encoded = plan.encode_index()
    except BaseException:
        writer.abort()
        raise
    _commit_index(storage, index_file, encoded, [data])


def _write_sharded(storage, prefix: str, plan: SavePlan, shards: list[list], progress) -> None:
    """Write several shards concurrently; commit the index once every one is committed.

    On any failure the shards still being written are aborted, the ones
    already committed are removed, and the first error is raised.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    n = len(shards)
    paths = [fmt.data_path(prefix, i, n, plan.data_tag) for i in range(n)]
    index_file = fmt.index_path(prefix)
    sizes = [0] * n
    committed: list[str] = []
    failed = threading.Event()
    lock = threading.Lock()
    report = None
    if progress is not None:
        def report(nbytes):
            with lock:
                progress(nbytes)

    def write_shard(i: int) -> None:
        if failed.is_set():
            return
        for entry, _ in shards[i]:
            entry.shard = i
        try:
            writer = storage.open_writer(paths[i])
        except BaseException:
            failed.set()
            raise
        try:
            sizes[i] = _write_tensors(writer, shards[i], report)
            if failed.is_set():
                raise _Cancelled()
            writer.commit()
        except BaseException:
            failed.set()
            writer.abort()
            raise
        with lock:
            committed.append(paths[i])

    workers = max(1, min(int(getattr(storage, "shard_concurrency", 1) or 1), n))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckptcore-shard")
    try:
        futures = [pool.submit(write_shard, i) for i in range(n)]
        errors = []
        for f in futures:
            try:
                f.result()
            except _Cancelled:
                pass
            except BaseException as e:
                errors.append(e)
        if errors:
            raise errors[0]
        plan.shard_sizes = sizes
        encoded = plan.encode_index()
    except BaseException:
        failed.set()
        pool.shutdown(wait=True, cancel_futures=True)
        try:
            storage.remove(list(committed))
        except Exception:
            pass
        raise
    pool.shutdown(wait=True)
    _commit_index(storage, index_file, encoded, paths)


def remove_index(storage, index_file: str) -> None:
    """Delete an index as it is now: a DELETE applied late never removes an index written after it.

    Object stores make the DELETE conditional on the object read just before (S3 ``If-Match`` on its
    ETag, GCS ``ifGenerationMatch``); other storages delete it plainly (their requests never land late).

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, p = open_storage("memory://doc/remove_index/ckpt-1.index")
        >>> st.write_atomic(p, b"x"); remove_index(st, p); st.exists(p)
        False
    """
    conditional = getattr(storage, "remove_unchanged", None)
    if conditional is not None:
        conditional(index_file)
    else:
        storage.remove([index_file])


def _commit_index(storage, index_file: str, encoded: bytes, data_paths: list[str]) -> None:
    """Write the index: the commit point. On failure remove the index, then the data files.

    On an object store the PUT may have landed although its response was lost, and a PUT the
    client gave up on may still land later. So there, a failed commit first checks whether the
    index it sent is on storage (then the save succeeded); otherwise it removes nothing but a
    refused attempt's data: the data objects are this attempt's alone (its data tag), and an index
    of this attempt that lands late must find them (a manager's later save removes them once they
    are older than its grace period and no index names them).
    """
    try:
        storage.write_atomic(index_file, encoded)
    except Exception as e:
        if not getattr(storage, "unique_data_names", False):
            _remove_after_failed_commit(storage, index_file, data_paths)
            raise
        try:
            landed = storage.read_bytes(index_file) == encoded
        except Exception:
            landed = False
        if landed:   # the PUT was applied, only its response was lost: the checkpoint is committed
            return
        from .errors import StoragePermissionError

        if isinstance(e, StoragePermissionError):   # refused: that PUT can never land
            try:
                storage.remove(data_paths)
            except Exception:
                pass
        raise
    except BaseException:
        _remove_after_failed_commit(storage, index_file, data_paths)
        raise


def _remove_after_failed_commit(storage, index_file: str, data_paths: list[str]) -> None:
    """The index first, so no index is ever left pointing at missing data; best effort."""
    try:
        storage.remove([index_file])
        storage.remove(data_paths)
    except Exception:
        pass


class _Cancelled(Exception):
    """A shard stopped because another one failed."""


def checkpoint_files(storage, prefix: str) -> list[str]:
    """Every file belonging to the checkpoint at ``prefix`` (index and data shards).

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, p = open_storage("memory://doc/files/ckpt-1")
        >>> checkpoint_files(st, p)
        []
    """
    d = storage.dirname(prefix)
    base = storage.basename(prefix)
    out = []
    for name in storage.listdir(d):
        if name == base + fmt.INDEX_SUFFIX:
            out.append(storage.join(d, name))
        elif name.startswith(base + ".data-"):
            shard, _, tag = name[len(base) + 6:].partition(".")   # tag: a save attempt's (object stores)
            if shard.replace("-of-", "").isdigit() and (not tag or fmt.is_data_tag(tag)):
                out.append(storage.join(d, name))
    return out
