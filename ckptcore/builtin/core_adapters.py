"""Built-in plugin: ``ck.Variable``, ``ck.Module``, ``ck.Checkpoint`` and containers.

Example:
    >>> import ckptcore as ck
    >>> ck.registry.find_adapter(ck.Module()).name
    'ckptcore.module'
"""

from __future__ import annotations

from ..adapters import Adapter, AdapterRegistration
from ..hookspec import hookimpl
from ..module import _is_dependency
from ..naming import VARIABLE_VALUE

_ATTRS = [VARIABLE_VALUE]


class VariableAdapter(Adapter):
    """``ck.Variable``: one ``VARIABLE_VALUE`` attribute, restored into its own buffer."""

    name = "ckptcore.variable"
    announces_changes = True

    def attributes(self, obj):
        return _ATTRS

    def get_value(self, obj, attr):
        return obj._value

    def spec(self, obj, attr):
        return obj._value.shape, obj._value.dtype

    def restore_buffer(self, obj, attr):
        return obj._value

    def set_value(self, obj, attr, value):
        if value is not obj._value:
            obj._value[...] = value


class ModuleAdapter(Adapter):
    """``ck.Module`` (and ``ck.Checkpoint``): children are its tracked attributes."""

    name = "ckptcore.module"
    announces_changes = True

    def children(self, obj):
        return obj.tracked_children()


class CheckpointAdapter(ModuleAdapter):
    """The ``ck.Checkpoint`` root: its keyword dependencies plus ``save_counter``."""

    name = "ckptcore.checkpoint"


class TrackedContainerAdapter(Adapter):
    """``TrackedList``/``TrackedDict``: trackable items, named by index or key."""

    name = "ckptcore.container"
    announces_changes = True

    def children(self, obj):
        return obj.children()


class SequenceAdapter(Adapter):
    """Plain lists and tuples met inside a graph: trackable items named by index.

    A namedtuple's items are named by field first, then by index, as TensorFlow's
    ``_TupleWrapper`` tracks them: keys use the field names (the first, shortest path),
    and checkpoints that named them by index still restore.
    """

    name = "ckptcore.sequence"

    def children(self, obj):
        items = [(str(i), v) for i, v in enumerate(obj) if _is_dependency(v)]
        fields = getattr(type(obj), "_fields", None) if isinstance(obj, tuple) else None
        if fields and items and len(fields) == len(obj) and all(type(f) is str for f in fields):
            items = [(fields[int(i)], v) for i, v in items] + items
        return items


class MappingAdapter(Adapter):
    """Plain dicts met inside a graph: trackable values named by key."""

    name = "ckptcore.mapping"

    def children(self, obj):
        return [(str(k), v) for k, v in obj.items() if _is_dependency(v)]


@hookimpl
def ckptcore_register_adapters():
    from ..checkpoint import Checkpoint
    from ..module import Module, TrackedDict, TrackedList
    from ..variable import Variable

    return [
        AdapterRegistration(types=(Variable,), adapter=VariableAdapter()),
        AdapterRegistration(types=(Module,), adapter=ModuleAdapter()),
        AdapterRegistration(types=(Checkpoint,), adapter=CheckpointAdapter()),
        AdapterRegistration(types=(TrackedList, TrackedDict), adapter=TrackedContainerAdapter()),
        AdapterRegistration(types=(list, tuple), adapter=SequenceAdapter()),
        AdapterRegistration(types=(dict,), adapter=MappingAdapter()),
    ]
