"""Keras 3 objects as TensorFlow 2.21 tracks them, given the names ckptcore's Keras adapters use.

TensorFlow tracks a Keras 3 object by its attributes (``KerasAutoTrackable``), not by
the names ``tf.keras`` 2 used. In a ``tf.train.Checkpoint(model=..., optimizer=adam)``:

- the optimizer has ``_iterations``, ``_learning_rate``, ``_variables/N`` (every
  optimizer variable), ``_trainable_variables/N`` (the model variables it trains:
  the *same* nodes as the model's) and per-slot lists (``_momentums/N``,
  ``_velocities/N``). No ``slot_variables`` are recorded: the moments are plain
  variables, named by Keras ``<optimizer>/<model variable path with _>_<slot>``
  (``adam/sequential_dense_kernel_momentum``), which the graph keeps as their ``full_name``;
- a ``Sequential`` model holds ``_functional/_operations/N`` (its layers, the input
  layer first), a layer its variables under the attributes holding them (``_kernel``,
  ``bias``), each with its Keras path (``sequential/dense/kernel``) as ``full_name``.

ckptcore's Keras adapters (``ckptcore_tf``, any Keras backend) name the same objects as
``tf.keras`` did: ``learning_rate`` (and ``iter``), TensorFlow slot variables named by the Keras
slot name (``momentum``, ``velocity``) attached to the model variable, and
``layer_with_weights-K/kernel``. :func:`add_keras3_names` adds those names to the saved
graph as extra edges (the original edges stay, so objects tracked TensorFlow's way still
match) and the moments as slots, by the rule Keras names them with, only where it is
unambiguous (one moment per model variable for a slot name, the same shapes).

Example:
    >>> from ckptcore.formats import ckpt as fmt
    >>> e = fmt.TensorEntry("k", "float32", (), 0, 0, 4, 0)
    >>> nodes = [fmt.Node(children=[("_iterations", 1), ("_learning_rate", 2), ("_trainable_variables", 3)]),
    ...          fmt.Node(), fmt.Node(attributes={"VARIABLE_VALUE": e}), fmt.Node()]
    >>> add_keras3_names(nodes, {2: "adam/learning_rate"})
    >>> nodes[0].children[-1]
    ('learning_rate', 2)
"""

from __future__ import annotations

from ..ckpt import Node, TensorEntry

__all__ = ["add_keras3_names"]



def _child(node: Node, name: str) -> int | None:
    for n, c in node.children:
        if n == name:
            return c
    return None


def _items(nodes: list[Node], nid: int | None) -> list[int]:
    """The items of a list node (children ``0``, ``1``, ... in order)."""
    if nid is None:
        return []
    kids = dict(nodes[nid].children)
    out: list[int] = []
    while str(len(out)) in kids:
        out.append(kids[str(len(out))])
    return out


def _variable(nodes: list[Node], nid: int, full_names: dict[int, str]) -> tuple[str, TensorEntry] | None:
    """``(Keras path, tensor)`` of a variable node, or None."""
    entry = nodes[nid].attributes.get("VARIABLE_VALUE")
    name = full_names.get(nid)
    if entry is None or not name:
        return None
    return name, entry


def _add_edge(node: Node, name: str, target: int) -> None:
    if _child(node, name) is None:
        node.children = [*node.children, (name, target)]


def add_keras3_names(nodes: list[Node], full_names: dict[int, str]) -> None:
    """Add ckptcore's Keras names and slots to ``nodes`` (a graph decoded from ``TrackableObjectGraph``).

    ``full_names`` maps a node id to the ``full_name`` of its ``VARIABLE_VALUE``.
    """
    for nid, node in enumerate(nodes):
        if _child(node, "_iterations") is not None and _child(node, "_trainable_variables") is not None:
            _optimizer(nodes, nid, full_names)
        ops = _child(node, "_operations")
        functional = _child(node, "_functional")
        if ops is None and functional is not None:
            ops = _child(nodes[functional], "_operations")
        if ops is not None:
            _model(nodes, nid, _items(nodes, ops), full_names)


