"""Checkpoints without an object graph (safetensors files, TF1 ``Saver`` checkpoints), matched by name.

Their flat keys become a graph: ``encoder.layers.3.bias`` (safetensors, ``.``-separated)
or ``dense/kernel`` (TF1, ``/``-separated) is the object ``bias`` holding the value, below
``3``, below ``layers``, below ``encoder``: exactly the object paths a live model's
adapters report, so restore matches them as it matches a saved object graph.

When the live root has one child (``ck.Checkpoint(model=net)``) and the file's keys do not
start with its name, the keys are taken as relative to that child: a file saved from
``net.state_dict()`` restores into ``Checkpoint(model=net)`` as into ``Checkpoint(root=net)``.

Example:
    >>> from ckptcore.formats import ckpt as fmt
    >>> e = fmt.TensorEntry("0.weight", "float32", (1,), 0, 0, 4, 0)
    >>> [n.children for n in nodes_from_keys({"0.weight": e}, ".")]
    [[('0', 1)], [('weight', 2)], []]
"""

from __future__ import annotations

from . import ckpt as fmt

VARIABLE_VALUE = "VARIABLE_VALUE"


def nodes_from_keys(tensors: dict[str, fmt.TensorEntry], sep: str, attr: str = VARIABLE_VALUE) -> list[fmt.Node]:
    """A graph built from flat keys: ``a/b/c`` is node ``c`` (holding the value) below ``b`` below ``a``.

    Example:
        >>> e = fmt.TensorEntry("dense/kernel", "float32", (1,), 0, 0, 4, 0)
        >>> [n.children for n in nodes_from_keys({"dense/kernel": e}, "/")]
        [[('dense', 1)], [('kernel', 2)], []]
    """
    nodes = [fmt.Node(children=[], attributes={})]
    index: dict[tuple, int] = {(): 0}
    for key in sorted(tensors):
        parts = tuple(key.split(sep))
        for depth in range(1, len(parts) + 1):
            p = parts[:depth]
            if p not in index:
                index[p] = len(nodes)
                nodes[index[parts[:depth - 1]]].children.append((parts[depth - 1], len(nodes)))
                nodes.append(fmt.Node(children=[], attributes={}))
        nodes[index[parts]].attributes[attr] = tensors[key]
    return nodes


def is_flat(index: fmt.Index) -> bool:
    """Whether ``index``'s graph was built from flat keys (no saved object graph).

    Example:
        >>> is_flat(fmt.Index(nodes=[fmt.Node()], metadata={"flat": True}))
        True
    """
    return bool(index.metadata.get("flat"))


def fit_to_live_root(index: fmt.Index, live_names: list[str]) -> fmt.Index:
    """``index``, or the same tensors below a new root whose one child is ``live_names[0]``.

    Used for a flat checkpoint restored through a root with a single child whose name the
    file's top-level keys do not use (``ck.Checkpoint(model=net)`` and keys ``0.weight``).
    The tensor table keeps its rows in order, so reads by row are unchanged.

    Example:
        >>> e = fmt.TensorEntry("w", "float32", (1,), 0, 0, 4, 0)
        >>> idx = fmt.Index(nodes=nodes_from_keys({"w": e}, "."), metadata={"flat": True})
        >>> fit_to_live_root(idx, ["model"]).graph.children(0)
        [('model', 1)]
    """
    if not is_flat(index) or len(live_names) != 1:
        return index
    name = live_names[0]
    top = {n for n, _ in index.graph.children(0)}
    if name in top or not top:
        return index
    old = index.nodes
    shifted = [fmt.Node(adapter=n.adapter, type=n.type, children=[(c, i + 1) for c, i in n.children],
                        attributes=n.attributes) for n in old]
    out = fmt.Index(nodes=[fmt.Node(children=[(name, 1)], attributes={}), *shifted], num_shards=index.num_shards,
                    shard_sizes=index.shard_sizes, metadata=dict(index.metadata, rooted_at=name))
    out.data_files, out.checksummed = index.data_files, index.checksummed
    return out
