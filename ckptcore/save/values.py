"""Turning what adapters give a save into what a checkpoint stores: arrays, dtype names, state.

:func:`ckptcore.save.plan_save` calls these for every value it collects: ``_as_array`` makes a
value a C-contiguous array of a supported dtype (or refuses it, naming the object),
``_check_state`` checks adapter state is JSON, ``_check_attributes`` and ``_refuse_key_clash``
refuse names that would give two values one key.

Example:
    >>> import numpy as np
    >>> arr, name = _as_array(np.arange(3, dtype=np.int16), lambda: "x")
    >>> name, arr.flags.c_contiguous
    ('int16', True)
"""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any, NoReturn

import numpy as np

from ..distributed.shards import ShardedValue
from ..dtypes import dtype_name, storage_dtype
from ..errors import CheckpointError, InvalidArgumentError, NotTrackableError, UnsupportedDtypeError
from ..formats import ckpt as fmt
from ..naming import display_path

_QUALNAMES: dict[type, str] = {}


def _qualname(obj: Any) -> str:
    cls = type(obj)
    name = _QUALNAMES.get(cls)
    if name is None:
        name = _QUALNAMES[cls] = f"{cls.__module__}.{cls.__qualname__}"
    return name


_DTYPE_INFO: dict[np.dtype, tuple[str, np.dtype]] = {}  # dtype -> (stored name, storage dtype)


def _dtype_info(dtype: np.dtype) -> tuple[str, np.dtype]:
    info = _DTYPE_INFO.get(dtype)
    if info is None:
        info = (dtype_name(dtype), storage_dtype(dtype))  # raises for unsupported dtypes: never cached
        _DTYPE_INFO[dtype] = info
    return info


def _string_array(arr: np.ndarray) -> tuple[np.ndarray, str] | None:
    """An object array of ``bytes`` (a TensorFlow-style string tensor) as ``(arr, "string")``; None otherwise."""
    flat = arr.reshape(-1)
    if all(isinstance(e, bytes) for e in flat):
        return np.array(flat, dtype=object).reshape(arr.shape), fmt.STRING_DTYPE  # a copy: elements as they are now
    return None


def _as_array(value: Any, where, strings: bool = False) -> tuple[np.ndarray, str]:
    """The C-contiguous little-endian array to write and its dtype name. ``where()`` names it in errors.

    With ``strings`` (a format that stores variable-length strings: TensorFlow's), an object array
    whose elements are all ``bytes`` is kept as dtype ``"string"``.
    """
    if isinstance(value, np.ndarray):
        arr = value if type(value) is np.ndarray else _plain(value, where)
    elif type(value) is ShardedValue:  # a multi-worker value: ckptcore.distributed writes its shards
        return value, _dtype_info(value.dtype)[0]  # type: ignore[return-value]
    elif value is None:
        raise CheckpointError(f"cannot save {where()}: its adapter's get_value() returned None; an adapter must "
                              "return the value as an array (or list it in attributes() only when it has one)")
    else:
        try:
            arr = np.asarray(value)
        except Exception as e:  # pragma: no cover - adapter bug
            raise CheckpointError(f"value of {where()} could not be converted to an array: {e}") from e
        if arr.dtype.kind == "O":  # an adapter bug, not a dtype choice: say what get_value returned
            raise UnsupportedDtypeError(f"cannot save {where()}: its adapter's get_value() returned "
                                        f"{type(value).__module__}.{type(value).__qualname__}, which is not an array "
                                        "(numpy makes it an object array, which no checkpoint stores)")
    info = _DTYPE_INFO.get(arr.dtype)
    if info is not None and info[1] is arr.dtype and arr.flags.c_contiguous:
        return arr, info[0]  # the common case: a supported little-endian dtype, laid out in C order
    if arr.dtype.kind == "O":
        found = _string_array(arr) if strings else None
        if found is not None:
            return found
        if strings:
            raise UnsupportedDtypeError(
                f"cannot save {where()}: it is an object array ({_object_kinds(arr)}); TensorFlow's string tensors "
                "hold bytes only: encode the elements first (np.array([s.encode() for s in values], dtype=object))")
        raise UnsupportedDtypeError(
            f"cannot save {where()}: it is an object array ({_object_kinds(arr)}); ckptcore's format stores only "
            "fixed-width arrays (an object array would need pickling to read back). For byte strings of varying "
            "length save with CheckpointOptions(format='tensorflow') (TensorFlow's string tensors), or convert "
            "to a fixed-width array first: np.array(values, dtype='S')")
    try:
        name, sd = _dtype_info(arr.dtype)
    except UnsupportedDtypeError as e:
        raise UnsupportedDtypeError(f"cannot save {where()}: {e}") from None
    if sd is not arr.dtype and sd != arr.dtype:
        arr = arr.astype(sd)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr, name


