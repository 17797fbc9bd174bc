"""Corrupt, truncated and hostile checkpoint files fail with ckptcore errors; nothing is unpickled."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import pickle
import struct

import numpy as np
import pytest
from ckpt_samples import V_KEY, W_KEY, open_every_way
from ckpt_samples import fresh as _fresh
from ckpt_samples import model as _model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.formats import ckpt as fmt


@pytest.fixture
def ckpt_path(tmp_path):
    return ck.Checkpoint(model=_model()).write(str(tmp_path / "c"))


def _index_doc(path):
    """The index of ``path`` as a version-1 document (one object per node and tensor, as the first
    ckptcore releases wrote; still read). Version 2 (columns) has its own cases in test_index_v2.py."""
    index = fmt.decode_index(open(path + ".index", "rb").read(), path)
    index.version = 1
    return json.loads(index.encode()[fmt.HEADER_SIZE:])


def _encode(doc_or_body, version=None, section=b"") -> bytes:
    """Header, JSON and (version 2) the binary columns that follow it."""
    body = doc_or_body if isinstance(doc_or_body, bytes) else json.dumps(doc_or_body).encode()
    if version is None:  # a document says its version; raw bytes get the current one
        version = doc_or_body.get("version", 1) if isinstance(doc_or_body, dict) else fmt.FORMAT_VERSION
    return struct.pack("<8sIIQI4x", fmt.MAGIC, version, 0, len(body), fmt.crc32c(body)) + body + section


def _write_index(path, doc_or_body, version=None, section=b""):
    with open(path + ".index", "wb") as f:
        f.write(_encode(doc_or_body, version, section))


def _parts(raw: bytes) -> tuple[bytes, bytes]:
    """(JSON, binary columns) of an index file's bytes."""
    length = struct.unpack_from("<Q", raw, 16)[0]
    return raw[fmt.HEADER_SIZE:fmt.HEADER_SIZE + length], raw[fmt.HEADER_SIZE + length:]


def test_valid_checkpoint_baseline(ckpt_path):
    open_every_way(ckpt_path)


# -- integrity of data -----------------------------------------------------------------

def test_flipped_byte_in_data_raises_naming_the_key(ckpt_path):
    r = ck.load_checkpoint(ckpt_path)
    off = r.entry(V_KEY).offset
    data = ckpt_path + ".data-00000-of-00001"
    raw = bytearray(open(data, "rb").read())
    raw[off + 3] ^= 0x10
    open(data, "wb").write(bytes(raw))
    with pytest.raises(ck.CorruptCheckpointError) as info:
        ck.Checkpoint(model=_fresh()).read(ckpt_path)
    assert V_KEY in str(info.value) and info.value.key == V_KEY
    with pytest.raises(ck.CorruptCheckpointError, match="model/sub/v"):
        ck.load_checkpoint(ckpt_path).get_tensor(V_KEY)
    with pytest.raises(ck.CorruptCheckpointError, match="model/sub/v"):
        ck.load_checkpoint(ckpt_path).verify()
    # the intact tensor still reads; verification can be turned off explicitly
    assert ck.load_checkpoint(ckpt_path).get_tensor(W_KEY).tolist() == [0.0, 1.0, 2.0, 3.0]
    fresh = _fresh()
    ck.Checkpoint(model=fresh).read(ckpt_path, options=ck.CheckpointOptions(verify_checksums=False))
    assert fresh.w.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_verify_before_restore_leaves_every_live_object_as_it_was(tmp_path):
    """A corrupt tensor anywhere: with verify_before_restore the restore raises before any
    object changes; without it, the values read before the corrupt one are already in place."""
    src = ck.Module()
    src.xs = [np.full(1000, float(i), np.float32) for i in range(5)]
    src.v = ck.Variable(np.arange(3.0))
    path = ck.Checkpoint(model=src).write(str(tmp_path / "c"))
    key = "model/xs/3/.ATTRIBUTES/VARIABLE_VALUE"
    data = path + ".data-00000-of-00001"
    raw = bytearray(open(data, "rb").read())
    raw[ck.load_checkpoint(path).entry(key).offset + 100] ^= 0x01
    open(data, "wb").write(bytes(raw))

    def live():
        m = ck.Module()
        m.xs = [np.full(1000, -1.0, np.float32) for _ in range(5)]
        m.v = ck.Variable(np.full(3, -1.0))
        return m

    dst = live()
    with pytest.raises(ck.CorruptCheckpointError) as info:
        ck.Checkpoint(model=dst).read(path, options=ck.CheckpointOptions(verify_before_restore=True))
    assert info.value.key == key and data in str(info.value)
    assert all((x == -1.0).all() for x in dst.xs) and (dst.v.numpy() == -1.0).all()
    assert not ck.has_pending(dst)  # nothing queued either

    dst = live()
    with pytest.raises(ck.CorruptCheckpointError):
        ck.Checkpoint(model=dst).read(path)
    assert (dst.xs[0] == 0.0).all()  # the documented caveat: values read before the corrupt one are in place


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=8), chunk=st.integers(1, 5000),
       data=st.data())
