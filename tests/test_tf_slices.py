"""TensorFlow's partitioned (sliced) variables and string tensors, read without TensorFlow.

Golden files written by real TensorFlow 2.21 (tests/fixtures/tf/make_fixtures.py, fixtures 5-7), and
hand-built hostile bundles: every slice is checked before anything is read.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.formats import ckpt as fmt
from ckptcore.formats.tensorbundle import bundle, slices, table
from ckptcore.formats.tensorbundle.protos import message
from ckptcore.formats.tensorbundle.strings import MAX_STRING_ELEMENTS, decode_strings, encode_strings

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tf")
with open(os.path.join(FIXTURES, "expected.json")) as _f:
    EXPECTED = json.load(_f)
GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _fixture(name: str) -> str:
    return os.path.join(FIXTURES, EXPECTED[name]["path"])


def _copy(name: str, tmp_path) -> str:
    d = tmp_path / name
    shutil.copytree(os.path.dirname(_fixture(name)), d)
    return str(d / os.path.basename(_fixture(name)))


# -- partitioned variables -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tf2_sliced", "tf1_partitioned", "tf2_strings"])
def test_list_variables_matches_tensorflows(name):
    # the full variables (not their slice entries), and the object graph, as tf.train.list_variables lists them
    assert dict(ck.list_variables(_fixture(name))) == EXPECTED[name]["keys"]


@pytest.mark.parametrize("name", ["tf2_sliced", "tf1_partitioned"])
def test_sliced_variables_read_whole(name):
    r = ck.load_checkpoint(_fixture(name))
    for key, want in EXPECTED[name]["values"].items():
        got = r.get_tensor(key)
        assert got.shape == tuple(EXPECTED[name]["keys"][key])
        assert got.astype(np.float64).ravel().tolist() == want, key
    assert r.verify() > 0


def test_a_variable_split_across_shards_restores_into_variables_and_arrays():
    # MaxShardSizePolicy cut "big" into 4 slices over 3 data files; "sv" is a ShardedVariable cut further
    want = EXPECTED["tf2_sliced"]["values"]
    big = ck.Variable(np.zeros((10, 4), np.float32))
    small = np.zeros(2, np.int64)
    sv = ck.Variable(np.zeros((3, 3), np.float64))
    ck.Checkpoint(big=big, small=small, sv=sv).read(_fixture("tf2_sliced")).assert_consumed()
    assert big.numpy().ravel().tolist() == want["big/.ATTRIBUTES/VARIABLE_VALUE"]
    assert sv.numpy().ravel().tolist() == want["sv/.ATTRIBUTES/VARIABLE_VALUE"]
    assert small.tolist() == [7, 8]


def test_tf1_partitioned_variables_restore_by_name_and_by_path():
    emb = ck.Variable(np.zeros((6, 5), np.float32), name="emb")
    holder = ck.Module()
    holder.anything = emb
    ck.Checkpoint(root=holder).restore(_fixture("tf1_partitioned")).expect_partial()
    assert emb.numpy()[5].tolist() == [26, 27, 28, 29, 30]
    m = ck.Module()
    m.dense = ck.Module()
    m.dense.cols = np.zeros((3, 4), np.int32)
    m.emb = np.zeros((6, 5), np.float32)
    ck.Checkpoint(root=m).restore(_fixture("tf1_partitioned")).assert_consumed()
    assert m.dense.cols.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]


def test_a_corrupt_slice_names_the_variable_and_file(tmp_path):
    path = _copy("tf1_partitioned", tmp_path)
    data = path + ".data-00000-of-00001"
    raw = bytearray(open(data, "rb").read())
    raw[100] ^= 0x40  # inside emb's second slice
    open(data, "wb").write(bytes(raw))
    r = ck.load_checkpoint(path)
    with pytest.raises(ck.CorruptCheckpointError, match="'emb'.*model.ckpt.data"):
        r.get_tensor("emb")
    with pytest.raises(ck.CorruptCheckpointError, match="'emb'"):
        r.verify()
    assert r.get_tensor("dense/cols").shape == (3, 4)  # the other variable still reads


def test_slice_keys_are_tensorflows():
    # every slice entry TensorFlow wrote decodes, and ckptcore's encoder gives back exactly its key
    _, items = bundle._raw_entries(open(_fixture("tf2_sliced") + ".index", "rb").read(), "x")
    keys = [k for k in items if k.startswith(b"\x00")]
    assert len(keys) == 7
    for k in keys:
        name, starts, lengths = slices.decode_slice_key(k)
        assert slices.encode_slice_key(name, starts, lengths) == k


@given(st.text(max_size=20), st.lists(st.tuples(st.integers(-(1 << 63), (1 << 63) - 1),
                                                 st.integers(-(1 << 63), (1 << 63) - 1)), min_size=1, max_size=4))
def test_slice_keys_round_trip(name, dims):
    k = slices.encode_slice_key(name, [a for a, _ in dims], [b for _, b in dims])
    assert slices.decode_slice_key(k) == (name, tuple(a for a, _ in dims), tuple(b for _, b in dims))


@given(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=2, max_size=2, unique=True))
def test_signed_numbers_sort_as_their_encodings(pair):
    # OrderedCode's promise (and why TensorFlow uses it for keys): encodings sort as the numbers do
    enc = []
    for v in pair:
        b = bytearray()
        slices.write_signed_num_increasing(b, v)
        enc.append(bytes(b))
    assert (pair[0] < pair[1]) == (enc[0] < enc[1])


# -- hostile bundles -------------------------------------------------------------------------------------------


def _write_bundle(prefix: str, full_shape, boxes, *, dtype=1, values=None, extra=(), num_shards=1,
                  full_lengths=None):
    """A bundle with one float32 variable ``w`` of ``full_shape`` saved as the slices ``boxes`` (start, extent)."""
    Entry = message("BundleEntryProto")
    data = bytearray()
    items = {}
    full = Entry(dtype=dtype)
    for d in full_shape:
        full.shape.dim.add(size=d)
    arr = np.arange(int(np.prod(full_shape)), dtype=np.float32).reshape(full_shape) if values is None else values
    for i, (start, extent) in enumerate(boxes):
        sl = full.slices.add()
        for d, (s, e) in enumerate(zip(start, extent)):
            x = sl.extent.add(start=s)
            if full_lengths is None or full_lengths[i][d] != -1:
                x.length = e
        part = np.ascontiguousarray(arr[tuple(slice(s, s + e) for s, e in zip(start, extent))]) \
            if len(start) == len(full_shape) and all(s + e <= n for s, e, n in zip(start, extent, full_shape)) \
            else np.zeros(extent, np.float32)
        lengths = [e if full_lengths is None else full_lengths[i][d] for d, e in enumerate(extent)]
        se = Entry(dtype=dtype, shard_id=0, offset=len(data), size=part.nbytes,
                   crc32c=table.mask(fmt.crc32c(part.tobytes())))
        for e in extent:
            se.shape.dim.add(size=e)
        items[slices.encode_slice_key("w", start, lengths)] = se.SerializeToString()
        data += part.tobytes()
    items[b"w"] = full.SerializeToString()
    for k, v in extra:
        items[k] = v
    header = message("BundleHeaderProto")(num_shards=num_shards)
    header.version.producer = 1
    raw = table.build([(b"", header.SerializeToString())] + sorted(items.items()))
    with open(prefix + ".index", "wb") as f:
        f.write(raw)
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(bytes(data))
    return arr


def test_a_hand_built_sliced_bundle_reads(tmp_path):
    p = str(tmp_path / "c")
    arr = _write_bundle(p, (4, 3), [((0, 0), (4, 1)), ((0, 1), (2, 2)), ((2, 1), (2, 2))])
    assert ck.load_checkpoint(p).get_tensor("w").tolist() == arr.tolist()
    # an extent with no length (the whole dimension) is keyed with length -1, as TensorFlow does
    arr = _write_bundle(p, (4, 3), [((0, 0), (1, 3)), ((1, 0), (3, 3))], full_lengths=[(1, -1), (3, -1)])
    assert ck.load_checkpoint(p).get_tensor("w").tolist() == arr.tolist()


@pytest.mark.parametrize("boxes, match", [
    ([((0, 0), (2, 3)), ((1, 0), (3, 3))], "cover 15 of its 12|overlap"),
    ([((0, 0), (2, 3)), ((1, 0), (2, 3))], "overlap"),
    ([((0, 0), (2, 3))], "cover 6 of its 12"),
    ([((0, 0), (4, 3)), ((3, 0), (2, 3))], "outside"),
    ([((0, 0, 0), (2, 3, 1))], "extents for a tensor of rank 2"),
])
def test_slices_that_do_not_tile_the_variable_are_refused(tmp_path, boxes, match):
    p = str(tmp_path / "c")
    _write_bundle(p, (4, 3), boxes)
    with pytest.raises(ck.CorruptCheckpointError, match=f"c.index.*'w'.*({match})"):
        ck.load_checkpoint(p)


def test_a_missing_or_mismatched_slice_entry_is_refused(tmp_path):
    p = str(tmp_path / "c")
    _write_bundle(p, (4, 3), [((0, 0), (2, 3)), ((2, 0), (2, 3))])
    _, items = bundle._raw_entries(open(p + ".index", "rb").read(), p)
    header = message("BundleHeaderProto")(num_shards=1)
    # drop one slice entry
    kept = [(k, v.SerializeToString()) for k, v in sorted(items.items()) if k != slices.encode_slice_key("w", (2, 0),
                                                                                                          (2, 3))]
    open(p + ".index", "wb").write(table.build([(b"", header.SerializeToString())] + kept))
    with pytest.raises(ck.CorruptCheckpointError, match="'w'.*slice 1.*no entry"):
        ck.load_checkpoint(p)
    # a slice entry of another dtype
    bad = dict(items)
    k0 = slices.encode_slice_key("w", (0, 0), (2, 3))
    e = message("BundleEntryProto")()
    e.CopyFrom(bad[k0])
    e.dtype = 3
    bad[k0] = e
    open(p + ".index", "wb").write(table.build([(b"", header.SerializeToString())] +
                                               [(k, v.SerializeToString()) for k, v in sorted(bad.items())]))
    with pytest.raises(ck.CorruptCheckpointError, match="'w'.*does not match"):
        ck.load_checkpoint(p)


def test_a_slice_entry_no_variable_lists_is_refused(tmp_path):
    p = str(tmp_path / "c")
    stray = message("BundleEntryProto")(dtype=1, size=4)
    stray.shape.dim.add(size=1)
    _write_bundle(p, (4, 3), [((0, 0), (4, 3))], extra=[(slices.encode_slice_key("v", [0], [1]),
                                                          stray.SerializeToString())])
    with pytest.raises(ck.CorruptCheckpointError, match="slice entry no partitioned variable lists"):
        ck.load_checkpoint(p)


def test_too_many_slices_are_refused_before_reading(tmp_path):
    e = message("BundleEntryProto")(dtype=1)
    e.shape.dim.add(size=1 << 20)
    for i in range(slices.MAX_PIECES_PER_TENSOR + 1):
        e.slices.add().extent.add(start=i, length=1)
    with pytest.raises(ck.CorruptCheckpointError, match="slices \\(at most"):
        slices.slice_boxes(e, (1 << 20,), "h.index", "w")


def test_a_sliced_scalar_is_refused():
    e = message("BundleEntryProto")(dtype=1)
    e.slices.add()
    with pytest.raises(ck.CorruptCheckpointError, match="scalar cannot be sliced"):
        slices.slice_boxes(e, (), "h.index", "w")


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
          deadline=None)
@given(st.tuples(st.integers(1, 4), st.integers(1, 4)).flatmap(lambda shape: st.tuples(
    st.just(shape), st.lists(st.tuples(st.tuples(st.integers(0, shape[0]), st.integers(0, shape[1])),
                                       st.tuples(st.integers(0, shape[0]), st.integers(0, shape[1]))),
                             min_size=1, max_size=5))))
def test_any_slice_layout_reads_exactly_or_is_refused(tmp_path, case):
    shape, boxes = case
    p = str(tmp_path / "fuzz")
    arr = _write_bundle(p, shape, boxes)
    cover = np.zeros(shape, np.int64)
    inside = all(s + e <= n for (start, extent) in boxes for s, e, n in zip(start, extent, shape))
    if inside:
        for start, extent in boxes:
            cover[tuple(slice(s, s + e) for s, e in zip(start, extent))] += 1
    # a valid layout: inside the shape, every element once, no slice listed twice (one key each)
    valid = inside and bool((cover == 1).all()) and len(set(boxes)) == len(boxes)
    try:
        got = ck.load_checkpoint(p).get_tensor("w")
    except ck.CorruptCheckpointError as e:
        assert "fuzz" in str(e)
        assert not valid, "a valid tiling was refused"
    else:
        assert valid, "an invalid tiling was read"
        assert got.tolist() == arr.tolist()


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_any_flipped_byte_of_a_sliced_index_is_an_error_or_reads_right(data):
    raw = bytearray(open(_fixture("tf2_sliced") + ".index", "rb").read())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    from ckptcore.storage import open_storage

    storage, prefix = open_storage(_fixture("tf2_sliced"))
    try:
        index = bundle.decode(bytes(raw), "hostile.index", storage, prefix)
    except ck.CorruptCheckpointError as e:
        assert "hostile.index" in str(e) or "data" in str(e)
    else:  # (a flip the table's checksums cannot see, in bytes no reader looks at)
        assert len(index.table) >= 1


# -- string tensors ------------------------------------------------------------------------------------------


def test_string_tensors_read_as_tensorflow_returns_them():
    r = ck.load_checkpoint(_fixture("tf2_strings"))
    for key, want in EXPECTED["tf2_strings"]["strings"].items():
        got = r.get_tensor(key)
        if EXPECTED["tf2_strings"]["keys"][key] == []:  # a scalar string is bytes, as TensorFlow returns it
            assert type(got) is bytes and got.hex() == want[0], key
        else:
            assert got.dtype == object and got.shape == tuple(EXPECTED["tf2_strings"]["keys"][key])
            assert [x.hex() for x in got.ravel()] == want, key
    assert r.get_variable_to_dtype_map()["words/.ATTRIBUTES/VARIABLE_VALUE"] == np.dtype(object)
    assert r.verify() > 0


def test_the_object_graph_is_listed_and_its_bytes_read_but_never_restored():
    r = ck.load_checkpoint(_fixture("tf2_nested"))
    raw = r.get_tensor(GRAPH_KEY)
    graph = message("TrackableObjectGraph").FromString(raw)
    assert graph.nodes[0].children[0].local_name in ("model", "save_counter")
    m = ck.Module()
    m.dense = ck.Module()
    m.dense.kernel = ck.Variable(np.zeros((2, 3), np.float32))
    m.dense.bias = ck.Variable(np.zeros(3, np.float32))
    m.layers = [ck.Variable(np.zeros(2, np.int64)), ck.Variable(np.float64(0))]
    m.table = {"alpha": ck.Variable(np.zeros(1, np.int32))}
    ck.Checkpoint(model=m).restore(_fixture("tf2_nested")).assert_consumed()  # the graph tensor is no value


def test_strings_restore_into_variables_and_object_arrays():
    words = ck.Variable(np.array([[b""] * 2] * 2, dtype=object))
    one = np.array(b"", dtype=object)
    utf8 = np.empty(2, object)
    none = np.empty(0, object)
    n = ck.Variable(np.int32(0))
    ck.Checkpoint(words=words, one=one, utf8=utf8, none=none, n=n).read(_fixture("tf2_strings")).assert_consumed()
    assert words.numpy().tolist() == [[b"a", b"bc"], [b"", b"\x00\xff"]]
    assert one[()] == b"hello" and [x.decode() for x in utf8] == ["\u00e9t\u00e9", "\u6f22"] and int(n) == 3


def test_a_string_into_a_numeric_variable_is_a_dtype_mismatch():
    with pytest.raises(ck.DtypeMismatchError, match="words.*string"):
        ck.Checkpoint(words=ck.Variable(np.zeros((2, 2), np.float32))).read(_fixture("tf2_strings"))


def test_variables_hold_bytes_object_arrays_only():
    assert ck.Variable(np.array([b"x"], dtype=object)).numpy()[0] == b"x"
    with pytest.raises(TypeError, match="object array"):
        ck.Variable(np.array([{"a": 1}], dtype=object))


def test_a_corrupt_string_names_the_key(tmp_path):
    path = _copy("tf2_strings", tmp_path)
    data = path + ".data-00000-of-00001"
    raw = bytearray(open(data, "rb").read())
    raw[14] ^= 1  # inside "hello"
    open(data, "wb").write(bytes(raw))
    r = ck.load_checkpoint(path)
    with pytest.raises(ck.CorruptCheckpointError, match="'one/.ATTRIBUTES/VARIABLE_VALUE'.*data-00000"):
        r.get_tensor("one/.ATTRIBUTES/VARIABLE_VALUE")
    found: list = []
    r.verify(found)
    assert [e.key for e in found] == ["one/.ATTRIBUTES/VARIABLE_VALUE"]


def test_converting_strings_to_ckptcores_format_is_refused_with_the_reason(tmp_path):
    from ckptcore.cli import main

    assert main(["convert", _fixture("tf2_strings"), str(tmp_path / "out")]) != 0
    assert not (tmp_path / "out.index").exists()


@given(st.lists(st.binary(max_size=40), max_size=30))
def test_strings_round_trip(items):
    arr = np.empty(len(items), object)
    arr[:] = items
    raw, crc = encode_strings(arr)
    assert decode_strings(raw, (len(items),), crc, "d", "k").tolist() == items


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=20), min_size=1, max_size=10), st.data())
def test_a_damaged_string_tensor_is_an_error_never_wrong_values(items, data):
    arr = np.empty(len(items), object)
    arr[:] = items
    raw, crc = encode_strings(arr)
    bad = bytearray(raw)
    kind = data.draw(st.sampled_from(["flip", "cut", "grow"]))
    if kind == "flip":
        bad[data.draw(st.integers(0, len(bad) - 1))] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        del bad[data.draw(st.integers(0, len(bad) - 1)):]
    else:
        bad += data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(ck.CorruptCheckpointError, match="'k'"):
        decode_strings(bytes(bad), (len(items),), crc, "d", "k")


def test_string_counts_and_lengths_are_bounded_before_allocating():
    with pytest.raises(ck.CorruptCheckpointError, match="at most"):
        decode_strings(b"\x00" * 8, (MAX_STRING_ELEMENTS + 1,), 0, "d", "k")
    with pytest.raises(ck.CorruptCheckpointError, match="cannot hold"):
        decode_strings(b"\x00" * 8, (100,), 0, "d", "k")
    huge = bytearray()
    table.put_varint(huge, 1 << 60)
    with pytest.raises(ck.CorruptCheckpointError, match="do not add up"):
        decode_strings(bytes(huge) + b"\x00" * 8, (1,), 0, "d", "k")


def test_diff_compares_sliced_variables_by_value(tmp_path, capsys):
    from ckptcore.cli import main

    out = str(tmp_path / "whole")
    assert main(["convert", _fixture("tf1_partitioned"), out]) == 0  # slices -> one tensor each
    assert main(["diff", _fixture("tf1_partitioned"), out]) == 0     # same values, though stored apart
    from safetensors.numpy import save_file

    r = ck.load_checkpoint(out)
    emb = r.get_tensor("emb")
    emb[0, 0] += 1
    other = str(tmp_path / "other.safetensors")
    save_file({"emb": emb, "dense/cols": r.get_tensor("dense/cols")}, other)
    capsys.readouterr()
    assert main(["diff", _fixture("tf1_partitioned"), other, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["value_changed"] == ["emb"]


# -- the other dtypes TensorFlow 2.21 saves -------------------------------------------------------------------


def test_int4_and_quantized_tensors_read_bit_exact():
    import ml_dtypes

    r = ck.load_checkpoint(_fixture("tf2_more_dtypes"))
    want_dtype = {"int4": np.dtype(ml_dtypes.int4), "uint4": np.dtype(ml_dtypes.uint4),
                  # quantized types: the integers they are stored as (TensorFlow keeps their scale elsewhere)
                  "qint8": np.dtype("int8"), "quint8": np.dtype("uint8"), "qint32": np.dtype("int32")}
    for name, raw in EXPECTED["tf2_more_dtypes"]["raw"].items():
        got = r.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")
        assert got.dtype == want_dtype[name] and got.tobytes().hex() == raw, name
    q = np.zeros(3, np.int32)
    ck.Checkpoint(qint32=q).read(_fixture("tf2_more_dtypes")).expect_partial()
    assert q.tolist() == [-70000, 1, 2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["_iterations", "_learning_rate", "_trainable_variables",
                                                    "_variables", "_operations", "_functional", "0", "1", "2",
                                                    "_kernel", "bias"]), st.integers(0, 7)), max_size=6),
                min_size=1, max_size=8),
       st.dictionaries(st.integers(0, 7), st.sampled_from(["a/b", "adam/a_b_momentum", "x", "adam/a_b_velocity"])))
def test_keras3_naming_of_any_graph_terminates_and_only_adds(edges, full_names):
    # hostile graphs (cycles, lists pointing anywhere): extra names and slots only, never a crash or a lost edge
    from ckptcore.formats.tensorbundle.keras3 import add_keras3_names

    e = fmt.TensorEntry("k", "float32", (2,), 0, 0, 8, 0)
    nodes = [fmt.Node(children=[(n, c % len(edges)) for n, c in kids],
                      attributes={"VARIABLE_VALUE": e} if i % 2 else {}) for i, kids in enumerate(edges)]
    before = [list(n.children) for n in nodes]
    add_keras3_names(nodes, {k % len(edges): v for k, v in full_names.items()})
    for node, old in zip(nodes, before):
        assert node.children[:len(old)] == old
        assert all(0 <= c < len(nodes) for _, c in node.children)
        assert all(0 <= v < len(nodes) and 0 <= s < len(nodes) for v, _, s in node.slots)
