"""Which checkpoints a manager keeps: the keep-the-best-N policy (pure, no I/O).

:class:`~ckptcore.CheckpointManager` keeps the newest ``max_to_keep``
checkpoints by default (``tf.train.CheckpointManager``). With ``best_fn`` it
keeps the ``max_to_keep`` *best* ones instead, as Orbax's
``CheckpointManagerOptions(best_fn=..., best_mode=...)`` does: ``best_fn``
maps the metrics a save was given to a number, and ``best_mode`` says whether
higher (``"max"``) or lower (``"min"``) is better.

Where ckptcore differs from Orbax: the newest checkpoint is never deleted by
this policy, even when its metric is poor, so that training can always resume
from where it stopped (it becomes eligible once a newer one is saved).

Example:
    >>> from ckptcore.retention import best_n_doomed
    >>> entries = [("ckpt-1", 0.9), ("ckpt-2", 0.5), ("ckpt-3", 0.7), ("ckpt-4", 0.1)]  # oldest first
    >>> best_n_doomed(entries, 2, "max", keep_without_metrics=True)   # keeps 1 and 3 (best), and 4 (newest)
    ['ckpt-2']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import InvalidArgumentError

__all__ = ["best_n_doomed", "score", "BEST_MODES"]

BEST_MODES = ("max", "min")


def score(best_fn: Callable[[Mapping[str, Any]], Any], metrics: Mapping[str, Any] | None) -> float | None:
    """``best_fn(metrics)`` as a float, or None without metrics; a NaN or non-number raises ValueError.

    Example:
        >>> score(lambda m: m["acc"], {"acc": 3}), score(lambda m: m["acc"], None)
        (3.0, None)
    """
    if metrics is None:
        return None
    value = best_fn(metrics)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"best_fn must return a number, got {value!r} for metrics {dict(metrics)!r}") from None
    if math.isnan(out):
        raise InvalidArgumentError(f"best_fn returned NaN for metrics {dict(metrics)!r}")
    return out


def best_n_doomed(entries: Sequence[tuple[str, float | None]], max_to_keep: int, best_mode: str,
                  keep_without_metrics: bool) -> list[str]:
    """The names to drop, oldest first, so that the best ``max_to_keep`` remain.

    ``entries`` are ``(name, score)`` oldest first; a score of None means the save
    had no metrics. Those are kept forever with ``keep_without_metrics`` (Orbax's
    ``keep_checkpoints_without_metrics``), else ranked below every scored one
    (older first to go). Ties keep the newer checkpoint. The newest entry is
    never dropped.

    Example:
        >>> best_n_doomed([("a", None), ("b", 1.0), ("c", 2.0)], 1, "min", keep_without_metrics=False)
        ['a']
        >>> best_n_doomed([("a", None), ("b", 1.0), ("c", 2.0)], 1, "min", keep_without_metrics=True)
        []
    """
    if best_mode not in BEST_MODES:
        raise InvalidArgumentError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    if len(entries) <= 1:
        return []
    newest = entries[-1][0]
    sign = 1.0 if best_mode == "max" else -1.0
    ranked = []  # (goodness, position): the best first
    for pos, (name, s) in enumerate(entries):
        if s is None:
            if keep_without_metrics:
                continue
            ranked.append(((-math.inf, pos), name))
        else:
            ranked.append(((sign * s, pos), name))
    ranked.sort(reverse=True)  # best first; among equals the newer (higher position) first
    keep = {name for _, name in ranked[:max_to_keep]} | {newest}
    candidates = {name for _, name in ranked}
    return [name for name, _ in entries if name in candidates and name not in keep]
