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

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from . import format as fmt
from .dtypes import dtype_name, storage_dtype
from .errors import CheckpointError, UnsupportedDtypeError
from .graph import walk
from .naming import VARIABLE_VALUE, display_path, object_key, slot_key

SMALL_TENSOR = 1 << 20   # tensors below this are packed through a staging buffer
STAGING_BYTES = 8 << 20


@dataclass
class SavePlan:
    """What a save will write: the index (offsets filled in on write) and the arrays."""

    index: fmt.Index
    tensors: list[tuple[fmt.TensorEntry, np.ndarray]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e, _ in self.tensors)


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _as_array(value: Any, where: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as e:  # pragma: no cover - adapter bug
            raise CheckpointError(f"value of {where} could not be converted to an array: {e}") from e
    try:
        dtype_name(arr.dtype)
    except UnsupportedDtypeError as e:
        raise UnsupportedDtypeError(f"cannot save {where}: {e}") from None
    sd = storage_dtype(arr.dtype)
    if sd != arr.dtype:
        arr = arr.astype(sd)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def _entry(key: str, arr: np.ndarray) -> fmt.TensorEntry:
    return fmt.TensorEntry(key=key, dtype=dtype_name(arr.dtype), shape=tuple(int(d) for d in arr.shape),
                           shard=0, offset=0, nbytes=int(arr.nbytes), crc32c=0)


def _check_state(state: Any, where: str) -> Any:
    try:
        json.dumps(state, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"state of {where} is not JSON-serializable: {e}") from None
    return state


def plan_save(root: Any, extra_root_children: Iterable[tuple[str, Any]] = (), *, snapshot: bool = False,
              metadata: dict | None = None) -> SavePlan:
    """Walk the graph from ``root`` and collect every value to write.

    With ``snapshot=True`` each array is copied now, so later mutation of the
    live objects does not change what an async save writes.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> plan_save(ck.Module()).nbytes
        0
    """
    live = walk(root, extra_root_children)
    ids = {id(n.obj): i for i, n in enumerate(live)}
    nodes: list[fmt.Node] = []
    tensors: list[tuple[fmt.TensorEntry, np.ndarray]] = []
    slot_nodes: list[fmt.Node] = []
    pending_slots: list[tuple[int, Any]] = []
    for i, ln in enumerate(live):
        node = fmt.Node(adapter=getattr(ln.adapter, "name", type(ln.adapter).__name__), type=_qualname(ln.obj),
                        children=list(ln.children))
        where = display_path(ln.path)
        for attr in ln.adapter.attributes(ln.obj):
            arr = _as_array(ln.adapter.get_value(ln.obj, attr), f"{where} ({attr})")
            if snapshot:
                arr = arr.copy()
            entry = _entry(object_key(ln.path, attr), arr)
            node.attributes[attr] = entry
            tensors.append((entry, arr))
        state = ln.adapter.get_state(ln.obj)
        if state is not None:
            node.state = _check_state(state, where)
        for slot in ln.adapter.slots(ln.obj) or ():
            pending_slots.append((i, slot))
        nodes.append(node)
    for opt_id, slot in pending_slots:
        var_id = ids.get(id(slot.variable))
        if var_id is None:
            continue  # the variable is not part of this checkpoint: TF drops such slots too
        var_path, opt_path = live[var_id].path, live[opt_id].path
        where = f"slot {slot.name!r} of {display_path(opt_path)} for {display_path(var_path)}"
        arr = _as_array(slot.value, where)
        if snapshot:
            arr = arr.copy()
        entry = _entry(slot_key(var_path, opt_path, slot.name), arr)
        slot_id = len(nodes) + len(slot_nodes)
        slot_nodes.append(fmt.Node(adapter="ckptcore.slot", type=_qualname(slot.value), attributes={VARIABLE_VALUE: entry}))
        nodes[opt_id].slots.append((var_id, slot.name, slot_id))
        tensors.append((entry, arr))
    nodes.extend(slot_nodes)
    index = fmt.Index(nodes=nodes, num_shards=1, shard_sizes=[0], metadata=dict(metadata or {}))
    return SavePlan(index=index, tensors=tensors)


def _byte_view(arr: np.ndarray) -> memoryview:
    return memoryview(arr.reshape(-1).view(np.uint8))


_ZEROS = bytes(fmt.ALIGNMENT)


def write_plan(storage, prefix: str, plan: SavePlan, progress=None) -> None:
    """Write data then index (the commit point). Leaves nothing visible on failure.

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
    data = fmt.data_path(prefix, 0, 1)
    index_file = fmt.index_path(prefix)
    writer = storage.open_writer(data)
    try:
        offset = 0
        staging = bytearray()
        for entry, arr in plan.tensors:
            pad = fmt.align(offset) - offset
            mv = _byte_view(arr)
            entry.offset = offset + pad
            entry.crc32c = fmt.crc32c(mv)
            if pad:
                staging += _ZEROS[:pad]
            if len(mv) < SMALL_TENSOR:
                staging += mv
                if len(staging) >= STAGING_BYTES:
                    writer.write(staging)
                    staging = bytearray()
            else:
                if staging:
                    writer.write(staging)
                    staging = bytearray()
                writer.write(mv)
            offset = entry.offset + entry.nbytes
            if progress is not None:
                progress(entry.nbytes)
        if staging:
            writer.write(staging)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    plan.index.shard_sizes = [offset]
    try:
        storage.write_atomic(index_file, plan.index.encode())
    except BaseException:
        storage.remove([data])
        raise


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
        if name == base + fmt.INDEX_SUFFIX or (name.startswith(base + ".data-") and name[len(base) + 6:].replace("-of-", "").isdigit()):
            out.append(storage.join(d, name))
    return out


def total_bytes(plan: SavePlan) -> int:
    """Total tensor bytes of a plan (for progress bars and benchmarks).

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> m = ck.Module(); m.w = np.ones(4, np.float32)
        >>> total_bytes(plan_save(m))
        16
    """
    return int(sum(math.prod(e.shape) * np.dtype(e.np_dtype).itemsize for e, _ in plan.tensors))
