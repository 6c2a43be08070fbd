"""Fixture scenarios: what to boot, with which pstore_blk parameters and events.

A scenario runs ``len(boots)`` *writing* boots on a raw disk image (each boot
loads pstore_blk, mounts pstorefs, runs its events, then ``poweroff -f`` unless
an event already ended the boot). The image after the last writing boot is the
fixture image. A final *reading* boot attaches a copy of it with
``snapshot=on``, loads pstore_blk with the same parameters, mounts pstorefs and
sends back every file: that is the kernel's view (``kernel/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KiB = 1024
MiB = 1024 * KiB


@dataclass
class Scenario:
    name: str
    description: str
    boots: list                      # list of event lists (see harness.events_to_sh)
    kernel: str = "stock"            # "stock" | "custom"
    disk_size: int = 1 * MiB
    bus: str = "virtio"              # "virtio" | "scsi"
    blkdev: str = "/dev/vda"
    partition: tuple | None = None   # (start_bytes, size_bytes) -> msdos partition 1
    params: dict = field(default_factory=lambda: {"kmsg_size": 64})
    cmdline: str = ""                # extra kernel command line
    expected: list | None = None     # expected pstorefs names in the reading boot
    expect_dmesg: list = field(default_factory=list)  # substrings expected in the pstore dmesg lines
    smp: int = 1
    boot_params: list | None = None  # per writing boot: params dict overriding `params`

    def params_for_boot(self, i: int) -> dict:
        """insmod params (dict) of writing boot i (1-based); the reading boot uses `params`."""
        if self.boot_params and i - 1 < len(self.boot_params) and self.boot_params[i - 1]:
            return self.boot_params[i - 1]
        return self.params

    @property
    def offset(self) -> int:
        return self.partition[0] if self.partition else 0

    def insmod_params(self, params: dict | None = None) -> str:
        params = self.params if params is None else params
        p = [f"blkdev={self.blkdev}", "best_effort=y"]
        for k in ("kmsg_size", "pmsg_size", "console_size", "ftrace_size", "max_reason"):
            if k in params and params[k] is not None:
                p.append(f"{k}={params[k]}")
        return " ".join(p)


OOPS_WAIT = [("sleep", 3)]          # the dmesg write is deferred ~0.5 s (psz_cleaner)


def oopses(n: int, gap: float = 2) -> list:
    """n Oopses, >1 s apart (the kernel orders dmesg zones by tv_sec only)."""
    ev = []
    for i in range(n):
        ev.append("oops")
        ev.append(("sleep", gap if i < n - 1 else 3))
    return ev


SCENARIOS = [
    Scenario(
        "oops-deflate",
        "Stock kernel, default deflate compression, 1 MiB disk, kmsg_size=64 "
        "(16 dmesg zones), two Oopses in one boot -> zones 0 and 1.",
        boots=[oopses(2)],
        expected=["dmesg-pstore_blk-0", "dmesg-pstore_blk-1"],
        expect_dmesg=["Using crash dump compression: deflate", "attached /dev/vda (1048576)"],
    ),
    Scenario(
        "oops-nocompress",
        "Stock kernel booted with pstore.compress=none: two uncompressed Oops "
        "records (pstorefs prepends 'Oops: Total N times').",
        boots=[oopses(2)],
        cmdline="pstore.compress=none",
        expected=["dmesg-pstore_blk-0", "dmesg-pstore_blk-1"],
    ),
    Scenario(
        "kmsg-wrap",
        "256 KiB disk, kmsg_size=64 -> 4 dmesg zones; six Oopses so the ring wraps: "
        "Oops 5 and 6 overwrite zones 0 and 1 (counters 5,6,3,4).",
        boots=[oopses(6)],
        disk_size=256 * KiB,
        expected=[f"dmesg-pstore_blk-{i}" for i in range(4)],
        expect_dmesg=["attached /dev/vda (262144)"],
    ),
    Scenario(
        "erase",
        "Boot 1: two Oopses. Boot 2: rm /sys/fs/pstore/dmesg-pstore_blk-0 "
        "(writes datalen=0 into zone 0's header only). Image and kernel view are "
        "from after the erase: only dmesg-pstore_blk-1 remains visible.",
        boots=[oopses(2), [("rm", "dmesg-pstore_blk-0"), ("sleep", 1)]],
        expected=["dmesg-pstore_blk-1"],
    ),
    Scenario(
        "disk-512m",
        "512 MiB disk: pstore_zone caps total_size at 128 MiB (2048 zones of 64 KiB); "
        "one Oops.",
        boots=[oopses(1)],
        disk_size=512 * MiB,
        expected=["dmesg-pstore_blk-0"],
        expect_dmesg=["capping size to 128MiB", "attached /dev/vda (134217728)"],
    ),
    Scenario(
        "kmsg-size-6",
        "kmsg_size=6: blk.c aligns the KiB value (ALIGN(6,4096)) and ends up with "
        "kmsg_size=4 -> 4 KiB zones (256 on a 1 MiB disk); two Oopses.",
        boots=[oopses(2)],
        params={"kmsg_size": 6},
        expected=["dmesg-pstore_blk-0", "dmesg-pstore_blk-1"],
        expect_dmesg=["kmsg_size must align to 4096"],
    ),
    Scenario(
        "partition",
        "3 MiB image with an msdos partition table; partition 1 starts at 1 MiB "
        "(sector 2048) and is 1 MiB long; pstore_blk on /dev/vda1; two Oopses. "
        "Zone offsets are relative to the partition (meta.offset).",
        boots=[oopses(2)],
        disk_size=3 * MiB,
        partition=(1 * MiB, 1 * MiB),
        blkdev="/dev/vda1",
        expected=["dmesg-pstore_blk-0", "dmesg-pstore_blk-1"],
        expect_dmesg=["attached /dev/vda1 (1048576)"],
    ),
    Scenario(
        "reserved-pmsg-console",
        "Stock kernel (no PSTORE_PMSG/CONSOLE) with pmsg_size=16 console_size=64: "
        "the zones are reserved anyway, so dmesg zones start at 0x14000 "
        "(14 zones on 1 MiB); one Oops lands at 0x14000.",
        boots=[oopses(1)],
        params={"kmsg_size": 64, "pmsg_size": 16, "console_size": 64},
        expected=["dmesg-pstore_blk-0"],
        expect_dmesg=["backend for kmsg(Oops) pmsg console"],
    ),
    Scenario(
        "all-zero",
        "Blank 1 MiB disk, pstore_blk loaded and pstorefs mounted, no events: "
        "the disk stays all zeros and the kernel shows no records.",
        boots=[[("sleep", 1)]],
        expected=[],
    ),
    Scenario(
        "virtio-scsi",
        "pstore disk on virtio-scsi (/dev/sda), 1 MiB, two Oopses.",
        boots=[oopses(2)],
        bus="scsi",
        blkdev="/dev/sda",
        expected=["dmesg-pstore_blk-0", "dmesg-pstore_blk-1"],
        expect_dmesg=["attached /dev/sda (1048576)"],
    ),
    Scenario(
        "panic",
        "echo c > /proc/sysrq-trigger (panic=-1): the panic record is never written "
        "by best_effort pstore_blk (no panic_write) -> disk stays zero, no records.",
        boots=[["panic"]],
        expected=[],
    ),
    Scenario(
        "reboot",
        "max_reason=4 (Shutdown) and reboot -f: the shutdown dump is deferred and "
        "the machine resets first -> no records.",
        boots=[[("sleep", 1), "reboot"]],
        params={"kmsg_size": 64, "max_reason": 4},
        expected=[],
        expect_dmesg=["backend for kmsg(Shutdown)"],
    ),
    Scenario(
        "oops-then-poweroff-fast",
        "One Oops immediately followed by poweroff -f (no sleep): the deferred "
        "write (~0.5 s) never happens -> no records.",
        boots=[["oops", "poweroff"]],
        expected=[],
    ),
    Scenario(
        "oops-second-boot",
        "Boot 1: two Oopses (zones 0,1; counters 1,2). Boot 2: one more Oops -> zone 2 "
        "with the persistent counter 3 although its text says 'Oops#1 Part1' "
        "(per-boot count).",
        boots=[oopses(2), oopses(1)],
        expected=["dmesg-pstore_blk-0", "dmesg-pstore_blk-1", "dmesg-pstore_blk-2"],
    ),
    Scenario(
        "ftrace-reserved-smp3",
        "Stock kernel (no PSTORE_FTRACE) with ftrace_size=4 on a 3-CPU guest: "
        "3 ftrace zones of 4096//3=1365 bytes are reserved, so the dmesg zones "
        "start at 3*1365=4095 (0xfff, not 4 KiB aligned); (1 MiB-4096)//64 KiB = "
        "15 dmesg zones; one Oops.",
        boots=[oopses(1)],
        params={"kmsg_size": 64, "ftrace_size": 4},
        smp=3,
        expected=["dmesg-pstore_blk-0"],
        expect_dmesg=["backend for kmsg(Oops) ftrace"],
    ),
    Scenario(
        "layout-change",
        "Boot 1 with kmsg_size=64: two Oopses at 0x0 and 0x10000. Boots 2 and read "
        "with kmsg_size=32: the old records are valid zones of the new layout too "
        "(0x10000 = new zone 2), so the kernel shows them as dmesg-pstore_blk-0 and "
        "-2; boot 2's Oops goes to the zone after the newest (3 @ 0x18000).",
        boots=[oopses(2), oopses(1)],
        boot_params=[{"kmsg_size": 64}, None],
        params={"kmsg_size": 32},
        expected=["dmesg-pstore_blk-0", "dmesg-pstore_blk-2", "dmesg-pstore_blk-3"],
    ),
    # ---- custom kernel (PSTORE_CONSOLE + PSTORE_PMSG), see build-kernel.sh ----
    Scenario(
        "pmsg-console",
        "Custom 6.1 kernel with PSTORE_PMSG+PSTORE_CONSOLE; pmsg_size=16 "
        "console_size=64 kmsg_size=64 on 1 MiB: layout pmsg@0 (16 KiB), console@0x4000 "
        "(64 KiB), dmesg from 0x14000. Three pmsg writes, one Oops, poweroff. "
        "Neither ring wraps.",
        kernel="custom",
        boots=[[("pmsg", "hello from pmsg, line 1\n"),
                ("pmsg", "line 2: reboot reason = fixture\n"),
                ("pmsg", "line 3: last words\n"),
                ("kmsg_lines", 3, "pvepstore-console-marker"),
                ("sleep", 1)] + oopses(1)],
        params={"kmsg_size": 64, "pmsg_size": 16, "console_size": 64},
        expected=["console-pstore_blk-0", "dmesg-pstore_blk-0", "pmsg-pstore_blk-0"],
        expect_dmesg=["backend for kmsg(Oops) pmsg console"],
    ),
    Scenario(
        "pmsg-console-wrap",
        "Custom kernel, pmsg_size=4 console_size=4 kmsg_size=64 on 1 MiB: "
        "150 pmsg writes of 64 bytes (9600 B > 4084 B ring) and 200 printk lines "
        "via /dev/kmsg so both rings wrap; one Oops.",
        kernel="custom",
        boots=[[("pmsg_lines", 150, "pmsg"),
                ("kmsg_lines", 200, "pvepstore-console-wrap"),
                ("sleep", 1)] + oopses(1)],
        params={"kmsg_size": 64, "pmsg_size": 4, "console_size": 4},
        expected=["console-pstore_blk-0", "dmesg-pstore_blk-0", "pmsg-pstore_blk-0"],
    ),
    Scenario(
        "pmsg-overwritten-next-boot",
        "Custom kernel, pmsg_size=16 console_size=64. Boot 1: 40 pmsg lines (2560 B). "
        "Boot 2: one short pmsg write -> it starts again at data offset 0, the header "
        "says datalen=start=n and the rest of boot 1's text stays on disk after it; "
        "boot 2 also overwrites the console zone with its own log. The kernel shows only "
        "boot 2's pmsg line and boot 2's console log.",
        kernel="custom",
        boots=[[("pmsg_lines", 40, "boot1"), ("sleep", 2)],
               [("pmsg", "boot2: short\n"), ("sleep", 2)]],
        params={"kmsg_size": 64, "pmsg_size": 16, "console_size": 64},
        expected=["console-pstore_blk-0", "pmsg-pstore_blk-0"],
    ),
]

BY_NAME = {s.name: s for s in SCENARIOS}

# quick smoke: one boot, one Oops, remount pstorefs and compare names only
SMOKE = Scenario(
    "smoke",
    "smoke test: one Oops, then remount pstorefs in the same boot",
    boots=[["oops", ("sleep", 3), "remount", ("view", "after")]],
    expected=["dmesg-pstore_blk-0"],
)
