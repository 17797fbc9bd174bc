"""The framework-free multi-worker layer: assignment, merge, reshard planning, the pieces format,
and collective saves/restores over an in-process group of threads (ckptcore.distributed.ThreadGroup)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thread_ranks import on_threads

import ckptcore as ck
from ckptcore.distributed import CollectiveTimeoutError, ShardBuffer, ShardedValue, ThreadGroup
from ckptcore.distributed.merge import assign
from ckptcore.distributed.reshard import runs
from ckptcore.formats import ckpt as fmt
from ckptcore.formats.pieces import Pieces


class Sharded:
    """A test type: this worker's boxes of a global array (what a DTensor adapter describes)."""

    def __init__(self, shape, boxes):
        self.shape, self.boxes = shape, boxes  # boxes: [(start, array)]


class ShardedAdapter(ck.Adapter):
    name = "test.sharded"

    def attributes(self, obj):
        return ["VARIABLE_VALUE"]

    def get_value(self, obj, attr):
        return ShardedValue(obj.shape, obj.boxes[0][1].dtype, obj.boxes)

    def spec(self, obj, attr):
        return tuple(obj.shape), obj.boxes[0][1].dtype

    def restore_buffer(self, obj, attr):
        return ShardBuffer(obj.shape, obj.boxes[0][1].dtype, obj.boxes)

    def set_value(self, obj, attr, value):
        assert value.shards[0][1] is obj.boxes[0][1]  # filled in place


@pytest.fixture(autouse=True)
def _adapter():
    name = ck.register_adapter(Sharded, ShardedAdapter())
    yield
    ck.registry.unregister_plugin(name)


def split(shape, world, dim):
    """Boxes of an even-ish split of ``shape`` along ``dim`` (numpy.array_split bounds)."""
    bounds = np.array_split(np.arange(shape[dim]), world)
    out = []
    for b in bounds:
        start = [0] * len(shape)
        ext = list(shape)
        start[dim] = int(b[0]) if len(b) else shape[dim]
        ext[dim] = len(b)
        out.append((tuple(start), tuple(ext)))
    return out


def box_of(full, start, ext):
    return np.ascontiguousarray(full[tuple(slice(s, s + e) for s, e in zip(start, ext))])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3).flatmap(
    lambda shape: st.tuples(st.just(tuple(shape)),
                            st.tuples(*[st.integers(0, d - 1) for d in shape]),
                            st.tuples(*[st.integers(1, d) for d in shape]))))
def test_runs_cover_exactly_the_box(args):
    shape, lo, ext = args
    ext = tuple(min(e, d - s) for s, e, d in zip(lo, ext, shape))
    full = np.arange(int(np.prod(shape))).reshape(shape)
    offs, run = runs(shape, lo, ext)
    got = np.concatenate([full.reshape(-1)[o:o + run] for o in offs])
    np.testing.assert_array_equal(got, box_of(full, lo, ext).reshape(-1))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.lists(st.tuples(st.integers(1, 9), st.integers(0, 1), st.booleans()), min_size=1,
                                   max_size=6))
def test_assign_writes_each_box_exactly_once_by_a_holder(world, tensors):
    descs = [[] for _ in range(world)]
    for i, (n, dim, replicated) in enumerate(tensors):
        shape = [n, 3]
        for r in range(world):
            boxes = None if replicated else [[list(s), list(e)] for s, e in [split(shape, world, dim)[r]]]
            descs[r].append([f"t{i}", "float32", shape, boxes])
    plan = assign(descs)
    written = [(k, r) for r, ks in plan.items() for k in ks]
    keys = [k for k, _ in written]
    assert len(keys) == len(set(keys))  # no box twice
    for (row, start, extent), r in written:
        boxes = descs[r][row][3]
        assert boxes is None or [list(start), list(extent)] in boxes  # written by a worker that holds it
    for row, (n, _dim, _replicated) in enumerate(tensors):
        vol = sum(int(np.prod(e)) for (rw, _s, e) in keys if rw == row)
        assert vol == n * 3  # the whole tensor, once


def test_replicated_values_spread_over_workers():
    rows = [[f"v{i}", "float32", [1000], None] for i in range(8)]
    plan = assign([rows] * 4)
    assert sorted(len(v) for v in plan.values()) == [2, 2, 2, 2]


