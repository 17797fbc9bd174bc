"""Zero-copy conversion between torch tensors and numpy arrays, every dtype.

numpy has no bfloat16 or float8; ml_dtypes does. A tensor of such a dtype is
viewed as a same-width integer tensor, converted with ``.numpy()`` (sharing
memory) and viewed again as the ml_dtypes dtype, so no byte is copied or
rounded. ``torch`` is imported inside the functions: importing this module
does not import torch, and ml_dtypes (most of a second to import) is imported
only when a tensor or array of such a dtype is met.

Example:
    >>> import torch
    >>> from ckptcore_torch.convert import to_numpy
    >>> t = torch.ones(2, dtype=torch.bfloat16)
    >>> a = to_numpy(t); a.dtype.name, a.tolist()
    ('bfloat16', [1.0, 1.0])
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

from ckptcore.errors import CheckpointError, UnsupportedDtypeError

__all__ = ["numpy_dtype", "to_numpy", "plain_view", "from_numpy", "writable_view", "is_materialized",
           "staged_restore_buffer", "finish_staged", "pinned_view"]

# torch dtype name -> (numpy dtype, integer torch dtype name used for the bit view or None)
_ML_NAMES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")
_INT_VIEW = {1: "uint8", 2: "int16"}
_table: dict[Any, tuple[np.dtype, Any]] | None = None


_by_numpy: dict[np.dtype, Any] = {}   # inverse of _table
_ml_loaded = False


def _dtype_table() -> dict:
    """torch dtype -> (numpy dtype, bit-view torch dtype or None); ml_dtypes' entries once loaded."""
    global _table
    if _table is None:
        import torch

        table: dict = {}
        plain = {
            "bool": np.bool_, "uint8": np.uint8, "int8": np.int8, "int16": np.int16, "int32": np.int32,
            "int64": np.int64, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
            "float16": np.float16, "float32": np.float32, "float64": np.float64,
            "complex64": np.complex64, "complex128": np.complex128,
        }
        for name, npd in plain.items():
            tdt = getattr(torch, name, None)
            if tdt is not None:
                table[tdt] = (np.dtype(npd), None)
                _by_numpy.setdefault(np.dtype(npd), tdt)
        _table = table
        if "ml_dtypes" in sys.modules:  # imported already (by the user or ckptcore): no cost
            _load_ml()
    return _table


def _load_ml() -> None:
    """Add bfloat16/float8 to the table; imports ml_dtypes (once)."""
    global _ml_loaded
    if _ml_loaded:
        return
    import ml_dtypes
    import torch

    table = _dtype_table()
    for name in _ML_NAMES:
        tdt, mld = getattr(torch, name, None), getattr(ml_dtypes, name, None)
        if tdt is not None and mld is not None:
            npd = np.dtype(mld)
            table[tdt] = (npd, getattr(torch, _INT_VIEW[npd.itemsize]))
            _by_numpy.setdefault(npd, tdt)
    _ml_loaded = True


_plain: tuple | None = None


def _plain_types() -> tuple:
    """``(torch.Tensor, torch.nn.Parameter)``: the exact types whose ``numpy()`` is all a view needs."""
    global _plain
    if _plain is None:
        import torch

        _plain = (torch.Tensor, torch.nn.Parameter)
    return _plain


def _entry(torch_dtype: Any):
    """``_dtype_table()[torch_dtype]``, loading ml_dtypes for its dtypes on first need; None if absent."""
    e = _dtype_table().get(torch_dtype)
    if e is None and not _ml_loaded and str(torch_dtype).removeprefix("torch.") in _ML_NAMES:
        _load_ml()
        e = _table.get(torch_dtype)
    return e


def numpy_dtype(torch_dtype: Any) -> np.dtype:
    """The numpy (or ml_dtypes) dtype holding a torch dtype's values bit for bit.

    Raises :class:`~ckptcore.UnsupportedDtypeError` for dtypes with no numpy
    counterpart (``complex32``, quantized and packed sub-byte types).

    Example:
        >>> import torch
        >>> numpy_dtype(torch.float8_e4m3fn).name
        'float8_e4m3fn'
    """
    e = _entry(torch_dtype)
    if e is not None:
        return e[0]
    raise UnsupportedDtypeError(
            f"torch dtype {torch_dtype} has no numpy/ml_dtypes counterpart and cannot be checkpointed; "
            "supported: bool, (u)int8-64, float16/32/64, bfloat16, float8 types, complex64/128")


def torch_dtype_for(np_dtype: np.dtype) -> Any:
    """The torch dtype for a numpy/ml_dtypes dtype (inverse of :func:`numpy_dtype`).

    Example:
        >>> import ml_dtypes, numpy as np
        >>> torch_dtype_for(np.dtype(ml_dtypes.bfloat16))
        torch.bfloat16
    """
    np_dtype = np.dtype(np_dtype)
    _dtype_table()
    tdt = _by_numpy.get(np_dtype)
    if tdt is None and not _ml_loaded and np_dtype.kind == "V":  # an ml_dtypes array: ml_dtypes is loaded
        _load_ml()
        tdt = _by_numpy.get(np_dtype)
    if tdt is not None:
        return tdt
    raise UnsupportedDtypeError(f"numpy dtype {np_dtype} has no torch counterpart")


