"""Property tests on mutated real images: hostile bytes never crash the reader or blow its budget."""

from __future__ import annotations

import lzma
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvepstore.pstore import BlkParams, BytesSource, ReadOptions, compute_layout, read_blk
from pvepstore.pstore.blk import MAX_RECORD_BYTES
from tests.conftest import FIXTURES

BASE_FIXTURE = FIXTURES / "oops-deflate"
pytestmark = pytest.mark.skipif(not (BASE_FIXTURE / "image.xz").exists(), reason="fixture missing")


def base_image() -> bytes:
    return lzma.decompress((BASE_FIXTURE / "image.xz").read_bytes())


BASE = base_image() if (BASE_FIXTURE / "image.xz").exists() else b""
LAYOUT = compute_layout(len(BASE), BlkParams())[0] if BASE else None
HEADER_FIELDS = [(0, 4), (4, 4), (8, 4), (12, 4), (20, 8), (28, 8), (36, 1), (40, 4), (44, 4)]

# A mutation: (zone index, field, 32-bit value) on headers, or a raw byte flip anywhere.
header_mutation = st.tuples(st.integers(0, 15), st.sampled_from(HEADER_FIELDS),
                            st.integers(0, 2**64 - 1))
byte_mutation = st.tuples(st.integers(0, 2 * 65536 - 1), st.integers(0, 255))


def mutate(headers, flips) -> bytes:
    img = bytearray(BASE)
    for zone, (off, size), value in headers:
        at = LAYOUT.dmesg_zone(zone).offset + off
        img[at:at + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
    for at, value in flips:
        img[at] = value
    return bytes(img)


def check(img: bytes, params: BlkParams | None) -> None:
    src = BytesSource(img)
    tracemalloc.start()
    try:
        result = read_blk(src, params, options=ReadOptions(include_erased=True))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    zones = result.layout.dmesg_count
    # Work: headers plus at most one zone's data per zone (plus the discovery probes).
    assert src.bytes_read <= zones * result.layout.dmesg_zone_size + 2 * 1024 * 1024
    assert peak < 64 * 1024 * 1024
    for rec in result.records:
        assert rec.size <= MAX_RECORD_BYTES
        assert "/" not in rec.name and rec.name.split("-")[1] == "pstore_blk"
        rec.to_json()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(header_mutation, max_size=6), st.lists(byte_mutation, max_size=40))
def test_mutated_real_image_known_layout(headers, flips):
    check(mutate(headers, flips), BlkParams())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(header_mutation, max_size=6), st.lists(byte_mutation, max_size=40))
def test_mutated_real_image_discovered_layout(headers, flips):
    check(mutate(headers, flips), None)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(BASE)), st.booleans())
def test_truncated_images(cut, discover):
    img = BASE[:cut]
    if len(img) < 4096 and not discover:
        return  # compute_layout refuses impossible sizes with a UsageError: tested elsewhere
    check(img, None if discover else BlkParams(kmsg_size=4))


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=70000))
def test_random_bytes(data):
    check(data.ljust(65536, b"\0"), None)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 64), st.binary(max_size=40)), max_size=20))
def test_hostile_ramoops_memory(writes):
    from pvepstore.pstore import RamoopsParams, read_ramoops
    from tests.pstore.test_ramoops import PANIC_LONG, Ram

    ram = Ram()
    for i in range(16):
        ram.zone(i * 65536, b"")
    ram.dump(0, PANIC_LONG)
    for zone, at, data in writes:
        off = zone * 65536 + at
        ram.mem[off:off + len(data)] = data
    for params in (None, RamoopsParams(record_size=65536, console_size=65536, pmsg_size=65536, ftrace_size=0)):
        src = BytesSource(bytes(ram.mem))
        result = read_ramoops(src, params)
        assert src.bytes_read <= 2 * len(ram.mem)
        for rec in result.records:
            assert rec.size <= MAX_RECORD_BYTES
            rec.to_json()
