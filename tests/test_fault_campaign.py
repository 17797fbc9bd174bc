"""Mutation tests over real checkpoints of every format, through every reader (issue 13's fault campaign).

Each case damages a real file: random bytes flipped, set, inserted, deleted, truncated or
appended, or, to get past the checksums to the parsers behind them, a structure-aware edit
whose checksums are made right again (a TensorFlow index rebuilt from edited entries; a
TensorFlow object graph edited and stored back with its string checksum and entry). Then
every way of reading runs: ``load_checkpoint`` and every tensor, ``verify``,
``list_variables``, a restore (immediate and deferred, slots included), and the CLI's
``inspect``/``verify``/``diff``/``convert``. The rule: a ckptcore error, never another
exception (the CLI must not be handed one either), a hang or an allocation the file cannot
justify.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import warnings

import numpy as np
import pytest
from ckpt_samples import toy_optimizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.cli import _common, main
from ckptcore.formats.tensorbundle import bundle
from ckptcore.formats.tensorbundle import table as tbl
from ckptcore.formats.tensorbundle.protos import message
from ckptcore.formats.tensorbundle.writer import entry_bytes, string_scalar

# restores cut short by a (ckptcore) error leave values unused, and damaged state files are recovered from
pytestmark = [pytest.mark.filterwarnings("ignore::ckptcore.PartialRestoreWarning"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tf")
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _model():
    m = ck.Module()
    m.w = np.arange(4.0)
    m.empty = np.zeros((0, 3), np.float32)
    m.scalar = np.array(3, np.int16)
    m.sub = ck.Module()
    m.sub.v = ck.Variable(np.ones((2, 2), np.float32))
    m.items = [np.arange(3, dtype=np.int8), {"k": np.array([True, False])}]
    m.shared = m.sub
    return m


@contextlib.contextmanager
def _no_foreign_errors_in_the_cli():
    """Fail if a CLI command reports (as a message and exit code) an exception that is not ckptcore's."""
    seen: list[BaseException] = []
    original = _common.error

    def error(msg: str) -> None:
        e = sys.exc_info()[1]
        if e is not None and not isinstance(e, (ck.CheckpointError, _common.Usage)):
            seen.append(e)
        original(msg)

    _common.error = error
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        _common.error = original
    assert not seen, f"the CLI was handed {seen[0]!r}"


def _every_reader(path: str, pristine: str, out: str, live=None) -> None:
    """Every way of reading ``path``; each may raise a ckptcore error, nothing else."""
    def load():
        r = ck.load_checkpoint(path)
        for k in r.keys():
            r.get_tensor(k)

    def deferred():
        m = ck.Module()
        status = ck.Checkpoint(model=m).read(path)
        status.expect_partial()   # first: an assignment below may raise (damaged data), and the warning
        full = _model()           # about values never restored would come later, in another test
        m.w, m.sub, m.items = full.w, full.sub, full.items

    calls = [load, lambda: ck.load_checkpoint(path).verify(), lambda: ck.list_variables(path),
             lambda: ck.Checkpoint(**(live() if live else {"model": _model()})).read(path).expect_partial(),
             lambda: ck.Checkpoint(model=_model()).read(
                 path, options=ck.CheckpointOptions(verify_before_restore=True)).expect_partial(),
             deferred]
    for call in calls:
        try:
            call()
        except ck.CheckpointError as e:
            assert str(e)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    with _no_foreign_errors_in_the_cli():
        for args in (["inspect", path], ["inspect", path, "--keys", "--json"], ["verify", path, "--no-progress"],
                     ["diff", path, pristine, "--values"],
                     ["convert", path, os.path.join(out, "o.safetensors"), "--no-progress"],
                     ["convert", path, os.path.join(out, "o_ck"), "--to", "ckptcore", "--no-progress"],
                     ["convert", path, os.path.join(out, "o_tf"), "--to", "tensorflow", "--no-progress"]):
            assert main(args) in (0, 1, 2)


