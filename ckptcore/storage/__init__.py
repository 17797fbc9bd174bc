"""Storage: where checkpoint bytes go, behind one small file-system interface.

- :mod:`ckptcore.storage.local`: the :class:`Storage` interface and its call order (the commit
  protocol), :class:`LocalStorage` (local disk, vectored I/O, fsync) and :class:`FsspecStorage`
  (any fsspec protocol, ``memory://`` included), and :func:`open_storage`.
- :mod:`ckptcore.storage.cloud`: :class:`~ckptcore.storage.cloud.CloudStorage` for object stores
  (``s3://``, ``gs://``): multipart uploads, parallel ranged reads, no renames.
- :mod:`ckptcore.storage.retry`: retries with backoff for transient object-store errors.

Example:
    >>> import ckptcore as ck
    >>> st, path = ck.storage.open_storage("memory://doc/storage-pkg/file")
    >>> st.write_atomic(path, b"hi")
    >>> st.read_bytes(path)
    b'hi'
"""

from .local import FsspecStorage, LocalStorage, Storage, open_storage, split_protocol

__all__ = ["Storage", "FsspecStorage", "LocalStorage", "open_storage", "split_protocol"]
