"""Key naming follows TensorFlow: escaped local names, .ATTRIBUTES, VARIABLE_VALUE."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore import naming


@pytest.mark.parametrize("name, escaped", [
    ("plain", "plain"),
    ("a/b", "a.Sb"),
    ("a.b", "a..b"),
    (".ATTRIBUTES", "..ATTRIBUTES"),
    ("..", "...."),
    ("/", ".S"),
    (".S", "..S"),
    ("x/.y", "x.S..y"),
    ("", ""),
])
def test_escape_local_name_matches_tf(name, escaped):
    assert naming.escape_local_name(name) == escaped
    assert naming.unescape_local_name(escaped) == name


@given(st.text(alphabet=st.sampled_from(["a", ".", "/", "S", "b", "é"]), max_size=12))
def test_escape_roundtrips_and_never_contains_slash(name):
    escaped = naming.escape_local_name(name)
    assert "/" not in escaped
    assert naming.unescape_local_name(escaped) == name


_PATHS = st.lists(st.text(alphabet=st.sampled_from(["a", ".", "/", "S"]), min_size=1, max_size=5),
                  min_size=1, max_size=4)


@given(_PATHS, _PATHS)
def test_distinct_paths_give_distinct_keys(p1, p2):
    if p1 != p2:
        assert naming.object_key(p1, naming.VARIABLE_VALUE) != naming.object_key(p2, naming.VARIABLE_VALUE)


def test_key_format():
    assert naming.object_key(["model", "sub", "k"], naming.VARIABLE_VALUE) == \
        "model/sub/k/.ATTRIBUTES/VARIABLE_VALUE"
    assert naming.object_key(["save_counter"], naming.VARIABLE_VALUE) == "save_counter/.ATTRIBUTES/VARIABLE_VALUE"
    assert naming.object_key([], "x") == "/.ATTRIBUTES/x"  # TF's checkpoint_key("", "x")
    assert naming.display_path([]) == "(root)"


def test_saved_keys_use_tf_naming(prefix):
    model = ck.Module()
    model.sub = ck.Module()
    model.sub.k = ck.Variable(np.ones(2))
    ckpt = ck.Checkpoint(model=model)
    path = ckpt.save(prefix)
    assert [k for k, _ in ck.list_variables(path)] == ["model/sub/k/.ATTRIBUTES/VARIABLE_VALUE",
                                                       "save_counter/.ATTRIBUTES/VARIABLE_VALUE"]


def test_escaped_names_in_saved_keys_and_restore(prefix):
    ckpt = ck.Checkpoint(heads={"a/b": np.full(1, 1.0), "a.b": np.full(1, 2.0), ".ATTRIBUTES": np.full(1, 3.0)})
    path = ckpt.write(prefix)
    keys = {k for k, _ in ck.list_variables(path)}
    assert keys == {"heads/a.Sb/.ATTRIBUTES/VARIABLE_VALUE", "heads/a..b/.ATTRIBUTES/VARIABLE_VALUE",
                    "heads/..ATTRIBUTES/.ATTRIBUTES/VARIABLE_VALUE"}
    # restore matches by the stored graph, so the odd names come back to the right objects
    heads = {"a/b": np.zeros(1), "a.b": np.zeros(1), ".ATTRIBUTES": np.zeros(1)}
    ckpt2 = ck.Checkpoint(heads=heads)
    ckpt2.read(path).assert_consumed()
    assert {k: v[0] for k, v in ckpt2.heads.items()} == {"a/b": 1.0, "a.b": 2.0, ".ATTRIBUTES": 3.0}


def test_non_string_dict_keys_are_named_by_str(prefix):
    ckpt = ck.Checkpoint(table={1: np.ones(1), (2, 3): np.ones(1)})
    keys = {k for k, _ in ck.list_variables(ckpt.write(prefix))}
    assert keys == {"table/1/.ATTRIBUTES/VARIABLE_VALUE", "table/(2, 3)/.ATTRIBUTES/VARIABLE_VALUE"}


def test_restore_matches_by_graph_not_key(prefix):
    # same structure, same names => matched; a renamed edge does not match, even with same shapes
    src = ck.Module()
    src.enc = ck.Module()
    src.enc.w = np.ones(2)
    path = ck.Checkpoint(model=src).write(prefix)
    dst = ck.Module()
    dst.encoder = ck.Module()
    dst.encoder.w = np.zeros(2)
    status = ck.Checkpoint(model=dst).read(path)
    assert dst.encoder.w.tolist() == [0.0, 0.0]
    with pytest.raises(AssertionError):
        status.assert_existing_objects_matched()
    status.expect_partial()


def test_slot_key_matches_tf():
    assert naming.slot_key(["model", "w"], ["opt"], "m") == \
        "model/w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE"
