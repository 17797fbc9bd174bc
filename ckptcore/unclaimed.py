"""Objects that hold array data but that no adapter claims: never dropped silently.

Containers and ``ck.Module`` keep as dependencies only what an adapter claims. A value
that no adapter claims but that clearly holds array data (it has ``__array__`` or
``__dlpack__``, or it is a tensor, module, layer, optimizer or variable of a known
framework, recognised by the module names of its classes, without importing the
framework) is kept as a dependency too, so that saving it fails with an error that
names its path, its type and the package to install, instead of writing a checkpoint
without it. Pure: no framework import, no I/O.

numpy scalars (``np.float32(0.1)``) are values, like Python floats: they are not
array data here, and are not tracked (as TensorFlow does not track Python numbers).

Example:
    >>> import numpy as np
    >>> class Fake:
    ...     def __array__(self, dtype=None, copy=None):
    ...         return np.zeros(2)
    >>> holds_array_data(Fake()), holds_array_data(3.0), holds_array_data(np.float32(1))
    (True, False, False)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["holds_array_data", "install_hint"]

# top-level module -> (what it is, how to get an adapter)
_FRAMEWORKS = {
    "torch": ("a PyTorch object", "pip install ckptcore-torch"),
    "tensorflow": ("a TensorFlow object", "pip install ckptcore-tf"),
    "keras": ("a Keras object", "pip install ckptcore-tf"),
    "tf_keras": ("a Keras object", "pip install ckptcore-tf"),
    "jax": ("a JAX object", "register an adapter for it (ck.register_adapter): ckptcore has no JAX plugin yet"),
    "jaxlib": ("a JAX object", "register an adapter for it (ck.register_adapter): ckptcore has no JAX plugin yet"),
    "flax": ("a Flax object", "register an adapter for it (ck.register_adapter): ckptcore has no Flax plugin yet"),
    "optax": ("an Optax object", "register an adapter for it (ck.register_adapter): ckptcore has no Optax plugin yet"),
    "cupy": ("a CuPy array", "register an adapter for it (ck.register_adapter), or pass cupy.asnumpy(x)"),
    "mlx": ("an MLX object", "register an adapter for it (ck.register_adapter)"),
    "paddle": ("a Paddle object", "register an adapter for it (ck.register_adapter)"),
}
# class names (anywhere in the MRO, from a framework above) that hold or own array data
_KINDS = ("Tensor", "Variable", "Parameter", "Module", "Layer", "Model", "Optimizer", "Array", "Generator",
          "Scheduler", "Buffer")
_GENERIC_HINT = "register an adapter for it (ck.register_adapter), or convert it to a numpy array"

_CACHE: dict[type, tuple[bool, str, str]] = {}  # class -> (holds array data, what, hint)


def _classify(cls: type) -> tuple[bool, str, str]:
    try:
        return _CACHE[cls]
    except (KeyError, TypeError):
        pass
    result = (False, "", "")
    if not issubclass(cls, np.generic):
        mro = getattr(cls, "__mro__", (cls,))
        for klass in mro:
            root = str(getattr(klass, "__module__", "") or "").split(".")[0]
            fw = _FRAMEWORKS.get(root)
            if fw is not None and any(k in klass.__name__ for k in _KINDS):
                result = (True, fw[0], fw[1])
                break
        else:
            if hasattr(cls, "__array__") or hasattr(cls, "__dlpack__"):
                root = str(getattr(cls, "__module__", "") or "").split(".")[0]
                fw = _FRAMEWORKS.get(root)
                result = (True, fw[0], fw[1]) if fw else (True, "an array-like object", _GENERIC_HINT)
    try:
        _CACHE[cls] = result
    except TypeError:  # an unhashable metaclass
        pass
    return result


def holds_array_data(obj: Any) -> bool:
    """Whether ``obj`` holds array data (so no adapter claiming it would lose data).

    Call it only for objects no adapter claims: it says nothing about those that are.

    Example:
        >>> holds_array_data("text"), holds_array_data([1, 2])
        (False, False)
    """
    return _classify(type(obj))[0]


def install_hint(obj: Any) -> str:
    """What ``obj`` is and what to do so that it is saved, for an error message ('' if nothing known).

    Example:
        >>> Module = type("Module", (), {"__module__": "torch.nn.modules.module"})  # looks like torch's
        >>> class Net(Module): pass
        >>> install_hint(Net())[:40]
        'it holds array data (a PyTorch object), '
        >>> "pip install ckptcore-torch" in install_hint(Net()), install_hint("text")
        (True, '')
    """
    held, what, hint = _classify(type(obj))
    if not held:
        return ""
    if hint.startswith("pip install"):
        hint += " (if it is installed, check CKPTCORE_BLOCK_PLUGINS and CKPTCORE_DISABLE_PLUGIN_AUTOLOAD)"
    return f"it holds array data ({what}), but no installed ckptcore plugin claims it: {hint}"
