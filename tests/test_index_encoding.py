"""The index encoder writes exactly what ``json.dumps`` of the documented structure writes.

``Index.encode`` formats node and tensor records directly (for speed with many
small arrays); these tests pin it to the reference encoding, byte for byte,
and check that every encoded index decodes back to the same graph.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptcore import format as fmt

names = st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


def _reference(index: fmt.Index) -> bytes:
    doc = {"format": "ckptcore", "version": index.version, "num_shards": index.num_shards,
           "shard_sizes": index.shard_sizes, "metadata": index.metadata,
           "nodes": [n.to_json() for n in index.nodes]}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")


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
    metadata = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3))
    return fmt.Index(nodes=nodes, num_shards=1, shard_sizes=[offset], metadata=metadata)


@settings(max_examples=150, deadline=None)
@given(indexes())
def test_encode_is_json_dumps_of_the_document(index):
    encoded = index.encode()
    body = encoded[fmt.HEADER_SIZE:]
    assert body == _reference(index)
    decoded_nodes = []
    try:
        decoded = fmt.decode_index(encoded, "x.index")
    except fmt.CorruptCheckpointError:
        # generated graphs may be invalid (a repeated key, a repeated child name): the encoder
        # still wrote exactly the reference bytes, which is what this test pins
        return
    decoded_nodes = [n.to_json() for n in decoded.nodes]
    assert decoded_nodes == [n.to_json() for n in index.nodes]
    assert decoded.metadata == index.metadata


def test_encode_escapes_like_json_dumps():
    key = 'a"b\\c/\n\u00e9\u4e2d\U0001F600'
    entry = fmt.TensorEntry(key, "float32", (2,), 0, 0, 8, 7)
    index = fmt.Index(nodes=[fmt.Node("ckptcore.module", "t\u00e9", [(key, 0)], {key: entry}, {"s": key})],
                      num_shards=1, shard_sizes=[8])
    assert index.encode()[fmt.HEADER_SIZE:] == _reference(index)
    back = fmt.decode_index(index.encode(), "x.index")
    assert back.nodes[0].attributes[key].key == key and back.nodes[0].children == [(key, 0)]


def test_state_that_is_not_json_is_refused():
    index = fmt.Index(nodes=[fmt.Node("a", "b", [], {}, float("nan"))], num_shards=1, shard_sizes=[0])
    with pytest.raises(ValueError):
        index.encode()
