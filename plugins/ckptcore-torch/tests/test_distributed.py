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
    steps += [["async_save", {}], ["manager", {}]]
    results = run_world(2, "seq", workdir, timeout=300, steps=steps)
    return workdir, results


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


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 3, 4])
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


def test_a_killed_rank_leaves_no_checkpoint_and_no_hang(tmp_path):
    moment = random.choice(["plan", "write"])
    r0, _ = run_world(2, "failure", str(tmp_path), timeout=120, expect_fail=(1,), moment=moment, how="kill",
                      timeout_s=20)
    assert r0["error"].startswith("CheckpointError"), moment
    assert not r0["index_exists"] and r0["latest"].endswith("ckpt-1") and r0["first_restorable"]


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
