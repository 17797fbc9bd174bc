"""safetensors files, read by name: ``ck.Checkpoint(root=model).restore("model.safetensors")``.

A safetensors file is a little-endian ``u64`` header length, a JSON header mapping each
key to its dtype, shape and byte range, then the tensors' bytes. Nothing in it is
executed or unpickled. Its flat keys (``encoder.layers.3.bias``) become object paths
(:mod:`ckptcore.formats.byname`). The format stores no checksums, so nothing is verified
beyond the header's consistency: every range must lie in the file, match its dtype and
shape, and no two may overlap.

:func:`write` writes one, a tensor at a time (``ckptcore convert``), and
:func:`read_metadata` reads its ``__metadata__`` (string to string).

Example:
    >>> import json, struct
    >>> head = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    >>> raw = struct.pack("<Q", len(head)) + head + bytes(4)
    >>> SafetensorsFormat().sniff_file(raw[:64])
    True
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..dtypes import dtype_from_name, dtype_name
from ..errors import CorruptCheckpointError, InvalidArgumentError, UnsupportedDtypeError
from . import ckpt as fmt
from .base import Format, looks_like_safetensors
from .byname import nodes_from_keys

MAX_HEADER_BYTES = 100 << 20  # the limit the safetensors library itself sets

DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
          "BF16": "bfloat16", "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64", "I64": "int64",
          "F64": "float64", "C64": "complex64", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
          "F8_E8M0": "float8_e8m0fnu"}


def _bad(path: str, msg: str, key: str | None = None) -> CorruptCheckpointError:
    where = f"tensor {key!r}: " if key is not None else ""
    return CorruptCheckpointError(f"corrupt safetensors file {path}: {where}{msg}", path=path, key=key)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the name {k!r} appears twice in one object")
        out[k] = v
    return out


def _loads(header: bytes, path: str) -> Any:
    """The JSON of a header; a name given twice (two tensors under one key: which is it?) is corrupt."""
    try:
        return json.loads(header.decode("utf-8"), object_pairs_hook=_unique_members)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _bad(path, f"its header is not JSON ({e})") from None


def parse_header(header: bytes, data_start: int, size: int, path: str) -> dict[str, fmt.TensorEntry]:
    """The tensor entries a safetensors header describes, every range checked against the file's ``size``.

    Example:
        >>> h = b'{"a": {"dtype": "I8", "shape": [2], "data_offsets": [0, 2]}}'
        >>> parse_header(h, 8 + len(h), 8 + len(h) + 2, "m.safetensors")["a"].nbytes
        2
    """
    doc = _loads(header, path)
    if type(doc) is not dict:
        raise _bad(path, "its header is not a JSON object")
    out: dict[str, fmt.TensorEntry] = {}
    for key, info in doc.items():
        if key == "__metadata__":
            continue
        if type(info) is not dict:
            raise _bad(path, "not an object", key)
        dt = info.get("dtype")
        name = DTYPES.get(dt) if type(dt) is str else None
        if name is None:
            raise _bad(path, f"dtype {info.get('dtype')!r} is not one ckptcore reads", key)
        shape, offs = info.get("shape"), info.get("data_offsets")
        if (type(shape) is not list or len(shape) > fmt.MAX_NDIM
                or any(type(d) is not int or d < 0 for d in shape)):
            raise _bad(path, f"invalid shape {shape!r}", key)
        if type(offs) is not list or len(offs) != 2 or any(type(o) is not int for o in offs):
            raise _bad(path, f"invalid data_offsets {offs!r}", key)
        begin, end = offs
        itemsize = dtype_from_name(name).itemsize
        if sum(np.log2(max(d, 1)) for d in shape) + np.log2(itemsize) >= 61.9:
            raise _bad(path, f"impossible shape {shape}", key)
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize if shape else itemsize
        if not 0 <= begin <= end or end - begin != nbytes or data_start + end > size:
            raise _bad(path, f"bytes [{begin}, {end}) do not hold {name}{shape} inside the file", key)
        out[key] = fmt.TensorEntry(key, name, tuple(shape), 0, data_start + begin, nbytes, 0)
    spans = sorted((e.offset, e.offset + e.nbytes, k) for k, e in out.items() if e.nbytes)
    for (_, a_end, _), (b_start, _, key) in zip(spans, spans[1:]):
        if b_start < a_end:
            raise _bad(path, "its bytes overlap another tensor's", key)
    return out


class SafetensorsFormat(Format):
    """safetensors, recognised from its header; read by name, never written.

    Example:
        >>> SafetensorsFormat().name
        'safetensors'
    """

    name = "safetensors"

    def sniff_file(self, head: bytes) -> bool:
        return looks_like_safetensors(head)

    def open_file(self, storage, path, size, head):
        n = int.from_bytes(head[:8], "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise _bad(path, f"its header claims {n} bytes in a file of {size}")
        header = bytearray(n)
        with storage.open_reader(path) as rd:
            if rd.readinto(8, memoryview(header)) != n:
                raise _bad(path, "the file is truncated")
        tensors = parse_header(bytes(header), 8 + n, size, path)
        index = fmt.Index(nodes=nodes_from_keys(tensors, "."), num_shards=1, shard_sizes=[size],
                          metadata={"format": "safetensors", "flat": True})
        index.data_files = [path]
        index.checksummed = False
        return index


_CODES = {name: code for code, name in DTYPES.items()}  # ckptcore dtype name -> safetensors dtype code


def read_metadata(storage, path: str) -> dict[str, str]:
    """The ``__metadata__`` of the safetensors file ``path`` (``{}`` if none), checked to map strings to strings.

    Example:
        >>> from ckptcore.storage import open_storage
        >>> s, p = open_storage("memory://doc/st/meta.safetensors")
        >>> write(s, p, [("w", np.ones(1))], metadata={"step": "3"}); read_metadata(s, p)
        {'step': '3'}
    """
    size = storage.size(path)
    with storage.open_reader(path) as rd:
        head = bytearray(8)
        if rd.readinto(0, memoryview(head)) != 8:
            raise _bad(path, "the file is truncated")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise _bad(path, f"its header claims {n} bytes in a file of {size}")
        header = bytearray(n)
        if rd.readinto(8, memoryview(header)) != n:
            raise _bad(path, "the file is truncated")
    doc = _loads(bytes(header), path)
    meta = doc.get("__metadata__") if type(doc) is dict else None
    if meta is None:
        return {}
    if type(meta) is not dict or not all(type(k) is str and type(v) is str for k, v in meta.items()):
        raise _bad(path, "__metadata__ must map strings to strings")
    return meta


def write(storage, path: str, tensors: Iterable[tuple[str, Any]], metadata: dict[str, str] | None = None,
          specs: list[tuple[str, str, tuple[int, ...]]] | None = None) -> None:
    """Write a safetensors file from ``(key, array)`` pairs, committed atomically.

    Arrays may come from a generator, one at a time; the header needs every
    key, dtype and shape first, so pass ``specs`` (``(key, dtype name, shape)``
    in the same order) when ``tensors`` is a generator that reads lazily.

    Example:
        >>> from ckptcore.storage import open_storage
        >>> s, p = open_storage("memory://doc/st/w.safetensors")
        >>> write(s, p, [("b", np.zeros((2, 2), np.int8))]); s.size(p) > 8
        True
    """
    if specs is None:
        tensors = list(tensors)
        specs = [(k, dtype_name(np.asarray(a).dtype), tuple(np.shape(a))) for k, a in tensors]
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for key, name, shape in specs:
        if key == "__metadata__" or key in header:
            what = ("the name safetensors reserves for the file's metadata" if key == "__metadata__"
                    else "given twice")
            raise InvalidArgumentError(f"cannot write tensor {key!r} to the safetensors file {path}: the key is "
                                       f"{what}, so one of the values would be lost; rename it (or convert to "
                                       "ckptcore's format)")
        code = _CODES.get(name)
        if code is None:
            raise UnsupportedDtypeError(f"tensor {key!r} has dtype {name}, which safetensors cannot hold; "
                                        f"it holds {', '.join(sorted(_CODES))}")
        count = 1
        for d in shape:
            count *= d
        nbytes = count * dtype_from_name(name).itemsize
        header[key] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
    d = storage.dirname(path)
    if d:
        storage.makedirs(d)
    writer = storage.open_writer(path)
    try:
        writer.write(struct.pack("<Q", len(raw)) + raw)
        for (key, name, shape), (key2, arr) in zip(specs, tensors, strict=True):
            arr = np.asarray(arr)
            if not arr.flags.c_contiguous:
                arr = arr.copy(order="C")  # (np.ascontiguousarray would make a scalar 1-d)
            if key2 != key or tuple(arr.shape) != tuple(shape) or dtype_name(arr.dtype) != name:
                raise ValueError(f"tensor {key2!r} does not match its spec {key!r} {name}{list(shape)}")
            if arr.dtype.byteorder == ">":  # pragma: no cover - big-endian hosts
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            if arr.nbytes:
                writer.write(memoryview(arr.reshape(-1).view(np.uint8)))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