def is_materialized(tensor: Any) -> bool:
    """False for lazy-module ``UninitializedParameter``/``Buffer`` and meta tensors.

    Example:
        >>> import torch
        >>> is_materialized(torch.empty(2, device="meta"))
        False
    """
    from torch.nn.parameter import UninitializedTensorMixin

    return not isinstance(tensor, UninitializedTensorMixin) and tensor.device.type != "meta"


def check_materialized(tensor: Any) -> None:
    """Raise a clear error for tensors that hold no data yet.

    Example:
        >>> import torch
        >>> check_materialized(torch.zeros(1))
    """
    from torch.nn.parameter import UninitializedTensorMixin

    if isinstance(tensor, UninitializedTensorMixin):
        raise CheckpointError(
            "the tensor is an uninitialized parameter of a lazy module (e.g. nn.LazyLinear): run one "
            "forward pass (or initialize it) before saving or restoring it")
    if tensor.device.type == "meta":
        raise CheckpointError(
            "the tensor is on the meta device and holds no data: materialize the module first "
            "(module.to_empty(device='cpu')) and restore into it")


def plain_view(tensor: Any) -> np.ndarray | None:
    """The numpy view of a plain CPU tensor (or parameter) of a dtype numpy holds as it is; None otherwise.

    None for tensor subclasses, bfloat16/float8 (an ml_dtypes view), and whatever torch's
    ``numpy()`` refuses (meta, other devices, sparse, conjugate/negative bits): :func:`to_numpy`
    handles those.

    Example:
        >>> import torch
        >>> plain_view(torch.ones(2)).tolist(), plain_view(torch.ones(2, device="meta"))
        ([1.0, 1.0], None)
    """
    if type(tensor) in _plain_types():
        e = (_table or _dtype_table()).get(tensor.dtype)
        if e is not None and e[1] is None:
            try:
                return (tensor.detach() if tensor.requires_grad else tensor).numpy()
            except (RuntimeError, TypeError):
                return None
    return None


def to_numpy(tensor: Any) -> np.ndarray:
    """A numpy array with the tensor's values; shares memory for CPU tensors.

    Works for tensors that require grad, for views and for every supported
    dtype. Tensors on other devices are copied to host memory.

    Example:
        >>> import torch
        >>> to_numpy(torch.arange(3, dtype=torch.int32)).tolist()
        [0, 1, 2]
    """
    arr = plain_view(tensor)  # the common case, checked by torch itself: a dense CPU tensor
    if arr is not None:
        return arr
    dtensors = sys.modules.get("torch.distributed.tensor")
    if dtensors is not None and isinstance(tensor, dtensors.DTensor):
        from .dtensor import sharded_value  # optimizer state of FSDP2 parameters, say

        return sharded_value(tensor)
    check_materialized(tensor)
    npd, view = _entry(tensor.dtype) or (None, None)
    if npd is None:
        numpy_dtype(tensor.dtype)  # raises
    t = tensor.detach()
    on_device = t.device.type != "cpu"
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if on_device:
        t = _to_host(t)
    arr = t.view(view).numpy().view(npd) if view is not None else t.numpy()
    if on_device:
        from ckptcore import staging

        stage = staging.current()
        if stage is not None:  # a copy of its own: an async save need not snapshot it again
            stage.mark_private(arr)
    return arr


def _to_host(t: Any) -> Any:
    """A host copy of device tensor ``t``: in a pinned buffer of the running save's pool when one fits
    (``CheckpointOptions(pinned_memory_bytes=...)``), else ``t.cpu()``."""
    from ckptcore import staging

    from .staging import pool_for

    pool = pool_for(staging.current())
    nbytes = t.numel() * t.element_size()
    buf = pool.take(nbytes) if pool is not None else None
    if buf is None:
        return t.cpu()
    host = pinned_view(buf, t.dtype, t.shape)
    host.copy_(t)  # device to pinned host memory at full bus speed; returns once the bytes are there
    return host


def pinned_view(buf: Any, dtype: Any, shape: Any) -> Any:
    """The first bytes of uint8 buffer tensor ``buf`` as a contiguous tensor of ``dtype`` and ``shape``.

    Example:
        >>> import torch
        >>> pinned_view(torch.zeros(64, dtype=torch.uint8), torch.float32, (2, 3)).shape
        torch.Size([2, 3])
    """
    import math

    return buf[:math.prod(shape) * dtype.itemsize].view(dtype).view(tuple(shape))


def staged_restore_buffer(tensor: Any) -> np.ndarray | None:
    """A numpy view of a pinned buffer (from the running restore's pool) to read device tensor
    ``tensor``'s bytes into, or None (CPU tensors, no pool, no room). :func:`finish_staged` then
    copies it to the device and gives the buffer back.

    Example:
        >>> import torch
        >>> staged_restore_buffer(torch.zeros(3)) is None  # CPU tensors are read in place instead
        True
    """
    if tensor.device.type == "cpu" or not is_materialized(tensor) or _entry(tensor.dtype) is None:
        return None
    return _lend(tensor)


