"""The small model the corrupt-input tests damage, and every way a user opens a checkpoint."""

from __future__ import annotations

import numpy as np

import ckptcore as ck

W_KEY = "model/w/.ATTRIBUTES/VARIABLE_VALUE"
V_KEY = "model/sub/v/.ATTRIBUTES/VARIABLE_VALUE"


def model(w=None, v=None):
    """``model.w`` (float64 [4]) and ``model.sub.v`` (a float32 [2, 2] Variable)."""
    m = ck.Module()
    m.w = np.arange(4.0) if w is None else w
    m.sub = ck.Module()
    m.sub.v = ck.Variable(np.ones((2, 2), np.float32) if v is None else v)
    return m


def fresh():
    """The same model, all zeros: what a restore fills."""
    return model(np.zeros(4), np.zeros((2, 2), np.float32))


def open_every_way(path):
    """Every way a user reads a checkpoint."""
    r = ck.load_checkpoint(path)
    for k in r.keys():
        r.get_tensor(k)
    r.verify()
    ck.list_variables(path)
    ck.Checkpoint(model=fresh()).read(path).expect_partial()
