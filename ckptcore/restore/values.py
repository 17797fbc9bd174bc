"""Helpers of restore planning: value checks and their messages, aliasing, adapter state.

:meth:`ckptcore.restore.session.RestoreSession._plan_values` checks every value against its
live object before anything is assigned; the checks that fail build their messages here,
off the common path. :func:`_unalias` gives each read its own memory.

Example:
    >>> import numpy as np
    >>> a = np.zeros(4); dests, cbs = [a, a[2:]], [None, None]
    >>> _unalias(dests, cbs); dests[1] is None, cbs[1] is not None
    (True, True)
"""

from __future__ import annotations

from functools import partial
from itertools import repeat
from operator import attrgetter, is_

import numpy as np

from ..adapters import _keeps_method
from ..dtypes import storage_dtype
from ..errors import AdapterStateError, CheckpointError, DtypeMismatchError, ShapeMismatchError
from ..formats import ckpt as fmt
from ..naming import display_path
from . import _compiled

MAX_LISTED = 5
_base = attrgetter("base")


_DEFAULT_ATTRS: dict[type, bool] = {}


_NO_IN_PLACE: dict[type, bool] = {}


def _offers_in_place(cls: type) -> bool:
    """Whether adapter class ``cls`` overrides ``Adapter.value_in_place``: cached."""
    return not _keeps_method(_NO_IN_PLACE, cls, "value_in_place", if_missing=True)


def _keeps_default_attributes(adapter) -> bool:
    """Whether ``adapter`` keeps ``Adapter.attributes`` (never any attribute): cached per class."""
    return _keeps_method(_DEFAULT_ATTRS, type(adapter), "attributes")


def _unalias(dests: list, callbacks: list) -> None:
    """Give every read its own destination memory (in place on the parallel lists).

    One live object matched to two checkpoint nodes (or two views of one
    buffer) would otherwise receive two tensors in one pass, and the reader,
    which checks each tensor's checksum after filling its destination, would
    see the second overwrite the first. Overlapping reads get a fresh array;
    their setters copy it in.
    """
    got = _compiled.data_spans(dests) if _compiled.data_spans is not None else None
    if got is not None:  # every span, compared with numpy (100,000 arrays: 1-2 ms)
        starts, ends, index = got
        if (starts[1:] >= ends[:-1]).all():
            return  # in address order already (arrays made one after another), none overlapping
        by_start = np.argsort(starts, kind="stable")   # (addresses nearly in order: a radix sort, linear)
        if (starts[by_start][1:] >= ends[by_start][:-1]).all():
            return  # no span starts before the one before it ends: nothing overlaps
        order = np.lexsort((index, ends, starts))   # (ties in a fixed order: which read gets a fresh array)
        spans = list(zip(starts[order].tolist(), ends[order].tolist(), index[order].tolist()))
    else:
        live = [d for d in dests if d is not None]
        if _distinct(live) and all(map(is_, map(_base, live), repeat(None))):
            return  # distinct arrays that each own their memory (no base) cannot overlap
        spans = []
        for i, dest in enumerate(dests):
            if dest is not None and dest.nbytes:
                start = dest.__array_interface__["data"][0]
                spans.append((start, start + dest.nbytes, i))
        spans.sort()
    if len(spans) > 1:
        end = -1
        for start, stop, i in spans:
            if start < end:
                # a read without a callback fills its live array in place (the inlined numpy adapter):
                # it now reads into a fresh array, copied into the live one as set_value would
                if callbacks[i] is None:
                    callbacks[i] = partial(_fill, dests[i])
                dests[i] = None
            else:
                end = stop


def _distinct(objs: list) -> bool:
    """Whether no object appears twice in ``objs`` (their ids sorted with numpy: a set of 100,000 ids takes 3x longer).

    Example:
        >>> a = object(); _distinct([a, object()]), _distinct([a, a])
        (True, False)
    """
    if len(objs) < 2:
        return True
    ids = np.fromiter(map(id, objs), np.uint64, len(objs))
    ids.sort()
    return bool((ids[1:] != ids[:-1]).all())


def _fill(dest: np.ndarray, value: np.ndarray) -> None:
    dest[...] = value