def _object_kinds(arr: np.ndarray) -> str:
    kinds = sorted({type(e).__name__ for e in arr.reshape(-1)[:1000]})
    return "elements of type " + ", ".join(kinds) if kinds else "no elements"


def _plain(value: np.ndarray, where) -> np.ndarray:
    """An ndarray subclass as the plain array of its data (``np.matrix``, ``np.memmap``); a masked array is
    refused: its mask would be lost, and its masked entries saved as if they were values."""
    if isinstance(value, np.ma.MaskedArray):
        raise NotTrackableError(f"cannot save {where()}: it is a numpy masked array, and a checkpoint holds its data "
                                "but not its mask; save the data and the mask as two arrays "
                                "(arr.data and np.ma.getmaskarray(arr)), or arr.filled(fill_value)")
    return value.view(np.ndarray)


def _check_state(state: Any, where: str) -> Any:
    try:
        json.dumps(state, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"state of {where} is not JSON-serializable: {e}") from None
    return state


def _adapter_failed(e: Exception, adapter: Any, method: str, path: tuple) -> NoReturn:
    """Re-raise an exception an adapter raised while its object was saved: a ckptcore error as it is,
    anything else as a CheckpointError naming the object and the adapter."""
    if isinstance(e, CheckpointError):
        raise e
    name = getattr(adapter, "name", type(adapter).__name__)
    raise CheckpointError(f"cannot save {display_path(path)}: {method} of its adapter {name!r} failed: "
                          f"{type(e).__name__}: {e}") from e


def _check_attributes(attrs: Any, adapter: Any, where: str) -> None:
    """``attributes()`` names each value once, as a string: two values under one name would be one key."""
    name = getattr(adapter, "name", type(adapter).__name__)
    if isinstance(attrs, (str, bytes)) or not all(type(a) is str for a in attrs):
        raise CheckpointError(f"cannot save {where}: attributes() of its adapter {name!r} must be a list of "
                              f"names (strings), got {attrs!r:.80}")
    if len(set(attrs)) != len(attrs):
        dup = next(a for k, a in enumerate(attrs) if a in attrs[:k])
        raise CheckpointError(f"cannot save {where}: attributes() of its adapter {name!r} names {dup!r} twice, "
                              "so two values would have one checkpoint key")


_var_and_name = itemgetter(0, 1)


def _refuse_twice_named_slots(slots: dict[int, list], path_of) -> None:
    """Two slots of one name for one variable would be two values under one key, which no reader accepts.

    ``slots``: optimizer node -> [(variable node, name, slot node)]; one set pass per optimizer.
    """
    for opt_id, rows in slots.items():
        if len(rows) < 2 or len(set(map(_var_and_name, rows))) == len(rows):
            continue
        seen: set = set()
        for var_id, name, _slot in rows:
            if (var_id, name) in seen:
                raise InvalidArgumentError(
                    f"cannot save: the adapter of {display_path(path_of(opt_id))!r} gave two slots named {name!r} "
                    f"for {display_path(path_of(var_id))!r}; each slot of a variable needs its own name "
                    "(fix its slots())")
            seen.add((var_id, name))


def _refuse_key_clash(keys: list[str]) -> None:
    """A child named ``""`` of the root has the root's key prefix (TensorFlow's naming gives both
    ``/.ATTRIBUTES/<attr>``): two values under one key would make a checkpoint no reader accepts."""
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise InvalidArgumentError(f"cannot save: the root and its child named '' would both store the key "
                                       f"{key!r} (a child named '' of the root is keyed as the root itself, as in "
                                       "TensorFlow); rename the child")
        seen.add(key)
