"""Checks of the paths users pass to save, write, restore and the manager: mistakes are errors, with a fix.

Typing a checkpoint path is easy to get almost right: ``s3:/bucket/run/ckpt``
(one slash: a local folder named ``s3:``), ``""`` (files named ``-1.index``
in the working directory), ``"run/"`` (files named ``run/-1.index``),
``restore("ckpt-1.index")`` (the index of the checkpoint ``ckpt-1``, not a
checkpoint). :func:`check_checkpoint_path` catches those before anything is
written, with no I/O, and :func:`missing_checkpoint_hint` explains a missing
checkpoint once a read has failed. The command line tool uses the same two
functions.

Example:
    >>> from ckptcore.storage.paths import check_checkpoint_path
    >>> try:
    ...     check_checkpoint_path("s3:/bucket/run/ckpt", "save")
    ... except ValueError as e:
    ...     print(str(e).split("; ")[1])
    did you mean 's3://bucket/run/ckpt'?
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import InvalidPathError

__all__ = ["check_checkpoint_path", "missing_checkpoint_hint", "PURPOSES"]

#: What a path is checked for: a prefix to write (``save``: numbered; ``write``: exact), a checkpoint or
#: directory to read (``restore``), a directory (``directory``: the manager's, ``latest_checkpoint``'s).
PURPOSES = ("save", "write", "restore", "directory")

# "s3:/b/k", "gs:b/k", "s3:\\b" -- a URL scheme followed by fewer than two slashes. One letter is a drive.
_BROKEN_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):(/?)(?!/)(.*)$", re.S)
# ckpt-1.index, ckpt-1.data-00000-of-00001: a file of a checkpoint given where its prefix is expected
_FILE_SUFFIX = re.compile(r"^(.*?)(\.index|\.data-\d{5}-of-\d{5})$", re.S)
# URL schemes we always recognise, without asking fsspec
_COMMON_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2", "hdfs",
                             "http", "https", "memory", "file", "ftp", "sftp", "ssh", "webhdfs", "hf"})


def _is_known_scheme(scheme: str) -> bool:
    scheme = scheme.lower()
    if scheme in _COMMON_SCHEMES:
        return True
    try:
        from fsspec.registry import known_implementations, registry
    except ImportError:  # pragma: no cover - fsspec is a dependency
        return False
    return scheme in known_implementations or scheme in registry


def check_checkpoint_path(path: Any, purpose: str) -> str:
    """Validate a path given to ckptcore and return it as a string; raise a clear error for a likely mistake.

    ``purpose`` is one of :data:`PURPOSES`. No I/O is done. Refused, with
    :class:`~ckptcore.InvalidPathError` (a ``ValueError``) saying what to write instead:

    * a URL with a missing slash (``s3:/bucket/x``, ``gs:bucket/x``), which
      would otherwise be a local folder named ``s3:``;
    * an empty path, or (to ``save``/``write``) one ending in a separator,
      whose files would be named ``-1.index`` (``save("run/")`` means ``run/ckpt``?);
    * to ``save``/``write``, a prefix ending in ``.index`` or ``.data-*-of-*``
      (the files would be ``ckpt-1.index.index``).

    ``restore`` paths ending in ``.index`` are not refused here (a
    checkpoint may have such a name); :func:`missing_checkpoint_hint` explains
    them when nothing is found.

    Example:
        >>> check_checkpoint_path("run/ckpt", "save")
        'run/ckpt'
        >>> try:
        ...     check_checkpoint_path("run/", "save")
        ... except ValueError as e:
        ...     print(str(e).split("; ")[1])
        did you mean 'run/ckpt'?
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if isinstance(path, bytes):
        raise InvalidPathError(f"checkpoint paths are str or os.PathLike, got bytes {path!r}; "
                               f"did you mean {path.decode(errors='replace')!r}?")
    try:
        path = os.fspath(path)
    except TypeError:
        raise InvalidPathError(f"a checkpoint path must be a str or os.PathLike, got "
                               f"{type(path).__qualname__}") from None
    if "\x00" in path:
        raise InvalidPathError(f"checkpoint path {path!r} contains a NUL character")
    what = {"save": "save() prefix", "write": "write() path", "restore": "checkpoint path",
            "directory": "checkpoint directory"}[purpose]
    if not path.strip():
        example = "'ckpt' (in the working directory) or 'run/ckpt'" if purpose in ("save", "write") else "'run'"
        raise InvalidPathError(f"empty {what} {path!r}; did you mean {example}?")
    if "://" not in path:
        m = _BROKEN_URL.match(path)
        if m and _is_known_scheme(m.group(1)):
            fixed = f"{m.group(1)}://{m.group(3).lstrip(chr(92))}"
            raise InvalidPathError(f"{what} {path!r} is not a URL (a URL has two slashes after the scheme) and "
                                   f"would be a local folder named {m.group(1) + ':'!r}; did you mean {fixed!r}?")
    if purpose in ("save", "write"):
        body = path.split("://", 1)[1] if "://" in path else path
        seps = ("/",) if "://" in path else tuple({"/", os.sep})
        if not body or body.endswith(seps) or body.rstrip("/") in (".", ".."):
            base = path.rstrip("".join(seps)) or path
            raise InvalidPathError(f"{what} {path!r} names a directory, not a file prefix: the files would be "
                                   f"named '-1.index'; did you mean {base.rstrip('/') + '/ckpt'!r}?")
        m = _FILE_SUFFIX.match(path)
        if m and m.group(1) and not m.group(1).endswith(seps):
            raise InvalidPathError(f"{what} {path!r} ends in {m.group(2)!r}, the suffix of one of a checkpoint's "
                                   f"files; pass the prefix: did you mean {m.group(1)!r}?")
    return path


def missing_checkpoint_hint(path: str, exists) -> str:
    """A "did you mean ..." for a checkpoint path with no index, or ``""``; ``exists(p)`` tests one path.

    Called only once a read found nothing (so the common path pays no I/O).

    Example:
        >>> missing_checkpoint_hint("run/ckpt-1.index", {"run/ckpt-1.index"}.__contains__)
        " did you mean 'run/ckpt-1'? (pass a checkpoint's prefix, not one of its files)"
        >>> missing_checkpoint_hint("run/ckpt-9", lambda p: False)
        ''
    """
    m = _FILE_SUFFIX.match(path)
    if m and m.group(1) and exists(m.group(1) + ".index"):
        return f" did you mean {m.group(1)!r}? (pass a checkpoint's prefix, not one of its files)"
    if "://" not in path:
        m2 = _BROKEN_URL.match(path)
        if m2 and _is_known_scheme(m2.group(1)):
            return f" did you mean {m2.group(1) + '://' + m2.group(3)!r}?"
    return ""
