"""The fast paths of restore give the same results as the general adapter protocol.

Restore inlines the built-in numpy adapter (a writable C-contiguous array is filled in
place, with no ``spec``/``restore_buffer``/``set_value`` calls) and reads runs of small
tensors with one ``preadv`` straight into the arrays. These tests pin the cases where
the general path must still run, with the compiled planner (``restore/_plan_fast.pyx``) and
with the Python one.
"""

from __future__ import annotations

import numpy as np
import pytest

import ckptcore as ck
from ckptcore import data_reads
from ckptcore.storage import local as storage


@pytest.fixture(autouse=True, params=["compiled", "python"])
def planner(request, monkeypatch):
    """Every test here runs with the compiled planner of plain arrays and with the Python one."""
    from ckptcore.restore import session

    if request.param == "python":
        monkeypatch.setattr(session, "_plan_plain_arrays", None)
        monkeypatch.setattr(session, "_match_aligned", None)
    elif session._plan_plain_arrays is None:  # CKPTCORE_PURE_PYTHON=1: test_compiled_planner.py says why
        pytest.skip("the compiled planner is turned off in this run")
    return request.param


def _save(prefix, **arrays):
    src = ck.Module()
    for k, v in arrays.items():
        setattr(src, k, v)
    return ck.Checkpoint(m=src).write(prefix)


def test_an_adapter_registered_for_ndarray_replaces_the_inlined_one(prefix):
    calls = []

    class Logging(ck.builtin.numpy_adapters.NumpyArrayAdapter):
        name = "test.logging-numpy"

        def set_value(self, obj, attr, value):
            calls.append(attr)
            super().set_value(obj, attr, value)

    path = _save(prefix, w=np.arange(3.0))
    plugin = ck.register_adapter(np.ndarray, Logging(), priority=10)
    try:
        dst = ck.Module()
        dst.w = np.zeros(3)
        ck.Checkpoint(m=dst).read(path).assert_consumed()
    finally:
        ck.registry.unregister_plugin(plugin)
    assert calls == ["VARIABLE_VALUE"] and dst.w.tolist() == [0.0, 1.0, 2.0]


def test_ndarray_subclasses_take_the_adapter_path(prefix):
    class Tagged(np.ndarray):
        pass

    path = _save(prefix, w=np.arange(4.0))
    dst = ck.Module()
    dst.w = np.zeros(4).view(Tagged)
    ck.Checkpoint(m=dst).read(path).assert_consumed()
    assert type(dst.w) is Tagged and dst.w.tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("live", ["fortran", "strided", "other dtype", "read-only"])
def test_arrays_the_fast_path_cannot_fill_in_place(prefix, live):
    value = np.arange(12.0).reshape(3, 4)
    path = _save(prefix, w=value)
    dst = ck.Module()
    if live == "fortran":
        dst.w = np.zeros((3, 4), order="F")
    elif live == "strided":
        dst.w = np.zeros((3, 8))[:, ::2]
    elif live == "other dtype":
        dst.w = np.zeros((3, 4), np.float32)
    else:
        dst.w = np.zeros((3, 4))
        dst.w.flags.writeable = False
    if live in ("other dtype", "read-only"):
        with pytest.raises(ck.CheckpointError):
            ck.Checkpoint(m=dst).read(path)
        assert not dst.w.any()  # nothing assigned
        return
    ck.Checkpoint(m=dst).read(path).assert_consumed()
    np.testing.assert_array_equal(dst.w, value)


def test_one_live_array_under_two_names_gets_one_of_the_values(prefix):
    path = _save(prefix, a=np.full(8, 1.0), b=np.full(8, 2.0))
    shared = np.zeros(8)
    dst = ck.Module()
    dst.a = shared
    dst.b = shared
    ck.Checkpoint(m=dst).read(path).assert_consumed()
    assert shared.tolist() in ([1.0] * 8, [2.0] * 8)


