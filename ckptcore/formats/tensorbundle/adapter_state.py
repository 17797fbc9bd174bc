"""Adapter state (JSON) in a TensorFlow checkpoint: one scalar string attribute on the object's node.

ckptcore adapters may save a small JSON document per object besides its tensors (a
torch optimizer's ``param_groups``, a module's extra state). TensorFlow stores tensors
only, so in TensorFlow's format the state becomes one more attribute of the object's
node in the ``TrackableObjectGraph``, as TensorFlow's own ``PythonState`` objects keep
theirs (``.ATTRIBUTES/py_state``): the attribute ``CKPTCORE_STATE``, key
``<object path>/.ATTRIBUTES/CKPTCORE_STATE``, a scalar ``DT_STRING`` tensor whose one
element is the state as UTF-8 JSON.

ckptcore reads it back as the node's state, so a checkpoint round-trips losslessly.
TensorFlow reads the variables as usual: ``tf.train.load_checkpoint`` lists the string,
and ``tf.train.Checkpoint.restore`` ignores the attribute unless it is asked to prove
that everything was consumed (``assert_consumed()`` names it as an unused attribute of
that object; ``assert_existing_objects_matched()`` and ``expect_partial()`` pass).

Example:
    >>> state_key(("optimizer",)), decode_state(encode_state({"lr": 0.1}, "optimizer"), "f", "k")
    ('optimizer/.ATTRIBUTES/CKPTCORE_STATE', {'lr': 0.1})
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ...errors import CheckpointError, CorruptCheckpointError
from ...naming import object_key

STATE_ATTRIBUTE = "CKPTCORE_STATE"
MAX_STATE_BYTES = 64 << 20

__all__ = ["STATE_ATTRIBUTE", "state_key", "encode_state", "decode_state"]


def state_key(path: Sequence[str]) -> str:
    """The checkpoint key of the state of the object at ``path`` (edge names; ``()`` is the root).

    Example:
        >>> state_key(())
        '/.ATTRIBUTES/CKPTCORE_STATE'
    """
    return object_key(list(path), STATE_ATTRIBUTE)


def encode_state(state: Any, where: str = "") -> bytes:
    """The string element that stores ``state``: UTF-8 JSON (no NaN or infinity, as ckptcore's index).

    Example:
        >>> encode_state({"betas": [0.9, 0.999]})
        b'{"betas": [0.9, 0.999]}'
    """
    try:
        raw = json.dumps(state, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"state of {where or 'an object'} is not JSON-serializable: {e}") from None
    if len(raw) > MAX_STATE_BYTES:
        raise CheckpointError(f"state of {where or 'an object'} is {len(raw)} bytes of JSON; a TensorFlow "
                              f"checkpoint holds at most {MAX_STATE_BYTES} per object")
    return raw


def decode_state(raw: bytes, path: str, key: str) -> Any:
    """The state stored as ``raw`` (the element of tensor ``key`` in file ``path``).

    Raises :class:`~ckptcore.CorruptCheckpointError` naming the file and key if it is not JSON.

    Example:
        >>> try:
        ...     decode_state(b"{nope", "c.data-00000-of-00001", "opt/.ATTRIBUTES/CKPTCORE_STATE")
        ... except Exception as e:
        ...     print(type(e).__name__)
        CorruptCheckpointError
    """
    if len(raw) > MAX_STATE_BYTES:
        raise CorruptCheckpointError(f"{path}: tensor {key!r} holds {len(raw)} bytes of state, more than ckptcore "
                                     "writes", path=path, key=key)
    try:
        state = json.loads(bytes(raw).decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptCheckpointError(f"{path}: tensor {key!r} is not ckptcore adapter state (JSON): "
                                     f"{type(e).__name__}", path=path, key=key) from None
    if state is None:
        raise CorruptCheckpointError(f"{path}: tensor {key!r} holds a null state", path=path, key=key)
    return state


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def adopt_states(nodes: list, entries: dict, storage: Any, prefix: str, num_shards: int, path: str) -> None:
    """Turn each node's ``CKPTCORE_STATE`` attribute (a scalar string tensor) into the node's state.

    ``entries`` maps the index's keys (bytes) to their ``BundleEntryProto``. The element is
    read and checksum-verified now (states are small); the attribute is then no tensor of
    the node, so restore hands it to the adapter's ``set_state`` as for ckptcore's own format.
    """
    from .. import ckpt as fmt
    from .bundle import read_string_scalar

    for node in nodes:
        t = node.attributes.get(STATE_ATTRIBUTE)
        if t is None or t.dtype != "string" or tuple(t.shape) != ():
            continue
        e = entries.get(t.key.encode("utf-8"))
        if e is None:
            continue
        data_file = fmt.data_path(prefix, int(e.shard_id), num_shards)
        raw = read_string_scalar(storage, data_file, e, path, t.key, limit=MAX_STATE_BYTES + 16)
        node.state = decode_state(raw, data_file, t.key)
        del node.attributes[STATE_ATTRIBUTE]
