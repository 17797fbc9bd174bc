"""The index encoders write exactly what ``json.dumps`` of the documented structures writes.

``Index.encode`` formats records and columns directly (for speed with many small
arrays); these tests pin both format versions to a reference encoding built the
plain way from docs/format.md, byte for byte, and check that every encoded index
decodes back to the same graph, whichever version wrote it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptcore.formats import ckpt as fmt

names = st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


def _reference(index: fmt.Index) -> bytes:
    """Version 1: one object per node, one per tensor."""
    doc = {"format": "ckptcore", "version": 1, "num_shards": index.num_shards,
           "shard_sizes": index.shard_sizes, "metadata": index.metadata,
           "nodes": [n.to_json() for n in index.nodes]}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _esc(name: str) -> str:
    return name.replace(".", "..").replace("/", ".S")


def _reference_keys(nodes: list) -> list | None:
    """The keys docs/format.md's version 6 derives from the graph, the plain way; None where it derives none.

    Node j's path extends the path of the first edge (nodes in order, then their edges) that points
    at it, from an earlier node; a slot node is reached by no edge and takes its key from its row.
    """
    first: dict[int, tuple[int, str]] = {}
    for i, n in enumerate(nodes):
        for name, c in n.children:
            first.setdefault(c, (i, name))
    slot_of: dict[int, tuple[int, int, str]] = {}
    for i, n in enumerate(nodes):
        for var, name, s in n.slots:
            if s in slot_of:
                return None
            slot_of[s] = (i, var, name)
    if len(set(slot_of.values())) != len(slot_of) or 0 in slot_of:
        return None
    if any(o in slot_of or v in slot_of for o, v, _ in slot_of.values()):
        return None
    if any(len(nodes[s].attributes) > 1 for s in slot_of) or any(name == "" for name, _ in nodes[0].children):
        return None
    paths = {0: ""}
    for j in range(1, len(nodes)):
        if j in slot_of:
            if j in first:
                return None
            continue
        if j not in first or first[j][0] >= j or first[j][0] in slot_of:
            return None
        p, name = first[j]
        paths[j] = f"{paths[p]}/{_esc(name)}" if p else _esc(name)
    keys = []
    for i, n in enumerate(nodes):
        for a in n.attributes:
            if i in slot_of:
                o, v, name = slot_of[i]
                keys.append(f"{paths[v]}/.OPTIMIZER_SLOT/{paths[o]}/{_esc(name)}/.ATTRIBUTES/VARIABLE_VALUE")
            else:
                keys.append(f"{paths[i]}/.ATTRIBUTES/{_esc(a)}")
    return keys


def _reference_v2(index: fmt.Index) -> bytes:
    """Version 2, built field by field as docs/format.md describes it: JSON, then the binary columns."""
    adapters = list(dict.fromkeys(n.adapter for n in index.nodes))
    types = list(dict.fromkeys(n.type for n in index.nodes))
    entries = [e for n in index.nodes for e in n.attributes.values()]
    dtypes = list(dict.fromkeys(e.dtype for e in entries))
    section = bytearray()

    def column(values):  # the narrowest unsigned little-endian type, each column 8-byte aligned
        top = max(values, default=0)
        dtype = next(d for d, bits in (("<u1", 8), ("<u2", 16), ("<u4", 32), ("<u8", 64)) if top < 1 << bits)
        ref = {"dtype": dtype, "offset": len(section), "count": len(values)}
        section.extend(np.array(values, np.uint64).astype(dtype).tobytes())
        section.extend(bytes(-len(section) % 8))
        return ref

    v6 = _reference_keys(index.nodes) == [e.key for e in entries]   # version 6: no keys

    def names(values):   # version 6: the distinct names, and a column of indexes into them
        if not v6:
            return values
        distinct = list(dict.fromkeys(values))
        return {"names": distinct, "name": column([distinct.index(v) for v in values])}

    nodes = {
        "adapters": adapters, "types": types,
        "adapter": column([adapters.index(n.adapter) for n in index.nodes]),
        "type": column([types.index(n.type) for n in index.nodes]),
        "num_children": column([len(n.children) for n in index.nodes]),
        "child_name": names([name for n in index.nodes for name, _ in n.children]),
        "child": column([c for n in index.nodes for _, c in n.children]),
        "num_attributes": column([len(n.attributes) for n in index.nodes]),
        "attribute": names([a for n in index.nodes for a in n.attributes]),
        "state": [[i, n.state] for i, n in enumerate(index.nodes) if n.state is not None],
    }
    rows = [(i, v, name, s) for i, n in enumerate(index.nodes) for v, name, s in n.slots]
    if rows or v6:  # version 5 and later: four columns, the names as indexes into the distinct names
        slot_names = list(dict.fromkeys(r[2] for r in rows))
        nodes["slots"] = {"names": slot_names, "optimizer": column([r[0] for r in rows]),
                          "variable": column([r[1] for r in rows]),
                          "name": column([slot_names.index(r[2]) for r in rows]), "slot": column([r[3] for r in rows])}
    else:
        nodes["slots"] = []
    tensors = {
        "dtypes": dtypes, **({} if v6 else {"key": [e.key for e in entries]}),
        "dtype": column([dtypes.index(e.dtype) for e in entries]), "ndim": column([len(e.shape) for e in entries]),
        "dims": column([d for e in entries for d in e.shape]), "shard": column([e.shard for e in entries]),
        "offset": column([e.offset for e in entries]), "nbytes": column([e.nbytes for e in entries]),
        "crc32c": column([e.crc32c for e in entries]),
    }
    doc = {"format": "ckptcore", "version": 6 if v6 else 5 if rows else 2, "num_shards": index.num_shards,
           "shard_sizes": index.shard_sizes, "metadata": index.metadata,
           "columns": {"nbytes": len(section), "crc32c": fmt.crc32c(bytes(section))},
           "nodes": nodes, "tensors": tensors}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8") + bytes(section)


def _graph(index: fmt.Index) -> list:
    return [n.to_json() for n in index.nodes]


@st.composite
def indexes(draw):
    n = draw(st.integers(1, 5))
    nodes = []
    offset = 0
    for i in range(n):
        child_names = draw(st.lists(names, max_size=3, unique=True))
        children = [(c, draw(st.integers(0, n - 1))) for c in child_names]
        attrs = {}
        for a in draw(st.lists(names, max_size=2, unique=True)):
            shape = tuple(draw(st.lists(st.integers(1, 5), max_size=3)))
            nbytes = 4
            for d in shape:
                nbytes *= d
            attrs[a] = fmt.TensorEntry(f"{i}/{a}/{draw(names)}", "float32", shape, 0, offset, nbytes,
                                       draw(st.integers(0, 0xFFFFFFFF)))
            offset = fmt.align(offset + nbytes)
        state = draw(st.none() | json_values)
        slots = [(draw(st.integers(0, n - 1)), draw(names), draw(st.integers(0, n - 1)))
                 for _ in range(draw(st.integers(0, 2)))]
        nodes.append(fmt.Node(draw(names), draw(names), children, attrs, state, slots))
    derived = _reference_keys(nodes)
    if derived is not None and draw(st.booleans()):   # keys as the saver makes them: a version-6 index
        for e, key in zip([e for n in nodes for e in n.attributes.values()], derived):
            e.key = key
    metadata = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3))
    return fmt.Index(nodes=nodes, num_shards=1, shard_sizes=[offset], metadata=metadata)


@settings(max_examples=150, deadline=None)
@given(indexes(), st.sampled_from([1, 2]))
def test_encode_is_json_dumps_of_the_document(index, version):
    index.version = version
    encoded = index.encode()
    body = encoded[fmt.HEADER_SIZE:]
    assert body == (_reference if version == 1 else _reference_v2)(index)
    try:
        decoded = fmt.decode_index(encoded, "x.index")
    except fmt.CorruptCheckpointError:
        # generated graphs may be invalid (a repeated key, a repeated child name): the encoder
        # still wrote exactly the reference bytes, which is what this test pins
        return
    v6 = _reference_keys(index.nodes) == [e.key for e in index.tensors()]
    assert decoded.version == (version if version == 1 else 6 if v6 else 5 if any(n.slots for n in index.nodes)
                               else version)
    assert _graph(decoded) == _graph(index)
    assert decoded.metadata == index.metadata
    assert [e.key for e in decoded.tensors()] == [e.key for e in index.tensors()]


@settings(max_examples=100, deadline=None)
@given(indexes())
def test_both_versions_decode_to_the_same_index(index):
    """A checkpoint written by a version-1 ckptcore restores exactly like a new one."""
    decoded = {}
    for version in (1, 2):
        index.version = version
        try:
            decoded[version] = fmt.decode_index(index.encode(), "x.index")
        except fmt.CorruptCheckpointError as e:
            decoded[version] = type(e)
    if isinstance(decoded[1], type) or isinstance(decoded[2], type):
        assert decoded[1] == decoded[2]  # both refuse an invalid graph
        return
    assert _graph(decoded[1]) == _graph(decoded[2])
    assert list(decoded[1].tensors()) == list(decoded[2].tensors())


def test_encode_escapes_like_json_dumps():
    key = 'a"b\\c/\n\u00e9\u4e2d\U0001F600'
    entry = fmt.TensorEntry(key, "float32", (2,), 0, 0, 8, 7)
    index = fmt.Index(nodes=[fmt.Node("ckptcore.module", "t\u00e9", [(key, 0)], {key: entry}, {"s": key})],
                      num_shards=1, shard_sizes=[8])
    for version, reference in ((1, _reference), (2, _reference_v2)):
        index.version = version
        assert index.encode()[fmt.HEADER_SIZE:] == reference(index)
        back = fmt.decode_index(index.encode(), "x.index")
        assert back.nodes[0].attributes[key].key == key and back.nodes[0].children == [(key, 0)]
        assert back.nodes[0].state == {"s": key} and back.nodes[0].type == "t\u00e9"


@pytest.mark.parametrize("version", [1, 2])
def test_state_that_is_not_json_is_refused(version):
    index = fmt.Index(nodes=[fmt.Node("a", "b", [], {}, float("nan"))], num_shards=1, shard_sizes=[0],
                      version=version)
    with pytest.raises(ValueError):
        index.encode()
