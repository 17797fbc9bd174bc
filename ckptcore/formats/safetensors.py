"""safetensors files, read by name: ``ck.Checkpoint(root=model).restore("model.safetensors")``.

A safetensors file is a little-endian ``u64`` header length, a JSON header mapping each
key to its dtype, shape and byte range, then the tensors' bytes. Nothing in it is
executed or unpickled. Its flat keys (``encoder.layers.3.bias``) become object paths
(:mod:`ckptcore.formats.byname`). The format stores no checksums, so nothing is verified
beyond the header's consistency: every range must lie in the file, match its dtype and
shape, and no two may overlap.

Example:
    >>> import json, struct
    >>> head = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    >>> raw = struct.pack("<Q", len(head)) + head + bytes(4)
    >>> SafetensorsFormat().sniff_file(raw[:64])
    True
"""

from __future__ import annotations

import json

import numpy as np

from ..dtypes import dtype_from_name
from ..errors import CorruptCheckpointError
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


def parse_header(header: bytes, data_start: int, size: int, path: str) -> dict[str, fmt.TensorEntry]:
    """The tensor entries a safetensors header describes, every range checked against the file's ``size``.

    Example:
        >>> h = b'{"a": {"dtype": "I8", "shape": [2], "data_offsets": [0, 2]}}'
        >>> parse_header(h, 8 + len(h), 8 + len(h) + 2, "m.safetensors")["a"].nbytes
        2
    """
    try:
        doc = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _bad(path, f"its header is not JSON ({e})") from None
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
