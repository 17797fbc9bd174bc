"""``ckptcore diff A B``: what changed between two checkpoints.

Keys added, removed, changed in shape or dtype, and which tensors changed
value, from the CRC32C checksums the indexes store (no data is read; equal
checksums mean equal bytes but for a 1 in 2^32 collision). ``--values`` reads
both copies of each common tensor, one tensor at a time, and reports the
maximum absolute and relative difference. Exit 1 if anything differs.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> from ckptcore.cli import main
    >>> a = ck.Checkpoint(w=np.zeros(3), b=np.ones(1)).write("memory://doc/cli/diff/a")
    >>> b = ck.Checkpoint(w=np.ones(3), c=np.ones(1)).write("memory://doc/cli/diff/b")
    >>> main(["diff", a, b])
    + c/.ATTRIBUTES/VARIABLE_VALUE
    - b/.ATTRIBUTES/VARIABLE_VALUE
    * w/.ATTRIBUTES/VARIABLE_VALUE: value changed
    1 added, 1 removed, 0 changed shape or dtype, 1 changed value, 0 unchanged
    1
"""

from __future__ import annotations

from . import _common


def _numeric_diff(x, y) -> tuple[float, float]:
    import numpy as np

    if x.dtype.kind in "SUb":
        return (0.0, 0.0) if np.array_equal(x, y) else (float("inf"), float("inf"))
    if x.dtype.kind == "c":
        xa, ya = x.astype(np.complex128), y.astype(np.complex128)
    else:
        xa, ya = x.astype(np.float64), y.astype(np.float64)
    if xa.size == 0:
        return 0.0, 0.0
    with np.errstate(all="ignore"):
        d = np.abs(xa - ya)
        same = (xa == ya) | (np.isnan(xa) & np.isnan(ya))
        d = np.where(same, 0.0, d)
        rel = np.where(same, 0.0, d / np.maximum(np.abs(xa), np.abs(ya)))
    return float(np.nanmax(np.where(np.isnan(d), np.inf, d))), float(np.nanmax(np.where(np.isnan(rel), np.inf, rel)))


def run(a: str, b: str, storage_options: dict, as_json: bool, values: bool) -> None:
    from ..reader import CheckpointReader

    pa = _common.resolve_checkpoint(a, storage_options)
    pb = _common.resolve_checkpoint(b, storage_options)
    ra, rb = CheckpointReader(pa, storage_options), CheckpointReader(pb, storage_options)
    ta, tb = ra.index.table, rb.index.table
    # values the object graphs reach (not a TensorFlow index's own object-graph tensor: structure, not a value)
    rows_a = dict(zip(ta.key, range(len(ra.index.graph.attr_name))))
    rows_b = dict(zip(tb.key, range(len(rb.index.graph.attr_name))))
    added = sorted(k for k in rows_b if k not in rows_a)
    removed = sorted(k for k in rows_a if k not in rows_b)
    changed, value_changed, same = [], [], 0
    common = sorted(k for k in rows_a if k in rows_b)
    for k in common:
        i, j = rows_a[k], rows_b[k]
        if ta.dtype[i] != tb.dtype[j] or tuple(ta.shape[i]) != tuple(tb.shape[j]):
            changed.append({"key": k, "a": {"dtype": ta.dtype[i], "shape": list(ta.shape[i])},
                            "b": {"dtype": tb.dtype[j], "shape": list(tb.shape[j])}})
            continue
        if _in_pieces(ra, i) or _in_pieces(rb, j):  # stored in pieces: no checksum of the whole to compare
            differs_ = ra.get_tensor(k).tobytes() != rb.get_tensor(k).tobytes()
        else:
            differs_ = ta.crc32c[i] != tb.crc32c[j]
        if differs_:
            value_changed.append(k)
        else:
            same += 1
    doc: dict = {"a": pa, "b": pb, "added": added, "removed": removed, "changed": changed,
                 "value_changed": value_changed, "same": same}
    if values:
        out = []
        for k in value_changed:  # equal checksums mean equal bytes: nothing to read for those
            x, y = ra.get_tensor(k), rb.get_tensor(k)
            max_abs, max_rel = _numeric_diff(x, y)
            out.append({"key": k, "max_abs": max_abs, "max_rel": max_rel})
            del x, y
        doc["values"] = out
    differs = bool(added or removed or changed or value_changed)
    if as_json:
        _common.emit_json(doc)
    else:
        import sys

        w = sys.stdout.write
        for k in added:
            w(f"+ {k}\n")
        for k in removed:
            w(f"- {k}\n")
        for c in changed:
            w(f"~ {c['key']}: {c['a']['dtype']}{c['a']['shape']} -> {c['b']['dtype']}{c['b']['shape']}\n")
        stats = {v["key"]: v for v in doc.get("values", [])}
        for k in value_changed:
            v = stats.get(k)
            extra = f" (max abs {v['max_abs']:.6g}, max rel {v['max_rel']:.6g})" if v else ""
            w(f"* {k}: value changed{extra}\n")
        w(f"{len(added)} added, {len(removed)} removed, {len(changed)} changed shape or dtype, "
          f"{len(value_changed)} changed value, {same} unchanged\n")
    if differs:
        raise _common.Finding()


def _in_pieces(reader, row: int) -> bool:
    """Whether tensor ``row`` is stored in pieces (a sharded save, TensorFlow's slices)."""
    pieces = reader.index.pieces
    return pieces is not None and pieces.of_row(row) is not None