@pytest.mark.parametrize("save_world,save_dim,load_world,load_dim", [(2, 0, 3, 1), (3, 1, 2, 0), (2, 0, 1, 0),
                                                                      (1, 0, 2, 1)])
def test_collective_save_and_reshard_restore_on_threads(save_world, save_dim, load_world, load_dim):
    full = np.arange(7 * 5, dtype=np.float32).reshape(7, 5)
    path = f"memory://dist/core/{save_world}{save_dim}{load_world}{load_dim}/ckpt"
    extra = np.arange(3.0)  # replicated: the same on every worker

    def save(g):
        start, ext = split(full.shape, g.size, save_dim)[g.rank]
        obj = Sharded(full.shape, [(start, box_of(full, start, ext))])
        return ck.Checkpoint(w=obj, e=extra.copy()).save(path, ck.CheckpointOptions(process_group=g))
    paths = on_threads(save_world, save)
    assert paths == [path + "-1"] * save_world
    reader = ck.load_checkpoint(path + "-1")
    np.testing.assert_array_equal(reader.get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE"), full)
    np.testing.assert_array_equal(reader.get_tensor("e/.ATTRIBUTES/VARIABLE_VALUE"), extra)
    assert reader.verify() == full.nbytes + extra.nbytes + 8  # + save_counter, each written once

    def restore(g):
        start, ext = split(full.shape, g.size, load_dim)[g.rank]
        obj = Sharded(full.shape, [(start, np.zeros(ext, np.float32))])
        e = np.zeros(3)
        ck.Checkpoint(w=obj, e=e).restore(path + "-1", ck.CheckpointOptions(process_group=g)).assert_consumed()
        return np.array_equal(obj.boxes[0][1], box_of(full, start, ext)) and np.array_equal(e, extra)
    assert on_threads(load_world, restore) == [True] * load_world


def test_a_shape_mismatch_on_one_worker_fails_the_restore_everywhere_with_nothing_assigned():
    path = ck.Checkpoint(a=np.ones(4), b=np.ones(2)).write("memory://dist/core/mismatch/c")

    def restore(g):
        a, b = np.zeros(4), np.zeros(3 if g.rank == 1 else 2)
        try:
            ck.Checkpoint(a=a, b=b).read(path, ck.CheckpointOptions(process_group=g))
        except ck.CheckpointError as e:
            return type(e).__name__, bool(a.any() or b.any())
        return None
    (e0, touched0), (e1, touched1) = on_threads(2, restore)
    assert e1 == "ShapeMismatchError" and e0 == "_RemoteError"
    assert not touched0 and not touched1


def test_a_worker_that_fails_while_writing_fails_the_save_everywhere(monkeypatch):
    import ckptcore.save.write as saver

    real = saver._write_tensors
    path = "memory://dist/core/fail/c"

    def write(writer, items, progress):
        if threading.current_thread().name.endswith("rank1"):
            raise OSError("disk full")
        return real(writer, items, progress)
    monkeypatch.setattr(saver, "_write_tensors", write)

    def save(g):
        threading.current_thread().name = f"rank{g.rank}"
        return ck.Checkpoint(a=np.ones(100), b=np.ones(100)).write(path, ck.CheckpointOptions(process_group=g))
    r0, r1 = on_threads(2, save)
    assert isinstance(r0, ck.CheckpointError) and "rank 1 failed writing its section" in str(r0)
    assert isinstance(r1, OSError)
    with pytest.raises(ck.NotFoundError):
        ck.load_checkpoint(path)


def test_a_dead_worker_makes_the_others_raise_within_the_timeout():
    groups = ThreadGroup.create(2)
    with pytest.raises(CollectiveTimeoutError, match="within 0.2 s"):
        ck.Checkpoint(a=np.ones(2)).write("memory://dist/core/dead/c",
                                          ck.CheckpointOptions(process_group=groups[0], collective_timeout=0.2))
    with pytest.raises(ck.NotFoundError):
        ck.load_checkpoint("memory://dist/core/dead/c")


def _index_with(pieces, shape=(4,), sizes=(16, 16)):
    e = fmt.TensorEntry("w", "float32", shape, 0, 0, 4 * int(np.prod(shape)), 0)
    return fmt.Index(nodes=[fmt.Node(attributes={"VARIABLE_VALUE": e})], num_shards=2, shard_sizes=list(sizes),
                     pieces=pieces).encode()


@pytest.mark.parametrize("pieces,match", [
    (Pieces([0, 0], [0, 1], [0, 0], [8, 8], [0, 0], [(0,), (1,)], [(2,), (2,)]), "overlap"),
    (Pieces([0, 0], [0, 1], [0, 0], [8, 8], [0, 0], [(0,), (3,)], [(2,), (2,)]), "outside its shape"),
    (Pieces([0], [0], [0], [8], [0], [(0,)], [(2,)]), "do not add up"),
    (Pieces([0, 0], [0, 1], [0, 12], [8, 8], [0, 0], [(0,), (2,)], [(2,), (2,)]), "past the end"),
    (Pieces([0, 0], [0, 1], [0, 0], [8, 4], [0, 0], [(0,), (2,)], [(2,), (2,)]), "records 4 bytes"),
])
def test_hostile_pieces_are_rejected(pieces, match):
    with pytest.raises(ck.CorruptCheckpointError, match=match):
        fmt.decode_index(_index_with(pieces), "x.index")


def test_an_index_without_pieces_records_none():
    # (version 3 added the pieces; an index without them is written as it would be without that version)
    index = ck.load_checkpoint(ck.Checkpoint(a=np.ones(2)).write("memory://dist/core/v2/c")).index
    assert index.pieces is None and index.version == fmt.DERIVED_KEYS_VERSION


class _CountingReader:
    """A data-file reader that counts its read calls (to see runs read as one span)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def readinto(self, offset, buf):
        self.calls += 1
        return self.inner.readinto(offset, buf)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=3).flatmap(
    lambda shape: st.tuples(st.just(tuple(shape)),
                            st.tuples(*[st.integers(0, d - 1) for d in shape]),
                            st.tuples(*[st.integers(1, d) for d in shape]))),
       st.sampled_from([(0, 8 << 20), (64 << 10, 8 << 20), (64 << 10, 16), (1 << 30, 1 << 30)]),
       st.sampled_from(["float32", "int16", "float64"]))
def test_a_box_read_in_spans_equals_the_slice_whatever_the_span_limits(tmp_path_factory, args, limits, dtype):
    """fill_box groups close runs into one read and copies them apart: the box equals numpy's slice."""
    from contextlib import ExitStack

    from ckptcore.distributed import reshard

    shape, lo, ext = args
    ext = tuple(min(e, d - s) for s, e, d in zip(lo, ext, shape))
    full = (np.arange(int(np.prod(shape))) * 3 - 7).astype(dtype).reshape(shape)
    path = ck.Checkpoint(a=full).write(str(tmp_path_factory.mktemp("span") / "c"))
    reader = ck.load_checkpoint(path)
    row = reader.index.table.key.index("a/.ATTRIBUTES/VARIABLE_VALUE")
    dest = np.full(ext, -1, dtype)
    old = reshard.SPAN_GAP_BYTES, reshard.SPAN_MAX_BYTES
    reshard.SPAN_GAP_BYTES, reshard.SPAN_MAX_BYTES = limits
    try:
        with ExitStack() as stack:
            readers = reshard._Readers(reader, stack)
            counting = _CountingReader(readers.get(0))
            readers.open[0] = counting
            reshard.fill_box(reader, readers, row, lo, dest, verify=True)
    finally:
        reshard.SPAN_GAP_BYTES, reshard.SPAN_MAX_BYTES = old
    np.testing.assert_array_equal(dest, box_of(full, lo, ext))
    n_runs = len(runs(shape, lo, ext)[0])
    if limits[0] == 0 and n_runs > 1 and ext[-1] < shape[-1]:
        assert counting.calls == n_runs          # gaps never bridged: a read per run
    if limits == (1 << 30, 1 << 30):
        assert counting.calls == 1               # everything within limits: one read


def _spans_reference(boffs, rb, gap_limit, max_limit):
    """The rule, one run at a time: a span ends where the next run is too far or would make it too long."""
    out, first = [], 0
    for k in range(1, len(boffs)):
        gap = boffs[k] - boffs[k - 1] - rb
        if gap > gap_limit or boffs[k] - boffs[first] + rb > max_limit:
            out.append((first, k))
            first = k
    out.append((first, len(boffs)))
    return out


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 64), st.lists(st.integers(0, 300), min_size=1, max_size=60),
       st.sampled_from([(0, 1 << 20), (16, 64), (100, 256), (1 << 30, 1 << 30), (8, 1)]))
