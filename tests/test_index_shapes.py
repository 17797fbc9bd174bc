"""Shapes of every rank survive the index's flat ``ndim``/``dims`` columns, equal shapes as one tuple."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptcore.formats import ckpt as fmt

shapes = st.lists(st.lists(st.integers(0, 5), max_size=4).map(tuple), max_size=40)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_decoded_shapes_equal_the_saved_ones_and_repeats_share_a_tuple(saved):
    entries, offset = [], 0
    for i, shape in enumerate(saved):
        nbytes = int(np.prod(shape, dtype=np.int64))
        entries.append(fmt.TensorEntry(f"k{i}", "int8", shape, 0, offset, nbytes, 0))
        offset += nbytes
    index = fmt.Index(nodes=[fmt.Node(), fmt.Node(attributes={f"a{i}": e for i, e in enumerate(entries)})],
                      num_shards=1, shard_sizes=[offset])
    table = fmt.decode_index(index.encode(), "x.index").table
    assert table.shape == [tuple(s) for s in saved]
    assert all(type(s) is tuple and all(type(d) is int for d in s) for s in table.shape)
    first: dict[tuple, tuple] = {}
    for s in table.shape:
        assert first.setdefault(s, s) is s
    assert list(table.node) == [1] * len(saved)
