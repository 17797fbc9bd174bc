"""Formats behind one interface, chosen from the bytes; foreign files refused with advice; safetensors by name."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.formats import base
from ckptcore.formats import ckpt as fmt
from ckptcore.formats.base import Format, FormatRegistration
from ckptcore.formats.byname import nodes_from_keys
from ckptcore.formats.safetensors import parse_header

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _model(value=0.0):
    m = ck.Module()
    m.encoder = ck.Module()
    m.encoder.w = ck.Variable(np.full((2, 3), value, np.float32))
    m.b = ck.Variable(np.full(3, value, np.float64))
    return m


def _write_safetensors(path, tensors):
    safetensors_numpy.save_file(tensors, str(path))
    return str(path)


# -- foreign files ------------------------------------------------------------------------------

def _torch_like_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": [1, 2]}))
        z.writestr("archive/version", "3")
    return str(path)


@pytest.mark.parametrize("make, what, advice", [
    (_torch_like_zip, "torch.save", "torch.load(path, weights_only=True)"),
    (lambda p: (p.write_bytes(pickle.dumps({"w": 1}, protocol=2)), str(p))[1], "pickle", "never unpickles"),
    (lambda p: (np.savez(p, a=np.ones(2)), str(p) + ".npz")[1], ".npz", "numpy.load"),
    (lambda p: (np.save(p, np.ones(2)), str(p) + ".npy")[1], ".npy", "numpy.load"),
    (lambda p: (p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100)), str(p))[1], "HDF5", "load_weights"),
])
def test_foreign_files_are_named_with_what_to_use(tmp_path, make, what, advice):
    path = make(tmp_path / "weights")
    with pytest.raises(ck.UnsupportedFormatError) as err:
        ck.Checkpoint(root=_model()).restore(path)
    msg = str(err.value)
    assert path in msg and what in msg and advice in msg
    assert err.value.path.endswith(path.rsplit("/", 1)[1])
    with pytest.raises(ck.UnsupportedFormatError):
        ck.load_checkpoint(path)


def test_a_pickle_is_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled!",))

    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ck.UnsupportedFormatError, match="never unpickles"):
        ck.Checkpoint(root=_model()).restore(str(p))


def test_a_missing_path_is_still_not_found(tmp_path):
    with pytest.raises(ck.NotFoundError):
        ck.Checkpoint(root=_model()).restore(str(tmp_path / "nothing"))
    (tmp_path / "text").write_bytes(b"just some text")
    with pytest.raises(ck.NotFoundError):
        ck.Checkpoint(root=_model()).restore(str(tmp_path / "text"))


def test_an_index_of_another_library_is_named(tmp_path):
    (tmp_path / "c.index").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ck.UnsupportedFormatError, match="zip archive"):
        ck.load_checkpoint(str(tmp_path / "c"))


def test_bad_magic_in_an_index_is_still_corrupt(tmp_path):
    path = ck.Checkpoint(a=np.ones(2)).write(str(tmp_path / "c"))
    raw = bytearray((tmp_path / "c.index").read_bytes())
    raw[0] ^= 0xFF
    (tmp_path / "c.index").write_bytes(bytes(raw))
    with pytest.raises(ck.CorruptCheckpointError, match="bad magic"):
        ck.load_checkpoint(path)


# -- safetensors by name --------------------------------------------------------------------

def test_safetensors_restores_by_object_path(tmp_path):
    src = _model(1.5)
    path = _write_safetensors(tmp_path / "model.safetensors",
                              {"encoder.w": src.encoder.w.numpy(), "b": src.b.numpy()})
    dst = _model()
    ck.Checkpoint(root=dst).restore(path).assert_consumed()
    np.testing.assert_array_equal(dst.encoder.w.numpy(), src.encoder.w.numpy())
    np.testing.assert_array_equal(dst.b.numpy(), src.b.numpy())


@pytest.mark.parametrize("prefix", ["", "model."])
def test_safetensors_into_a_named_child_with_or_without_its_prefix(tmp_path, prefix):
    path = _write_safetensors(tmp_path / "m.safetensors",
                              {prefix + "encoder.w": np.ones((2, 3), np.float32), prefix + "b": np.ones(3)})
    dst = _model()
    ck.Checkpoint(model=dst).read(path).assert_consumed()
    assert dst.b.numpy().tolist() == [1.0, 1.0, 1.0]


def test_safetensors_mismatches_are_reported_not_skipped(tmp_path):
    path = _write_safetensors(tmp_path / "m.safetensors",
                              {"encoder.w": np.ones((2, 3), np.float32), "extra": np.ones(1)})
    dst = _model()
    status = ck.Checkpoint(root=dst).restore(path)
    status.session.expect_partial = True  # no warning about "extra" when the status goes
    with pytest.raises(AssertionError, match="extra"):
        status.assert_consumed()
    with pytest.raises(AssertionError, match="b"):
        status.assert_existing_objects_matched()
    bad = _write_safetensors(tmp_path / "bad.safetensors", {"encoder.w": np.ones((3, 3), np.float32)})
    with pytest.raises(ck.ShapeMismatchError, match="encoder/w"):
        ck.Checkpoint(root=_model()).restore(bad)


def test_safetensors_reader_lists_its_keys(tmp_path):
    path = _write_safetensors(tmp_path / "m.safetensors", {"a.b": np.arange(4, dtype=np.int16)})
    assert ck.list_variables(path) == [("a.b", [4])]
    assert ck.load_checkpoint(path).get_tensor("a.b").tolist() == [0, 1, 2, 3]


def test_truncated_safetensors_is_corrupt(tmp_path):
    path = _write_safetensors(tmp_path / "m.safetensors", {"w": np.ones(100)})
    raw = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(raw[:-10])
    with pytest.raises(ck.CorruptCheckpointError, match="m.safetensors"):
        ck.Checkpoint(root=_model()).restore(path)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300), st.integers(0, 1 << 40))
def test_hostile_safetensors_headers_raise_ckptcore_errors(header, size):
    try:
        out = parse_header(header, 8 + len(header), size, "h.safetensors")
    except ck.CorruptCheckpointError as e:
        assert "h.safetensors" in str(e)
        return
    for e in out.values():
        assert e.offset + e.nbytes <= size


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text("ab.", min_size=1, max_size=4), st.tuples(st.lists(st.integers(0, 3), max_size=3),
                                                                              st.integers(0, 64)), max_size=4))
def test_structured_safetensors_headers_are_checked(spec):
    doc = {k: {"dtype": "F32", "shape": shape, "data_offsets": [start, start + 4 * int(np.prod(shape))]}
           for k, (shape, start) in spec.items()}
    raw = json.dumps(doc).encode()
    try:
        out = parse_header(raw, 8 + len(raw), 8 + len(raw) + 64, "s.safetensors")
    except ck.CorruptCheckpointError:
        return
    spans = sorted((e.offset, e.offset + e.nbytes) for e in out.values() if e.nbytes)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_graph_from_keys_nests_by_separator():
    e = fmt.TensorEntry("x", "float32", (1,), 0, 0, 4, 0)
    nodes = nodes_from_keys({"a/b": e, "a/c": e, "a": e}, "/")
    assert nodes[0].children == [("a", 1)]
    assert sorted(nodes[1].children) == [("b", 2), ("c", 3)]
    assert list(nodes[1].attributes) == ["VARIABLE_VALUE"]


# -- a user's own format, registered like an adapter ------------------------------------------

class _Text(Format):
    """One float per line: ``name value``."""

    name = "text-floats"

    def sniff_index(self, head, tail):
        return head.startswith(b"#floats\n")

    def decode_index(self, raw, path, *, storage=None, prefix=None):
        raise ck.CorruptCheckpointError(f"{path}: text-floats is read-only in this test", path=path)


def test_a_plugin_format_is_chosen_from_the_bytes(tmp_path):
    class Plugin:
        @ck.hookimpl
        def ckptcore_register_formats(self):
            return [FormatRegistration(_Text(), priority=5)]

    (tmp_path / "c.index").write_bytes(b"#floats\nw 1.0\n" + bytes(40))
    name = ck.registry.register_plugin(Plugin(), name="test-text-floats")
    try:
        assert "text-floats" in [f.name for f in base.formats()]
        with pytest.raises(ck.CorruptCheckpointError, match="text-floats is read-only"):
            ck.load_checkpoint(str(tmp_path / "c"))
    finally:
        ck.registry.unregister_plugin(name)
    with pytest.raises(ck.CorruptCheckpointError, match="bad magic"):
        ck.load_checkpoint(str(tmp_path / "c"))


def test_a_name_given_twice_in_a_safetensors_header_is_corrupt(tmp_path):
    """Two tensors under one key (JSON keeps the last): which value is right is unknown, so neither is read."""
    head = (b'{"w": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}, '
            b'"w": {"dtype": "F32", "shape": [], "data_offsets": [4, 8]}}')
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + np.array([1, 2], np.float32).tobytes())
    with pytest.raises(ck.CorruptCheckpointError, match="dup.safetensors.*'w' appears twice"):
        ck.load_checkpoint(str(path))
    meta = b'{"__metadata__": {"a": "1", "a": "2"}}'
    path.write_bytes(struct.pack("<Q", len(meta)) + meta)
    from ckptcore.formats.safetensors import read_metadata
    from ckptcore.storage import open_storage

    with pytest.raises(ck.CorruptCheckpointError, match="'a' appears twice"):
        read_metadata(*open_storage(str(path)))


def test_safetensors_refuses_to_write_a_key_it_cannot_hold(tmp_path):
    """``__metadata__`` is the header's metadata slot: a tensor under that key overwrote it (or was
    overwritten by it) and was then skipped by every reader. A key given twice lost one value."""
    from ckptcore.cli import main
    from ckptcore.formats import safetensors
    from ckptcore.formats.tensorbundle.writer import encode_index, entry_bytes
    from ckptcore.storage import open_storage

    s, p = open_storage(str(tmp_path / "w.safetensors"))
    for tensors in ([("__metadata__", np.ones(1))], [("a", np.ones(1)), ("a", np.zeros(1))]):
        with pytest.raises(ck.InvalidArgumentError, match="w.safetensors"):
            safetensors.write(s, p, tensors, metadata={"step": "1"})
        assert not s.exists(p)
    # a TF1 checkpoint (keys are variable names) holding a variable named __metadata__
    prefix = str(tmp_path / "tf1")
    value = np.arange(2.0)
    (tmp_path / "tf1.data-00000-of-00001").write_bytes(value.tobytes())
    (tmp_path / "tf1.index").write_bytes(encode_index([("__metadata__", entry_bytes(
        [2, [2], 0, 0, 16, fmt.crc32c(value.tobytes())]))]))
    assert ck.load_checkpoint(prefix).get_tensor("__metadata__").tolist() == [0.0, 1.0]
    assert main(["convert", prefix, str(tmp_path / "out.safetensors"), "--no-progress"]) == 2
    assert not (tmp_path / "out.safetensors").exists()
