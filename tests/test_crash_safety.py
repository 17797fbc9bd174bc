"""kill -9 at random moments never leaves a torn checkpoint visible; concurrent writers do not corrupt each other.

A child process restores the latest checkpoint of a directory and keeps saving
(each step writes values derived from the step number). The test SIGKILLs it at
random moments, then checks that ``ck.latest_checkpoint`` restores a complete,
self-consistent checkpoint at least as new as the last save the child
reported, and that every checkpoint the manager lists verifies.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import ckptcore as ck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 1_000_000  # float32 elements per array; 4 arrays = 16 MB per checkpoint, so kills land mid-write
ARRAYS = 4

CHILD = """
import sys, numpy as np, ckptcore as ck
directory, mode, name = sys.argv[1], sys.argv[2], sys.argv[3]
N, ARRAYS = %(N)d, %(ARRAYS)d
step = ck.Variable(0, dtype=np.int64)
model = ck.Module()
for i in range(ARRAYS):
    setattr(model, f"w{i}", ck.Variable(np.zeros(N, np.float32)))
ckpt = ck.Checkpoint(model=model, step=step)
manager = ck.CheckpointManager(ckpt, directory, max_to_keep=3, step_counter=step, checkpoint_name=name)
manager.partial_file_grace_seconds = float(sys.argv[4])
parity = int(sys.argv[6])  # -1: number by step; 0/1: two writers share the name with even/odd numbers
if parity < 0:
    manager.restore_or_initialize()
options = ck.CheckpointOptions(enable_async=(mode == "async"))
print("ready", int(step), flush=True)
if parity >= 0:  # two writers: both managers exist before either saves (else the later one adopts the other's)
    sys.stdin.readline()
limit = int(sys.argv[5])
while limit < 0 or int(step) < limit:
    s = int(step) + 1
    step.assign(s)
    for i in range(ARRAYS):
        getattr(model, f"w{i}").assign(np.full(N, s * 10 + i, np.float32))
    manager.save(checkpoint_number=None if parity < 0 else 2 * s + parity, options=options)
    print("saved", s, flush=True)
