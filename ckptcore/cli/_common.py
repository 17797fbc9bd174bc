"""What every command shares: storage options, path checks, output, exit codes.

Exit codes: 0 success, 1 a finding (corruption, differences), 2 a usage
error (bad arguments, a path that is not a checkpoint).

Example:
    >>> from ckptcore.cli._common import parse_storage_options
    >>> parse_storage_options(["anon=true", "endpoint_url=http://127.0.0.1:9000", "max_pool=8"])
    {'anon': True, 'endpoint_url': 'http://127.0.0.1:9000', 'max_pool': 8}
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_FINDING, EXIT_USAGE = 0, 1, 2

class Finding(Exception):
    """A command found something (corruption, a difference): exit code 1, after its report."""


class Usage(Exception):
    """A usage error with a message: exit code 2."""


def parse_storage_options(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings to fsspec storage options; values parsed as JSON when they are JSON.

    Example:
        >>> parse_storage_options(['client_kwargs={"region_name": "eu-west-1"}', "token=anon"])
        {'client_kwargs': {'region_name': 'eu-west-1'}, 'token': 'anon'}
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Usage(f"--storage-option takes key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
        except RecursionError:
            raise Usage(f"--storage-option {key}: its JSON value is nested too deeply") from None
    return out


def check_url(path: str, purpose: str = "restore") -> str:
    """The library's path checks (:func:`ckptcore.storage.paths.check_checkpoint_path`), as a usage error.

    Example:
        >>> check_url("s3://bucket/run")
        's3://bucket/run'
        >>> try:
        ...     check_url("s3:/bucket/run")
        ... except Usage as e:
        ...     print(str(e).split("; ")[1])
        did you mean 's3://bucket/run'?
    """
    from ..errors import InvalidPathError
    from ..storage.paths import check_checkpoint_path

    try:
        return check_checkpoint_path(path, purpose)
    except InvalidPathError as e:
        raise Usage(str(e)) from None


def resolve_checkpoint(path: str, storage_options: dict, *, latest: bool = True) -> str:
    """The checkpoint that ``path`` names, or a :class:`Usage` error saying what is wrong.

    Accepts a prefix (``run/ckpt-3``), its ``.index`` or a data file, a trailing
    ``/``, (with ``latest``) a directory, meaning its latest checkpoint, and a
    single file, which :class:`~ckptcore.CheckpointReader` opens if its format is
    read (``model.safetensors``) or refuses saying what it is (a pickle is never
    unpickled).

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> p = ck.Checkpoint(a=np.ones(1)).save("memory://doc/cli/resolve/ckpt")
        >>> resolve_checkpoint(p + ".index", {}), resolve_checkpoint("memory://doc/cli/resolve/", {})
        ('memory://doc/cli/resolve/ckpt-1', 'memory://doc/cli/resolve/ckpt-1')
    """
    from ..formats import ckpt as fmt
    from ..state import latest_checkpoint
    from ..storage import open_storage

    check_url(path)
    candidates = [path]
    if path.endswith(fmt.INDEX_SUFFIX):
        candidates.insert(0, path[:-len(fmt.INDEX_SUFFIX)])
    m = re.fullmatch(r"(.+)\.data-\d{5}-of-\d{5}", path)
    if m:
        candidates.insert(0, m.group(1))
    if path.endswith("/") and path.rstrip("/"):
        candidates.insert(0, path.rstrip("/"))
    for cand in candidates:
        storage, spath = open_storage(cand, storage_options)
        if storage.exists(fmt.index_path(spath)):
            return cand
    storage, spath = open_storage(path.rstrip("/") or path, storage_options)
    if latest and storage.isdir(spath):
        found = latest_checkpoint(path, storage_options=storage_options)
        if found is not None:
            return found
        listed = [n for n in storage.listdir(spath) if n.endswith(fmt.INDEX_SUFFIX)]
        if listed:
            names = ", ".join(n[:-len(fmt.INDEX_SUFFIX)] for n in sorted(listed)[:5])
            raise Usage(f"{path} is a directory without a checkpoint state file; its checkpoints: {names}. "
                        "Pass one of them (`ckptcore ls` lists them)")
        raise Usage(f"no checkpoint in the directory {path}")
    try:
        is_file = storage.exists(spath) and not storage.isdir(spath)
    except Exception:
        is_file = False
    if is_file:  # a single file: the reader opens it (model.safetensors) or says what it is (a pickle, ...)
        return path
    from ..storage.paths import missing_checkpoint_hint

    def exists(p: str) -> bool:
        st, sp = open_storage(p, storage_options)
        return st.exists(sp)

    hint = missing_checkpoint_hint(path, exists) or _did_you_mean(storage, spath)
    raise Usage(f"no checkpoint at {path}: {fmt.index_path(path)} does not exist{hint}")


def _did_you_mean(storage, spath: str) -> str:
    import difflib

    from ..formats import ckpt as fmt

    try:
        d, base = storage.dirname(spath), storage.basename(spath)
        names = [n[:-len(fmt.INDEX_SUFFIX)] for n in storage.listdir(d) if n.endswith(fmt.INDEX_SUFFIX)]
    except Exception:
        return ""
    close = difflib.get_close_matches(base, names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def emit_json(doc: Any) -> None:
    """Write ``doc`` as JSON on stdout (the ``--json`` output).

    Example:
        >>> emit_json({"ok": True})
        {"ok": true}
    """
    sys.stdout.write(json.dumps(doc, indent=None, default=str) + "\n")


def console():
    """A rich console on stdout (wide when stdout is not a terminal, so piped tables are not wrapped)."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=200, no_color=True, highlight=False)


def error(msg: str) -> None:
    sys.stderr.write(f"ckptcore: error: {msg}\n")


def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``.

    Example:
        >>> human_bytes(0), human_bytes(1536), human_bytes(3 << 30)
        ('0 B', '1.5 KiB', '3.0 GiB')
    """
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{int(x)} B" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"  # pragma: no cover


def command(fn: Callable) -> Callable:
    """Wrap a command: ckptcore errors and usage errors become a message on stderr and an exit code."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        import typer

        from ..errors import CheckpointError, CorruptCheckpointError

        try:
            return fn(*args, **kwargs)
        except Finding:
            raise typer.Exit(EXIT_FINDING) from None
        except Usage as e:
            error(str(e))
            raise typer.Exit(EXIT_USAGE) from None
        except CorruptCheckpointError as e:
            error(str(e))
            raise typer.Exit(EXIT_FINDING) from None
        except (CheckpointError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                ImportError, ValueError) as e:
            error(str(e))
            raise typer.Exit(EXIT_USAGE) from None

    return run
