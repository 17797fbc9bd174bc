"""The benchmark workloads, built the same way in every process.

W1: 1 GiB in 16 x 64 MiB float32 arrays. W2: 256 MiB in 20,000 small float32
arrays, as 1,000 ``ck.Module`` x 20 arrays. ``scale`` shrinks the bytes (not
the array count) for ``--quick`` runs; ``count_scale`` multiplies the number
of arrays at a fixed total size (for the per-object overhead sweep).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MiB = 1 << 20


@dataclass(frozen=True)
class Spec:
    name: str
    total_bytes: int
    modules: int
    per_module: int

    @property
    def arrays(self) -> int:
        return self.modules * self.per_module

    @property
    def elems(self) -> int:
        return max(1, self.total_bytes // 4 // self.arrays)

    @property
    def nbytes(self) -> int:
        return self.elems * 4 * self.arrays


def spec(name: str, quick: bool = False) -> Spec:
    if name == "W1":
        return Spec("W1", (256 if quick else 1024) * MiB, 1, 16)
    if name == "W2":
        return Spec("W2", (64 if quick else 256) * MiB, 1000, 20)
    if name.startswith("objects-"):  # objects-<arrays>-<MiB>
        _, n, mib = name.split("-")
        n = int(n)
        return Spec(name, int(mib) * MiB, max(1, n // 20), min(20, n))
    raise ValueError(f"unknown workload {name!r}")


def build_model(s: Spec, fill: bool = True):
    """A ``ck.Module`` tree holding the workload: ``root.layers[i].w{j}``."""
    import ckptcore as ck

    rng = np.random.default_rng(0)
    root = ck.Module()
    layers = []
    for _ in range(s.modules):
        m = ck.Module()
        for j in range(s.per_module):
            if fill:
                a = rng.random(s.elems, dtype=np.float32)
            else:
                a = np.empty(s.elems, np.float32)
                a.fill(0)  # fault the pages in: "existing arrays"
            setattr(m, f"w{j}", a)
        layers.append(m)
    root.layers = layers
    return root


def flat_dict(model) -> dict[str, np.ndarray]:
    """The same arrays as a flat ``{name: array}`` dict, for the competitors."""
    out = {}
    for i, m in enumerate(model.layers):
        for name, a in m.tracked_children():
            out[f"layers.{i}.{name}"] = a
    return out
