"""The save walk: a live graph into a :class:`SavePlan` (the object graph as columns, and the arrays).

:func:`plan_save` walks the graph from its root and collects every array (no copies unless
``snapshot=True``); :mod:`ckptcore.save.write` then writes the plan. The walk's two hot loops
have compiled twins in ``_save_fast.pyx``.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> m = ck.Module(); m.w = np.ones(2)
    >>> plan = plan_save(m)
    >>> [e.key for e, _ in plan.tensors]
    ['w/.ATTRIBUTES/VARIABLE_VALUE']
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .. import registry, staging
from .._perf import PURE_PYTHON, paused_gc
from ..adapters import _keeps_method
from ..builtin.numpy_adapters import NumpyArrayAdapter
from ..formats import ckpt as fmt
from ..graph import _is_leaf_adapter, _is_leaf_type, live_children
from ..naming import ATTRIBUTES, OPTIMIZER_SLOT, VARIABLE_VALUE, display_path, escape_local_name
from ..registry import adapter_or_none, find_adapter
from ..variable import Variable
from .values import (
    _DTYPE_INFO,
    _adapter_failed,
    _as_array,
    _check_attributes,
    _check_state,
    _qualname,
    _refuse_key_clash,
    _refuse_twice_named_slots,
)

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
            with paused_gc():   # an entry and a tuple per tensor: no collection of the heap meanwhile
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