def test_verify_reads_through_a_bounded_buffer_and_finds_any_flipped_byte(tmp_path_factory, sizes, chunk, data):
    from unittest import mock

    from ckptcore import reader

    with mock.patch.object(reader, "VERIFY_CHUNK", chunk):
        _verify_case(tmp_path_factory.mktemp("verify"), sizes, data)


def _verify_case(d, sizes, data):
    arrays = {f"a{i}": np.arange(n, dtype=np.uint8) for i, n in enumerate(sizes)}
    path = ck.Checkpoint(**arrays).write(str(d / "c"))
    assert ck.load_checkpoint(path).verify() == sum(sizes)
    nonempty = [k for k, a in arrays.items() if a.size]
    if not nonempty:
        return
    name = data.draw(st.sampled_from(nonempty))
    key = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
    at = ck.load_checkpoint(path).entry(key).offset + data.draw(st.integers(0, arrays[name].size - 1))
    f = path + ".data-00000-of-00001"
    raw = bytearray(open(f, "rb").read())
    raw[at] ^= 0x80
    open(f, "wb").write(bytes(raw))
    with pytest.raises(ck.CorruptCheckpointError) as info:
        ck.load_checkpoint(path).verify()
    assert info.value.key == key


def test_verify_memory_stays_bounded_for_a_large_tensor(tmp_path):
    import tracemalloc

    from ckptcore import reader

    path = ck.Checkpoint(big=np.ones(48 << 20, np.uint8)).write(str(tmp_path / "c"))  # 48 MiB
    r = ck.load_checkpoint(path)
    tracemalloc.start()
    try:
        assert r.verify() == 48 << 20
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < reader.VERIFY_CHUNK + (4 << 20)  # one buffer, not a copy of the tensor


@pytest.mark.parametrize("keep", [0, 1, -1])
def test_truncated_data_file(ckpt_path, keep):
    data = ckpt_path + ".data-00000-of-00001"
    raw = open(data, "rb").read()
    assert len(raw) > 2
    open(data, "wb").write(raw[:keep])  # -1: only the last byte is missing
    with pytest.raises(ck.CorruptCheckpointError, match="truncated") as info:
        ck.Checkpoint(model=_fresh()).read(ckpt_path)
    assert data in str(info.value)
    with pytest.raises(ck.CorruptCheckpointError):
        ck.load_checkpoint(ckpt_path).get_tensor(W_KEY)


def test_missing_data_file(ckpt_path):
    os.remove(ckpt_path + ".data-00000-of-00001")
    with pytest.raises(ck.CheckpointError, match="data-00000-of-00001"):
        ck.Checkpoint(model=_fresh()).read(ckpt_path)


def test_corrupt_restore_assigns_nothing_before_reading(ckpt_path):
    """A corrupt index is detected before any object changes."""
    doc = _index_doc(ckpt_path)
    doc["nodes"][4]["attributes"]["VARIABLE_VALUE"]["offset"] = 10**6
    _write_index(ckpt_path, doc)
    fresh = _fresh()
    with pytest.raises(ck.CorruptCheckpointError):
        ck.Checkpoint(model=fresh).read(ckpt_path)
    assert fresh.w.tolist() == [0.0] * 4


# -- truncated or garbled index ------------------------------------------------------------

