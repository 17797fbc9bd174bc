"""The small model the corrupt-input tests damage, and every way a user opens a checkpoint."""

from __future__ import annotations

import contextlib

import numpy as np

import ckptcore as ck

W_KEY = "model/w/.ATTRIBUTES/VARIABLE_VALUE"
V_KEY = "model/sub/v/.ATTRIBUTES/VARIABLE_VALUE"


def model(w=None, v=None):
    """``model.w`` (float64 [4]) and ``model.sub.v`` (a float32 [2, 2] Variable)."""
    m = ck.Module()
    m.w = np.arange(4.0) if w is None else w
    m.sub = ck.Module()
    m.sub.v = ck.Variable(np.ones((2, 2), np.float32) if v is None else v)
    return m


def fresh():
    """The same model, all zeros: what a restore fills."""
    return model(np.zeros(4), np.zeros((2, 2), np.float32))


def with_key_list(path: str) -> str:
    """Rewrite the index of the local checkpoint ``path`` with its key list (as versions 2-5 store it)."""
    from ckptcore.formats import ckpt as fmt

    with open(path + fmt.INDEX_SUFFIX, "rb") as f:
        index = fmt.decode_index(f.read(), path + fmt.INDEX_SUFFIX)
    index.derive_keys = False
    index.version = fmt.FORMAT_VERSION
    with open(path + fmt.INDEX_SUFFIX, "wb") as f:
        f.write(index.encode())
    return path


def open_every_way(path):
    """Every way a user reads a checkpoint."""
    r = ck.load_checkpoint(path)
    for k in r.keys():
        r.get_tensor(k)
    r.verify()
    ck.list_variables(path)
    ck.Checkpoint(model=fresh()).read(path).expect_partial()


@contextlib.contextmanager
def toy_optimizer(adapter_name: str, slot_name: str, slot_value):
    """A registered toy optimizer adapter: yields ``(w, opt)``, ``opt`` holding one slot of ``w`` and state.

    The slot is ``slot_name`` with ``slot_value``; the state is ``{"lr": 0.1}``. The adapter is
    unregistered on exit.
    """

    class Opt(ck.Adapter):
        name = adapter_name

        def slots(self, obj):
            return [ck.SlotVariable(variable=obj.w, name=slot_name, value=slot_value)]

        def restore_slot(self, obj, variable, name, value):
            obj.restored[name] = value

        def get_state(self, obj):
            return {"lr": 0.1}

    class Optim:
        def __init__(self, w):
            self.w = w
            self.restored = {}

    plugin = ck.register_adapter(Optim, Opt())
    try:
        w = ck.Variable(np.zeros(2))
        yield w, Optim(w)
    finally:
        ck.registry.unregister_plugin(plugin)


def flip_byte(path: str, offset: int) -> None:
    """Invert the byte at ``offset`` of the file at ``path`` (a corrupt checkpoint file, in place)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def plan_summary(root, live_arrays) -> tuple:
    """Everything of ``saver.plan_save(root)`` that reaches the checkpoint, for comparing two ways of planning.

    The graph's columns, state and slots, the keys, dtypes and written arrays (by content, and by
    identity where an array of ``live_arrays`` is written as it is), the tensors' nodes and whether
    the keys are derived; or the error's type and message.
    """
    from ckptcore import save as saver

    try:
        p = saver.plan_save(root)
    except ck.CheckpointError as e:
        return ("error", type(e).__name__, str(e))
    g = p.graph
    keys, dtypes, arrays = p._columns
    live = {id(v) for v in live_arrays}
    written = [(a.dtype.str, a.shape, a.tobytes(), id(a) if id(a) in live else None) for a in arrays]
    return ("ok", g.adapter, g.type, g.child_start, g.child_name, g.child, g.attr_start, g.attr_name,
            sorted(g.state), {k: list(v) for k, v in g.slots.items()}, keys, dtypes, written, p.node_of,
            p.keys_derived)
