"""Corrupt and hostile OVMF variable stores: findings within bounds, never an exception.

Every image is a real-kernel fixture (tests/fixtures/efi-oops: Debian 6.1's efi_pstore in
OVMF_VARS_4M.fd) with one thing broken the way a guest (it owns the store) or a damaged disk
could break it.  Work is counted (bytes read, tracemalloc peak), not timed.
"""

from __future__ import annotations

import lzma
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvepstore.pstore import BytesSource, FileSource, ReadOptions, read_source
from pvepstore.pstore.efi import EFI_PSTORE_GUID, read_efi
from pvepstore.pstore.efivars import AUTH_HEADER, parse_varstore
from tests.conftest import load_fixtures, run_cli
from pvepstore.cli import ExitStatus

FX = {f.name: f for f in load_fixtures()}
BASE = lzma.decompress((FX["efi-oops"].path / "image.xz").read_bytes())
VIEW = FX["efi-oops"].kernel_view
VARS = parse_varstore(BytesSource(BASE), include_deleted=True).variables
CRASH = [v for v in VARS if v.guid == EFI_PSTORE_GUID and v.live]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MiB = 1 << 20


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def _set_u32(data: bytes, offset: int, value: int) -> bytes:
    return _patch(data, offset, struct.pack("<I", value))


def _read(data: bytes, **kw):
    res = read_efi(BytesSource(data), **kw)
    return res, {r.name: r.data for r in res.records}, [f.message for f in res.findings]


def _name_size_at(v) -> int:
    return v.offset + 36      # AUTHENTICATED_VARIABLE_HEADER.NameSize


def test_base_is_the_kernel_view():
    _, got, findings = _read(BASE)
    assert got == VIEW and not findings
    assert AUTH_HEADER.size == 60


@pytest.mark.parametrize("cut", [0, 39, 44, 0x48 + 10, 0x64 + 30, CRASH[3].offset + 70,
                                 CRASH[-1].data_offset + 5, len(BASE) - 1])
def test_truncated_store(cut):
    res, got, findings = _read(BASE[:cut])
    # the records that are left are the kernel's bytes; what is cut is said, not guessed
    assert all(VIEW[n] == d for n, d in got.items())
    if len(got) < len(VIEW):
        assert findings


def test_huge_data_size_stops_the_scan_with_a_finding():
    v = CRASH[5]
    bad = _set_u32(BASE, v.offset + 40, 0xFFFFFFF0)
    res, got, findings = _read(bad)
    assert any("past the end of the store" in m for m in findings)
    assert len(got) == 5 and all(VIEW[n] == d for n, d in got.items())
    assert res.bytes_read <= len(BASE)


def test_name_without_terminator():
    v = CRASH[2]
    # the name's last two bytes are its UCS-2 NUL: make it 'X' (NameSize unchanged)
    bad = _patch(BASE, v.data_offset - 2, b"X\0")
    _, got, findings = _read(bad)
    assert any("without its UCS-2 NUL" in m for m in findings)
    assert all(VIEW[n] == d for n, d in got.items())


def test_oversized_data_ends_the_kernels_listing():
    # a crash variable whose DataSize is more than efi_pstore's 1024-byte buffer: GetVariable
    # returns EFI_BUFFER_TOO_SMALL, efi_pstore_read() -EIO, pstore stops reading.
    v = CRASH[4]
    grown = len(v.data) + 2000
    area_end = CRASH[-1].data_offset + len(CRASH[-1].data)
    bad = _set_u32(BASE, v.offset + 40, grown)   # swallows the following variables' bytes
    if v.data_offset + grown > area_end:
        pytest.skip("fixture layout")
    _, got, findings = _read(bad)
    assert any("the kernel's listing ends here" in m for m in findings)
    assert len(got) == 4


def test_foreign_name_under_the_crash_guid_ends_the_listing():
    v = CRASH[6]
    bad = _patch(BASE, v.offset + 60, "xump".encode("utf-16-le"))
    _, got, findings = _read(bad)
    assert len(got) == 6 and any("not a dump name" in m for m in findings)


def test_duplicate_live_name_loop_is_detected():
    # copy variable 1's name over variable 3's (same length): the firmware's GetNextVariableName
    # restarts after the first copy each time, so the enumeration cycles.
    a, b = CRASH[1], CRASH[3]
    if len(a.name_bytes) != len(b.name_bytes):
        pytest.skip("fixture layout")
    bad = _patch(BASE, b.offset + 60, a.name_bytes)
    res, got, findings = _read(bad)
    assert any("loops" in m for m in findings)
    assert len(got) == 3 and all(VIEW[n] == d for n, d in got.items())