@pytest.mark.parametrize("keep", [0, 7, 8, 31, 32, 33, 100, -1])
def test_truncated_index_names_the_file(ckpt_path, keep):
    index = ckpt_path + ".index"
    raw = open(index, "rb").read()
    open(index, "wb").write(raw[:keep] if keep >= 0 else raw[:keep])
    for call in (lambda: ck.Checkpoint(model=_fresh()).restore(ckpt_path), lambda: ck.load_checkpoint(ckpt_path),
                 lambda: ck.list_variables(ckpt_path)):
        with pytest.raises(ck.CheckpointError) as info:
            call()
        assert index in str(info.value)


@pytest.mark.parametrize("where", ["magic", "version", "length", "crc", "body"])
def test_garbled_index_names_the_file(ckpt_path, where):
    index = ckpt_path + ".index"
    raw = bytearray(open(index, "rb").read())
    pos = {"magic": 0, "version": 8, "length": 16, "crc": 24, "body": 60}[where]
    raw[pos] ^= 0xFF
    open(index, "wb").write(bytes(raw))
    with pytest.raises(ck.CorruptCheckpointError) as info:
        ck.load_checkpoint(ckpt_path)
    assert index in str(info.value)


def test_garbage_index_file(ckpt_path):
    open(ckpt_path + ".index", "wb").write(os.urandom(4096))
    with pytest.raises(ck.CorruptCheckpointError, match="index"):
        ck.Checkpoint(model=_fresh()).read(ckpt_path)


def test_future_format_version_is_refused(ckpt_path):
    body = open(ckpt_path + ".index", "rb").read()[fmt.HEADER_SIZE:]
    raw = struct.pack("<8sIIQI4x", fmt.MAGIC, 99, 0, len(body), fmt.crc32c(body)) + body
    open(ckpt_path + ".index", "wb").write(raw)
    with pytest.raises(ck.CorruptCheckpointError, match="version 99"):
        ck.load_checkpoint(ckpt_path)


# -- hostile index content (valid header and checksum) ---------------------------------------

def _tensor(doc, node=2):
    return doc["nodes"][node]["attributes"]["VARIABLE_VALUE"]


