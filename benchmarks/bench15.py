"""The workloads of issue 15: real model shapes, many objects, start-up (part of ``make bench``).

* **LIST**: 1,000 ``ck.Module``s each holding a list of 20 float32 arrays of random sizes (256 MiB;
  64 MiB with ``--quick``): restore + ``assert_consumed()`` vs ``readinto`` of each array from one
  file, ``assert_consumed()`` alone, save + fsync vs ``os.writev`` + fsync.
* **GPT2**: a GPT-2-small-shaped torch model (124 M parameters, 148 tensors) with AdamW state (444
  slot tensors), 1.4 GiB: save, restore into a fresh and into a warm model + optimizer, async save
  blocking, peak RSS, vs raw (``writev``/``readinto`` of the same tensors; for the fresh restore also
  ``readinto`` with the optimizer state allocated as it is read, the floor of any fresh restore),
  ``torch.save`` / ``torch.load`` + ``load_state_dict`` and ``torch.distributed.checkpoint`` in one process.
  ``--quick`` uses a quarter of the width.
* **SWEEP**: the same total size (64 MiB) in 1k, 10k, 100k arrays (1M with ``--sweep-max 1000000``):
  per-object save, restore and ``assert_consumed()`` cost; ``ck.load_checkpoint`` time and bytes
  read at the top end; bytes read by a restore of 1% of the objects. Also a torch model (20
  parameters per module) with Adam, from 1k to 20k parameters (``--sweep-max`` raises it too).

* **OPEN**: one checkpoint of ``--open-n`` (1,000,000) float32 arrays, 64 MiB: ``ck.load_checkpoint``
  time (median of 5) and the bytes it reads against the index size (target < 1 s, little more than
  the index); bytes a restore of 1% of the objects reads against the bytes restored.
* **ASYNC**: the GPT2 model + AdamW saved with ``enable_async=True`` three times in a row in one
  process (the first snapshot faults fresh memory in; later ones reuse it), against DCP's
  ``async_save`` three times in a row in another process: how long each call blocks.

Every timing is a median of ``--runs`` in one process; each peak-RSS figure is one operation in a
fresh process. Run alone: ``python -m benchmarks.bench15 [--quick] [--only LIST,GPT2,SWEEP]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

MiB = 1 << 20
med = statistics.median


# -- helpers -------------------------------------------------------------------------------------
def _rchar() -> int:
    """Bytes this process has read through system calls so far (Linux), or -1."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raw_save(path: str, arrays: list) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(0, len(arrays), 1024):
            os.writev(fd, arrays[i:i + 1024])
        os.fsync(fd)
    finally:
        os.close(fd)


def _raw_readinto(path: str, arrays: list) -> None:
    with open(path, "rb", buffering=0) as f:
        for a in arrays:
            f.readinto(a)


def _settle() -> None:
    """Collect garbage outside the timing, before each timed step.

    A collection that the previous step's objects set off would otherwise land in whichever step
    comes next (a torch model + optimizer of 80,000 tensors: ~160 ms per full collection, as long
    as a raw save). Each step starts with nothing of the others' left to collect; what it makes
    itself, and the collections that sets off, stay in its own figure. (``make bench``'s W1/W2
    worker collects before each step likewise.)
    """
    gc.collect()


def _clear(path: str) -> None:
    """Delete a method's previous output, outside the timing, before its next save.

    Every method is treated alike: on this VM's disk a file written into blocks freed a moment
    ago takes 0.13 s for 256 MiB and one written into other free space 0.6 s (raw ``writev``
    alike), so a baseline that reuses its blocks against a save that does not compares disks.
    """
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


class _Peak(threading.Thread):
    """Samples RSS every millisecond; ``stop()`` returns the peak above the RSS at start."""

    def __init__(self):
        super().__init__(daemon=True)
        import psutil

        self._p = psutil.Process()
        self.base = self.peak = self._p.memory_info().rss
        self._done = threading.Event()
        self.start()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, self._p.memory_info().rss)
            self._done.wait(0.001)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(0, self.peak - self.base)


