"""How many bytes opening and partly restoring a checkpoint read (issue 15's scaling targets).

``ck.load_checkpoint`` reads the index and nothing of the data; restoring a fraction of the
objects reads that fraction of the data bytes (plus the index), not the whole file. Bytes are
counted where the storage delivers them: a counting fsspec filesystem (``ckcount://``, fsspec's
in-memory one with a byte count per file) and, on local disk, the ``preadv`` calls.
"""

from __future__ import annotations

import os

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.formats import ckpt as fmt
from ckptcore.storage import local

PROTOCOL = "ckcount"


class CountingFS(MemoryFileSystem):
    """fsspec's memory filesystem, counting the bytes read from each file (``read_bytes[path]``)."""

    protocol = PROTOCOL
    store: dict = {}
    pseudo_dirs = [""]
    read_bytes: dict[str, int] = {}

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith(PROTOCOL + "://"):
            path = path[len(PROTOCOL) + 3:]
        return super()._strip_protocol(path)

    @classmethod
    def count(cls, path: str, n: int) -> None:
        cls.read_bytes[path] = cls.read_bytes.get(path, 0) + n

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        f = super()._open(path, mode, block_size, autocommit, cache_options, **kwargs)
        if mode == "rb":
            f.__class__ = _CountingFile
        return f

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        self.count(self._strip_protocol(path), len(data))
        return data


class _CountingFile(MemoryFile):
    def read(self, n=-1):
        data = super().read(n)
        CountingFS.count(self.path, len(data))
        return data

    def readinto(self, b):
        n = super().readinto(b)
        CountingFS.count(self.path, n)
        return n


fsspec.register_implementation(PROTOCOL, CountingFS, clobber=True)


def _model(modules: int, per: int, seed: int = 0, fill: bool = True):
    """``modules`` ck.Modules under ``root.blocks``, each ``.xs`` a list of ``per`` float32 arrays of random sizes."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 3000, modules * per).tolist()
    root = ck.Module()
    root.blocks = []
    for i in range(modules):
        m = ck.Module()
        m.xs = [np.full(n, k, np.float32) if fill else np.zeros(n, np.float32)
                for k, n in enumerate(sizes[i * per:(i + 1) * per], i * per)]
        root.blocks.append(m)
    return root


@pytest.fixture
def counting():
    CountingFS.store.clear()
    CountingFS.pseudo_dirs[:] = [""]
    CountingFS.read_bytes.clear()
    yield CountingFS
    CountingFS.store.clear()
    CountingFS.read_bytes.clear()


def _split(read: dict[str, int]) -> tuple[int, int]:
    """(index bytes, data bytes) read."""
    index = sum(n for p, n in read.items() if p.endswith(fmt.INDEX_SUFFIX))
    return index, sum(read.values()) - index


def test_opening_a_checkpoint_reads_the_index_and_no_data(counting):
    path = ck.Checkpoint(model=_model(50, 20)).write(f"{PROTOCOL}://run/ckpt")
    index_size = len(counting.store["/run/ckpt.index"].getvalue())
    counting.read_bytes.clear()
    reader = ck.load_checkpoint(path)
    assert len(reader.get_variable_to_shape_map()) == 50 * 20  # the whole table is known...
    index, data = _split(counting.read_bytes)
    assert index == index_size and data == 0  # ...from exactly the index's bytes


def test_restoring_one_percent_reads_one_percent_of_the_data(counting):
    src = _model(100, 20)
    path = ck.Checkpoint(model=src).write(f"{PROTOCOL}://run/ckpt")
    total = sum(a.nbytes for m in src.blocks for a in m.xs)
    dst = _model(100, 20, fill=False)
    part = ck.Module()
    part.blocks = dst.blocks[:1]  # one module of 100: 20 arrays of 2,000
    want = sum(a.nbytes for a in part.blocks[0].xs)
    counting.read_bytes.clear()
    ck.Checkpoint(model=part).restore(path).expect_partial()
    _, data = _split(counting.read_bytes)
    assert data == want  # exactly the restored arrays' bytes: about 1% of the data
    assert want < total // 50
    assert all((a == b).all() for a, b in zip(part.blocks[0].xs, src.blocks[0].xs))
    assert not dst.blocks[1].xs[0].any()  # the rest was neither read nor touched


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.sets(st.integers(0, 39), min_size=1, max_size=8), seed=st.integers(0, 2**16))
def test_a_partial_restore_reads_only_the_chosen_objects_bytes(counting, chosen, seed):
    counting.store.clear()
    # blocks under a dict keyed by position (a list would match the i-th live block to the i-th saved one)
    src, dst = _model(40, 5, seed=seed), _model(40, 5, seed=seed, fill=False)
    saved = ck.Module()
    saved.blocks = {str(i): m for i, m in enumerate(src.blocks)}
    path = ck.Checkpoint(model=saved).write(f"{PROTOCOL}://run/ckpt-{seed}")
    part = ck.Module()
    part.blocks = {str(i): dst.blocks[i] for i in chosen}
    counting.read_bytes.clear()
    ck.Checkpoint(model=part).restore(path).expect_partial()
    _, data = _split(counting.read_bytes)
    assert data == sum(a.nbytes for i in chosen for a in dst.blocks[i].xs)
    for i in range(40):
        for a, b in zip(dst.blocks[i].xs, src.blocks[i].xs):
            assert (a == b).all() if i in chosen else not a.any()


def test_on_local_disk_a_partial_restore_reads_little_more_than_its_bytes(tmp_path, monkeypatch):
    src = _model(100, 20)
    path = ck.Checkpoint(model=src).write(str(tmp_path / "ckpt"))
    dst = _model(100, 20, fill=False)
    part = ck.Module()
    part.blocks = dst.blocks[:1]
    want = sum(a.nbytes for a in part.blocks[0].xs)
    read = []
    real = os.preadv

    def counting_preadv(fd, bufs, offset):
        n = real(fd, bufs, offset)
        read.append(n)
        return n

    if not hasattr(os, "preadv"):
        pytest.skip("no os.preadv on this platform")  # pragma: no cover - Windows
    monkeypatch.setattr(local.os, "preadv", counting_preadv)
    ck.Checkpoint(model=part).restore(path).expect_partial()
    # neighbours are read together, gaps (alignment padding) included: at most one alignment per array more
    assert want <= sum(read) <= want + 20 * fmt.ALIGNMENT
    assert all((a == b).all() for a, b in zip(part.blocks[0].xs, src.blocks[0].xs))
