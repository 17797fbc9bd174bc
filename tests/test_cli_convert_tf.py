"""``ckptcore convert SRC DST --to tensorflow`` (and back): streaming, object graph or TF1 names, never lossy silently.

Real TensorFlow's view of these files is checked in tests/test_tensorflow_live.py (tests/tf_live_writer.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import ckptcore as ck
from ckptcore.cli import main

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tf")


def _model():
    m = ck.Module()
    m.dense = ck.Module()
    m.dense.kernel = ck.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
    m.blocks = [ck.Variable(np.arange(3, dtype=np.int64)), ck.Variable(np.float64(2.5))]
    m.shared = m.dense  # one object along two paths
    return m


def _zeroed(m):
    for v in (m.dense.kernel, *m.blocks):
        v.assign(np.zeros_like(v.numpy()))
    return m


def test_ckptcore_to_tensorflow_keeps_the_object_graph_and_converts_back_unchanged(tmp_path, capsys):
    src = ck.Checkpoint(model=_model()).save(str(tmp_path / "run" / "ckpt"))
    tf = str(tmp_path / "tf" / "ckpt")
    assert main(["convert", src, tf, "--to", "tensorflow", "--no-progress"]) == 0
    assert "ckptcore) -> " in capsys.readouterr().out
    r = ck.load_checkpoint(tf)
    assert r.format.name == "tensorflow"
    # TensorFlow's keys, to the letter (and, as TensorFlow lists it, its object graph)
    assert dict(ck.list_variables(tf)) == {**dict(ck.list_variables(src)), "_CHECKPOINTABLE_OBJECT_GRAPH": []}
    m = _zeroed(_model())
    ck.Checkpoint(model=m).restore(tf).assert_consumed()
    assert m.dense.kernel.numpy().tolist() == [[0, 1, 2], [3, 4, 5]] and float(m.blocks[1].numpy()) == 2.5
    back = str(tmp_path / "back")
    assert main(["convert", tf, back, "--no-progress"]) == 0
    assert main(["diff", src, back]) == 0  # same keys, shapes, dtypes and checksums


def test_a_safetensors_file_becomes_tf1_name_keys_restored_by_name(tmp_path):
    from safetensors.numpy import save_file

    save_file({"encoder.w": np.ones((2, 3), np.float32), "encoder.b": np.arange(3, dtype=np.float32)},
              str(tmp_path / "m.safetensors"))
    tf = str(tmp_path / "tf1")
    assert main(["convert", str(tmp_path / "m.safetensors"), tf, "--to", "tensorflow", "--no-progress"]) == 0
    assert ck.list_variables(tf) == [("encoder/b", [3]), ("encoder/w", [2, 3])]
    assert ck.load_checkpoint(tf).index.metadata["flat"]  # no object graph, as tf.compat.v1.train.Saver writes
    m = ck.Module()
    m.encoder = ck.Module()
    m.encoder.w = ck.Variable(np.zeros((2, 3), np.float32))
    m.encoder.b = ck.Variable(np.zeros(3, np.float32))
    ck.Checkpoint(root=m).restore(tf).assert_consumed()
    assert m.encoder.b.numpy().tolist() == [0, 1, 2]
    named = ck.Variable(np.zeros(3, np.float32), name="encoder/b")  # and a ck.Variable by its TF name
    holder = ck.Module()
    holder.anything = named
    ck.Checkpoint(root=holder).restore(tf).expect_partial()
    assert named.numpy().tolist() == [0, 1, 2]


def test_a_ckptcore_written_safetensors_file_keeps_its_graph_into_tensorflow(tmp_path):
    src = ck.Checkpoint(model=_model()).write(str(tmp_path / "c"))
    st_file = str(tmp_path / "c.safetensors")
    assert main(["convert", src, st_file, "--no-progress"]) == 0
    tf = str(tmp_path / "tf")
    assert main(["convert", st_file, tf, "--to", "tensorflow", "--no-progress"]) == 0
    m = _zeroed(_model())
    ck.Checkpoint(model=m).read(tf).assert_consumed()
    assert m.blocks[0].numpy().tolist() == [0, 1, 2]


def test_tensorflow_to_tensorflow_copies_the_golden_checkpoint(tmp_path):
    golden = os.path.join(FIXTURES, "tf2_nested", "ckpt-1")
    dst = str(tmp_path / "copy")
    assert main(["convert", golden, dst, "--to", "tensorflow", "--no-progress"]) == 0
    assert main(["diff", golden, dst]) == 0
    a, b = ck.load_checkpoint(golden), ck.load_checkpoint(dst)
    for key, _ in ck.list_variables(golden):
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH":  # (bytes; the graph ckptcore writes may differ in order)
            assert a.get_tensor(key).tobytes() == b.get_tensor(key).tobytes()


def test_what_tensorflow_cannot_hold_fails_naming_it_and_leaves_nothing(tmp_path, capsys):
    import ml_dtypes

    src = ck.Checkpoint(x=np.zeros(4, ml_dtypes.float4_e2m1fn)).write(str(tmp_path / "c"))
    dst = tmp_path / "out"
    assert main(["convert", src, str(dst), "--to", "tensorflow", "--no-progress"]) == 2
    assert "'x/.ATTRIBUTES/VARIABLE_VALUE' has dtype float4_e2m1fn" in capsys.readouterr().err
    assert not [n for n in os.listdir(tmp_path) if n.startswith("out")]


def test_convert_never_overwrites_and_names_the_formats(tmp_path, capsys):
    src = ck.Checkpoint(a=np.ones(1)).write(str(tmp_path / "c"))
    assert main(["convert", src, src, "--to", "tensorflow"]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert main(["convert", src, str(tmp_path / "d"), "--to", "tf2"]) == 2
    assert "ckptcore, safetensors, tensorflow" in capsys.readouterr().err


def test_to_tensorflow_streams_one_tensor_at_a_time(tmp_path):
    """Peak memory of a conversion to TensorFlow's format is about the largest tensor (8 tensors of 2 MiB)."""
    tensors = {f"t{i}": np.full(1 << 18, i, np.float64) for i in range(8)}
    src = ck.Checkpoint(**tensors).write(str(tmp_path / "big"))
    del tensors
    # first, a small conversion: what is imported on first use (protobuf, typer, rich) is not the conversion's
    small = ck.Checkpoint(a=np.ones(2)).write(str(tmp_path / "small"))
    assert main(["convert", small, str(tmp_path / "small-tf"), "--to", "tensorflow", "--no-progress"]) == 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        assert main(["convert", src, str(tmp_path / "tf"), "--to", "tensorflow", "--no-progress"]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * (2 << 20), peak  # the whole checkpoint is 16 MiB
    assert ck.load_checkpoint(str(tmp_path / "tf")).get_tensor("t7/.ATTRIBUTES/VARIABLE_VALUE")[0] == 7


def test_fsspec_urls_and_the_console_script(tmp_path):
    src = ck.Checkpoint(w=ck.Variable(np.arange(4.0))).write("memory://c12w/cli/src")
    assert main(["convert", src, "memory://c12w/cli/tf", "--to", "tensorflow", "--no-progress"]) == 0
    assert ck.load_checkpoint("memory://c12w/cli/tf").format.name == "tensorflow"
    local = ck.Checkpoint(w=ck.Variable(np.arange(4.0))).write(str(tmp_path / "src"))
    proc = subprocess.run([sys.executable, "-m", "ckptcore", "convert", local, str(tmp_path / "tf"),
                           "--to", "tensorflow", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"dst_format": "tensorflow"' in proc.stdout


def test_the_library_entry_reports_progress_in_bytes(tmp_path):
    from ckptcore.formats.tensorbundle.export import write_from_reader
    from ckptcore.storage import open_storage

    src = ck.Checkpoint(a=np.ones(10), b=np.ones(3, np.int8)).write(str(tmp_path / "c"))
    got: list[int] = []
    storage, prefix = open_storage(str(tmp_path / "tf"))
    summary = write_from_reader(ck.load_checkpoint(src), storage, prefix, report=got.append)
    assert sum(got) == 83 and summary["tensors"] == 2 and not summary["flat"]


@pytest.mark.parametrize("name", ["tf1_saver", "tf2_dtypes", "tf2_strings", "tf2_sliced", "tf1_partitioned"])
def test_tensorflow_sources_of_every_kind_convert_to_tensorflow(tmp_path, name):
    prefix = os.path.join(FIXTURES, name)
    src = next(os.path.join(prefix, f[:-6]) for f in sorted(os.listdir(prefix)) if f.endswith(".index"))
    dst = str(tmp_path / "out")
    assert main(["convert", src, dst, "--to", "tensorflow", "--no-progress"]) == 0
    assert main(["diff", src, dst]) == 0


def test_adapter_state_round_trips_through_tensorflows_format(tmp_path):
    """Adapter state (JSON) is the CKPTCORE_STATE attribute of its node: saved, converted and restored losslessly."""
    import ckpt_samples

    from ckptcore.formats.tensorbundle.adapter_state import STATE_ATTRIBUTE

    with ckpt_samples.toy_optimizer("tests.c12w_opt", "m", np.ones(2)) as (w, opt):
        direct = ck.Checkpoint(w=w, opt=opt).write(str(tmp_path / "direct"), options=ck.CheckpointOptions(
            format="tensorflow"))
        src = ck.Checkpoint(w=w, opt=opt).write(str(tmp_path / "c"))
    tf = str(tmp_path / "tf")
    assert main(["convert", src, tf, "--to", "tensorflow", "--no-progress"]) == 0
    for path in (direct, tf):
        r = ck.load_checkpoint(path)
        assert r.format.name == "tensorflow"
        nid = r.index.graph.children(0)[[n for n, _ in r.index.graph.children(0)].index("opt")][1]
        assert r.index.graph.state[nid] == {"lr": 0.1}
        assert STATE_ATTRIBUTE not in r.index.graph.attr_name  # the state is no tensor to restore
    back = str(tmp_path / "back")
    assert main(["convert", tf, back, "--no-progress"]) == 0
    assert main(["diff", src, back]) == 0
    assert ck.load_checkpoint(back).index.graph.state == ck.load_checkpoint(src).index.graph.state


def test_a_torch_optimizer_saved_in_tensorflows_format_restores_its_hyperparameters(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.25, betas=(0.8, 0.9))
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    path = ck.Checkpoint(model=model, optimizer=opt).write(str(tmp_path / "c"),
                                                          options=ck.CheckpointOptions(format="tensorflow"))
    keys = dict(ck.list_variables(path))
    assert "optimizer/.ATTRIBUTES/CKPTCORE_STATE" not in keys and "model/weight/.ATTRIBUTES/VARIABLE_VALUE" in keys
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    ck.Checkpoint(model=model2, optimizer=opt2).read(path).assert_consumed()
    assert opt2.param_groups[0]["lr"] == 0.25 and tuple(opt2.param_groups[0]["betas"]) == (0.8, 0.9)
    assert torch.equal(model2.weight, model.weight)
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and float(s1["step"]) == float(s2["step"])


def test_a_damaged_state_attribute_is_a_corrupt_checkpoint_naming_file_and_key(tmp_path):
    import ckpt_samples

    with ckpt_samples.toy_optimizer("tests.c12w_opt2", "m", np.ones(2)) as (w, opt):
        path = ck.Checkpoint(w=w, opt=opt).write(str(tmp_path / "c"), options=ck.CheckpointOptions(
            format="tensorflow"))
    data = tmp_path / "c.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    at = raw.index(b'{"lr": 0.1}')
    raw[at + 2] ^= 0x20  # one flipped bit inside the JSON
    data.write_bytes(bytes(raw))
    with pytest.raises(ck.CorruptCheckpointError, match="opt/.ATTRIBUTES/CKPTCORE_STATE"):
        ck.load_checkpoint(path)
