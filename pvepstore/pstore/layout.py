"""pstore/blk zone layout, computed exactly as the kernel computes it.

Sources (../shared/reference/pstore-blk-format.md §1): ``check_size()`` in
fs/pstore/blk.c (sizes in KiB, with its ALIGN-on-the-KiB-value quirk),
``register_pstore_zone()`` (4 KiB minimum, 128 MiB cap on kernels >= 6.1) and
``psz_alloc_zones()`` in fs/pstore/zone.c (order pmsg, console, ftrace, dmesg).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import UsageError
from .model import Kind

SZ_128M = 128 << 20
ZONE_HEADER = 12  # struct psz_buffer {u32 sig; s32 datalen; s32 start;}
KMSG_HEADER = 40  # sizeof(struct psz_kmsg_header) on 64-bit: tail padding included
DEFAULT_KMSG_KIB = 64  # CONFIG_PSTORE_BLK_KMSG_SIZE default
# CONFIG_NR_CPUS is at most 8192 (x86_64 MAXSMP): no kernel has more possible CPUs,
# and per-CPU ftrace zones (one object each) must not grow without bound.
NR_CPUS_MAX = 8192


def kib_param_to_bytes(kib: int) -> int:
    """Replicate blk.c ``check_size()``, which aligns the *KiB number* to 4096.

    A size that is not a multiple of 4 KiB becomes ``ALIGN(kib, 4096)`` bytes:
    ``kmsg_size=6`` gives 4 KiB zones, not 8 (verified on 6.1: reads back 4).
    """
    if kib <= 0:
        return 0
    size = kib * 1024
    if size & 4095:
        size = (kib + 4095) & ~4095
    return size


@dataclass(frozen=True)
class BlkParams:
    """pstore_blk module parameters as given to the module (sizes in KiB)."""

    kmsg_size: int = DEFAULT_KMSG_KIB
    pmsg_size: int = 0
    console_size: int = 0
    ftrace_size: int = 0
    nr_cpus: int = 1
    cap_128m: bool = True

    def to_json(self) -> dict:
        return {
            "kmsg_size": self.kmsg_size,
            "pmsg_size": self.pmsg_size,
            "console_size": self.console_size,
            "ftrace_size": self.ftrace_size,
            "nr_cpus": self.nr_cpus,
            "cap_128m": self.cap_128m,
        }


@dataclass(frozen=True)
class Zone:
    kind: Kind
    index: int  # index among zones of its kind (the dmesg record id)
    offset: int  # from the start of the block device
    size: int

    @property
    def buffer_size(self) -> int:
        return self.size - ZONE_HEADER


@dataclass(frozen=True)
class BlkLayout:
    """The zones the kernel would use on a device of ``device_size`` bytes.

    dmesg zones are described by base/size/count rather than listed, so that a
    huge uncapped device with tiny zones costs nothing until zones are visited.
    """

    device_size: int
    total_size: int
    params: BlkParams
    front: tuple[Zone, ...]  # pmsg, console, ftrace zones in disk order
    dmesg_base: int
    dmesg_zone_size: int
    dmesg_count: int
    discovery: dict | None = field(default=None, compare=False)

    def dmesg_zone(self, index: int) -> Zone:
        return Zone(Kind.DMESG, index, self.dmesg_base + index * self.dmesg_zone_size,
                    self.dmesg_zone_size)

    def zones(self, kind: Kind) -> list[Zone]:
        return [z for z in self.front if z.kind is kind]

    def with_discovery(self, info: dict) -> "BlkLayout":
        return replace(self, discovery=info)

    def to_json(self) -> dict:
        doc = {
            "format": "pstore_blk",
            "device_size": self.device_size,
            "total_size": self.total_size,
            "params": self.params.to_json(),
            "zones": [
                {"kind": z.kind.value, "index": z.index, "offset": z.offset, "size": z.size}
                for z in self.front
            ],
            "dmesg": {"base": self.dmesg_base, "zone_size": self.dmesg_zone_size,
                      "count": self.dmesg_count},
        }
        if self.discovery is not None:
            doc["discovery"] = self.discovery
        return doc


def compute_layout(device_size: int, params: BlkParams) -> tuple[BlkLayout, list[str]]:
    """Return the kernel's layout for ``device_size`` bytes and the kernel's complaints.

    Complaints are conditions under which the real kernel would refuse to
    register (so it would neither show nor write anything); the layout is still
    returned so that an image can be examined forensically.  Combinations that
    do not describe any layout at all raise :class:`UsageError`.
    """
    complaints: list[str] = []
    for name in ("kmsg_size", "pmsg_size", "console_size", "ftrace_size"):
        if getattr(params, name) < 0:
            raise UsageError(f"{name} must be >= 0 KiB (got {getattr(params, name)})")
    if not 1 <= params.nr_cpus <= NR_CPUS_MAX:
        raise UsageError(f"nr_cpus must be 1..{NR_CPUS_MAX} (got {params.nr_cpus})")

    total = device_size
    if params.cap_128m and total > SZ_128M:
        total = SZ_128M  # "pstore_zone: capping size to 128MiB" (6.1+)
    if total < 4096:
        complaints.append("total_size must be >= 4096")
    elif total % 4096:
        complaints.append("total_size must be a multiple of 4096")

    kmsg = kib_param_to_bytes(params.kmsg_size)
    pmsg = kib_param_to_bytes(params.pmsg_size)
    console = kib_param_to_bytes(params.console_size)
    ftrace = kib_param_to_bytes(params.ftrace_size)
    if not (kmsg or pmsg or console or ftrace):
        raise UsageError("at least one record size must be non-zero",
                         hint="the default is --kmsg-size 64")

    front: list[Zone] = []
    off = 0
    for kind, size in ((Kind.PMSG, pmsg), (Kind.CONSOLE, console)):
        if size:
            front.append(Zone(kind, 0, off, size))
            off += size
    if ftrace:
        per_cpu = ftrace // params.nr_cpus
        if per_cpu:
            for i in range(ftrace // per_cpu):
                front.append(Zone(Kind.FTRACE, i, off, per_cpu))
                off += per_cpu
    if off > total:
        raise UsageError(
            f"the pmsg/console/ftrace zones ({off} bytes) do not fit the {total}-byte device",
            hint="check the sizes: they are in KiB",
        )
    # The dmesg count uses the nominal front size while zones start at the actual
    # offset (ftrace rounding can make them differ): psz_alloc_zones().
    nominal_front = pmsg + console + ftrace
    # off <= nominal_front always (c * rs <= F), so the dmesg zones fit.
    count = (total - nominal_front) // kmsg if kmsg and total > nominal_front else 0
    layout = BlkLayout(device_size=device_size, total_size=total, params=params,
                       front=tuple(front), dmesg_base=off, dmesg_zone_size=kmsg,
                       dmesg_count=count)
    return layout, complaints
