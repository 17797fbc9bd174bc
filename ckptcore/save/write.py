"""Writing a :class:`~ckptcore.save.plan.SavePlan`: data shards first, then the index (the commit point).

:func:`write_plan` lays the tensors out (``fmt.tensor_alignment``), writes neighbours together with
one ``writev`` and checksums them (CRC32C) on a helper thread meanwhile; several shards (object
stores) are written concurrently. The index is committed last, so a failed save leaves nothing
visible (:func:`_commit_index`).

Example:
    >>> import numpy as np, ckptcore as ck
    >>> from ckptcore.save import plan_save
    >>> from ckptcore.storage import open_storage
    >>> st, p = open_storage("memory://doc/save_write/ckpt")
    >>> write_plan(st, p, plan_save([np.ones(3)])); sorted(checkpoint_files(st, p))[0].endswith(".data-00000-of-00001")
    True
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from operator import attrgetter

import numpy as np

from .._perf import PURE_PYTHON, submit
from ..formats import ckpt as fmt
from .plan import SavePlan, plan_save  # noqa: F401  (plan_save: the examples)

_array_columns: Callable[[list], tuple | None] | None
try:  # compiled (setup.py); without it _write_columns makes the same columns with np.fromiter
    from ._save_fast import array_columns as _array_columns
except ImportError:  # pragma: no cover - a build without a C compiler
    _array_columns = None
if PURE_PYTHON:
    _array_columns = None

SMALL_TENSOR = 1 << 20   # tensors at least this big get their CRC32C computed on a helper thread
STAGING_BYTES = 8 << 20  # neighbouring tensors are written together, in one writev, up to this size


def _byte_view(arr: np.ndarray) -> memoryview:
    return memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # works for every dtype (bfloat16, strings, ...)


_ZEROS = bytes(fmt.ALIGNMENT)


def _set_crc(entry: fmt.TensorEntry, arr) -> None:
    entry.crc32c = fmt.crc32c(arr)


def _set_crcs(items: list) -> None:
    for (entry, _arr), crc in zip(items, fmt.crc32c_each([arr for _entry, arr in items])):
        entry.crc32c = crc


def _write_columns(writer, plan: SavePlan, progress) -> int:
    """:func:`_write_tensors` for a writer that takes arrays as they are (local files), column by column.

    The same layout, batches and checksums, worked out with numpy over the whole plan instead of
    per tensor, and no :class:`~ckptcore.formats.ckpt.TensorEntry` made: the plan's table gets the
    offsets and checksums (``plan._table``). Returns the data file's size.
    """
    keys, dtypes, arrays = plan._columns
    n = len(arrays)
    cols = _array_columns(arrays) if _array_columns is not None else None
    if cols is None:
        nbytes = np.fromiter(map(_nbytes, arrays), np.int64, n)
        ndim = np.fromiter(map(_ndim, arrays), np.int64, n)
        cols = nbytes, ndim, np.fromiter(chain.from_iterable(map(_shape, arrays)), np.int64, int(ndim.sum()))
    nbytes = cols[0]
    # fmt.tensor_alignment for every tensor: the dtype's alignment, 64 bytes for large ones
    small = {d: fmt.tensor_alignment(0, d) for d in dict.fromkeys(dtypes)}
    align = np.fromiter(map(small.__getitem__, dtypes), np.int64, n)
    align[nbytes >= fmt.ALIGNED_TENSOR_BYTES] = fmt.ALIGNMENT
    ends = np.cumsum(nbytes)
    offs = ends - nbytes
    if n and (offs % align).any():  # padding somewhere (large tensors, mixed dtypes): laid out in order
        off, out = 0, []
        for nb, al in zip(nbytes.tolist(), align.tolist()):
            off += -off % al
            out.append(off)
            off += nb
        offs = np.array(out, np.int64)
        ends = offs + nbytes
    pads = offs - np.concatenate(([0], ends[:-1]))  # the padding before each tensor
    padded = np.concatenate(([0], np.cumsum(pads > 0))).tolist()  # padded[k]: tensors before k that follow padding
    # batches as _write_tensors makes them: each closes after the tensor that brings it to STAGING_BYTES
    data = np.cumsum(nbytes)
    bounds, i = [], 0
    while i < n:
        j = min(int(np.searchsorted(data, (data[i - 1] if i else 0) + STAGING_BYTES, "left")) + 1, n)
        bounds.append((i, j))
        i = j
    nbytes_l, pads_l = nbytes.tolist(), pads.tolist()
    crcs: list = []
    pending = []
    try:
        for i, j in bounds:
            arrs = arrays[i:j]
            pending.append(submit(_checksums, arrs))  # on the helper thread, while this one is in writev
            if padded[j] == padded[i]:
                writer.writev(arrs, nbytes_l[i:j])
            else:
                bufs: list = []
                sizes = []
                for arr, nb, pad in zip(arrs, nbytes_l[i:j], pads_l[i:j]):
                    if pad:
                        bufs.append(_ZEROS[:pad])
                        sizes.append(pad)
                    bufs.append(arr)
                    sizes.append(nb)
                writer.writev(bufs, sizes)
            if progress is not None:
                progress(int(data[j - 1] - (data[i - 1] if i else 0)))
        for f in pending:
            crcs.extend(f.result())
    finally:
        for f in pending:
            f.exception()  # wait for every checksum (their errors, if any, were raised above)
    table = fmt.TensorTable(keys, dtypes, None, [0] * n, offs.tolist(), nbytes_l, crcs, plan.node_of,
                            shape_cols=cols[1:])   # (no tuple per shape: the index encodes these columns)
    table._arrays = (np.zeros(n, np.int64), offs, nbytes)
    plan._table = table
    return int(ends[-1]) if n else 0


_nbytes, _ndim, _shape = attrgetter("nbytes"), attrgetter("ndim"), attrgetter("shape")


def _checksums(arrs: list) -> list[int]:
    return fmt.crc32c_each(arrs)  # on the helper thread: the writing thread is in writev meanwhile


def _write_tensors(writer, tensors, progress) -> int:
    """Lay tensors out (``fmt.tensor_alignment``); write neighbours together with one ``writev``. Returns the size."""
    writev = getattr(writer, "writev", None)
    arrays = writev is not None and getattr(writer, "accepts_arrays", False)  # local files: arrays as they are
    if writev is None:
        def writev(bufs, sizes=None):
            writer.write(b"".join(bufs))
    offset = 0
    batch: list = []
    sizes: list = []
    batch_bytes = 0
    small: list = []  # (entry, buffer) of the batch's small tensors: checksummed together
    pending = []
    alignment = fmt.tensor_alignment
    try:
        for entry, arr in tensors:
            nbytes = entry.nbytes
            pad = -offset % alignment(nbytes, entry.dtype)
            if pad:
                batch.append(_ZEROS[:pad])
                sizes.append(pad)
            buf = arr if arrays else _byte_view(arr)  # arr is C-contiguous (plan_save): CRC32C takes it as it is
            entry.offset = offset + pad
            if nbytes >= SMALL_TENSOR:
                pending.append(submit(_set_crc, entry, arr))
            else:
                small.append((entry, arr))
            batch.append(buf)
            sizes.append(nbytes)
            batch_bytes += nbytes
            offset = entry.offset + nbytes
            if batch_bytes >= STAGING_BYTES:
                if small:  # the helper thread checksums them while this one is in writev
                    pending.append(submit(_set_crcs, small))
                writev(batch, sizes) if arrays else writev(batch)
                if progress is not None:
                    progress(batch_bytes)
                batch, sizes, batch_bytes, small = [], [], 0, []
        if batch:
            if small:
                pending.append(submit(_set_crcs, small))
            writev(batch, sizes) if arrays else writev(batch)
            if progress is not None:
                progress(batch_bytes)
    finally:
        for f in pending:
            f.result()
    return offset


MAX_SHARDS = 1 << 16   # what readers accept (docs/format.md)


def split_shards(tensors: list, shard_bytes: int | None) -> list[list]:
    """Group ``(entry, array)`` pairs into data shards of at most ``shard_bytes``.

    A tensor of ``shard_bytes`` or more is a shard of its own. The others are
    packed, in order, aligned (``fmt.tensor_alignment``): a shard closes when the next one would
    make it larger than ``shard_bytes``. ``None`` (local disk) means one shard.
    There is always at least one shard.

    Example:
        >>> import numpy as np
        >>> plan = plan_save([np.zeros(100, np.uint8), np.zeros(300, np.uint8), np.zeros(100, np.uint8),
        ...                         np.zeros(100, np.uint8), np.zeros(100, np.uint8)])
        >>> [[e.nbytes for e, _ in s] for s in split_shards(plan.tensors, 256)]
        [[300], [100, 100], [100, 100]]
        >>> len(split_shards(plan.tensors, None))
        1
    """
    if not shard_bytes or not tensors:
        return [list(tensors)]
    # large tensors make at most total / shard_bytes shards, packing at most 2 * total / shard_bytes + 1
    # (two neighbouring packed shards hold more than shard_bytes): stay within MAX_SHARDS
    total = sum(e.nbytes + fmt.ALIGNMENT for e, _ in tensors)
    shard_bytes = max(int(shard_bytes), 3 * total // (MAX_SHARDS - 2) + 1)
    shards: list[list] = []
    cur: list = []
    size = 0
    for item in tensors:
        nbytes = item[0].nbytes
        if nbytes >= shard_bytes:
            shards.append([item])
            continue
        end = size + (-size % fmt.tensor_alignment(nbytes, item[0].dtype)) + nbytes
        if cur and end > shard_bytes:
            shards.append(cur)
            cur, end = [], nbytes
        cur.append(item)
        size = end
    if cur or not shards:
        shards.append(cur)
    return shards


def write_plan(storage, prefix: str, plan: SavePlan, progress=None) -> None:
    """Write data then index (the commit point). Leaves nothing visible on failure.

    ``progress(nbytes)`` is called as tensor bytes are written. The data is
    split into shards by :func:`split_shards` with the storage's
    ``preferred_shard_bytes`` (one shard on local disk); several shards are
    written ``storage.shard_concurrency`` at a time, all committed before the index.

    Example:
        >>> import numpy as np, ckptcore as ck
        >>> from ckptcore.storage import open_storage
        >>> st, p = open_storage("memory://doc/write_plan/ckpt")
        >>> m = ck.Module(); m.w = np.ones(2)
        >>> write_plan(st, p, plan_save(m)); st.exists(p + ".index")
        True
    """
    d = storage.dirname(prefix)
    if d:
        storage.makedirs(d)
    shard_bytes = getattr(storage, "preferred_shard_bytes", None)
    shards = split_shards(plan.tensors, shard_bytes) if shard_bytes else None  # None: one shard (local disk)
    n = len(shards) if shards is not None else 1
    plan.num_shards = n
    index_file = fmt.index_path(prefix)
    # Object stores: this attempt's own data object names (a late request of another attempt cannot reach them)
    plan.data_tag = fmt.new_data_tag() if getattr(storage, "unique_data_names", False) else None
    overwrite = storage.exists(index_file)
    if overwrite:
        # Overwriting a checkpoint (a re-save after a failed state update, write() to the same path):
        # uncommit it first, so its old index never describes the new data.
        remove_index(storage, index_file)
    if shards is not None and n > 1:
        _write_sharded(storage, prefix, plan, shards, progress)
    else:
        _write_one(storage, prefix, plan, progress)
    if overwrite:
        # the old checkpoint may have had another shard count: drop its data files (best effort)
        keep = {fmt.data_path(prefix, i, n, plan.data_tag) for i in range(n)} | {index_file}
        try:
            storage.remove([f for f in checkpoint_files(storage, prefix) if f not in keep])
        except Exception:
            pass


def _write_one(storage, prefix: str, plan: SavePlan, progress) -> None:
    data = fmt.data_path(prefix, 0, 1, plan.data_tag)
    index_file = fmt.index_path(prefix)
    writer = storage.open_writer(data)
    try:
        if plan._tensors is None and getattr(writer, "accepts_arrays", False) and hasattr(writer, "writev"):
            offset = _write_columns(writer, plan, progress)
        else:
            offset = _write_tensors(writer, plan.tensors, progress)
        plan.shard_sizes = [offset]
        if getattr(writer, "background_commit", False):
            # the data file's fsync waits on the disk on the helper thread while this one encodes the index
            committed = submit(writer.commit)
            try:
                encoded = plan.encode_index()
            finally:
                committed.result()  # never abort while the commit is still running
        else:
            writer.commit()
            encoded = plan.encode_index()
    except BaseException:
        writer.abort()
        raise
    _commit_index(storage, index_file, encoded, [data])


def _write_sharded(storage, prefix: str, plan: SavePlan, shards: list[list], progress) -> None:
    """Write several shards concurrently; commit the index once every one is committed.

    On any failure the shards still being written are aborted, the ones
    already committed are removed, and the first error is raised.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    n = len(shards)
    paths = [fmt.data_path(prefix, i, n, plan.data_tag) for i in range(n)]
    index_file = fmt.index_path(prefix)
    sizes = [0] * n
    committed: list[str] = []
    failed = threading.Event()
    lock = threading.Lock()
    report = None
    if progress is not None:
        def report(nbytes):
            with lock:
                progress(nbytes)

    def write_shard(i: int) -> None:
        if failed.is_set():
            return
        for entry, _ in shards[i]:
            entry.shard = i
        try:
            writer = storage.open_writer(paths[i])
        except BaseException:
            failed.set()
            raise
        try:
            sizes[i] = _write_tensors(writer, shards[i], report)
            if failed.is_set():
                raise _Cancelled()
            writer.commit()
        except BaseException:
            failed.set()
            writer.abort()
            raise
        with lock:
            committed.append(paths[i])

    workers = max(1, min(int(getattr(storage, "shard_concurrency", 1) or 1), n))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckptcore-shard")
    try:
        futures = [pool.submit(write_shard, i) for i in range(n)]
        errors = []
        for f in futures:
            try:
                f.result()
            except _Cancelled:
                pass
            except BaseException as e:
                errors.append(e)
        if errors:
            raise errors[0]
        plan.shard_sizes = sizes
        encoded = plan.encode_index()
    except BaseException:
        failed.set()
        pool.shutdown(wait=True, cancel_futures=True)
        try:
            storage.remove(list(committed))
        except Exception:
            pass
        raise
    pool.shutdown(wait=True)
    _commit_index(storage, index_file, encoded, paths)


