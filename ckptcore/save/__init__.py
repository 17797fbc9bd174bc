"""Saving: the walk of a live graph into a plan, and the writing of that plan with the commit protocol.

- :mod:`~ckptcore.save.plan`: :func:`plan_save` walks the graph from its root and collects every
  array, no copies unless ``snapshot=True`` (compiled steps in ``_save_fast.pyx``);
- :mod:`~ckptcore.save.values`: what adapters hand a save, made arrays and JSON state, or refused
  with the object's path;
- :mod:`~ckptcore.save.write`: :func:`write_plan` streams the arrays to the data shards, then
  commits the index.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> from ckptcore.save import plan_save, write_plan
    >>> from ckptcore.storage import open_storage
    >>> m = ck.Module(); m.w = np.ones(2)
    >>> st, p = open_storage("memory://doc/save/ckpt")
    >>> write_plan(st, p, plan_save(m)); st.exists(p + ".index")
    True
"""

from .plan import SavePlan, plan_save
from .write import MAX_SHARDS, checkpoint_files, remove_index, split_shards, write_plan

__all__ = ["MAX_SHARDS", "SavePlan", "checkpoint_files", "plan_save", "remove_index", "split_shards", "write_plan"]
