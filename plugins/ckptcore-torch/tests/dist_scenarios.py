"""Scenarios run by each rank of a spawned gloo world (see dist_harness.run_world).

``python dist_scenarios.py SCENARIO RANK WORLD PORT WORKDIR PARAMS_JSON``; the scenario's return
value is written to ``WORKDIR/result-SCENARIO-RANK.json``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

import ckptcore as ck

STEPS = 4


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))


def data(steps: int):
    g = torch.Generator().manual_seed(1234)
    return [(torch.randn(5, 8, generator=g), torch.randn(5, 3, generator=g)) for _ in range(steps)]


def train(model, opt, batches) -> list[float]:
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def fsdp(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def full_state(model, opt) -> dict:
    """Every value as a global numpy array, keyed like the checkpoint."""
    from torch.distributed.tensor import DTensor

    def full(t):
        return (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().numpy().copy()

    out = {}
    for name, p in model.named_parameters():
        key = name.replace(".", "/")
        out[f"model/{key}/.ATTRIBUTES/VARIABLE_VALUE"] = full(p)
        for slot, v in opt.state.get(p, {}).items():
            out[f"model/{key}/.OPTIMIZER_SLOT/optimizer/{slot}/.ATTRIBUTES/VARIABLE_VALUE"] = full(v)
    return out


# -- scenarios ------------------------------------------------------------------------------
def fsdp_save(rank, world, workdir, params):
    """FSDP2 + AdamW: two steps, save, two more (the uninterrupted losses); a reference of every value."""
    model = fsdp(make_model())
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    batches = data(STEPS)
    train(model, opt, batches[:2])
    ckpt = ck.Checkpoint(model=model, optimizer=opt)
    path = ckpt.save(os.path.join(workdir, params.get("dir", "fsdp"), "ckpt"))
    ref = full_state(model, opt)
    if rank == 0:
        np.savez(os.path.join(workdir, params.get("ref", "reference.npz")),
                 **{k.replace("/", "|"): v for k, v in ref.items()})
    after = train(model, opt, batches[2:])
    return {"path": path, "losses": after}


def fsdp_resume(rank, world, workdir, params):
    """A fresh FSDP2 model and AdamW (no step taken) restored from the checkpoint, then trained on."""
    model = fsdp(make_model(seed=99))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    status = ck.Checkpoint(model=model, optimizer=opt).restore(params["path"])
    status.assert_consumed()
    ref = np.load(os.path.join(workdir, params.get("ref", "reference.npz")))
    got = full_state(model, opt)
    mismatched = [k for k in got if not np.array_equal(got[k], ref[k.replace("/", "|")])]
    losses = train(model, opt, data(STEPS)[2:]) if params.get("train") else []
    return {"mismatched": mismatched, "keys": len(got), "losses": losses}


def replicated_save(rank, world, workdir, params):
    """A DDP-style model (the same plain module on every rank): each value written once."""
    model = make_model()
    path = ck.Checkpoint(model=model).write(os.path.join(workdir, "ddp", "ckpt"))
    return {"path": path, "nbytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def dtensor_layouts(rank, world, workdir, params):
    """Save a DTensor with Shard(params['save']); restore into Shard(params['load']) or Replicate."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    full = torch.arange(6 * 10, dtype=torch.float32).reshape(6, 10)

    def place(p):
        return Replicate() if p == "r" else Shard(int(p))

    path = f"{params.get('root', workdir)}/layout/c-{params['save']}"  # a local directory or an s3:// URL
    opts = ck.CheckpointOptions(storage_options=params.get("storage_options"))  # (gs://: the emulator's)
    if params.get("write"):
        ck.Checkpoint(t=distribute_tensor(full, mesh, [place(params["save"])])).write(path, opts)
    out = {}
    for load in params["load"]:
        dst = distribute_tensor(torch.zeros(6, 10), mesh, [place(load)])
        ck.Checkpoint(t=dst).read(path, opts).assert_consumed()
        out[load] = bool(torch.equal(dst.full_tensor(), full))
    return out


