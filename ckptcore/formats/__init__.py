"""On-disk formats, side by side.

- :mod:`ckptcore.formats.ckpt`: ckptcore's own format (file layout, header, :class:`~ckptcore.formats.ckpt.Index`,
  reading an index of any version).
- :mod:`ckptcore.formats.ckpt_tables`: the graph and tensor-table columns and the node/tensor records of an index.
- :mod:`ckptcore.formats.ckpt_v2`: the current index body (versions 2-5): columns encoded and validated.
- :mod:`ckptcore.formats.ckpt_v1`: the older version-1 index (records), still read.

Example:
    >>> from ckptcore.formats import ckpt as fmt
    >>> fmt.INDEX_SUFFIX
    '.index'
"""