# -- LIST ----------------------------------------------------------------------------------------
def list_model(total: int, modules: int = 1000, per: int = 20, seed: int = 0, fill: bool = True):
    """``(root, arrays)``: ``modules`` ck.Modules under ``root.blocks``, each ``.xs`` a list of ``per`` arrays."""
    import ckptcore as ck

    rng = np.random.default_rng(seed)
    w = rng.random(modules * per) + 0.05
    sizes = np.maximum(1, (w / w.sum() * total / 4).astype(np.int64)).tolist()
    root, arrays = ck.Module(), []
    root.blocks = []
    for i in range(modules):
        m = ck.Module()
        xs = [np.full(n, k, np.float32) if fill else np.zeros(n, np.float32)
              for k, n in enumerate(sizes[i * per:(i + 1) * per], i * per)]
        arrays += xs
        m.xs = xs
        root.blocks.append(m)
    return root, arrays


def bench_list(root_dir: str, runs: int, total: int) -> dict:
    import ckptcore as ck

    src, arrays = list_model(total)
    dst, dst_arrays = list_model(total, fill=False)
    out: dict = {"arrays": len(arrays), "nbytes": sum(a.nbytes for a in arrays)}
    raw_path, ck_dir = os.path.join(root_dir, "list-raw"), os.path.join(root_dir, "list-ck")
    for _ in range(runs):  # interleaved; each method's last output is deleted before its next save
        _clear(raw_path)
        _settle()
        t = time.perf_counter()
        _raw_save(raw_path, arrays)
        out.setdefault("raw_save", []).append(time.perf_counter() - t)
        _clear(ck_dir)
        _settle()
        t = time.perf_counter()
        path = ck.Checkpoint(model=src).save(os.path.join(ck_dir, "c"))
        out.setdefault("ck_save", []).append(time.perf_counter() - t)
    for _ in range(runs):
        _settle()
        t = time.perf_counter()
        _raw_readinto(raw_path, dst_arrays)
        out.setdefault("raw_load", []).append(time.perf_counter() - t)
        _settle()
        t = time.perf_counter()
        status = ck.Checkpoint(model=dst).restore(path)
        t1 = time.perf_counter()
        status.assert_consumed()
        t2 = time.perf_counter()
        out.setdefault("ck_restore", []).append(t1 - t)
        out.setdefault("ck_restore_assert", []).append(t2 - t)
        out.setdefault("ck_assert", []).append(t2 - t1)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, dst_arrays))
    return out


