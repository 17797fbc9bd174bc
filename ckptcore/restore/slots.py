"""Optimizer slot variables in the restore's one planned read.

A slot (``exp_avg`` of one parameter) is a value of its own checkpoint node,
reached from the optimizer's node and the variable's node rather than by a
child edge. Once both are matched (in this restore step or an earlier one),
its tensor joins the same batched read as every other value, straight into
memory the optimizer's adapter offers (:meth:`Adapter.slot_restore_buffers`,
e.g. an existing state tensor), and the adapter then receives all the slots of
one step in one :meth:`Adapter.restore_slots` call. Nothing is read slot by
slot, and no step scans other objects per slot.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> class Opt:
    ...     def __init__(self, params): self.params, self.m = params, {}
    >>> class OptAdapter(ck.Adapter):
    ...     name = "doc.opt"
    ...     def slots(self, obj):
    ...         return [ck.SlotVariable(p, "m", obj.m[id(p)]) for p in obj.params if id(p) in obj.m]
    ...     def restore_slot(self, obj, variable, name, value):
    ...         obj.m[id(variable)] = value
    >>> _ = ck.register_adapter(Opt, OptAdapter())
    >>> w = np.ones(2); opt = Opt([w]); opt.m[id(w)] = np.full(2, 0.5)
    >>> path = ck.Checkpoint(w=w, opt=opt).write("memory://doc/slots/c")
    >>> w2 = np.zeros(2); opt2 = Opt([w2])
    >>> ck.Checkpoint(w=w2, opt=opt2).read(path).assert_consumed() is not None
    True
    >>> opt2.m[id(w2)].tolist()
    [0.5, 0.5]
"""

from __future__ import annotations

from itertools import repeat
from operator import is_not
from typing import Any

import numpy as np

from ..distributed.shards import ShardBuffer
from ..errors import CheckpointError
from ..formats import ckpt as fmt
from . import _compiled
from .deferred import _ref

__all__ = ["SlotReads", "plan_slot_reads"]


class SlotReads:
    """The slots of one restore step: rows added to the read, and what to hand to adapters after it."""

    __slots__ = ("session", "per_opt", "values", "slot_ids", "in_buffers")

    def __init__(self, session):
        self.session = session
        # id(optimizer) -> [optimizer, adapter, [(variable, name, table row)]]
        self.per_opt: dict[int, list] = {}
        self.values: dict[int, Any] = {}   # table row -> the array read for it
        self.slot_ids: list[int] = []
        self.in_buffers: set[int] = set()   # rows read into memory an adapter offered (that adapter's own)

    def finish(self) -> None:
        """After the read: each optimizer's adapter receives its slots in one call."""
        values = self.values
        taken = set(self.in_buffers)   # rows whose array an adapter already holds (and may keep)
        for opt, adapter, requests, buffers in self.per_opt.values():
            items = []
            in_place = getattr(adapter, "slot_buffers_in_place", False) is True
            for (variable, name, row), buf in zip(requests, buffers):
                value = values[row]
                if value is not buf:   # a buffer the adapter offered is its own; a fresh array is given once
                    if row in taken:
                        value = value.copy()
                    else:
                        taken.add(row)
                elif in_place and type(buf) is not ShardBuffer:
                    continue   # read into the slot's own memory: restored already (a sharded slot's boxes are not)
                items.append((variable, name, value))
            if in_place and not items:
                continue
            restore = getattr(adapter, "restore_slots", None)
            if restore is not None:
                restore(opt, items)
            else:  # an adapter that does not subclass ck.Adapter: the per-slot method
                for variable, name, value in items:
                    adapter.restore_slot(opt, variable, name, value)
        self.session.restored_slots.update(self.slot_ids)

    def record_update_uid(self, table, uid: int) -> None:
        """Record restore ``uid`` for every slot this step filled (an older restore still waits)."""
        for opt, _adapter, requests, _buffers in self.per_opt.values():
            slots = table.get(opt)
            if slots is None:
                slots = {}
                table[opt] = slots
            for var, name, _row in requests:
                # (an object that cannot be weakly referenced is held, only while an older restore waits)
                slots[(id(var), name)] = (_ref(var), uid)


