"""Progress bars and log lines for long checkpoint work.

The library never prints. It reports in two ways:

- **Logging**, on ``logging.getLogger("ckptcore")``: one INFO line per save
  and per restore (path, bytes, seconds, GB/s), DEBUG lines for the phases
  (planning, data written, index committed). Nothing shows unless the
  application configures logging (``logging.basicConfig(level=logging.INFO)``).
- **A progress bar** (bytes, rate, ETA) on stderr, only when asked for with
  ``CheckpointOptions(progress=True)`` (or the CLI's default) *and* stderr is
  a terminal; piped or redirected output gets nothing. It is drawn with tqdm
  (the ``ckptcore[progress]`` extra) or, failing that, rich; with neither
  installed there is no bar.

Example:
    >>> from ckptcore import progress
    >>> bar = progress.bar("saving", 100, enabled=False)  # disabled: None, and every call below is a no-op
    >>> bar is None
    True
    >>> with progress.Timer() as t:
    ...     pass
    >>> t.seconds >= 0
    True
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["bar", "Bar", "Timer", "log", "log_done", "rate", "CountingReader"]

log = logging.getLogger("ckptcore")


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Bar:
    """A thread-safe byte progress bar on stderr (tqdm, else rich).

    ``update(nbytes)`` may be called from any thread (the async writer's, the
    shard workers'). ``close()`` is idempotent.

    Example:
        >>> import io
        >>> b = Bar("demo", 10, stream=io.StringIO())   # a non-terminal stream still draws when made directly
        >>> b.update(4); b.update(6); b.close(); b.done
        10
    """

    def __init__(self, desc: str, total: int, stream: Any = None):
        self.done = 0
        self.total = int(total)
        self._lock = threading.Lock()
        self._closed = False
        stream = sys.stderr if stream is None else stream
        self._tqdm = self._rich = None
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self._tqdm = tqdm(total=self.total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                              file=stream, leave=False, dynamic_ncols=True, mininterval=0.2)
            return
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
        except ImportError:  # neither installed: a silent bar
            return
        self._rich = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                              TransferSpeedColumn(), TimeRemainingColumn(),
                              console=Console(file=stream), transient=True)
        self._rich.start()
        self._task = self._rich.add_task(desc, total=self.total)

    def update(self, nbytes: int) -> None:
        with self._lock:
            if self._closed:
                return
            self.done += nbytes
            if self._tqdm is not None:
                self._tqdm.update(nbytes)
            elif self._rich is not None:
                self._rich.update(self._task, advance=nbytes)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._tqdm is not None:
                self._tqdm.close()
            elif self._rich is not None:
                self._rich.stop()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(desc: str, total: int, enabled: bool, stream: Any = None) -> Bar | None:
    """A :class:`Bar` if ``enabled`` and ``stream`` (default stderr) is a terminal, else None.

    ``CKPTCORE_PROGRESS=0`` in the environment turns every bar off.

    Example:
        >>> import io
        >>> bar("x", 1, enabled=True, stream=io.StringIO()) is None   # not a terminal: no bar
        True
    """
    if not enabled or os.environ.get("CKPTCORE_PROGRESS", "").strip() == "0":
        return None
    stream = sys.stderr if stream is None else stream
    if not _is_terminal(stream):
        return None
    return Bar(desc, total, stream=stream)


def close(b: Bar | None) -> None:
    """Close ``b`` if it is a bar.

    Example:
        >>> close(None)
    """
    if b is not None:
        b.close()


class Timer:
    """Wall-clock seconds of a ``with`` block (``time.perf_counter``).

    Example:
        >>> with Timer() as t:
        ...     pass
        >>> isinstance(t.seconds, float)
        True
    """

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def rate(nbytes: int, seconds: float) -> float:
    """GB/s (10^9 bytes per second), 0.0 for an instant.

    Example:
        >>> rate(2_000_000_000, 2.0)
        1.0
    """
    return nbytes / seconds / 1e9 if seconds > 0 else 0.0


def log_done(what: str, path: str, nbytes: int, seconds: float) -> None:
    """The one INFO line of a finished save or restore.

    Example:
        >>> import logging
        >>> logging.getLogger("ckptcore").isEnabledFor(logging.DEBUG) in (True, False)
        True
        >>> log_done("saved", "memory://x/ckpt-1", 10, 0.5)
    """
    if log.isEnabledFor(logging.INFO):
        log.info("%s %s: %d bytes in %.3f s (%.2f GB/s)", what, path, nbytes, seconds, rate(nbytes, seconds))


class CountingReader:
    """Wraps a storage reader; reports the bytes each ``readinto``/``readv`` returns to ``report``.

    Everything else (``piece_size``, ``close``, the context manager) is the wrapped reader's.

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, p = open_storage("memory://doc/progress/f"); st.write_atomic(p, b"abcdef")
        >>> seen = []
        >>> with st.open_reader(p) as rd:
        ...     n = CountingReader(rd, seen.append).readinto(0, bytearray(4))
        >>> n, seen
        (4, [4])
    """

    #: reports come from the calling thread only (a progress bar is not updated from two threads)
    concurrent_readv = False

    def __init__(self, reader: Any, report: Callable[[int], None]):
        self._reader = reader
        self._report = report
        if getattr(reader, "readv", None) is None:
            self.readv = None  # type: ignore[method-assign,assignment]  # callers test for it

    def readinto(self, offset: int, buf) -> int:
        n = self._reader.readinto(offset, buf)
        if n:
            self._report(n)
        return n

    def readv(self, offset: int, bufs, sizes=None) -> int:
        n = self._reader.readv(offset, bufs, sizes)
        if n:
            self._report(n)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def __enter__(self) -> CountingReader:
        self._reader.__enter__()
        return self

    def __exit__(self, *exc) -> Any:
        return self._reader.__exit__(*exc)
