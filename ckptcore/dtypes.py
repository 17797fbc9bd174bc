"""The dtypes a checkpoint may hold, by stable name.

Only names on this allowlist are ever turned back into dtypes, so a hostile
index cannot ask for ``object`` arrays. Data is stored little-endian.

Example:
    >>> import numpy as np
    >>> from ckptcore import dtypes
    >>> dtypes.dtype_name(np.dtype("float32")), dtypes.dtype_from_name("bfloat16").itemsize
    ('float32', 2)
"""

from __future__ import annotations

import re
import sys

import numpy as np

from .errors import UnsupportedDtypeError

_NUMPY_NAMES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
]
# longdouble is platform-specific; allow it under numpy's own name where it exists.
for _extra in ("float128", "complex256", "float96", "complex192"):
    if hasattr(np, _extra):
        _NUMPY_NAMES.append(_extra)

# Names ml_dtypes may provide. ml_dtypes is imported only when one of them is met (its extension
# takes most of a second to import): a checkpoint holding such a tensor, or an array of such a
# dtype (whose owner imported ml_dtypes already).
_ML_CANDIDATES = (
    "bfloat16", "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn", "float8_e4m3fnuz",
    "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn",
    "int2", "int4", "uint2", "uint4",
)
_ML_CANDIDATE_SET = frozenset(_ML_CANDIDATES)
_ML_NAMES: list[str] = []   # the candidates this ml_dtypes has, once loaded

_BY_NAME: dict[str, np.dtype] = {n: np.dtype(n) for n in _NUMPY_NAMES}
_STRING_RE = re.compile(r"^(S|U)([0-9]{1,9})$")
_ml_loaded = False


def _load_ml_dtypes() -> None:
    """Add ml_dtypes' dtypes (bfloat16, float8, ...) to the allowlist; imports ml_dtypes once."""
    global _ml_loaded
    if _ml_loaded:
        return
    import ml_dtypes

    names = [n for n in _ML_CANDIDATES if hasattr(ml_dtypes, n)]
    _BY_NAME.update({n: np.dtype(getattr(ml_dtypes, n)) for n in names})
    _ML_NAMES[:] = names
    _ml_loaded = True


def ml_dtypes_loaded() -> bool:
    """Whether ml_dtypes has been imported (by ckptcore or anyone else).

    Example:
        >>> isinstance(ml_dtypes_loaded(), bool)
        True
    """
    return "ml_dtypes" in sys.modules


def __getattr__(name: str):
    # SUPPORTED names every dtype, ml_dtypes' included, so asking for it loads ml_dtypes
    if name == "SUPPORTED":
        _load_ml_dtypes()
        return tuple(_BY_NAME)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dtype_name(dtype: np.dtype) -> str:
    """The stored name of a supported dtype; raises for anything else.

    Example:
        >>> dtype_name(np.dtype("<U3"))
        'U3'
    """
    dtype = np.dtype(dtype)
    if dtype.kind in ("S", "U"):
        return f"{dtype.kind}{dtype.itemsize // (4 if dtype.kind == 'U' else 1)}"
    name = dtype.name
    if not _ml_loaded and dtype.kind == "V" and name in _ML_CANDIDATE_SET:
        _load_ml_dtypes()  # an ml_dtypes array: its owner imported ml_dtypes already
    if name in _BY_NAME and _BY_NAME[name] == dtype.newbyteorder("="):
        return name
    if dtype.byteorder in (">", "<") and dtype.newbyteorder("=").name in _BY_NAME:
        return dtype.newbyteorder("=").name
    raise UnsupportedDtypeError(
        f"dtype {dtype!r} ({dtype.kind!r}) cannot be stored in a checkpoint; supported: numeric and bool "
        f"numpy dtypes, ml_dtypes ({', '.join(_ML_CANDIDATES[:3])}, ...) and fixed-width strings (S/U). "
        "object and structured arrays are refused because reading them would need unpickling.")


def dtype_from_name(name: str) -> np.dtype:
    """The dtype for a stored name, or ValueError if the name is not on the allowlist.

    Example:
        >>> dtype_from_name("int64")
        dtype('int64')
    """
    if not isinstance(name, str):
        raise ValueError(f"dtype name must be a string, got {type(name).__name__}")
    dt = _BY_NAME.get(name)
    if dt is not None:
        return dt
    if name in _ML_CANDIDATE_SET and not _ml_loaded:
        _load_ml_dtypes()
        dt = _BY_NAME.get(name)
        if dt is not None:
            return dt
    m = _STRING_RE.match(name)
    if m and int(m.group(2)) > 0:
        return np.dtype(f"<{m.group(1)}{m.group(2)}")
    raise ValueError(f"unknown dtype {name!r}")


def storage_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian dtype bytes are laid out in on disk.

    Example:
        >>> storage_dtype(np.dtype(">f4"))
        dtype('float32')
    """
    dtype = np.dtype(dtype)
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian):
        little = dtype.newbyteorder("<")
        return little.newbyteorder("=") if np.little_endian else little
    return dtype
