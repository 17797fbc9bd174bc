"""CheckpointManager conveniences users of Orbax expect: metadata, metrics and keep-best-N, all_steps, delete."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import manager as manager_mod
from ckptcore.retention import best_n_doomed


def _mgr(directory, **kw):
    kw.setdefault("max_to_keep", None)
    return ck.CheckpointManager(ck.Checkpoint(a=ck.Variable(np.zeros(2))), str(directory), **kw)


def _on_disk(directory) -> list[int]:
    return sorted(int(p.name[5:-6]) for p in directory.iterdir() if p.name.startswith("ckpt-")
                  and p.name.endswith(".index"))


def test_save_metadata_is_read_back_and_shown_per_checkpoint(tmp_path):
    m = _mgr(tmp_path)
    p1 = m.save(metadata={"epoch": 1, "note": "warmup"})
    p2 = m.save(options=ck.CheckpointOptions(metadata={"epoch": 2}))
    p3 = m.save()
    assert ck.load_checkpoint(p1).metadata == {"epoch": 1, "note": "warmup"}
    assert ck.load_checkpoint(p2).metadata == {"epoch": 2}
    assert ck.load_checkpoint(p3).metadata == {}
    with pytest.raises(ck.CheckpointError, match="not JSON-serializable"):
        m.save(metadata={"x": object()})
    assert m.all_steps() == [1, 2, 3]  # the failed save took no number


def test_all_steps_latest_step_and_delete(tmp_path):
    m = _mgr(tmp_path)
    for n in (5, 10, 15):
        m.save(checkpoint_number=n)
    assert m.all_steps() == [5, 10, 15] and m.latest_step() == 15
    m.delete(10)
    assert m.all_steps() == [5, 15] and _on_disk(tmp_path) == [5, 15]
    assert not any(p.name.startswith("ckpt-10") for p in tmp_path.iterdir())
    m.delete(15)  # the latest: the previous one becomes the latest
    assert m.latest_checkpoint == str(tmp_path / "ckpt-5") == ck.latest_checkpoint(str(tmp_path))
    with pytest.raises(ck.NotFoundError, match=r"step 7 is not one of the checkpoints .*all_steps\(\): \[5\]"):
        m.delete(7)
    # a checkpoint this manager did not record is never deleted by it
    other = ck.Checkpoint(a=np.ones(1)).write(str(tmp_path / "ckpt-99"))
    with pytest.raises(FileNotFoundError):
        m.delete(99)
    assert ck.load_checkpoint(other).keys()
    fresh = _mgr(tmp_path)  # the state file says what is left
    assert fresh.all_steps() == [5] and fresh.latest_step() == 5
    fresh.delete(5)
    assert fresh.latest_checkpoint is None and ck.latest_checkpoint(str(tmp_path)) is None


def test_delete_waits_for_a_pending_async_save(tmp_path):
    m = _mgr(tmp_path)
    m.save(checkpoint_number=1)
    m.save(checkpoint_number=2, options=ck.CheckpointOptions(enable_async=True))
    m.delete(2)
    assert m.all_steps() == [1] and _on_disk(tmp_path) == [1]


def test_keep_best_n_by_metric(tmp_path, capsys):
    losses = {1: 0.9, 2: 0.3, 3: 0.5, 4: 0.1, 5: 0.8, 6: 0.7}
    m = _mgr(tmp_path, max_to_keep=2, best_fn=lambda metrics: metrics["loss"], best_mode="min")
    for step, loss in losses.items():
        m.save(checkpoint_number=step, metrics={"loss": loss})
    # the two lowest losses (4 and 2), and the newest (6) so training can resume where it stopped
    assert m.all_steps() == [2, 4, 6] and _on_disk(tmp_path) == [2, 4, 6]
    assert m.best_step() == 4 and m.latest_step() == 6
    assert ck.load_checkpoint(m.checkpoints[0]).index.metadata["metrics"] == {"loss": 0.3}
    from ckptcore.cli import main
    capsys.readouterr()
    assert main(["inspect", m.checkpoints[0]]) == 0
    assert 'metrics: {"loss": 0.3}' in capsys.readouterr().out
    # a new manager ranks the recovered checkpoints by the metrics saved in them
    again = _mgr(tmp_path, max_to_keep=2, best_fn=lambda metrics: metrics["loss"], best_mode="min")
    again.save(checkpoint_number=7, metrics={"loss": 0.2})
    assert again.all_steps() == [4, 7] and again.best_step() == 4
    maximize = _mgr(tmp_path / "max", max_to_keep=1, best_fn=lambda metrics: metrics["acc"])  # best_mode="max"
    for step, acc in ((1, 0.5), (2, 0.9), (3, 0.6)):
        maximize.save(checkpoint_number=step, metrics={"acc": acc})
    assert maximize.all_steps() == [2, 3] and maximize.best_step() == 2


def test_checkpoints_without_metrics(tmp_path):
    kept = _mgr(tmp_path / "kept", max_to_keep=1, best_fn=lambda m: m["loss"], best_mode="min")
    dropped = _mgr(tmp_path / "dropped", max_to_keep=1, best_fn=lambda m: m["loss"], best_mode="min",
                   keep_checkpoints_without_metrics=False)
    for m in (kept, dropped):
        m.save(checkpoint_number=1)
        m.save(checkpoint_number=2, metrics={"loss": 0.5})
        m.save(checkpoint_number=3, metrics={"loss": 0.6})
        m.save(checkpoint_number=4, metrics={"loss": 0.7})
    assert kept.all_steps() == [1, 2, 4]     # without metrics: never deleted (Orbax's default)
    assert dropped.all_steps() == [2, 4]     # without metrics: ranked below every scored one


def test_best_fn_and_best_mode_are_checked(tmp_path):
    with pytest.raises(ValueError, match="best_mode must be 'max' or 'min'"):
        _mgr(tmp_path, best_fn=lambda m: 0, best_mode="lowest")
    with pytest.raises(TypeError, match="best_fn must be a function"):
        _mgr(tmp_path, best_fn="loss")
    m = _mgr(tmp_path, max_to_keep=1, best_fn=lambda metrics: metrics["loss"])
    with pytest.raises(KeyError):
        m.save(metrics={"acc": 1.0})  # best_fn fails: the save fails, nothing is written
    with pytest.raises(ck.CheckpointError, match="not JSON-serializable"):
        m.save(metrics={"loss": float("nan")})
    with pytest.raises(ValueError, match="NaN"):
        _mgr(tmp_path, best_fn=lambda metrics: float("nan")).save(metrics={"loss": 1.0})
    with pytest.raises(ValueError, match="must return a number"):
        _mgr(tmp_path, best_fn=lambda metrics: "low").save(metrics={"loss": 1.0})
    assert m.all_steps() == [] and _on_disk(tmp_path) == []


def test_best_n_with_keep_checkpoint_every_n_hours(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(manager_mod, "_clock", lambda: now[0])
    m = _mgr(tmp_path, max_to_keep=1, keep_checkpoint_every_n_hours=1.0, best_fn=lambda x: x["loss"],
             best_mode="min")
    for step, loss in ((1, 0.5), (2, 0.9), (3, 0.1)):
        now[0] += 3600 * 0.75
        m.save(checkpoint_number=step, metrics={"loss": loss})
    # 1 and 2 lost to 3 on the metric; 2 is over an hour after the last preserved time: kept on disk, unlisted
    assert m.all_steps() == [3] and _on_disk(tmp_path) == [2, 3]


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.one_of(st.none(), st.integers(-3, 3).map(float)), min_size=0, max_size=12),
       n=st.integers(1, 5), mode=st.sampled_from(["max", "min"]), keep_without=st.booleans())
def test_best_n_policy_properties(scores, n, mode, keep_without):
    entries = [(f"c{i}", s) for i, s in enumerate(scores)]
    doomed = best_n_doomed(entries, n, mode, keep_without)
    names = [e[0] for e in entries]
    kept = [e for e in entries if e[0] not in doomed]
    assert doomed == [x for x in names if x in doomed]          # oldest first, each once
    if entries:
        assert entries[-1] in kept                               # the newest always stays
    if keep_without:
        assert all(s is not None for name, s in entries if name in doomed)
    eligible = [e for e in kept if (e[1] is not None or not keep_without) and e != entries[-1]]
    assert len(eligible) <= n                                    # at most n besides the newest
    def rank(s):
        return -np.inf if s is None else (s if mode == "max" else -s)

    for gone in (e for e in entries if e[0] in doomed):
        # nothing kept for its metric is worse than something deleted
        for k in eligible:
            assert rank(k[1]) >= rank(gone[1]), (k, gone)
    if len([e for e in entries if e[1] is not None or not keep_without]) > n + 1:
        assert doomed  # too many candidates: some go