def failure(rank, world, workdir, params):
    """Rank ``params['victim']`` (1) raises (or is SIGKILLed) at ``params['moment']`` of the second save; the
    others report what they saw. Moments: "plan", "write" (before the commit point), "index" (just after rank 0
    wrote the index, before it records it as latest), "commit" (the last message: rank 0 has recorded it)."""
    import signal
    import time

    import ckptcore.distributed.protocol as dsave  # the steps every collective save runs
    import ckptcore.save.write as saver
    from ckptcore.storage import LocalStorage

    model = make_model()
    opts = ck.CheckpointOptions(collective_timeout=params.get("timeout_s", 20))
    ckpt = ck.Checkpoint(model=model)
    prefix = os.path.join(workdir, f"fail-{params['moment']}-{params['how']}-{params.get('victim', 1)}", "ckpt")
    first = ckpt.save(prefix, opts)
    originals = dsave.describe, saver._write_tensors
    if rank == params.get("victim", 1):
        def boom(*a, **k):
            if params["how"] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("disk on fire")
        if params["moment"] == "plan":
            dsave.describe = boom
        elif params["moment"] == "write":
            saver._write_tensors = boom
        elif params["moment"] == "index":
            real_atomic = LocalStorage.write_atomic

            def atomic(self, path, data):
                real_atomic(self, path, data)
                if path.endswith(".index"):
                    boom()
            LocalStorage.write_atomic = atomic
        else:
            real_bcast = dsave.broadcast_json

            def bcast(g, value, src, timeout, what="broadcast"):
                if what == "commit":
                    boom()
                return real_bcast(g, value, src, timeout, what)
            dsave.broadcast_json = bcast
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    t0 = time.monotonic()
    try:
        ckpt.save(prefix, opts)
        error = None
    except Exception as e:  # rank 0: a ckptcore error; rank 1 gets its own exception back
        error = f"{'CheckpointError' if isinstance(e, ck.CheckpointError) else type(e).__name__}: {e}"
    elapsed = time.monotonic() - t0
    out = {"error": error, "elapsed": elapsed, "latest": ck.latest_checkpoint(os.path.dirname(prefix)),
           "index_exists": os.path.exists(prefix + "-2.index"), "prefix": prefix}
    key = "model/0/weight/.ATTRIBUTES/VARIABLE_VALUE"
    saved = ck.load_checkpoint(first).get_tensor(key)  # not collective
    out["first_restorable"] = bool(np.array_equal(saved, before.numpy()))
    if out["index_exists"]:  # committed: complete, with the values of the second save
        reader = ck.load_checkpoint(prefix + "-2")
        out["second_complete"] = bool(reader.verify() > 0 and np.array_equal(reader.get_tensor(key),
                                                                                model[0].weight.detach().numpy()))
    if params["how"] == "raise":  # both alive: a later save of the same number cleans up and commits
        if rank == 1:
            dsave.describe, saver._write_tensors = originals
        out["later"] = ckpt.save(prefix, opts)
        out["files"] = sorted(f for f in os.listdir(os.path.dirname(prefix)) if f.startswith("ckpt-2"))
    return out


def async_save(rank, world, workdir, params):
    """FSDP2: an async save, a training step while it writes (FSDP's collectives meanwhile), sync();
    the checkpoint holds the values of the moment of save(). Then an async save that fails on rank 1."""
    import ckptcore.save.write as saver

    model = fsdp(make_model())
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    batches = data(STEPS)
    train(model, opt, batches[:1])
    ckpt = ck.Checkpoint(model=model, optimizer=opt)
    before = full_state(model, opt)
    opts = ck.CheckpointOptions(enable_async=True, collective_timeout=60)
    path = ckpt.save(os.path.join(workdir, "async", "ckpt"), opts)
    train(model, opt, batches[1:2])  # changes every value while the save writes
    ckpt.sync()
    reader = ck.load_checkpoint(path)
    mismatched = [k for k, v in before.items() if not np.array_equal(reader.get_tensor(k), v)]
    real = saver._write_tensors
    if rank == 1:
        def boom(*a, **k):
            raise RuntimeError("disk on fire")
        saver._write_tensors = boom
    second = ckpt.save(os.path.join(workdir, "async", "ckpt"), opts)  # returns: the failure comes with sync()
    try:
        ckpt.sync()
        error = None
    except Exception as e:
        error = f"{'CheckpointError' if isinstance(e, ck.CheckpointError) else type(e).__name__}: {e}"
    saver._write_tensors = real
    return {"path": path, "mismatched": mismatched, "error": error, "second_exists": os.path.exists(second + ".index"),
            "latest": ck.latest_checkpoint(os.path.join(workdir, "async"))}


