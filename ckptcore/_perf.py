"""Small helpers for the hot paths: a paused garbage collector, a checksum thread.

Pausing the cyclic garbage collector around allocation-heavy, cycle-free work:

Saving and restoring a graph of tens of thousands of arrays creates as many
small objects (index entries, JSON dicts); each allocation burst triggers
full collections that scan every live object. None of that work creates
reference cycles worth collecting, so it runs with the collector paused.

CRC32C releases the GIL, so checksums of large tensors run on one helper
thread while the caller's thread is in ``write``/``preadv``.

Example:
    >>> import gc
    >>> with paused_gc():
    ...     gc.isenabled()
    False
"""

from __future__ import annotations

import gc
import os
import threading
from contextlib import contextmanager

#: ``CKPTCORE_PURE_PYTHON=1``: the compiled helpers (``restore/_compiled.py``, ``saver``) are not used
PURE_PYTHON = os.environ.get("CKPTCORE_PURE_PYTHON", "") not in ("", "0")

_lock = threading.Lock()
_depth = 0
_we_disabled = False


@contextmanager
def paused_gc():
    """Disable ``gc`` for the block (nesting and threads safe); restore the previous state after.

    Example:
        >>> with paused_gc():
        ...     with paused_gc():
        ...         pass
    """
    global _depth, _we_disabled
    with _lock:
        if _depth == 0:
            _we_disabled = gc.isenabled()
            if _we_disabled:
                gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _we_disabled:
                _we_disabled = False
                gc.enable()


_crc_pool = None


def crc_executor():
    """The shared one-thread executor large checksums run on (created on first use).

    Example:
        >>> from ckptcore.formats import ckpt as fmt
        >>> crc_executor().submit(fmt.crc32c, b"123456789").result()
        3808858755
    """
    global _crc_pool
    if _crc_pool is None:
        with _lock:
            if _crc_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                _crc_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptcore-crc32c")
    return _crc_pool


def submit(fn, *args):
    """Run ``fn(*args)`` on the helper thread; a ``Future`` of its result.

    During interpreter shutdown no new work may be scheduled on threads, so it
    runs in the caller instead (an async save finishing at exit needs this).

    Example:
        >>> submit(sum, [1, 2]).result()
        3
    """
    try:
        return crc_executor().submit(fn, *args)
    except RuntimeError:
        from concurrent.futures import Future

        fut = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # delivered through the future, as from the thread
            fut.set_exception(e)
        return fut
