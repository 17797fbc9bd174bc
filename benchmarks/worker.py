"""Run inside a fresh subprocess: ``python -m benchmarks.worker MODE JSON-ARGS``.

Modes: ``timing`` (all methods of one workload, runs interleaved, prints
per-run seconds) and ``memory`` (one method, one operation, prints the peak
extra RSS). The result is the last stdout line, as JSON.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import sys
import threading
import time

import numpy as np

from .methods import METHODS
from .workloads import build_model, flat_dict, spec


def _clear(d: str) -> None:
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)


def _check_equal(src_model, loaded, method: str, inst) -> None:
    """Fail loudly if a method did not round-trip the data (first and last array)."""
    flat = flat_dict(src_model)
    first, last = next(iter(flat)), next(reversed(flat))
    src = [flat[first], flat[last]]
    if method == "raw":
        got = [loaded[: src[0].nbytes].view(np.float32), loaded[-src[-1].nbytes:].view(np.float32)]
    elif method == "raw-arrays":
        got = [loaded[0], loaded[-1]]
    elif method == "ckptcore":
        dst = flat_dict(inst.dest)
        got = [dst[first], dst[last]]
    else:
        got = [np.asarray(loaded[first]), np.asarray(loaded[last])]
    if not (np.array_equal(got[0], src[0]) and np.array_equal(got[1], src[-1])):
        raise SystemExit(f"{method}: loaded data differs from what was saved")


def timing(args: dict) -> dict:
    s = spec(args["workload"], args.get("quick", False))
    model = build_model(s)
    root = args["dir"]
    methods = args["methods"]
    inst = {}
    for name in methods:
        m = METHODS[name]()
        m.prepare_save(model)
        m.prepare_load(s)
        inst[name] = m
    out: dict = {"workload": s.name, "nbytes": s.nbytes, "arrays": s.arrays, "save": {}, "load": {}, "paths": {}}
    for r in range(args["runs"]):
        for name in methods:
            m = inst[name]
            d = os.path.join(root, s.name, name)
            _clear(d)
            gc.collect()
            t0 = time.perf_counter()
            path = m.save(d)
            t1 = time.perf_counter()
            loaded = m.load(path)
            t2 = time.perf_counter()
            if r == 0:
                _check_equal(model, loaded, name, m)
            del loaded
            out["save"].setdefault(name, []).append(t1 - t0)
            out["load"].setdefault(name, []).append(t2 - t1)
            out["paths"][name] = path
        if args.get("async") and "ckptcore" in inst:
            ck = inst["ckptcore"]
            d = os.path.join(root, s.name, "ckptcore-async")
            _clear(d)
            gc.collect()
            arrays = list(flat_dict(model).values())
            t0 = time.perf_counter()
            copies = [a.copy() for a in arrays]
            t1 = time.perf_counter()
            del copies
            gc.collect()
            t2 = time.perf_counter()
            _, sync = ck.save_async(d)
            t3 = time.perf_counter()
            sync()
            gc.collect()
            t4 = time.perf_counter()  # the copy again, after the save: the baseline is the faster of the two
            copies = [a.copy() for a in arrays]
            t5 = time.perf_counter()
            del copies
            out.setdefault("memcpy", []).append(min(t1 - t0, t5 - t4))
            out.setdefault("async_block", []).append(t3 - t2)
    return out


class _Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            rss = self._proc.memory_info().rss
            if rss > self.peak:
                self.peak = rss
            self._done.wait(0.001)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory(args: dict) -> dict:
    """Peak RSS above the level just before the operation (data already resident)."""
    import psutil

    s = spec(args["workload"], args.get("quick", False))
    m = METHODS[args["method"]]()
    d = os.path.join(args["dir"], s.name, "mem-" + m.name)
    if args["op"] == "save":
        model = build_model(s)
        m.prepare_save(model)
        _clear(d)
        op = lambda: m.save(d)  # noqa: E731
    else:
        path = args["path"]
        m.prepare_load(s)
        op = lambda: m.load(path)  # noqa: E731
    gc.collect()
    base = psutil.Process().memory_info().rss
    hw_before = _maxrss()
    sampler = _Sampler()
    sampler.peak = base
    sampler.start()
    result = op()
    peak = sampler.stop()
    hw_after = _maxrss()
    if hw_after > hw_before:
        peak = max(peak, hw_after)
    del result
    return {"workload": s.name, "method": m.name, "op": args["op"], "data": s.nbytes, "extra": max(0, peak - base)}


def main(argv: list[str]) -> None:
    mode, raw = argv
    args = json.loads(raw)
    res = {"timing": timing, "memory": memory}[mode](args)
    sys.stdout.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
