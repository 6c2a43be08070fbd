from __future__ import annotations

import pytest

from pvepstore.errors import UsageError
from pvepstore.pstore import BlkParams, Kind, compute_layout, kib_param_to_bytes

MiB = 1 << 20


@pytest.mark.parametrize("kib,expected", [(64, 65536), (4, 4096), (0, 0), (-1, 0),
                                          (6, 4096), (10, 4096), (4097, 8192), (8, 8192)])
def test_kib_quirk_aligns_the_kib_number(kib, expected):
    # blk.c check_size(): ALIGN(kb, 4096) on the KiB value (verified: kmsg_size=6 reads back 4)
    assert kib_param_to_bytes(kib) == expected


def test_default_layout_1mib():
    layout, complaints = compute_layout(MiB, BlkParams())
    assert complaints == []
    assert (layout.dmesg_base, layout.dmesg_zone_size, layout.dmesg_count) == (0, 65536, 16)
    assert layout.dmesg_zone(1).offset == 0x10000


def test_reserved_pmsg_console_shift_dmesg_even_without_frontends():
    # spec §1.1: console_size=64,pmsg_size=16 on Debian 6.1 puts the first dmesg zone at 0x14000
    layout, _ = compute_layout(MiB, BlkParams(kmsg_size=64, pmsg_size=16, console_size=64))
    assert [(z.kind, z.offset, z.size) for z in layout.front] == [
        (Kind.PMSG, 0, 16384), (Kind.CONSOLE, 16384, 65536)]
    assert layout.dmesg_base == 0x14000
    assert layout.dmesg_count == (MiB - 0x14000) // 65536


def test_128mib_cap_and_uncapped():
    capped, _ = compute_layout(512 * MiB, BlkParams())
    assert capped.total_size == 128 * MiB and capped.dmesg_count == 2048
    uncapped, _ = compute_layout(512 * MiB, BlkParams(cap_128m=False))
    assert uncapped.dmesg_count == 8192


def test_ftrace_rounding_misaligns_dmesg_zones():
    # spec §1.3: F=4096 with 100 CPUs gives rs=40 and 102 zones; the dmesg count uses nominal F
    layout, _ = compute_layout(MiB, BlkParams(kmsg_size=64, ftrace_size=4, nr_cpus=100))
    ftrace = layout.zones(Kind.FTRACE)
    assert len(ftrace) == 102 and ftrace[0].size == 40
    assert layout.dmesg_base == 102 * 40
    assert layout.dmesg_count == (MiB - 4096) // 65536


def test_kernel_refusals_are_reported_not_raised():
    _, complaints = compute_layout(MiB + 512, BlkParams())
    assert complaints == ["total_size must be a multiple of 4096"]
    _, complaints = compute_layout(2048, BlkParams(kmsg_size=4))
    assert "total_size must be >= 4096" in complaints


def test_impossible_parameters_raise_usage_error():
    with pytest.raises(UsageError):
        compute_layout(MiB, BlkParams(kmsg_size=0))
    with pytest.raises(UsageError):
        compute_layout(MiB, BlkParams(pmsg_size=2048))