def plan_slot_reads(session, matches: list[tuple], rows: list, dests: list, callbacks: list) -> SlotReads | None:
    """Add the reads of every slot whose optimizer and variable are now both matched.

    ``matches`` are this step's matches (``RestoreSession._match``); objects matched by earlier
    steps come from the session. The rows, destinations and callbacks are appended to the
    step's read lists. Returns None when no slot is due.

    Per slot this costs a few list and dict steps: an optimizer of 20,000 parameters has 60,000
    slots (Adam), and each node matched once in one step (the usual restore) takes the short path.
    """
    graph = session.graph
    slots, slot_vars = graph.slots, session._slot_vars
    here: dict[int, list] = {}   # node id -> [(obj, adapter)] matched in this step, slot-related nodes only
    for m in matches:
        nid = m[2]
        if nid in slots or nid in slot_vars:
            got = here.get(nid)
            if got is None:
                here[nid] = [(m[0], m[1])]
            else:
                got.append((m[0], m[1]))
    if not here:
        return None
    # per optimizer node, the slots due: all of one matched now; of one matched before, those of variables matched now
    due: dict[int, list] = {nid: slots[nid] for nid in here if nid in slots}
    if len(due) < len(slots):   # some optimizer node is not matched in this step
        by_var = session._slots_by_var
        for nid in here:
            for opt_id, name, slot_id in by_var.get(nid, ()):
                if opt_id not in here:
                    due.setdefault(opt_id, []).append((nid, name, slot_id))
    if not due:
        return None
    attr_start, table = graph.attr_start, session.table
    plan = SlotReads(session)
    per_opt = plan.per_opt
    slot_ids = plan.slot_ids
    wanted: dict[int, None] = {}   # table rows to read, once each, in order
    live = session._live
    earlier = bool(session._node_objs or session._unfiled)   # False: nothing was matched before this step

    def objs(nid):
        got = here.get(nid)
        if not earlier:
            return got or ()
        if got is not None:
            prev = live(nid)
            return got + [(o, None) for o in prev if all(o is not g[0] for g in got)] if prev else got
        return [(o, None) for o in live(nid)]

    from .deferred import _SLOT_UPDATE_UID

    newer, uid = (_SLOT_UPDATE_UID if _SLOT_UPDATE_UID._d else None), session.uid
    cache: dict[int, Any] = {}
    cache_get = cache.get if earlier else here.get
    t_shape, t_dtype = table.shape, table.dtype
    # the helpers below (compiled where built) take the index's columns as lists
    lists = type(attr_start) is list and type(t_shape) is list and type(t_dtype) is list
    _due_once, _specs, _dests, _fresh = _helpers(lists)
    for opt_id, entries in due.items():
        opts = objs(opt_id)
        if not opts:
            continue
        targets = []   # (optimizer, its request list) for each live object of this node
        for opt, adapter in opts:
            entry = per_opt.get(id(opt))
            if entry is None:
                if adapter is None:
                    from ..registry import find_adapter

                    adapter = find_adapter(opt)
                entry = per_opt[id(opt)] = [opt, adapter, [], None]
            targets.append((opt, entry[2]))
        # the short path: one optimizer, each variable matched once, no newer restore of any slot
        one = targets[0][1].append if len(targets) == 1 and newer is None else None
        if one is not None and not earlier:
            # (nothing matched before this step: every slot up to the first variable matched twice)
            done = _due_once(entries, attr_start, here, slot_ids, targets[0][1], wanted)
            if done == len(entries):
                continue
            entries = entries[done:]
        for var_id, name, slot_id in entries:
            a = attr_start[slot_id]
            if a == attr_start[slot_id + 1]:
                continue   # a slot node without a value
            vars_ = cache_get(var_id)   # (nothing matched earlier: this step's matches themselves)
            if vars_ is None:
                if not earlier:
                    continue
                vars_ = cache[var_id] = objs(var_id)
            if not vars_:
                continue
            slot_ids.append(slot_id)   # matched, also where a newer restore's value is kept
            if one is not None and len(vars_) == 1:
                one((vars_[0][0], name, a))
                wanted[a] = None
                continue
            for opt, requests in targets:
                for var, _ in vars_:
                    if newer is not None and _newer_slot(newer, opt, var, name, uid):
                        continue   # a newer restore filled this slot (TF: the slot variable's _update_uid)
                    requests.append((var, name, a))
                    wanted[a] = None
    for key in [k for k, e in per_opt.items() if not e[2]]:
        del per_opt[key]   # an optimizer none of whose slots is due: its adapter is not called
    if not slot_ids:
        return None
    # Memory the adapters offer for their slots (existing state tensors, say), asked once per optimizer.
    fast, in_buffers, values = fmt.FAST_DTYPES, plan.in_buffers, plan.values
    for entry in per_opt.values():
        opt, adapter, requests = entry[0], entry[1], entry[2]
        offer = getattr(adapter, "slot_restore_buffers", None)
        specs = _specs(requests, t_shape, t_dtype, fast, table.np_dtype)
        buffers = list(offer(opt, specs)) if offer is not None else [None] * len(requests)
        if len(buffers) != len(requests):
            raise CheckpointError(f"adapter {getattr(adapter, 'name', adapter)!r}: slot_restore_buffers returned "
                                  f"{len(buffers)} buffers for {len(requests)} slots")
        entry[3] = buffers
        if not any(map(is_not, buffers, repeat(None))):
            continue   # nothing offered (a fresh optimizer): fresh arrays below
        # arrays offered: read into them (checked first); the rest (a sharded slot's boxes, or no array) here
        for k in _dests(requests, buffers, specs, in_buffers, values, rows, dests, callbacks):
            buf, spec, row = buffers[k], specs[k], requests[k][2]
            if type(buf) is ShardBuffer and buf.dtype == spec[3] and buf.shape == tuple(spec[2]):
                if row not in in_buffers:  # a sharded variable's slot: this worker's boxes of it
                    in_buffers.add(row)
                    if session._partial is None:
                        session._partial = []
                    session._partial.append((row, buf, partial_got(plan, row)))
                continue
            buffers[k] = None   # not usable as read memory: read into a fresh array instead
    # No adapter offered memory: a fresh array, made here (what the reader would make), is the value.
    # (finish hands it over only after the read succeeded; a big-endian host has the reader deliver it
    # through a callback, which byte-swaps.)
    if np.little_endian:
        _fresh(list(wanted), in_buffers, t_shape, t_dtype, fast, table.np_dtype, values, rows, dests, callbacks)
    else:  # pragma: no cover - big-endian hosts
        for row in wanted:
            if row not in in_buffers:
                rows.append(row)
                dests.append(None)
                callbacks.append(partial_got(plan, row))
    return plan


