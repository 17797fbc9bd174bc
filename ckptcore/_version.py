"""The installed version of a distribution: pyproject.toml's ``version`` is the one source.

Example:
    >>> from ckptcore._version import version_of
    >>> version_of("ckptcore") == __import__("ckptcore").__version__
    True
    >>> version_of("no-such-distribution-ckptcore")
    '0+unknown'
"""

from __future__ import annotations

#: What ``__version__`` says in a source checkout that was never installed (not even editable).
UNKNOWN = "0+unknown"


def version_of(distribution: str) -> str:
    """``importlib.metadata.version(distribution)``, or :data:`UNKNOWN` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version  # here: ~20 ms, paid only when asked

    try:
        return version(distribution)
    except PackageNotFoundError:
        return UNKNOWN
