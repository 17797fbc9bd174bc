"""ckptcore-tf: ckptcore adapters for ``tf.Variable``-like objects, ``tf.Module`` and Keras 3.

Installing the distribution is enough: ckptcore finds it through the
``ckptcore`` entry-point group, so ``ck.Checkpoint(model=model, optimizer=opt)``
works without importing this package. Neither TensorFlow nor Keras is imported
until an object of theirs is checkpointed.

Example:
    >>> import ckptcore as ck, ckptcore_tf
    >>> ck.registry.get_plugin_manager().get_plugin("tf") is not None
    True
"""

from importlib import metadata as _metadata

from .keras_adapters import LayerAdapter, OptimizerAdapter, SeedGeneratorAdapter, install_keras_hooks
from .module import ModuleLikeAdapter
from .variables import KerasVariableAdapter, VariableLikeAdapter, is_variable_like, to_numpy_dtype

try:  # pyproject.toml's version is the one source
    __version__ = _metadata.version("ckptcore-tf")
except _metadata.PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "KerasVariableAdapter",
    "LayerAdapter",
    "ModuleLikeAdapter",
    "OptimizerAdapter",
    "SeedGeneratorAdapter",
    "VariableLikeAdapter",
    "install_keras_hooks",
    "is_variable_like",
    "to_numpy_dtype",
]
