"""The ranks of a multi-worker save or restore as threads of one process (``ThreadGroup``), for tests."""

from __future__ import annotations

import threading

from ckptcore.distributed import ThreadGroup


def on_threads(n: int, fn, timeout: float = 60) -> list:
    """Run ``fn(group)`` on ``n`` threads, one rank each; their results (exceptions included).

    A rank still running after ``timeout`` seconds fails the test (naming it), rather than
    leaving ``None`` for its result.
    """
    groups, out = ThreadGroup.create(n), [None] * n

    def run(g):
        try:
            out[g.rank] = fn(g)
        except BaseException as e:  # noqa: BLE001 -- compared by the test
            out[g.rank] = e
    ts = [threading.Thread(target=run, args=(g,), name=f"rank{g.rank}") for g in groups]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    stuck = [t.name for t in ts if t.is_alive()]
    assert not stuck, f"still running after {timeout} s: {stuck}"
    return out