# -- GPT2 ----------------------------------------------------------------------------------------
def gpt2(width: int = 768, layers: int = 12, vocab: int = 50257, ctx: int = 1024, seed: int = 0):
    """A GPT-2-small-shaped module tree (parameters only; no forward pass is needed here)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.attn = nn.Module()
            self.attn.c_attn, self.attn.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.mlp = nn.Module()
            self.mlp.c_fc, self.mlp.c_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    m = nn.Module()
    m.wte, m.wpe = nn.Embedding(vocab, width), nn.Embedding(ctx, width)
    m.h = nn.ModuleList(Block() for _ in range(layers))
    m.ln_f = nn.LayerNorm(width)
    return m


def gpt2_with_adamw(width: int, stepped: bool = True, seed: int = 0):
    import torch

    # width 8: the tiny model each worker warms up with (one-time costs: imports, plugin discovery)
    model = gpt2(width=width, seed=seed) if width > 8 else gpt2(width=8, layers=2, vocab=16, ctx=4, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if stepped:
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e-3)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, opt


def _tensors(model, opt) -> list:
    out = [p.detach() for p in model.parameters()]
    for p in model.parameters():
        out += [t for t in opt.state[p].values() if hasattr(t, "numpy")]
    return out


def _gpt2_op(method: str, op: str, path: str, width: int, fresh: bool = True):
    """The callable for one (method, op); builds what it needs outside the timing."""
    import torch

    import ckptcore as ck

    if op == "save":
        model, opt = gpt2_with_adamw(width)
        if method == "raw":
            arrays = [t.numpy() for t in _tensors(model, opt)]
            return lambda: _raw_save(path, arrays)
        if method == "ckptcore":
            return lambda: ck.Checkpoint(model=model, opt=opt).write(path)
        if method == "ckptcore-async":
            def run():
                ckpt = ck.Checkpoint(model=model, opt=opt)
                _settle()
                t = time.perf_counter()
                ckpt.write(path, options=ck.CheckpointOptions(enable_async=True))
                blocked = time.perf_counter() - t
                ckpt.sync()
                return blocked
            return run
        if method == "torch":
            def run():
                with open(path, "wb") as f:
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, f)
                    f.flush()
                    os.fsync(f.fileno())
            return run
        if method in ("dcp", "dcp-async"):
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            def run():
                msd, osd = get_state_dict(model, opt)  # fully qualified names, as dcp.load needs them
                sd = {"model": msd, "opt": osd}
                if method == "dcp":
                    dcp.save(sd, checkpoint_id=path)
                    return None
                _settle()
                t = time.perf_counter()
                fut = dcp.async_save(sd, checkpoint_id=path)
                blocked = time.perf_counter() - t
                fut.result()
                return blocked
            return run
    else:
        model, opt = gpt2_with_adamw(width, stepped=not fresh, seed=1)
        if method == "raw":  # the floor: straight into tensors that exist already (state allocated)
            model, opt = gpt2_with_adamw(width, stepped=True, seed=1)
            arrays = [t.numpy() for t in _tensors(model, opt)]
            return lambda: _raw_readinto(path, arrays)
        if method == "raw-fresh":  # the floor of a fresh restore: into the parameters, the state allocated as read
            stepped, sopt = gpt2_with_adamw(width, stepped=True, seed=1)
            params = [p.detach().numpy() for p in model.parameters()]
            state = [(tuple(t.shape), t.numpy().dtype) for t in _tensors(stepped, sopt)[len(params):]]
            del stepped, sopt

            def run():
                arrays = params + [np.empty(shape, dtype) for shape, dtype in state]
                _raw_readinto(path, arrays)
            return run
        if method == "ckptcore":
            return lambda: ck.Checkpoint(model=model, opt=opt).read(path).assert_consumed()
        if method == "torch":
            def run():
                sd = torch.load(path, weights_only=True)
                model.load_state_dict(sd["model"])
                opt.load_state_dict(sd["opt"])
            return run
        if method == "dcp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            def run():
                msd, osd = get_state_dict(model, opt)
                sd = {"model": msd, "opt": osd}
                dcp.load(sd, checkpoint_id=path)
                set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["opt"])
            return run
    raise ValueError(f"{method} {op}")


def gpt2_worker(args: dict) -> dict:
    """One (method, op) in this process: its time, or (``memory``) the peak extra RSS of one call."""
    import warnings

    warnings.filterwarnings("ignore")
    path = args["path"]
    # Warm up on a tiny model first, so that one-time costs (imports, plugin discovery, first-call
    # set-up) are not in the figure, for every method alike; import time is measured on its own.
    with tempfile.TemporaryDirectory() as tmp:
        small = os.path.join(tmp, "warm")
        method = args["method"]
        _gpt2_op("raw" if method == "raw-fresh" else method, "save", small, 8)()
        if args["op"] == "load":
            _gpt2_op(method, "load", small, 8, args.get("fresh", True))()
    if args["op"] == "save":
        _clear(path)
    fn = _gpt2_op(args["method"], args["op"], path, args["width"], args.get("fresh", True))
    gc.collect()
    peak = _Peak() if args.get("memory") else None
    _settle()
    t = time.perf_counter()
    res = fn()
    took = time.perf_counter() - t
    out = {"time": took, "blocked": res if isinstance(res, float) else None}
    if peak is not None:
        out["peak_extra"] = peak.stop()
    return out


GPT2_SAVES = ("raw", "ckptcore", "torch", "dcp")
GPT2_LOADS = ("raw", "ckptcore", "torch", "dcp")


def bench_gpt2(root_dir: str, runs: int, width: int) -> dict:
    import importlib.util

    methods = [m for m in GPT2_SAVES if m != "dcp" or importlib.util.find_spec("torch.distributed.checkpoint")]
    paths = {m: os.path.join(root_dir, f"gpt2-{m}") for m in methods}
    out: dict = {"width": width, "methods": methods, "save": {}, "load": {}, "load_warm": {}, "async": {},
                 "memory": {}, "load_raw_fresh": []}
    for _ in range(runs):
        for m in methods:
            out["save"].setdefault(m, []).append(_worker("gpt2", {"method": m, "op": "save", "path": paths[m],
                                                                   "width": width})["time"])
    for _ in range(runs):
        for m in methods:
            out["load"].setdefault(m, []).append(_worker("gpt2", {"method": m, "op": "load", "path": paths[m],
                                                                   "width": width})["time"])
        out["load_warm"].setdefault("ckptcore", []).append(_worker("gpt2", {
            "method": "ckptcore", "op": "load", "path": paths["ckptcore"], "width": width, "fresh": False})["time"])
        out["load_raw_fresh"].append(_worker("gpt2", {"method": "raw-fresh", "op": "load", "path": paths["raw"],
                                                      "width": width})["time"])
    for m in ("ckptcore-async", "dcp-async"):
        if m.split("-")[0] in methods:
            for _ in range(runs):
                r = _worker("gpt2", {"method": m, "op": "save", "path": os.path.join(root_dir, f"gpt2-{m}"),
                                     "width": width})
                out["async"].setdefault(m, []).append(r["blocked"])
    for m in methods:
        for op in ("save", "load"):
            r = _worker("gpt2", {"method": m, "op": op, "path": paths[m] if op == "load" else paths[m] + "-mem",
                                 "width": width, "memory": True})
            out["memory"][f"{m} {op}"] = r["peak_extra"]
    # the same bytes, for the record
    out["nbytes"] = _worker("gpt2-size", {"width": width})["nbytes"]
    return out


# -- SWEEP ---------------------------------------------------------------------------------------
def _flat_model(n: int, total: int, fill: bool = True):
    """``n`` float32 arrays of ``total`` bytes in all, as ``n/100`` ck.Modules of lists of 100."""
    import ckptcore as ck

    per = 100 if n >= 100 else n
    size = max(1, total // 4 // n)
    root, arrays = ck.Module(), []
    root.blocks = []
    for i in range(n // per):
        m = ck.Module()
        m.xs = [np.full(size, i, np.float32) if fill else np.zeros(size, np.float32) for _ in range(per)]
        arrays += m.xs
        root.blocks.append(m)
    return root, arrays


def sweep_worker(args: dict) -> dict:
    """One point of the array sweep, in a fresh process."""
    import ckptcore as ck

    n, total, runs, d = args["n"], args["total"], args["runs"], args["dir"]
    src, arrays = _flat_model(n, total)
    dst, dst_arrays = _flat_model(n, total, fill=False)
    raw = os.path.join(d, f"sweep-raw-{n}")
    out: dict = {"n": n}
    ck_dir = os.path.join(d, f"sweep-{n}")
    for _ in range(runs):  # each method's last output is deleted before its next save (see bench_list)
        _clear(raw)
        _settle()
        t = time.perf_counter()
        _raw_save(raw, arrays)
        out.setdefault("raw_save", []).append(time.perf_counter() - t)
        _clear(ck_dir)
        _settle()
        t = time.perf_counter()
        path = ck.Checkpoint(model=src).save(os.path.join(ck_dir, "c"))
        out.setdefault("ck_save", []).append(time.perf_counter() - t)
    for _ in range(runs):
        _settle()
        t = time.perf_counter()
        _raw_readinto(raw, dst_arrays)
        out.setdefault("raw_load", []).append(time.perf_counter() - t)
        _settle()
        t = time.perf_counter()
        status = ck.Checkpoint(model=dst).restore(path)
        t1 = time.perf_counter()
        status.assert_consumed()
        out.setdefault("ck_restore", []).append(t1 - t)
        out.setdefault("ck_assert", []).append(time.perf_counter() - t1)
    # opening the checkpoint: time and bytes read, against the index and data sizes
    before = _rchar()
    _settle()
    t = time.perf_counter()
    reader = ck.load_checkpoint(path)
    out["open_s"] = time.perf_counter() - t
    out["open_read"] = _rchar() - before
    out["index_bytes"] = os.path.getsize(path + ".index")
    out["data_bytes"] = sum(a.nbytes for a in arrays)
    del reader
    # a restore of 1% of the objects (the first 1% of modules): bytes read
    part = ck.Module()
    part.blocks = dst.blocks[:max(1, len(dst.blocks) // 100)]
    before = _rchar()
    ck.Checkpoint(model=part).restore(path).expect_partial()
    out["part_read"] = _rchar() - before
    out["part_data"] = sum(a.nbytes for b in part.blocks for a in b.xs)
    return out


def open_worker(args: dict) -> dict:
    """OPEN: ``load_checkpoint`` of a checkpoint of ``n`` arrays, and a 1% restore of it (bytes read)."""
    import ckptcore as ck

    n, d = args["n"], args["dir"]
    src, arrays = _flat_model(n, args["total"])
    path = ck.Checkpoint(model=src).write(os.path.join(d, f"open-{n}"))
    out: dict = {"n": n, "index_bytes": os.path.getsize(path + ".index"), "data_bytes": sum(a.nbytes for a in arrays)}
    del src, arrays
    gc.collect()
    times, reads = [], []
    for _ in range(5):
        before = _rchar()
        _settle()
        t = time.perf_counter()
        reader = ck.load_checkpoint(path)
        times.append(time.perf_counter() - t)
        reads.append(_rchar() - before)
        del reader
        gc.collect()
    out["open_s"], out["open_read"] = times, reads
    dst, _ = _flat_model(n, args["total"], fill=False)
    part = ck.Module()
    part.blocks = dst.blocks[:max(1, len(dst.blocks) // 100)]
    before = _rchar()
    ck.Checkpoint(model=part).read(path).expect_partial()
    out["part_read"] = _rchar() - before
    out["part_data"] = sum(a.nbytes for b in part.blocks for a in b.xs)
    return out


def report_open(r: dict) -> str:
    ts = r["open_s"]
    return _table([
        [f"OPEN: {r['n']:,} arrays, index {r['index_bytes'] / MiB:.1f} MiB", "value", "target"],
        ["load_checkpoint (median of 5, range)", f"{med(ts):.3f} s ({min(ts):.3f}-{max(ts):.3f})",
         "< 1 s " + ("ok" if med(ts) < 1 else "(not met)")],
        ["bytes it read / index size", f"{med(r['open_read']) / r['index_bytes']:.3f}", "~1"],
        ["1% restore: bytes read beyond the index / bytes restored",
         f"{(r['part_read'] - r['index_bytes']) / r['part_data']:.4f}", "~1"]])


def async_worker(args: dict) -> dict:
    """ASYNC: blocking time of three async saves in a row, ckptcore or DCP, in this process."""
    import warnings

    warnings.filterwarnings("ignore")
    import ckptcore as ck

    d, width, method = args["dir"], args["width"], args["method"]
    small, _ = gpt2_with_adamw(8)  # one-time costs outside the figure
    model, opt = gpt2_with_adamw(width)
    blocked = []
    if method == "ckptcore":
        ck.Checkpoint(m=small).write(os.path.join(d, "async-warm"), options=ck.CheckpointOptions(enable_async=True))
        ckpt = ck.Checkpoint(model=model, opt=opt)
        for i in range(3):
            _settle()
            t = time.perf_counter()
            ckpt.write(os.path.join(d, f"async-ck-{i}"), options=ck.CheckpointOptions(enable_async=True))
            blocked.append(time.perf_counter() - t)
            ckpt.sync()
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        dcp.async_save({"m": small.state_dict()}, checkpoint_id=os.path.join(d, "async-dcp-warm")).result()
        for i in range(3):
            msd, osd = get_state_dict(model, opt)
            _settle()
            t = time.perf_counter()
            fut = dcp.async_save({"model": msd, "opt": osd}, checkpoint_id=os.path.join(d, f"async-dcp-{i}"))
            blocked.append(time.perf_counter() - t)
            fut.result()
    return {"method": method, "blocked": blocked}


def _torch_flat(n_params: int, total: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    per = 20
    numel = max(1, total // 4 // n_params)
    mods = torch.nn.ModuleList()
    for _ in range(max(1, n_params // per)):
        m = torch.nn.Module()
        for j in range(per):
            m.register_parameter(f"p{j}", torch.nn.Parameter(torch.randn(numel)))
        mods.append(m)
    return mods


def torch_sweep_worker(args: dict) -> dict:
    """One point of the torch sweep: ``n`` parameters + Adam state (3 slots each), fresh process."""
    import torch

    import ckptcore as ck

    n, total, d = args["n"], args["total"], args["dir"]
    model = _torch_flat(n, total)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    tensors = _tensors(model, opt)
    out: dict = {"n": n, "tensors": len(tensors)}
    raw, ck_dir = os.path.join(d, f"tsweep-raw-{n}"), os.path.join(d, f"tsweep-{n}")
    raw_saves, ck_saves = [], []
    for _ in range(args.get("runs", 3)):  # alternating; each method's last output deleted first (see _clear)
        _clear(raw)
        _settle()
        t = time.perf_counter()
        _raw_save(raw, [x.numpy() for x in tensors])
        raw_saves.append(time.perf_counter() - t)
        _clear(ck_dir)
        _settle()
        t = time.perf_counter()
        path = ck.Checkpoint(model=model, opt=opt).save(os.path.join(ck_dir, "c"))
        ck_saves.append(time.perf_counter() - t)
    out["raw_save"], out["ck_save"] = med(raw_saves), med(ck_saves)
    model2 = _torch_flat(n, total, seed=1)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    _settle()
    t = time.perf_counter()
    ck.Checkpoint(model=model2, opt=opt2).restore(path).assert_consumed()
    out["ck_restore"] = time.perf_counter() - t
    # The same fresh case for raw: the parameters exist, the optimizer's state is allocated as it is read
    # (np.empty per state tensor inside the timing; the fresh memory faults in as ckptcore's did).
    params = [p.detach().numpy() for p in model2.parameters()]
    state = [(tuple(x.shape), x.numpy().dtype) for x in _tensors(model2, opt2)[len(params):]]
    _settle()
    t = time.perf_counter()
    with open(raw, "rb", buffering=0) as f:
        for a in params:
            f.readinto(a)
        fresh = [np.empty(shape, dt) for shape, dt in state]
        for a in fresh:
            f.readinto(a)
    out["raw_load_fresh"] = time.perf_counter() - t
    del fresh
    dst = [x.numpy() for x in _tensors(model2, opt2)]
    _settle()
    t = time.perf_counter()
    _raw_readinto(raw, dst)
    out["raw_load"] = time.perf_counter() - t
    warm = []
    for _ in range(args.get("runs", 3)):   # into the same model and optimizer again: every tensor exists
        _settle()
        t = time.perf_counter()
        ck.Checkpoint(model=model2, opt=opt2).restore(path).assert_consumed()
        warm.append(time.perf_counter() - t)
    out["ck_restore_warm"] = med(warm)
    if args.get("torch_load"):
        sd_path = os.path.join(d, f"tsweep-{n}.pt")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, sd_path)
        model3 = _torch_flat(n, total, seed=2)
        opt3 = torch.optim.Adam(model3.parameters(), lr=1e-3)
        _settle()
        t = time.perf_counter()
        sd = torch.load(sd_path, weights_only=True)
        model3.load_state_dict(sd["model"])
        opt3.load_state_dict(sd["opt"])
        out["torch_load"] = time.perf_counter() - t
    return out


# -- plumbing ------------------------------------------------------------------------------------
class WorkloadFailed(RuntimeError):
    """A workload's worker process failed; the other workloads still run (``main`` reports it at the end)."""