def remove_index(storage, index_file: str) -> None:
    """Delete an index as it is now: a DELETE applied late never removes an index written after it.

    Object stores make the DELETE conditional on the object read just before (S3 ``If-Match`` on its
    ETag, GCS ``ifGenerationMatch``); other storages delete it plainly (their requests never land late).

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, p = open_storage("memory://doc/remove_index/ckpt-1.index")
        >>> st.write_atomic(p, b"x"); remove_index(st, p); st.exists(p)
        False
    """
    conditional = getattr(storage, "remove_unchanged", None)
    if conditional is not None:
        conditional(index_file)
    else:
        storage.remove([index_file])


def _commit_index(storage, index_file: str, encoded: bytes, data_paths: list[str]) -> None:
    """Write the index: the commit point. On failure remove the index, then the data files.

    On an object store the PUT may have landed although its response was lost, and a PUT the
    client gave up on may still land later. So there, a failed commit first checks whether the
    index it sent is on storage (then the save succeeded); otherwise it removes nothing but a
    refused attempt's data: the data objects are this attempt's alone (its data tag), and an index
    of this attempt that lands late must find them (a manager's later save removes them once they
    are older than its grace period and no index names them).
    """
    try:
        storage.write_atomic(index_file, encoded)
    except Exception as e:
        if not getattr(storage, "unique_data_names", False):
            _remove_after_failed_commit(storage, index_file, data_paths)
            raise
        try:
            landed = storage.read_bytes(index_file) == encoded
        except Exception:
            landed = False
        if landed:   # the PUT was applied, only its response was lost: the checkpoint is committed
            return
        from ..errors import StoragePermissionError

        if isinstance(e, StoragePermissionError):   # refused: that PUT can never land
            try:
                storage.remove(data_paths)
            except Exception:
                pass
        raise
    except BaseException:
        _remove_after_failed_commit(storage, index_file, data_paths)
        raise


def _remove_after_failed_commit(storage, index_file: str, data_paths: list[str]) -> None:
    """The index first, so no index is ever left pointing at missing data; best effort."""
    try:
        storage.remove([index_file])
        storage.remove(data_paths)
    except Exception:
        pass


class _Cancelled(Exception):
    """A shard stopped because another one failed."""


def checkpoint_files(storage, prefix: str) -> list[str]:
    """Every file belonging to the checkpoint at ``prefix`` (index and data shards).

    Example:
        >>> from ckptcore.storage import open_storage
        >>> st, p = open_storage("memory://doc/files/ckpt-1")
        >>> checkpoint_files(st, p)
        []
    """
    d = storage.dirname(prefix)
    base = storage.basename(prefix)
    out = []
    for name in storage.listdir(d):
        if name == base + fmt.INDEX_SUFFIX:
            out.append(storage.join(d, name))
        elif name.startswith(base + ".data-"):
            shard, _, tag = name[len(base) + 6:].partition(".")   # tag: a save attempt's (object stores)
            if shard.replace("-of-", "").isdigit() and (not tag or fmt.is_data_tag(tag)):
                out.append(storage.join(d, name))
    return out
