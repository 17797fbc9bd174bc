"""Reading tensors from a data file: coalesced runs, checksums, large tensors in pieces.

:class:`~ckptcore.reader.CheckpointReader` hands this module the tensors to read from one data
file (``read_tensors`` for entries, ``_read_rows_sorted`` for index rows in file order). Runs of
neighbouring small tensors are read with one ``readv`` each, straight into their arrays; where
the storage reader allows it (``concurrent_readv``), two threads read and check runs at once.
Large tensors are read piece by piece, each piece checksummed while the next is read.

Example:
    >>> import numpy as np, ckptcore as ck
    >>> from ckptcore import data_reads
    >>> r = ck.load_checkpoint(ck.Checkpoint(a=np.arange(3.0)).write("memory://doc/data_reads/c"))
    >>> out = np.zeros(3)
    >>> with r.storage.open_reader(r.data_file(0)) as rd:
    ...     data_reads.read_tensors(rd, r.data_file(0), [(r.index.table.entry(0), out, None)], True)
    >>> out.tolist()
    [0.0, 1.0, 2.0]
"""

from __future__ import annotations

from itertools import accumulate, count
from operator import itemgetter

import numpy as np

from ._perf import submit
from .errors import CorruptCheckpointError
from .formats import ckpt as fmt

COALESCE_GAP = 4096          # merge reads of small tensors closer than this
COALESCE_MAX = 16 << 20       # into blocks up to this size
SMALL_READ = 1 << 20
#: where the reader allows it (``concurrent_readv``), runs of small tensors up to this size are read by
#: this thread and the checksum thread at once, each run checksummed by the thread that read it while
#: it is still in that core's cache (two threads read and check 256 MiB of 13 KB arrays in ~31-36 ms,
#: one thread reading and the other checking in ~45-50 ms; see docs/performance.md)
PARALLEL_RUN = 1 << 20
_SCRATCH = memoryview(bytearray(COALESCE_GAP + fmt.ALIGNMENT))  # sink for padding between scattered tensors
_PADDING = [_SCRATCH[:n] for n in range(COALESCE_GAP + 1)]  # a view of every padding length, made once


def _offset_of(request) -> int:
    return request[0].offset


def _shard_offset_of(request) -> tuple[int, int]:
    return request[0].shard, request[0].offset


class _Stopped(Exception):
    """A parallel shard read stopped because another one (or a callback) failed."""


def _bytes_of(arr: np.ndarray) -> np.ndarray:
    return arr.reshape(-1).view(np.uint8)


def _finish(entry: fmt.TensorEntry, arr: np.ndarray, path: str, verify: bool, callback, crc: int | None = None) -> None:
    if verify:
        if crc is None:
            crc = fmt.crc32c(_bytes_of(arr))
        if crc != entry.crc32c:
            raise _mismatch(entry, path)
    if not np.little_endian:  # pragma: no cover - big-endian hosts
        arr = arr.byteswap().view(arr.dtype.newbyteorder())
    if callback is not None:
        callback(arr)


def _mismatch(entry: fmt.TensorEntry, path: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"checksum mismatch for tensor {entry.key!r} in {path}: the checkpoint is corrupt",
                                  path=path, key=entry.key)


def _short(entry: fmt.TensorEntry, path: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"data file {path} is truncated: tensor {entry.key!r} is incomplete",
                                  path=path, key=entry.key)


def _crc_after(prev, piece) -> int:
    # runs on the single checksum thread, so ``prev`` (submitted earlier) is already done
    return fmt.crc32c(piece, prev.result() if prev is not None else 0)


