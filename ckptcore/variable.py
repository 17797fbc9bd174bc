"""``ck.Variable``: a mutable, framework-free array variable.

Example:
    >>> import ckptcore as ck
    >>> v = ck.Variable([1.0, 2.0], dtype="float32", name="w")
    >>> _ = v.assign([3.0, 4.0]); v.numpy().tolist(), v.shape, str(v.dtype)
    ([3.0, 4.0], (2,), 'float32')
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Variable"]


class Variable:
    """A named, mutable numpy-backed value with ``tf.Variable``-like methods.

    The value lives in one C-contiguous array that restore fills in place.

    Example:
        >>> import ckptcore as ck
        >>> step = ck.Variable(0, dtype="int64")
        >>> _ = step.assign_add(1); int(step)
        1
    """

    __slots__ = ("_value", "name", "trainable", "__weakref__")
    _value: np.ndarray

    def __init__(self, initial_value: Any, dtype: Any = None, name: str | None = None, trainable: bool = True):
        if isinstance(initial_value, Variable):
            initial_value = initial_value._value
        value = np.array(initial_value, dtype=dtype, copy=True, order="C")
        if value.dtype == object and not all(type(x) is bytes for x in value.flat):
            # (an object array of bytes is a TensorFlow string tensor: it restores from and saves to TF's format)
            raise TypeError(f"Variable {name or ''} cannot hold an object array (other than one of bytes, "
                            "TensorFlow's strings)")
        self._value = value
        self.name = name
        self.trainable = trainable

    @property
    def shape(self) -> tuple[int, ...]:
        """The variable's shape (fixed at creation)."""
        return self._value.shape

    @property
    def dtype(self) -> np.dtype:
        """The variable's numpy dtype."""
        return self._value.dtype

    @property
    def ndim(self) -> int:
        return self._value.ndim

    @property
    def size(self) -> int:
        return self._value.size

    def numpy(self) -> np.ndarray:
        """A copy of the current value.

        Example:
            >>> import ckptcore as ck
            >>> ck.Variable(2.5).numpy()
            array(2.5)
        """
        return self._value.copy()

    read_value = numpy

    def value(self) -> np.ndarray:
        """A read-only view of the current value (no copy)."""
        v = self._value.view()
        v.flags.writeable = False
        return v

    def assign(self, value: Any) -> Variable:
        """Set the value; the shape must match (scalars broadcast).

        Example:
            >>> import ckptcore as ck
            >>> ck.Variable([0, 0]).assign([1, 2]).numpy().tolist()
            [1, 2]
        """
        if isinstance(value, Variable):
            value = value._value
        arr = np.asarray(value)
        if arr.shape != self._value.shape and arr.ndim != 0:
            raise ValueError(
                f"cannot assign a value of shape {arr.shape} to Variable {self.name or ''} of shape {self.shape}")
        np.copyto(self._value, arr, casting="same_kind")
        return self

    def assign_add(self, delta: Any) -> Variable:
        """Add ``delta`` in place.

        Example:
            >>> import ckptcore as ck
            >>> int(ck.Variable(1).assign_add(2))
            3
        """
        return self.assign(self._value + np.asarray(delta))

    def assign_sub(self, delta: Any) -> Variable:
        """Subtract ``delta`` in place.

        Example:
            >>> import ckptcore as ck
            >>> int(ck.Variable(3).assign_sub(2))
            1
        """
        return self.assign(self._value - np.asarray(delta))

    def __array__(self, dtype=None, copy=None):
        if dtype is None:
            return self._value.copy() if copy else self._value
        return self._value.astype(dtype, copy=True)

    def __int__(self) -> int:
        return int(self._value)

    def __float__(self) -> float:
        return float(self._value)

    def __index__(self) -> int:
        return int(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __getitem__(self, item):
        return self._value[item]

    def __repr__(self) -> str:
        return f"<ck.Variable {self.name or ''!s} shape={self.shape} dtype={self.dtype} value={self._value!r}>"

    # Arithmetic reads the value, as tf.Variable does.
    def __add__(self, o): return self._value + np.asarray(o)
    def __radd__(self, o): return np.asarray(o) + self._value
    def __sub__(self, o): return self._value - np.asarray(o)
    def __rsub__(self, o): return np.asarray(o) - self._value
    def __mul__(self, o): return self._value * np.asarray(o)
    def __rmul__(self, o): return np.asarray(o) * self._value
    def __truediv__(self, o): return self._value / np.asarray(o)
    def __rtruediv__(self, o): return np.asarray(o) / self._value
    def __matmul__(self, o): return self._value @ np.asarray(o)
    def __rmatmul__(self, o): return np.asarray(o) @ self._value
    def __neg__(self): return -self._value
    def __eq__(self, o): return self._value == np.asarray(o)
    def __lt__(self, o): return self._value < np.asarray(o)
    def __le__(self, o): return self._value <= np.asarray(o)
    def __gt__(self, o): return self._value > np.asarray(o)
    def __ge__(self, o): return self._value >= np.asarray(o)
    __hash__ = object.__hash__