def manager(rank, world, workdir, params):
    """CheckpointManager over FSDP2 + AdamW: collective saves with retention, restore_or_initialize."""
    directory = os.path.join(workdir, "manager")
    model = fsdp(make_model())
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    batches = data(STEPS)
    mgr = ck.CheckpointManager(ck.Checkpoint(model=model, optimizer=opt), directory, max_to_keep=1)
    touched = []  # the manager's own writes and deletes (state file, retention, partial files): rank 0 only

    def counting(name):
        real = getattr(mgr._storage, name)

        def call(*args, **kwargs):
            touched.append(name)
            return real(*args, **kwargs)
        return call

    for name in ("write_atomic", "remove", "remove_unchanged"):
        if hasattr(mgr._storage, name):
            setattr(mgr._storage, name, counting(name))
    first = mgr.restore_or_initialize()  # nothing yet: initializes
    train(model, opt, batches[:1])
    paths = [mgr.save()]
    train(model, opt, batches[1:2])
    paths.append(mgr.save())
    latest_after_save = ck.latest_checkpoint(directory)  # rank 0 recorded it before any rank returned
    ref = full_state(model, opt)
    fresh = fsdp(make_model(seed=5))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.05)
    mgr2 = ck.CheckpointManager(ck.Checkpoint(model=fresh, optimizer=fresh_opt), directory, max_to_keep=1)
    restored = mgr2.restore_or_initialize()
    got = full_state(fresh, fresh_opt)
    return {"first": first, "paths": paths, "restored": restored, "kept": sorted(mgr.checkpoints),
            "touched": sorted(set(touched)), "latest_after_save": latest_after_save,
            "mismatched": [k for k in ref if not np.array_equal(ref[k], got[k])],
            "files": sorted(f for f in os.listdir(directory) if f.startswith("ckpt-1"))}


def restore_on_create(rank, world, workdir, params):
    """Restore first, build later: ``Checkpoint().restore(p)`` on every rank before the model and optimizer
    exist, then an FSDP2 model and a fresh AdamW attached (deferred restores of DTensor shards and of the
    optimizer state), and a replicated plain model attached to another restore. Every value equals the
    reference; the collective status assertions pass on every rank. Then one rank's graph differs (an extra
    module on rank 1 only): assert_consumed fails on every rank, naming rank 1."""
    ckpt = ck.Checkpoint()
    status = ckpt.restore(params["path"])
    ckpt.model = model = fsdp(make_model(seed=7))       # the shards each rank holds are read now
    ckpt.optimizer = opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    ref = np.load(os.path.join(workdir, "reference.npz"))
    got = full_state(model, opt)
    mismatched = [k for k in got if not np.array_equal(got[k], ref[k.replace("/", "|")])]
    status.assert_consumed().assert_existing_objects_matched().assert_nontrivial_match()
    losses = train(model, opt, data(STEPS)[2:])

    plain = ck.Checkpoint()
    plain_status = plain.read(params["replicated"])
    plain.model = make_model(seed=11)
    want = make_model()  # what replicated_save saved
    replicated_ok = all(torch.equal(a, b) for a, b in zip(plain.model.parameters(), want.parameters()))
    plain_status.assert_consumed()

    if rank == 1:
        ckpt.extra = torch.nn.Linear(2, 2)  # only here: this rank's graph differs
    try:
        status.assert_consumed()
        differs = None
    except AssertionError as e:
        differs = str(e)
    return {"mismatched": mismatched, "keys": len(got), "losses": losses, "replicated_ok": replicated_ok,
            "differs": differs}


def seq(rank, world, workdir, params):
    """Several scenarios, one after the other, in the same process group (one spawn for all)."""
    out = []
    for name, p in params["steps"]:
        if name == "fsdp_resume" and "path" not in p:
            p = dict(p, path=out[0]["path"])  # the checkpoint of an fsdp_save step run before
        if name == "restore_on_create":  # those of the fsdp_save and replicated_save steps run before
            p = dict(p, path=out[0]["path"], replicated=out[2]["path"])
        out.append(SCENARIOS[name](rank, world, workdir, p))
        with open(os.path.join(workdir, f"result-seq-{rank}.json"), "w") as f:
            json.dump(out, f)  # so far: a rank a later step kills leaves these
    return out


SCENARIOS = {f.__name__: f for f in (fsdp_save, fsdp_resume, replicated_save, dtensor_layouts, failure, async_save,
                                      manager, restore_on_create, seq)}


def main() -> None:
    scenario, rank, world, port, workdir, params = sys.argv[1:7]
    rank, world = int(rank), int(world)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = SCENARIOS[scenario](rank, world, workdir, json.loads(params))
        with open(os.path.join(workdir, f"result-{scenario}-{rank}.json"), "w") as f:
            json.dump(result, f)
        # Every rank leaves together: a rank that tears its gloo pairs (or rank 0's TCP store) down
        # while a peer is still in its last collective makes the peer abort in C++
        # ("terminate called without an active exception"), which is the harness, not the library.
        # A peer a failure scenario killed never arrives: wait a bounded time, then leave anyway.
        try:
            dist.barrier(async_op=True).wait(timedelta(seconds=20))
        except Exception:
            pass
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