def _read_large(rd, path: str, entry: fmt.TensorEntry, arr: np.ndarray):
    """Read ``entry`` into ``arr`` piece by piece; each piece's checksum runs while the next is read.

    Returns the future of the whole tensor's CRC32C.
    """
    buf = memoryview(_bytes_of(arr))  # type: ignore[arg-type]  # numpy's stubs: a Buffer from 3.12 on
    fut = None
    # local files are read in pieces; other readers (which may split one request into parallel
    # ranged GETs) get one request per tensor, its checksum overlapping the next tensor's read
    step = getattr(rd, "piece_size", None) or entry.nbytes
    for start in range(0, entry.nbytes, step):
        piece = buf[start:start + step]
        if rd.readinto(entry.offset + start, piece) != len(piece):
            raise _short(entry, path)
        fut = submit(_crc_after, fut, piece)
    return fut


def _block_run(rd, path: str, items: list, i: int) -> tuple[int, list]:
    """A run of neighbouring small tensors from ``items[i]``, for storages without ``readv``: one block
    read, copied out tensor by tensor. Returns the end of the run and the filled arrays."""
    n = len(items)
    start = items[i][0].offset
    end = start + items[i][0].nbytes
    j = i + 1
    while j < n:
        e = items[j][0]
        if e.nbytes >= SMALL_READ or e.offset - end > COALESCE_GAP or e.offset + e.nbytes - start > COALESCE_MAX:
            break
        end = max(end, e.offset + e.nbytes)
        j += 1
    block = np.empty(end - start, np.uint8)
    if rd.readinto(start, block) != end - start:
        raise _short(items[j - 1][0], path)
    arrs = []
    for entry, dest, _cb in items[i:j]:
        arr = dest if dest is not None else np.empty(entry.shape, entry.np_dtype)
        _bytes_of(arr)[...] = block[entry.offset - start: entry.offset - start + entry.nbytes]
        arrs.append(arr)
    return j, arrs


def read_tensors(rd, path: str, items: list, verify: bool) -> None:
    """Read sorted ``(entry, dest, callback)`` items from one open data file.

    Large tensors are read straight into their destination, their checksums
    computed on a helper thread while the next bytes are read; runs of small
    neighbouring tensors are read in one request (scattered into their
    destinations where the storage has ``readv``, by :func:`_read_rows_sorted`,
    else copied out of a block).
    """
    if getattr(rd, "readv", None) is not None:  # scattered straight into the arrays: the rows' path
        entries = [e for e, _d, _cb in items]
        table = fmt.TensorTable.from_entries(entries, [0] * len(entries))
        _shards, offs, nbs = table.arrays()
        _read_rows_sorted(rd, path, table, list(range(len(entries))), offs, nbs, [d for _e, d, _cb in items],
                          [cb for _e, _d, cb in items], verify)
        return
    i = 0
    n = len(items)
    checking = []  # large tensors whose checksum is still being computed
    in_flight = None  # the last run of small tensors and the future of their checksums
    while i < n:
        entry, dest, cb = items[i]
        if entry.nbytes >= SMALL_READ or i + 1 == n:
            arr = dest if dest is not None else np.empty(entry.shape, entry.np_dtype)
            if verify and entry.nbytes >= SMALL_READ:
                checking.append((entry, arr, cb, _read_large(rd, path, entry, arr)))
            else:
                if entry.nbytes and rd.readinto(entry.offset, _bytes_of(arr)) != entry.nbytes:
                    raise _short(entry, path)
                _finish(entry, arr, path, verify, cb)
            i += 1
            continue
        j, arrs = _block_run(rd, path, items, i)
        run = items[i:j]
        if verify:
            # the run's checksums are computed on the helper thread while the next run is read
            crcs = submit(_checksums, arrs)
            if in_flight is not None:
                _finish_run(*in_flight, path)
            in_flight = (run, arrs, crcs)
        else:
            _deliver(run, arrs)
        i = j
    if in_flight is not None:
        _finish_run(*in_flight, path)
    for entry, arr, cb, fut in checking:
        _finish(entry, arr, path, verify, cb, crc=fut.result())


