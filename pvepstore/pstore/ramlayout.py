"""ramoops zone layout, computed as ramoops_probe() computes it (fs/pstore/ram.c).

Memory order: dmesg zones from the start, then console, ftrace, pmsg; every
size rounded down to a power of two.  Each zone is ``{u32 sig, u32 start,
u32 size, data[]}``.  The dmesg zones are described by size and count, not
listed: memory of 1 KiB records has a million of them, and a layout must cost
nothing until its zones are visited.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

from ..errors import UsageError
from .layout import NR_CPUS_MAX
from .model import Kind

PERSISTENT_RAM_SIG = 0x43474244  # "DBGC"; ftrace zones store it ^ LINUX_VERSION_CODE
PRZ_HEADER = struct.Struct("<Iii")  # sig, atomic_t start, atomic_t size
DEFAULT_SIZE = 4096  # MIN_MEM_SIZE: the default of record/console/ftrace/pmsg sizes


def rounddown_pow2(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n > 0 else 0


@dataclass(frozen=True)
class RamoopsParams:
    """ramoops module parameters in bytes (``mem_size`` defaults to the whole source)."""

    mem_size: int | None = None
    record_size: int = DEFAULT_SIZE
    console_size: int = DEFAULT_SIZE
    ftrace_size: int = DEFAULT_SIZE
    pmsg_size: int = DEFAULT_SIZE
    ftrace_per_cpu: bool = False
    nr_cpus: int = 1

    def to_json(self) -> dict:
        return {"mem_size": self.mem_size, "record_size": self.record_size,
                "console_size": self.console_size, "ftrace_size": self.ftrace_size,
                "pmsg_size": self.pmsg_size, "ftrace_per_cpu": self.ftrace_per_cpu,
                "nr_cpus": self.nr_cpus}


@dataclass(frozen=True)
class RamZone:
    kind: Kind
    index: int
    offset: int
    size: int

    @property
    def buffer_size(self) -> int:
        return self.size - PRZ_HEADER.size


@dataclass(frozen=True)
class RamoopsLayout:
    mem_size: int
    params: RamoopsParams
    dmesg_zone_size: int
    dmesg_count: int
    rest: tuple[RamZone, ...]  # console, ftrace, pmsg zones in memory order
    discovery: dict | None = field(default=None, compare=False)

    def dmesg_zone(self, index: int) -> RamZone:
        return RamZone(Kind.DMESG, index, index * self.dmesg_zone_size, self.dmesg_zone_size)

    @property
    def zones(self) -> tuple[RamZone, ...]:
        """Every zone in memory order (materialises the dmesg zones: small layouts only)."""
        return tuple(self.dmesg_zone(i) for i in range(self.dmesg_count)) + self.rest

    def of(self, kind: Kind) -> list[RamZone]:
        if kind is Kind.DMESG:
            return [self.dmesg_zone(i) for i in range(self.dmesg_count)]
        return [z for z in self.rest if z.kind is kind]

    def with_discovery(self, info: dict) -> "RamoopsLayout":
        return replace(self, discovery=info)

    def to_json(self) -> dict:
        doc = {"format": "ramoops", "mem_size": self.mem_size, "params": self.params.to_json(),
               "zones": [{"kind": z.kind.value, "index": z.index, "offset": z.offset, "size": z.size}
                         for z in self.rest],
               "dmesg": {"base": 0, "zone_size": self.dmesg_zone_size, "count": self.dmesg_count}}
        if self.discovery is not None:
            doc["discovery"] = self.discovery
        return doc


def compute_ramoops_layout(size: int, params: RamoopsParams) -> RamoopsLayout:
    """ramoops_probe(): the zones the kernel would use in ``size`` bytes of memory.

    Raises :class:`UsageError` where the kernel's probe fails (so it would show
    nothing); a caller that discovered the parameters itself turns that into a
    finding, since the user gave no argument.
    """
    mem = params.mem_size if params.mem_size is not None else size
    if mem <= 0 or mem > size:
        raise UsageError(f"mem_size {mem} does not fit the {size}-byte source")
    if not 1 <= params.nr_cpus <= NR_CPUS_MAX:
        raise UsageError(f"nr_cpus must be 1..{NR_CPUS_MAX} (got {params.nr_cpus})")
    record, console, ftrace, pmsg = (rounddown_pow2(v) for v in (
        params.record_size, params.console_size, params.ftrace_size, params.pmsg_size))
    if not (record or console or ftrace or pmsg):
        raise UsageError("the record/console/ftrace/pmsg sizes must not all be zero")
    dump_mem = mem - console - ftrace - pmsg
    if dump_mem < 0:
        raise UsageError(f"console+ftrace+pmsg ({console + ftrace + pmsg} bytes) exceed mem_size {mem}",
                         hint="sizes are in bytes for ramoops")
    count = zone = 0
    off = 0
    if dump_mem and record:
        count = dump_mem // record
        if count == 0:
            raise UsageError(f"record_size {record} is larger than the dmesg area ({dump_mem} bytes)")
        zone = (dump_mem // count) & ~1  # ALIGN_DOWN(mem_sz / cnt, 2)
        if zone <= PRZ_HEADER.size:
            raise UsageError(f"dmesg zones of {zone} bytes hold no record (the kernel's probe fails)")
        off = count * zone
    rest: list[RamZone] = []
    if console:
        rest.append(RamZone(Kind.CONSOLE, 0, off, console))
        off += console
    if ftrace:
        n = params.nr_cpus if params.ftrace_per_cpu else 1
        fzone = (ftrace // n) & ~1
        if fzone <= PRZ_HEADER.size:
            # ramoops_init_przs(): "ftrace zone size == 0" fails the probe
            raise UsageError(f"ftrace_size {ftrace} over {n} CPUs leaves {fzone}-byte zones "
                             "(the kernel's probe fails)", hint="use a larger --ftrace-size")
        for i in range(n):
            rest.append(RamZone(Kind.FTRACE, i, off, fzone))
            off += fzone
    if pmsg:
        if off + pmsg > mem:
            raise UsageError("no room for the pmsg zone")
        rest.append(RamZone(Kind.PMSG, 0, off, pmsg))
    return RamoopsLayout(mem_size=mem, params=params, dmesg_zone_size=zone, dmesg_count=count,
                         rest=tuple(rest))
