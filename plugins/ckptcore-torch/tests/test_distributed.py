"""Multi-worker checkpoints on torch.distributed (gloo, CPU), in worlds of 1 to 4 processes spawned here.

Spawning a world costs seconds (each rank imports torch), so each world runs several cases one
after the other (dist_scenarios.seq) and the tests check their results; every world is bounded
in time (dist_harness.run_world).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from dist_harness import run_world

import ckptcore as ck

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

LAYOUTS = [["0", ["1", "r", "0"]], ["r", ["0", "1"]]]


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    """One world of 2: FSDP2 + AdamW saved after 2 steps and resumed; a replicated model; DTensor
    placements; a rank raising during a save at two moments; async saves."""
    workdir = str(tmp_path_factory.mktemp("world2"))
    steps = [["fsdp_save", {}], ["fsdp_resume", {"train": True}], ["replicated_save", {}]]
    steps += [["dtensor_layouts", {"save": s, "load": loads, "write": True}] for s, loads in LAYOUTS]
    steps += [["failure", {"moment": m, "how": "raise"}] for m in ("plan", "write")]
    steps += [["async_save", {}], ["manager", {}], ["restore_on_create", {}]]
    results = run_world(2, "seq", workdir, timeout=300, steps=steps)
    return workdir, results


@pytest.fixture(scope="module")
def world4(world2):
    """One world of 4: the world-2 FSDP2 checkpoint restored (2 -> 4), then an FSDP2 + AdamW checkpoint saved
    at world 4 (for 4 -> 2)."""
    workdir, saved = world2
    steps = [["fsdp_resume", {"path": saved[0][0]["path"]}], ["fsdp_save", {"dir": "fsdp4", "ref": "reference4.npz"}]]
    return run_world(4, "seq", workdir, timeout=240, steps=steps)


def _reference(workdir):
    ref = np.load(os.path.join(workdir, "reference.npz"))
    return {k.replace("|", "/"): ref[k] for k in ref.files}


def test_save_returns_the_same_path_on_every_rank(world2):
    _, (r0, r1) = world2
    assert r0[0]["path"] == r1[0]["path"]


def test_fsdp2_resume_is_bit_identical(world2):
    _, results = world2
    for r in results:
        saved, resumed = r[0], r[1]
        assert resumed["mismatched"] == []
        assert resumed["losses"] == saved["losses"]  # exactly the uninterrupted run's losses


def test_fsdp2_checkpoint_saved_at_2_restores_at_4(world4):
    assert [r[0]["mismatched"] for r in world4] == [[]] * 4
    assert world4[0][0]["keys"] == 16


def test_fsdp2_checkpoint_saved_at_4_restores_at_2_then_rank_0_killed_after_its_index_write(world4, tmp_path):
    """4 -> 2, then (same world) the SIGKILL of rank 0 just after it wrote the index of a save: the
    checkpoint is complete but not yet recorded as latest; rank 1 raises CollectiveTimeoutError (bounded by
    collective_timeout and the world's timeout)."""
    workdir = os.path.dirname(os.path.dirname(world4[0][1]["path"]))
    steps = [["fsdp_resume", {"path": world4[0][1]["path"], "ref": "reference4.npz", "train": True}],
             ["failure", {"moment": "index", "how": "kill", "victim": 0, "timeout_s": 20}]]
    r0, r1 = run_world(2, "seq", workdir, timeout=120, expect_fail=(0,), steps=steps)
    for r in (r0[0], r1[0]):  # every value equal to the world-4 reference; training goes on from it
        assert r["mismatched"] == [] and r["keys"] == 16
    # (the same batches, gradients averaged over 2 ranks instead of 4)
    np.testing.assert_allclose(r1[0]["losses"], world4[0][1]["losses"], rtol=1e-6)
    got = r1[1]
    assert got["error"].startswith("CheckpointError") and "its index exists" in got["error"]
    assert got["index_exists"] and got["second_complete"]
    assert got["latest"].endswith("ckpt-1") and got["first_restorable"]  # rank 0 died before recording it


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 3])
def test_fsdp2_checkpoint_restores_at_other_world_sizes(world2, world):
    workdir, saved = world2
    steps = [["fsdp_resume", {"path": saved[0][0]["path"]}]]
    if world == 3:  # a DTensor saved Shard(0) on 2 ranks, read Shard(1) and replicated on 3
        steps.append(["dtensor_layouts", {"save": "0", "load": ["1", "r"]}])
    results = run_world(world, "seq", workdir, timeout=240, steps=steps)
    assert [r[0]["mismatched"] for r in results] == [[]] * world
    assert results[0][0]["keys"] == 16  # 4 parameters, each with exp_avg, exp_avg_sq and step
    if world == 3:
        assert [r[1] for r in results] == [{"1": True, "r": True}] * 3


