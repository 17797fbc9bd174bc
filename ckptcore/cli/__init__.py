"""The ``ckptcore`` command line: ``ls``, ``inspect``, ``diff``, ``verify``, ``convert``.

Run as ``ckptcore ...`` (the console script) or ``python -m ckptcore ...``.
Needs the ``cli`` extra (``pip install 'ckptcore[cli]'``: typer and rich);
``import ckptcore`` never imports them. See docs/cli.md.

Exit codes: 0 success, 1 a finding (corruption, differences), 2 a usage error.

Example:
    >>> from ckptcore import cli
    >>> cli.main(["--version"])  # doctest: +ELLIPSIS
    ckptcore ...
    0
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return its exit code.

    Example:
        >>> from ckptcore import cli
        >>> cli.main(["ls", "memory://doc/cli/main-empty", "--json"])
        {"directory": "memory://doc/cli/main-empty", "checkpoints": [], "partial": [], "latest": null}
        0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:
        from .._version import version_of

        sys.stdout.write(f"ckptcore {version_of('ckptcore')}\n")
        return 0
    try:
        from ._app import build
    except ImportError as e:
        sys.stderr.write(f"ckptcore: the command line needs the 'cli' extra ({e.name or e} is missing): "
                         "pip install 'ckptcore[cli]'\n")
        return 2
    app = build()
    try:
        app(args=argv, prog_name="ckptcore", standalone_mode=True)
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 2
    return 0
