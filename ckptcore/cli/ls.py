"""``ckptcore ls DIR``: the checkpoints of a directory or bucket prefix, oldest first.

Each complete checkpoint (an index whose data files are all there, with the
sizes it records) is listed with its number, time, size and format;
leftovers of a crashed save (data or temp files without an index, an index
with missing data) are listed as partial. The latest one is the state
file's.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> from ckptcore.cli import main
    >>> m = ck.CheckpointManager(ck.Checkpoint(a=np.ones(2)), "memory://doc/cli/ls", max_to_keep=None)
    >>> _ = m.save(); _ = m.save()
    >>> main(["ls", "memory://doc/cli/ls", "--json"])  # doctest: +ELLIPSIS
    {"directory": "memory://doc/cli/ls", "checkpoints": [{"name": "ckpt-1", "number": 1, ...
    0
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from . import _common

_NUMBER = re.compile(r"-(\d+)$")
_DATA = re.compile(r"(.+)\.data-(\d{5})-of-(\d{5})$")
_TEMP = re.compile(r"\.(.+?)\.(?:index|data-\d{5}-of-\d{5}|checkpoint)\.tmp-[0-9a-f]{32}$")


def _describe(storage, d: str, name: str, listed: set[str]) -> dict:
    from ..errors import CheckpointError
    from ..formats import ckpt as fmt
    from ..manager import _mtime
    from ..reader import CheckpointReader

    prefix = storage.join(d, name)
    index = fmt.index_path(prefix)
    m = _NUMBER.search(name)
    out = {"name": name, "number": int(m.group(1)) if m else None, "time": None, "bytes": 0,
           "format": None, "version": None, "complete": False, "problem": None}
    stamp = _mtime(storage, index)
    if stamp is not None:
        out["time"] = datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")
    try:
        reader = CheckpointReader(prefix, storage=storage, storage_path=prefix)
        out["format"] = reader.format.name
        out["version"] = reader.index.version if reader.format.name == "ckptcore" else None
        out["bytes"] = storage.size(index) + sum(reader.index.shard_sizes)
        out["tensors"] = len(reader.index.table)
        reader.check_data_files()
        out["complete"] = True
    except CheckpointError as e:
        out["problem"] = str(e)
    return out


def run(directory: str, storage_options: dict, as_json: bool) -> None:
    from ..errors import CorruptCheckpointError
    from ..formats import ckpt as fmt
    from ..state import read_state
    from ..storage import open_storage

    _common.check_url(directory, "directory")
    storage, d = open_storage(directory.rstrip("/") or directory, storage_options)
    if not storage.isdir(d) and storage.exists(d):
        raise _common.Usage(f"{directory} is a file, not a directory: `ckptcore inspect {directory}` looks inside "
                            "a checkpoint")
    names = storage.listdir(d)
    listed = set(names)
    if not names and not storage.isdir(d) and "://" not in directory:
        raise _common.Usage(f"no directory {directory}")
    try:
        state = read_state(storage, d)
    except CorruptCheckpointError:
        state = None
    prefixes = sorted({n[:-len(fmt.INDEX_SUFFIX)] for n in names if n.endswith(fmt.INDEX_SUFFIX)
                       and not n.startswith(".")})
    rows = [_describe(storage, d, p, listed) for p in prefixes]
    # leftovers of crashed saves: data files of no index, temp files
    partial: dict[str, list[str]] = {}
    for n in names:
        m = _DATA.match(n)
        if m and m.group(1) not in prefixes:
            partial.setdefault(m.group(1), []).append(n)
            continue
        m = _TEMP.match(n)
        if m:
            partial.setdefault(m.group(1), []).append(n)
    latest = None
    if state is not None:
        for cand in ([state.latest] if state.latest else []) + list(reversed(state.all)):
            if any(r["name"] == cand and r["complete"] for r in rows):
                latest = cand
                break
    for r in rows:
        r["latest"] = r["name"] == latest
    rows.sort(key=lambda r: (r["number"] is None, r["number"] if r["number"] is not None else 0,
                             r["time"] or "", r["name"]))
    leftovers = [{"name": k, "files": sorted(v)} for k, v in sorted(partial.items())]
    if as_json:
        _common.emit_json({"directory": directory, "checkpoints": rows, "partial": leftovers, "latest": latest})
        return
    from rich.table import Table

    con = _common.console()
    if not rows and not leftovers:
        con.print(f"no checkpoints in {directory}")
        return
    table = Table(title=f"checkpoints in {directory}", title_justify="left")
    for col in ("name", "number", "time (UTC)", "size", "format", "state"):
        table.add_column(col, justify="right" if col in ("number", "size") else "left")
    for r in rows:
        state_txt = ("complete" if r["complete"] else f"partial: {r['problem']}") + (", latest" if r["latest"] else "")
        fmt_txt = (r["format"] or "?") + (f" v{r['version']}" if r["version"] else "")  # "?": no readable index
        table.add_row(r["name"], "" if r["number"] is None else str(r["number"]), r["time"] or "?",
                      _common.human_bytes(r["bytes"]), fmt_txt, state_txt)
    for left in leftovers:
        table.add_row(str(left["name"]), "", "", "", "",
                      f"partial: leftovers of a crashed save ({', '.join(left['files'])})")
    con.print(table)
