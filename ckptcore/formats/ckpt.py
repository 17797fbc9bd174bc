"""The on-disk format (versions 2-6; version 1 is still read). See ``docs/format.md`` for the full description.

A checkpoint at prefix ``P`` is two kinds of file:

* ``P.data-00000-of-00001``: tensor bytes, each starting at an aligned
  offset (:func:`tensor_alignment`), little-endian, C order; nothing else
  (no pickles, no headers);
* ``P.index``: a 32-byte header (magic ``CKPTIDX1``, format version, JSON
  length, CRC32C of the JSON) followed by UTF-8 JSON that holds the object
  graph, each object's adapter, and per tensor its dtype, shape, offset,
  length and CRC32C, stored column by column (one list per field) so that
  an index of a million tensors parses and validates in a few vectorized
  steps. Version 6 stores no tensor keys: they follow from the graph
  (:mod:`ckptcore.formats.ckpt_keys`). It is written last: a checkpoint
  exists when its index does.

Everything read back is validated before use; nothing is unpickled or evaluated.

This module holds the file layout (paths, header, alignment) and :class:`Index`; the
graph and tensor-table columns are in :mod:`ckptcore.formats.ckpt_tables` (re-exported
here), the version-2 body's encoder and validator in :mod:`ckptcore.formats.ckpt_v2`,
version 1 in :mod:`ckptcore.formats.ckpt_v1`.

Example:
    >>> from ckptcore.formats import ckpt as fmt
    >>> fmt.index_path("/tmp/ckpt-1"), fmt.data_path("/tmp/ckpt-1", 0, 1)
    ('/tmp/ckpt-1.index', '/tmp/ckpt-1.data-00000-of-00001')
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

from ..dtypes import dtype_from_name
from ..errors import CorruptCheckpointError
from .base import Format
from .ckpt_tables import FAST_DTYPES, STRING_DTYPE, Graph, Node, TensorEntry, TensorTable, _nodes_from_columns

# The columns and records of an index live in ckpt_tables and are re-exported here (``fmt.Graph``, ...).
__all__ = ["ALIGNMENT", "FAST_DTYPES", "FORMAT_VERSION", "HEADER_SIZE", "INDEX_SUFFIX", "MAGIC", "STRING_DTYPE",
           "CkptFormat", "Graph", "Index", "Node", "TensorEntry", "TensorTable", "align", "crc32c", "data_path",
           "decode_index", "index_path", "is_data_tag", "new_data_tag", "tensor_alignment"]

FORMAT_VERSION = 2
# 3: version 2 plus sharded tensors (formats/pieces.py); 4: version 3 plus the index's data_tag;
# 5: version 4 with the optimizer slots as binary columns (an index with slots);
# 6: version 5 with no tensor keys (they follow from the graph: formats/ckpt_keys.py) and the attribute and
# edge names as tables of distinct names plus binary columns
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
DATA_TAG_VERSION = 4
SLOT_COLUMNS_VERSION = 5
DERIVED_KEYS_VERSION = 6
_DATA_TAG = re.compile(r"[0-9a-f]{16}")
MAGIC = b"CKPTIDX1"
_HEADER = struct.Struct("<8sIIQI4x")  # magic, version, flags, json length, json crc32c, pad -> 32 bytes
HEADER_SIZE = _HEADER.size
ALIGNMENT = 64
MAX_INDEX_BYTES = 1 << 31  # 2 GiB of JSON is far beyond any sane graph
MAX_NDIM = 64
INDEX_SUFFIX = ".index"
USER_METADATA_KEY = "user"  # the index metadata entry holding the user's own (CheckpointOptions.metadata)
METRICS_KEY = "metrics"     # the metrics CheckpointManager.save(metrics=...) was given


def crc32c(buf, value: int = 0, release_gil: bool = False) -> int:
    """CRC32C (Castagnoli) of a bytes-like object, continuing from ``value``.

    The GIL is released for buffers of 32 KiB and more, or always with
    ``release_gil=True`` (for checksums on a helper thread while another thread runs).

    Example:
        >>> crc32c(b"123456789")
        3808858755
    """
    fn = _crc32c_fn
    if fn is None:
        fn = _load_crc32c()
    return fn(buf, value, 1 if release_gil else -1)


def crc32c_each(bufs) -> list[int]:
    """The CRC32C of each buffer in ``bufs``, for the checksum threads of reads and writes.

    The GIL is released for buffers of 32 KiB and more only: for the many small tensors of a
    large model, releasing and taking it back costs more than the checksum itself (100,000
    arrays of 2.6 KiB: a restore 15-20 ms faster). The thread that waits on I/O meanwhile
    has the GIL released in its system call anyway.

    Example:
        >>> crc32c_each([b"123456789", b""])
        [3808858755, 0]
    """
    fn = _crc32c_fn
    if fn is None:
        fn = _load_crc32c()
    return [fn(b, 0, -1) for b in bufs]


_crc32c_fn = None


def _load_crc32c():
    """Import the ``crc32c`` package on first use (its ``__init__`` imports ``importlib.metadata``: ~20 ms)."""
    global _crc32c_fn
    import crc32c as _crc32c

    _crc32c_fn = _crc32c.crc32c
    return _crc32c_fn


def index_path(prefix: str) -> str:
    """Path of the index file of the checkpoint at ``prefix``.

    Example:
        >>> index_path("ckpt-3")
        'ckpt-3.index'
    """
    return prefix + INDEX_SUFFIX


def data_path(prefix: str, shard: int, num_shards: int, tag: str | None = None) -> str:
    """Path of data shard ``shard`` of ``num_shards``; ``tag``: the save attempt's (see :func:`new_data_tag`).

    Example:
        >>> data_path("ckpt-3", 0, 2), data_path("ckpt-3", 0, 1, "0123456789abcdef")
        ('ckpt-3.data-00000-of-00002', 'ckpt-3.data-00000-of-00001.0123456789abcdef')
    """
    name = f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"
    return name if tag is None else f"{name}.{tag}"


def new_data_tag() -> str:
    """A fresh per-attempt tag for data object names (16 hex digits), recorded in the index.

    On object stores every save attempt names its data objects with its own tag, so a request of a
    failed attempt that the server applies late (a clean-up DELETE) can never reach the objects of
    another attempt that reuses the checkpoint's name (see docs/format.md, "Data tags").

    Example:
        >>> len(new_data_tag()), is_data_tag(new_data_tag())
        (16, True)
    """
    import secrets

    return secrets.token_hex(8)


def is_data_tag(text: str) -> bool:
    """Whether ``text`` has the form of a data tag.

    Example:
        >>> is_data_tag("0123456789abcdef"), is_data_tag("00001")
        (True, False)
    """
    return _DATA_TAG.fullmatch(text) is not None


ALIGNED_TENSOR_BYTES = 1 << 16  # tensors this big or bigger start at a multiple of ALIGNMENT
_DTYPE_ALIGNMENT: dict[str, int] = {}


def tensor_alignment(nbytes: int, dtype: str) -> int:
    """Where a tensor of ``nbytes`` bytes of the stored dtype ``dtype`` may start in a data file.

    Tensors of 64 KiB or more start at a multiple of 64 bytes (:data:`ALIGNMENT`); smaller
    ones at a multiple of their dtype's alignment (numpy's ``dtype.alignment``: 4 for
    ``float32``, 2 for ``bfloat16``). Either way a view of a mapped data file is an aligned
    numpy array; small tensors are packed without 64-byte padding, which a restore of many
    small arrays would otherwise read into a scratch buffer between every two of them.

    Example:
        >>> tensor_alignment(1 << 20, "float32"), tensor_alignment(400, "float32"), tensor_alignment(3, "int8")
        (64, 4, 1)
    """
    if nbytes >= ALIGNED_TENSOR_BYTES:
        return ALIGNMENT
    a = _DTYPE_ALIGNMENT.get(dtype)
    if a is None:
        a = _DTYPE_ALIGNMENT[dtype] = (FAST_DTYPES.get(dtype) or dtype_from_name(dtype)).alignment
    return a


def align(offset: int) -> int:
    """Round ``offset`` up to a multiple of :data:`ALIGNMENT` (64 bytes).

    Example:
        >>> align(1), align(64), align(65)
        (64, 64, 128)
    """
    return (offset + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class Index:
    """A parsed index: the object graph plus the data-file layout.

    Decoded version-2 indexes hold their :attr:`graph` and :attr:`table` as columns, and
    build :attr:`nodes` (one :class:`Node` per object) only when asked; indexes built from
    nodes (saving, version 1) derive the columns from them once.

    Example:
        >>> Index(nodes=[Node()], num_shards=1, shard_sizes=[0]).num_shards
        1
    """

    # Set by formats whose tensors live in files not named after the prefix (a single
    # safetensors file), and by formats that store no per-tensor checksums.
    data_files: list[str] | None = None
    checksummed: bool = True
    #: The save attempt's tag in the data file names (:func:`new_data_tag`), or None: TF's plain names.
    data_tag: str | None = None
    # Set by formats with rows that are not raw array bytes (TensorFlow's string tensors): table row ->
    # ``read(reader, row, verify) -> np.ndarray``, which reads, checks and decodes that row's value.
    decoded_rows: dict[int, Any] | None = None
    #: False: :meth:`encode` keeps writing the keys (versions 2-5) even where they follow from the graph, for a
    #: reader older than version 6 (ckptcore before it): ``index.derive_keys = False; raw = index.encode()``.
    derive_keys: bool = True

    def __init__(self, nodes: list[Node] | None = None, num_shards: int = 1, shard_sizes: list[int] | None = None,
                 metadata: dict | None = None, version: int = FORMAT_VERSION, *, graph: Graph | None = None,
                 table: TensorTable | None = None, pieces=None):
        if nodes is None and (graph is None or table is None):
            raise ValueError("an Index needs nodes, or a graph and a table")
        self._nodes = nodes
        self._graph, self._table = graph, table
        self.num_shards = num_shards
        self.shard_sizes = [0] if shard_sizes is None else shard_sizes
        self.metadata = {} if metadata is None else metadata
        self.version = version
        self.pieces = pieces  # formats.pieces.Pieces of the sharded tensors (version 3), or None

    def __repr__(self) -> str:
        return (f"Index(version={self.version}, nodes={len(self.graph)}, tensors={len(self.table)}, "
                f"num_shards={self.num_shards})")

    @property
    def nodes(self) -> list[Node]:
        if self._nodes is None:
            self._nodes = _nodes_from_columns(self.graph, self.table)  # both set when _nodes is None
        return self._nodes

    @nodes.setter
    def nodes(self, value: list[Node]) -> None:
        self._nodes, self._graph, self._table = value, None, None

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            self._graph = Graph.from_nodes(self.nodes)  # _nodes is set when _graph is None
        return self._graph

    @property
    def table(self) -> TensorTable:
        if self._table is None:
            nodes = self.nodes  # _nodes is set when _table is None
            self._table = TensorTable.from_entries(
                [e for n in nodes for e in n.attributes.values()],
                [i for i, n in enumerate(nodes) for _ in range(len(n.attributes))])
        return self._table

    def encode(self) -> bytes:
        """The index file's bytes: header, the JSON of this index's ``version``, then (version 2) its binary columns.

        Example:
            >>> raw = Index(nodes=[Node(adapter="a")], num_shards=1, shard_sizes=[0]).encode()
            >>> raw[:8], decode_index(raw, "x.index").nodes[0].adapter
            (b'CKPTIDX1', 'a')
        """
        if self.version == 1:
            from .ckpt_v1 import encode_v1
            body, columns = encode_v1(self).encode("ascii"), b""
        else:
            if self.pieces is not None and len(self.pieces):
                from .pieces import PIECES_VERSION
                self.version = max(self.version, PIECES_VERSION)
            if self.data_tag is not None:
                self.version = max(self.version, DATA_TAG_VERSION)
            if self.graph.slots:
                self.version = max(self.version, SLOT_COLUMNS_VERSION)
            from .ckpt_keys import derived_keys_match

            if self.derive_keys and derived_keys_match(self.graph, self.table):  # the keys follow: none is written
                self.version = max(self.version, DERIVED_KEYS_VERSION)
            elif self.version >= DERIVED_KEYS_VERSION:      # (a decoded version-6 index, changed since)
                self.version = SLOT_COLUMNS_VERSION
            from .ckpt_v2 import encode_v2
            body, columns = encode_v2(self)
        return _HEADER.pack(MAGIC, self.version, 0, len(body), crc32c(body)) + body + columns

    def tensors(self):
        """Every tensor entry, in node order (attributes in their order within a node).

        Example:
            >>> e = TensorEntry("k", "int8", (3,), 0, 0, 3, 0)
            >>> [t.key for t in Index(nodes=[Node(attributes={"VARIABLE_VALUE": e})]).tensors()]
            ['k']
        """
        if self._nodes is None:
            return iter(self._table.entries())
        return (e for node in self._nodes for e in node.attributes.values())


def _head(index: Index) -> str:
    doc = {"format": "ckptcore", "version": index.version, "num_shards": index.num_shards,
           "shard_sizes": index.shard_sizes, "metadata": index.metadata}
    if index.data_tag is not None:
        doc["data_tag"] = index.data_tag
    return _dumps(doc)


_json_str = json.encoder.encode_basestring_ascii  # a string as a JSON literal, exactly as json.dumps writes it
def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _bad(path: str, msg: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"corrupt checkpoint index {path}: {msg}", path=path)


def decode_index(raw: bytes, path: str) -> Index:
    """Parse and fully validate index bytes read from ``path``.

    Raises :class:`~ckptcore.CorruptCheckpointError` naming ``path`` for any
    truncation, checksum failure, or structurally invalid content.

    Example:
        >>> idx = Index(nodes=[Node(adapter="a")], num_shards=1, shard_sizes=[0])
        >>> decode_index(idx.encode(), "x.index").nodes[0].adapter
        'a'
    """
    if len(raw) < HEADER_SIZE:
        raise _bad(path, f"file is {len(raw)} bytes, shorter than the {HEADER_SIZE}-byte header (truncated?)")
    magic, version, _flags, length, crc = _HEADER.unpack_from(raw, 0)
    if magic != MAGIC:
        raise _bad(path, f"bad magic {magic!r}; not a ckptcore index")
    if version not in READABLE_VERSIONS:
        raise _bad(path, f"format version {version} is not supported (this ckptcore reads versions "
                         f"{READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]}; a newer ckptcore wrote it?)")
    rest = len(raw) - HEADER_SIZE
    if length != rest if version == 1 else length > rest:  # version 2: binary columns follow the JSON
        raise _bad(path, f"header says {length} bytes of JSON but {rest} follow (truncated?)")
    body = raw[HEADER_SIZE:HEADER_SIZE + length]
    if crc32c(body) != crc:
        raise _bad(path, "index checksum mismatch")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _bad(path, f"invalid JSON ({e})") from None
    try:
        if version == 1:
            from .ckpt_v1 import parse_v1
            index = parse_v1(doc, path, version)
        else:
            from .ckpt_v2 import parse_v2
            index = parse_v2(doc, path, version, memoryview(raw)[HEADER_SIZE + length:])
    except CorruptCheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise _bad(path, f"malformed content ({type(e).__name__}: {e})") from None
    if version < DERIVED_KEYS_VERSION:  # (derived keys are never a legacy form)
        _upgrade_legacy_keys(index, path)
    return index


def _upgrade_legacy_keys(index: Index, path: str) -> None:
    """Give the keys of checkpoints from before ckptcore followed TF's root keys TF's form.

    Only the root's attributes and the slots of a root variable or optimizer can differ
    (:func:`ckptcore.naming.upgrade_legacy_key`): they are found from the graph, so an index
    costs nothing per tensor here.
    """
    from ..naming import upgrade_legacy_key

    g, t = index.graph, index.table
    rows = [(r, False) for r in g.attributes(0)]
    for opt, entries in g.slots.items():
        for var, _name, slot in entries:
            if opt == 0 or var == 0:
                rows.extend((r, opt == 0) for r in g.attributes(slot))
    changed = {}
    for r, opt_root in rows:
        key = t.key[r]
        new = upgrade_legacy_key(key, optimizer_is_root=opt_root)
        if new != key:
            changed[r] = new
    if not changed:
        return
    keys = set(t.key)
    for r, new in changed.items():
        if new in keys:
            raise _bad(path, f"tensor key {t.key[r]!r} read as {new!r}, which another tensor has")
        keys.add(new)
        t.key[r] = new
    if index._nodes is not None:  # version 1: the nodes hold the entries the table was built from
        flat = [e for n in index._nodes for e in n.attributes.values()]
        for r, new in changed.items():
            flat[r].key = new


def _int(v: Any, what: str, path: str, lo: int = 0, hi: int = 1 << 62) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(path, f"{what} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _str(v: Any, what: str, path: str) -> str:
    if not isinstance(v, str):
        raise _bad(path, f"{what} must be a string, got {type(v).__name__}")
    return v


class CkptFormat(Format):
    """ckptcore's own format (versions 1 and 2), as a :class:`~ckptcore.formats.base.Format`.

    Example:
        >>> CkptFormat().sniff_index(MAGIC + bytes(24), b"")
        True
    """

    name = "ckptcore"

    def sniff_index(self, head: bytes, tail: bytes) -> bool:
        return head.startswith(MAGIC)

    def decode_index(self, raw, path, *, storage=None, prefix=None) -> Index:
        return decode_index(raw, path)

    def sniff_file(self, head: bytes) -> bool:
        return False

    writes = True

    def write_plan(self, storage, prefix, plan, progress=None) -> None:
        from ..save.write import write_plan

        write_plan(storage, prefix, plan, progress)

    def record_save(self, storage, directory, name) -> None:
        from ..state import record_save

        record_save(storage, directory, name)

    def write_collective(self, group, storage, prefix, make_plan, *, timeout=None, on_commit=None) -> None:
        from ..distributed.save import collective_write

        collective_write(group, storage, prefix, make_plan, timeout=timeout, on_commit=on_commit)

    def write_state(self, storage, directory, state) -> None:
        from ..state import write_state

        write_state(storage, directory, state)
