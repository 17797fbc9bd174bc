"""Matching a checkpoint's graph to live objects, deferred restores, load status.

A :class:`RestoreSession` walks the saved graph alongside the live one. Values
whose objects exist are checked (shape, dtype) all together, then read in
place; values whose objects do not exist yet are queued in a core-owned,
weakly keyed table on the *parent* that will receive them. When an adapter
reports a new dependency through :func:`notify_dependency_added`, the queued
value (and its whole subtree) is restored at once.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> src = ck.Module(); src.w = np.arange(3.0)
    >>> path = ck.Checkpoint(model=src).write("memory://doc/restore/c")
    >>> dst = ck.Module()
    >>> status = ck.Checkpoint(model=dst).read(path)
    >>> dst.w = np.zeros(3)          # created after restore(): filled on assignment
    >>> dst.w.tolist()
    [0.0, 1.0, 2.0]
    >>> _ = status.assert_consumed()
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import Any

import numpy as np

from .._perf import paused_gc
from ..builtin.numpy_adapters import NumpyArrayAdapter
from ..distributed.shards import ShardBuffer
from ..errors import CheckpointError, DtypeMismatchError, PartialRestoreWarning
from ..formats import ckpt as fmt
from ..formats.byname import fit_to_live_root, is_flat, restore_by_name
from ..formats.ckpt_tables import int64_column
from ..graph import _LEAF_ADAPTERS, _is_leaf_type, adapter_children, checked_children, live_children
from ..graph import _is_leaf_adapter as _is_leaf
from ..naming import VARIABLE_VALUE, display_path
from ..registry import _by_type_cache as _adapter_cache
from ..registry import adapter_or_none, find_adapter, install_creation_hooks
from . import _compiled
from . import deferred as _deferred
from .deferred import (
    _LOCK,
    _PENDING,
    _SLOT_UPDATE_UID,
    _UPDATE_UID,
    _WAITING_UIDS,
    WeakIdTable,
    _ref,
    _Strong,
    has_pending,
    notify_dependency_added,
    pending_count,
)
from .live_check import unmatched_live_paths
from .slots import plan_slot_reads
from .values import (
    _DEFAULT_ATTRS,
    _accepts,
    _keeps_default_attributes,
    _offers_in_place,
    _path,
    _set_value_failed,
    _spec_error,
    _spec_failed,
    _state_error,
    _state_setter,
    _summary,
    _unalias,
)

_first, _second, _third = itemgetter(0), itemgetter(1), itemgetter(2)

# The compiled planner of plain numpy arrays (setup.py builds it; see docs/performance.md). Without it,
# or with CKPTCORE_PURE_PYTHON=1, _plan_values plans every match in Python, with the same results.
_plan_plain_arrays: Callable[..., list[int]] | None = _compiled.plan_plain_arrays
# ... and the compiled matching of a container's children that line up with its saved edges (_match).
_match_aligned: Callable[..., bool] | None = _compiled.match_aligned

__all__ = ["RestoreSession", "WeakIdTable", "has_pending", "notify_dependency_added", "pending_count"]


class RestoreSession:
    """One ``restore()``/``read()`` call: what matched, what waits, what is unused.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> path = ck.Checkpoint(a=np.ones(1)).write("memory://doc/session/c")
        >>> status = ck.Checkpoint(a=np.zeros(1)).read(path)
        >>> status.session.matched_node_count()
        2
    """

    def __init__(self, reader, root, extra_root_children=(), *, ignore_live_names: Iterable[str] = (),
                 verify: bool = True):
        self.reader = reader
        self.uid = next(_deferred._UIDS)   # TF's restore_uid: later restores have larger numbers
        if is_flat(reader.index):  # safetensors, TF1: names are object paths, maybe below the root's one child
            reader.index = fit_to_live_root(reader.index, _top_names(root, extra_root_children))
            ignore_live_names = {*ignore_live_names, "save_counter"}
        self.index: fmt.Index = reader.index
        self.path = reader.path
        self.verify = verify
        self._root_ref = _ref(root)
        self._extra_refs = [(n, _ref(c)) for n, c in extra_root_children]  # weak: keeps nothing alive
        self.ignore_live_names = set(ignore_live_names)
        # node id -> weakref of its live object, or a list of them when several matched it (node_objs)
        self._node_objs: dict[int, Any] = {}
        # live object -> node id, as two id-keyed dicts (weakref; node id): no tuple per object,
        # so the collector has tens of thousands fewer objects to scan after a large restore
        self._matched_ref: dict[int, Any] = {}
        self._matched_nid: dict[int, int] = {}
        # What each step matched, as columns (weak references, node ids), not yet entered in
        # the three tables above: most restores never look anything up in them (_file_matches does).
        self._unfiled: list[tuple[list, list]] = []
        self.unused_attrs: set[str] = set()    # keys whose node matched but attribute is absent live
        self.restored_slots: set[int] = set()
        self.expect_partial = False
        self.graph: fmt.Graph = self.index.graph
        self.table: fmt.TensorTable = self.index.table
        # the variable nodes that have slots (plan_slot_reads looks for them among the matches); the slots
        # by variable only when a step matches a variable without its optimizer (_slots_by_var)
        self._slot_vars = {r[0] for rows in self.graph.slots.values() for r in rows}
        self._by_var: dict[int, list[tuple[int, str, int]]] | None = None
        self._has_slots = bool(self._slot_vars)
        self._shared: set[int] | None = None  # see _shared_nodes
        self._nchild: list[int] | None = None  # see _num_children
        self._valued: np.ndarray | None = None  # see _valued_nodes
        # What matching saw of the live graph, for the status assertions (see live_graph_consumed):
        # whether some matched object had children or attributes the checkpoint lacks, the adapters
        # of the matched objects, and the dependency count (_CHANGES) when the last step ended.
        self.live_extra = False
        self.matched_adapters: set[type] = set()
        self.changes_seen = -1
        self._partial: list | None = None  # reads into ShardBuffers (a worker's shards), planned by _plan_values

    def __del__(self):
        # One summary of unused values, once nothing can fill them any more: the Checkpoint, its
        # statuses and every parent with a queued (deferred) value from this session are gone.
        if getattr(self, "expect_partial", True):  # also: __init__ did not finish
            return
        try:
            # Without the lock: nothing else can reach a session being finalized, and __del__ may run in
            # any thread (a collection in fsspec's I/O thread, say) while another thread holds the lock
            # waiting on that very thread: taking it there deadlocked a restore from S3.
            unused = self._unmatched(locked=False)
        except Exception:  # pragma: no cover - interpreter shutdown
            return
        if unused:  # not guarded: with warnings turned into errors, the error is reported as unraisable
            warnings.warn(
                f"{len(unused)} values of checkpoint {self.path!r} were never restored: "
                f"{_summary('unused', unused).split(': ', 1)[1]}. Call expect_partial() on the status "
                "returned by restore() if this is intended.", PartialRestoreWarning, stacklevel=2)

    # -- helpers ---------------------------------------------------------------------
    @property
    def _slots_by_var(self) -> dict[int, list[tuple[int, str, int]]]:
        """Variable node -> its ``(optimizer node, slot name, slot node)`` rows, made on first use."""
        if self._by_var is None:
            by_var: dict[int, list[tuple[int, str, int]]] = {}
            for opt_id, rows in self.graph.slots.items():
                for var_id, name, slot_id in rows:
                    by_var.setdefault(var_id, []).append((opt_id, name, slot_id))
            self._by_var = by_var
        return self._by_var

    def root(self):
        return self._root_ref()

    def _extra_children(self):
        out = []
        for n, r in self._extra_refs:
            c = r()
            if c is not None:
                out.append((n, c))
        return out

    # -- matching and restoring -------------------------------------------------------
    def run(self) -> None:
        """Restore everything whose object exists; queue the rest."""
        root = self.root()
        try:
            self.restore_subtree(root, 0, (), root_adapter=find_adapter(root))
            if is_flat(self.index):  # no saved graph: ck.Variable(name="dense/kernel") takes that key
                self.live_extra = True  # matched by name, not by the walk: status assertions walk the graph
                restore_by_name(self, root, self._extra_children())
        except BaseException:
            self.expect_partial = True  # the caller gets this error; no PartialRestoreWarning on top
            raise

    def restore_subtree(self, obj: Any, node_id: int, path: tuple, root_adapter=None) -> None:
        """Match ``obj`` to checkpoint node ``node_id`` and everything below it."""
        with _LOCK:
            # The collector is paused while tens of thousands of small objects are made (matching,
            # planning, recording), not during the read: reading from an object store can take
            # minutes, and other threads' garbage must not wait that long. (A local restore pauses
            # it throughout: Checkpoint.restore.)
            with paused_gc():
                matches, pending = self._match(obj, node_id, path, root_adapter)
                # objects a newer restore already filled: matched, not overwritten (TF's _update_uid)
                shadowed = self._shadowed(matches) if _UPDATE_UID._d else None
                (rows, dests, callbacks), after = self._plan_values(matches, tuple(path), shadowed)
                # optimizer slots whose optimizer and variable are both matched now: the same read
                # (also of shadowed optimizers: each slot has its own update uid, see plan_slot_reads)
                slot_reads = plan_slot_reads(self, matches, rows, dests, callbacks) if self._has_slots else None
                _unalias(dests, callbacks)
            if rows:
                try:
                    self.reader.read_rows(rows, dests, callbacks, verify=self.verify)
                except CheckpointError:
                    raise
                except Exception as e:  # an adapter's set_value() failed: name it (the error path only)
                    raise _set_value_failed(e, rows, callbacks, self.reader.index.table) from e
            del rows, dests, callbacks
            if self._partial:
                from ..distributed.reshard import read_rows as read_shards
                shard_reads, self._partial = self._partial, None
                rows, callbacks = [r[0] for r in shard_reads], [r[2] for r in shard_reads]
                try:
                    read_shards(self.reader, rows, [r[1] for r in shard_reads], callbacks, self.verify)
                except CheckpointError:
                    raise
                except Exception as e:
                    raise _set_value_failed(e, rows, callbacks, self.reader.index.table) from e
                del rows, callbacks
            # only after the values arrived: a failed read marks nothing matched and queues nothing
            with paused_gc():
                self._commit_matches(matches, pending)
                guard = bool(_WAITING_UIDS) and min(_WAITING_UIDS) < self.uid
                if guard:  # an older restore waits: guard our values
                    self._record_update_uid(matches, shadowed)
                del matches, pending  # gone before the collector runs again
            self.changes_seen = _deferred._CHANGES
            if slot_reads is not None:
                slot_reads.finish()  # each optimizer's slots in one call, before its set_state
                if guard:
                    slot_reads.record_update_uid(_SLOT_UPDATE_UID, self.uid)
            for fn in after:
                fn()

    def _match(self, obj, node_id, path, root_adapter):
        """Walk the saved graph from ``node_id`` alongside the live one from ``obj``.

        Returns the matches, ``(obj, adapter, node id, index of the parent's match, edge name)``
        each, in breadth-first order (``matches[0]`` is ``obj``; :func:`_path` rebuilds a path
        from the parent links, so no path tuple is made per object), and the edges whose live
        child does not exist yet, ``(parent, name, node id, path)`` each.

        Only matches with something below them are visited: a saved leaf whose adapter never has
        children is matched and not looked at again. A live object whose children line up with the
        saved edges (same names in the same order, none shared, every adapter already known: any
        Module, list or dict saved by the same code) has them matched in a few C-level passes.
        """
        g = self.graph
        child_start, child_name, child_id = g.child_start, g.child_name, g.child
        path = tuple(path)
        shared = self._shared_nodes()  # nodes more than one edge leads to: the only ones to check for revisits
        matched = self if self._matched_ref or self._unfiled else None  # nothing matched yet: nothing to look up
        if matched is not None and matched.matched_node(obj) == node_id:
            return [], []  # already restored by this session (shared object)
        if root_adapter is None:
            root_adapter = adapter_or_none(obj) or find_adapter(obj, what=f"object {display_path(path)!r}")
        matches: list[tuple] = [(obj, root_adapter, node_id, -1, None)]
        pending: list[tuple[Any, str, int, tuple]] = []
        seen: set[tuple[int, int]] = {(id(obj), node_id)}
        add = matches.append
        root = self.root() if node_id == 0 else None
        nchild = self._num_children()
        cached_adapter = _adapter_cache.get
        visit = [0]  # indices of the matches to look below
        for k in visit:  # grows while it is walked: breadth-first
            o, adapter, nid, _parent, _name = matches[k]
            a, b = child_start[nid], child_start[nid + 1]
            if a != b:
                names = child_name[a:b]
                at_root = o is root and k == 0
                if at_root:
                    children = live_children(o, adapter, path, self._extra_children())
                else:   # checked below, unless they line up with the saved (distinct) names
                    where = partial(_path, matches, k, path)  # (a path built on error only)
                    children = adapter_children(o, adapter, where)
                if (_match_aligned is not None and matched is None and type(children) is list
                        and len(children) == b - a and type(names) is list and type(child_id) is list
                        and _match_aligned(children, names, child_id[a:b], shared, _adapter_cache, _LEAF_ADAPTERS,
                                           _is_leaf_type, nchild, k, matches, visit)):
                    continue  # the steps below, in one C loop
                if not at_root:
                    children = checked_children(children, adapter, where)
                if matched is None and len(children) == b - a and type(names) is list:
                    ids = child_id[a:b]
                    if list(map(_first, children)) == names and shared.isdisjoint(ids):
                        objs = list(map(_second, children))
                        try:
                            adapters = list(map(cached_adapter, map(type, objs)))
                        except TypeError:  # an unhashable metaclass: the per-child path
                            adapters = [None]
                        if None not in adapters:
                            first = len(matches)
                            matches.extend(zip(objs, adapters, ids, repeat(k), names))
                            leaves = all(map(_is_leaf_type, set(map(type, adapters))))
                            if not leaves or any(map(nchild.__getitem__, ids)):
                                visit.extend(i for i in range(first, len(matches))
                                             if nchild[matches[i][2]] or not _is_leaf(matches[i][1]))
                            continue
                get = dict(children).get
                absent = 0
                for name, cid in zip(names, child_id[a:b]):
                    child = get(name)
                    if child is None:
                        absent += 1
                        # only a subtree with values waits for its object (TF's has_checkpoint_values); an
                        # edge of a node to itself (TF's root self-edge "root") leads to the parent, matched
                        if cid != nid and self._valued_nodes()[cid]:
                            pending.append((o, name, cid, _path(matches, k, path) + (name,)))
                        continue
                    if cid in shared:
                        key = (id(child), cid)
                        if key in seen:
                            continue
                        seen.add(key)
                    if matched is not None and matched.matched_node(child) == cid:
                        continue
                    child_adapter = adapter_or_none(child)
                    if child_adapter is None:  # the message is built only on failure
                        child_adapter = find_adapter(
                            child, what=f"object {display_path(_path(matches, k, path) + (name,))!r}")
                    if nchild[cid] or not _is_leaf(child_adapter):
                        visit.append(len(matches))
                    add((child, child_adapter, cid, k, name))
                if len(children) != b - a - absent and not self.live_extra:
                    # live children the checkpoint lacks (at the root, names it ignores are fine)
                    self._note_extra_children(children, names, o is root and k == 0)
            elif not self.live_extra and (k or node_id) and not _is_leaf(adapter):
                if live_children(o, adapter, partial(_path, matches, k, path)):
                    self.live_extra = True
            elif not self.live_extra and o is root and k == 0 and (self._extra_refs or not _is_leaf(adapter)):
                self._note_extra_children(live_children(o, adapter, path, self._extra_children()), [], True)
        return matches, pending

    def _num_children(self) -> list[int]:
        """Per node: how many saved edges leave it (a list, for C-level lookups)."""
        if self._nchild is None:
            self._nchild = np.diff(int64_column(self.graph.child_start)).tolist()
        return self._nchild

    def _note_extra_children(self, children, saved_names, at_root: bool) -> None:
        extra = set(dict(children)) - set(saved_names)
        if extra and not (at_root and extra <= self.ignore_live_names):
            self.live_extra = True

    def _valued_nodes(self) -> np.ndarray:
        """Per node: whether it or a node below it holds a value (attributes, adapter state or slots)."""
        if self._valued is None:
            g = self.graph
            n = len(g)
            attr_start = int64_column(g.attr_start)
            valued = attr_start[1:n + 1] != attr_start[:n]
            extra = [nid for nid in (*g.state, *g.slots) if 0 <= nid < n]
            valued[extra] = True
            starts = int64_column(g.child_start)
            parents = np.repeat(np.arange(n, dtype=np.int64), np.diff(starts[:n + 1]))
            children = int64_column(g.child)
            while True:   # up the edges until nothing changes (a path or a cycle: at most n rounds)
                up = np.zeros(n, bool)
                up[parents[valued[children]]] = True
                new = valued | up
                if (new == valued).all():
                    break
                valued = new
            self._valued = valued
        return self._valued

    def _shared_nodes(self) -> set[int]:
        """Node ids more than one edge leads to, and the root: a walk can reach only these twice."""
        if self._shared is None:
            indeg = np.bincount(int64_column(self.graph.child), minlength=len(self.graph))
            self._shared = set(np.flatnonzero(indeg > 1).tolist()) | {0}
        return self._shared

    def _shadowed(self, matches: list[tuple]) -> set[int] | None:
        """Indices of the matches whose objects a newer restore already filled (TF: ``_update_uid``)."""
        uid, get = self.uid, _UPDATE_UID.get
        out = {k for k, m in enumerate(matches) if get(m[0], 0) > uid}
        return out or None

    def _record_update_uid(self, matches: list[tuple], shadowed: set[int] | None) -> None:
        """Remember which objects this restore filled, for older restores still waiting."""
        g, uid = self.graph, self.uid
        attr_start, states, slots = g.attr_start, g.state, g.slots
        get, put = _UPDATE_UID.get, _UPDATE_UID.put
        for k, m in enumerate(matches):
            nid = m[2]
            if shadowed is not None and k in shadowed:
                continue
            if attr_start[nid] != attr_start[nid + 1] or nid in states or nid in slots:
                if get(m[0], 0) < uid:
                    put(m[0], uid)

    def _plan_values(self, matches: list[tuple], base: tuple = (), shadowed: set[int] | None = None):
        """Check every value first (nothing is assigned if any check fails).

        Returns the reads, as three parallel lists (table rows, destinations, callbacks),
        and the state setters to run after them. Matches in ``shadowed`` are skipped.
        """
        g, table = self.graph, self.table
        attr_start, attr_name, states = g.attr_start, g.attr_name, g.state
        t_dtype = table.dtype
        rows: list[int] = []
        dests: list[Any] = []
        callbacks: list[Any] = []
        add_row, add_dest, add_cb = rows.append, dests.append, callbacks.append
        after = []
        errors = []
        fast_dtypes = fmt.FAST_DTYPES
        todo: Sequence[int] = range(len(matches))
        if (_plan_plain_arrays is not None and shadowed is None and type(attr_start) is list
                and type(attr_name) is list and type(t_dtype) is list):
            # plain arrays planned in C (against the shape columns of a decoded index: no shape tuple made);
            # the Python loop below sees only the other matches
            shapes = table.shape_index()
            todo = _plan_plain_arrays(matches, attr_start, attr_name, states,
                                      table.shape if shapes is None else shapes, t_dtype, fast_dtypes,
                                      NumpyArrayAdapter, VARIABLE_VALUE, _DEFAULT_ATTRS, rows, dests, callbacks,
                                      _offers_in_place)
        t_shape = table.shapes_for(len(todo))   # (few matches left: their rows' tuples only)
        for k in todo:
            if shadowed is not None and k in shadowed:
                continue
            match = matches[k]
            nid = match[2]
            a, b = attr_start[nid], attr_start[nid + 1]
            if a != b:
                obj, adapter = match[0], match[1]
                if (type(adapter) is NumpyArrayAdapter and b == a + 1 and type(obj) is np.ndarray
                        and attr_name[a] == VARIABLE_VALUE and nid not in states):
                    # The built-in adapter, inlined (most leaves of numpy models): its spec, a writable
                    # C-contiguous array is its own restore buffer, and its set_value is then a no-op.
                    flags = obj.flags
                    if (obj.shape == t_shape[a] and obj.dtype is fast_dtypes.get(t_dtype[a]) and flags.writeable
                            and flags.c_contiguous):
                        add_row(a)
                        add_dest(obj)
                        add_cb(None)
                        continue
                elif (b == a + 1 and _offers_in_place(type(adapter)) and attr_name[a] == VARIABLE_VALUE
                        and nid not in states):
                    # the adapter's own shortcut (Adapter.value_in_place): the object's memory, nothing else to call
                    try:
                        buf = adapter.value_in_place(obj)
                    except Exception as e:
                        errors.append(_spec_failed(_path(matches, k, base), table.key_at(a), adapter, e,
                                                   "value_in_place()"))
                        continue
                    if buf is not None and type(buf) is np.ndarray:
                        flags = buf.flags
                        if (flags.writeable and flags.c_contiguous and buf.shape == t_shape[a]
                                and buf.dtype == (fast_dtypes.get(t_dtype[a]) or table.np_dtype(a))):
                            add_row(a)
                            add_dest(buf)
                            add_cb(None)
                            continue
                try:
                    live_attrs = adapter.attributes(obj)
                    if type(live_attrs) is not list or len(live_attrs) > 8:
                        live_attrs = set(live_attrs)
                except Exception as e:  # an adapter bug, named with the mismatches, before any assignment
                    errors.append(_spec_failed(_path(matches, k, base), table.key_at(a), adapter, e, "attributes()"))
                    continue
                if len(live_attrs) > b - a:
                    self.live_extra = True  # more live attributes than saved ones
                spec, restore_buffer, set_value = adapter.spec, adapter.restore_buffer, adapter.set_value
                for t in range(a, b):
                    attr = attr_name[t]
                    if attr not in live_attrs:
                        self.unused_attrs.add(table.key_at(t))
                        if len(live_attrs) >= b - a:
                            self.live_extra = True  # a live attribute the checkpoint lacks takes its place
                        continue
                    try:
                        shape, dtype = spec(obj, attr)
                    except CheckpointError as e:
                        where = display_path(_path(matches, k, base))
                        errors.append(type(e)(f"cannot restore {where} ({table.key_at(t)}): {e}"))
                        continue
                    except Exception as e:  # an adapter bug: named, as the other mismatches, before any assignment
                        errors.append(_spec_failed(_path(matches, k, base), table.key_at(t), adapter, e))
                        continue
                    np_dtype = fast_dtypes.get(t_dtype[t])
                    if np_dtype is None:
                        np_dtype = table.np_dtype(t)
                    entry_shape = t_shape[t]
                    if not (type(shape) is tuple and shape == entry_shape and dtype is np_dtype):
                        # messages are built only here, off the common case
                        err = _spec_error(_path(matches, k, base), table.entry(t), shape, dtype)
                        if err is not None:
                            if not (type(err) is DtypeMismatchError and _accepts(adapter, obj, attr, np_dtype)):
                                errors.append(err)
                                continue
                            add_row(t)   # a conversion the adapter does itself: read as stored, handed over
                            add_dest(None)
                            add_cb(partial(set_value, obj, attr))
                            continue
                    try:
                        dest = restore_buffer(obj, attr)
                    except Exception as e:
                        errors.append(_spec_failed(_path(matches, k, base), table.key_at(t), adapter, e,
                                                   "restore_buffer()"))
                        continue
                    if dest is not None and not (isinstance(dest, np.ndarray) and dest.flags.c_contiguous
                                                 and dest.flags.writeable and dest.dtype == np_dtype
                                                 and dest.shape == entry_shape):
                        if type(dest) is ShardBuffer and dest.dtype == np_dtype and dest.shape == entry_shape:
                            if self._partial is None:
                                self._partial = []
                            self._partial.append((t, dest, partial(set_value, obj, attr)))
                            continue
                        dest = None
                    add_row(t)
                    add_dest(dest)
                    add_cb(partial(set_value, obj, attr))  # set_value(obj, attr, arr)
            elif not self.live_extra and not _keeps_default_attributes(match[1]) and match[1].attributes(match[0]):
                self.live_extra = True  # live attributes where the checkpoint has none
            state = states.get(nid) if states else None
            if state is not None:
                where = display_path(_path(matches, k, base))
                validate = getattr(match[1], "validate_state", None)
                if validate is not None:
                    try:
                        validate(match[0], state)
                    except Exception as e:  # an adapter's refusal, whatever its type: one ckptcore error
                        errors.append(_state_error(match[1], where, "its saved state does not fit the live object", e))
                        continue
                after.append(_state_setter(match[1], match[0], state, where))
        if errors:
            raise errors[0] if len(errors) == 1 else type(errors[0])(
                f"{len(errors)} values do not fit the live objects; nothing was restored. First: {errors[0]}")
        return (rows, dests, callbacks), after

    def matched_node(self, obj) -> int | None:
        """The checkpoint node ``obj`` was matched to by this session, or None.

        Example:
            >>> import numpy as np, ckptcore as ck
            >>> a = np.zeros(1); path = ck.Checkpoint(a=np.ones(1)).write("memory://doc/matched_node/c")
            >>> s = ck.Checkpoint(a=a).read(path).session
            >>> s.matched_node(a) is not None, s.matched_node(np.zeros(1))
            (True, None)
        """
        if self._unfiled:
            self._file_matches()
        key = id(obj)
        ref = self._matched_ref.get(key)
        if ref is not None and ref() is obj:
            return self._matched_nid[key]
        return None

    @property
    def node_objs(self) -> dict[int, Any]:
        """Checkpoint node id -> weak reference to its live object (a list of them if several matched it)."""
        if self._unfiled:
            self._file_matches()
        return self._node_objs

    def _commit_matches(self, matches: list[tuple], pending) -> None:
        self.matched_adapters.update(set(map(type, map(_second, matches))))
        # One weak reference per object serves both tables. A plain reference, without a removal callback:
        # an entry of a collected object only lingers until this session ends, and every lookup checks
        # identity anyway. Made now (whole columns), entered in the tables only when one is consulted.
        objs = list(map(_first, matches))
        try:
            refs = list(map(weakref.ref, objs))
        except TypeError:  # some object has no weak references: held strongly
            refs = [_ref(o) for o in objs]
        self._unfiled.append((refs, list(map(_third, matches))))   # (ids made when filed: _file_matches)
        del objs
        if pending:
            install_creation_hooks(notify_dependency_added)
        for parent, name, cid, p in pending:
            if isinstance(_ref(parent), _Strong):
                continue  # e.g. a tuple: it cannot gain children, and queueing would keep it alive forever
            waiting = _PENDING.get(parent)
            if waiting is None:
                waiting = {}
                _PENDING[parent] = waiting
            queued = waiting.setdefault(name, [])
            if not any(s is self and c == cid for s, c, _p in queued):
                queued.append((self, cid, p))
                _WAITING_UIDS[self.uid] = _WAITING_UIDS.get(self.uid, 0) + 1

    def _file_matches(self) -> None:
        """Enter the matches of earlier steps (``_unfiled``) in the session's tables, in order."""
        with _LOCK:  # a lookup on another thread waits until every step is entered
            refs, nids, node_objs = self._matched_ref, self._matched_nid, self._node_objs
            for step_refs, step_nids in self._unfiled:
                # keyed by id() of the objects still alive: one that died can never be looked up, and a
                # new object at its address must not find its entry
                live = [(id(o), ref, nid) for ref, nid in zip(step_refs, step_nids) if (o := ref()) is not None]
                refs.update((key, ref) for key, ref, _nid in live)
                nids.update((key, nid) for key, _ref, nid in live)
                del live
                if not node_objs and len(set(step_nids)) == len(step_nids):
                    node_objs.update(zip(step_nids, step_refs))  # one object per node (the common case)
                    continue
                for nid, ref in zip(step_nids, step_refs):
                    objs = node_objs.get(nid)
                    if objs is None:
                        node_objs[nid] = ref
                    elif type(objs) is list:
                        objs.append(ref)
                    else:
                        node_objs[nid] = [objs, ref]
            self._unfiled = []

    def _live(self, node_id: int) -> list:
        refs = self.node_objs.get(node_id)
        if refs is None:
            return []
        if type(refs) is not list:
            o = refs()
            return [] if o is None else [o]
        return [o for o in (r() for r in refs) if o is not None]

    # -- status queries ----------------------------------------------------------------
    def matched_node_count(self) -> int:
        return sum(1 for nid in self.node_objs if self._live(nid) or nid == 0)

    def unmatched_checkpoint_keys(self) -> list[str]:
        """Keys of checkpointed values no live object received."""
        return self._unmatched(locked=True)

    def _unmatched(self, locked: bool) -> list[str]:
        table = self.table
        if not len(table):
            return sorted(self.unused_attrs)
        # one boolean per checkpoint node, then a gather over the tensor table's node column
        ok = np.zeros(len(self.graph), bool)
        with _LOCK if locked else nullcontext():  # not while another thread enters the steps' matches
            if self._node_objs:
                ok[np.fromiter(self._node_objs, np.int64, len(self._node_objs))] = True
            for _refs, step_nids in self._unfiled:  # matched, not entered in node_objs yet
                ok[np.array(step_nids, np.int64)] = True
        if self._has_slots:
            slot_ids = [s for rows in self.graph.slots.values() for _, _, s in rows]
            ok[slot_ids] = False
            ok[[s for s in slot_ids if s in self.restored_slots]] = True
        missing = np.flatnonzero(~ok[self._table_nodes()])
        key_at = table.key_at   # (a version-6 index makes only these keys)
        out = [key_at(t) for t in missing.tolist()]
        out.extend(sorted(self.unused_attrs))
        return out

    def _table_nodes(self) -> np.ndarray:
        nodes = getattr(self, "_nodes_col", None)
        if nodes is None:
            nodes = self._nodes_col = int64_column(self.table.node)
        return nodes

    def live_graph_consumed(self) -> bool:
        """True when what matching saw proves every live object matched, without walking the graph again.

        That holds when no matched object had children or attributes the checkpoint lacks, every
        matched object's adapter announces new dependencies (``Adapter.announces_changes``), and
        none was announced since the last restore step. Otherwise :meth:`unmatched_live_paths`
        walks the live graph.
        """
        return (not self.live_extra and self.changes_seen == _deferred._CHANGES and self.root() is not None
                and all(getattr(t, "announces_changes", False) for t in self.matched_adapters))

    def unmatched_live_paths(self) -> list[str]:
        """Paths of live objects (or their values) the checkpoint had nothing for."""
        root = self.root()
        if root is None or self.live_graph_consumed():
            return []
        # the collector waits while the walk makes an object per live node (a full collection of a
        # torch model's heap, triggered by them, cost more than the walk: 55 -> 345 ms for 21,000 nodes)
        with paused_gc():
            return unmatched_live_paths(self, root, self._extra_children(), self.ignore_live_names)

    def nontrivial(self) -> bool:
        ignore = set()
        for name, cid in self.graph.children(0):
            if name in ("save_counter",):
                ignore.add(cid)
        return any(nid not in (0,) and nid not in ignore and self._live(nid) for nid in self.node_objs)


def _top_names(root, extra_root_children) -> list[str]:
    """The names of the live root's children, ``save_counter`` aside (matching a flat checkpoint)."""
    names = [n for n, _ in live_children(root, find_adapter(root), (), list(extra_root_children))]
    return [n for n in names if n != "save_counter"]
