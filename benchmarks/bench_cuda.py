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
* pinned (issue 15): with ``CheckpointOptions(pinned_memory_bytes=--pinned-mb MiB)``, the time
  an async save blocks against the device-to-host copy of the same tensors into pinned memory
  (target <= 1.2x), and a restore against the host-to-device copy from pinned memory (target:
  >= 80% of that bandwidth, i.e. <= 1.25x the time).

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
    ap.add_argument("--pinned-mb", type=int, default=2048, help="pinned_memory_bytes of the pinned runs, MiB")
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
        times = {k: [] for k in ("torch save", "ckptcore save", "torch restore", "ckptcore restore", "copy",
                                 "pinned d2h", "pinned h2d", "async blocks (pinned)", "restore (pinned)")}
        pinned_opts = ck.CheckpointOptions(pinned_memory_bytes=a.pinned_mb << 20)
        host = [torch.empty(p.shape, dtype=p.dtype, pin_memory=True) for p in src.parameters()]
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
            times["pinned d2h"].append(_timed(torch, lambda: [h.copy_(p) for h, p in zip(host, src.parameters())]))
            times["pinned h2d"].append(_timed(torch, lambda: [p.data.copy_(h) for h, p in zip(host, dst.parameters())]))
            ckpt = ck.Checkpoint(model=src)
            times["async blocks (pinned)"].append(_timed(torch, lambda: ckpt.write(
                cp + "-async", options=ck.CheckpointOptions(
                enable_async=True, pinned_memory_bytes=a.pinned_mb << 20))))
            ckpt.sync()
            times["restore (pinned)"].append(_timed(torch, lambda: ck.Checkpoint(model=dst).read(
                cp + "-async", options=pinned_opts)))
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
        print(f"    pinned: async save blocks {med['async blocks (pinned)']:.3f} vs device-to-pinned copy "
              f"{med['pinned d2h']:.3f} ({med['async blocks (pinned)'] / med['pinned d2h']:.2f}x, target <= 1.2x)")
        print(f"    pinned: restore {med['restore (pinned)']:.3f} vs pinned-to-device copy {med['pinned h2d']:.3f} "
              f"({med['pinned h2d'] / med['restore (pinned)'] * 100:.0f}% of its bandwidth, target >= 80%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
