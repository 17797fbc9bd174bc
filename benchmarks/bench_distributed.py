"""ckptcore vs ``torch.distributed.checkpoint`` (DCP) on a sharded state, 2 and 4 processes, in one run.

The state: ``--mb`` MiB of float32 in ``--tensors`` DTensors, ``Shard(0)`` over a 1-D mesh of
all ranks (what FSDP2 gives). Each world (gloo on 127.0.0.1, spawned here) measures, for
ckptcore (``ck.Checkpoint(**state).write`` / ``read``) and DCP (``dcp.save`` / ``dcp.load`` of
the same state dict), interleaved, ``--runs`` times:

* save: every rank's bytes written and fsynced (both fsync: DCP's ``FileSystemWriter`` by
  default, ckptcore's local storage always), barrier to barrier;
* load: into the same layout (page cache warm: the files were just written);
* resharded load: into ``Shard(1)`` DTensors (each rank reads the overlapping bytes only).

Times are the slowest rank's, medians of the runs, with the range. Run:
``.venv/bin/python -m benchmarks.bench_distributed [--mb 1024] [--worlds 2,4] [--runs 3]``
(``make bench`` runs it with ``--mb 1024 --runs 3``; ``--quick``: 256 MiB, 2 runs).

Example:
    >>> from benchmarks import bench_distributed
    >>> callable(bench_distributed.main)
    True
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: dict) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    import ckptcore as ck

    mesh = init_device_mesh("cpu", (world,))
    n = args["tensors"]
    rows = max(world * 4, int(args["mb"] * (1 << 20) / 4 / n / 1024))
    g = torch.Generator().manual_seed(0)
    full = [torch.randn(rows, 1024, generator=g) for _ in range(n)]

    def state(dim, zeros=False):
        return {f"t{i}": distribute_tensor(torch.zeros_like(t) if zeros else t, mesh, [Shard(dim)])
                for i, t in enumerate(full)}

    src = state(0)
    root = args["dir"]
    timings: dict[str, list[float]] = {}

    def timed(name, fn):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        dist.barrier()
        dt = time.perf_counter() - t0
        worst = [torch.tensor([dt])]
        out = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(out, worst[0])
        timings.setdefault(name, []).append(max(float(x) for x in out))

    for run in range(args["runs"]):
        ck_path = os.path.join(root, f"ck-{world}-{run}", "ckpt")
        dcp_path = os.path.join(root, f"dcp-{world}-{run}")
        timed("ckptcore save", lambda: ck.Checkpoint(**src).write(ck_path))
        timed("DCP save", lambda: dcp.save(src, checkpoint_id=dcp_path))
        dst = state(0, zeros=True)
        timed("ckptcore load", lambda: ck.Checkpoint(**dst).read(ck_path))
        dst = state(0, zeros=True)
        timed("DCP load", lambda: dcp.load(dst, checkpoint_id=dcp_path))
        dst = state(1, zeros=True)
        timed("ckptcore resharded load", lambda: ck.Checkpoint(**dst).read(ck_path))
        ok = all(torch.equal(dst[k].full_tensor(), full[i]) for i, k in enumerate(dst)) if run == 0 else True
        dst = state(1, zeros=True)
        timed("DCP resharded load", lambda: dcp.load(dst, checkpoint_id=dcp_path))
        dist.barrier()
        if rank == 0:
            shutil.rmtree(os.path.dirname(ck_path), ignore_errors=True)
            shutil.rmtree(dcp_path, ignore_errors=True)
        if not ok:
            raise SystemExit("ckptcore resharded load gave wrong values")
    if rank == 0:
        nbytes = sum(t.numel() * t.element_size() for t in full)
        print(json.dumps({"world": world, "nbytes": nbytes, "timings": timings}), flush=True)
    dist.destroy_process_group()


def _run_world(world: int, args: dict, timeout: float) -> dict:
    port = _free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.bench_distributed", "--worker", str(r), str(world),
                               str(port), json.dumps(args)], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(world)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise SystemExit(f"distributed benchmark at world {world} did not finish within {timeout} s") from None
    for p, (_out, err) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"distributed benchmark worker failed:\n{err[-4000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_distributed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=1024, help="total state size in MiB (default 1024)")
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--worlds", default="2,4")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="256 MiB, 2 runs")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--worker", nargs=4, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        rank, world, port, args = a.worker
        _worker(int(rank), int(world), int(port), json.loads(args))
        return 0
    mb, runs = (256, 2) if a.quick else (a.mb, a.runs)
    root = a.dir or tempfile.mkdtemp(prefix="ckptcore-bench-dist-")
    load = os.getloadavg()
    print(f"\nckptcore vs torch.distributed.checkpoint: {mb} MiB of Shard(0) DTensors ({a.tensors} tensors), "
          f"gloo on 127.0.0.1, {runs} runs, medians [min-max] of the slowest rank; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    rows = [["world", "step", "ckptcore s", "DCP s", "ckptcore/DCP"]]
    try:
        for world in [int(w) for w in a.worlds.split(",") if w]:
            res = _run_world(world, {"mb": mb, "tensors": a.tensors, "runs": runs, "dir": root}, timeout=900)
            t = res["timings"]
            for step in ("save", "load", "resharded load"):
                c, d = t[f"ckptcore {step}"], t[f"DCP {step}"]
                mc, md = statistics.median(c), statistics.median(d)
                rows.append([str(world), step, f"{mc:.3f} [{min(c):.3f}-{max(c):.3f}]",
                             f"{md:.3f} [{min(d):.3f}-{max(d):.3f}]", f"{mc / md:.2f}"])
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines), flush=True)
    print("(ratio below 1: ckptcore faster)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