def _worker(mode: str, args: dict) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench15", "--worker", mode, json.dumps(args)],
                          cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WorkloadFailed(f"bench15 worker failed ({mode} {args}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run(res: dict, name: str, step) -> None:
    """Run one workload's ``step()``; a failure is printed and recorded in ``res["failed"]``, and the next goes on."""
    try:
        step()
    except (WorkloadFailed, OSError, RuntimeError) as e:   # (a full disk, a worker that died, ...)
        print(f"\n  {name} FAILED, going on with the next workload: {e}\n", flush=True)
        res.setdefault("failed", {})[name] = str(e)[-4000:]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _ok(x: float, target: float) -> str:
    return f"{x:.2f}x " + ("ok" if x <= target else f"(target {target}x)")


def report_list(r: dict) -> str:
    n = r["arrays"]
    rl, rs = med(r["raw_load"]), med(r["raw_save"])
    rows = [[f"LIST: {n} arrays, {r['nbytes'] / MiB:.0f} MiB", "raw", "ckptcore", "ratio"],
            ["restore + assert_consumed vs readinto", f"{rl:.3f} s", f"{med(r['ck_restore_assert']):.3f} s",
             _ok(med(r["ck_restore_assert"]) / rl, 1.5)],
            ["restore alone", f"{rl:.3f} s", f"{med(r['ck_restore']):.3f} s", f"{med(r['ck_restore']) / rl:.2f}x"],
            ["assert_consumed alone", "", f"{med(r['ck_assert']) * 1e3:.1f} ms",
             f"{med(r['ck_assert']) / n * 1e6:.2f} us/array (target 0.5)"],
            ["save + fsync vs writev + fsync", f"{rs:.3f} s", f"{med(r['ck_save']):.3f} s",
             _ok(med(r["ck_save"]) / rs, 1.2)]]
    return _table(rows)


def report_gpt2(r: dict) -> str:
    ms = r["methods"]
    rows = [[f"GPT2 ({r['nbytes'] / (1 << 30):.2f} GiB, width {r['width']})"] + ms]
    for op, label in (("save", "save + fsync"), ("load", "restore into a fresh model + optimizer")):
        raw = med(r[op]["raw"])
        rows.append([label] + [f"{raw:.3f} s" if m == "raw" else f"{med(r[op][m]) / raw:.2f}x" for m in ms])
    if r.get("load_raw_fresh"):  # what a fresh restore must do at least: fault in the optimizer state's memory
        fresh = med(r["load_raw_fresh"])
        rows.append(["same, vs raw into freshly allocated state"] + [
            f"{fresh:.3f} s" if m == "raw" else f"{med(r['load'][m]) / fresh:.2f}x" for m in ms])
    if r["load_warm"]:
        raw = med(r["load"]["raw"])
        rows.append(["ckptcore restore into a warm optimizer (in place)", f"{raw:.3f} s",
                     f"{med(r['load_warm']['ckptcore']) / raw:.2f}x"] + [""] * (len(ms) - 2))
    rows.append(["peak extra RSS save / load (MiB)"] + [
        f"{r['memory'].get(m + ' save', 0) / MiB:.0f} / {r['memory'].get(m + ' load', 0) / MiB:.0f}" for m in ms])
    out = _table(rows)
    if r["async"]:
        out += "\n\nasync save blocks: " + ", ".join(f"{m} {med(v):.3f} s" for m, v in r["async"].items())
    return out


def report_sweep(points: list, tpoints: list) -> str:
    rows = [["arrays", "save us/obj", "restore us/obj", "assert us/obj", "save vs raw", "restore vs readinto",
             "open", "open: read / index size", "1% restore: read beyond the index / data restored"]]
    for p in points:
        n = p["n"]
        cs, rs, cr, rl, ca = (med(p[k]) for k in ("ck_save", "raw_save", "ck_restore", "raw_load", "ck_assert"))
        rows.append([f"{n:,}", f"{(cs - rs) / n * 1e6:.1f}", f"{(cr - rl) / n * 1e6:.1f}", f"{ca / n * 1e6:.2f}",
                     f"{cs / rs:.2f}x", f"{cr / rl:.2f}x", f"{p['open_s'] * 1e3:.0f} ms",
                     f"{p['open_read'] / max(1, p['index_bytes']):.2f}",
                     f"{(p['part_read'] - p['index_bytes']) / max(1, p['part_data']):.3f} "
                     f"(index {p['index_bytes'] / MiB:.1f} MiB)"])
    out = _table(rows)
    if tpoints:
        rows = [["torch params (+Adam)", "tensors", "save", "save us/tensor", "fresh restore",
                 "vs readinto (into fresh state)", "warm restore", "warm vs readinto", "torch.load+load_state_dict"]]
        for p in tpoints:
            t = p["tensors"]
            fresh = p.get("raw_load_fresh")
            vs_fresh = f" ({p['ck_restore'] / fresh:.2f}x)" if fresh else ""
            rows.append([f"{p['n']:,}", f"{t:,}", f"{p['ck_save']:.2f} s",
                         f"{(p['ck_save'] - p['raw_save']) / t * 1e6:.1f}", f"{p['ck_restore']:.2f} s",
                         f"{p['ck_restore'] / p['raw_load']:.2f}x{vs_fresh}",
                         f"{p['ck_restore_warm']:.2f} s" if "ck_restore_warm" in p else "",
                         f"{p['ck_restore_warm'] / p['raw_load']:.2f}x" if "ck_restore_warm" in p else "",
                         f"{p['torch_load']:.2f} s" if "torch_load" in p else ""])
        out += "\n\n" + _table(rows)
    return out


def main(argv: list[str] | None = None, results: dict | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench15", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--only", default="LIST,GPT2,SWEEP,OPEN,ASYNC")
    ap.add_argument("--sweep-max", type=int, default=100_000, help="largest array count of the sweep (up to 1000000)")
    ap.add_argument("--open-n", type=int, default=1_000_000, help="arrays of the OPEN checkpoint")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    runs = a.runs or (2 if a.quick else 5)
    only = {w.strip().upper() for w in a.only.split(",") if w.strip()}
    root = a.dir or tempfile.mkdtemp(prefix="ckptcore-bench15-")
    os.makedirs(root, exist_ok=True)
    res = results if results is not None else {}
    def list_() -> None:
        print("  LIST ...", flush=True)
        res["LIST"] = _worker("list", {"dir": root, "runs": runs, "total": (64 if a.quick else 256) * MiB})
        print("\n" + report_list(res["LIST"]) + "\n", flush=True)

    def gpt2() -> None:
        if not _has_torch():
            print("  GPT2: torch is not installed, skipped")
            return
        print("  GPT2 ...", flush=True)
        res["GPT2"] = bench_gpt2(root, 2 if a.quick else 3, 192 if a.quick else 768)
        print("\n" + report_gpt2(res["GPT2"]) + "\n", flush=True)

    def open_() -> None:
        print(f"  OPEN ({a.open_n:,} arrays) ...", flush=True)
        res["OPEN"] = _worker("open", {"n": a.open_n, "total": (16 if a.quick else 64) * MiB, "dir": root})
        print("\n" + report_open(res["OPEN"]) + "\n", flush=True)

    def async_() -> None:
        if not _has_torch():
            return
        print("  ASYNC ...", flush=True)
        width = 192 if a.quick else 768
        res["ASYNC"] = [_worker("async", {"dir": root, "width": width, "method": m}) for m in ("ckptcore", "dcp")]
        print("\nasync save blocks, three saves in a row (s): " + "; ".join(
            f"{r['method']} " + ", ".join(f"{b:.3f}" for b in r["blocked"]) for r in res["ASYNC"]) + "\n",
            flush=True)

    def sweep() -> None:
        print("  SWEEP ...", flush=True)
        counts = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n <= a.sweep_max]
        total = (16 if a.quick else 64) * MiB
        res["SWEEP"] = [_worker("sweep", {"n": n, "total": total, "runs": 1 if n >= 100_000 else 3, "dir": root})
                        for n in counts]
        tcounts = [n for n in (1_000, 4_000, 20_000, 100_000) if n <= max(20_000, a.sweep_max // 10)]
        res["TORCH_SWEEP"] = [] if not _has_torch() else [
            _worker("torch-sweep", {"n": n, "total": total, "dir": root, "torch_load": n <= 4_000})
            for n in tcounts]
        print("\n" + report_sweep(res["SWEEP"], res["TORCH_SWEEP"]) + "\n", flush=True)

    try:
        for name, step in (("LIST", list_), ("GPT2", gpt2), ("OPEN", open_), ("ASYNC", async_), ("SWEEP", sweep)):
            if name in only:
                _run(res, name, step)
        if res.get("failed"):
            print("  failed workloads: " + ", ".join(res["failed"]), flush=True)
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _gpt2_size(args: dict) -> dict:
    model, opt = gpt2_with_adamw(args["width"])
    return {"nbytes": sum(t.numel() * t.element_size() for t in _tensors(model, opt))}


WORKERS = {"list": lambda a: bench_list(a["dir"], a["runs"], a["total"]), "gpt2": gpt2_worker,
           "gpt2-size": _gpt2_size, "sweep": sweep_worker, "torch-sweep": torch_sweep_worker,
           "open": open_worker, "async": async_worker}


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.stdout.write(json.dumps(WORKERS[sys.argv[2]](json.loads(sys.argv[3]))) + "\n")
    else:
        main()
