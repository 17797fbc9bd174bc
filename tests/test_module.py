"""ck.Module attribute tracking and the tracked containers."""

from __future__ import annotations

import numpy as np
import pytest

import ckptcore as ck


def keys_of(obj, prefix):
    return [k for k, _ in ck.list_variables(ck.Checkpoint(root=obj).write(prefix))]


def names(m):
    return [n for n, _ in m.tracked_children()]


def test_trackable_attributes_become_dependencies_in_order():
    m = ck.Module()
    m.b = ck.Variable(1.0)
    m.a = np.zeros(2)
    m.sub = ck.Module()
    m.lr = 0.1           # not trackable
    m.label = "x"        # not trackable
    m.nothing = None
    assert names(m) == ["b", "a", "sub"]
    assert m.lr == 0.1 and m.label == "x"  # plain attributes still work


def test_reassign_replaces_edge(prefix):
    m = ck.Module()
    first = ck.Variable(1.0)
    m.w = first
    m.w = ck.Variable([2.0, 3.0])
    assert [c for _, c in m.tracked_children()] == [m.w]
    r = ck.load_checkpoint(ck.Checkpoint(root=m).write(prefix))
    assert r.get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [2.0, 3.0]


def test_reassign_to_untrackable_removes_edge(prefix):
    m = ck.Module()
    m.w = ck.Variable(1.0)
    m.keep = ck.Variable(2.0)
    m.w = 5
    assert names(m) == ["keep"]
    assert keys_of(m, prefix) == ["keep/.ATTRIBUTES/VARIABLE_VALUE"]


def test_delete_removes_edge(prefix):
    m = ck.Module()
    m.w = ck.Variable(1.0)
    m.keep = ck.Variable(2.0)
    del m.w
    assert not hasattr(m, "w")
    assert names(m) == ["keep"]
    assert keys_of(m, prefix) == ["keep/.ATTRIBUTES/VARIABLE_VALUE"]
    with pytest.raises(AttributeError):
        del m.never_set


def test_nested_modules_keys(prefix):
    m = ck.Module()
    m.enc = ck.Module()
    m.enc.layer = ck.Module()
    m.enc.layer.k = ck.Variable(np.ones((2, 2)))
    assert keys_of(m, prefix) == ["enc/layer/k/.ATTRIBUTES/VARIABLE_VALUE"]


def test_lists_are_tracked_with_index_names(prefix):
    m = ck.Module()
    m.layers = [ck.Variable(1.0), "not trackable", np.zeros(1)]
    assert isinstance(m.layers, ck.TrackedList) and isinstance(m.layers, list)
    assert [n for n, _ in m.layers.children()] == ["0", "2"]
    m.layers.append(ck.Variable(3.0))
    assert keys_of(m, prefix) == ["layers/0/.ATTRIBUTES/VARIABLE_VALUE", "layers/2/.ATTRIBUTES/VARIABLE_VALUE",
                                  "layers/3/.ATTRIBUTES/VARIABLE_VALUE"]


def test_dicts_are_tracked_by_key(prefix):
    m = ck.Module()
    m.heads = {"cls": ck.Variable(1.0), "note": "skip"}
    m.heads["reg"] = np.zeros(2)
    assert isinstance(m.heads, ck.TrackedDict) and isinstance(m.heads, dict)
    assert sorted(keys_of(m, prefix)) == ["heads/cls/.ATTRIBUTES/VARIABLE_VALUE",
                                          "heads/reg/.ATTRIBUTES/VARIABLE_VALUE"]
    del m.heads["cls"]
    assert keys_of(m, prefix) == ["heads/reg/.ATTRIBUTES/VARIABLE_VALUE"]


def test_nested_containers_are_wrapped(prefix):
    m = ck.Module()
    m.blocks = [[ck.Variable(1.0)], {"x": [np.ones(1)]}]
    assert isinstance(m.blocks[0], ck.TrackedList)
    assert isinstance(m.blocks[1], ck.TrackedDict) and isinstance(m.blocks[1]["x"], ck.TrackedList)
    assert keys_of(m, prefix) == ["blocks/0/0/.ATTRIBUTES/VARIABLE_VALUE", "blocks/1/x/0/.ATTRIBUTES/VARIABLE_VALUE"]