def _spec_error(path: tuple, entry: fmt.TensorEntry, shape, dtype) -> CheckpointError | None:
    """The error for a live spec that does not match ``entry``, or None if it matches after all."""
    where = display_path(path)
    try:
        shape = tuple(int(d) for d in shape)
        np.dtype(dtype)
    except (TypeError, ValueError) as e:
        return CheckpointError(f"cannot restore {where} ({entry.key}): its adapter's spec() must return (shape, "
                               f"numpy dtype), got ({shape!r:.60}, {dtype!r:.60}): {e}")
    if shape != tuple(entry.shape):
        return ShapeMismatchError(
            f"shape mismatch for {where} (key {entry.key!r}): the checkpoint has {tuple(entry.shape)}, "
            f"the live object has {shape}. Build the object with the checkpoint's shape, or restore "
            "a checkpoint made for this model.")
    if storage_dtype(np.dtype(dtype)) != entry.np_dtype:  # byte order alone is not a mismatch
        return DtypeMismatchError(
            f"dtype mismatch for {where} (key {entry.key!r}): the checkpoint has {entry.dtype}, "
            f"the live object has {np.dtype(dtype).name}.")
    return None


def _spec_failed(path: tuple, key: str, adapter, e: Exception, method: str = "spec()") -> CheckpointError:
    """The error for an adapter whose ``spec()`` (or ``attributes()``, ``restore_buffer()``) raised, or
    whose ``spec()`` did not return a pair."""
    return CheckpointError(f"cannot restore {display_path(path)} ({key}): {method} of its adapter "
                           f"{getattr(adapter, 'name', type(adapter).__name__)!r} failed: {type(e).__name__}: {e}")


def _set_value_failed(e: Exception, rows: list, callbacks: list, table) -> AdapterStateError:
    """The ckptcore error for an exception a value's callback (``partial(adapter.set_value, obj, attr)``)
    raised while a restore delivered values: the key and adapter of the callback whose frame raised it."""
    frames = []
    tb = e.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for row, cb in zip(rows, callbacks):
        func = getattr(cb, "func", None)
        code = getattr(getattr(func, "__func__", func), "__code__", None)
        args: tuple = tuple(getattr(cb, "args", ()))
        if code is None or len(args) < 2:
            continue
        for f in frames:
            if f.f_code is code and any(v is args[0] or (type(v) is tuple and any(x is args[0] for x in v))
                                        for v in f.f_locals.values()):  # (obj, or *args holding it)
                adapter = getattr(func, "__self__", None)
                name = getattr(adapter, "name", type(adapter).__name__)
                return AdapterStateError(f"cannot restore {table.key_at(row)!r}: set_value() of its adapter {name!r} "
                                         f"failed: {type(e).__name__}: {e} (values delivered before it are in place)")
    return AdapterStateError(f"cannot restore: an adapter failed while values were delivered: {type(e).__name__}: {e}")


def _accepts(adapter, obj, attr: str, stored: np.dtype) -> bool:
    """Whether ``adapter`` converts a value of dtype ``stored`` itself (:meth:`Adapter.accepts_dtype`)."""
    accepts = getattr(adapter, "accepts_dtype", None)
    return accepts is not None and accepts(obj, attr, stored) is True


def _path(matches: list[tuple], k: int, base: tuple) -> tuple:
    """The path of ``matches[k]`` (see ``RestoreSession._match``), below ``base``, the first match's."""
    names = []
    while k > 0:
        m = matches[k]
        names.append(m[4])
        k = m[3]
    return base + tuple(reversed(names))


def _state_setter(adapter, obj, state, where: str):
    def assign():
        try:
            adapter.set_state(obj, state)
        except Exception as e:
            raise _state_error(adapter, where, "restoring its saved state failed", e) from e
    return assign


def _state_error(adapter, where: str, what: str, e: Exception) -> AdapterStateError:
    name = getattr(adapter, "name", type(adapter).__name__)
    return AdapterStateError(f"cannot restore {where}: {what} (adapter {name!r}): {type(e).__name__}: {e}")


def _summary(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    more = f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return f"{len(items)} {kind}: {shown}{more}"
