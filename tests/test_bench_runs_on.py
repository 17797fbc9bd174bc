"""``make bench``: a workload whose worker fails is reported, and the other workloads still run.

(Benchmarks are never timed in tests; this checks only how a run of them carries on.)
"""

from __future__ import annotations

import pytest

bench15 = pytest.importorskip("benchmarks.bench15")


def test_a_failed_workload_is_reported_and_the_next_one_runs(monkeypatch, tmp_path, capsys):
    calls = []

    def worker(mode, args):
        calls.append(mode)
        if mode == "list":
            raise bench15.WorkloadFailed("bench15 worker failed (list): No space left on device")
        return {"n": args["n"], "index_bytes": 100, "data_bytes": 10, "open_s": [0.1, 0.2, 0.3],
                "open_read": [100, 100, 100], "part_read": 101, "part_data": 1}

    monkeypatch.setattr(bench15, "_worker", worker)
    res = bench15.main(["--quick", "--only", "LIST,OPEN", "--open-n", "100", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert calls == ["list", "open"]
    assert "No space left on device" in res["failed"]["LIST"] and "OPEN" in res and "LIST" not in res
    assert "LIST FAILED, going on" in out and "failed workloads: LIST" in out and "load_checkpoint" in out


def test_an_unexpected_error_is_not_swallowed(monkeypatch, tmp_path):
    def worker(mode, args):
        raise KeyError("a bug in the benchmark itself")

    monkeypatch.setattr(bench15, "_worker", worker)
    with pytest.raises(KeyError):
        bench15.main(["--quick", "--only", "OPEN", "--open-n", "100", "--dir", str(tmp_path)])