HOSTILE = {
    "object dtype": lambda d: _tensor(d).update(dtype="object"),
    "numpy object code": lambda d: _tensor(d).update(dtype="O"),
    "pickle-ish dtype": lambda d: _tensor(d).update(dtype="|O8"),
    "structured dtype": lambda d: _tensor(d).update(dtype="[('a', '<f8')]"),
    "void dtype": lambda d: _tensor(d).update(dtype="V8"),
    "dtype not a string": lambda d: _tensor(d).update(dtype=["float64"]),
    "huge shape": lambda d: _tensor(d).update(shape=[2**40, 2**40], nbytes=2**83),
    "huge shape consistent nbytes": lambda d: _tensor(d).update(shape=[2**37], nbytes=2**40),
    "huge zero-size shape": lambda d: _tensor(d).update(shape=[0, 2**62, 2**62], nbytes=0),
    "too many dims": lambda d: _tensor(d).update(shape=[1] * 100, nbytes=8),
    "negative dim": lambda d: _tensor(d).update(shape=[-4], nbytes=-32),
    "float dim": lambda d: _tensor(d).update(shape=[4.0]),
    "bool dim": lambda d: _tensor(d).update(shape=[True, 4]),
    "shape string": lambda d: _tensor(d).update(shape="4"),
    "negative offset": lambda d: _tensor(d).update(offset=-64),
    "offset past EOF": lambda d: _tensor(d).update(offset=10**9),
    "offset huge": lambda d: _tensor(d).update(offset=2**70),
    "nbytes lies": lambda d: _tensor(d).update(nbytes=8),
    "shard out of range": lambda d: _tensor(d).update(shard=3),
    "crc not int": lambda d: _tensor(d).update(crc32c="0"),
    "crc too big": lambda d: _tensor(d).update(crc32c=2**40),
    "key missing": lambda d: _tensor(d).pop("key"),
    "key not a string": lambda d: _tensor(d).update(key=5),
    "duplicate key": lambda d: _tensor(d, 4).update(key=W_KEY),
    "shard_sizes too big": lambda d: d.update(shard_sizes=[2**40]),
    "shard_sizes negative": lambda d: d.update(shard_sizes=[-1]),
    "num_shards huge": lambda d: d.update(num_shards=2**40),
    "num_shards zero": lambda d: d.update(num_shards=0, shard_sizes=[]),
    "num_shards mismatch": lambda d: d.update(num_shards=2),
    "child id out of range": lambda d: d["nodes"][1]["children"].append(["x", 99]),
    "child id negative": lambda d: d["nodes"][1]["children"].append(["x", -1]),
    "child id float": lambda d: d["nodes"][1]["children"].append(["x", 1.0]),
    "child name not a string": lambda d: d["nodes"][1]["children"].append([7, 2]),
    "child reference malformed": lambda d: d["nodes"][1]["children"].append(["x"]),
    "duplicate child name": lambda d: d["nodes"][1]["children"].append(["w", 3]),
    "children a dict": lambda d: d["nodes"][1].update(children={"w": 2}),
    "nodes empty": lambda d: d.update(nodes=[]),
    "nodes a dict": lambda d: d.update(nodes={"0": {}}),
    "node a list": lambda d: d["nodes"].__setitem__(1, []),
    "attributes a list": lambda d: d["nodes"][2].update(attributes=[1]),
    "attribute entry a string": lambda d: d["nodes"][2].update(attributes={"VARIABLE_VALUE": "x"}),
    "slot out of range": lambda d: d["nodes"][1].update(slots=[{"variable": 2, "name": "m", "slot": 50}]),
    "slot malformed": lambda d: d["nodes"][1].update(slots=[{"variable": 2}]),
    "slots a dict": lambda d: d["nodes"][1].update(slots={}),
    "metadata a list": lambda d: d.update(metadata=[]),
    "not a ckptcore doc": lambda d: d.update(format="tensorflow"),
    "doc missing nodes": lambda d: d.pop("nodes"),
    "adapter not a string": lambda d: d["nodes"][1].update(adapter={"$ref": "os.system"}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_index_raises_checkpoint_error(ckpt_path, name):
    doc = _index_doc(ckpt_path)
    HOSTILE[name](doc)
    _write_index(ckpt_path, doc)
    with pytest.raises(ck.CheckpointError) as info:
        open_every_way(ckpt_path)
    assert ckpt_path in str(info.value)


def test_self_referencing_graph_terminates(ckpt_path):
    doc = _index_doc(ckpt_path)
    doc["nodes"][1]["children"].append(["again", 1])   # model/again -> model
    doc["nodes"][3]["children"].append(["up", 0])      # model/sub/up -> root
    _write_index(ckpt_path, doc)
    fresh = _fresh()
    fresh.again = fresh
    fresh.sub.up = ck.Module()
    ck.Checkpoint(model=fresh).read(ckpt_path).expect_partial()
    assert fresh.w.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_exponential_dag_terminates(ckpt_path):
    """30 levels, each node reachable two ways: 2**30 paths, handled in linear time."""
    doc = _index_doc(ckpt_path)
    base = len(doc["nodes"])
    doc["nodes"][1]["children"].append(["chain", base])
    for i in range(30):
        nxt = base + i + 1
        kids = [["a", nxt], ["b", nxt]] if i < 29 else []
        doc["nodes"].append({"adapter": "ckptcore.module", "type": "x", "children": kids})
    _write_index(ckpt_path, doc)
    fresh = _fresh()
    node = fresh
    chain = []
    for i in range(30):
        child = ck.Module()
        chain.append(child)
        if i == 0:
            node.chain = child
        else:
            node.a = child
            node.b = child
        node = child
    status = ck.Checkpoint(model=fresh).read(ckpt_path)
    status.assert_consumed()


@pytest.mark.parametrize("depth", [50, 10_000, 200_000])
def test_deeply_nested_json(ckpt_path, depth):
    body, section = _parts(open(ckpt_path + ".index", "rb").read())
    doc_text = body.decode()
    nested = "[" * depth + "]" * depth
    hostile = doc_text[:-1] + ',"extra":' + nested + "}"
    _write_index(ckpt_path, hostile.encode(), section=section)
    try:
        open_every_way(ckpt_path)  # shallow nesting in an unknown field is harmless
    except ck.CheckpointError as e:
        assert ckpt_path in str(e)


def test_deeply_nested_state(ckpt_path):
    doc = _index_doc(ckpt_path)
    body = json.dumps(doc).encode()
    hostile = body.replace(b'"adapter": "ckptcore.module"', b'"state": ' + b"[" * 100_000 + b"]" * 100_000
                           + b', "adapter": "ckptcore.module"', 1)
    _write_index(ckpt_path, hostile, version=1)
    with pytest.raises(ck.CorruptCheckpointError, match="index"):
        open_every_way(ckpt_path)


def test_non_utf8_and_non_json_bodies(ckpt_path):
    for body in (b"\xff\xfe\x00garbage", b"{'single': 'quotes'}", b"", b"null", b"[]", b"1e999999",
                 b'{"format": "ckptcore", "num_shards": NaN}'):
        _write_index(ckpt_path, body)
        with pytest.raises(ck.CorruptCheckpointError) as info:
            ck.load_checkpoint(ckpt_path)
        assert ckpt_path in str(info.value)


def test_oversized_index_refused_without_reading(ckpt_path, monkeypatch):
    monkeypatch.setattr(fmt, "MAX_INDEX_BYTES", 64)
    with pytest.raises(ck.CorruptCheckpointError, match="too large"):
        ck.load_checkpoint(ckpt_path)


# -- nothing is unpickled or evaluated -------------------------------------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_payloads_never_execute(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Evil(str(marker)))
    path = ck.Checkpoint(model=_model()).write(str(tmp_path / "c"))
    doc = _index_doc(path)

    def forbidden(*a, **k):
        raise AssertionError("ckptcore unpickled or evaluated data read from storage")

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(np, "load", forbidden)

    attempts = []
    # 1. the whole index is a pickle
    attempts.append(lambda: open(path + ".index", "wb").write(payload))
    # 2. a valid header whose body is a pickle
    attempts.append(lambda: _write_index(path, payload))
    # 3. a pickle in the data file, labelled as an object array
    def object_tensor():
        d = copy.deepcopy(doc)
        _tensor(d).update(dtype="object", shape=[1], nbytes=len(payload), crc32c=fmt.crc32c(payload))
        d["shard_sizes"] = [max(d["shard_sizes"][0], len(payload))]
        open(path + ".data-00000-of-00001", "r+b").write(payload)
        _write_index(path, d)
    attempts.append(object_tensor)
    # 4. a pickle in the data file, labelled as bytes: read back as plain bytes
    def byte_tensor():
        d = copy.deepcopy(doc)
        d["shard_sizes"] = [max(d["shard_sizes"][0], len(payload))]
        _tensor(d).update(dtype="uint8", shape=[len(payload)], nbytes=len(payload), offset=0,
                          crc32c=fmt.crc32c(payload))
        _tensor(d, 4).update(offset=0, nbytes=16, crc32c=fmt.crc32c(payload[:16]))
        open(path + ".data-00000-of-00001", "r+b").write(payload)
        _write_index(path, d)
    attempts.append(byte_tensor)
    # 5. a pickle as a node's JSON state (a string) and as metadata
    def state_payload():
        d = copy.deepcopy(doc)
        d["nodes"][1]["state"] = payload.decode("latin-1")
        d["metadata"] = {"pickle": payload.decode("latin-1")}
        _write_index(path, d)
    attempts.append(state_payload)

    for make in attempts:
        make()
        try:
            r = ck.load_checkpoint(path)
            for k in r.keys():
                r.get_tensor(k)
            ck.Checkpoint(model=ck.Module()).read(path).expect_partial()
        except ck.CheckpointError:
            pass
        assert not marker.exists()
    got = ck.load_checkpoint(path)  # the byte_tensor variant stays readable as raw bytes
    assert not marker.exists() and got is not None


def test_core_source_has_no_unpickling_or_eval():
    import re

    src = pathlib.Path(ck.__file__).parent
    banned = re.compile(r"\bimport pickle\b|\bpickle\.load|allow_pickle=True|(?<![\w.])eval\(|(?<![\w.])exec\(|"
                        r"\bmarshal\.load|\bimport dill\b|\bcloudpickle\b")
    for f in src.rglob("*.py"):
        hit = banned.search(f.read_text())
        assert hit is None, f"{f}: {hit.group(0)}"


# -- hostile state file ------------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    {"model_checkpoint_path": "../outside/ckpt-1"},
    {"model_checkpoint_path": "/etc/passwd"},
    {"model_checkpoint_path": "..", "all_model_checkpoint_paths": []},
    {"model_checkpoint_path": "ckpt-1", "all_model_checkpoint_paths": ["../outside/ckpt-1"]},
    {"model_checkpoint_path": "ckpt-1\\..\\..\\x"},
    {"model_checkpoint_path": 5},
    {"model_checkpoint_path": "ckpt-1", "all_model_checkpoint_paths": "ckpt-1"},
    {"model_checkpoint_path": "ckpt-1", "all_model_checkpoint_timestamps": ["yesterday"]},
    [1, 2, 3],
], ids=lambda c: str(c)[:40])
def test_hostile_state_file_is_an_error_and_never_escapes(tmp_path, content):
    outside = tmp_path / "outside"
    target = ck.Checkpoint(a=np.full(1, 66.0)).save(str(outside / "ckpt"))
    before = {p: p.stat().st_mtime_ns for p in outside.iterdir()}
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint").write_text(json.dumps(content))
    with pytest.raises(ck.CorruptCheckpointError) as info:
        ck.latest_checkpoint(str(run))
    assert str(run / "checkpoint") in str(info.value)
    a = np.zeros(1)
    with pytest.raises(ck.CheckpointError):
        ck.Checkpoint(a=a).restore(str(run))  # restoring a directory reads its state file
    assert a[0] == 0.0
    # a manager recovers from the listing and deletes only its own checkpoints
    with pytest.warns(RuntimeWarning, match="recovering"):
        manager = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), str(run), max_to_keep=1)
    for _ in range(3):
        manager.save()
    # saving into the directory repairs the state file; nothing outside is touched
    (run / "checkpoint").write_text(json.dumps(content))
    ck.Checkpoint(a=np.ones(1)).save(str(run / "ckpt"))
    assert ck.latest_checkpoint(str(run)) == str(run / "ckpt-1")
    assert {p: p.stat().st_mtime_ns for p in outside.iterdir()} == before
    assert ck.latest_checkpoint(str(outside)) == target


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe", b"{", b"null", b"[" * 100_000 + b"]" * 100_000])
def test_garbled_state_file(tmp_path, raw):
    (tmp_path / "checkpoint").write_bytes(raw)
    with pytest.raises(ck.CorruptCheckpointError):
        ck.latest_checkpoint(str(tmp_path))


def test_state_file_naming_missing_checkpoint_is_none(tmp_path):
    (tmp_path / "checkpoint").write_text(json.dumps({"model_checkpoint_path": "ckpt-7",
                                                     "all_model_checkpoint_paths": ["ckpt-7"]}))
    assert ck.latest_checkpoint(str(tmp_path)) is None


# -- fuzzing ---------------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=8)


def _positions(doc, out, parent=None, key=None):
    if parent is not None:
        out.append((parent, key))
    if isinstance(doc, dict):
        for k in list(doc):
            _positions(doc[k], out, doc, k)
    elif isinstance(doc, list):
        for i in range(len(doc)):
            _positions(doc[i], out, doc, i)
    return out


@pytest.fixture(scope="module", params=[1, 2], ids=["v1", "v2"])
def fuzz_base(tmp_path_factory, request):
    """A checkpoint whose index is in format version 1 or 2 (both are read)."""
    d = tmp_path_factory.mktemp("fuzz")
    path = ck.Checkpoint(model=_model()).write(str(d / "c"))
    index = fmt.decode_index(open(path + ".index", "rb").read(), path)
    index.version = request.param
    open(path + ".index", "wb").write(index.encode())
    return path, open(path + ".index", "rb").read()


def _attempt(path):
    try:
        open_every_way(path)
    except ck.CheckpointError as e:
        assert str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_index_json_mutations(fuzz_base, data):
    path, raw = fuzz_base
    body, section = _parts(raw)
    doc = json.loads(body)
    for _ in range(data.draw(st.integers(1, 3))):
        spots = _positions(doc, [])
        parent, key = data.draw(st.sampled_from(spots))
        action = data.draw(st.sampled_from(["replace", "delete", "int"]))
        if action == "replace":
            parent[key] = data.draw(_JSON)
        elif action == "int":
            parent[key] = data.draw(st.sampled_from([-1, 0, 1, 2**31, 2**63, 10**30, 99]))
        elif isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    _write_index(path, doc, version=struct.unpack_from("<I", raw, 8)[0], section=section)
    try:
        _attempt(path)
    finally:
        open(path + ".index", "wb").write(raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_index_bytes(fuzz_base, data):
    path, raw = fuzz_base
    body = bytearray(raw[fmt.HEADER_SIZE:])  # the JSON, then (version 2) the binary columns
    json_len = len(_parts(raw)[0])
    fix_crc = data.draw(st.booleans())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        op = data.draw(st.sampled_from(["flip", "set", "delete", "insert"]))
        if op == "flip":
            body[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            body[pos] = data.draw(st.sampled_from(list(b'0123456789-[]{}",:.eE ')))
        elif op == "delete":
            del body[pos]
            json_len -= pos < json_len
        else:
            body.insert(pos, data.draw(st.integers(0, 255)))
            json_len += pos < json_len
    if fix_crc:  # the header's checksum made right again for the (edited) JSON part
        _write_index(path, bytes(body[:json_len]), version=struct.unpack_from("<I", raw, 8)[0],
                     section=bytes(body[json_len:]))
    else:
        open(path + ".index", "wb").write(raw[:fmt.HEADER_SIZE] + bytes(body))
    try:
        _attempt(path)
    finally:
        open(path + ".index", "wb").write(raw)


def test_failed_restore_queues_nothing_and_marks_nothing(ckpt_path, collect):
    data = ckpt_path + ".data-00000-of-00001"
    raw = bytearray(open(data, "rb").read())
    raw[0] ^= 0x01  # corrupt model/w
    open(data, "wb").write(bytes(raw))
    from ckptcore import restore as core_restore

    collect()
    before = core_restore.pending_count()
    model = ck.Module()
    model.w = np.zeros(4)  # exists: read now, fails
    with pytest.raises(ck.CorruptCheckpointError, match="model/w"):
        ck.Checkpoint(model=model).read(ckpt_path)
    collect()
    assert core_restore.pending_count() == before  # "sub" was not queued by the failed restore
    sub = ck.Module()
    sub.v = ck.Variable(np.zeros((2, 2), np.float32))
    model.sub = sub
    assert sub.v.numpy().tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_failed_deferred_restore_can_be_retried(ckpt_path):
    model = ck.Module()
    status = ck.Checkpoint(model=model).read(ckpt_path)
    bad = ck.Module()
    bad.v = ck.Variable(np.zeros(3, np.float32))
    with pytest.raises(ck.ShapeMismatchError):
        model.sub = bad
    good = ck.Module()
    good.v = ck.Variable(np.zeros((2, 2), np.float32))
    model.sub = good
    assert good.v.numpy().tolist() == [[1.0, 1.0], [1.0, 1.0]]
    model.w = np.zeros(4)
    status.assert_consumed()


# -- special files in place of checkpoint files --------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("which", ["index", "data"])
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_special_file_in_place_of_a_checkpoint_file(ckpt_path, which, kind):
    target = ckpt_path + (".index" if which == "index" else ".data-00000-of-00001")
    os.remove(target)
    if kind == "directory":
        os.mkdir(target)
    else:
        os.mkfifo(target)  # opening it for reading would block forever
    with pytest.raises(ck.CheckpointError) as info:
        open_every_way(ckpt_path)
    assert target in str(info.value) or ckpt_path in str(info.value)


@pytest.mark.parametrize("which", ["index", "data"])
def test_a_symlink_loop_in_place_of_a_checkpoint_file_is_a_storage_error(ckpt_path, which):
    """Before: os.stat's OSError (ELOOP) escaped from every reader."""
    target = ckpt_path + (".index" if which == "index" else ".data-00000-of-00001")
    os.remove(target)
    os.symlink(target, target)  # points at itself
    with pytest.raises(ck.StorageError) as info:
        open_every_way(ckpt_path)
    assert target in str(info.value)
    with pytest.raises(ck.StorageError):
        ck.Checkpoint(model=_fresh()).restore(ckpt_path)


@pytest.mark.timeout(60)
def test_device_in_place_of_index_is_refused_without_endless_read(tmp_path):
    import subprocess
    import sys
    import textwrap

    os.symlink("/dev/zero", tmp_path / "z.index")
    code = textwrap.dedent(f"""
        import resource, ckptcore as ck
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        try:
            ck.load_checkpoint({str(tmp_path / "z")!r})
        except ck.CheckpointError as e:
            print("refused:", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0 and "refused:" in out.stdout, out.stderr[-2000:]
