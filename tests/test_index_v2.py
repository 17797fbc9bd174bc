"""Format version 2 (the index as columns): hostile content fails cleanly, old checkpoints still restore.

Every case edits one field of a real index, keeps the header and checksums valid, and expects a
``ck.CheckpointError`` that names the file (and the key, where one tensor is at fault) from every
way a user opens a checkpoint; nothing is assigned to live objects. The tests edit integer
columns as plain lists (``_doc`` reads them out of the binary section, ``_write`` stores them
back); the framing of the binary section itself has its own cases.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from ckpt_samples import V_KEY, W_KEY, open_every_way, with_key_list
from ckpt_samples import fresh as _fresh
from ckpt_samples import model as _model

import ckptcore as ck
from ckptcore.formats import ckpt as fmt


@pytest.fixture
def ckpt_path(tmp_path):
    # (what ckptcore writes is version 6, tests/test_index_v6_keys.py; version 2 is still read, as here)
    return with_key_list(ck.Checkpoint(model=_model()).write(str(tmp_path / "c")))


INT_COLUMNS = {"nodes": ("adapter", "type", "num_children", "child", "num_attributes"),
               "tensors": ("dtype", "ndim", "dims", "shard", "offset", "nbytes", "crc32c")}


def _split(path):
    """(JSON document as written, binary section) of a version-2 index."""
    raw = open(path + ".index", "rb").read()
    _magic, version, _flags, length, _crc = struct.unpack_from("<8sIIQI4x", raw)
    assert version == 2
    return json.loads(raw[fmt.HEADER_SIZE:fmt.HEADER_SIZE + length]), raw[fmt.HEADER_SIZE + length:]


def _doc(path):
    """The index as one document: integer columns read out of the binary section into lists."""
    doc, section = _split(path)
    for table, names in INT_COLUMNS.items():
        for name in names:
            ref = doc[table][name]
            doc[table][name] = np.frombuffer(section, ref["dtype"], ref["count"], ref["offset"]).tolist()
    del doc["columns"]
    return doc


def _write_raw(path, body: bytes, section: bytes = b"", version=2):
    with open(path + ".index", "wb") as f:
        f.write(struct.pack("<8sIIQI4x", fmt.MAGIC, version, 0, len(body), fmt.crc32c(body)) + body + section)


def _encode(doc):
    """Store the integer columns of a ``_doc`` document (lists) as 8-byte columns again; anything else as it is."""
    doc = json.loads(json.dumps(doc))
    parts, offset = [], 0
    for table, names in INT_COLUMNS.items():
        if type(doc.get(table)) is not dict:
            continue
        for name in names:
            col = doc[table].get(name)
            if type(col) is list and all(type(v) is int and 0 <= v < 1 << 64 for v in col):
                data = np.array(col, np.uint64).astype("<u8").tobytes()
                doc[table][name] = {"dtype": "<u8", "offset": offset, "count": len(col)}
                parts.append(data)
                offset += len(data)
    section = b"".join(parts)
    doc["columns"] = {"nbytes": len(section), "crc32c": fmt.crc32c(section)}
    return json.dumps(doc).encode(), section


def _write(path, doc):
    _write_raw(path, *_encode(doc))


def test_the_written_index_is_version_2_with_columns(ckpt_path):
    doc = _doc(ckpt_path)
    assert doc["version"] == 2
    g, t = doc["nodes"], doc["tensors"]
    assert g["child_name"] == ["model", "w", "sub", "v"] and len(g["adapter"]) == 5
    assert t["key"] == [W_KEY, V_KEY] and t["ndim"] == [1, 2] and t["dims"] == [4, 2, 2]
    assert [t["dtypes"][i] for i in t["dtype"]] == ["float64", "float32"]
    open_every_way(ckpt_path)


def _set(table, field, value):
    return lambda d: d[table].__setitem__(field, value)


def _edit(table, field, fn):
    return lambda d: d[table].__setitem__(field, fn(d[table][field]))


# tensors: 0 = model/w (float64, [4]), 1 = model/sub/v (float32, [2, 2]); nodes: 0 root, 1 model,
# 2 model/w, 3 model/sub, 4 model/sub/v
HOSTILE = {
    "object dtype": _set("tensors", "dtypes", ["object", "float32"]),
    "numpy object code": _set("tensors", "dtypes", ["O", "float32"]),
    "pickle-ish dtype": _set("tensors", "dtypes", ["|O8", "float32"]),
    "structured dtype": _set("tensors", "dtypes", ["[('a', '<f8')]", "float32"]),
    "void dtype": _set("tensors", "dtypes", ["V8", "float32"]),
    "dtype name not a string": _set("tensors", "dtypes", [["float64"], "float32"]),
    "dtype id out of range": _set("tensors", "dtype", [0, 2]),
    "dtype id negative": _set("tensors", "dtype", [-1, 1]),
    "huge shape": lambda d: d["tensors"].update(ndim=[2, 2], dims=[2**40, 2**40, 2, 2], nbytes=[2**63, 16]),
    "huge shape consistent nbytes": lambda d: d["tensors"].update(dims=[2**37, 2, 2], nbytes=[2**40, 16]),
    "huge zero-size shape": lambda d: d["tensors"].update(ndim=[3, 2], dims=[0, 2**62, 2**62, 2, 2],
                                                          nbytes=[0, 16]),
    "dims beyond 2^62": lambda d: d["tensors"].update(dims=[2**63, 2, 2]),
    "too many dims": lambda d: d["tensors"].update(ndim=[100, 2], dims=[1] * 99 + [4, 2, 2]),
    "a column not a list or reference": _set("tensors", "dims", 4),
    "dims shorter than ndim says": _set("tensors", "dims", [4, 2]),
    "shape a string": _set("tensors", "dims", "4,2,2"),
    "offset past EOF": _set("tensors", "offset", [0, 10**9]),
    "offset huge": _set("tensors", "offset", [0, 2**63]),
    "nbytes lies": _set("tensors", "nbytes", [8, 16]),
    "shard out of range": _set("tensors", "shard", [3, 0]),
    "crc a string column": _set("tensors", "crc32c", "0,1"),
    "crc too big": _set("tensors", "crc32c", [2**40, 1]),
    "a column missing": lambda d: d["tensors"].pop("crc32c"),
    "a column too short": _set("tensors", "offset", [0]),
    "a column a dict": _set("tensors", "nbytes", {"0": 32}),
    "key missing": lambda d: d["tensors"].pop("key"),
    "key not a string": _set("tensors", "key", [5, V_KEY]),
    "duplicate key": _set("tensors", "key", [W_KEY, W_KEY]),
    "more tensors than attributes": lambda d: d["tensors"].update(
        key=[W_KEY, V_KEY, "x"], dtype=[0, 1, 1], ndim=[1, 2, 0], shard=[0, 0, 0], offset=[0, 64, 0],
        nbytes=[32, 16, 4], crc32c=[1, 2, 3]),
    "shard_sizes too big": lambda d: d.update(shard_sizes=[2**40]),
    "shard_sizes negative": lambda d: d.update(shard_sizes=[-1]),
    "shard_sizes a bool": lambda d: d.update(shard_sizes=[True]),
    "num_shards huge": lambda d: d.update(num_shards=2**40),
    "num_shards zero": lambda d: d.update(num_shards=0, shard_sizes=[]),
    "num_shards mismatch": lambda d: d.update(num_shards=2),
    "child id out of range": _set("nodes", "child", [1, 2, 3, 99]),
    "child a plain JSON list": _set("nodes", "child", [1, 2, 3.0, 4]),
    "child name not a string": _set("nodes", "child_name", ["model", 7, "sub", "v"]),
    "child names fewer than ids": _set("nodes", "child_name", ["model", "w", "sub"]),
    "num_children disagrees": _set("nodes", "num_children", [1, 2, 0, 2, 0]),
    "num_children huge": _set("nodes", "num_children", [1, 2**62, 2**62, 2**62, 2**62 - 1]),
    "duplicate child name": _set("nodes", "child_name", ["model", "w", "w", "v"]),
    "nodes empty": lambda d: d["nodes"].update(adapter=[], type=[], num_children=[], num_attributes=[]),
    "nodes a list": lambda d: d.update(nodes=[{"adapter": "x"}]),
    "tensors a list": lambda d: d.update(tensors=[]),
    "tensors missing": lambda d: d.pop("tensors"),
    "adapter id out of range": _set("nodes", "adapter", [0, 1, 9, 1, 3]),
    "adapter name not a string": _set("nodes", "adapters", [{"$ref": "os.system"}, "a", "b", "c"]),
    "type table missing": lambda d: d["nodes"].pop("types"),
    "per-node column too short": _set("nodes", "type", [0, 1]),
    "num_attributes disagrees": _set("nodes", "num_attributes", [0, 0, 1, 0, 0]),
    "two attributes of one name": lambda d: d["nodes"].update(num_attributes=[0, 0, 2, 0, 0]),
    "attribute name not a string": _set("nodes", "attribute", [1, "VARIABLE_VALUE"]),
    "state node out of range": _set("nodes", "state", [[99, {"lr": 1}]]),
    "state row malformed": _set("nodes", "state", [[1]]),
    "state a dict": _set("nodes", "state", {"1": {}}),
    "two states for one node": _set("nodes", "state", [[1, 1], [1, 2]]),
    "slot out of range": _set("nodes", "slots", [[1, 2, "m", 50]]),
    "slot malformed": _set("nodes", "slots", [[1, 2]]),
    "slot name not a string": _set("nodes", "slots", [[1, 2, 5, 4]]),
    "slots a dict": _set("nodes", "slots", {}),
    "metadata a list": lambda d: d.update(metadata=[]),
    "not a ckptcore doc": lambda d: d.update(format="tensorflow"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_v2_index_raises_checkpoint_error(ckpt_path, name):
    doc = _doc(ckpt_path)
    HOSTILE[name](doc)
    _write(ckpt_path, doc)
    with pytest.raises(ck.CheckpointError) as info:
        open_every_way(ckpt_path)
    assert ckpt_path in str(info.value)
    fresh = _fresh()
    with pytest.raises(ck.CheckpointError):
        ck.Checkpoint(model=fresh).read(ckpt_path)
    assert fresh.w.tolist() == [0.0] * 4 and fresh.sub.v.numpy().tolist() == [[0.0, 0.0]] * 2


@pytest.mark.parametrize("name, key", [("nbytes lies", W_KEY), ("huge shape", W_KEY), ("offset past EOF", V_KEY),
                                       ("huge zero-size shape", W_KEY)])
def test_errors_about_one_tensor_name_its_key(ckpt_path, name, key):
    doc = _doc(ckpt_path)
    HOSTILE[name](doc)
    _write(ckpt_path, doc)
    with pytest.raises(ck.CorruptCheckpointError) as info:
        ck.load_checkpoint(ckpt_path)
    assert info.value.key == key and key in str(info.value) and info.value.path == ckpt_path + ".index"


def test_a_version_1_body_under_a_version_2_header_is_refused(ckpt_path):
    raw = open(ckpt_path + ".index", "rb").read()
    index = fmt.decode_index(raw, "x")
    index.version = 1
    _write_raw(ckpt_path, index.encode()[fmt.HEADER_SIZE:], version=2)
    with pytest.raises(ck.CorruptCheckpointError, match="index"):
        ck.load_checkpoint(ckpt_path)
    _write_raw(ckpt_path, raw[fmt.HEADER_SIZE:], version=1)  # JSON and binary columns, read as version 1
    with pytest.raises(ck.CorruptCheckpointError, match="index"):
        ck.load_checkpoint(ckpt_path)


def test_deeply_nested_state_is_an_error_not_a_crash(ckpt_path):
    body, section = _encode(_doc(ckpt_path))
    body = body.replace(b'"state": []', b'"state": [[1, ' + b"[" * 100_000 + b"]" * 100_000 + b"]]", 1)
    _write_raw(ckpt_path, body, section)
    with pytest.raises(ck.CorruptCheckpointError, match="index"):
        ck.load_checkpoint(ckpt_path)


FRAMING = {
    "column type float": lambda d, b: (d["tensors"]["offset"].update(dtype="<f8"), b)[1],
    "column type object": lambda d, b: (d["tensors"]["offset"].update(dtype="|O"), b)[1],
    "column type signed": lambda d, b: (d["tensors"]["nbytes"].update(dtype="<i8"), b)[1],
    "column type missing": lambda d, b: (d["tensors"]["nbytes"].pop("dtype"), b)[1],
    "column misaligned": lambda d, b: (d["nodes"]["child"].update(offset=d["nodes"]["child"]["offset"] + 1), b)[1],
    "column past the end": lambda d, b: (d["tensors"]["crc32c"].update(offset=len(b)), b)[1],
    "column count huge": lambda d, b: (d["tensors"]["dims"].update(count=2**60), b)[1],
    "column count a bool": lambda d, b: (d["tensors"]["ndim"].update(count=True), b)[1],
    "column count short": lambda d, b: (d["nodes"]["type"].update(count=2), b)[1],
    "section truncated": lambda d, b: b[:-8],
    "section longer than recorded": lambda d, b: b + bytes(8),
    "section checksum": lambda d, b: bytes([b[0] ^ 1]) + b[1:],
    "columns missing": lambda d, b: (d.pop("columns"), b)[1],
    "columns not an object": lambda d, b: (d.__setitem__("columns", [len(b)]), b)[1],
}


@pytest.mark.parametrize("name", sorted(FRAMING))
def test_hostile_binary_columns_raise_checkpoint_error(ckpt_path, name):
    doc, section = _split(ckpt_path)
    section = FRAMING[name](doc, section)  # "section checksum": the JSON keeps the old checksum
    _write_raw(ckpt_path, json.dumps(doc).encode(), section)
    with pytest.raises(ck.CorruptCheckpointError) as info:
        open_every_way(ckpt_path)
    assert ckpt_path in str(info.value)


def test_columns_use_the_narrowest_unsigned_type(ckpt_path):
    doc, section = _split(ckpt_path)
    assert doc["columns"]["nbytes"] == len(section) and doc["columns"]["crc32c"] == fmt.crc32c(section)
    assert doc["nodes"]["adapter"]["dtype"] == "<u1" and doc["tensors"]["crc32c"]["dtype"] == "<u4"
    assert all(ref["offset"] % 8 == 0 for table in INT_COLUMNS for ref in
               (doc[table][name] for name in INT_COLUMNS[table]))


def _rewrite_as_version_1(path):
    index = fmt.decode_index(open(path + ".index", "rb").read(), path)
    index.version = 1
    raw = index.encode()
    assert struct.unpack_from("<I", raw, 8)[0] == 1 and b'"attributes"' in raw
    open(path + ".index", "wb").write(raw)


def test_checkpoints_of_format_version_1_still_restore(tmp_path):
    """Checkpoints written before version 2 restore, defer and report status exactly as before."""
    src = ck.Module()
    src.w = np.arange(6, dtype=np.float32).reshape(2, 3)
    src.layers = [ck.Variable(np.float64(i)) for i in range(3)]
    path = ck.Checkpoint(model=src).save(str(tmp_path / "ckpt"))
    _rewrite_as_version_1(path)
    dst = ck.Module()
    dst.w = np.zeros((2, 3), np.float32)
    status = ck.Checkpoint(model=dst).restore(path)
    dst.layers = [ck.Variable(0.0) for _ in range(3)]  # created after restore(): filled on assignment
    status.assert_consumed()
    assert dst.w.tolist() == src.w.tolist() and [float(v.numpy()) for v in dst.layers] == [0.0, 1.0, 2.0]
    assert ck.load_checkpoint(path).index.version == 1
    assert ("model/w/.ATTRIBUTES/VARIABLE_VALUE", [2, 3]) in ck.list_variables(path)


def test_many_shapes_and_dtypes_round_trip(tmp_path):
    """Columns of mixed rank (scalars, vectors, 4-D, empty) and dtypes keep every shape."""
    rng = np.random.default_rng(0)
    shapes = [(), (3,), (2, 0), (2, 3, 4, 5), (1,), (7, 1)]
    dtypes = [np.float32, np.int8, np.float64, np.uint16, np.bool_, np.complex64]
    src = ck.Module()
    src.xs = [np.array(rng.random(s) * 100).astype(d) for s, d in zip(shapes, dtypes)]
    path = ck.Checkpoint(m=src).write(str(tmp_path / "c"))
    dst = ck.Module()
    dst.xs = [np.zeros(s, d) for s, d in zip(shapes, dtypes)]
    ck.Checkpoint(m=dst).read(path).assert_consumed()
    for a, b in zip(src.xs, dst.xs):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_checkpoints_with_every_tensor_64_byte_aligned_still_restore(tmp_path, monkeypatch):
    """Checkpoints written before small tensors were packed at their dtype's alignment (every
    tensor at a multiple of 64 bytes, zero padding between) restore the same way."""
    from ckptcore.formats import ckpt as fmt

    rng = np.random.default_rng(1)
    src = ck.Module()
    src.xs = [rng.random(n).astype(d) for n, d in zip([3, 5, 1, 7, 2] * 20, [np.float32, np.int8, np.float64,
                                                                          np.uint16, np.complex64] * 20)]
    with monkeypatch.context() as m:
        m.setattr(fmt, "ALIGNED_TENSOR_BYTES", 0)  # the old rule: 64 bytes for every tensor
        path = ck.Checkpoint(model=src).write(str(tmp_path / "old"))
    table = ck.load_checkpoint(path).index.table
    assert all(o % 64 == 0 for o in table.offset) and len({n % 64 for n in table.nbytes}) > 1  # padded
    dst = ck.Module()
    dst.xs = [np.zeros_like(a) for a in src.xs]
    ck.Checkpoint(model=dst).read(path).assert_consumed()
    for a, b in zip(src.xs, dst.xs):
        np.testing.assert_array_equal(a, b)
    packed = ck.Checkpoint(model=src).write(str(tmp_path / "new"))
    assert ck.load_checkpoint(packed).index.shard_sizes[0] < ck.load_checkpoint(path).index.shard_sizes[0]
