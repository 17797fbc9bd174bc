"""``ckptcore convert SRC DST``: a checkpoint of any readable format to ckptcore's, safetensors or TensorFlow's.

SRC is whatever :func:`ckptcore.load_checkpoint` reads (the formats registry of
:mod:`ckptcore.formats`): a ckptcore checkpoint, a TensorFlow checkpoint, a
``.safetensors`` file. Streaming: tensors are read and written one at a time,
so peak memory is bounded by the largest tensor, not the checkpoint. Nothing is
unpickled: a PyTorch ``.pt``/``.bin`` pickle is refused with an explanation.

- to safetensors: every tensor under its checkpoint key; the object graph
  (adapters, types, states, slots) and the user metadata go into the file's
  ``__metadata__``, so converting back gives the same checkpoint.
- from safetensors: with that metadata, the original graph; otherwise the
  graph the reader builds from the keys (``a.b.weight``: objects ``a`` -> ``b``
  holding ``weight``), restored by name as the file itself is.
- ckptcore -> ckptcore: a copy (to another store, say), checksums verified.
- to TensorFlow (``--to tensorflow``): a TensorBundle through
  :mod:`ckptcore.formats.tensorbundle.export`: TensorFlow's object graph when the
  source has one, TF1 name keys (``a/b/weight``) when it is flat.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> from ckptcore.cli import main
    >>> p = ck.Checkpoint(w=np.arange(3.0)).write("memory://doc/cli/convert/c")
    >>> main(["convert", p, "memory://doc/cli/convert/c.safetensors", "--json"])  # doctest: +ELLIPSIS
    {"src": "memory://doc/cli/convert/c", "src_format": "ckptcore", "dst": ..., "tensors": 1, "bytes": 24}
    0
    >>> st_file = "memory://doc/cli/convert/c.safetensors"
    >>> main(["convert", st_file, "memory://doc/cli/convert/back", "--json"])  # doctest: +ELLIPSIS
    {"src": ..., "src_format": "safetensors", "dst": "memory://doc/cli/convert/back", "dst_format": "ckptcore", ...}
    0
    >>> ck.load_checkpoint("memory://doc/cli/convert/back").get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE").tolist()
    [0.0, 1.0, 2.0]
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from . import _common

TARGETS = ("ckptcore", "safetensors", "tensorflow")
GRAPH_META = "ckptcore.graph"      # __metadata__ entries of a safetensors file written by ckptcore
USER_META = "ckptcore.metadata"


def _graph_doc(g, keys: list[str], flat: bool) -> dict:
    return {"keys": list(keys), "flat": flat, "adapter": g.adapter, "type": g.type, "child_start": g.child_start,
            "child_name": g.child_name,
            "child": g.child, "attr_start": g.attr_start, "attr_name": g.attr_name,
            "state": {str(k): v for k, v in g.state.items()},
            "slots": {str(k): [list(r) for r in v] for k, v in g.slots.items()}}


def _graph_from_doc(doc: Any, keys: list[str]):
    """The graph and table-order keys from ``_graph_doc`` output; None when it does not fit the file's ``keys``."""
    from ..formats.ckpt import Graph

    try:
        order = doc["keys"]
        if not isinstance(order, list) or sorted(order) != sorted(keys):
            return None
        keys = order
        n = len(doc["adapter"])
        cols = [doc[c] for c in ("adapter", "type", "child_start", "child_name", "child", "attr_start", "attr_name")]
        if not all(isinstance(c, list) for c in cols) or len(doc["type"]) != n:
            return None
        if len(doc["child_start"]) != n + 1 or len(doc["attr_start"]) != n + 1 or doc["attr_start"][-1] != len(keys):
            return None
        if len(doc["attr_name"]) != len(keys) or len(doc["child"]) != len(doc["child_name"]):
            return None
        state = {int(k): v for k, v in doc["state"].items()}
        slots = {int(k): [tuple(r) for r in v] for k, v in doc["slots"].items()}
        adapter, type_, child_start, child_name, child, attr_start, attr_name = cols
        return Graph(adapter, type_, child_start, child_name, child, attr_start, attr_name, state, slots), order
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def write_ckptcore(storage, prefix: str, graph, specs: list[tuple[str, str, tuple]], arrays: Iterator,
                   metadata: dict | None, report=None, flat: bool = False) -> int:
    """Write a ckptcore checkpoint from a graph and a stream of arrays in table order; returns data bytes.

    ``specs[t]`` is tensor ``t``'s ``(key, dtype name, shape)``; ``arrays`` yields
    them in that order, one at a time. Data, then the index (the commit point).
    """
    import numpy as np

    from ..formats import ckpt as fmt

    d = storage.dirname(prefix)
    if d:
        storage.makedirs(d)
    data = fmt.data_path(prefix, 0, 1)
    keys, dtypes, shapes, offsets, sizes, crcs = [], [], [], [], [], []
    node = []
    for nid in range(len(graph)):
        node.extend([nid] * (graph.attr_start[nid + 1] - graph.attr_start[nid]))
    writer = storage.open_writer(data)
    offset = 0
    zeros = bytes(fmt.ALIGNMENT)
    try:
        for (key, dtype, shape), arr in zip(specs, arrays, strict=True):
            arr = np.asarray(arr)
            if not arr.flags.c_contiguous:
                arr = arr.copy(order="C")  # (np.ascontiguousarray would make a scalar 1-d)
            nbytes = arr.nbytes
            pad = -offset % fmt.tensor_alignment(nbytes, dtype)
            if pad:
                writer.write(zeros[:pad])
                offset += pad
            view = memoryview(arr.reshape(-1).view(np.uint8))
            keys.append(key)
            dtypes.append(dtype)
            shapes.append(tuple(shape))
            offsets.append(offset)
            sizes.append(nbytes)
            crcs.append(fmt.crc32c(view))
            if nbytes:
                writer.write(view)
            offset += nbytes
            if report is not None:
                report(nbytes)
            del arr, view
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    table = fmt.TensorTable(keys, dtypes, shapes, [0] * len(keys), offsets, sizes, crcs, node)
    meta: dict[str, Any] = {fmt.USER_METADATA_KEY: metadata} if metadata else {}
    if flat:  # no saved object graph (safetensors, TF1): restored by name, as the source was
        meta["flat"] = True
    index = fmt.Index(num_shards=1, shard_sizes=[offset], metadata=meta, graph=graph, table=table)
    encoded = index.encode()
    fmt.decode_index(encoded, fmt.index_path(prefix))  # a graph taken from a foreign file must be valid
    storage.write_atomic(fmt.index_path(prefix), encoded)
    return offset


