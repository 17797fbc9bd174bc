"""ckptcore benchmarks: ``make bench`` (or ``python -m benchmarks --help``).

Every figure is a ratio to "raw" measured in the same run: one plain
``os.write`` of the same bytes from one buffer followed by ``fsync`` (save),
or ``preadv`` of them into preallocated memory (load). See
``docs/performance.md`` for the latest table and how it was taken.
"""
