"""Progress bars (only on a terminal, only when asked), log lines, and per-checkpoint user metadata."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import numpy as np
import pytest

import ckptcore as ck
from ckptcore import progress


def _on_a_terminal(code: str, timeout: float = 120) -> str:
    """Run ``code`` with stderr on a pseudo-terminal; return what it drew there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a size
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env=dict(os.environ, COLUMNS="120"))
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout)
    assert proc.returncode == 0, proc.stdout.read()
    return b"".join(chunks).decode("utf-8", "replace")


_SAVE_AND_RESTORE = """
import numpy as np, ckptcore as ck, sys
opts = ck.CheckpointOptions(progress={flag})
a = np.ones(1 << 20)
p = ck.Checkpoint(a=a).save({path!r}, opts)
ck.Checkpoint(a=np.zeros(1 << 20)).restore(p, opts).assert_consumed()
"""


def test_progress_bar_on_a_terminal_only_when_asked(tmp_path):
    drawn = _on_a_terminal(_SAVE_AND_RESTORE.format(flag=True, path=str(tmp_path / "a" / "ckpt")))
    assert "saving" in drawn and "restoring" in drawn and "8.00M" in drawn, drawn  # total size, tqdm's units
    assert _on_a_terminal(_SAVE_AND_RESTORE.format(flag=False, path=str(tmp_path / "b" / "ckpt"))) == ""


def test_no_progress_output_off_a_terminal(tmp_path):
    r = subprocess.run([sys.executable, "-c", _SAVE_AND_RESTORE.format(flag=True, path=str(tmp_path / "ckpt"))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr


def test_cli_verify_draws_progress_on_a_terminal(tmp_path):
    p = ck.Checkpoint(a=np.ones(1 << 18)).write(str(tmp_path / "c"))
    cli = str(Path(sys.executable).parent / "ckptcore")
    drawn = _on_a_terminal(f"import subprocess, sys; sys.exit(subprocess.call([{cli!r}, 'verify', {p!r}], "
                           "stdout=subprocess.DEVNULL))")
    assert "verifying" in drawn, drawn


class _Recorder:
    """Stands in for progress.bar: records updates and the threads they came from."""

    def __init__(self):
        self.bars = []

    def __call__(self, desc, total, enabled, stream=None):
        if not enabled:
            return None
        rec = self

        class Bar:
            def __init__(self):
                self.desc, self.total, self.done, self.threads, self.closed = desc, total, 0, set(), False
                rec.bars.append(self)

            def update(self, n):
                self.done += n
                self.threads.add(threading.current_thread().name)

            def close(self):
                self.closed = True
        return Bar()


def test_progress_reports_every_byte_of_saves_restores_and_async_saves(tmp_path, monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(progress, "bar", rec)
    opts = ck.CheckpointOptions(progress=True)
    arrays = {f"t{i}": np.full(1 << 16, i, np.float32) for i in range(5)}
    nbytes = sum(a.nbytes for a in arrays.values())
    ckpt = ck.Checkpoint(**arrays)
    p = ckpt.write(str(tmp_path / "sync"), opts)
    ckpt.write(str(tmp_path / "async"), ck.CheckpointOptions(progress=True, enable_async=True))
    ckpt.sync()
    ck.Checkpoint(**{k: np.zeros_like(v) for k, v in arrays.items()}).read(p, opts).assert_consumed()
    ck.Checkpoint(**arrays).write(str(tmp_path / "quiet"))  # progress off: no bar
    saves = [b for b in rec.bars if b.desc.startswith("saving")]
    restores = [b for b in rec.bars if b.desc.startswith("restoring")]
    assert len(saves) == 2 and len(restores) == 1 and all(b.closed for b in rec.bars)
    assert all(b.total == b.done == nbytes for b in saves)
    assert saves[1].threads == {"ckptcore-async-save_0"}  # the async writer reports from its thread
    assert restores[0].done >= nbytes  # the bytes read (with the alignment padding between tensors)


def test_one_info_line_per_save_and_restore_with_bytes_seconds_and_rate(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="ckptcore")
    p = ck.Checkpoint(a=np.ones(1000)).save(str(tmp_path / "ckpt"))
    ck.Checkpoint(a=np.zeros(1000)).restore(p).assert_consumed()
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name == "ckptcore"]
    assert len(info) == 2, info
    assert info[0].startswith(f"saved {p}: 8008 bytes in ") and info[0].endswith(" GB/s)")
    assert info[1].startswith(f"restored {p}: ") and " bytes in " in info[1] and info[1].endswith(" GB/s)")
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith(f"planned {p}: 2 tensors") for m in debug) and any("committed the index" in m
                                                                                for m in debug)
    # the restore's phases too: opening the index, then matching, reading and assigning
    assert any(m.startswith(f"opened {p} (ckptcore): 2 tensors in ") for m in debug)
    assert any(m.startswith(f"matched, read and assigned {p} after ") for m in debug)


def test_user_metadata_round_trip_and_validation(tmp_path):
    meta = {"step": 7, "loss": 0.125, "tags": ["best", None], "cfg": {"lr": 1e-3}}
    p = ck.Checkpoint(a=np.ones(1)).save(str(tmp_path / "ckpt"), ck.CheckpointOptions(metadata=meta))
    assert ck.load_checkpoint(p).metadata == meta
    assert ck.load_checkpoint(ck.Checkpoint(a=np.ones(1)).write(str(tmp_path / "plain"))).metadata == {}
    with pytest.raises(ck.CheckpointError, match="not JSON-serializable"):
        ck.CheckpointOptions(metadata={"a": np.ones(2)})
    with pytest.raises(ck.CheckpointError, match="not JSON-serializable"):
        ck.CheckpointOptions(metadata={"a": float("nan")})
    with pytest.raises(ck.CheckpointError, match="string keys"):
        ck.CheckpointOptions(metadata={1: 2})
    with pytest.raises(ck.CheckpointError, match="at most"):
        ck.CheckpointOptions(metadata={"big": "x" * (2 << 20)})
    # an async save writes the metadata as it was when save() was called
    live = {"step": 1}
    c = ck.Checkpoint(a=np.ones(1))
    q = c.save(str(tmp_path / "async"), ck.CheckpointOptions(metadata=live, enable_async=True))
    live["step"] = 2
    c.sync()
    assert ck.load_checkpoint(q).metadata == {"step": 1}


def test_a_checkpoint_whose_index_metadata_is_not_ours_reads_as_empty(tmp_path):
    from ckptcore.formats import ckpt as fmt

    p = ck.Checkpoint(a=np.ones(1)).write(str(tmp_path / "c"))
    r = ck.load_checkpoint(p)
    r.index.metadata = {fmt.USER_METADATA_KEY: ["not", "a", "dict"]}
    assert r.metadata == {}