def run(src: str, dst: str, to: str | None, storage_options: dict, as_json: bool, show_progress: bool) -> None:
    from .. import progress
    from ..formats import ckpt as fmt
    from ..formats import safetensors as st
    from ..formats.byname import is_flat
    from ..reader import CheckpointReader
    from ..storage import open_storage

    if to is None:
        to = "safetensors" if dst.endswith(".safetensors") else "ckptcore"
    if to not in TARGETS:
        raise _common.Usage(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    _common.check_url(dst, "write")
    reader = CheckpointReader(_common.resolve_checkpoint(src, storage_options), storage_options)
    kind = reader.format.name
    dstorage, dpath = open_storage(dst, storage_options)
    if dstorage.exists(dpath + ".index") or (to == "safetensors" and dstorage.exists(dpath)):
        raise _common.Usage(f"{dst} exists; convert never overwrites: remove it or pick another name")
    t = reader.index.table
    # the rows the object graph reaches (a TensorFlow index's own object-graph tensor is a row past them)
    graph, flat, user_meta = reader.index.graph, is_flat(reader.index), reader.metadata
    rows = list(range(len(graph.attr_name)))
    strings = [t.key[r] for r in rows if t.dtype[r] == fmt.STRING_DTYPE]
    if strings and to != "tensorflow":
        raise _common.Usage(f"{src} holds string tensors ({', '.join(strings[:3])}{' ...' if len(strings) > 3 else ''}"
                            f"), which {to} cannot store: convert with --to tensorflow, or restore it in Python")
    passthrough: dict[str, str] = {}
    if kind == "safetensors":
        passthrough = st.read_metadata(reader.storage, reader.data_file(0))
        try:
            user_meta = json.loads(passthrough.get(USER_META, "{}"))
        except ValueError:
            user_meta = {}
        if not isinstance(user_meta, dict):
            user_meta = {}
        found = None
        if GRAPH_META in passthrough:  # written by ckptcore: its own graph, its tensors in its table order
            try:
                found = _graph_from_doc(json.loads(passthrough[GRAPH_META]), list(t.key))
            except (ValueError, RecursionError):
                found = None
        if found is not None:
            (graph, order), row_of = found, {k: r for r, k in enumerate(t.key)}
            rows = [row_of[k] for k in order]
            flat = bool(json.loads(passthrough[GRAPH_META]).get("flat"))
    specs = [(t.key[r], t.dtype[r], tuple(t.shape[r])) for r in rows]
    total = sum(t.nbytes[r] for r in rows)
    bar = progress.bar(f"converting to {to}", total, show_progress)
    report = bar.update if bar is not None else None

    def arrays(order):
        for r in order:
            arr = reader.get_tensor(t.key[r])  # one tensor in memory at a time, its checksum verified
            if report is not None:
                report(arr.nbytes)
            yield t.key[r], arr

    try:
        if to == "safetensors":
            order = sorted(rows, key=t.key.__getitem__)
            if kind == "safetensors" and GRAPH_META not in passthrough:
                meta = passthrough  # a copy of a foreign file keeps its own metadata
            else:
                gdoc = _graph_doc(graph, [t.key[r] for r in rows], flat)
                meta = {GRAPH_META: json.dumps(gdoc, separators=(",", ":")),
                        USER_META: json.dumps(user_meta)}
            st.write(dstorage, dpath, arrays(order), metadata=meta,
                     specs=[(t.key[r], t.dtype[r], tuple(t.shape[r])) for r in order])
        elif to == "tensorflow":
            from ..formats.tensorbundle.export import write_graph

            write_graph(dstorage, dpath, graph, specs, reader.get_tensor, flat=flat, report=report)
        else:
            write_ckptcore(dstorage, dpath, graph, specs, (a for _, a in arrays(rows)), user_meta, None, flat)
    finally:
        progress.close(bar)
    doc = {"src": src, "src_format": kind, "dst": dst, "dst_format": to, "tensors": len(rows), "bytes": total}
    skipped = reader.index.metadata.get("unsupported_keys") or []
    if skipped:  # never silently: the tensors the reader cannot hand out (TF string, resource, variant tensors)
        doc["skipped"] = list(skipped)
        _common.error(f"warning: {len(skipped)} tensor(s) of {src} cannot be read as arrays and were not "
                      f"converted: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
    if as_json:
        _common.emit_json(doc)
    else:
        import sys

        sys.stdout.write(f"converted {src} ({kind}) -> {dst} ({to}): {len(rows)} tensors, "
                         f"{_common.human_bytes(total)}\n")