def _optimizer(nodes: list[Node], nid: int, full_names: dict[int, str]) -> None:
    node = nodes[nid]
    it, lr = _child(node, "_iterations"), _child(node, "_learning_rate")
    # TensorFlow's Keras counts iterations in int64, the torch backend in int32: ckptcore_tf's Keras variable
    # adapter takes integers of another width (accepts_dtype), range-checked
    if it is not None and "VARIABLE_VALUE" in nodes[it].attributes:
        _add_edge(node, "iter", it)
    if lr is not None and "VARIABLE_VALUE" in nodes[lr].attributes:
        _add_edge(node, "learning_rate", lr)
    refs = []
    for r in _items(nodes, _child(node, "_trainable_variables")):
        ref = _variable(nodes, r, full_names)
        if ref is not None:
            refs.append((ref[0].replace("/", "_") + "_", r, tuple(ref[1].shape)))
    by_prefix: dict[str, list[tuple[int, tuple]]] = {}
    for prefix, r, shape in refs:
        by_prefix.setdefault(prefix, []).append((r, shape))
    prefixes = sorted(by_prefix, key=len, reverse=True)
    groups: dict[tuple[str, str], list[tuple[int, tuple]]] = {}
    for vid in _items(nodes, _child(node, "_variables")):
        if vid in (it, lr):
            continue
        var = _variable(nodes, vid, full_names)
        if var is None:
            continue
        name = var[0].rsplit("/", 1)[-1]
        p = next((p for p in prefixes if name.startswith(p) and len(name) > len(p)), None)
        if p is not None:
            groups.setdefault((p, name[len(p):]), []).append((vid, tuple(var[1].shape)))
    slots = list(node.slots)
    taken = {(v, s) for v, s, _ in slots}
    for (p, slot_name), vs in groups.items():
        rs = by_prefix[p]
        if len(vs) != len(rs) or any(a[1] != b[1] for a, b in zip(rs, vs)):
            continue  # ambiguous: the moments stay plain variables, restored by path
        for (r, _), (vid, _) in zip(rs, vs):
            if (r, slot_name) not in taken:
                slots.append((r, slot_name, vid))
    node.slots = slots


def _has_variables(nodes: list[Node], nid: int, memo: dict[int, bool]) -> bool:
    """Whether node ``nid`` or a node below it holds a variable (each node looked at once per graph)."""
    if nid in memo:
        return memo[nid]
    order, todo = [], [nid]
    memo[nid] = False  # (a cycle back to a node in progress adds nothing)
    while todo:
        at = todo.pop()
        order.append(at)
        for _, c in nodes[at].children:
            if c not in memo:
                memo[c] = False
                todo.append(c)
    for at in reversed(order):  # children before parents (a cycle's members share what they reach once done)
        memo[at] = "VARIABLE_VALUE" in nodes[at].attributes or any(memo[c] for _, c in nodes[at].children)
    return memo[nid]


def _model(nodes: list[Node], nid: int, layers: list[int], full_names: dict[int, str]) -> None:
    """``layer_with_weights-K`` edges to the layers that hold variables; their variables under their Keras names."""
    k = 0
    memo: dict[int, bool] = {}
    seen: set[int] = set()
    for layer in layers:
        if not _has_variables(nodes, layer, memo):
            continue
        _add_edge(nodes[nid], f"layer_with_weights-{k}", layer)
        k += 1
        todo = [layer] if layer not in seen else []
        seen.add(layer)
        while todo:  # the layer and its sublayers: each variable also under its Keras name (kernel, not _kernel)
            at = todo.pop()
            for _name, c in list(nodes[at].children):
                v = _variable(nodes, c, full_names)
                if v is not None:
                    _add_edge(nodes[at], v[0].rsplit("/", 1)[-1], c)
                elif c not in seen:
                    seen.add(c)
                    todo.append(c)
