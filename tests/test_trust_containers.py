"""Issue 13: tracked containers never save a different structure from the one the user holds.

As TensorFlow's ``ListWrapper``/``_DictWrapper`` (data_structures.py): the wrapper works on the
user's own list/dict, and a change made to it behind the wrapper makes saving fail
("modified outside the wrapper") rather than silently saving the old structure.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import ckptcore as ck


def test_changes_through_the_attribute_reach_the_users_list_and_the_checkpoint(tmp_path):
    lst = [ck.Variable(1.0)]
    m = ck.Module()
    m.l = lst
    m.l.append(ck.Variable(2.0))
    m.l.extend([ck.Variable(3.0)])
    m.l.insert(0, ck.Variable(0.0))
    assert lst == list(m.l) and all(a is b for a, b in zip(lst, m.l))
    path = ck.Checkpoint(m=m).write(str(tmp_path / "c"))
    assert len(ck.list_variables(path)) == 4
    m.l.pop()
    del m.l[0]
    m.l.reverse()
    m.l[0] = ck.Variable(9.0)
    assert len(lst) == 2 and all(a is b for a, b in zip(lst, m.l))
    ck.Checkpoint(m=m).write(str(tmp_path / "d"))


@pytest.mark.parametrize("change", ["append", "pop", "setitem", "clear", "extend"])
def test_a_list_changed_behind_the_wrapper_is_refused(tmp_path, change):
    lst = [ck.Variable(1.0), ck.Variable(2.0)]
    m = ck.Module()
    m.l = lst
    if change == "append":
        lst.append(ck.Variable(3.0))
    elif change == "pop":
        lst.pop()
    elif change == "setitem":
        lst[0] = ck.Variable(5.0)
    elif change == "clear":
        lst.clear()
    else:
        lst.extend([np.ones(1)])
    with pytest.raises(ck.ContainerModifiedError, match=r"^m/l: .*changed directly") as e:
        ck.Checkpoint(m=m).write(str(tmp_path / "c"))
    assert isinstance(e.value, ValueError)
    assert not (tmp_path / "c.index").exists()
    m.l = lst     # assigning it again adopts it
    path = ck.Checkpoint(m=m).write(str(tmp_path / "c"))
    assert len(ck.list_variables(path)) == len(lst)


def test_a_dict_changed_behind_the_wrapper_is_refused(tmp_path):
    d = {"a": ck.Variable(1.0)}
    ckpt = ck.Checkpoint(heads=d)
    ckpt.heads["b"] = ck.Variable(2.0)            # through the wrapper: the user's dict has it too
    assert set(d) == {"a", "b"} and d["b"] is ckpt.heads["b"]
    ckpt.write(str(tmp_path / "ok"))
    d["c"] = ck.Variable(3.0)                     # behind it
    with pytest.raises(ck.ContainerModifiedError, match=r"^heads: .*changed directly"):
        ckpt.write(str(tmp_path / "c"))
    del d["c"]
    ckpt.write(str(tmp_path / "c"))               # back in step: fine
    ckpt.heads.pop("a")
    del ckpt.heads["b"]
    assert d == {}


def test_nested_containers_are_tracked_in_the_users_list_too(tmp_path):
    inner = [ck.Variable(1.0)]
    outer = [inner]
    m = ck.Module()
    m.l = outer
    assert outer[0] is inner           # the user's lists stay plain lists ...
    m.l[0].append(ck.Variable(2.0))
    assert len(inner) == 2             # ... kept in step through the tracked ones
    m.l.append([ck.Variable(3.0)])
    assert type(outer[1]) is list and len(outer) == 2
    path = ck.Checkpoint(m=m).write(str(tmp_path / "c"))
    assert [k for k, _ in ck.list_variables(path)] == ["m/l/0/0/.ATTRIBUTES/VARIABLE_VALUE",
                                                        "m/l/0/1/.ATTRIBUTES/VARIABLE_VALUE",
                                                        "m/l/1/0/.ATTRIBUTES/VARIABLE_VALUE"]
    inner.append(ck.Variable(4.0))     # behind the inner wrapper
    with pytest.raises(ck.ContainerModifiedError, match="^m/l/0: "):
        ck.Checkpoint(m=m).write(str(tmp_path / "d"))


def test_copies_of_tracked_containers_are_independent():
    lst = [np.ones(1)]
    m = ck.Module()
    m.l = lst
    c = copy.deepcopy(m.l)
    c.append(np.zeros(1))
    assert len(lst) == 1 and len(m.l) == 1
    c2 = copy.copy(m.l)
    c2.append(np.zeros(1))
    assert len(lst) == 1
    d = copy.deepcopy(ck.TrackedDict({"a": np.ones(1)}))
    d["b"] = np.ones(1)
    assert sorted(d) == ["a", "b"]


def test_restore_on_create_through_the_wrapper_still_works(tmp_path):
    src = ck.Module()
    src.l = [np.full(1, 4.0)]
    path = ck.Checkpoint(m=src).write(str(tmp_path / "c"))
    lst: list = []
    dst = ck.Module()
    dst.l = lst
    status = ck.Checkpoint(m=dst).read(path)
    arr = np.zeros(1)
    dst.l.append(arr)
    assert arr.tolist() == [4.0] and lst[0] is arr
    status.assert_consumed()


def test_a_list_or_dict_holding_itself_is_tracked_as_it_is(tmp_path):
    """Before: assigning one recursed until RecursionError (wrap() wrapped item by item, forever);
    copy.deepcopy of the wrapper did the same. Now the wrapper holds itself, as the user's container does."""
    lst = [np.arange(2.0)]
    lst.append(lst)
    d = {"x": np.ones(1)}
    d["me"] = d
    m = ck.Module()
    m.l, m.d = lst, d
    assert m.l[1] is m.l and m.d["me"] is m.d
    m.d["y"] = np.full(2, 3.0)  # through the wrapper: reaches the user's dict
    assert d["y"] is m.d["y"]
    path = ck.Checkpoint(m=m).write(str(tmp_path / "c"))
    assert {k for k, _ in ck.list_variables(path)} >= {"m/l/0/.ATTRIBUTES/VARIABLE_VALUE",
                                                       "m/d/x/.ATTRIBUTES/VARIABLE_VALUE",
                                                       "m/d/y/.ATTRIBUTES/VARIABLE_VALUE"}
    back = ck.Module()
    l2 = [np.zeros(2)]
    l2.append(l2)
    d2 = {"x": np.zeros(1), "y": np.zeros(2)}
    d2["me"] = d2
    back.l, back.d = l2, d2
    ck.Checkpoint(m=back).read(path).assert_consumed()
    assert l2[0].tolist() == [0.0, 1.0] and d2["y"].tolist() == [3.0, 3.0]
    clone = copy.deepcopy(m)
    assert clone.l[1] is clone.l and clone.d["me"] is clone.d and clone.l[0] is not m.l[0]