def _damage(raw: bytes, data) -> bytes:
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        if not out:
            out += b"\x00"
        pos = data.draw(st.integers(0, len(out) - 1))
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append", "int"]))
        if op == "flip":
            out[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            out[pos] = data.draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, ord('"'), ord("."), ord("/")]))
        elif op == "insert":
            out[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[pos:pos + data.draw(st.integers(1, 8))]
        elif op == "truncate":
            del out[pos:]
        elif op == "append":
            out += data.draw(st.binary(min_size=1, max_size=64))
        else:  # a planted size: the largest 32/64-bit values, 2**60, 0
            width = data.draw(st.sampled_from([4, 8]))
            v = data.draw(st.sampled_from([0, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 60, (1 << 64) - 1]))
            out[pos:pos + width] = (v & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    return bytes(out)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """name -> checkpoint path, for one checkpoint of each kind; a pristine copy beside each."""
    root = tmp_path_factory.mktemp("campaign")
    out = {}
    out["ckptcore"] = ck.Checkpoint(model=_model()).write(str(root / "ck" / "c"))
    out["tensorflow"] = ck.Checkpoint(model=_model()).write(str(root / "tf" / "c"),
                                                            ck.CheckpointOptions(format="tensorflow"))
    for name in ("tf2_sliced", "tf2_strings", "tf2_slots", "tf1_partitioned"):
        shutil.copytree(os.path.join(FIXTURES, name), root / name)
        index = next(f for f in os.listdir(root / name) if f.endswith(".index"))
        out[name] = str(root / name / index[:-len(".index")])
    st_file = str(root / "st" / "m.safetensors")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["convert", out["ckptcore"], st_file, "--no-progress"]) == 0
    out["safetensors"] = st_file
    shutil.copytree(root, str(root) + "-pristine")
    return {k: (p, p.replace(str(root), str(root) + "-pristine"), str(root) + "-out") for k, p in out.items()}


def _files(path: str) -> list[str]:
    if path.endswith(".safetensors"):
        return [path]
    d, base = os.path.split(path)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.startswith(base + "."))


@SETTINGS
@given(data=st.data())
def test_damaged_bytes_of_any_file_of_any_format_are_ckptcore_errors(bases, data):
    name = data.draw(st.sampled_from(sorted(bases)))
    path, pristine, out = bases[name]
    target = data.draw(st.sampled_from(_files(path)))
    raw = open(target, "rb").read()
    try:
        open(target, "wb").write(_damage(raw, data))
        _every_reader(path, pristine, out)
    finally:
        open(target, "wb").write(raw)


@SETTINGS
@given(data=st.data())
def test_edited_tensorflow_index_entries_with_valid_checksums_are_ckptcore_errors(bases, data):
    """Keys and BundleEntryProto/BundleHeaderProto bytes edited, the table rebuilt (block checksums right)."""
    name = data.draw(st.sampled_from(["tensorflow", "tf2_sliced", "tf2_strings", "tf2_slots", "tf1_partitioned"]))
    path, pristine, out = bases[name]
    raw = open(path + ".index", "rb").read()
    items = [list(kv) for kv in tbl.read_table(raw, "x")]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(items) - 1))
        what = data.draw(st.sampled_from(["value", "key", "drop", "copy"]))
        if what == "value":
            items[i][1] = _damage(items[i][1], data)
        elif what == "key":
            items[i][0] = _damage(items[i][0], data)
        elif what == "drop" and len(items) > 1:
            del items[i]
        else:
            items.append([_damage(items[i][0], data), items[i][1]])
    rebuilt = tbl.build(sorted({bytes(k): bytes(v) for k, v in items}.items()),
                        block_size=data.draw(st.sampled_from([64, tbl.BLOCK_SIZE])))
    try:
        open(path + ".index", "wb").write(rebuilt)
        _every_reader(path, pristine, out)
    finally:
        open(path + ".index", "wb").write(raw)


