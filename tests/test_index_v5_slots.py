"""Format version 5: an index with optimizer slots stores them as four binary columns.

A checkpoint of an optimizer over many parameters has three slots per parameter (Adam); as JSON
rows they were a fifth of its index and a Python step each to read. These tests pin what is
written (version 5, columns, the lowest version otherwise), that hostile slot columns fail
cleanly naming the file, and that versions 2-4 with JSON slot rows still restore.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from ckpt_samples import with_key_list

import ckptcore as ck
from ckptcore.formats import ckpt as fmt


class Opt:
    def __init__(self, params):
        self.params = list(params)
        self.slots = {}   # (id(param), name) -> array


class OptAdapter(ck.Adapter):
    name = "test.v5_opt"

    def slots(self, obj):
        return [ck.SlotVariable(p, name, v) for p in obj.params for (i, name), v in obj.slots.items() if i == id(p)]

    def restore_slot(self, obj, variable, name, value):
        obj.slots[(id(variable), name)] = value


@pytest.fixture(autouse=True)
def _registered(ckptcore_fresh_registry):
    ck.register_adapter(Opt, OptAdapter())


def _model(seed=0):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal(n).astype(np.float32) for n in (3, 1, 4)]
    a, b = Opt(ws), Opt(ws[1:])   # two optimizers, sharing variables: the columns interleave nothing
    for k, w in enumerate(ws):
        a.slots[(id(w), "m")] = w * 2 + k
        a.slots[(id(w), "old/0")] = w - k
    b.slots[(id(ws[2]), "m")] = ws[2] * 7
    return ws, a, b


@pytest.fixture
def path(tmp_path):
    ws, a, b = _model()
    # (ckptcore writes version 6, tests/test_index_v6_keys.py: the same slot columns, without the key list)
    return with_key_list(ck.Checkpoint(ws=ws, a=a, b=b).write(str(tmp_path / "c")))


def _split(path):
    raw = open(path + ".index", "rb").read()
    _magic, version, _flags, length, _crc = struct.unpack_from("<8sIIQI4x", raw)
    return version, json.loads(raw[fmt.HEADER_SIZE:fmt.HEADER_SIZE + length]), raw[fmt.HEADER_SIZE + length:]


def _column(section, ref):
    return np.frombuffer(section, ref["dtype"], ref["count"], ref["offset"]).tolist()


def _write(path, version, doc, section):
    body = json.dumps(doc).encode()
    with open(path + ".index", "wb") as f:
        f.write(struct.pack("<8sIIQI4x", fmt.MAGIC, version, 0, len(body), fmt.crc32c(body)) + body + section)


def _restored(path):
    ws, a, b = _model(seed=1)
    ck.Checkpoint(ws=ws, a=a, b=b).read(path).assert_consumed()
    return ws, a, b


def _same_as_saved(path):
    ws0, a0, b0 = _model()
    ws, a, b = _restored(path)
    for w0, w in zip(ws0, ws):
        np.testing.assert_array_equal(w, w0)
    for o0, o, vs0, vs in ((a0, a, ws0, ws), (b0, b, ws0[1:], ws[1:])):
        assert len(o.slots) == len(o0.slots)
        for w0, w in zip(vs0, vs):
            for name in ("m", "old/0"):
                if (id(w0), name) in o0.slots:
                    np.testing.assert_array_equal(o.slots[(id(w), name)], o0.slots[(id(w0), name)])


def test_an_index_with_slots_is_version_5_with_slot_columns(path):
    version, doc, section = _split(path)
    assert version == doc["version"] == fmt.SLOT_COLUMNS_VERSION
    s = doc["nodes"]["slots"]
    assert s["names"] == ["m", "old/0"]
    rows = list(zip(_column(section, s["optimizer"]), _column(section, s["variable"]),
                    [s["names"][i] for i in _column(section, s["name"])], _column(section, s["slot"])))
    assert len(rows) == 7 and len({r[0] for r in rows}) == 2 and len({r[3] for r in rows}) == 7
    g = ck.load_checkpoint(path).index.graph
    assert sorted((o, v, n, sl) for o, entries in g.slots.items() for v, n, sl in entries) == sorted(rows)
    _same_as_saved(path)


def test_an_index_without_slots_keeps_the_base_version(tmp_path):
    version, doc, _ = _split(with_key_list(ck.Checkpoint(w=np.ones(2)).write(str(tmp_path / "plain"))))
    assert version == fmt.FORMAT_VERSION and doc["nodes"]["slots"] == []


@pytest.mark.parametrize("old", [2, 4])
def test_slots_as_json_rows_of_older_versions_still_restore(path, old):
    _version, doc, section = _split(path)
    s = doc["nodes"]["slots"]
    doc["nodes"]["slots"] = [list(r) for r in zip(_column(section, s["optimizer"]), _column(section, s["variable"]),
                                                  [s["names"][i] for i in _column(section, s["name"])],
                                                  _column(section, s["slot"]))]
    doc["version"] = old
    _write(path, old, doc, section)   # (the slot columns stay in the section, unreferenced)
    _same_as_saved(path)


def _edit_ref(name, values):
    """Point slot column ``name`` at new values appended to the section (checksum recomputed)."""
    def edit(doc, section):
        data = np.array(values, np.uint64).astype("<u8").tobytes()
        pad = -len(section) % 8
        doc["nodes"]["slots"][name] = {"dtype": "<u8", "offset": len(section) + pad, "count": len(values)}
        return section + bytes(pad) + data
    return edit


def _edit_json(fn):
    def edit(doc, section):
        fn(doc["nodes"]["slots"])
        return section
    return edit


HOSTILE = {
    "slot node out of range": _edit_ref("slot", [99] * 7),
    "variable node out of range": _edit_ref("variable", [1 << 40] * 7),
    "optimizer node out of range": _edit_ref("optimizer", [50] * 7),
    "name index out of range": _edit_ref("name", [2] * 7),
    "a column shorter than the others": _edit_ref("variable", [1] * 6),
    "a column missing": _edit_json(lambda s: s.pop("slot")),
    "names not strings": _edit_json(lambda s: s.__setitem__("names", [1, 2])),
    "names missing": _edit_json(lambda s: s.pop("names")),
    "a column as a JSON list": _edit_json(lambda s: s.__setitem__("name", [0] * 7)),
    "a column past the section": _edit_json(lambda s: s["slot"].__setitem__("offset", 1 << 30)),
    "column type unknown": _edit_json(lambda s: s["slot"].__setitem__("dtype", "<i8")),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_slot_columns_raise_checkpoint_error_naming_the_file(path, name):
    version, doc, section = _split(path)
    section = HOSTILE[name](doc, section)
    doc["columns"] = {"nbytes": len(section), "crc32c": fmt.crc32c(section)}
    _write(path, version, doc, section)
    with pytest.raises(ck.CorruptCheckpointError) as info:
        ck.load_checkpoint(path)
    assert path in str(info.value)
    ws, a, b = _model(seed=1)
    before = [w.copy() for w in ws]
    with pytest.raises(ck.CheckpointError):
        ck.Checkpoint(ws=ws, a=a, b=b).read(path)
    assert all(np.array_equal(w, w0) for w, w0 in zip(ws, before))   # nothing assigned


@pytest.mark.parametrize("version, form", [(5, []), (4, {})])
def test_slots_in_the_other_versions_form_are_refused(path, version, form):
    _v, doc, section = _split(path)
    doc["nodes"]["slots"], doc["version"] = form, version
    _write(path, version, doc, section)
    with pytest.raises(ck.CorruptCheckpointError, match="slots must be"):
        ck.load_checkpoint(path)
