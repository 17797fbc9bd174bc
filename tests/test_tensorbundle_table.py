"""The TensorBundle index table: layout as TensorFlow writes it, snappy blocks, and hostile bytes."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptcore as ck
from ckptcore.formats import ckpt as fmt
from ckptcore.formats.tensorbundle import bundle, table

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tf", "tf2_nested", "ckpt-1")
with open(FIXTURE + ".index", "rb") as _f:
    TF_INDEX = _f.read()


def test_rebuilding_tensorflows_entries_gives_its_bytes():
    assert table.build(table.read_table(TF_INDEX, "x")) == TF_INDEX


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=300)), max_size=200, unique_by=lambda kv: kv[0]))
def test_tables_round_trip_across_blocks(items):
    items = sorted(items)
    assert table.read_table(table.build(items, block_size=512), "t") == items


def _snappy_table(items):
    """A table whose one data block is snappy-compressed, as TensorFlow 1.0 wrote its indexes."""
    import cramjam

    plain = table.build(items)
    entries = table.read_table(plain, "t")
    blk = table._Block(table.RESTART_INTERVAL)
    for k, v in entries:
        blk.add(k, v)
    data = bytes(cramjam.snappy.compress_raw(blk.finish()))
    out = bytearray(data)
    out.append(table.SNAPPY)
    out += struct.pack("<I", table.mask(fmt.crc32c(data + bytes([table.SNAPPY]))))
    meta_off = len(out)
    meta = table._Block(16).finish()
    out += meta + b"\x00" + struct.pack("<I", table.mask(fmt.crc32c(meta + b"\x00")))
    idx = table._Block(1)
    h = bytearray()
    table.put_varint(h, 0)
    table.put_varint(h, len(data))
    idx.add(b"\xff", bytes(h))
    idx_off = len(out)
    ib = idx.finish()
    out += ib + b"\x00" + struct.pack("<I", table.mask(fmt.crc32c(ib + b"\x00")))
    foot = bytearray()
    for off, size in ((meta_off, len(meta)), (idx_off, len(ib))):
        table.put_varint(foot, off)
        table.put_varint(foot, size)
    foot += bytes(40 - len(foot)) + table.MAGIC.to_bytes(8, "little")
    return bytes(out + foot)


def test_snappy_compressed_blocks_are_read():
    items = [(b"", b"header"), (b"a" * 50, b"x" * 200), (b"a" * 49 + b"b", b"y" * 200)]
    assert table.read_table(_snappy_table(items), "old.index") == items


def test_a_snappy_tensorflow_index_reads_as_a_checkpoint(tmp_path):
    import shutil

    shutil.copy(FIXTURE + ".data-00000-of-00001", tmp_path / "c.data-00000-of-00001")
    (tmp_path / "c.index").write_bytes(_snappy_table(table.read_table(TF_INDEX, "x")))
    assert dict(ck.list_variables(str(tmp_path / "c")))["model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"] == [2, 3]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.integers(0, len(TF_INDEX) - 1), st.integers(1, 255))
def test_any_flipped_byte_of_a_tensorflow_index_is_an_error_naming_the_file(pos, xor):
    raw = bytearray(TF_INDEX)
    raw[pos] ^= xor
    try:
        bundle.parse_entries(bytes(raw), "hostile.index")
    except ck.CorruptCheckpointError as e:
        assert "hostile.index" in str(e)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_with_the_magic_raise_ckptcore_errors(body):
    raw = body + bytes(max(0, 40 - len(body))) + table.MAGIC.to_bytes(8, "little")
    with pytest.raises(ck.CorruptCheckpointError):
        bundle.parse_entries(raw, "r.index")


def test_a_huge_claimed_shape_is_refused_before_allocating():
    entry = bundle.message("BundleEntryProto")(dtype=1, size=4)
    entry.shape.dim.add(size=1 << 40)
    entry.shape.dim.add(size=1 << 40)
    with pytest.raises(ck.CorruptCheckpointError, match="impossible shape"):
        bundle._tensor_entry("k", entry, 1, "h.index")


def test_an_unreadable_dtype_names_the_key():
    entry = bundle.message("BundleEntryProto")(dtype=20, size=0)
    with pytest.raises(ck.CorruptCheckpointError, match="'k'.*resource"):
        bundle._tensor_entry("k", entry, 1, "h.index")


def test_masking_is_tensorflows():
    # crc32c::Mask(crc32c("foo")), as TensorFlow's own crc32c tests state its unmasking
    assert table.unmask(table.mask(fmt.crc32c(b"foo"))) == fmt.crc32c(b"foo")
    assert table.mask(0) == 0xA282EAD8


def _one_block_table(block: bytes, kind: int = table.NO_COMPRESSION) -> bytes:
    """A table file whose one data block is ``block`` (stored as given: compressed already for SNAPPY)."""
    out = bytearray(block)
    out.append(kind)
    out += struct.pack("<I", table.mask(fmt.crc32c(block + bytes([kind]))))
    meta_off, meta = len(out), table._Block(16).finish()
    out += meta + b"\x00" + struct.pack("<I", table.mask(fmt.crc32c(meta + b"\x00")))
    idx = table._Block(1)
    h = bytearray()
    table.put_varint(h, 0)
    table.put_varint(h, len(block))
    idx.add(b"\xff" * 8, bytes(h))
    idx_off, ib = len(out), idx.finish()
    out += ib + b"\x00" + struct.pack("<I", table.mask(fmt.crc32c(ib + b"\x00")))
    foot = bytearray()
    for off, size in ((meta_off, len(meta)), (idx_off, len(ib))):
        table.put_varint(foot, off)
        table.put_varint(foot, size)
    return bytes(out + foot + bytes(40 - len(foot)) + table.MAGIC.to_bytes(8, "little"))


def _peak_while(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_keys_chaining_shared_prefixes_are_refused_before_they_take_gigabytes():
    """Each entry shares the whole previous key and adds one byte: 20,000 entries of 4 bytes (80 KB)
    decode to 200 MB of keys, all in order. (Before: read whole, then failed on the first value.)"""
    blk = bytearray()
    for i in range(20_000):
        table.put_varint(blk, i)
        blk += b"\x01\x00\x01"  # unshared 1, no value, the byte 0x01
    raw = _one_block_table(bytes(blk) + struct.pack("<II", 0, 1))

    def read():
        with pytest.raises(ck.CorruptCheckpointError, match="hostile.index: its keys decode to more bytes"):
            table.read_table(raw, "hostile.index")
    assert _peak_while(read) < 64 * len(raw) + (16 << 20)


def test_a_block_of_repeated_keys_fails_at_the_second_not_after_decoding_all():
    """A snappy block of zeros: 25 KB on disk, 4 MiB of empty-key entries (1.4 million) once decoded."""
    import cramjam

    zeros = bytes(cramjam.snappy.compress_raw(bytes(4 << 20)))
    raw = _one_block_table(zeros, table.SNAPPY)

    def read():
        with pytest.raises(ck.CorruptCheckpointError, match="out of order or repeated"):
            table.read_table(raw, "zeros.index")
    assert _peak_while(read) < (12 << 20)  # the decompressed block and little else (was ~200 MB of entries)
