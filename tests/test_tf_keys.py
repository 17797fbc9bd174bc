"""Keys are TensorFlow's to the letter (``trackable_utils.checkpoint_key`` / ``slot_variable_key``).

TF builds ``f"{object_path}/.ATTRIBUTES/{name}"`` and
``f"{variable_path}/.OPTIMIZER_SLOT/{optimizer_path}/{slot}"``: an empty (root) path still
has its ``/``. A namedtuple's items are tracked by field name first, then by index
(``data_structures._TupleWrapper``), so its keys use the field names. Checkpoints written
by ckptcore before it followed these rules still restore, and their keys read in TF's form.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import naming
from ckptcore.formats import ckpt as fmt

NT = collections.namedtuple("NT", "kernel bias")


class Opt:
    def __init__(self, w):
        self.w = w


class OptAdapter(ck.Adapter):
    name = "test.tf_keys.opt"

    def children(self, obj):
        return [("w", obj.w)]

    def slots(self, obj):
        return [ck.SlotVariable(variable=obj.w, name="m", value=np.full(2, 5.0))]

    def restore_slot(self, obj, variable, name, value):
        obj.restored = (variable, name, np.array(value))


@pytest.fixture
def opt_adapter():
    plugin = ck.register_adapter(Opt, OptAdapter())
    yield
    ck.registry.unregister_plugin(plugin)


def test_naming_functions_match_tf():
    assert naming.object_key([], "VARIABLE_VALUE") == "/.ATTRIBUTES/VARIABLE_VALUE"
    assert naming.object_key(["a", "b"], "VARIABLE_VALUE") == "a/b/.ATTRIBUTES/VARIABLE_VALUE"
    assert naming.slot_key([], ["opt"], "m") == "/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE"
    assert naming.slot_key(["w"], [], "m") == "w/.OPTIMIZER_SLOT//m/.ATTRIBUTES/VARIABLE_VALUE"
    assert naming.slot_key(["m", "w"], ["opt"], "a/b") == "m/w/.OPTIMIZER_SLOT/opt/a.Sb/.ATTRIBUTES/VARIABLE_VALUE"


def test_root_attribute_keys_keep_tf_leading_slash():
    path = ck.Checkpoint(root=ck.Variable(3.0)).write("memory://tfkeys/root/v")
    assert ck.list_variables(path) == [("/.ATTRIBUTES/VARIABLE_VALUE", [])]
    assert float(ck.load_checkpoint(path).get_tensor("/.ATTRIBUTES/VARIABLE_VALUE")) == 3.0
    from ckptcore import save as saver
    assert [e.key for e, _ in saver.plan_save(np.ones(2)).tensors] == ["/.ATTRIBUTES/VARIABLE_VALUE"]


def test_slot_keys_of_a_root_optimizer_and_a_root_variable(opt_adapter):
    w = ck.Variable(np.zeros(2))
    path = ck.Checkpoint(root=Opt(w)).write("memory://tfkeys/optroot/c")
    assert "w/.OPTIMIZER_SLOT//m/.ATTRIBUTES/VARIABLE_VALUE" in dict(ck.list_variables(path))


def test_namedtuple_items_are_keyed_by_field_name():
    nt = NT(ck.Variable(np.ones(2)), np.full(1, 2.0))
    path = ck.Checkpoint(layer=nt).write("memory://tfkeys/nt/c")
    assert [k for k, _ in ck.list_variables(path)] == ["layer/bias/.ATTRIBUTES/VARIABLE_VALUE",
                                                        "layer/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    fresh = NT(ck.Variable(np.zeros(2)), np.zeros(1))
    ck.Checkpoint(layer=fresh).read(path).assert_consumed()
    assert fresh.kernel.numpy().tolist() == [1.0, 1.0] and fresh.bias.tolist() == [2.0]


def _legacy(key: str) -> str:
    """The key as ckptcore wrote it before following TF's root keys."""
    key = key.replace("/.OPTIMIZER_SLOT//", "/.OPTIMIZER_SLOT/")
    return key[1:] if key.startswith("/") else key


def _rewrite_as_legacy(path: str, version: int = fmt.FORMAT_VERSION) -> list[str]:
    with open(path + ".index", "rb") as f:
        index = fmt.decode_index(f.read(), path)
    index.table.key[:] = [_legacy(k) for k in index.table.key]
    for node in index.nodes:
        for e in node.attributes.values():
            e.key = _legacy(e.key)
    index.version = version
    index.nodes = index.nodes  # encode from the nodes (both versions)
    with open(path + ".index", "wb") as f:
        f.write(index.encode())
    return list(index.table.key)


@pytest.mark.parametrize("version", [1, 2])
def test_checkpoints_with_old_root_keys_still_restore(tmp_path, opt_adapter, version):
    w = ck.Variable(np.full(2, 4.0))
    path = ck.Checkpoint(root=Opt(w)).write(str(tmp_path / "c"))
    root_var = ck.Checkpoint(root=ck.Variable(7.0)).write(str(tmp_path / "r"))
    old = _rewrite_as_legacy(path, version)
    assert "w/.OPTIMIZER_SLOT/m/.ATTRIBUTES/VARIABLE_VALUE" in old  # what old ckptcore wrote
    assert _rewrite_as_legacy(root_var, version) == [".ATTRIBUTES/VARIABLE_VALUE"]
    # read back in TF's form, and restore as before
    assert ck.list_variables(root_var) == [("/.ATTRIBUTES/VARIABLE_VALUE", [])]
    v = ck.Variable(0.0)
    ck.Checkpoint(root=v).read(root_var).assert_consumed()
    assert float(v.numpy()) == 7.0
    assert "w/.OPTIMIZER_SLOT//m/.ATTRIBUTES/VARIABLE_VALUE" in dict(ck.list_variables(path))
    w2 = ck.Variable(np.zeros(2))
    opt = Opt(w2)
    ck.Checkpoint(root=opt).read(path).assert_consumed()
    assert w2.numpy().tolist() == [4.0, 4.0] and opt.restored[2].tolist() == [5.0, 5.0]