def test_edited_tensorflow_object_graphs_with_valid_checksums_are_ckptcore_errors(tmp_path):
    """Children, attributes and slot references of the TrackableObjectGraph edited (node ids out of
    range, cycles, names, keys of other tensors, duplicated and deleted nodes) and stored back with a
    correct string checksum and entry; restored into live objects with an optimizer and its slots."""
    with toy_optimizer("test.campaign_opt", "m", np.full(2, 5.0)) as (w, opt):
        def live():
            var = ck.Variable(np.zeros(2))
            model = _model()
            model.w = var
            return {"model": model, "opt": type(opt)(var)}

        src = live()
        src["model"].w.assign(np.arange(2.0))
        src["opt"] = opt
        opt.w = src["model"].w
        path = ck.Checkpoint(**src).write(str(tmp_path / "c"), ck.CheckpointOptions(format="tensorflow"))
        shutil.copytree(tmp_path, str(tmp_path) + "-pristine")
        pristine = str(tmp_path) + "-pristine/c"
        raw_index, raw_data = (open(path + f, "rb").read() for f in (".index", ".data-00000-of-00001"))
        items = tbl.read_table(raw_index, "x")
        gkey = bundle.OBJECT_GRAPH_KEY.encode()
        storage, _ = ck.storage.open_storage(path)
        graph_bytes = bundle.read_string_scalar(storage, path + ".data-00000-of-00001",
                                                message("BundleEntryProto").FromString(dict(items)[gkey]), "x", "g")
        keys = [k.decode() for k, _ in items[1:]]

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(data=st.data())
        def case(data):
            g = message("TrackableObjectGraph").FromString(graph_bytes)
            for _ in range(data.draw(st.integers(1, 3))):
                n = len(g.nodes)
                if not n:
                    break
                node = g.nodes[data.draw(st.integers(0, n - 1))]
                some_id = st.sampled_from([0, n - 1, n, -1, 1 << 30]) | st.integers(0, n - 1)
                op = data.draw(st.sampled_from(["child id", "add child", "child name", "attr key", "attr name",
                                                "add slot", "slot id", "drop node", "copy node"]))
                if op == "child id" and len(node.children):
                    node.children[data.draw(st.integers(0, len(node.children) - 1))].node_id = data.draw(some_id)
                elif op == "add child":
                    node.children.add(node_id=data.draw(some_id),
                                      local_name=data.draw(st.sampled_from(["w", "sub", "", "..", "a/b", "model"])))
                elif op == "child name" and len(node.children):
                    node.children[data.draw(st.integers(0, len(node.children) - 1))].local_name = data.draw(
                        st.text(max_size=4))
                elif op == "attr key" and len(node.attributes):
                    node.attributes[0].checkpoint_key = data.draw(st.sampled_from(keys + ["", "missing"]))
                elif op == "attr name" and len(node.attributes):
                    node.attributes[0].name = data.draw(st.sampled_from(["VARIABLE_VALUE", "CKPTCORE_STATE", ""]))
                elif op == "add slot":
                    node.slot_variables.add(original_variable_node_id=data.draw(some_id), slot_name="m",
                                            slot_variable_node_id=data.draw(some_id))
                elif op == "slot id" and len(node.slot_variables):
                    node.slot_variables[0].slot_variable_node_id = data.draw(some_id)
                elif op == "drop node":
                    del g.nodes[data.draw(st.integers(0, n - 1))]
                elif op == "copy node":
                    g.nodes.add().CopyFrom(node)
            blob, crc = string_scalar(g.SerializeToString())
            entry = entry_bytes([bundle.DT_STRING, [], 0, len(raw_data), len(blob), crc])
            try:
                open(path + ".data-00000-of-00001", "wb").write(raw_data + blob)
                open(path + ".index", "wb").write(tbl.build([(k, entry if k == gkey else v) for k, v in items]))
                _every_reader(path, pristine, str(tmp_path) + "-out", live=live)
            finally:
                open(path + ".index", "wb").write(raw_index)
                open(path + ".data-00000-of-00001", "wb").write(raw_data)

        case()


@pytest.mark.parametrize("fmt_name", ["ckptcore", "tensorflow"])
def test_every_flipped_byte_of_a_state_file_is_detected_or_harmless(tmp_path, fmt_name):
    """Every single-bit flip of a manager's state file (both formats): ``latest_checkpoint`` raises a
    ckptcore error naming the file or names a checkpoint the manager saved; a new manager manages
    only checkpoints it saved, and nothing is deleted or created."""
    d = tmp_path / "run"
    m = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), str(d), max_to_keep=3)
    saved = {m.save(options=ck.CheckpointOptions(format=fmt_name)) for _ in range(3)}
    raw = (d / "checkpoint").read_bytes()
    listing = sorted(os.listdir(d))
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x04
        (d / "checkpoint").write_bytes(bytes(bad))
        try:
            assert ck.latest_checkpoint(str(d)) in saved | {None}
        except ck.CheckpointError as e:
            assert str(d / "checkpoint") in str(e)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "damaged ... recovering the checkpoint list from the listing"
            manager = ck.CheckpointManager(ck.Checkpoint(a=np.ones(1)), str(d), max_to_keep=3)
        assert set(manager.checkpoints) <= saved
        assert sorted(os.listdir(d)) == listing
