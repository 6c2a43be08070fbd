"""Edge cases of the reader that no kernel produces on demand (corruption, hostile data).

Normal behaviour is proven against real-kernel fixtures (test_kernel_fixtures.py);
these tests use the zone-writer double to cover the kernel's validity rules.
"""

from __future__ import annotations

import zlib

from pvepstore.pstore import BlkParams, BytesSource, Kind, ReadOptions, compute_layout, read_blk
from pvepstore.pstore.zoneformat import ZONE_HDR
from tests.pstore.zonewriter import ZoneWriter, deflate_raw

MiB = 1 << 20
TEXT = b"Oops#1 Part1\n<4>[    3.141592] BUG: kernel NULL pointer dereference, address: 0000000000000000\n"


def writer(params: BlkParams = BlkParams(), size: int = MiB) -> ZoneWriter:
    layout, _ = compute_layout(size, params)
    return ZoneWriter(layout)


def parse(w: ZoneWriter, params: BlkParams | None = BlkParams(), **opts):
    return read_blk(BytesSource(bytes(w.img)), params, options=ReadOptions(**opts))


def severities(result):
    return [(f.severity.value, f.zone) for f in result.findings]


def test_uncompressed_record_gets_the_total_line_with_signed_counter():
    w = writer()
    w.dmesg(0, TEXT, compress=False, counter=0xFFFFFFFF)
    (rec,) = parse(w).records
    # psz_kmsg_read prints the u32 counter through an int with %d
    assert rec.data == b"Oops: Total -1 times\n" + TEXT
    assert (rec.name, rec.reason, rec.reason_code, rec.counter) == ("dmesg-pstore_blk-0", "Oops", 2, -1)


def test_compressed_record_has_no_total_line_and_both_window_sizes_decode():
    w = writer()
    w.dmesg(0, TEXT, compress=True)
    w.dmesg(1, TEXT, compress=False, reason=4, counter=0)
    w.put(w.layout.dmesg_zone(2).offset, b"")  # untouched zone
    z = w.layout.dmesg_zone(3)
    w.dmesg(3, b"x", compress=True)
    payload = deflate_raw(TEXT, wbits=-15)  # 6.6+ zlib window
    w.put(z.offset, ZONE_HDR.pack(0x43474244, 40 + len(payload), 0))
    w.put(z.offset + 52, payload)
    recs = {r.name: r for r in parse(w).records}
    assert recs["dmesg-pstore_blk-0"].data == TEXT
    assert recs["dmesg-pstore_blk-1"].data.startswith(b"Shutdown: Total 0 times\n")
    assert recs["dmesg-pstore_blk-3"].data == TEXT


def test_undecompressable_record_is_kept_raw_as_enc_z_like_the_kernel():
    w = writer()
    w.dmesg(0, TEXT, compress=True)
    z = w.layout.dmesg_zone(0)
    w.put(z.offset + 52, b"\xff\xff\xff\xff")  # corrupt deflate stream
    result = parse(w)
    (rec,) = result.records
    assert rec.name == "dmesg-pstore_blk-0.enc.z" and rec.compressed
    assert rec.data[:4] == b"\xff\xff\xff\xff"
    assert ("warning", 0) in severities(result)


def test_deflate_bomb_is_refused_and_bounded():
    w = writer()
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(b"\0" * (20 * MiB)) + bomb.flush()
    z = w.layout.dmesg_zone(0)
    assert 40 + len(payload) < z.buffer_size
    w.put(z.offset, ZONE_HDR.pack(0x43474244, 40 + len(payload), 0))
    w.dmesg(1, TEXT)
    from pvepstore.pstore.zoneformat import KMSG_HDR
    w.put(z.offset + 12, KMSG_HDR.pack(0x4DFC3AE5, 1, 0, 1, 1, 2))
    w.put(z.offset + 52, payload)
    result = parse(w)
    names = [r.name for r in result.records]
    assert names == ["dmesg-pstore_blk-0.enc.z", "dmesg-pstore_blk-1"]
    assert len(result.records[0].data) == len(payload)
    assert any("more than" in f.message for f in result.findings)


def test_kernel_validity_rules_skip_with_findings():
    w = writer()
    w.dmesg(0, TEXT, datalen=-5)  # negative datalen: "overtop" (unsigned compare)
    w.dmesg(1, TEXT, datalen=70000)  # larger than the buffer: overtop
    w.dmesg(2, TEXT, magic=0x12345678)  # "found invalid zone"
    w.dmesg(3, TEXT, datalen=20)  # shorter than the kmsg header
    w.dmesg(4, TEXT)
    result = parse(w)
    assert [r.name for r in result.records] == ["dmesg-pstore_blk-4"]
    assert {z for _, z in severities(result)} >= {0, 1, 2, 3}


def test_erased_records_hidden_unless_forensic_and_then_flagged():
    w = writer()
    w.dmesg(0, TEXT, compress=True)
    w.dmesg(1, TEXT, compress=False)
    w.erase_dmesg(0)
    w.erase_dmesg(1)
    assert parse(w).records == []
    recs = parse(w, include_erased=True).records
    assert [(r.name, r.erased) for r in recs] == [("dmesg-pstore_blk-0", True), ("dmesg-pstore_blk-1", True)]
    assert recs[0].data == TEXT and recs[1].data == TEXT


def test_pmsg_and_console_rings_in_chronological_order():
    params = BlkParams(kmsg_size=64, pmsg_size=4, console_size=4)
    w = writer(params)
    lines = [f"line {i:04d} of the reboot reason\n".encode() for i in range(400)]  # > 4 KiB: wraps
    expected_pmsg = w.ring(Kind.PMSG, lines)
    expected_console = w.ring(Kind.CONSOLE, [b"short console\n"])
    recs = {r.name: r.data for r in parse(w, params).records}
    assert recs["pmsg-pstore_blk-0"] == expected_pmsg and len(expected_pmsg) == 4096 - 12
    assert recs["console-pstore_blk-0"] == expected_console
    assert list(recs) == ["pmsg-pstore_blk-0", "console-pstore_blk-0"]  # the kernel's order


def test_ring_with_start_beyond_datalen_is_an_error_finding():
    params = BlkParams(kmsg_size=64, pmsg_size=4)
    w = writer(params)
    w.ring(Kind.PMSG, [b"abc\n"])
    zone = w.layout.zones(Kind.PMSG)[0]
    w.put(zone.offset, ZONE_HDR.pack(0x43474243, 10, 20))
    result = parse(w, params)
    assert any(f.severity.value == "error" and "recovery fails" in f.message for f in result.findings)


def test_work_is_bounded_by_headers_and_valid_data():
    w = writer(size=128 * MiB)
    w.dmesg(0, TEXT)
    src = BytesSource(bytes(w.img))
    result = read_blk(src, BlkParams())
    # 2048 zone headers of 52 bytes plus one payload: the image itself is never read
    assert src.bytes_read <= 2048 * 52 + 4096
    assert len(result.records) == 1


def test_empty_compressed_record_ends_the_kernels_listing():
    w = writer()
    w.dmesg(0, TEXT)
    w.dmesg(1, b"", compress=True, datalen=40)
    w.dmesg(2, TEXT)
    result = parse(w)
    # pstore_get_backend_records() stops at a 0-byte record: zone 2 is not listed
    assert [r.name for r in result.records] == ["dmesg-pstore_blk-0"]
    assert any(f.severity.value == "error" and f.zone == 1 for f in result.findings)
