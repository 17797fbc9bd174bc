"""The compiled helpers of restore (``_plan_fast.pyx``, built by setup.py), or None for each.

Without a C compiler the build goes on without them, and ``CKPTCORE_PURE_PYTHON=1`` turns
them off at run time; the callers then do the same work in Python, with the same results
(see docs/performance.md).

Example:
    >>> from ckptcore.restore import _compiled
    >>> _compiled.plan_plain_arrays is None or callable(_compiled.plan_plain_arrays)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._perf import PURE_PYTHON

plan_plain_arrays: Callable[..., list[int]] | None
data_spans: Callable[[list], Any] | None
match_aligned: Callable[..., bool] | None
due_once: Callable[..., int] | None
slot_specs: Callable[..., list] | None
slot_dests: Callable[..., list[int]] | None
fresh_slot_arrays: Callable[..., None] | None
live_all_matched: Callable[..., bool] | None
try:
    from ._plan_fast import (
        data_spans,
        due_once,
        fresh_slot_arrays,
        live_all_matched,
        match_aligned,
        plan_plain_arrays,
        slot_dests,
        slot_specs,
    )
except ImportError:  # pragma: no cover - a build without a C compiler
    plan_plain_arrays = data_spans = match_aligned = due_once = slot_specs = slot_dests = fresh_slot_arrays = None
    live_all_matched = None
if PURE_PYTHON:
    plan_plain_arrays = data_spans = match_aligned = due_once = slot_specs = slot_dests = fresh_slot_arrays = None
    live_all_matched = None
