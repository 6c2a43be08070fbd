"""ramoops reader: layout arithmetic and the kernel's read rules (fs/pstore/ram.c, ram_core.c).

Byte-identity with a real kernel is proven by the ivshmem fixtures
(test_kernel_fixtures.py); these tests build ramoops memory the way
ramoops_pstore_write()/persistent_ram_write() lay it out, for the rules no
kernel produces on demand.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from pvepstore.errors import UsageError
from pvepstore.pstore import BytesSource, Kind, RamoopsParams, read_source
from pvepstore.pstore.ramoops import compute_ramoops_layout, read_ramoops

MiB = 1 << 20
K64 = 64 << 10
PANIC = b"Panic#1 Part1\n<0>[   12.345678] Kernel panic - not syncing: sysrq triggered crash\n"
# A longer text compresses with dynamic Huffman codes, whose first byte is no whitespace.
PANIC_LONG = PANIC + b"".join(b"<4>[   12.3%05d] ? frame_%d+0x%x/0x100\n" % (i, i, i) for i in range(64))
REBOOT = b"Shutdown#2 Part1\n<5>[   30.000000] reboot: Restarting system\n"


class Ram:
    def __init__(self, size: int = MiB) -> None:
        self.mem = bytearray(size)

    def zone(self, off: int, data: bytes, *, start: int | None = None, size: int | None = None,
             sig: int = 0x43474244) -> None:
        n = len(data) if size is None else size
        self.mem[off:off + 12] = struct.pack("<Iii", sig, n if start is None else start, n)
        self.mem[off + 12:off + 12 + len(data)] = data

    def dump(self, index: int, text: bytes, *, compressed: bool = True, stamp: bytes = b"1795661798.541782",
             zone_size: int = K64) -> None:
        if compressed:
            c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
            payload = c.compress(text) + c.flush()
        else:
            payload = text
        self.zone(index * zone_size, b"====" + stamp + (b"-C\n" if compressed else b"-D\n") + payload)

    def parse(self, params: RamoopsParams | None):
        return read_ramoops(BytesSource(bytes(self.mem)), params)


OUR_PARAMS = RamoopsParams(record_size=K64, console_size=K64, pmsg_size=K64, ftrace_size=0)


def test_layout_dmesg_then_console_ftrace_pmsg_and_power_of_two_rounding():
    layout = compute_ramoops_layout(MiB, RamoopsParams(record_size=K64 + 5, console_size=K64,
                                                       ftrace_size=8192, pmsg_size=K64,
                                                       ftrace_per_cpu=True, nr_cpus=2))
    kinds = [(z.kind, z.offset, z.size) for z in layout.zones]
    dump_mem = MiB - K64 - 8192 - K64
    n = dump_mem // K64
    zone = (dump_mem // n) & ~1
    assert kinds[:n] == [(Kind.DMESG, i * zone, zone) for i in range(n)]
    assert kinds[n:] == [(Kind.CONSOLE, n * zone, K64), (Kind.FTRACE, n * zone + K64, 4096),
                         (Kind.FTRACE, n * zone + K64 + 4096, 4096), (Kind.PMSG, n * zone + K64 + 8192, K64)]


def test_module_defaults_reserve_4k_console_ftrace_pmsg():
    layout = compute_ramoops_layout(MiB, RamoopsParams())
    assert [z.kind for z in layout.zones[-3:]] == [Kind.CONSOLE, Kind.FTRACE, Kind.PMSG]
    assert layout.zones[0].size == 4096


def test_records_in_kernel_order_with_reasons_from_the_part_header():
    ram = Ram()
    ram.dump(0, PANIC_LONG)
    ram.dump(1, REBOOT, compressed=False, stamp=b"1795661799.000001")
    ram.zone(14 * K64, b"[   30.0] reboot: Restarting system\n")
    ram.zone(15 * K64, b"pvepstore: planned reboot (kernel upgrade)\n")
    result = ram.parse(OUR_PARAMS)
    assert [r.name for r in result.records] == ["dmesg-ramoops-0", "dmesg-ramoops-1",
                                                 "console-ramoops-0", "pmsg-ramoops-0"]
    panic, reboot = result.records[:2]
    assert (panic.data, panic.reason, panic.counter, panic.compressed) == (PANIC_LONG, "Panic", 1, True)
    assert panic.recovered is None
    assert (reboot.data, reboot.reason, reboot.reason_code) == (REBOOT, "Shutdown", 4)
    assert panic.time.isoformat() == "2026-11-26T02:56:38.541782+00:00"


def test_ring_order_and_invalid_buffers():
    ram = Ram()
    ram.zone(14 * K64, b"BBBBAAAA", start=4)  # wrapped ring: oldest byte at start
    ram.zone(15 * K64, b"x" * 10, start=20, size=10)  # start > size: the kernel zaps it
    result = ram.parse(OUR_PARAMS)
    assert [(r.name, r.data) for r in result.records] == [("console-ramoops-0", b"AAAABBBB")]
    assert any("invalid buffer" in f.message for f in result.findings)


def test_dmesg_zone_without_header_is_skipped_and_empty_record_stops_the_listing():
    ram = Ram()
    ram.zone(0, b"no header here")
    ram.zone(K64, b"====1795661798.000001-D\n")  # header only: a 0-byte record
    ram.dump(2, PANIC)
    result = ram.parse(OUR_PARAMS)
    assert result.records == []
    assert any(f.severity.value == "error" and f.zone == 1 for f in result.findings)


def test_deflate_stream_starting_with_whitespace_is_enc_z_like_the_kernel_but_recovered():
    # fixed-Huffman streams can start with 0x0b (VT): the kernel's sscanf eats it as whitespace
    ram = Ram()
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    payload = c.compress(PANIC) + c.flush()
    assert payload[0] in b"\t\n\v\f\r "
    ram.zone(0, b"====1795661798.541782-C\n" + payload)
    (rec,) = ram.parse(OUR_PARAMS).records
    assert rec.name == "dmesg-ramoops-0.enc.z" and rec.data == payload[1:]
    assert rec.recovered == PANIC and rec.reason == "Panic"


def test_discovery_of_zone_sizes_and_format_detection():
    ram = Ram()
    for i in range(14):
        ram.zone(i * K64, b"")  # every zone gets a header when ramoops first probes it
    ram.dump(0, PANIC_LONG)
    ram.zone(14 * K64, b"[    0.000000] Linux version 6.1.0\n")
    ram.zone(15 * K64, b"reboot reason\n")
    result = read_source(BytesSource(bytes(ram.mem)))
    assert result.layout.to_json()["format"] == "ramoops"
    assert result.layout.params.record_size == K64 and result.layout.params.pmsg_size == K64
    assert [r.name for r in result.records] == ["dmesg-ramoops-0", "console-ramoops-0", "pmsg-ramoops-0"]


def test_impossible_sizes_are_usage_errors():
    with pytest.raises(UsageError):
        compute_ramoops_layout(MiB, RamoopsParams(record_size=0, console_size=0, ftrace_size=0, pmsg_size=0))
    with pytest.raises(UsageError):
        compute_ramoops_layout(MiB, RamoopsParams(console_size=2 * MiB))
