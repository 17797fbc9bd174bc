"""Adapters for variables: anything shaped like ``tf.Variable``, and ``keras.Variable``.

A *variable-like* object has ``assign``, ``numpy()`` or ``__array__``,
``shape`` and ``dtype``: ``tf.Variable``, ``keras.Variable`` and many
home-grown classes. It is one ``VARIABLE_VALUE`` attribute, restored with
``assign``. No framework is imported here.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> class Var:                          # a tf.Variable look-alike
    ...     def __init__(self, v): self._v = np.array(v, np.float32)
    ...     shape = property(lambda self: self._v.shape)
    ...     dtype = property(lambda self: self._v.dtype)
    ...     def numpy(self): return self._v.copy()
    ...     def assign(self, v): self._v = np.array(v, np.float32)
    >>> path = ck.Checkpoint(v=Var([1.0, 2.0])).write("memory://doc/ckptcore_tf/var")
    >>> w = Var([0.0, 0.0]); _ = ck.Checkpoint(v=w).read(path); w.numpy().tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

import ckptcore as ck
from ckptcore.dtypes import dtype_from_name
from ckptcore.errors import CheckpointError
from ckptcore.naming import VARIABLE_VALUE

__all__ = ["to_numpy_dtype", "is_variable_like", "VariableLikeAdapter", "KerasVariableAdapter"]

_ATTRS = [VARIABLE_VALUE]


def to_numpy_dtype(dtype: Any) -> np.dtype:
    """A numpy dtype for a framework dtype: numpy, ``tf.DType``, ``torch.dtype`` or a name like ``"bfloat16"``.

    Example:
        >>> to_numpy_dtype("bfloat16").name, to_numpy_dtype("float32").name
        ('bfloat16', 'float32')
    """
    if isinstance(dtype, np.dtype):
        return dtype
    as_np = getattr(dtype, "as_numpy_dtype", None)  # tf.DType
    if as_np is not None:
        return np.dtype(as_np)
    if isinstance(dtype, type) and issubclass(dtype, np.generic):
        return np.dtype(dtype)
    name = str(getattr(dtype, "name", dtype) if not isinstance(dtype, str) else dtype)
    name = name.rsplit(".", 1)[-1]  # "torch.float32" -> "float32"
    try:
        return dtype_from_name(name)
    except ValueError:
        return np.dtype(name)


def is_variable_like(obj: Any) -> bool:
    """True for objects shaped like ``tf.Variable``: ``assign``, ``numpy()``/``__array__``, ``shape``, ``dtype``.

    Example:
        >>> import numpy as np
        >>> is_variable_like(np.zeros(2))   # no assign()
        False
    """
    cls = type(obj)
    return (callable(getattr(cls, "assign", None))
            and (callable(getattr(cls, "numpy", None)) or callable(getattr(cls, "__array__", None)))
            and hasattr(obj, "shape") and hasattr(obj, "dtype"))


def _assignable(value: np.ndarray) -> np.ndarray:
    # ml_dtypes arrays (bfloat16, float8) are not understood by every framework:
    # hand them over as float32, which holds every such value exactly.
    if value.dtype.kind == "V":
        return value.astype(np.float32)
    return value


class VariableLikeAdapter(ck.Adapter):
    """``tf.Variable`` and anything shaped like it: one value, restored via ``assign``.

    Example:
        >>> import numpy as np
        >>> class V:
        ...     shape, dtype = (2,), np.dtype("float32")
        ...     def numpy(self): return np.ones(2, np.float32)
        ...     def assign(self, v): pass
        >>> VariableLikeAdapter().spec(V(), "VARIABLE_VALUE")
        ((2,), dtype('float32'))
    """

    name = "ckptcore_tf.variable"

    def attributes(self, obj):
        return _ATTRS

    def get_value(self, obj, attr):
        numpy = getattr(obj, "numpy", None)
        value = numpy() if callable(numpy) else obj.__array__()
        return np.asarray(value)

    def spec(self, obj, attr):
        try:
            shape = tuple(int(d) for d in obj.shape)
            dtype = to_numpy_dtype(obj.dtype)
        except (TypeError, ValueError):
            value = self.get_value(obj, attr)
            shape, dtype = value.shape, value.dtype
        return shape, dtype

    def set_value(self, obj, attr, value):
        try:
            obj.assign(value)
        except TypeError:
            obj.assign(_assignable(value))


class KerasVariableAdapter(VariableLikeAdapter):
    """``keras.Variable`` on any backend: read with ``keras.ops.convert_to_numpy``, restored with ``assign``.

    Example:
        >>> KerasVariableAdapter().attributes(None)
        ['VARIABLE_VALUE']
    """

    name = "ckptcore_tf.keras_variable"

    def get_value(self, obj, attr):
        dtype = to_numpy_dtype(obj.dtype)
        tensor = obj.value
        if type(tensor).__module__.startswith("torch"):
            # torch backend: a CPU view of the parameter, no copy (bfloat16 goes through float32).
            tensor = tensor.detach()
            if dtype.kind == "V":
                tensor = tensor.float()
            value = tensor.cpu().numpy()
        else:
            import keras

            value = np.asarray(keras.ops.convert_to_numpy(tensor))
        if value.dtype != dtype:  # e.g. bfloat16 handed back as float32
            value = value.astype(dtype)
        return value

    def spec(self, obj, attr):
        try:
            return tuple(int(d) for d in obj.shape), to_numpy_dtype(obj.dtype)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"keras variable {getattr(obj, 'path', obj)!r} has no static shape/dtype: {e}") from e

    def accepts_dtype(self, obj, attr, stored):
        """Integers of another width: TensorFlow's Keras counts an optimizer's iterations in int64, the
        torch backend in int32 (the value is range-checked in :meth:`set_value`).

        Example:
            >>> import numpy as np
            >>> class V: dtype = "int32"
            >>> KerasVariableAdapter().accepts_dtype(V(), "VARIABLE_VALUE", np.dtype("int64"))
            True
        """
        try:
            live = to_numpy_dtype(obj.dtype)
        except (TypeError, ValueError):
            return False
        return live.kind in "iu" and np.dtype(stored).kind in "iu"

    def set_value(self, obj, attr, value):
        value = _assignable(value)
        live = to_numpy_dtype(obj.dtype) if value.dtype.kind in "iu" else None  # (floats: the common case)
        if live is not None and value.dtype != live and live.kind in "iu":  # accepts_dtype's integers
            info = np.iinfo(live)
            if value.size and (int(value.min()) < info.min or int(value.max()) > info.max):
                raise ck.DtypeMismatchError(
                    f"keras variable {getattr(obj, 'path', obj)!r} holds {live.name}, and the checkpoint's "
                    f"{value.dtype.name} value (range {int(value.min())}..{int(value.max())}) does not fit it; "
                    f"create the variable as {value.dtype.name}")
            value = value.astype(live)
        if getattr(obj, "_value", True) is None and getattr(obj, "_initializer", None) is not None:
            # Created inside a Keras stateless scope (a symbolic build on first
            # call): Keras initializes it later from its initializer, which
            # would overwrite an assign. Make the restored value the initializer.
            obj._initializer = _Constant(np.array(value, copy=True))
            return
        obj.assign(value)


class _Constant:
    """A Keras initializer that returns a restored value."""

    def __init__(self, value: np.ndarray):
        self.value = value

    def __call__(self, shape, dtype=None):
        return self.value
