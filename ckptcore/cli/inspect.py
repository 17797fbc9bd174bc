"""``ckptcore inspect PATH``: a checkpoint's object graph as a tree; ``--keys``: its flat key list.

The tree shows each edge name, the adapter that wrote the object and its
type, each attribute's dtype, shape and size, optimizer slot variables
under their optimizer, and an object reached along several paths once (later
edges point back to it). Totals, format version and the user metadata follow.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> from ckptcore.cli import main
    >>> m = ck.Module(); m.w = ck.Variable(np.zeros((2, 3), np.float32))
    >>> p = ck.Checkpoint(model=m).write("memory://doc/cli/inspect/c")
    >>> main(["inspect", p, "--keys", "--json"])  # doctest: +ELLIPSIS
    {"path": "memory://doc/cli/inspect/c", "keys": [{"key": "model/w/.ATTRIBUTES/VARIABLE_VALUE", ..., "nbytes": 24}]}
    0
"""

from __future__ import annotations

from . import _common


def _shape(shape) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def graph_tree(index) -> dict:
    """The index's object graph as nested dicts (what ``--json`` prints under ``tree``)."""
    g, t = index.graph, index.table
    seen: dict[int, str] = {0: ""}
    slot_nodes = {s for rows in g.slots.values() for _v, _n, s in rows}

    def attrs(nid: int) -> list[dict]:
        out = []
        for name, row in zip(g.attr_name[g.attr_start[nid]:g.attr_start[nid + 1]], g.attributes(nid)):
            out.append({"name": name, "key": t.key[row], "dtype": t.dtype[row], "shape": list(t.shape[row]),
                        "nbytes": t.nbytes[row]})
        return out

    def path_of(nid: int) -> str:
        return seen.get(nid, "?")

    def node(nid: int, name: str, path: str) -> dict:
        out: dict = {"name": name, "id": nid, "adapter": g.adapter[nid], "type": g.type[nid],
                     "attributes": attrs(nid), "children": []}
        if nid in g.state:
            out["state"] = g.state[nid]
        return out

    root = node(0, "", "")
    queue = [(0, root, "")]
    i = 0
    while i < len(queue):  # breadth first: each object under its shortest path, as the saver numbers them
        nid, doc, path = queue[i]
        i += 1
        for name, child in g.children(nid):
            cpath = f"{path}/{name}" if path else name
            if child in seen:
                doc["children"].append({"name": name, "id": child, "same_as": seen[child] or "(root)"})
                continue
            seen[child] = cpath
            cdoc = node(child, name, cpath)
            doc["children"].append(cdoc)
            queue.append((child, cdoc, cpath))
    by_id = {nid: doc for nid, doc, _ in queue}
    for opt, rows in sorted(g.slots.items()):
        opt_doc = by_id.get(opt)
        if opt_doc is None:
            continue
        opt_doc["slots"] = [{"variable": path_of(v), "name": sname, "attributes": attrs(s)} for v, sname, s in rows]
    unreached = [n for n in range(len(g)) if n not in seen and n not in slot_nodes]
    if unreached:
        root["unreached"] = unreached
    return root


def run(path: str, storage_options: dict, as_json: bool, keys: bool) -> None:
    from ..formats import ckpt as fmt
    from ..reader import CheckpointReader

    prefix = _common.resolve_checkpoint(path, storage_options)
    reader = CheckpointReader(prefix, storage_options)
    index, t = reader.index, reader.index.table
    if keys:
        rows = [{"key": t.key[r], "dtype": t.dtype[r], "shape": list(t.shape[r]), "nbytes": t.nbytes[r]}
                for r in sorted(range(len(t)), key=t.key.__getitem__)]
        if as_json:
            _common.emit_json({"path": prefix, "keys": rows})
            return
        from rich.table import Table

        table = Table(title=prefix, title_justify="left")
        for col in ("key", "dtype", "shape", "size"):
            table.add_column(col, justify="right" if col == "size" else "left")
        for r in rows:
            table.add_row(r["key"], r["dtype"], _shape(r["shape"]), _common.human_bytes(r["nbytes"]))
        _common.console().print(table)
        return
    tree = graph_tree(index)
    user_meta = reader.metadata
    summary = {"path": prefix, "format": reader.format.name, "format_version": index.version,
               "num_shards": index.num_shards,
               "objects": len(index.graph), "tensors": len(t), "bytes": sum(t.nbytes), "metadata": user_meta,
               "metrics": index.metadata.get(fmt.METRICS_KEY)}
    if as_json:
        _common.emit_json({**summary, "tree": tree})
        return
    from rich.markup import escape
    from rich.tree import Tree

    def label(doc: dict) -> str:
        name = escape(doc["name"]) if doc["name"] else "(root)"
        if "same_as" in doc:
            return f"[bold]{name}[/] -> same object as {escape(doc['same_as'])}"
        attrs = doc["attributes"]
        if len(attrs) == 1 and attrs[0]["name"] == "VARIABLE_VALUE" and not doc["children"]:
            a = attrs[0]
            return (f"[bold]{name}[/]  {a['dtype']}{_shape(a['shape'])}  {_common.human_bytes(a['nbytes'])}"
                    f"  [dim]{escape(doc['adapter'])}[/]")
        return f"[bold]{name}[/]  [dim]{escape(doc['adapter'])} ({escape(doc['type'])})[/]"

    def add(parent, doc: dict) -> None:
        branch = parent.add(label(doc))
        attrs = doc.get("attributes", [])
        if not (len(attrs) == 1 and attrs[0]["name"] == "VARIABLE_VALUE" and not doc.get("children")):
            for a in attrs:
                branch.add(f"{escape(a['name'])}  {a['dtype']}{_shape(a['shape'])}  {_common.human_bytes(a['nbytes'])}")
        if "state" in doc:
            branch.add(f"[dim]state: {escape(str(doc['state']))[:200]}[/]")
        for c in doc.get("children", []):
            add(branch, c)
        for s in doc.get("slots", []):
            a = s["attributes"][0] if s["attributes"] else None
            spec = f"  {a['dtype']}{_shape(a['shape'])}  {_common.human_bytes(a['nbytes'])}" if a else ""
            branch.add(f"slot [bold]{escape(s['name'])}[/] of {escape(s['variable'])}{spec}")

    root = Tree(f"[bold]{escape(prefix)}[/]  [dim]{escape(tree['adapter'])} ({escape(tree['type'])})[/]")
    for c in tree["children"]:
        add(root, c)
    con = _common.console()
    con.print(root)
    con.print(f"{summary['objects']} objects, {summary['tensors']} tensors, {_common.human_bytes(summary['bytes'])}"
              f" in {index.num_shards} data file(s); " +
              (f"format version {index.version}" if reader.format.name == "ckptcore"
               else f"{reader.format.name} format"))
    if user_meta:
        import json

        con.print("metadata: " + escape(json.dumps(user_meta, sort_keys=True)), soft_wrap=True)
    if summary["metrics"] is not None:
        import json

        con.print("metrics: " + escape(json.dumps(summary["metrics"], sort_keys=True)), soft_wrap=True)