def test_spans_group_runs_as_one_read_at_a_time_would(rb, gaps, limits):
    from ckptcore.distributed import reshard

    boffs = np.cumsum([0] + [rb + g for g in gaps[1:]]).astype(np.int64)
    old = reshard.SPAN_GAP_BYTES, reshard.SPAN_MAX_BYTES
    reshard.SPAN_GAP_BYTES, reshard.SPAN_MAX_BYTES = limits
    try:
        got = reshard._spans(boffs, rb)
    finally:
        reshard.SPAN_GAP_BYTES, reshard.SPAN_MAX_BYTES = old
    assert got == _spans_reference(boffs.tolist(), rb, *limits)


def _rank_counting_fs():
    """fsspec's memory filesystem (``ckrankcount://``) counting the data-file bytes each worker thread reads."""
    import fsspec
    from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

    class FS(MemoryFileSystem):
        protocol = "ckrankcount"
        store: dict = {}
        pseudo_dirs = [""]
        read: dict[str, int] = {}

        @classmethod
        def _strip_protocol(cls, path):
            if isinstance(path, str) and path.startswith("ckrankcount://"):
                path = path[len("ckrankcount://"):]
            return super()._strip_protocol(path)

        @classmethod
        def count(cls, path, n):
            if ".data-" in path:
                who = threading.current_thread().name
                cls.read[who] = cls.read.get(who, 0) + n

        def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
            f = super()._open(path, mode, block_size, autocommit, cache_options, **kwargs)
            if mode == "rb":
                f.__class__ = File
            return f

        def cat_file(self, path, start=None, end=None, **kwargs):
            data = super().cat_file(path, start=start, end=end, **kwargs)
            self.count(self._strip_protocol(path), len(data))
            return data

    class File(MemoryFile):
        def read(self, n=-1):
            data = super().read(n)
            FS.count(self.path, len(data))
            return data

        def readinto(self, b):
            n = super().readinto(b)
            FS.count(self.path, n)
            return n

    fsspec.register_implementation("ckrankcount", FS, clobber=True)
    return FS


