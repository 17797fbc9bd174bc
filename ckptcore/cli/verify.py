"""``ckptcore verify PATH...``: check every tensor's checksum, with a progress bar.

Reads each data file in order through one 8 MiB buffer
(:meth:`ckptcore.CheckpointReader.verify`), so memory stays bounded. Every
problem is reported, not just the first: each corrupt tensor with its file
and key, each missing or truncated data file. Exit 1 if any.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> from ckptcore.cli import main
    >>> p = ck.Checkpoint(a=np.ones(4)).write("memory://doc/cli/verify/c")
    >>> main(["verify", p])
    ok  memory://doc/cli/verify/c: 32 B verified
    0
"""

from __future__ import annotations

from . import _common


def run(paths: list[str], storage_options: dict, as_json: bool, show_progress: bool) -> None:
    from .. import progress
    from ..errors import CorruptCheckpointError
    from ..reader import CheckpointReader

    prefixes = [_common.resolve_checkpoint(p, storage_options) for p in paths]
    results: list[dict] = []
    readers: list[tuple[str, CheckpointReader | None, CorruptCheckpointError | None]] = []
    for prefix in prefixes:
        try:
            readers.append((prefix, CheckpointReader(prefix, storage_options), None))
        except CorruptCheckpointError as e:  # a corrupt index: a finding about this checkpoint
            readers.append((prefix, None, e))
    total = sum(sum(r.index.shard_sizes) for _, r, _ in readers if r is not None)
    bar = progress.bar("verifying", total, show_progress)
    try:
        for prefix, reader, index_error in readers:
            errors: list[CorruptCheckpointError] = [index_error] if index_error is not None else []
            nbytes = 0
            if reader is not None:
                if bar is not None:
                    reader.progress = bar.update
                nbytes = reader.verify(errors)
            results.append({"path": prefix, "ok": not errors, "bytes": nbytes,
                            "checksums": reader is None or reader.index.checksummed,
                            "errors": [{"file": e.path, "key": e.key, "message": str(e)} for e in errors]})
    finally:
        progress.close(bar)
    ok = all(r["ok"] for r in results)
    if as_json:
        _common.emit_json({"ok": ok, "checkpoints": results})
    else:
        import sys

        for r in results:
            if r["ok"] and not r["checksums"]:
                sys.stdout.write(f"ok  {r['path']}: its format stores no checksums; only its layout was checked\n")
            elif r["ok"]:
                sys.stdout.write(f"ok  {r['path']}: {_common.human_bytes(r['bytes'])} verified\n")
            else:
                sys.stdout.write(f"CORRUPT  {r['path']}: {len(r['errors'])} problem(s)\n")
                for problem in r["errors"]:
                    where = f"file {problem['file']}" + (f", key {problem['key']}" if problem["key"] else "")
                    sys.stdout.write(f"  {where}: {problem['message']}\n")
    if not ok:
        raise _common.Finding()
