from __future__ import annotations

from pvepstore.pstore import BlkParams, BytesSource, Kind, compute_layout, read_blk
from tests.pstore.zonewriter import ZoneWriter

MiB = 1 << 20
TEXT = b"Oops#1 Part1\n<4>[    1.000000] BUG: unable to handle page fault\n"


def image(params: BlkParams, size: int = MiB) -> ZoneWriter:
    return ZoneWriter(compute_layout(size, params)[0])


def discover(w: ZoneWriter):
    result = read_blk(BytesSource(bytes(w.img)), None)
    return result, result.layout.discovery["confidence"]


def test_blank_disk_has_no_records_and_says_so():
    result, confidence = discover(image(BlkParams()))
    assert result.records == [] and confidence == "none"
    assert any("no pstore signature" in f.message for f in result.findings)


def test_stride_from_two_zones_gives_kmsg_size():
    w = image(BlkParams(kmsg_size=16))
    w.dmesg(0, TEXT)
    w.dmesg(1, TEXT)
    w.dmesg(5, TEXT)
    result, confidence = discover(w)
    assert confidence == "high"
    assert result.layout.params.kmsg_size == 16
    assert [r.name for r in result.records] == ["dmesg-pstore_blk-0", "dmesg-pstore_blk-1",
                                                "dmesg-pstore_blk-5"]


def test_lone_zone_assumes_default_size_with_medium_confidence():
    w = image(BlkParams())
    w.dmesg(0, TEXT)
    result, confidence = discover(w)
    assert confidence == "medium" and [r.name for r in result.records] == ["dmesg-pstore_blk-0"]


def test_reserved_but_unused_front_space_keeps_zone_names():
    params = BlkParams(kmsg_size=64, pmsg_size=16, console_size=64)
    w = image(params)
    w.dmesg(0, TEXT)
    w.dmesg(1, TEXT)
    result, _ = discover(w)
    assert result.layout.dmesg_base == 0x14000
    assert [r.name for r in result.records] == ["dmesg-pstore_blk-0", "dmesg-pstore_blk-1"]


def test_pmsg_and_console_zones_are_found():
    params = BlkParams(kmsg_size=32, pmsg_size=16, console_size=16)
    w = image(params)
    expected_pmsg = w.ring(Kind.PMSG, [b"reboot reason: kernel upgrade\n"])
    w.ring(Kind.CONSOLE, [b"[    0.000000] Linux version\n"])
    w.dmesg(0, TEXT)
    w.dmesg(1, TEXT)
    result, confidence = discover(w)
    assert confidence == "high"
    recs = {r.name: r.data for r in result.records}
    assert recs["pmsg-pstore_blk-0"] == expected_pmsg
    assert set(recs) == {"dmesg-pstore_blk-0", "dmesg-pstore_blk-1", "pmsg-pstore_blk-0",
                         "console-pstore_blk-0"}


def test_zones_beyond_128mib_mean_an_uncapped_kernel():
    params = BlkParams(kmsg_size=64, cap_128m=False)
    w = image(params, size=130 * MiB)
    for i in range(2047, 2050):  # the ring wrote across the 128 MiB line
        w.dmesg(i, TEXT)
    w.dmesg(0, TEXT)
    w.dmesg(1, TEXT)
    result, _ = discover(w)
    assert result.layout.params.cap_128m is False
    assert "dmesg-pstore_blk-2049" in [r.name for r in result.records]


def test_ftrace_reserved_zones_shift_dmesg_off_4k_and_are_found():
    # ftrace_size=4 over 3 CPUs reserves 3 zones of 1365 bytes: dmesg zones start at 0xfff
    params = BlkParams(kmsg_size=64, ftrace_size=4, nr_cpus=3)
    w = image(params)
    w.dmesg(0, TEXT)
    w.dmesg(1, TEXT)
    result, confidence = discover(w)
    assert result.layout.dmesg_base == 0xFFF and confidence == "medium"
    assert result.layout.dmesg_count == compute_layout(MiB, params)[0].dmesg_count
    assert [r.name for r in result.records] == ["dmesg-pstore_blk-0", "dmesg-pstore_blk-1"]


def test_fake_ring_signature_inside_a_record_does_not_move_the_layout():
    w = image(BlkParams())
    w.dmesg(0, TEXT + b"GBGC\0\0\0\0\0\0\0\0 and CBGC too\n", compress=False)
    w.dmesg(1, TEXT)
    result, confidence = discover(w)
    assert confidence == "high" and result.layout.dmesg_base == 0
    assert [r.name for r in result.records] == ["dmesg-pstore_blk-0", "dmesg-pstore_blk-1"]