def _lend(tensor: Any) -> np.ndarray | None:
    from ckptcore import staging

    from .staging import pool_for

    stage = staging.current()
    pool = pool_for(stage)
    if pool is None:
        return None
    buf = pool.take(tensor.numel() * tensor.element_size())
    if buf is None:
        return None
    host = pinned_view(buf, tensor.dtype, tensor.shape)
    arr = to_numpy(host)
    key = id(arr)
    with _lent_lock:
        _LENT[key] = (arr, host, buf, pool)
    stage.on_end(lambda: _LENT.pop(key, None))  # a buffer never copied (a failed restore): forgotten at the end
    return arr


# id(array) -> (array, pinned host tensor, pool buffer, pool): buffers lent to the reader. Module-level,
# not per operation: the reader may deliver a value on a thread that does not see the current Staging.
_LENT: dict[int, tuple] = {}
_lent_lock = threading.Lock()


def finish_staged(tensor: Any, value: Any) -> bool:
    """If ``value`` is a buffer from :func:`staged_restore_buffer`: copy it into ``tensor``, give the
    buffer back to the pool for the next tensor, and return True.

    Example:
        >>> import torch, numpy as np
        >>> finish_staged(torch.zeros(2), np.ones(2))
        False
    """
    if not _LENT:
        return False
    with _lent_lock:
        entry = _LENT.get(id(value))
        if entry is None or entry[0] is not value:
            return False
        del _LENT[id(value)]
    _arr, host, buf, pool = entry
    import torch

    with torch.no_grad():
        tensor.copy_(host)  # pinned host memory to the device; returns once the bytes are there
    pool.give(buf)
    return True


def writable_view(tensor: Any) -> np.ndarray | None:
    """A writable, C-contiguous numpy view of a CPU tensor's memory, or None.

    None when writing through numpy would not reach the tensor (other
    devices, non-contiguous layouts, lazy conjugate/negative views).

    Example:
        >>> import torch
        >>> t = torch.zeros(3); writable_view(t)[1] = 5; t.tolist()
        [0.0, 5.0, 0.0]
    """
    if type(tensor) in _plain_types():  # a plain tensor or parameter: torch's numpy() checks all of the below
        e = (_table or _dtype_table()).get(tensor.dtype)
        if e is not None and e[1] is None:
            try:
                # (numpy() refuses other devices, meta, sparse, conjugate/negative bits; a tensor that needs
                # no gradient, such as optimizer state, needs no detach() first: ~0.6 us of ~1.5 us saved)
                arr = (tensor.detach() if tensor.requires_grad else tensor).numpy()
            except (RuntimeError, TypeError):
                return None
            return arr if arr.flags.c_contiguous and arr.flags.writeable else None
    if (not is_materialized(tensor) or tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.is_conj()
            or tensor.is_neg() or tensor.is_sparse or _entry(tensor.dtype) is None):  # (lazy first: it raises)
        return None
    try:
        arr = to_numpy(tensor)
    except (RuntimeError, TypeError):
        return None
    return arr if arr.flags.c_contiguous and arr.flags.writeable else None


def from_numpy(array: np.ndarray) -> Any:
    """A CPU tensor with the array's values (and dtype, ml_dtypes included).

    Example:
        >>> import ml_dtypes, numpy as np
        >>> from_numpy(np.ones(2, ml_dtypes.bfloat16)).dtype
        torch.bfloat16
    """
    import torch

    if type(array) is np.ndarray and array.dtype in _AS_IS:  # a plain dtype torch takes as it is
        f = array.flags
        if f.writeable and f.c_contiguous:
            return torch.from_numpy(array)
    array = np.asarray(array)
    tdt = torch_dtype_for(array.dtype)
    view = _entry(tdt)[1]
    if view is None and array.dtype.isnative:
        _AS_IS.add(array.dtype)  # torch takes this dtype as it is: the shortcut above from now on
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C")
    if view is not None:
        return torch.from_numpy(array.view(numpy_dtype(view))).view(tdt)
    return torch.from_numpy(array)


#: numpy dtypes whose arrays torch.from_numpy takes without a bit view (from_numpy's shortcut), filled
#: as they are met: native-order numpy dtypes of the table's plain entries
_AS_IS: set = set()


def shares_memory(array: Any, tensor: Any) -> bool:
    """True if ``array`` is exactly the CPU memory of ``tensor`` (restored in place already).

    Example:
        >>> import torch
        >>> t = torch.zeros(2); shares_memory(writable_view(t), t)
        True
    """
    if not isinstance(array, np.ndarray) or tensor.device.type != "cpu" or not tensor.is_contiguous():
        return False
    return (array.__array_interface__["data"][0] == tensor.data_ptr()
            and array.nbytes == tensor.numel() * tensor.element_size())
