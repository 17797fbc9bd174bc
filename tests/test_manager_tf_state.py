"""A CheckpointManager saving with CheckpointOptions(format="tensorflow") writes TensorFlow's text state file.

TensorFlow's own view of such a directory (tf.train.latest_checkpoint, tf.train.CheckpointManager) is checked
in tests/test_tensorflow_live.py.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

import ckptcore as ck
from ckptcore.formats.tensorbundle.state import parse_text_state

TF = ck.CheckpointOptions(format="tensorflow")


def _ckpt():
    return ck.Checkpoint(w=ck.Variable(np.zeros(2, np.float32)))


def _state(d):
    raw = (d / "checkpoint").read_bytes()
    return raw, parse_text_state(raw, str(d / "checkpoint"), str(d))


def test_tensorflow_format_saves_write_tensorflows_state_file_with_retention(tmp_path):
    ckpt = _ckpt()
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=2)
    paths = []
    for i in range(3):
        ckpt.w.assign(np.full(2, i, np.float32))
        paths.append(m.save(options=TF))
    raw, state = _state(tmp_path)
    assert raw.startswith(b"# ckptcore-crc32c: ")
    assert b'model_checkpoint_path: "ckpt-3"\n' in raw and b"last_preserved_timestamp: " in raw
    assert (state.latest, state.all, state.format) == ("ckpt-3", ["ckpt-2", "ckpt-3"], "tensorflow")
    assert len(state.timestamps) == 2 and state.last_preserved_timestamp is not None
    assert not (tmp_path / "ckpt-1.index").exists()  # retention as before
    assert ck.latest_checkpoint(str(tmp_path)) == paths[-1]
    again = ck.CheckpointManager(_ckpt(), str(tmp_path), max_to_keep=2)
    assert again.checkpoints == paths[1:] and again.latest_checkpoint == paths[-1]
    assert again.restore_or_initialize() == paths[-1]
    assert again._checkpoint.w.numpy().tolist() == [2.0, 2.0]
    again.save(options=TF)
    assert _state(tmp_path)[1].all == ["ckpt-3", "ckpt-4"]


def test_delete_and_async_saves_keep_the_state_in_tensorflows_format(tmp_path):
    ckpt = _ckpt()
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=None)
    m.save(options=ck.CheckpointOptions(format="tensorflow", enable_async=True))
    m.save(options=ck.CheckpointOptions(format="tensorflow", enable_async=True))
    m.sync()
    assert _state(tmp_path)[1].all == ["ckpt-1", "ckpt-2"]
    m.delete(2)
    raw, state = _state(tmp_path)
    assert state.all == ["ckpt-1"] and state.latest == "ckpt-1"


def test_the_state_file_follows_the_format_of_the_checkpoints(tmp_path):
    """ckptcore-format directories keep their checksum-protected JSON; the format of the last save decides."""
    m = ck.CheckpointManager(_ckpt(), str(tmp_path), max_to_keep=3)
    m.save()
    doc = json.loads((tmp_path / "checkpoint").read_text())
    assert doc["format"] == "ckptcore-state" and "crc32c" in doc
    m.save(options=TF)
    assert _state(tmp_path)[1].all == ["ckpt-1", "ckpt-2"]
    m.save()
    assert json.loads((tmp_path / "checkpoint").read_text())["all_model_checkpoint_paths"] == \
        ["ckpt-1", "ckpt-2", "ckpt-3"]
    assert [ck.load_checkpoint(str(tmp_path / f"ckpt-{i}")).format.name for i in (1, 2, 3)] == \
        ["ckptcore", "tensorflow", "ckptcore"]


def test_a_damaged_tensorflow_state_file_is_detected_and_recovered_from_the_listing(tmp_path):
    ckpt = _ckpt()
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=5)
    for _ in range(3):
        m.save(options=TF)
    raw = (tmp_path / "checkpoint").read_bytes()
    # a torn file that still parses: without the checksum it would silently forget ckpt-3
    damaged = raw.replace(b'all_model_checkpoint_paths: "ckpt-3"\n', b"")
    (tmp_path / "checkpoint").write_bytes(damaged)
    with pytest.raises(ck.CorruptCheckpointError, match="checksum does not match"):
        ck.latest_checkpoint(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = ck.CheckpointManager(_ckpt(), str(tmp_path), max_to_keep=5)
    assert any("recovering the checkpoint list" in str(w.message) for w in caught)
    assert [os.path.basename(p) for p in again.checkpoints] == ["ckpt-1", "ckpt-2", "ckpt-3"]


def test_a_state_file_written_by_tensorflow_has_no_checksum_and_is_read_as_before(tmp_path):
    ckpt = _ckpt()
    m = ck.CheckpointManager(ckpt, str(tmp_path), max_to_keep=5)
    m.save(options=TF)
    m.save(options=TF)
    raw = (tmp_path / "checkpoint").read_bytes()
    (tmp_path / "checkpoint").write_bytes(raw.split(b"\n", 1)[1])  # as tf.train.CheckpointManager writes it
    again = ck.CheckpointManager(_ckpt(), str(tmp_path), max_to_keep=5)
    assert [os.path.basename(p) for p in again.checkpoints] == ["ckpt-1", "ckpt-2"]
    again.save(options=TF)  # and ckptcore's manager goes on in TensorFlow's format
    assert _state(tmp_path)[0].startswith(b"# ckptcore-crc32c: ")
