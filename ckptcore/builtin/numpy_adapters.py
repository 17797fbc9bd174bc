"""Built-in plugin: numpy arrays, restored in place.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> a = np.arange(3.0)
    >>> path = ck.Checkpoint(a=a).write("memory://doc/np")
    >>> b = np.zeros(3); _ = ck.Checkpoint(a=b).read(path); b.tolist()
    [0.0, 1.0, 2.0]
"""

from __future__ import annotations

import numpy as np

from ..adapters import Adapter, AdapterRegistration
from ..errors import CheckpointError
from ..hookspec import hookimpl
from ..naming import VARIABLE_VALUE

_ATTRS = [VARIABLE_VALUE]


class NumpyArrayAdapter(Adapter):
    """A numpy array is a variable: one ``VARIABLE_VALUE`` attribute, filled in place.

    Example:
        >>> import numpy as np
        >>> NumpyArrayAdapter().attributes(np.zeros(1))
        ['VARIABLE_VALUE']
    """

    name = "ckptcore.numpy"
    announces_changes = True

    def attributes(self, obj):
        return _ATTRS

    def get_value(self, obj, attr):
        return obj

    def spec(self, obj, attr):
        if isinstance(obj, np.ma.MaskedArray):  # (saving one is refused too: ckptcore.save.values)
            raise CheckpointError("numpy masked array cannot be restored in place: a checkpoint holds no mask, so "
                                  "its mask would hide restored values; restore into arr.data (and set the mask "
                                  "yourself)")
        if not obj.flags.writeable:
            raise CheckpointError("numpy array is read-only and cannot be restored in place "
                                  "(set arr.flags.writeable = True or pass a writable array)")
        return obj.shape, obj.dtype

    def restore_buffer(self, obj, attr):
        if obj.flags.c_contiguous and obj.flags.writeable:
            return obj
        return None

    def set_value(self, obj, attr, value):
        if value is not obj:
            obj[...] = value


@hookimpl
def ckptcore_register_adapters():
    return [AdapterRegistration(types=(np.ndarray,), adapter=NumpyArrayAdapter())]