def test_legacy_upgrade_never_makes_two_tensors_share_a_key(tmp_path):
    # a (hostile) index holding both forms of a root key
    path = ck.Checkpoint(root=ck.Module()).write(str(tmp_path / "c"))
    with open(path + ".index", "rb") as f:
        index = fmt.decode_index(f.read(), path)
    e1 = fmt.TensorEntry(".ATTRIBUTES/x", "float32", (1,), 0, 0, 4, 0)
    e2 = fmt.TensorEntry("/.ATTRIBUTES/x", "float32", (1,), 0, 64, 4, 0)
    index.nodes = [fmt.Node(adapter="ckptcore.module", attributes={"x": e1, "y": e2})]
    index.shard_sizes = [128]
    raw = index.encode()
    with pytest.raises(ck.CorruptCheckpointError, match="another tensor"):
        fmt.decode_index(raw, "x.index")


@pytest.mark.parametrize("fmt_name", ["ckptcore", "tensorflow"])
def test_a_path_through_an_empty_name_keeps_its_slashes(tmp_path, fmt_name):
    """TF 2.21 keys {"": {"a": v}, "a": w} as '/a/...' and 'a/...'. Before: the saver dropped the '/'
    after an empty name, wrote 'a/...' twice, committed, and every reader then refused the index."""
    src = {"": {"a": np.ones(1)}, "a": np.zeros(1)}
    path = ck.Checkpoint(**src).write(str(tmp_path / "c"), ck.CheckpointOptions(format=fmt_name))
    got = {k for k, _ in ck.list_variables(path)} - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert got == {naming.object_key(["", "a"], "VARIABLE_VALUE"), "a/.ATTRIBUTES/VARIABLE_VALUE"}
    assert naming.object_key(["", "a"], "VARIABLE_VALUE") == "/a/.ATTRIBUTES/VARIABLE_VALUE"
    dst = {"": {"a": np.full(1, -1.0)}, "a": np.full(1, -1.0)}
    ck.Checkpoint(**dst).read(path).assert_consumed()
    assert dst[""]["a"].tolist() == [1.0] and dst["a"].tolist() == [0.0]


@pytest.mark.parametrize("fmt_name", ["ckptcore", "tensorflow"])
def test_a_child_named_empty_of_a_root_with_values_is_refused_before_writing(tmp_path, fmt_name):
    """Both would be '/.ATTRIBUTES/VARIABLE_VALUE' (TF's naming too). Before, ckptcore's format committed
    a checkpoint whose index no reader accepts ("appears twice")."""
    with pytest.raises(ck.InvalidArgumentError, match="child named ''"):
        ck.Checkpoint(root=np.ones(2), **{"": np.zeros(2)}).write(str(tmp_path / "c"),
                                                                   ck.CheckpointOptions(format=fmt_name))
    assert not list(tmp_path.iterdir())


_NAMES = st.text(st.sampled_from("a/.Sé\x00 "), max_size=4) | st.sampled_from([".ATTRIBUTES", ".S", "a.Sb"])
_TREES = st.recursive(st.integers(1, 9).map(lambda n: np.arange(n, dtype=np.float32)),
                      lambda kids: st.dictionaries(_NAMES, kids, min_size=1, max_size=3), max_leaves=8)


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, path + (k,))
    else:
        yield path, tree


@settings(max_examples=60, deadline=None)
@given(tree=st.dictionaries(_NAMES, _TREES, min_size=1, max_size=3),
       fmt_name=st.sampled_from(["ckptcore", "tensorflow"]))
def test_every_key_is_tfs_key_of_its_path_and_every_value_round_trips(tree, fmt_name):
    """Names of every kind ('', '/', '.', TF's escapes, NUL, unicode), nested anywhere: each value is
    saved under naming.object_key of its path (TF's rule), once, and restores into the same place."""
    leaves = list(_leaves(tree))
    opts = ck.CheckpointOptions(format=fmt_name)
    try:
        path = ck.Checkpoint(**tree).write(f"memory://tfkeys/any/{fmt_name}", opts)
    except ck.InvalidArgumentError as e:  # only a child named '' of the root holding a value clashes
        assert "child named ''" in str(e) and any(p == ("",) for p, _ in leaves)
        return
    got = {k for k, _ in ck.list_variables(path)} - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert got == {naming.object_key(list(p), "VARIABLE_VALUE") for p, _ in leaves}
    zeros = _zeroed(tree)
    ck.Checkpoint(**zeros).read(path).assert_consumed()
    for (p, want), (_, back) in zip(leaves, _leaves(zeros)):
        assert back.tolist() == want.tolist(), p


def _zeroed(tree):
    return {k: _zeroed(v) if isinstance(v, dict) else np.zeros_like(v) for k, v in tree.items()}
