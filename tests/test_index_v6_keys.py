"""Index version 6: no tensor keys on disk; they follow from the graph, made only when asked for.

A version-6 index is what every checkpoint whose keys are the graph's own is written as. The
keys must come back exactly as the saver made them (object paths, escapes, shared objects,
slots, the root's own values), a restore must not make them at all, and an index whose graph
cannot give one distinct key per tensor is refused, naming the file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.formats import ckpt as fmt
from ckptcore.formats.ckpt_keys import KeyDerivation, NotDerivable
from ckptcore.save import plan_save


def _doc(raw: bytes) -> tuple[dict, bytes]:
    _magic, version, _flags, length, _crc = fmt._HEADER.unpack_from(raw, 0)
    return json.loads(raw[fmt.HEADER_SIZE:fmt.HEADER_SIZE + length]), raw[fmt.HEADER_SIZE + length:]


def _encode(doc: dict, section: bytes, version: int | None = None) -> bytes:
    """Index bytes of ``doc`` (header checksums right), so a test can change one field."""
    doc = dict(doc, version=version or doc["version"])
    doc["columns"] = {"nbytes": len(section), "crc32c": fmt.crc32c(section)}
    body = json.dumps(doc, separators=(",", ":")).encode()
    return fmt._HEADER.pack(fmt.MAGIC, doc["version"], 0, len(body), fmt.crc32c(body)) + body + section


def _model():
    m = ck.Module()
    m.w = np.arange(3.0)
    m.layers = [ck.Module(), {"a.b": np.ones(2), "c/d": np.zeros(1), "": np.full(1, 7.0)}]
    m.layers[0].k = ck.Variable(np.ones((2, 2)))
    m.alias = m.w          # a shared object: one node, the first path's key
    m.layers[0].up = m     # a cycle back to an ancestor
    return m


def test_an_index_is_written_without_keys_and_they_come_back_as_saved(tmp_path):
    m = _model()
    path = ck.Checkpoint(model=m, top=np.ones(1)).write(str(tmp_path / "c"))
    raw = open(path + ".index", "rb").read()
    doc, _ = _doc(raw)
    assert doc["version"] == fmt.DERIVED_KEYS_VERSION
    assert "key" not in doc["tensors"]
    assert set(doc["nodes"]["attribute"]) == {"names", "name"} and doc["nodes"]["attribute"]["names"] == \
        ["VARIABLE_VALUE"]
    assert set(doc["nodes"]["child_name"]) == {"names", "name"}
    saved = plan_save(ck.Checkpoint(model=m, top=np.ones(1)))
    reader = ck.load_checkpoint(path)
    assert reader.index.table.key == saved.index.table.key
    assert "model/layers/1/a..b/.ATTRIBUTES/VARIABLE_VALUE" in reader.index.table.key
    assert "model/layers/1/c.Sd/.ATTRIBUTES/VARIABLE_VALUE" in reader.index.table.key
    assert "model/layers/1//.ATTRIBUTES/VARIABLE_VALUE" in reader.index.table.key
    assert "model/alias/.ATTRIBUTES/VARIABLE_VALUE" not in reader.index.table.key   # (the shared array's key is w's)
    np.testing.assert_array_equal(reader.get_tensor("model/layers/1/a..b/.ATTRIBUTES/VARIABLE_VALUE"), np.ones(2))
    names = {k for k, _shape in ck.list_variables(path)}
    assert names == set(saved.index.table.key)


def test_one_tensor_is_found_without_making_every_key(tmp_path):
    m = _model()
    path = ck.Checkpoint(model=m, opt_free=np.zeros(1)).write(str(tmp_path / "c"))
    reader = ck.load_checkpoint(path)
    np.testing.assert_array_equal(reader.get_tensor("model/layers/1/c.Sd/.ATTRIBUTES/VARIABLE_VALUE"), np.zeros(1))
    assert reader.has_tensor("model/w/.ATTRIBUTES/VARIABLE_VALUE")
    for absent in ["model/alias/.ATTRIBUTES/VARIABLE_VALUE",      # a second path to the shared array
                   "model/layers/1/c/d/.ATTRIBUTES/VARIABLE_VALUE",  # unescaped
                   "model/layers/1/a.b/.ATTRIBUTES/VARIABLE_VALUE",  # not how the name is escaped
                   "model/w/.ATTRIBUTES/OTHER", "model/w", ".ATTRIBUTES/VARIABLE_VALUE", "",
                   "model/layers/0/up/w/.ATTRIBUTES/VARIABLE_VALUE"]:  # through the cycle
        assert not reader.has_tensor(absent), absent
    with pytest.raises(ck.KeyNotFoundError, match="model/nothing"):
        reader.get_tensor("model/nothing/.ATTRIBUTES/VARIABLE_VALUE")
    assert reader.index.table._key._keys is None
    assert sorted(reader.keys()) and reader.index.table._key._keys is not None   # all made now
    assert reader.has_tensor("model/w/.ATTRIBUTES/VARIABLE_VALUE")
    assert not reader.has_tensor("model/alias/.ATTRIBUTES/VARIABLE_VALUE")


def test_a_restore_does_not_make_the_keys(tmp_path):
    m = _model()
    path = ck.Checkpoint(model=m).write(str(tmp_path / "c"))
    dst = _model()
    dst.w[:] = 0
    status = ck.Checkpoint(model=dst).read(path)
    status.assert_consumed()
    np.testing.assert_array_equal(dst.w, np.arange(3.0))
    table = status._session.table if hasattr(status, "_session") else None
    if table is None:
        table = next(s.table for s in _sessions(status))
    assert type(table._key) is KeyDerivation and table._key._keys is None


def _sessions(status):
    for v in vars(status).values():
        if hasattr(v, "table") and hasattr(v, "graph"):
            yield v


def test_unmatched_values_are_named_by_their_derived_keys(tmp_path):
    src = ck.Module()
    src.a, src.b = np.ones(2), np.zeros(3)
    path = ck.Checkpoint(model=src).write(str(tmp_path / "c"))
    dst = ck.Module()
    dst.a = np.zeros(2)
    status = ck.Checkpoint(model=dst).read(path)
    with pytest.raises(AssertionError, match=r"model/b/\.ATTRIBUTES/VARIABLE_VALUE"):
        status.assert_consumed()
    status.expect_partial()  # (named above; no PartialRestoreWarning when the session goes)


def test_optimizer_slots_keys_follow_their_variable_and_optimizer(ckptcore_fresh_registry):
    class Opt:
        def __init__(self, params):
            self.params, self.m = params, {}

    class OptAdapter(ck.Adapter):
        name = "test.v6.opt"

        def slots(self, obj):
            return [ck.SlotVariable(p, "m/x", obj.m[id(p)]) for p in obj.params if id(p) in obj.m]

        def restore_slot(self, obj, variable, name, value):
            obj.m[id(variable)] = value

    ck.register_adapter(Opt, OptAdapter())
    w, v = np.ones(2), np.ones(3)
    opt = Opt([w, v])
    opt.m[id(w)], opt.m[id(v)] = np.full(2, 0.5), np.full(3, 0.25)
    root = ck.Checkpoint(net=ck.Module(), opt=opt)
    root.net.w, root.net.v = w, v
    saved = plan_save(root).index
    path = root.write("memory://v6/slots/c")
    assert _doc(open_bytes(path + ".index"))[0]["version"] == fmt.DERIVED_KEYS_VERSION
    back = ck.load_checkpoint(path).index
    assert back.table.key == saved.table.key
    assert "net/w/.OPTIMIZER_SLOT/opt/m.Sx/.ATTRIBUTES/VARIABLE_VALUE" in back.table.key
    assert [back.table.key_at(r) for r in range(len(back.table))] == saved.table.key
    fresh = ck.load_checkpoint(path).index.table
    assert [fresh.find(k) for k in saved.table.key] == list(range(len(saved.table.key)))   # slots found too
    assert fresh.find("net/w/.OPTIMIZER_SLOT/opt/m/x/.ATTRIBUTES/VARIABLE_VALUE") is None
    assert fresh.find("net/w/.OPTIMIZER_SLOT/net/m.Sx/.ATTRIBUTES/VARIABLE_VALUE") is None


def open_bytes(path: str) -> bytes:
    import fsspec

    with fsspec.open(path, "rb") as f:
        return f.read()


def test_keys_that_do_not_follow_from_the_graph_are_written_as_before():
    e = fmt.TensorEntry("my/own/key", "float32", (1,), 0, 0, 4, 0)
    index = fmt.Index(nodes=[fmt.Node(children=[("w", 1)]), fmt.Node(attributes={"VARIABLE_VALUE": e})],
                      shard_sizes=[4])
    raw = index.encode()
    doc, _ = _doc(raw)
    assert doc["version"] == fmt.FORMAT_VERSION and doc["tensors"]["key"] == ["my/own/key"]
    assert fmt.decode_index(raw, "x.index").table.key == ["my/own/key"]


def _v6(tmp_path) -> tuple[dict, bytes]:
    m = ck.Module()
    m.a = [np.ones(2), np.zeros(1)]
    raw = open(ck.Checkpoint(model=m).write(str(tmp_path / "c")) + ".index", "rb").read()
    return _doc(raw)


def _column(section: bytearray, values, dtype="<u1") -> dict:
    ref = {"dtype": dtype, "offset": len(section), "count": len(values)}
    section.extend(np.array(values, dtype).tobytes() + bytes(-len(values) * np.dtype(dtype).itemsize % 8))
    return ref


@pytest.mark.parametrize("change, message", [
    ("key list", "derives its tensor keys"),
    ("names not an object", "child_name must be an object"),
    ("name index out of range", "child_name.name must hold integers"),
    ("too few names", "child_name.name has"),
    ("node reached by no edge", "reached by no edge"),
    ("node first reached from a later node", "not from an earlier node"),
    ("root child named ''", "child named ''"),
    ("two children of one name", "two children named"),
])
def test_a_hostile_version_6_index_is_refused_naming_the_file(tmp_path, change, message):
    doc, section = _v6(tmp_path)
    section = bytearray(section)
    g, t = doc["nodes"], doc["tensors"]
    if change == "key list":
        t["key"] = ["a"] * 2
    elif change == "names not an object":
        g["child_name"] = ["model", "a", "0", "1"]
    elif change == "name index out of range":
        g["child_name"]["name"] = _column(section, [0, 1, 2, 9])
    elif change == "too few names":
        g["child_name"]["name"] = _column(section, [0, 1, 2])
    elif change == "node reached by no edge":
        # the root's one edge "model" points at node 2 instead of 1: nothing reaches node 1
        g["child"] = _column(section, [2, 2, 3, 4])
    elif change == "node first reached from a later node":
        # nodes: 0 root -> 1 model -> 2 list -> 3, 4 arrays; make node 2's only edge come from node 3
        g["num_children"] = _column(section, [1, 0, 2, 1, 0])
        g["child"] = _column(section, [1, 3, 4, 2])
    elif change == "root child named ''":
        g["child_name"]["names"][g["child_name"]["names"].index("model")] = ""
    elif change == "two children of one name":
        names = g["child_name"]["names"]
        g["child_name"]["name"] = _column(section, [names.index("model"), names.index("a"), names.index("0"),
                                                    names.index("0")])
    with pytest.raises(ck.CorruptCheckpointError, match=message) as err:
        fmt.decode_index(_encode(doc, bytes(section)), "bad.index")
    assert err.value.path == "bad.index"


def test_a_version_6_form_in_a_version_5_index_is_refused(tmp_path):
    doc, section = _v6(tmp_path)
    with pytest.raises(ck.CorruptCheckpointError, match="child_name must be a list of strings"):
        fmt.decode_index(_encode(doc, section, version=fmt.SLOT_COLUMNS_VERSION), "x.index")


def test_two_slot_rows_of_one_variable_and_name_are_refused():
    # two slots of one optimizer, variable and name would give two tensors one key
    def entry(key):
        return {"VARIABLE_VALUE": fmt.TensorEntry(key, "float32", (1,), 0, 0, 4, 0)}
    nodes = [fmt.Node(children=[("w", 1), ("opt", 2)]), fmt.Node(attributes=entry("w/.ATTRIBUTES/VARIABLE_VALUE")),
             fmt.Node(slots=[(1, "m", 3), (1, "v", 4)]),
             fmt.Node(adapter="ckptcore.slot", attributes=entry("w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE")),
             fmt.Node(adapter="ckptcore.slot", attributes=entry("w/.OPTIMIZER_SLOT/opt/v/.ATTRIBUTES/VARIABLE_VALUE"))]
    doc, section = _doc(fmt.Index(nodes=nodes, shard_sizes=[4]).encode())
    assert doc["version"] == fmt.DERIVED_KEYS_VERSION and doc["nodes"]["slots"]["names"] == ["m", "v"]
    fmt.decode_index(_encode(doc, section), "x.index")   # as written: fine
    doc["nodes"]["slots"]["names"] = ["m", "m"]
    with pytest.raises(ck.CorruptCheckpointError, match="same optimizer, variable and slot") as err:
        fmt.decode_index(_encode(doc, section), "x.index")
    assert err.value.path == "x.index"


names = st.text(st.characters(codec="utf-8"), max_size=6)


@st.composite
def graphs(draw):
    """A random tree of ck.Modules, lists and dicts of arrays, with shared leaves (reached twice)."""
    leaves = [np.full(draw(st.integers(1, 3)), float(i), np.float32) for i in range(draw(st.integers(1, 6)))]
    containers = [ck.Module()]
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["module", "list", "dict"]))
        parent = draw(st.sampled_from(containers))
        containers.append(_attach(parent, draw(names), ck.Module() if kind == "module" else [] if kind == "list"
                                  else {}))
    for leaf in leaves:
        for _ in range(draw(st.integers(1, 2))):
            _attach(draw(st.sampled_from(containers)), draw(names), leaf)
    return containers[0]


def _attach(parent, name, child):
    """``child`` under ``parent`` by ``name`` (lists append); returns what the parent holds (the tracked wrapper)."""
    if isinstance(parent, ck.Module):
        name = name if name and not name.startswith("_") else f"p{name}"
        setattr(parent, name, child)
        return getattr(parent, name)
    if isinstance(parent, list) or hasattr(parent, "append"):
        parent.append(child)
        return parent[-1]
    parent[name] = child
    return parent[name]


@settings(max_examples=60, deadline=None)
@given(graphs())
def test_derived_keys_are_the_savers_keys_for_any_graph(root):
    plan = plan_save(ck.Checkpoint(model=root))
    back = ck.load_checkpoint(ck.Checkpoint(model=root).write("memory://v6/any/c")).index
    keys = plan.index.table.key
    assert [back.table.find(k) for k in keys] == list(range(len(keys)))   # each found by walking the graph alone
    assert back.table._key._keys is None
    assert back.version == fmt.DERIVED_KEYS_VERSION
    assert back.table.key == plan.index.table.key
    assert len(set(back.table.key)) == len(back.table.key)


def test_two_slots_of_one_name_for_a_variable_are_refused_at_save(ckptcore_fresh_registry):
    # (they would be two values under one key: a checkpoint no reader accepts, found only on restore)
    class Twice:
        def __init__(self, p):
            self.p = p

    class TwiceAdapter(ck.Adapter):
        name = "test.v6.twice"

        def slots(self, obj):
            return [ck.SlotVariable(obj.p, "m", np.ones(1)), ck.SlotVariable(obj.p, "m", np.zeros(1))]

        def restore_slot(self, obj, variable, name, value):
            pass

    ck.register_adapter(Twice, TwiceAdapter())
    w = np.ones(1)
    with pytest.raises(ck.InvalidArgumentError, match=r"'opt' gave two slots named 'm' for 'w'"):
        ck.Checkpoint(w=w, opt=Twice(w)).write("memory://v6/twice/c")


def _node(children=(), attrs=(), slots=()):
    return fmt.Node(children=list(children), attributes=dict.fromkeys(attrs), slots=list(slots))


@pytest.mark.parametrize("nodes, message", [
    ([_node([("o", 1), ("w", 2)]), _node(slots=[(2, "m", 3), (2, "v", 3)]), _node(attrs=["x"]), _node(attrs=["x"])],
     "appears in two slot rows"),
    ([_node([("o", 1), ("w", 2)]), _node(slots=[(2, "m", 3)]), _node(attrs=["x"]), _node(attrs=["x", "y"])],
     "more than one attribute"),
    ([_node([("o", 1), ("w", 2), ("s", 3)]), _node(slots=[(2, "m", 3)]), _node(attrs=["x"]), _node(attrs=["x"])],
     "also reached by an edge"),
    ([_node([("o", 1), ("w", 2)]), _node(slots=[(2, "m", 3), (3, "m", 4)]), _node(attrs=["x"]), _node(attrs=["x"]),
      _node(attrs=["x"])], "belongs to a slot node"),
    ([_node([("o", 1)]), _node(slots=[(1, "m", 0)])], "the root is an optimizer slot"),
    ([_node([("o", 1), ("w", 2)]), _node(slots=[(2, "m", 3)]), _node(attrs=["x"]), _node([("c", 4)]),
      _node(attrs=["x"])], "a slot node has children"),
])
def test_graphs_that_give_no_distinct_key_per_tensor_are_not_derived(nodes, message):
    g = fmt.Graph.from_nodes(nodes)
    rows = [i for i, n in enumerate(nodes) for _ in n.attributes]
    with pytest.raises(NotDerivable, match=message):
        KeyDerivation.of(g, rows)


def _fuzz_source() -> tuple[dict, bytes]:
    """A version-6 index with shared objects, a cycle, escapes and optimizer slots, as (JSON, columns)."""
    class Opt:
        def __init__(self, params):
            self.params = params

    class OptAdapter(ck.Adapter):
        name = "test.v6.fuzz_opt"

        def slots(self, obj):
            return [ck.SlotVariable(p, n, np.ones(1)) for p in obj.params for n in ("m", "v/0")]

        def restore_slot(self, obj, variable, name, value):
            pass

    ck.register_adapter(Opt, OptAdapter())
    m = _model()
    raw = ck.Checkpoint(model=m, opt=Opt([m.w, m.layers[0].k])).write("memory://v6/fuzz/c")
    return _doc(open_bytes(raw + ".index"))


_COLUMNS = [("nodes", "child"), ("nodes", "num_children"), ("nodes", "num_attributes"), ("nodes", "child_name"),
            ("nodes", "attribute"), ("slots", "optimizer"), ("slots", "variable"), ("slots", "slot"),
            ("slots", "name")]


_FUZZ: list = []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_damaged_version_6_graph_is_refused_or_gives_distinct_keys(ckptcore_fresh_registry, data):
    """Any one value of the graph's columns changed (checksums made right again): the index is refused
    with a ckptcore error, or every tensor gets one distinct key, found again by walking the graph."""
    if not _FUZZ:
        _FUZZ.append(_fuzz_source())   # (made once: the bytes need no adapter to decode)
    doc, section = json.loads(json.dumps(_FUZZ[0][0])), _FUZZ[0][1]
    where, name = data.draw(st.sampled_from(_COLUMNS))
    table = doc["nodes"]["slots"] if where == "slots" else doc["nodes"]
    ref = table[name]["name"] if name in ("child_name", "attribute") else table[name]
    if not ref["count"]:
        return
    values = np.frombuffer(section, ref["dtype"], ref["count"], ref["offset"]).tolist()
    values[data.draw(st.integers(0, len(values) - 1))] = data.draw(st.integers(0, 12))
    sec = bytearray(section)
    new = _column(sec, values, "<u8")
    if name in ("child_name", "attribute"):
        table[name]["name"] = new
    else:
        table[name] = new
    try:
        index = fmt.decode_index(_encode(doc, bytes(sec)), "fuzz.index")
    except ck.CorruptCheckpointError:
        return
    t = index.table
    keys = list(t.key)
    assert len(set(keys)) == len(keys) == len(t)
    assert [t.find(k) for k in keys] == list(range(len(keys)))
