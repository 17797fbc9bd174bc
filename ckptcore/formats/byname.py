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
    out.pieces, out.decoded_rows = index.pieces, index.decoded_rows  # (rows keep their numbers)
    return out


def _tf_name(name: str) -> str:
    """``dense/kernel:0`` (a TensorFlow variable's name) -> ``dense/kernel`` (its checkpoint key)."""
    head, sep, tail = name.rpartition(":")
    return head if sep and tail.isdigit() else name


def restore_by_name(session, root, extra_root_children) -> int:
    """Give every live ``ck.Variable`` whose ``name`` is a key of a flat checkpoint that key's value.

    Runs after the match by object path, so a variable's name wins over its path. Each
    value is checked against the variable (shape, dtype) before it is assigned. Returns
    how many variables were matched by name.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> from safetensors.numpy import save_file
        >>> save_file({"dense/kernel": np.ones(2, np.float32)}, "/tmp/byname-doc.safetensors")
        >>> v = ck.Variable(np.zeros(2, np.float32), name="dense/kernel")
        >>> ck.Checkpoint(anything=v).read("/tmp/byname-doc.safetensors").assert_consumed() is not None
        True
        >>> v.numpy().tolist()
        [1.0, 1.0]
    """
    from ..graph import walk
    from ..registry import find_adapter
    from ..variable import Variable

    table = session.table
    rows = {k: t for t, k in enumerate(table.key)}
    n = 0
    for ln in walk(root, list(extra_root_children), root_adapter=find_adapter(root)):
        obj = ln.obj
        if type(obj) is not Variable or not obj.name:
            continue
        t = rows.get(_tf_name(obj.name))
        if t is None:
            continue
        nid = int(table.node[t])
        if session.matched_node(obj) == nid:
            continue
        matches = [(obj, ln.adapter, nid, -1, None)]
        (rws, dests, callbacks), after = session._plan_values(matches, ln.path)
        if rws:
            session.reader.read_rows(rws, dests, callbacks, verify=session.verify)
        session._commit_matches(matches, [])
        for fn in after:
            fn()
        n += 1
    return n