@pytest.mark.parametrize("load_dim", [0, 1])
def test_each_worker_reads_only_the_bytes_of_its_own_boxes(load_dim):
    """Saved at world 2 split by rows, restored at world 4 by rows or by columns: each worker reads exactly
    the bytes of its box from the data files (rows of 128 KiB: the column runs are too far apart to be read
    as one span), never the whole array."""
    fs = _rank_counting_fs()
    full = np.arange(8 * 32768, dtype=np.float32).reshape(8, 32768)
    path = f"ckrankcount://dist/core/bytes{load_dim}/c"

    def save(g):
        start, ext = split(full.shape, g.size, 0)[g.rank]
        return ck.Checkpoint(w=Sharded(full.shape, [(start, box_of(full, start, ext))])).write(
            path, ck.CheckpointOptions(process_group=g))
    on_threads(2, save)
    fs.read.clear()

    def restore(g):
        start, ext = split(full.shape, g.size, load_dim)[g.rank]
        obj = Sharded(full.shape, [(start, np.zeros(ext, np.float32))])
        ck.Checkpoint(w=obj).read(path, ck.CheckpointOptions(process_group=g)).assert_consumed()
        assert np.array_equal(obj.boxes[0][1], box_of(full, start, ext))
        return threading.current_thread().name, obj.boxes[0][1].nbytes
    got = on_threads(4, restore)
    assert all(isinstance(r, tuple) for r in got), got
    assert {name: fs.read.get(name, 0) for name, _ in got} == dict(got)   # exactly its own bytes
