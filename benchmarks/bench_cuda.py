"""ckptcore vs torch.save/torch.load for a model that lives on a CUDA device, in one run.

Workloads (each a ``torch.nn.Sequential`` of ``Linear`` layers in float32 on ``cuda``):

* ``large``: ``--large-mb`` MiB in ``--large-tensors`` weight matrices.
* ``many``: ``--many-mb`` MiB in ``--many-tensors`` small weight matrices.

Figures, each the median of ``--runs`` runs, ratio to torch in the same run:

* save: ``ck.Checkpoint(model=m).write(prefix)`` against ``torch.save(m.state_dict(), f)``
  plus ``fsync`` (ckptcore fsyncs every file it writes).
* restore: ``ck.Checkpoint(model=m).read(path)`` into the live GPU parameters against
  ``m.load_state_dict(torch.load(f, map_location="cuda", weights_only=True))``.
* copy: ``[p.cpu() for p in m.parameters()]``, the device-to-host copy that both pay.

Needs a CUDA device: ``python -m benchmarks.bench_cuda`` (not part of ``make bench``).

Example:
    >>> from benchmarks import bench_cuda
    >>> callable(bench_cuda.main)
    True
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def _model(torch, total_mb: int, tensors: int):
    per = total_mb * 2**20 // 4 // tensors
    side = max(1, int(per ** 0.5))
    layers = [torch.nn.Linear(side, side, bias=False) for _ in range(tensors)]
    return torch.nn.Sequential(*layers).to("cuda")


def _timed(torch, fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    import torch

    import ckptcore as ck

    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_cuda", description=__doc__.split("\n\n")[0])
    ap.add_argument("--large-mb", type=int, default=1024)
    ap.add_argument("--large-tensors", type=int, default=16)
    ap.add_argument("--many-mb", type=int, default=256)
    ap.add_argument("--many-tensors", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where the files go (default: a temporary directory)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    root = a.dir or tempfile.mkdtemp(prefix="ckpt-cuda-bench-")
    rows = []
    for name, mb, n in (("large", a.large_mb, a.large_tensors), ("many", a.many_mb, a.many_tensors)):
        src = _model(torch, mb, n)
        dst = _model(torch, mb, n)
        nbytes = sum(p.numel() * p.element_size() for p in src.parameters())
        times = {k: [] for k in ("torch save", "ckptcore save", "torch restore", "ckptcore restore", "copy")}
        for r in range(a.runs):
            tp = os.path.join(root, f"{name}-{r}.pt")
            cp = os.path.join(root, f"{name}-{r}")

            def tsave():
                with open(tp, "wb") as f:
                    torch.save(src.state_dict(), f)
                    f.flush()
                    os.fsync(f.fileno())

            times["torch save"].append(_timed(torch, tsave))
            path = None

            def csave():
                nonlocal path
                path = ck.Checkpoint(model=src).write(cp)

            times["ckptcore save"].append(_timed(torch, csave))
            times["torch restore"].append(_timed(torch, lambda: dst.load_state_dict(
                torch.load(tp, map_location="cuda", weights_only=True))))
            times["ckptcore restore"].append(_timed(torch, lambda: ck.Checkpoint(model=dst).read(path)))
            times["copy"].append(_timed(torch, lambda: [p.cpu() for p in src.parameters()]))
            for p, q in zip(src.parameters(), dst.parameters()):
                if not torch.equal(p, q):
                    raise SystemExit(f"{name}: restored parameters differ")
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((f"{name}: {nbytes / 2**20:.0f} MiB in {n} tensors", med))
    print(f"files in {root}; median of {a.runs} runs, seconds (ratio to torch)")
    for label, med in rows:
        print(f"  {label}")
        print(f"    save    torch {med['torch save']:.3f}  ckptcore {med['ckptcore save']:.3f}"
              f" ({med['ckptcore save'] / med['torch save']:.2f}x)")
        print(f"    restore torch {med['torch restore']:.3f}  ckptcore {med['ckptcore restore']:.3f}"
              f" ({med['ckptcore restore'] / med['torch restore']:.2f}x)")
        print(f"    device-to-host copy of all parameters {med['copy']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
