"""Multi-worker checkpoints: each worker writes its own section, merged into one checkpoint.

- :mod:`~ckptcore.distributed.collective`: the small collective interface (:class:`Group`)
  that a framework plugin implements (the torch plugin over ``torch.distributed``);
- :mod:`~ckptcore.distributed.shards`: the sharded-value description (:class:`ShardedValue`
  to save, :class:`ShardBuffer` to restore into);
- :mod:`~ckptcore.distributed.merge`: who writes what, and the merge of the sections into one index;
- :mod:`~ckptcore.distributed.protocol`: the steps of every collective save and its failure
  handling, whatever the format (a format supplies its sections and index);
- :mod:`~ckptcore.distributed.save` / :mod:`~ckptcore.distributed.restore`: ckptcore's own format's
  collective save and the collective restore;
- :mod:`~ckptcore.distributed.reshard`: reading only the byte ranges that overlap the wanted boxes.

Nothing here imports a framework. See ``docs/distributed.md``.

Example:
    >>> import numpy as np
    >>> from ckptcore.distributed import ShardedValue, current_group
    >>> import ckptcore as ck
    >>> current_group(ck.CheckpointOptions()) is None    # no distributed runtime in this process
    True
"""

from __future__ import annotations

from .collective import CollectiveTimeoutError, Group, ThreadGroup, current_group
from .shards import ShardBuffer, ShardedValue

__all__ = ["CollectiveTimeoutError", "Group", "ShardBuffer", "ShardedValue", "ThreadGroup", "current_group"]
