"""On-disk formats, side by side.

- :mod:`ckptcore.formats.ckpt`: ckptcore's own format (index layout, validation, encoding).
- :mod:`ckptcore.formats.ckpt_v1`: the older version-1 index (records), still read.

Example:
    >>> from ckptcore.formats import ckpt as fmt
    >>> fmt.INDEX_SUFFIX
    '.index'
"""
