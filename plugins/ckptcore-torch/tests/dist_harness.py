"""Spawn a ``torch.distributed`` (gloo, CPU) world on 127.0.0.1 and run one scenario of dist_scenarios in it.

Each rank is a fresh ``python dist_scenarios.py`` process; the whole world is bounded by a timeout
(killed, and the test fails, if it passes). A scenario's rank results come back as JSON files.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_world(world: int, scenario: str, workdir: str, timeout: float = 120, expect_fail=(), **params) -> list:
    """Run ``scenario`` on ``world`` ranks; return each rank's result (for ranks in ``expect_fail``: the
    result file they left, or None)."""
    port = free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs = []
    for rank in range(world):
        args = [sys.executable, os.path.join(HERE, "dist_scenarios.py"), scenario, str(rank), str(world), str(port),
                workdir, json.dumps(params)]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            outs.append(out.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise AssertionError(f"scenario {scenario!r} on {world} ranks did not finish within {timeout} s") from None
    results = []
    for rank, (p, out) in enumerate(zip(procs, outs)):
        if rank in expect_fail:  # what it wrote before it died (a seq scenario's steps so far), or None
            partial = os.path.join(workdir, f"result-{scenario}-{rank}.json")
            if os.path.exists(partial):
                with open(partial) as f:
                    results.append(json.load(f))
            else:
                results.append(None)
            continue
        assert p.returncode == 0, f"rank {rank} of {scenario!r} failed (exit {p.returncode}):\n{out[-6000:]}"
        with open(os.path.join(workdir, f"result-{scenario}-{rank}.json")) as f:
            results.append(json.load(f))
    return results
