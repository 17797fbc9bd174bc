"""Any checkpoint ckptcore reads, written as a TensorFlow TensorBundle, one tensor at a time.

Used by ``ckptcore convert SRC DST --to tensorflow``. Two cases, decided by the source:

- **with an object graph** (a ckptcore checkpoint, a TF2 checkpoint, a safetensors file
  written by ``ckptcore convert``): the keys stay as they are (ckptcore's are TensorFlow's
  to the letter), and the graph is written as TensorFlow's ``TrackableObjectGraph``
  (children, attributes, optimizer slots, adapter state as ``CKPTCORE_STATE``), so
  ``tf.train.Checkpoint(...).restore(path)`` matches the objects;
- **flat** (a safetensors file, a TF1 checkpoint, a ckptcore checkpoint converted from
  one): TF1-style name keys, the object path of each tensor joined by ``/``
  (``encoder.layers.0.weight`` becomes ``encoder/layers/0/weight``), and no object graph,
  as ``tf.compat.v1.train.Saver`` writes them; ``tf.train.load_checkpoint`` reads them,
  and ckptcore restores them by name.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> from ckptcore.storage import open_storage
    >>> src = ck.Checkpoint(w=ck.Variable(np.ones(2, np.float32))).write("memory://doc/tfexport/src")
    >>> st, p = open_storage("memory://doc/tfexport/dst")
    >>> write_from_reader(ck.load_checkpoint(src), st, p)["tensors"]
    1
    >>> ck.load_checkpoint("memory://doc/tfexport/dst").format.name
    'tensorflow'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...naming import VARIABLE_VALUE
from .adapter_state import encode_state, state_key
from .writer import STRING, BundleWriter, _paths, object_graph

__all__ = ["write_from_reader", "flat_names"]


def flat_names(graph) -> list[str]:
    """The TF1 name of each tensor of a flat graph: its node's path joined by ``/`` (plus a non-default attribute).

    Example:
        >>> from ckptcore.formats import ckpt as fmt
        >>> e = fmt.TensorEntry("a.b", "float32", (1,), 0, 0, 4, 0)
        >>> g = fmt.Index(nodes=[fmt.Node(children=[("a", 1)]), fmt.Node(children=[("b", 2)]),
        ...                      fmt.Node(attributes={"VARIABLE_VALUE": e})]).graph
        >>> flat_names(g)
        ['a/b']
    """
    paths = _paths(graph)
    names = [""] * graph.attr_start[len(graph)]
    for nid in range(len(graph)):
        path = paths.get(nid)
        for t in graph.attributes(nid):
            parts = list(path) if path is not None else [f"_unreachable_{nid}"]
            if graph.attr_name[t] != VARIABLE_VALUE or not parts:
                parts.append(graph.attr_name[t])
            names[t] = "/".join(parts)
    return names


def write_from_reader(reader, storage, prefix: str, *, report: Callable[[int], Any] | None = None) -> dict:
    """Write the checkpoint ``reader`` reads as a TensorBundle at ``prefix``; returns a summary.

    Tensors are read (their checksums verified) and written one at a time, in table
    order, so peak memory is about the largest tensor (see :func:`write_graph`).
    """
    from ..byname import is_flat

    index = reader.index
    t = index.table
    # the graph's tensors (a TensorFlow source's own object-graph row comes after them: it is written anew)
    specs = [(t.key[r], t.dtype[r], tuple(t.shape[r])) for r in range(len(index.graph.attr_name))]
    return write_graph(storage, prefix, index.graph, specs, reader.get_tensor, flat=is_flat(index), report=report)


def write_graph(storage, prefix: str, graph, specs: list[tuple[str, str, tuple]], get: Callable[[str], Any], *,
                flat: bool, report: Callable[[int], Any] | None = None) -> dict:
    """Write ``graph``'s tensors as a TensorBundle at ``prefix``: ``specs[t]`` is tensor ``t``'s
    ``(source key, dtype name, shape)``, and ``get(source key)`` returns its array.

    ``get`` is called once per tensor, as it is written, so one tensor is in memory at
    a time; ``report(nbytes)`` is called as bytes are written. Data is made durable
    first, the index last, atomically (:class:`.BundleWriter`). A flat graph gets TF1
    name keys (:func:`flat_names`) and no object graph; any other keeps its keys and
    is written with TensorFlow's object graph and the adapter states.
    """
    keys = flat_names(graph) if flat else [k for k, _, _ in specs]

    def value(src_key: str) -> Callable[[], Any]:
        return lambda: get(src_key)

    nbytes = states = 0
    with BundleWriter(storage, prefix, report) as w:
        for (src_key, dtype, shape), key in zip(specs, keys, strict=True):
            w.add(key, dtype, shape, value(src_key))
        if not flat and graph.state:
            paths = _paths(graph)
            for nid in sorted(graph.state):
                if nid in paths:
                    w.add(state_key(paths[nid]), STRING, (), encode_state(graph.state[nid], "/".join(paths[nid])))
                    states += 1
        nbytes = w.commit(None if flat else object_graph(graph, keys))
    return {"tensors": len(specs), "bytes": nbytes, "flat": flat, "states": states}