def test_in_transition_copy_is_hidden_when_an_added_one_exists():
    a, b = CRASH[1], CRASH[3]
    if len(a.name_bytes) != len(b.name_bytes):
        pytest.skip("fixture layout")
    bad = _patch(BASE, b.offset + 60, a.name_bytes)
    bad = _patch(bad, a.offset + 2, bytes([0x3F & 0xFE]))     # the first copy: in transition
    _, got, findings = _read(bad)
    assert not any("loops" in m for m in findings)
    # variable 1 is shadowed by the ADDED copy (3, now under 1's name and so 1's id)
    n1 = next(n for n, d in VIEW.items() if d == _read(BASE)[0].records[1].data)
    n3 = next(n for n, d in VIEW.items() if d == _read(BASE)[0].records[3].data)
    assert set(got) == set(VIEW) - {n3}
    assert got[n1] == VIEW[n3]


def test_deflate_bomb_in_a_variable_stays_compressed():
    v = CRASH[0]
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(b"\0" * (64 << 10)) + bomb.flush()
    assert len(payload) <= len(v.data)
    bad = _set_u32(_patch(BASE, v.data_offset, payload), v.offset + 40, len(payload))
    # the DataSize change moves the next header: rebuild is not needed for the first assertion
    _, got, findings = _read(bad)
    assert any(n.endswith(".enc.z") for n in got)
    assert any("deflate bomb" in m for m in findings)


def test_bad_signatures_and_headers():
    _, got, findings = _read(_patch(BASE, 40, b"XXXX"))
    assert not got and any("_FVH" in m for m in findings)
    _, got, findings = _read(_patch(BASE, 0x48, b"\0" * 16))
    assert not got and any("signature" in m for m in findings)
    _, got, findings = _read(_patch(BASE, 48, struct.pack("<H", 0xFFFF)))
    assert not got and any("signature" in m for m in findings)
    _, got, findings = _read(_patch(BASE, 48, struct.pack("<H", 10)))
    assert not got and any("HeaderLength" in m for m in findings)
    _, got, findings = _read(_set_u32(BASE, 0x48 + 16, 0xFFFFFFFF))
    assert got == VIEW and any("runs past" in m for m in findings)
    _, got, _ = _read(b"")
    assert not got


def test_image_budget_is_respected():
    res = read_efi(BytesSource(BASE), options=ReadOptions(max_image_bytes=4096))
    assert 0 < len(res.records) < len(VIEW)
    assert sum(r.size for r in res.records) <= 4096
    assert any("per image" in f.message for f in res.findings)


def test_huge_sparse_store_is_bounded(tmp_path):
    # a 1 GiB sparse file whose store header claims 4 GiB: at most MAX_STORE_BYTES are read
    path = tmp_path / "efidisk.raw"
    with open(path, "wb") as f:
        f.write(_set_u32(BASE, 0x48 + 16, 0xFFFFFFFF)[:0x64])
        f.truncate(1 << 30)
    tracemalloc.start()
    try:
        with FileSource(path) as src:
            res = read_source(src, fmt="auto")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not res.records and peak < 48 * MiB
    assert any("only the first" in f.message for f in res.findings)


@SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0x48, CRASH[-1].data_offset + 1100), st.binary(min_size=1, max_size=8)),
                      min_size=1, max_size=6))
def test_random_damage_never_raises(edits):
    data = BASE
    for off, new in edits:
        data = _patch(data, off, new)[:len(BASE)]
    res = read_efi(BytesSource(data), forensic=True)
    assert len(res.records) <= len(VARS)
    assert res.bytes_read <= 2 * len(BASE)
    for rec in res.records:
        assert len(rec.data) <= 3 * 1024


def test_cli_on_a_corrupt_store_exits_0_with_findings(tmp_path):
    path = tmp_path / "efidisk.raw"
    path.write_bytes(_set_u32(BASE, CRASH[5].offset + 40, 0xFFFFFFF0))
    r = run_cli("parse", str(path), "--format", "efi", "--json")
    assert r.status == ExitStatus.SUCCESS and "Traceback" not in r.stderr
    doc = r.json
    assert len(doc["records"]) == 5 and doc["findings"]
    r = run_cli("parse", str(path), "--format", "efi", "--kmsg-size", "64")
    assert r.status == ExitStatus.USAGE
