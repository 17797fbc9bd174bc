"""``python -m benchmarks`` (``make bench``): ckptcore against raw I/O and competitors.

Prints, each a ratio to "raw" measured in the same run (medians of ``--runs``):

* W1/W2 save+fsync and load for ckptcore, safetensors, torch, np.savez, pickle;
* peak extra memory per save/load, each in a fresh subprocess;
* async save: how long ``save()`` blocks vs a copy of the state;
* ``import ckptcore`` time, in a fresh interpreter;
* per-object overhead: 1x, 4x, 16x the number of arrays at a fixed total size;
* issue 15's workloads (``benchmarks/bench15.py``): LIST (lists of random-size arrays), GPT2 (a
  GPT-2-small-shaped torch model + AdamW against torch.save/load and DCP), SWEEP (1k to 100k arrays,
  1M with ``--sweep-max 1000000``, and a torch model with Adam);
* multi-worker: a sharded 1 GiB state saved/loaded/resharded by 2 and 4 processes against
  ``torch.distributed.checkpoint`` (``benchmarks/bench_distributed.py``).

The page cache is warm for loads (the file was just written and fsynced), as
in issue 6's table. Options: ``--quick`` (2 runs, smaller W1/W2), ``--only W1``,
``--runs N``, ``--dir DIR``, ``--skip memory,import,objects,async,distributed``,
``--json FILE``, ``--s3`` (also run ``benchmarks/bench_s3.py`` if present).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from .methods import available
from .workloads import MiB, spec

TARGETS = {"W1 save+fsync": 1.1, "W1 load": 1.1, "W2 save+fsync": 1.5, "W2 load": 1.5}


def _run_worker(mode: str, args: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.worker", mode, json.dumps(args)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark worker failed ({mode} {args}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _med(xs) -> float:
    return statistics.median(xs)


def _fmt_ratio(x: float, raw: float) -> str:
    return f"{x / raw:.2f}x"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


HEAVY_IMPORTS = ("torch", "s3fs", "gcsfs", "keras", "tensorflow", "ml_dtypes", "typer", "rich")


def _fresh_venv(root: str) -> str | None:
    """A new, empty venv that sees this one's installed packages (one ``.pth`` line): its interpreter, or None.

    ``import ckptcore`` there runs the start-up a user of a fresh install gets (site set-up of a new
    environment, today's installed versions) without downloading anything.
    """
    import site
    import sysconfig

    target = os.path.join(root, "fresh-venv")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", target], check=True, capture_output=True)
        purelib = subprocess.run([os.path.join(target, "bin", "python"), "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    ours = [sysconfig.get_paths()["purelib"]] + [d for d in site.getsitepackages() if "site-packages" in d]
    with open(os.path.join(purelib, "ckptcore_bench_parent.pth"), "w") as f:
        f.write("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dict.fromkeys(ours)) + "\n")
    return os.path.join(target, "bin", "python")


def _import_time(n: int, root: str | None = None) -> tuple[float, str]:
    """Median wall time of ``import ckptcore`` in a fresh interpreter (of a fresh venv where one can be made)."""
    code = ("import time, sys; t = time.perf_counter(); import ckptcore; d = time.perf_counter() - t; "
            f"bad = [m for m in {HEAVY_IMPORTS!r} if m in sys.modules]; "
            "print(d if not bad else 'imported: ' + ', '.join(bad))")
    python = (_fresh_venv(root) if root else None) or sys.executable
    where = "fresh interpreter of a fresh venv" if python != sys.executable else "fresh interpreter"
    times = []
    cwd = tempfile.gettempdir()  # not the source tree: the installed package, as a user imports it
    # pip compiles a package's .pyc files when it installs it, so a user's import never compiles
    # ckptcore's sources: with PYTHONDONTWRITEBYTECODE set (CI, some shells) every import would
    # compile ~40 modules (~50 ms). One discarded import writes the .pyc files first.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([python, "-c", "import ckptcore"], capture_output=True, check=True, cwd=cwd, env=env)
    for _ in range(n):
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd=cwd,
                             env=env).stdout.strip()
        if out.startswith("imported"):
            raise SystemExit(f"import ckptcore {out} (these must load lazily)")
        times.append(float(out))
    return _med(times), where


def _fs_of(path: str) -> str:
    """``device fstype`` of the mount holding ``path`` (Linux), for the record."""
    best = ("?", "?", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if os.path.realpath(path).startswith(mnt) and len(mnt) >= len(best[2]):
                    best = (dev, fstype, mnt)
    except OSError:
        pass
    return f"{best[0]} ({best[1]})"


def _machine(root: str) -> str:
    import platform

    import numpy as np
    import psutil

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{platform.platform()}; {os.cpu_count()} CPUs; {psutil.virtual_memory().total / (1 << 30):.0f} GiB RAM; "
            f"disk {_fs_of(root)}; Python {platform.python_version()}; numpy {np.__version__}; load average {load}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 runs, W1 256 MiB, W2 64 MiB (array counts unchanged)")
    ap.add_argument("--only", default="W1,W2,LIST,GPT2,SWEEP,OPEN,ASYNC",
                    help="comma-separated workloads: W1, W2 (issue 6), LIST, GPT2, SWEEP, OPEN, ASYNC (issue 15: "
                         "bench15.py)")
    ap.add_argument("--sweep-max", type=int, default=100_000,
                    help="largest array count of the SWEEP (1000000 for the issue's top end: minutes)")
    ap.add_argument("--runs", type=int, default=None, help="runs per measurement (default 5, quick 2)")
    ap.add_argument("--methods", default=None, help="comma-separated subset of: " + ", ".join(available()))
    ap.add_argument("--skip", default="", help="comma-separated: memory, async, import, objects, distributed")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir, removed afterwards)")
    ap.add_argument("--json", default=None, help="also write all results to this file")
    ap.add_argument("--s3", action="store_true", help="also run benchmarks/bench_s3.py (S3 via a local server)")
    a = ap.parse_args(argv)
    runs = a.runs or (2 if a.quick else 5)
    skip = {s for s in a.skip.split(",") if s}
    methods = [m for m in (a.methods.split(",") if a.methods else available()) if m in available()]
    for must in ("ckptcore", "raw"):
        if must not in methods:
            methods.insert(0, must)
    methods = ["raw"] + [m for m in methods if m != "raw"]
    only = [w.strip().upper() for w in a.only.split(",") if w.strip()]
    workloads = [w for w in only if w in ("W1", "W2")]
    issue15 = [w for w in only if w in ("LIST", "GPT2", "SWEEP", "OPEN", "ASYNC")]
    root = a.dir or tempfile.mkdtemp(prefix="ckptcore-bench-")
    os.makedirs(root, exist_ok=True)
    results: dict = {"runs": runs, "quick": a.quick, "methods": methods, "timing": {}, "memory": [], "objects": []}
    try:
        _bench(a, runs, skip, methods, workloads, root, results)
        if issue15:
            from . import bench15

            print("\nIssue 15 workloads (benchmarks/bench15.py)", flush=True)
            results["issue15"] = bench15.main(
                (["--quick"] if a.quick else []) + ["--only", ",".join(issue15), "--sweep-max", str(a.sweep_max),
                                                    "--dir", os.path.join(root, "issue15")]
                + (["--runs", str(a.runs)] if a.runs else []))
            results["machine_after"] = _machine(root)
            print("\n  after: " + results["machine_after"].split("; ")[-1])
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    if "distributed" not in skip:  # the sharded 1 GiB state on 2 and 4 processes, against DCP
        try:
            import torch.distributed  # noqa: F401
        except ImportError as e:
            print(f"\ndistributed benchmark skipped: torch.distributed is not available ({e})")
        else:
            from . import bench_distributed

            bench_distributed.main(["--quick"] if a.quick else [])
    if a.s3:
        try:
            from . import bench_s3
        except ImportError as e:
            print(f"\n--s3: benchmarks/bench_s3.py is not available ({e})")
        else:
            bench_s3.main(["--large-mb", "64", "--small", "500", "--repeat", "2"] if a.quick else [])
    failed = (results.get("issue15") or {}).get("failed")
    if failed:   # every other workload ran; the run still says it was not complete
        print(f"\nissue 15 workloads that failed: {', '.join(failed)}")
        return 1
    return 0


def _bench(a, runs, skip, methods, workloads, root, results) -> None:
    if not workloads:  # only issue 15's workloads: the import time still belongs to the run
        if "import" not in skip:
            t, where = _import_time(7 if not a.quick else 3, root)
            results["import_s"] = t
            print(f"import ckptcore: {t * 1000:.0f} ms (median, {where}; target <= 150 ms)")
        return
    print(f"ckptcore benchmarks: {runs} runs each, medians; warm page cache; writing under {root}", flush=True)
    results["machine_before"] = _machine(root)
    print("  machine: " + results["machine_before"], flush=True)
    # 1. time every method on each workload, runs interleaved across methods
    for w in workloads:
        print(f"  timing {w} ...", flush=True)
        results["timing"][w] = _run_worker("timing", {"workload": w, "quick": a.quick, "runs": runs, "dir": root,
                                                       "methods": methods, "async": "async" not in skip})
    rows = [["workload", "raw"] + methods[1:]]
    for w, res in results["timing"].items():
        s = spec(w, a.quick)
        label = f"{s.nbytes / MiB:.0f} MiB in {s.arrays} arrays"
        for op, opname in (("save", "save+fsync"), ("load", "load")):
            raw = _med(res[op]["raw"])
            target = TARGETS.get(f"{w} {opname}")
            row = [f"{w} {opname} ({label})", f"{raw:.3f} s"]
            for m in methods[1:]:
                cell = _fmt_ratio(_med(res[op][m]), raw)
                if m == "ckptcore" and target:
                    cell += " ok" if _med(res[op][m]) / raw <= target else f" (target {target}x)"
                row.append(cell)
            rows.append(row)
    print("\nTime, ratio to raw (lower is better); ckptcore load = restore into existing arrays\n")
    print(_table(rows))
    if "raw-arrays" in methods and "ckptcore" in methods:
        print("\nckptcore load against raw-arrays (preadv straight into the model's own arrays): " + ", ".join(
            f"{w} {_med(res['load']['ckptcore']) / _med(res['load']['raw-arrays']):.2f}x"
            for w, res in results["timing"].items()))
    # 2. async save
    if "async" not in skip:
        rows = [["workload", "memcpy of the state", "async save() blocks", "ratio (target <= 1.5x)"]]
        for w, res in results["timing"].items():
            mc, blk = _med(res["memcpy"]), _med(res["async_block"])
            rows.append([w, f"{mc:.3f} s", f"{blk:.3f} s", f"{blk / mc:.2f}x"])
        print("\nAsync save: time save(enable_async=True) blocks the caller vs copying every array\n")
        print(_table(rows))
    # 3. peak memory, each operation in a fresh process
    if "memory" not in skip:
        print("\n  measuring peak memory ...", flush=True)
        rows = [["workload / op"] + methods]
        for w, res in results["timing"].items():
            for op in ("save", "load"):
                row = [f"{w} {op}"]
                for m in methods:
                    r = _run_worker("memory", {"workload": w, "quick": a.quick, "method": m, "op": op, "dir": root,
                                               "path": res["paths"][m]})
                    results["memory"].append(r)
                    row.append(f"{r['extra'] / MiB:.0f}")
                rows.append(row)
        print("\nPeak extra memory (MiB of RSS above the level before the call; loads include the arrays they "
              "return,\nckptcore and raw load into existing memory). Data: "
              + ", ".join(f"{w} {res['nbytes'] / MiB:.0f} MiB" for w, res in results["timing"].items()) + "\n")
        print(_table(rows))
    # 4. import time
    if "import" not in skip:
        t, where = _import_time(7 if not a.quick else 3, root)
        results["import_s"] = t
        print(f"\nimport ckptcore: {t * 1000:.0f} ms (median of {7 if not a.quick else 3}, {where}; target <= 150 ms; "
              f"none of {', '.join(HEAVY_IMPORTS)} imported)")
    # 5. per-object overhead at fixed total size
    if "objects" not in skip:
        mib = 16 if a.quick else 64
        counts = (250, 1000, 4000) if a.quick else (1000, 4000, 16000)
        print(f"\n  per-object overhead sweep ({mib} MiB) ...", flush=True)
        rows = [["arrays", "raw save", "ckptcore save", "save us/array", "raw load", "ckptcore restore",
                 "restore us/array"]]
        for n in counts:
            res = _run_worker("timing", {"workload": f"objects-{n}-{mib}", "runs": runs, "dir": root,
                                         "methods": ["raw", "ckptcore"]})
            rs, cs = _med(res["save"]["raw"]), _med(res["save"]["ckptcore"])
            rl, cl = _med(res["load"]["raw"]), _med(res["load"]["ckptcore"])
            results["objects"].append({"arrays": n, "raw_save": rs, "ck_save": cs, "raw_load": rl, "ck_load": cl})
            rows.append([str(n), f"{rs:.3f} s", f"{cs:.3f} s", f"{(cs - rs) / n * 1e6:.1f}",
                         f"{rl:.3f} s", f"{cl:.3f} s", f"{(cl - rl) / n * 1e6:.1f}"])
        print(f"\nPer-object overhead: {mib} MiB total in 1x/4x/16x arrays; us/array = (ckptcore - raw) / arrays "
              "(flat = constant)\n")
        print(_table(rows))
    results["machine_after"] = _machine(root)
    print("\n  after: " + results["machine_after"].split("; ")[-1])


if __name__ == "__main__":
    sys.exit(main())
