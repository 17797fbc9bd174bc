"""The ``ckptcore`` console script, run for real in a subprocess: ls, inspect, diff, verify, convert.

Each test batches the checks of one command into few subprocesses (the CLI's startup is the cost).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from ckpt_samples import flip_byte, toy_optimizer

import ckptcore as ck
from ckptcore.formats import ckpt as fmt

CLI = str(Path(sys.executable).parent / "ckptcore")
W, B, S = "model/w/.ATTRIBUTES/VARIABLE_VALUE", "model/sub/b/.ATTRIBUTES/VARIABLE_VALUE", \
    "save_counter/.ATTRIBUTES/VARIABLE_VALUE"


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = dict(os.environ, COLUMNS="200")
    e.update(env or {})
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=e)


@pytest.fixture
def run(capsys):
    """The same CLI in this process (``ckptcore.cli.main``): for the many checks that need no new process."""
    from ckptcore.cli import main

    def call(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    def call_json(*args: str, code: int = 0) -> dict:
        r = call(*args, "--json")
        assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
        return json.loads(r.stdout)

    call.json = call_json
    return call


def _model(w=None):
    m = ck.Module()
    m.w = ck.Variable(np.arange(6, dtype=np.float32).reshape(2, 3) if w is None else w)
    m.sub = ck.Module()
    m.sub.b = np.ones(4)
    m.alias = m.sub
    return m


def test_console_script_and_module_entry_point(tmp_path, run):
    r = cli("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("ls", "inspect", "diff", "verify", "convert"))
    r = subprocess.run([sys.executable, "-m", "ckptcore", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ckptcore ")
    r = run("inspect")  # a missing argument is a usage error
    assert r.returncode == 2
    r = run("nosuchcommand")
    assert r.returncode == 2


def test_import_ckptcore_does_not_import_the_cli_libraries():
    code = "import sys, ckptcore, ckptcore.progress; print(sorted(m for m in ('typer', 'rich', 'click', 'tqdm') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_ls_lists_oldest_first_with_latest_and_partial_leftovers(tmp_path, run):
    d = tmp_path / "run"
    ckpt = ck.Checkpoint(model=_model())
    mgr = ck.CheckpointManager(ckpt, str(d), max_to_keep=None)
    for n in (2, 10, 9):
        mgr.save(checkpoint_number=n)
    # a crashed save: a data file without its index, a temp file; a checkpoint whose data file is gone
    (d / "ckpt-11.data-00000-of-00001").write_bytes(b"x" * 10)
    (d / ".ckpt-12.index.tmp-0123456789abcdef0123456789abcdef").write_bytes(b"x")
    ck.Checkpoint(a=np.ones(2)).write(str(d / "broken-1"))
    os.remove(d / "broken-1.data-00000-of-00001")
    doc = run.json("ls", str(d))
    names = [c["name"] for c in doc["checkpoints"]]
    assert names == ["broken-1", "ckpt-2", "ckpt-9", "ckpt-10"]
    by = {c["name"]: c for c in doc["checkpoints"]}
    assert doc["latest"] == "ckpt-9" and by["ckpt-9"]["latest"] and not by["ckpt-10"]["latest"]
    assert by["ckpt-2"]["complete"] and by["ckpt-2"]["format"] == "ckptcore" and by["ckpt-2"]["version"] == 6
    assert by["ckpt-2"]["bytes"] > 64 and by["ckpt-2"]["time"].endswith("+00:00")
    assert not by["broken-1"]["complete"] and "missing its data file" in by["broken-1"]["problem"]
    assert {p["name"]: p["files"] for p in doc["partial"]} == {
        "ckpt-11": ["ckpt-11.data-00000-of-00001"], "ckpt-12": [".ckpt-12.index.tmp-0123456789abcdef0123456789abcdef"]}
    r = cli("ls", str(d) + "/")
    assert r.returncode == 0, r.stderr
    assert "complete, latest" in r.stdout and "leftovers of a crashed save" in r.stdout and "ckpt-10" in r.stdout
    r = run("ls", str(tmp_path / "nope"))
    assert r.returncode == 2 and "no directory" in r.stderr
    r = run("ls", str(d / "ckpt-2.index"))
    assert r.returncode == 2 and "is a file" in r.stderr


def test_inspect_tree_keys_metadata_and_path_typos(tmp_path, run):
    prefix = ck.Checkpoint(model=_model()).save(str(tmp_path / "ckpt"),
                                                ck.CheckpointOptions(metadata={"loss": 0.25, "tag": "best"}))
    r = cli("inspect", prefix)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for text in ("model", "ckptcore.module", "w  float32[2,3]  24 B", "b  float64[4]  32 B", "ckptcore.numpy",
                 "alias -> same object as model/sub", "6 objects, 3 tensors, 64 B", "format version 6",
                 '"loss": 0.25', '"tag": "best"'):
        assert text in out, (text, out)
    doc = run.json("inspect", prefix)
    assert doc["metadata"] == {"loss": 0.25, "tag": "best"} and doc["tensors"] == 3 and doc["bytes"] == 64
    model = next(c for c in doc["tree"]["children"] if c["name"] == "model")
    w = next(c for c in model["children"] if c["name"] == "w")
    assert w["adapter"] == "ckptcore.variable" and w["attributes"][0]["shape"] == [2, 3]
    keys = run.json("inspect", prefix, "--keys")["keys"]
    assert [(k["key"], k["shape"]) for k in keys] == [(k, s) for k, s in ck.list_variables(prefix)]
    assert {k["key"]: k["dtype"] for k in keys} == {B: "float64", W: "float32", S: "int64"}
    # the ways a path is commonly mistyped: each still finds the checkpoint, or says what is wrong
    for spelled in (prefix + ".index", prefix + "/", prefix + ".data-00000-of-00001", str(tmp_path)):
        assert run.json("inspect", spelled, "--keys")["path"] == prefix, spelled
    r = run("inspect", str(tmp_path / "ckpt-2"))
    assert r.returncode == 2 and "did you mean ckpt-1" in r.stderr, r.stderr
    r = run("inspect", "s3:/bucket/run/ckpt-1")
    assert r.returncode == 2 and "did you mean 's3://bucket/run/ckpt-1'" in r.stderr
    from safetensors.numpy import save_file
    save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "m.safetensors"))
    r = run("inspect", str(tmp_path / "m.safetensors"))  # the library reads safetensors files by name
    assert r.returncode == 0 and "w  float32[2]  8 B" in r.stdout and "safetensors format" in r.stdout
    r = run("verify", str(tmp_path / "m.safetensors"))
    assert r.returncode == 0 and "stores no checksums" in r.stdout
    import pickle
    (tmp_path / "model.pt").write_bytes(pickle.dumps({"w": [1, 2]}))
    r = run("inspect", str(tmp_path / "model.pt"))
    assert r.returncode == 2 and "never unpickles" in r.stderr and "Python pickle" in r.stderr, r.stderr


def test_inspect_shows_slot_variables_and_state(tmp_path, run):
    with toy_optimizer("test.opt", "momentum", np.ones(2, np.float32)) as (w, opt):
        path = ck.Checkpoint(w=w, opt=opt).write(str(tmp_path / "ckpt"))
    r = run("inspect", path)
    assert r.returncode == 0, r.stderr
    assert "slot momentum of w  float32[2]  8 B" in r.stdout and "state: {'lr': 0.1}" in r.stdout, r.stdout
    opt = next(c for c in run.json("inspect", path)["tree"]["children"] if c["name"] == "opt")
    assert opt["adapter"] == "test.opt" and opt["state"] == {"lr": 0.1}
    assert opt["slots"] == [{"variable": "w", "name": "momentum", "attributes": [
        {"name": "VARIABLE_VALUE", "key": "w/.OPTIMIZER_SLOT/opt/momentum/.ATTRIBUTES/VARIABLE_VALUE",
         "dtype": "float32", "shape": [2],
         "nbytes": 8}]}]


def test_verify_names_every_corrupt_file_and_key(tmp_path, run):
    good = ck.Checkpoint(model=_model()).write(str(tmp_path / "good"))
    bad = ck.Checkpoint(model=_model()).write(str(tmp_path / "bad"))
    table = ck.load_checkpoint(bad).index.table
    data = bad + ".data-00000-of-00001"
    for key in (W, B):  # two corrupt tensors: both are named
        row = table.key.index(key)
        flip_byte(data, table.offset[row] + 1)
    truncated = ck.Checkpoint(model=_model()).write(str(tmp_path / "trunc"))
    os.truncate(truncated + ".data-00000-of-00001", 10)
    garbled = ck.Checkpoint(model=_model()).write(str(tmp_path / "garbled"))
    flip_byte(garbled + ".index", fmt.HEADER_SIZE + 3)

    r = run("verify", good)
    assert r.returncode == 0 and f"ok  {good}: 56 B verified" in r.stdout and r.stderr == ""
    doc = run.json("verify", good, bad, truncated, garbled, code=1)
    res = {c["path"]: c for c in doc["checkpoints"]}
    assert not doc["ok"] and res[good]["ok"]
    assert sorted(e["key"] for e in res[bad]["errors"]) == sorted([W, B])
    assert all(e["file"] == data and "checksum mismatch" in e["message"] for e in res[bad]["errors"])
    assert [e["file"] for e in res[truncated]["errors"]] == [truncated + ".data-00000-of-00001"]
    assert "truncated" in res[truncated]["errors"][0]["message"]
    assert res[garbled]["errors"][0]["file"] == garbled + ".index"
    r = cli("verify", bad)
    assert r.returncode == 1
    assert f"CORRUPT  {bad}: 2 problem(s)" in r.stdout and f"file {data}, key {W}" in r.stdout \
        and f"key {B}" in r.stdout
    r = run("verify", str(tmp_path / "missing"))
    assert r.returncode == 2


def test_diff_from_checksums_and_values(tmp_path, run):
    a = ck.Checkpoint(model=_model()).write(str(tmp_path / "a"))
    same = ck.Checkpoint(model=_model()).write(str(tmp_path / "same"))
    m = _model(w=np.arange(6, dtype=np.float32).reshape(2, 3) + np.float32(0.5))
    m.sub.b = np.ones(5)          # shape changed
    m.extra = np.zeros(1)         # added
    del m.alias
    b = ck.Checkpoint(model=m).write(str(tmp_path / "b"))
    r = run("diff", a, same)
    assert r.returncode == 0 and "0 changed value, 2 unchanged" in r.stdout
    doc = run.json("diff", a, b, code=1)
    assert doc["added"] == ["model/extra/.ATTRIBUTES/VARIABLE_VALUE"] and doc["removed"] == []
    assert doc["changed"] == [{"key": B, "a": {"dtype": "float64", "shape": [4]},
                               "b": {"dtype": "float64", "shape": [5]}}]
    assert doc["value_changed"] == [W] and "values" not in doc
    doc = run.json("diff", a, b, "--values", code=1)
    (v,) = doc["values"]
    assert v["key"] == W and v["max_abs"] == 0.5 and v["max_rel"] == pytest.approx(0.5 / 0.5)
    r = cli("diff", a, b, "--values")
    assert r.returncode == 1 and f"* {W}: value changed (max abs 0.5" in r.stdout and "+ model/extra" in r.stdout


def test_convert_round_trip_through_safetensors(tmp_path, run):
    src = ck.Checkpoint(model=_model()).save(str(tmp_path / "ckpt"), ck.CheckpointOptions(metadata={"step": 3}))
    st_file = str(tmp_path / "out" / "model.safetensors")
    back = str(tmp_path / "back" / "ckpt-1")
    r = cli("convert", src, st_file)
    assert r.returncode == 0, r.stderr
    r = run("convert", st_file, back)
    assert r.returncode == 0, r.stderr
    from safetensors.numpy import load_file
    loaded = load_file(st_file)  # the safetensors library reads what ckptcore wrote
    np.testing.assert_array_equal(loaded[W], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert run("diff", src, back).returncode == 0
    assert ck.load_checkpoint(back).metadata == {"step": 3}
    fresh = _model(w=np.zeros((2, 3), np.float32))
    fresh.sub.b = np.zeros(4)
    ck.Checkpoint(model=fresh).restore(back).assert_consumed()  # the object graph came back too
    np.testing.assert_array_equal(fresh.w.numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert fresh.sub.b.tolist() == [1.0] * 4
    r = run("convert", src, st_file)
    assert r.returncode == 2 and "never overwrites" in r.stderr


def test_convert_foreign_safetensors_and_refuse_pickles(tmp_path, run):
    from safetensors.numpy import save_file
    hf = str(tmp_path / "hf.safetensors")
    save_file({"enc.layer.weight": np.full((2, 2), 3, np.float32), "enc.bias": np.arange(2, dtype=np.int64)}, hf)
    dst = str(tmp_path / "hf")
    doc = run.json("convert", hf, dst, "--no-progress")
    assert doc["src_format"] == "safetensors" and doc["tensors"] == 2 and doc["bytes"] == 32
    root = ck.Module()
    root.enc = ck.Module()
    root.enc.layer = ck.Module()
    root.enc.layer.weight = np.zeros((2, 2), np.float32)
    root.enc.bias = np.zeros(2, np.int64)
    ck.Checkpoint(root=root).read(dst).assert_existing_objects_matched()
    assert root.enc.layer.weight.tolist() == [[3, 3], [3, 3]] and root.enc.bias.tolist() == [0, 1]
    # safetensors -> safetensors and ckptcore -> ckptcore are copies
    assert run("convert", hf, str(tmp_path / "copy.safetensors")).returncode == 0
    assert run("convert", dst, str(tmp_path / "copy")).returncode == 0
    assert run("diff", dst, str(tmp_path / "copy")).returncode == 0
    import pickle
    pt = tmp_path / "model.pt"
    pt.write_bytes(pickle.dumps({"w": [1, 2]}))
    r = cli("convert", str(pt), str(tmp_path / "x"))
    assert r.returncode == 2 and "never unpickles" in r.stderr, r.stderr
    assert not (tmp_path / "x.index").exists()
    r = run("convert", str(tmp_path / "absent.pt"), str(tmp_path / "y"))
    assert r.returncode == 2 and "no checkpoint at" in r.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((100).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}'
                    + b" " * 32)
    r = run("convert", str(bad), str(tmp_path / "z"))
    assert r.returncode == 1 and "corrupt safetensors file" in r.stderr, r.stderr


def test_convert_streams_one_tensor_at_a_time(tmp_path, run):
    """Peak memory of a conversion is about the largest tensor, not the checkpoint (8 tensors of 2 MiB)."""
    from ckptcore.cli import main

    tensors = {f"t{i}": np.full(1 << 18, i, np.float64) for i in range(8)}
    src = ck.Checkpoint(**tensors).write(str(tmp_path / "big"))
    del tensors
    tracemalloc.start()
    try:
        for s, d in ((src, str(tmp_path / "big.safetensors")), (str(tmp_path / "big.safetensors"),
                                                                str(tmp_path / "again"))):
            tracemalloc.reset_peak()
            assert main(["convert", s, d, "--no-progress"]) == 0
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 3 * (2 << 20), peak  # the whole checkpoint is 16 MiB
    finally:
        tracemalloc.stop()
    assert ck.load_checkpoint(str(tmp_path / "again")).get_tensor("t7/.ATTRIBUTES/VARIABLE_VALUE")[0] == 7


TF = Path(__file__).resolve().parent / "fixtures" / "tf"


def test_tensorflow_checkpoints_through_every_command(tmp_path, run):
    """TensorFlow's own checkpoints (golden files written by TF), read without TensorFlow."""
    tf_dir = str(TF / "tf2_nested")
    doc = run.json("ls", tf_dir)
    assert [(c["name"], c["format"], c["complete"], c["latest"]) for c in doc["checkpoints"]] == \
        [("ckpt-1", "tensorflow", True, True)]
    tf_ckpt = str(TF / "tf2_nested" / "ckpt-1")
    keys = ck.list_variables(tf_ckpt)
    assert [(k["key"], k["shape"]) for k in run.json("inspect", tf_ckpt, "--keys")["keys"]] == keys
    info = run.json("inspect", tf_dir)
    assert info["format"] == "tensorflow" and info["tensors"] == len(keys)
    assert run.json("verify", tf_ckpt)["ok"]
    out = str(tmp_path / "from_tf")
    assert run.json("convert", tf_ckpt, out)["src_format"] == "tensorflow"
    assert run("diff", tf_ckpt, out).returncode == 0  # same keys, shapes, dtypes and checksums
    st_file = str(tmp_path / "from_tf.safetensors")
    assert run("convert", tf_ckpt, st_file).returncode == 0
    back = str(tmp_path / "back")
    assert run("convert", st_file, back).returncode == 0
    assert run("diff", out, back).returncode == 0
    for key, _ in keys:
        if key == "_CHECKPOINTABLE_OBJECT_GRAPH":  # TensorFlow's graph as a tensor: ckptcore's index holds it
            continue
        np.testing.assert_array_equal(ck.load_checkpoint(back).get_tensor(key),
                                      ck.load_checkpoint(tf_ckpt).get_tensor(key))


