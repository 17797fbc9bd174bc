"""The ``ckptcore`` entry point of ckptcore-torch: adapter registrations and creation hooks.

Registrations use dotted type names, so loading this plugin (which ckptcore
does when it first needs an adapter) never imports torch.

Example:
    >>> import torch, ckptcore as ck
    >>> ck.registry.find_adapter(torch.nn.Linear(1, 1)).name
    'ckptcore_torch.module'
"""

from __future__ import annotations

from ckptcore.adapters import AdapterRegistration
from ckptcore.hookspec import hookimpl

from . import hooks
from .adapters import (
    GeneratorAdapter,
    LRSchedulerAdapter,
    ModuleAdapter,
    StateDictAdapter,
    TensorAdapter,
    has_state_dict,
)
from .distributed import ckptcore_collective_group  # noqa: F401 -- the hook: torch.distributed groups
from .dtensor import DTensorAdapter
from .optim import OptimizerAdapter

#: Priority of the ``state_dict()`` fallback: any specific claim wins over it.
FALLBACK_PRIORITY = -100


@hookimpl
def ckptcore_register_adapters():
    """Claim torch modules, tensors (DTensors too), optimizers, schedulers, generators and ``state_dict`` objects.

    Example:
        >>> sorted(r.adapter.name for r in ckptcore_register_adapters())[:2]
        ['ckptcore_torch.dtensor', 'ckptcore_torch.generator']
    """
    return [
        AdapterRegistration(types=("torch.nn.modules.module.Module",), adapter=ModuleAdapter()),
        AdapterRegistration(types=("torch.Tensor",), adapter=TensorAdapter()),
        AdapterRegistration(types=("torch.distributed.tensor.DTensor",), adapter=DTensorAdapter()),
        AdapterRegistration(types=("torch.optim.optimizer.Optimizer",), adapter=OptimizerAdapter()),
        AdapterRegistration(types=("torch.optim.lr_scheduler.LRScheduler",
                                   "torch.optim.lr_scheduler.ReduceLROnPlateau"), adapter=LRSchedulerAdapter()),
        AdapterRegistration(types=("torch.Generator",), adapter=GeneratorAdapter()),
        AdapterRegistration(predicate=has_state_dict, adapter=StateDictAdapter(), priority=FALLBACK_PRIORITY),
    ]


@hookimpl
def ckptcore_install_creation_hooks(notify):
    """Restore-on-create: report modules, parameters and buffers registered after ``restore()``.

    Example:
        >>> import ckptcore as ck
        >>> ckptcore_install_creation_hooks(ck.notify_dependency_added)
    """
    hooks.set_notify(notify)