# -- the per-slot loops: Python here, compiled twins in _plan_fast.pyx (same arguments, same results) -----
def _helpers(lists: bool) -> tuple:
    """The four per-slot loops: compiled where built and the index's columns are lists, else these."""
    if lists and _compiled.slot_dests is not None:
        return _compiled.due_once, _compiled.slot_specs, _compiled.slot_dests, _compiled.fresh_slot_arrays
    return due_once, slot_specs, slot_dests, fresh_slot_arrays


def due_once(entries: list, attr_start: list, here: dict, slot_ids: list, requests: list, wanted: dict) -> int:
    """Add the slots of ``entries`` (``(variable node, name, slot node)``) whose variable node is matched
    to exactly one object in this step (``here``); stop at the first matched to several and return
    its position (``len(entries)`` when all were done). A slot node without a value is skipped, as
    is one whose variable is not matched.

    Example:
        >>> slot_ids, requests, wanted = [], [], {}
        >>> due_once([(1, "m", 2), (3, "m", 4)], [0, 0, 0, 1, 1, 1], {1: [("w", None)]}, slot_ids, requests, wanted)
        2
        >>> slot_ids, requests, list(wanted)
        ([2], [('w', 'm', 0)], [0])
    """
    for k, (var_id, name, slot_id) in enumerate(entries):
        a = attr_start[slot_id]
        if a == attr_start[slot_id + 1]:
            continue   # a slot node without a value
        vars_ = here.get(var_id)
        if not vars_:
            continue
        if len(vars_) != 1:
            return k
        slot_ids.append(slot_id)
        requests.append((vars_[0][0], name, a))
        wanted[a] = None
    return len(entries)