def test_a_plain_process_reads_the_sharded_checkpoint(world2):
    from dist_scenarios import make_model

    workdir, saved = world2
    path = saved[0][0]["path"]
    ref = _reference(workdir)
    reader = ck.load_checkpoint(path)
    assert reader.index.num_shards == 2 and reader.index.pieces is not None  # one section per rank
    for key, value in ref.items():
        np.testing.assert_array_equal(reader.get_tensor(key), value)
    shapes = dict(ck.list_variables(path))
    assert shapes["model/0/weight/.ATTRIBUTES/VARIABLE_VALUE"] == [6, 8]  # the global shape
    assert reader.verify() > 0
    plain = make_model(seed=3)
    ck.Checkpoint(model=plain).restore(path).expect_partial()  # the optimizer's values are not restored here
    np.testing.assert_array_equal(plain[2].weight.detach().numpy(), ref["model/2/weight/.ATTRIBUTES/VARIABLE_VALUE"])


def test_replicated_values_are_written_once_spread_over_ranks(world2):
    _, results = world2
    info = results[0][2]
    reader = ck.load_checkpoint(info["path"])
    t = reader.index.table
    assert reader.index.pieces is None  # whole values only: an ordinary (version-2) index
    files = sum(os.path.getsize(reader.data_file(i)) for i in range(2))
    assert files == sum(reader.index.shard_sizes)
    value_bytes = sum(t.nbytes)
    assert value_bytes == info["nbytes"]
    assert value_bytes <= files < value_bytes + 64 * len(t)  # each value once (padding aside)
    assert set(t.shard) == {0, 1}  # both ranks wrote


def test_dtensor_placements_reshard(world2):
    _, results = world2
    for r in results:
        for (save, loads), got in zip(LAYOUTS, r[3:5]):
            assert got == dict.fromkeys(loads, True), save


def test_a_rank_that_raises_fails_the_save_everywhere(world2):
    _, (r0, r1) = world2
    for k in (5, 6):
        assert r0[k]["error"].startswith("CheckpointError: rank 0: rank 1 failed")
        assert r1[k]["error"] == "RuntimeError: disk on fire"
        for r in (r0[k], r1[k]):
            assert not r["index_exists"] and r["latest"].endswith("ckpt-1") and r["first_restorable"]
            # the next save of that number cleans up the partial sections and commits
            assert r["later"].endswith("ckpt-2")
            assert r["files"] == ["ckpt-2.data-00000-of-00002", "ckpt-2.data-00001-of-00002", "ckpt-2.index"]


