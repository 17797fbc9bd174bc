"""The ``ckptcore`` entry point of ckptcore-tf: adapter registrations and creation hooks.

Registered by dotted class names and predicates, so importing this module (or
``ckptcore``) imports neither TensorFlow nor Keras.

Example:
    >>> regs = ckptcore_register_adapters()
    >>> sorted(r.adapter.name for r in regs)[:2]
    ['ckptcore_tf.keras_layer', 'ckptcore_tf.keras_optimizer']
"""

from __future__ import annotations

import sys

import ckptcore as ck

from .keras_adapters import LayerAdapter, OptimizerAdapter, SeedGeneratorAdapter, install_keras_hooks
from .module import ModuleLikeAdapter, has_trackable_children
from .variables import KerasVariableAdapter, VariableLikeAdapter, is_variable_like

#: Priority of the duck-typing claims: below any plugin's concrete type (those
#: are tried first anyway) and below other predicates at the default 0.
VARIABLE_LIKE_PRIORITY = -50
MODULE_LIKE_PRIORITY = -60

_VARIABLE_LIKE = VariableLikeAdapter()
_MODULE_LIKE = ModuleLikeAdapter()


@ck.hookimpl
def ckptcore_register_adapters():
    """Claims of ckptcore-tf (see the package README for the graph shape)."""
    return [
        ck.AdapterRegistration(types=("keras.src.layers.layer.Layer", "keras.Layer"), adapter=LayerAdapter()),
        ck.AdapterRegistration(types=("keras.src.optimizers.base_optimizer.BaseOptimizer", "keras.BaseOptimizer"),
                               adapter=OptimizerAdapter()),
        ck.AdapterRegistration(types=("keras.src.random.seed_generator.SeedGenerator", "keras.SeedGenerator"),
                               adapter=SeedGeneratorAdapter()),
        ck.AdapterRegistration(types=("keras.src.backend.common.variables.Variable", "keras.Variable"),
                               adapter=KerasVariableAdapter()),
        ck.AdapterRegistration(types=("tensorflow.python.ops.variables.Variable", "tensorflow.Variable"),
                               adapter=_VARIABLE_LIKE),
        ck.AdapterRegistration(types=("tensorflow.python.module.module.Module", "tensorflow.Module"),
                               adapter=_MODULE_LIKE),
        ck.AdapterRegistration(adapter=_VARIABLE_LIKE, predicate=is_variable_like, priority=VARIABLE_LIKE_PRIORITY),
        ck.AdapterRegistration(adapter=_MODULE_LIKE, predicate=has_trackable_children, priority=MODULE_LIKE_PRIORITY),
    ]


@ck.hookimpl
def ckptcore_install_creation_hooks(notify):
    """Wrap Keras' weight and optimizer-variable creation (only if Keras is already imported).

    Keras objects met later install the same hooks themselves (their adapters
    call :func:`~ckptcore_tf.keras_adapters.install_keras_hooks`).
    """
    if "keras" in sys.modules:
        install_keras_hooks(notify)