def slot_specs(requests: list, t_shape: list, t_dtype: list, fast: dict, np_dtype) -> list:
    """``(variable, name, shape, dtype)`` of each ``(variable, name, table row)``: what adapters are offered.

    Example:
        >>> import numpy as np
        >>> slot_specs([("w", "m", 0)], [(2,)], ["float32"], {"float32": np.dtype("float32")}, None)
        [('w', 'm', (2,), dtype('float32'))]
    """
    return [(var, name, t_shape[row], fast.get(t_dtype[row]) or np_dtype(row)) for var, name, row in requests]


def slot_dests(requests: list, buffers: list, specs: list, in_buffers: set, values: dict,
               rows: list, dests: list, callbacks: list) -> list[int]:
    """Read each slot into the array an adapter offered for it, where that array is usable.

    Usable: an ``np.ndarray``, writable and C-contiguous, of the slot's dtype and shape. Its row
    is then read into it (once: a row in ``in_buffers`` already is not read again) and the array
    is the slot's value. An offered array that is not usable is replaced by None in ``buffers``
    (the slot is read into a fresh array). Returns the positions of the offers that are neither
    None nor an array (a sharded slot's ``ShardBuffer``), for the caller.

    Example:
        >>> import numpy as np
        >>> a, b = np.zeros(2, np.float32), np.zeros(3, np.float32)
        >>> specs = [("w", "m", (2,), a.dtype), ("v", "m", (2,), a.dtype), ("u", "m", (2,), a.dtype)]
        >>> buffers, rows, values = [a, b, "other"], [], {}
        >>> slot_dests([("w", "m", 5), ("v", "m", 6), ("u", "m", 7)], buffers, specs, set(), values, rows, [], [])
        [2]
        >>> rows, values[5] is a, buffers[1]
        ([5], True, None)
    """
    rest = []
    for k, (buf, spec) in enumerate(zip(buffers, specs)):
        if buf is None:
            continue
        if not isinstance(buf, np.ndarray):
            rest.append(k)
            continue
        if not (buf.flags.c_contiguous and buf.flags.writeable and buf.dtype == spec[3] and buf.shape == spec[2]):
            buffers[k] = None   # not usable as read memory: read into a fresh array instead
            continue
        row = requests[k][2]
        if row not in in_buffers:
            in_buffers.add(row)   # read straight into it: the buffer is the value (no callback)
            values[row] = buf     # (finish runs only after the read succeeded)
            rows.append(row)
            dests.append(buf)
            callbacks.append(None)
    return rest


def fresh_slot_arrays(wanted: list, in_buffers: set, t_shape: list, t_dtype: list, fast: dict, np_dtype,
                      values: dict, rows: list, dests: list, callbacks: list) -> None:
    """Read every row of ``wanted`` not in ``in_buffers`` into a new array of its shape and dtype, its value.

    Example:
        >>> import numpy as np
        >>> values, rows, dests = {}, [], []
        >>> fresh_slot_arrays([0, 1], {1}, [(2,), ()], ["int8", "int8"], {"int8": np.dtype("int8")}, None,
        ...                   values, rows, dests, [])
        >>> rows, values[0].shape, dests[0] is values[0]
        ([0], (2,), True)
    """
    empty = np.empty
    for row in wanted:
        if row not in in_buffers:
            rows.append(row)
            values[row] = arr = empty(t_shape[row], fast.get(t_dtype[row]) or np_dtype(row))
            dests.append(arr)
            callbacks.append(None)


def _newer_slot(table, opt, var, name: str, uid: int) -> bool:
    """Whether a restore newer than ``uid`` already filled slot ``name`` of ``var`` in ``opt``."""
    slots = table.get(opt)
    if not slots:
        return False
    got = slots.get((id(var), name))
    return got is not None and got[0]() is var and got[1] > uid


def partial_got(plan: SlotReads, row: int):
    """The read callback that records slot row ``row``'s array in ``plan``."""
    values = plan.values

    def got(value):
        values[row] = value
    return got