manager.sync()
""" % {"N": N, "ARRAYS": ARRAYS}  # noqa: UP031 -- the child script has its own braces

PARTIAL = re.compile(r"^\..*\.tmp-[0-9a-f]{32}$|^(?P<base>.+)\.data-\d{5}-of-\d{5}$")


def spawn(directory, mode="sync", name="ckpt", grace=0.0, limit=-1, parity=-1):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-c", CHILD, directory, mode, name, str(grace), str(limit), str(parity)],
                            stdin=subprocess.PIPE if parity >= 0 else None, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def fresh_objects():
    step = ck.Variable(-1, dtype=np.int64)
    model = ck.Module()
    for i in range(ARRAYS):
        setattr(model, f"w{i}", ck.Variable(np.full(N, -1.0, np.float32)))
    return step, model, ck.Checkpoint(model=model, step=step)


def restore_and_check(path) -> int:
    """Restore ``path`` and check every value is the one its step wrote; returns the step."""
    ck.load_checkpoint(path).verify()
    step, model, ckpt = fresh_objects()
    ckpt.restore(path).assert_consumed()
    s = int(step)
    number = int(path.rsplit("-", 1)[1])
    assert number in (s, 2 * s, 2 * s + 1), f"{path} holds step {s}"
    for i in range(ARRAYS):
        w = getattr(model, f"w{i}").numpy()
        assert w[0] == w[-1] == s * 10 + i and np.all(w == s * 10 + i), f"{path}: w{i} is not all {s * 10 + i}"
    return s


def partial_files(directory) -> list[str]:
    names = set(os.listdir(directory))
    out = []
    for n in names:
        m = PARTIAL.match(n)
        if m and (m.group("base") is None or m.group("base") + ".index" not in names):
            out.append(n)
    return sorted(out)


@pytest.mark.parametrize("mode,kills", [("sync", 20), ("async", 12)])
def test_sigkill_at_random_moments_never_exposes_a_torn_checkpoint(tmp_path, mode, kills):
    rng = random.Random(f"crash-{mode}")
    d = str(tmp_path)
    mid_write = 0
    newest_seen = 0
    done = 0
    # `kills` random kills; more (up to 3x) while fewer than 3 of them landed mid-write: on a loaded
    # machine, or as saves get faster, a fixed count can miss the writes by chance
    while done < kills or (mid_write < 3 and done < 3 * kills):
        done += 1
        child = spawn(d, mode)
        line = child.stdout.readline()
        assert line.startswith("ready"), child.stderr.read()
        restored_step = int(line.split()[1])
        assert restored_step == newest_seen  # the child resumed from the newest complete checkpoint
        time.sleep(rng.uniform(0.0, 0.5))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        reported = [int(x) for x in re.findall(r"^saved (\d+)$", out, re.M)]
        mid_write += bool(partial_files(d))
        # a synchronous save that returned is durable and visible; an async one returned once the previous
        # one was committed
        durable = (reported[-1] if mode == "sync" else reported[-1] - 1) if reported else 0
        # the commit protocol: a checkpoint exists exactly when its index does, so every index is complete
        for f in os.listdir(d):
            if f.endswith(".index"):
                restore_and_check(os.path.join(d, f[:-6]))
        latest = ck.latest_checkpoint(d)
        if latest is None:
            assert restored_step == 0 and durable <= 0
            continue
        s = restore_and_check(latest)
        assert s >= durable and s >= restored_step
        newest_seen = s
        manager = ck.CheckpointManager(fresh_objects()[2], d, max_to_keep=3)
        assert manager.latest_checkpoint == latest
        for path in manager.checkpoints:
            restore_and_check(path)
    # the random kills did land in the middle of writes, so the test exercised torn saves
    assert mid_write >= 3, f"only {mid_write} of {done} kills left partial files"
    assert newest_seen > 0
    # a later manager save cleans every leftover
    step, model, ckpt = fresh_objects()
    manager = ck.CheckpointManager(ckpt, d, max_to_keep=3, step_counter=step)
    manager.partial_file_grace_seconds = 0
    manager.restore_or_initialize()
    step.assign(int(step) + 1)
    for i in range(ARRAYS):
        getattr(model, f"w{i}").assign(np.full(N, int(step) * 10 + i, np.float32))
    manager.save()
    assert partial_files(d) == []
    listed = {os.path.basename(p) for p in manager.checkpoints}
    assert {f.split(".")[0] for f in os.listdir(d) if f != "checkpoint"} == listed


@pytest.mark.parametrize("shared_name", [False, True], ids=["two-names", "one-name-even-odd"])
def test_two_processes_saving_into_one_directory_do_not_corrupt_each_other(tmp_path, shared_name):
    d = str(tmp_path)
    if shared_name:  # same file names, disjoint numbers: each one's cleanup must spare the other's writes
        children = [spawn(d, "sync", "ckpt", grace=60.0, limit=12, parity=p) for p in (0, 1)]
        finals = ["ckpt-24", "ckpt-25"]
    else:
        children = [spawn(d, "sync", name, grace=60.0, limit=12, parity=0) for name in ("alpha", "beta")]
        finals = ["alpha-24", "beta-24"]
    # Start both only once both managers exist. A manager made after the other's first commit adopts the
    # checkpoints of its name recorded in the state file (restart recovery, as in TF, where only one manager
    # should be active in a directory) and would delete them as its own: under load that removed ckpt-24.
    for c in children:
        assert c.stdout.readline().startswith("ready"), c.stderr.read()
    for c in children:
        c.stdin.write("go\n")
        c.stdin.flush()
    for c in children:
        out, err = c.communicate(timeout=120)
        assert c.returncode == 0, err
        assert re.findall(r"^saved (\d+)$", out, re.M)[-1] == "12"
    # every index present is complete and consistent; no temp file is left behind
    indexes = sorted(f[:-6] for f in os.listdir(d) if f.endswith(".index"))
    for name in indexes:
        restore_and_check(os.path.join(d, name))
    assert partial_files(d) == []
    for name in finals:
        assert name in indexes
    # the state file (replaced atomically by both) parses and names a complete checkpoint
    latest = ck.latest_checkpoint(d)
    assert os.path.basename(latest) in finals and restore_and_check(latest) == 12


def test_verify_detects_a_flipped_byte(tmp_path):
    step, model, ckpt = fresh_objects()
    path = ckpt.write(str(tmp_path / "c"))
    assert ck.load_checkpoint(path).verify() == ARRAYS * N * 4 + 8
    data = tmp_path / "c.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(ck.CorruptCheckpointError, match=r"checksum mismatch for tensor 'model/w\d") as e:
        ck.load_checkpoint(path).verify()
    assert str(data) in str(e.value)
    # a truncated data file is caught before any tensor is read
    data.write_bytes(bytes(raw[: len(raw) // 3]))
    with pytest.raises(ck.CorruptCheckpointError, match="truncated"):
        ck.load_checkpoint(path).verify()