def _read_rows_sorted(rd, path: str, table: fmt.TensorTable, rows: list, offs: np.ndarray, nbs: np.ndarray,
                      dests: list, callbacks: list, verify: bool) -> None:
    """Read table ``rows`` (sorted by offset) from one data file with ``rd.readv``.

    Where runs of small tensors start and end, and whether padding lies between them,
    is worked out with numpy over the whole request; each run is then one ``readv``
    straight into its arrays, checksummed on the helper thread while the next run is read.
    """
    n = len(rows)
    ends = offs + nbs
    large = nbs >= SMALL_READ
    parallel = getattr(rd, "concurrent_readv", False) is True and int(nbs.sum()) >= 2 * PARALLEL_RUN
    gaps = np.zeros(n, np.int64)
    gaps[1:] = offs[1:] - ends[:-1]
    window = (offs - offs[0]) // (PARALLEL_RUN if parallel else COALESCE_MAX)
    brk = large.copy()
    brk[1:] |= large[:-1] | (gaps[1:] < 0) | (gaps[1:] > COALESCE_GAP) | (window[1:] != window[:-1])
    brk[0] = True
    starts = np.flatnonzero(brk).tolist()
    starts.append(n)
    padded = np.cumsum(gaps > 0).tolist()  # padded[k]: how many of tensors 0..k follow a gap
    offs_l, ends_l, nbs_l, gaps_l, large_l = offs.tolist(), ends.tolist(), nbs.tolist(), gaps.tolist(), large.tolist()
    any_cb = callbacks.count(None) != n
    missing = [0, *accumulate([d is None for d in dests])]  # missing[k]: how many of dests[:k] are None
    in_flight = None
    checking = []  # large tensors whose checksum is still being computed
    runs = []  # (parallel) the runs of small tensors, read after this loop by two threads
    for i, j in zip(starts, starts[1:]):
        arrs = dests[i:j]
        if missing[j] != missing[i]:  # (not "None in arrs": that compares arrays elementwise)
            arrs = [d if d is not None else np.empty(table.shape[t], table.np_dtype(t))
                    for d, t in zip(arrs, rows[i:j])]
        if large_l[i]:  # a run of its own
            entry, arr, cb = table.entry(rows[i]), arrs[0], callbacks[i]
            if verify:
                checking.append((entry, arr, cb, _read_large(rd, path, entry, arr)))
            else:
                if rd.readinto(entry.offset, _bytes_of(arr)) != entry.nbytes:
                    raise _short(entry, path)
                _finish(entry, arr, path, False, cb)
            continue
        if padded[j - 1] == padded[i]:
            bufs, sizes = arrs, nbs_l[i:j]
        else:  # arrays interleaved with the alignment padding between them (read and dropped)
            bufs = [None] * (2 * (j - i) - 1)
            sizes = bufs[:]
            bufs[0::2], sizes[0::2] = arrs, nbs_l[i:j]
            sizes[1::2] = gaps_l[i + 1:j]
            bufs[1::2] = map(_PADDING.__getitem__, sizes[1::2])  # zero-length ones are dropped by readv
        if parallel:
            runs.append((i, j, arrs, bufs, sizes))
            continue
        got = rd.readv(offs_l[i], bufs, sizes)
        if got != ends_l[j - 1] - offs_l[i]:
            raise _short_run(table, rows, i, j, offs_l, ends_l, got, path)
        if verify:
            crcs = submit(_checksums, arrs)
            if in_flight is not None:
                _finish_rows(*in_flight)
            in_flight = (path, table, rows[i:j], arrs, callbacks[i:j] if any_cb else None, crcs)
        elif any_cb:
            _deliver_rows(arrs, callbacks[i:j])
    if in_flight is not None:
        _finish_rows(*in_flight)
    if runs:
        _read_runs_on_two_threads(rd, path, table, rows, runs, offs_l, ends_l, callbacks if any_cb else None, verify)
    for entry, arr, cb, fut in checking:
        _finish(entry, arr, path, verify, cb, crc=fut.result())