def _threads(n, fn):
    import threading

    from ckptcore.distributed import ThreadGroup

    out = [None] * n

    def run(g):
        out[g.rank] = fn(g)
    ts = [threading.Thread(target=run, args=(g,)) for g in ThreadGroup.create(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return out


def test_a_rank_killed_before_the_commit_leaves_no_checkpoint_and_no_hang(tmp_path):
    """SIGKILL of rank 1 while planning or writing its section (chosen at random): no index, latest unchanged;
    a later save of the same number (here by 3 workers) removes the dead save's sections and temp files."""
    from dist_scenarios import make_model

    moment = random.choice(["plan", "write"])
    r0, _ = run_world(2, "failure", str(tmp_path), timeout=120, expect_fail=(1,), moment=moment, how="kill",
                      timeout_s=20)
    assert r0["error"].startswith("CheckpointError"), moment
    assert not r0["index_exists"] and r0["latest"].endswith("ckpt-1") and r0["first_restorable"]
    prefix = r0["prefix"]

    def again(g):
        ckpt = ck.Checkpoint(model=make_model(seed=4))
        ckpt.restore(prefix + "-1", ck.CheckpointOptions(process_group=g)).assert_consumed()  # save_counter 1
        return ckpt.save(prefix, ck.CheckpointOptions(process_group=g, collective_timeout=20))
    assert _threads(3, again) == [prefix + "-2"] * 3
    left = sorted(f for f in os.listdir(os.path.dirname(prefix)) if "ckpt-2" in f)
    assert left == [f"ckpt-2.data-0000{r}-of-00003" for r in range(3)] + ["ckpt-2.index"]


def test_a_rank_killed_after_rank_0_committed_does_not_fail_the_save(tmp_path):
    """SIGKILL of rank 1 at the last message of a save, after rank 0 wrote and recorded the index: the checkpoint
    is complete and latest; rank 0 returns its path (the dead rank shows at the group's next step)."""
    r0, _ = run_world(2, "failure", str(tmp_path), timeout=120, expect_fail=(1,), moment="commit", how="kill",
                      timeout_s=20)
    assert r0["error"] is None
    assert r0["index_exists"] and r0["second_complete"] and r0["latest"].endswith("ckpt-2")


def test_async_save_snapshots_then_commits_while_training_goes_on(world2):
    _, results = world2
    for r in results:
        got = r[7]
        assert got["mismatched"] == []  # the values of the moment of save(), though a step ran meanwhile
        assert got["latest"] == got["path"] and not got["second_exists"]
    # a failure on rank 1 during the background write: sync() raises on every rank
    assert results[0][7]["error"].startswith("CheckpointError: rank 0: rank 1 failed writing its section")
    assert results[1][7]["error"] == "RuntimeError: disk on fire"


def test_checkpoint_manager_is_collective(world2):
    _, results = world2
    for r in results:
        got = r[8]
        assert got["first"] is None and got["paths"][1].endswith("ckpt-2")
        assert got["restored"] == got["paths"][1] and got["kept"] == [got["paths"][1]]
        assert got["mismatched"] == []
        assert got["files"] == []  # the older checkpoint removed (max_to_keep=1), every rank's section
        assert got["latest_after_save"] == got["paths"][1]
    # the state file and the deletes of retention are rank 0's alone (every rank wrote its own state file,
    # with its own timestamps, and ran the same deletes and partial-file sweep on the shared directory)
    assert "write_atomic" in results[0][8]["touched"] and "remove" in results[0][8]["touched"]
    assert results[1][8]["touched"] == []


def test_restore_on_create_under_a_group(world2):
    """Checkpoint().restore(p) on every rank before the FSDP2 model and the optimizer exist; attached later,
    they get every value of the reference (each rank its own shards) and training resumes bit-identically;
    a replicated plain model attached later too; the status assertions pass on every rank."""
    _, results = world2
    for r in results:
        saved, got = r[0], r[9]
        assert got["mismatched"] == [] and got["keys"] == 16
        assert got["losses"] == saved["losses"]
        assert got["replicated_ok"]


def test_assert_consumed_fails_on_every_rank_when_one_ranks_graph_differs(world2):
    _, (r0, r1) = world2
    a, b = r0[9]["differs"], r1[9]["differs"]
    assert a is not None and a == b  # rank 0's own graph is fine: it fails too, with the same message
    assert a.startswith("assert_consumed failed on 1 of 2 ranks (rank 1):")
    assert "extra/weight" in a and "rank 0:" not in a