def test_a_deeply_nested_storage_option_is_a_usage_error(run):
    """Before: json.loads' RecursionError escaped as a traceback."""
    r = run("ls", "memory://cli/deep", "-o", "client_kwargs=" + "[" * 100_000 + "]" * 100_000)
    assert r.returncode == 2 and "client_kwargs" in r.stderr and "nested too deeply" in r.stderr


@pytest.mark.parametrize("damage", [b"", b"\x00" * 40, b"CKPTIDX1garbage"])
def test_ls_lists_a_checkpoint_whose_index_is_unreadable_as_partial(tmp_path, run, damage):
    """Before: the table's format column was None + str, a TypeError traceback."""
    d = tmp_path / "run"
    m = ck.CheckpointManager(ck.Checkpoint(a=np.ones(2)), str(d), max_to_keep=3)
    for _ in range(3):
        m.save()
    (d / "ckpt-2.index").write_bytes(damage)
    r = run("ls", str(d))
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "ckpt-2" in line)
    assert "partial" in row and "?" in row
    r = run("ls", str(d), "--json")
    rows = {c["name"]: c for c in json.loads(r.stdout)["checkpoints"]}
    assert not rows["ckpt-2"]["complete"] and rows["ckpt-2"]["format"] is None and rows["ckpt-3"]["complete"]