def _read_runs_on_two_threads(rd, path: str, table: fmt.TensorTable, rows: list, runs: list, offs_l: list,
                              ends_l: list, callbacks: list | None, verify: bool) -> None:
    """Read ``runs`` of small tensors on this thread and the checksum thread at once (``rd.readv`` is safe
    to call from both), each run checksummed by the thread that read it; then checked and delivered
    here, in file order (a corrupt run raises for its first corrupt tensor, after the runs before it
    were delivered). Both threads take the next run from one counter, so a busy helper only means this
    thread does more; this returns or raises only once neither thread still writes into any array.
    """
    take = count().__next__
    crcs: list = [None] * len(runs)
    failed: list[tuple[int, BaseException]] = []  # (run, error): a short read, a storage error
    crc32c_each = fmt.crc32c_each

    def work() -> None:
        while not failed:
            k = take()
            if k >= len(runs):
                return
            i, j, arrs, bufs, sizes = runs[k]
            try:
                got = rd.readv(offs_l[i], bufs, sizes)
                if got != ends_l[j - 1] - offs_l[i]:
                    raise _short_run(table, rows, i, j, offs_l, ends_l, got, path)
            except BaseException as e:  # (re-raised below, once the other thread is done too)
                failed.append((k, e))
                return
            if verify:  # (the other thread reads or checks meanwhile: large arrays release the GIL)
                crcs[k] = crc32c_each(arrs)

    helper = submit(work)
    try:
        work()
    finally:
        if not helper.cancel():  # (not started yet: this thread did every run)
            helper.result()
    if failed:
        raise min(failed, key=itemgetter(0))[1]  # the first in file order
    for (i, j, arrs, _bufs, _sizes), got in zip(runs, crcs):
        if verify:
            _check_run(path, table, rows[i:j], arrs, got)
        if callbacks is not None:
            _deliver_rows(arrs, callbacks[i:j])


def _short_run(table: fmt.TensorTable, rows: list, i: int, j: int, offs_l: list, ends_l: list, got: int,
               path: str) -> CorruptCheckpointError:
    """The error for a run ``i:j`` of which only ``got`` bytes were read: it names the first incomplete tensor."""
    k = next(k for k in range(i, j) if ends_l[k] - offs_l[i] > got)
    return _short(table.entry(rows[k]), path)


def _check_run(path: str, table: fmt.TensorTable, rows: list, arrs: list, got: list) -> None:
    """Compare a run's checksums ``got`` with the index's; raise for the first corrupt tensor."""
    expected = table.crc32c
    if got != [expected[t] for t in rows]:  # one comparison for the whole run
        for t, arr, crc in zip(rows, arrs, got):
            _finish(table.entry(t), arr, path, True, None, crc=crc)


def _finish_rows(path, table, rows, arrs, callbacks, crcs) -> None:
    _check_run(path, table, rows, arrs, crcs.result())
    if callbacks is not None:
        _deliver_rows(arrs, callbacks)


def _deliver_rows(arrs: list, callbacks: list) -> None:
    if not np.little_endian:  # pragma: no cover - big-endian hosts
        arrs = [a.byteswap().view(a.dtype.newbyteorder()) for a in arrs]
    for cb, arr in zip(callbacks, arrs):
        if cb is not None:
            cb(arr)


def _checksums(arrs: list) -> list[int]:
    return fmt.crc32c_each(arrs)   # on the helper thread, while this one reads the next run


def _deliver(run: list, arrs: list) -> None:
    if not np.little_endian:  # pragma: no cover - big-endian hosts
        arrs = [a.byteswap().view(a.dtype.newbyteorder()) for a in arrs]
    for (_entry, _dest, cb), arr in zip(run, arrs):
        if cb is not None:
            cb(arr)


def _finish_run(run: list, arrs: list, crcs, path: str) -> None:
    got = crcs.result()
    if got != [entry.crc32c for entry, _dest, _cb in run]:  # one comparison for the whole run
        for (entry, _dest, _cb), arr, crc in zip(run, arrs, got):
            _finish(entry, arr, path, True, None, crc=crc)  # raises for the first corrupt tensor
    _deliver(run, arrs)