def test_list_mutations_update_graph(prefix):
    m = ck.Module()
    a, b, c = ck.Variable(1.0), ck.Variable(2.0), ck.Variable(3.0)
    m.xs = [a]
    m.xs.insert(0, b)           # b is now "0", a is "1"
    m.xs.extend([c])
    m.xs.pop(1)                 # removes a
    r = ck.load_checkpoint(ck.Checkpoint(root=m).write(prefix))
    assert r.get_variable_to_shape_map().keys() == {"xs/0/.ATTRIBUTES/VARIABLE_VALUE",
                                                     "xs/1/.ATTRIBUTES/VARIABLE_VALUE"}
    assert float(r.get_tensor("xs/0/.ATTRIBUTES/VARIABLE_VALUE")) == 2.0
    assert float(r.get_tensor("xs/1/.ATTRIBUTES/VARIABLE_VALUE")) == 3.0


def test_tuples_and_plain_containers_inside_a_graph(prefix):
    m = ck.Module()
    m.pair = (ck.Variable(1.0), ck.Variable(2.0))
    assert keys_of(m, prefix) == ["pair/0/.ATTRIBUTES/VARIABLE_VALUE", "pair/1/.ATTRIBUTES/VARIABLE_VALUE"]


def test_variables_lists_each_variable_once():
    m = ck.Module()
    v = ck.Variable(1.0)
    m.a = v
    m.sub = ck.Module()
    m.sub.b = v            # shared
    m.sub.c = ck.Variable(2.0)
    m.arr = np.zeros(1)    # not a ck.Variable
    assert m.variables() == [v, m.sub.c]


def test_subclass_init_before_super_and_name():
    class Late(ck.Module):
        def __init__(self):
            self.w = ck.Variable(1.0)  # before super().__init__(): still tracked
            super().__init__(name="late")

    m = Late()
    assert m.name == "late"
    assert ck.Module().name == "Module"


def test_slots_and_properties_on_subclasses(prefix):
    class WithProp(ck.Module):
        @property
        def double(self):
            return 2

    m = WithProp()
    m.w = ck.Variable(1.0)
    assert m.double == 2
    assert keys_of(m, prefix) == ["w/.ATTRIBUTES/VARIABLE_VALUE"]


def test_same_object_under_two_names_saved_once(prefix):
    m = ck.Module()
    v = ck.Variable([1.0])
    m.a = v
    m.b = v
    assert keys_of(m, prefix) == ["a/.ATTRIBUTES/VARIABLE_VALUE"]


def test_name_clash_between_checkpoint_kwargs_and_root_children_is_an_error(prefix):
    m = ck.Module()
    m.w = ck.Variable(1.0)
    with pytest.raises(ValueError, match="'w'"):  # at construction, as TF (issue 13)
        ck.Checkpoint(root=m, w=ck.Variable(2.0))


def test_shared_object_saved_under_shortest_path(prefix):
    m = ck.Module()
    m.deep = ck.Module()
    m.deep.er = ck.Module()
    v = ck.Variable([1.0])
    m.deep.er.v = v       # assigned first, but deeper
    m.short = v
    assert keys_of(m, prefix) == ["short/.ATTRIBUTES/VARIABLE_VALUE"]
    # restore at every path: both locations of a new program receive it
    a, b = ck.Variable([0.0]), ck.Variable([0.0])
    m2 = ck.Module()
    m2.deep = ck.Module()
    m2.deep.er = ck.Module()
    m2.deep.er.v = a
    m2.short = b
    ck.Checkpoint(root=m2).read(prefix).assert_consumed()
    assert a.numpy()[0] == 1.0 and b.numpy()[0] == 1.0


def test_breadth_first_ties_broken_by_edge_order(prefix):
    m = ck.Module()
    v = ck.Variable([1.0])
    m.first = ck.Module()
    m.second = ck.Module()
    m.second.x = v
    m.first.y = v
    assert keys_of(m, prefix) == ["first/y/.ATTRIBUTES/VARIABLE_VALUE"]