def test_scattered_reads_handle_gaps_and_repeats(prefix, monkeypatch):
    """One run of small tensors with padding between them, asked for twice in one read."""
    sizes = [1, 3, 17, 64, 5]
    arrays = {f"x{i}": np.arange(n, dtype=np.uint8) + i for i, n in enumerate(sizes)}
    path = _save(prefix, **arrays)
    r = ck.load_checkpoint(path)
    entries = [r.entry(f"m/x{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in range(len(sizes))]
    got = []
    r.read([(e, None, got.append) for e in entries + entries])
    by_len = sorted((len(a), a.tolist()) for a in got)
    assert by_len == sorted((len(v), v.tolist()) for v in list(arrays.values()) * 2)


def test_readv_sizes_and_zero_length_buffers(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(bytes(range(40)))
    rd = storage._LocalReader(str(p))
    try:
        a, empty, b = np.zeros(2, np.int64), np.zeros(0, np.float32), np.zeros(3, np.uint8)
        assert rd.readv(4, [a, empty, b]) == 19
        assert a.view(np.uint8).tolist() == list(range(4, 20)) and b.tolist() == [20, 21, 22]
        c = np.zeros(5, np.uint8)
        assert rd.readv(38, [c], [5]) == 2  # past the end: a short count, never an error
        import ml_dtypes  # without sizes, byte lengths come from the arrays, whatever their dtype
        bf = np.zeros(3, ml_dtypes.bfloat16)
        assert rd.readv(0, [bf]) == 6 and bf.view(np.uint8).tolist() == list(range(6))
    finally:
        rd.close()


def test_corrupt_tensor_in_a_run_is_named(prefix):
    arrays = {f"x{i}": np.full(10, float(i)) for i in range(50)}
    path = _save(prefix, **arrays)
    r = ck.load_checkpoint(path)
    bad = r.entry("m/x37/.ATTRIBUTES/VARIABLE_VALUE")
    with open(path + ".data-00000-of-00001", "r+b") as f:
        f.seek(bad.offset + 5)
        byte = f.read(1)
        f.seek(bad.offset + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    dst = ck.Module()
    for k in arrays:
        setattr(dst, k, np.zeros(10))
    with pytest.raises(ck.CorruptCheckpointError) as info:
        ck.Checkpoint(m=dst).read(path)
    assert info.value.key == "m/x37/.ATTRIBUTES/VARIABLE_VALUE"
    assert data_reads.SMALL_READ > 80  # the tensors were read as one scattered run


def test_short_system_calls_with_dtypes_memoryview_cannot_describe(prefix, monkeypatch):
    """Arrays go to writev/preadv as they are; a partial transfer continues inside a bfloat16 or
    unicode array, which ``memoryview`` itself refuses to describe."""
    import ml_dtypes

    real_writev, real_preadv = storage.os.writev, storage.os.preadv

    def short(real):
        def call(fd, bufs, *offset):
            first = np.asarray(bufs[0]).reshape(-1).view(np.uint8) if hasattr(bufs[0], "dtype") else bufs[0]
            return real(fd, [memoryview(first).cast("B")[: max(1, len(memoryview(first).cast("B")) // 3)]], *offset)
        return call

    monkeypatch.setattr(storage.os, "writev", short(real_writev))
    monkeypatch.setattr(storage.os, "preadv", short(real_preadv))
    values = {"bf": np.arange(50, dtype=np.float32).astype(ml_dtypes.bfloat16),
              "u": np.array(["alpha", "beta", "gamma"]), "f": np.arange(7.0)}
    path = _save(prefix, **values)
    dst = ck.Module()
    for k, v in values.items():
        setattr(dst, k, np.zeros_like(v))
    ck.Checkpoint(m=dst).read(path).assert_consumed()
    for k, v in values.items():
        np.testing.assert_array_equal(getattr(dst, k), v)


@pytest.mark.parametrize("verify", [True, False])
def test_read_rows_in_any_order_with_new_and_given_buffers(prefix, monkeypatch, verify):
    """``read_rows``: unsorted rows, some into given arrays, some into new ones, large ones read alone."""
    monkeypatch.setattr(data_reads, "SMALL_READ", 4096)  # the 1000-element tensors count as large
    sizes = [5, 1000, 3, 0, 17, 1000, 64, 1]
    arrays = {f"x{i}": np.arange(n, dtype=np.float64) * (i + 1) for i, n in enumerate(sizes)}
    path = _save(prefix, **arrays)
    r = ck.load_checkpoint(path)
    t = r.index.table
    rows = list(range(len(t)))[::-1]  # against file order
    dests = [np.zeros(t.shape[i]) if i % 2 else None for i in rows]
    got = {}
    callbacks = [(lambda a, i=i: got.__setitem__(i, a)) if i % 3 else None for i in rows]
    r.read_rows(rows, dests, callbacks, verify=verify)
    expect = {f"m/x{i}/.ATTRIBUTES/VARIABLE_VALUE": v for i, v in enumerate(arrays.values())}
    for i, dest, cb in zip(rows, dests, callbacks):
        value = expect[t.key[i]]
        if dest is not None:
            np.testing.assert_array_equal(dest, value)
        if cb is not None:
            np.testing.assert_array_equal(got[i], value)


def test_read_rows_names_the_tensor_a_truncated_file_cuts(prefix):
    arrays = {f"x{i}": np.full(100, float(i)) for i in range(30)}
    path = _save(prefix, **arrays)
    r = ck.load_checkpoint(path)
    cut = r.entry("m/x20/.ATTRIBUTES/VARIABLE_VALUE")
    rows = list(range(len(r.index.table)))
    r.check_data_files()  # the sizes were fine when the checkpoint was opened
    with open(path + ".data-00000-of-00001", "r+b") as f:
        f.truncate(cut.offset + 10)
    with pytest.raises(ck.CorruptCheckpointError, match="truncated") as info:
        r.read_rows(rows, [None] * len(rows), [None] * len(rows))
    assert info.value.key == cut.key


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ckptcore import graph  # noqa: E402
from ckptcore import save as saver  # noqa: E402


@st.composite
def _graphs(draw):
    """Modules, lists and arrays with shared objects and cycles."""
    n = draw(st.integers(1, 8))
    mods = [ck.Module() for _ in range(n)]
    leaves = [np.full(draw(st.integers(0, 3)), float(i)) for i in range(draw(st.integers(0, 5)))]
    targets = st.sampled_from(range(n + len(leaves)))
    for m in mods:
        for name in draw(st.lists(st.sampled_from(["a", "b", "c/d", "e.f", "g"]), max_size=3, unique=True)):
            k = draw(targets)
            value = mods[k] if k < n else leaves[k - n]
            if draw(st.booleans()):
                value = [value, leaves[0]] if leaves else [value]
            setattr(m, name.replace("/", "_").replace(".", "_"), value)
    return mods[0]


@settings(max_examples=80, deadline=None)
@given(_graphs())
def test_save_plan_visits_the_graph_as_walk_does(root):
    """The save traversal (inlined for speed) numbers objects and edges exactly as graph.walk does."""
    live = graph.walk(root)
    g = saver.plan_save(root).graph
    assert len(g) == len(live)
    for i, node in enumerate(live):
        assert g.children(i) == node.children
        assert g.adapter[i] == node.adapter.name
    keys = [e.key for e, _ in saver.plan_save(root).tensors]
    assert keys == [ck.naming.object_key(n.path, "VARIABLE_VALUE") for n in live if n.adapter.attributes(n.obj)]


# -- matching children that line up with the saved edges (RestoreSession._match's C-level pass) -------------
def _list_model(items):
    m = ck.Module()
    m.xs = items
    return m


def test_lined_up_list_items_restore_as_the_per_child_path_does(prefix):
    src = _list_model([np.full(3, i, np.float32) for i in range(5)] + [ck.Variable(np.ones(2))])
    path = ck.Checkpoint(m=src).write(prefix)
    dst = _list_model([np.zeros(3, np.float32) for _ in range(5)] + [ck.Variable(np.zeros(2))])
    status = ck.Checkpoint(m=dst).read(path).assert_consumed()
    assert [x.tolist() for x in dst.xs[:5]] == [[float(i)] * 3 for i in range(5)]
    assert dst.xs[5].numpy().tolist() == [1.0, 1.0]
    assert status.session.matched_node(dst.xs[2]) is not None


def test_a_lined_up_item_with_children_the_checkpoint_lacks_is_reported(prefix):
    src = _list_model([np.zeros(2), ck.Module()])
    path = ck.Checkpoint(m=src).write(prefix)
    extra = ck.Module()
    extra.w = np.ones(2)  # the saved Module had no children: this one's value is not in the checkpoint
    dst = _list_model([np.zeros(2), extra])
    with pytest.raises(AssertionError, match="xs/1/w"):
        ck.Checkpoint(m=dst).read(path).assert_consumed()


def test_a_lined_up_item_that_is_a_container_is_walked_below(prefix):
    src = _list_model([np.zeros(2), [np.arange(3.0), np.arange(4.0)]])
    path = ck.Checkpoint(m=src).write(prefix)
    dst = _list_model([np.zeros(2), [np.zeros(3), np.zeros(4)]])
    ck.Checkpoint(m=dst).read(path).assert_consumed()
    assert dst.xs[1][1].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_shared_item_among_lined_up_ones_is_restored_once(prefix):
    shared = np.arange(2.0)
    src = _list_model([shared, np.ones(2), shared])
    path = ck.Checkpoint(m=src).write(prefix)
    live = np.zeros(2)
    dst = _list_model([live, np.zeros(2), live])
    status = ck.Checkpoint(m=dst).read(path).assert_consumed()
    assert live.tolist() == [0.0, 1.0] and len(status.session.node_objs) == 5  # root, m, xs, shared, ones


def test_lined_up_items_of_a_wrong_shape_fail_naming_the_item(prefix):
    path = ck.Checkpoint(m=_list_model([np.zeros(2), np.zeros(3)])).write(prefix)
    dst = _list_model([np.zeros(2), np.zeros(4)])
    with pytest.raises(ck.CheckpointError, match="m/xs/1"):
        ck.Checkpoint(m=dst).read(path)
    assert not dst.xs[0].any()


def test_items_in_another_order_take_the_per_child_path(prefix):
    src = ck.Module()
    src.d = {"a": np.zeros(1), "b": np.ones(1)}
    path = ck.Checkpoint(m=src).write(prefix)
    dst = ck.Module()
    dst.d = {"b": np.zeros(1), "a": np.full(1, 5.0)}  # same names, other order
    ck.Checkpoint(m=dst).read(path).assert_consumed()
    assert dst.d["a"].tolist() == [0.0] and dst.d["b"].tolist() == [1.0]


# -- saving column by column (save.write._write_columns, the walk's runs of plain arrays) --------------------------
def _mixed_model():
    rng = np.random.default_rng(3)
    m = ck.Module()
    m.xs = [(np.arange(int(n)) % 7).astype(dt) for n, dt in zip(rng.integers(1, 3000, 30),
                                                         [np.float32, np.int8, np.float64, np.uint16, np.bool_] * 6)]
    m.big = np.arange(1 << 15, dtype=np.float64)        # 256 KiB: starts at a multiple of 64 bytes
    m.d = {"a": np.zeros((3, 5), np.float16), "v": ck.Variable(np.ones(7, np.int64))}
    m.t = np.zeros((4, 6))[:, ::2]                      # not C-contiguous: the adapter path
    m.blocks = [ck.Module() for _ in range(3)]
    for k, b in enumerate(m.blocks):
        b.xs = [np.full(k + 1, k, np.float32), np.full(5, k, np.int8), np.full(20000 + k, k, np.float32)]
    return m


def test_a_local_save_writes_the_same_files_as_the_per_tensor_path(tmp_path):
    """The column-wise local writer lays out, checksums and indexes exactly as the per-tensor writer."""
    m = _mixed_model()
    local = ck.Checkpoint(m=m).write(str(tmp_path / "local"))
    mem = ck.Checkpoint(m=m).write("memory://fast_paths/columns/c")  # no writev of arrays: per tensor
    st, p = ck.storage.open_storage(mem)
    with open(local + ".index", "rb") as f:
        assert f.read() == st.read_bytes(p + ".index")
    with open(local + ".data-00000-of-00001", "rb") as f:
        assert f.read() == st.read_bytes(p + ".data-00000-of-00001")
    table = ck.load_checkpoint(local).index.table
    large = [o for o, n in zip(table.offset, table.nbytes) if n >= 1 << 16]
    assert len(large) == 4 and all(o % 64 == 0 for o in large) and sorted(large)[1] > 0  # large ones at 64 bytes
    dst = _mixed_model()
    for x in dst.xs:
        x[...] = 0
    ck.Checkpoint(m=dst).read(local).assert_consumed()
    assert all(np.array_equal(a, b) for a, b in zip(dst.xs, m.xs))


def test_plan_tensors_after_a_column_write_hold_the_layout(tmp_path):
    from ckptcore.storage import open_storage

    plan = saver.plan_save(_mixed_model())
    st, p = open_storage(str(tmp_path / "c"))
    saver.write_plan(st, p, plan)
    table = ck.load_checkpoint(str(tmp_path / "c")).index.table
    assert [(e.key, e.offset, e.crc32c) for e, _ in plan.tensors] == list(zip(table.key, table.offset, table.crc32c))


# -- the session's match tables, filled only when consulted (RestoreSession._file_matches) ------------------
def test_unmatched_keys_before_and_after_the_match_tables_are_filled(prefix):
    src = _list_model([np.ones(2), np.ones(3)])
    src.extra = np.ones(4)
    path = ck.Checkpoint(m=src).write(prefix)
    dst = _list_model([np.zeros(2), np.zeros(3)])
    status = ck.Checkpoint(m=dst).read(path)
    session = status.session
    assert session._unfiled  # nothing looked up yet
    assert session.unmatched_checkpoint_keys() == ["m/extra/.ATTRIBUTES/VARIABLE_VALUE"]
    assert session.matched_node(dst.xs[1]) is not None and not session._unfiled
    assert session.unmatched_checkpoint_keys() == ["m/extra/.ATTRIBUTES/VARIABLE_VALUE"]
    dst.extra = np.zeros(4)  # the deferred value: a second step, which looks up the first step's matches
    assert dst.extra.tolist() == [1.0] * 4 and session.unmatched_checkpoint_keys() == []
    status.assert_consumed()


def test_an_object_at_a_dead_matches_address_is_not_matched(prefix):
    # The match tables are keyed by id(): filed after a matched array died, a new array at its address
    # (CPython reuses a freed block at once, as a rule) must not be taken for the restored one.
    path = ck.Checkpoint(m=_list_model([np.ones(2), np.ones(3)])).write(prefix)
    dst = _list_model([np.zeros(2), np.zeros(3)])
    session = ck.Checkpoint(m=dst).read(path).session
    old_id = id(dst.xs[1])
    dst.xs[1] = None   # the restored array dies before anything was looked up
    new = np.zeros(3)
    reused = id(new) == old_id
    assert session.matched_node(new) is None, f"address reused: {reused}"
    assert session.matched_node(None) is None   # (what a dead weak reference gives: never an entry)
    assert session.matched_node(dst.xs[0]) is not None


def test_one_object_matched_to_two_nodes_is_listed_under_both(prefix):
    src = ck.Module()
    src.a, src.b = np.arange(2.0), np.arange(2.0)  # two saved values
    path = ck.Checkpoint(m=src).write(prefix)
    dst = ck.Module()
    shared = np.zeros(2)
    dst.a = dst.b = shared  # one live array for both
    session = ck.Checkpoint(m=dst).read(path).session
    nodes = {nid for nid, refs in session.node_objs.items()
             if any(r() is shared for r in (refs if type(refs) is list else [refs]))}
    assert len(nodes) == 2 and session.matched_node(shared) in nodes


def test_an_adapter_failing_in_children_during_restore_is_named_by_its_path():
    # restore builds a container's path only when there is an error to report: it must still be right
    class Box:
        def __init__(self, fail):
            self.v, self.fail = np.ones(2), fail

    class BoxAdapter(ck.Adapter):
        name = "test.failing-box"

        def children(self, obj):
            if obj.fail:
                raise RuntimeError("boom")
            return [("v", obj.v)]

    plugin = ck.register_adapter(Box, BoxAdapter())
    try:
        def model(fail):
            m = ck.Module(); m.blocks = [ck.Module(), ck.Module()]; m.blocks[1].inner = Box(fail)
            return m
        path = ck.Checkpoint(model=model(False)).write("memory://fast-paths/failing-box/c")
        with pytest.raises(ck.CheckpointError, match=r"cannot track model/blocks/1/inner: children\(\) of its "
                                                     r"adapter 'test.failing-box' failed: RuntimeError: boom"):
            ck.Checkpoint(model=model(True)).read(path)
    finally:
        ck.registry.unregister_plugin(plugin)
