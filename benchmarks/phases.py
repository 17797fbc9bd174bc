"""Where a save or restore spends its main-thread CPU, phase by phase (profile first; not part of ``make bench``).

Wall-clock time on a shared VM moves by 2x between neighbouring runs; main-thread CPU
(``time.thread_time``) moves far less, so this is the figure to compare two trees with: run it in
each tree, alternating, a few processes each, and compare the minima.

* ``--workload list``: bench15's LIST model (1,000 ck.Modules of lists of 20 random-size float32
  arrays, 256 MiB; ``--mib`` changes the size).
* ``--workload flat``: the SWEEP's model (``--arrays`` float32 arrays of equal size, 100,000 by
  default, in ck.Modules of lists of 100; ``--mib`` in all).
* ``--workload torch``: the SWEEP's torch model at ``--params`` parameters (20 per module) with
  Adam after one step (4 tensors per parameter), 64 MiB.

For each phase (opening the index, matching, planning, planning slots, the aliasing check, the
read, handing slots over, recording, the status walk; on the save side the plan and the write)
it prints the minimum and the median over ``--runs`` restores (and saves) in this process, with
the collector paused during the phases as ckptcore pauses it. Restores go into a fresh model
(torch: a fresh model and optimizer each run) and into a warm one.

Example (from the repository root):
    .venv/bin/python -m benchmarks.phases --workload torch --runs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict

_ACC: dict[str, float] = defaultdict(float)


def _wrap(owner, name: str, label: str) -> None:
    fn = getattr(owner, name)

    def timed(*a, **k):
        t = time.thread_time()
        try:
            return fn(*a, **k)
        finally:
            _ACC[label] += time.thread_time() - t

    setattr(owner, name, timed)


def _instrument() -> None:
    from ckptcore import reader
    from ckptcore.restore import session, slots
    from ckptcore.save import plan as save_plan
    from ckptcore.save import write as save_write

    _wrap(reader.CheckpointReader, "__init__", "open")
    _wrap(reader.CheckpointReader, "read_rows", "read")
    _wrap(session.RestoreSession, "_match", "match")
    _wrap(session.RestoreSession, "_plan_values", "plan")
    _wrap(session.RestoreSession, "_commit_matches", "record")
    _wrap(session.RestoreSession, "unmatched_live_paths", "status walk")
    _wrap(session, "plan_slot_reads", "plan slots")
    _wrap(session, "_unalias", "aliasing")
    _wrap(slots.SlotReads, "finish", "hand slots over")
    _wrap(save_plan, "_plan_save", "save: plan")
    _wrap(save_write, "_write_columns", "save: write")


def _models(workload: str, args):
    """(make(fresh_seed) -> (root kwargs), source kwargs)."""
    if workload == "list":
        from benchmarks.bench15 import list_model

        total = args.mib << 20
        return (lambda seed: {"model": list_model(total, fill=False)[0]}), {"model": list_model(total)[0]}
    if workload == "flat":
        from benchmarks.bench15 import _flat_model

        total = args.mib << 20
        return ((lambda seed: {"model": _flat_model(args.arrays, total, fill=False)[0]}),
                {"model": _flat_model(args.arrays, total)[0]})
    import torch

    from benchmarks.bench15 import _torch_flat

    def make(seed: int, step: bool = False):
        model = _torch_flat(args.params, 64 << 20, seed=seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        if step:
            for p in model.parameters():
                p.grad = torch.ones_like(p)
            opt.step()
        return {"model": model, "opt": opt}

    return make, make(0, step=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["list", "flat", "torch"], default="list")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=256, help="LIST's (and FLAT's) total size")
    ap.add_argument("--arrays", type=int, default=100_000, help="FLAT's array count")
    ap.add_argument("--params", type=int, default=20_000, help="the torch model's parameter count")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args(argv)

    import ckptcore as ck

    _instrument()
    make, src = _models(args.workload, args)
    root = tempfile.mkdtemp(prefix="ckptcore-phases-", dir=args.dir)
    results: dict[str, dict[str, list[float]]] = {"save": defaultdict(list), "fresh": defaultdict(list),
                                                   "warm": defaultdict(list)}
    try:
        path = None
        for i in range(args.runs):
            _ACC.clear()
            t = time.thread_time()
            path = ck.Checkpoint(**src).save(os.path.join(root, f"c{i}", "ckpt"))
            _ACC["total"] = time.thread_time() - t
            for k, v in _ACC.items():
                results["save"][k].append(v)
        live = None
        for _ in range(args.runs):
            for kind in ("fresh", "warm"):
                if kind == "fresh":
                    live = None
                    live = make(1)
                _ACC.clear()
                t = time.thread_time()
                ck.Checkpoint(**live).restore(path).assert_consumed()
                _ACC["total"] = time.thread_time() - t
                for k, v in _ACC.items():
                    results[kind][k].append(v)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - no getloadavg
        load = "?"
    print(f"{args.workload}: main-thread CPU per phase, ms (min / median of {args.runs}), load average {load}")
    for kind, phases in results.items():
        print(f"  {kind}:")
        for k, v in sorted(phases.items(), key=lambda kv: kv[0] == "total"):
            print(f"    {k:<16} {min(v) * 1e3:8.1f} / {statistics.median(v) * 1e3:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
