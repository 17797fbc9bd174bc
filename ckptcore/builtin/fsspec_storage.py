"""Built-in storage plugin: every fsspec protocol, with a fast path for local disk.

Example:
    >>> import ckptcore as ck
    >>> st, path = ck.storage.open_storage("memory://doc/builtin")
    >>> type(st).__name__
    'FsspecStorage'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import StorageError
from ..hookspec import hookimpl
from ..storage import FsspecStorage, LocalStorage

_INSTALL_HINTS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
_EXTRAS = {"s3fs": "ckptcore[s3]", "gcsfs": "ckptcore[gcs]"}


def fsspec_factory(protocol: str, storage_options: Mapping[str, Any], url: str):
    """Resolve ``url`` with fsspec; local paths get :class:`LocalStorage`.

    Example:
        >>> fsspec_factory("file", {}, "/tmp/x")[1]
        '/tmp/x'
    """
    if protocol == "file" and not storage_options:
        path = url[len("file://"):] if url.startswith("file://") else url
        return LocalStorage(), os.path.abspath(os.path.expanduser(path))
    import fsspec
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as e:
        pkg = _INSTALL_HINTS.get(protocol)
        hint = f" Install {pkg} to access {protocol}:// URLs: pip install '{_EXTRAS.get(pkg, pkg)}'." if pkg else ""
        raise StorageError(f"cannot open {url!r}: {e}.{hint}") from e
    except ValueError as e:
        raise StorageError(f"cannot open {url!r}: {e}") from e
    except Exception as e:  # the client failed to set up: credentials files, token, configuration
        raise StorageError(f"cannot open {url!r}: {type(e).__name__}: {e}. Check the credentials and "
                           "storage_options for this URL.") from e
    if protocol == "file":
        return LocalStorage(), path
    from ..storage.cloud import OBJECT_STORE_PROTOCOLS, CloudStorage

    if protocol in OBJECT_STORE_PROTOCOLS:
        return CloudStorage(fs, protocol=protocol), path
    return FsspecStorage(fs), path


@hookimpl
def ckptcore_register_storage():
    from ..adapters import StorageRegistration

    return [StorageRegistration(protocols=("*",), factory=fsspec_factory, priority=-100, plugin="fsspec")]
