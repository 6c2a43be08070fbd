"""Reader for ramoops memory (e.g. the file behind a Proxmox ``ivshmem`` device).

Reproduces what the guest kernel lists in /sys/fs/pstore after ramoops probes
the same memory (fs/pstore/ram.c ``ramoops_probe``/``ramoops_pstore_read``,
ram_core.c ``persistent_ram_post_init``/``persistent_ram_save_old``), byte for
byte.  Layout: dmesg zones from the start, then console, ftrace, pmsg; every
size rounded down to a power of two.  Each zone is ``{u32 sig, u32 start,
u32 size, data[]}``; a dmesg record starts ``====<sec>.<usec>-<C|D>\\n``.
ECC (``ramoops.ecc``) is not supported: pvepstore configures ``ecc=0``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from ..errors import UsageError
from .dump import decode_payload, part_header, reason_code
from .ftrace import merge_by_timestamp, render, split_records
from .model import Finding, Kind, ParseResult, Record, Severity
from .source import ByteSource

BACKEND = "ramoops"
PERSISTENT_RAM_SIG = 0x43474244  # "DBGC"; ftrace zones store it ^ LINUX_VERSION_CODE
PRZ_HEADER = struct.Struct("<Iii")  # sig, atomic_t start, atomic_t size
DEFAULT_SIZE = 4096  # MIN_MEM_SIZE: the default of record/console/ftrace/pmsg sizes
MAX_RECORD_BYTES = 32 << 20
# sscanf("====%lld.%lu-%c\n%n"): the kernel's isspace() also takes 0xa0 (Latin-1 NBSP).
_WS = rb"[\t\n\v\f\r \xa0]*"
# The kernel's vsscanf takes a '-' for %lld but no '+', and no sign at all for %lu.
_KMSG_HDR = re.compile(rb"====" + _WS + rb"(-?\d+)\." + _WS + rb"(\d+)-(.)" + _WS, re.S)
_KMSG_HDR_OLD = re.compile(rb"====" + _WS + rb"(-?\d+)\." + _WS + rb"(\d+)" + _WS, re.S)


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
    zones: tuple[RamZone, ...]
    discovery: dict | None = field(default=None, compare=False)

    def of(self, kind: Kind) -> list[RamZone]:
        return [z for z in self.zones if z.kind is kind]

    def to_json(self) -> dict:
        doc = {"format": "ramoops", "mem_size": self.mem_size, "params": self.params.to_json(),
               "zones": [{"kind": z.kind.value, "index": z.index, "offset": z.offset, "size": z.size}
                         for z in self.zones]}
        if self.discovery is not None:
            doc["discovery"] = self.discovery
        return doc


def compute_ramoops_layout(size: int, params: RamoopsParams) -> RamoopsLayout:
    """ramoops_probe(): the zones the kernel would use in ``size`` bytes of memory."""
    mem = params.mem_size if params.mem_size is not None else size
    if mem <= 0 or mem > size:
        raise UsageError(f"mem_size {mem} does not fit the {size}-byte source")
    record, console, ftrace, pmsg = (rounddown_pow2(v) for v in (
        params.record_size, params.console_size, params.ftrace_size, params.pmsg_size))
    if not (record or console or ftrace or pmsg):
        raise UsageError("the record/console/ftrace/pmsg sizes must not all be zero")
    dump_mem = mem - console - ftrace - pmsg
    if dump_mem < 0:
        raise UsageError(f"console+ftrace+pmsg ({console + ftrace + pmsg} bytes) exceed mem_size {mem}",
                         hint="sizes are in bytes for ramoops")
    zones: list[RamZone] = []
    off = 0
    if dump_mem and record:
        count = dump_mem // record
        if count == 0:
            raise UsageError(f"record_size {record} is larger than the dmesg area ({dump_mem} bytes)")
        zone = (dump_mem // count) & ~1  # ALIGN_DOWN(mem_sz / cnt, 2)
        for i in range(count):
            zones.append(RamZone(Kind.DMESG, i, off, zone))
            off += zone
    if console:
        zones.append(RamZone(Kind.CONSOLE, 0, off, console))
        off += console
    if ftrace:
        count = max(1, params.nr_cpus) if params.ftrace_per_cpu else 1
        zone = (ftrace // count) & ~1
        for i in range(count):
            zones.append(RamZone(Kind.FTRACE, i, off, zone))
            off += zone
    if pmsg:
        if off + pmsg > mem:
            raise UsageError("no room for the pmsg zone")
        zones.append(RamZone(Kind.PMSG, 0, off, pmsg))
    return RamoopsLayout(mem_size=mem, params=params, zones=tuple(zones))


def looks_like_ramoops(source: ByteSource) -> bool:
    """A ramoops area starts with a zone header whose data is a ``====`` dump header or empty."""
    head = source.read_at(0, PRZ_HEADER.size + 4)
    if len(head) < PRZ_HEADER.size or PRZ_HEADER.unpack_from(head)[0] != PERSISTENT_RAM_SIG:
        return False
    _, start, size = PRZ_HEADER.unpack_from(head)
    if head[PRZ_HEADER.size:] == b"====":
        return True
    # pstore_blk's first zone has its kmsg magic right there instead
    return head[PRZ_HEADER.size:] != b"\xe5\x3a\xfc\x4d" and 0 <= start <= size


def discover_ramoops(source: ByteSource) -> tuple[RamoopsParams, list[Finding]]:
    """Zone sizes from the zone headers: every zone gets one when ramoops first probes it."""
    scan = min(source.size, 64 << 20)
    starts = [off for off, raw in source.read_headers(range(0, scan, 512), 4).items()
              if len(raw) == 4 and _is_zone_sig(int.from_bytes(raw, "little"))]
    findings = []
    if len(starts) < 2:
        findings.append(Finding(Severity.INFO, "ramoops zone sizes not discoverable (fewer than two "
                                "zone headers); assuming the module defaults"))
        return RamoopsParams(mem_size=source.size), findings
    sizes = [b - a for a, b in zip(starts, starts[1:])] + [source.size - starts[-1]]
    record = sizes[0]
    count = 1
    while count < len(sizes) and sizes[count] == record and not _is_ftrace_at(source, starts[count]):
        count += 1
    # console/pmsg zones as large as the dmesg zones: only their contents tell them
    # apart (a dmesg record starts with "===="); trailing non-dmesg text is pmsg, then console.
    tail_text = 0
    while count - tail_text > 1 and tail_text < 2 and _holds_text(source, starts[count - tail_text - 1]):
        tail_text += 1
    count -= tail_text
    rest = list(zip(starts[count:], sizes[count:]))
    ftrace = [(o, n) for o, n in rest if _is_ftrace_at(source, o)]
    plain = [(o, n) for o, n in rest if (o, n) not in ftrace]
    console = pmsg = 0
    if len(plain) >= 2:
        console, pmsg = plain[0][1], plain[-1][1]
    elif len(plain) == 1:
        # one of them: after the ftrace zones it is pmsg, otherwise take it as console
        if ftrace and plain[0][0] > ftrace[0][0]:
            pmsg = plain[0][1]
        else:
            console = plain[0][1]
        findings.append(Finding(Severity.INFO, "one non-dmesg ramoops zone found; its kind is a guess"))
    params = RamoopsParams(mem_size=source.size, record_size=record, console_size=console,
                           ftrace_size=sum(n for _, n in ftrace), pmsg_size=pmsg,
                           ftrace_per_cpu=len(ftrace) > 1, nr_cpus=max(1, len(ftrace)))
    return params, findings


def _is_zone_sig(sig: int) -> bool:
    return sig == PERSISTENT_RAM_SIG or 0x020600 <= sig ^ PERSISTENT_RAM_SIG <= 0x0FFFFF


def _holds_text(source: ByteSource, off: int) -> bool:
    raw = source.read_at(off, PRZ_HEADER.size + 4)
    if len(raw) < PRZ_HEADER.size + 4:
        return False
    _, start, size = PRZ_HEADER.unpack_from(raw)
    return size > 0 and raw[PRZ_HEADER.size:] != b"===="


def _is_ftrace_at(source: ByteSource, off: int) -> bool:
    raw = source.read_at(off, 4)
    return len(raw) == 4 and int.from_bytes(raw, "little") != PERSISTENT_RAM_SIG


def read_ramoops(source: ByteSource, params: RamoopsParams | None = None, *,
                 max_record_bytes: int = MAX_RECORD_BYTES, image_offset: int = 0) -> ParseResult:
    """Parse ramoops memory; ``params=None`` discovers the zone sizes from the zone headers."""
    findings: list[Finding] = []
    discovery = None
    if params is None:
        params, notes = discover_ramoops(source)
        findings.extend(notes)
        discovery = {"method": "zone-headers", "confidence": "medium" if notes else "high"}
    layout = compute_ramoops_layout(source.size, params)
    if discovery is not None:
        layout = RamoopsLayout(layout.mem_size, layout.params, layout.zones, discovery)
    reader = _RamReader(source, findings, max_record_bytes)
    records = reader.read_all(layout)
    return ParseResult(source=source.name, offset=image_offset, layout=layout, records=records,
                       findings=findings, bytes_read=source.bytes_read)


class _RamReader:
    def __init__(self, src: ByteSource, findings: list[Finding], limit: int) -> None:
        self.src = src
        self.findings = findings
        self.limit = limit

    def note(self, severity: Severity, message: str, zone: RamZone) -> None:
        self.findings.append(Finding(severity, message, kind=zone.kind.value, zone=zone.index,
                                     offset=zone.offset))

    def old_log(self, zone: RamZone, ftrace: bool = False) -> bytes | None:
        """persistent_ram_post_init() + save_old(): the zone's previous contents, or None."""
        if zone.size < PRZ_HEADER.size:
            return None
        raw = self.src.read_at(zone.offset, PRZ_HEADER.size)
        if len(raw) < PRZ_HEADER.size:
            return None
        sig, start, size = PRZ_HEADER.unpack(raw)
        if ftrace:
            version = sig ^ PERSISTENT_RAM_SIG
            if not 0x020600 <= version <= 0x0FFFFF:  # LINUX_VERSION_CODE of some 2.6..15.x kernel
                return None
        elif sig != PERSISTENT_RAM_SIG:
            return None
        if size == 0 and start == 0:
            return None  # "found existing empty buffer"
        if size < 0 or start < 0 or size > zone.buffer_size or start > size:
            # "found existing invalid buffer": the kernel zaps it at probe, shows nothing
            self.note(Severity.WARNING, f"invalid buffer (size {size}, start {start}, capacity "
                      f"{zone.buffer_size}); the kernel discards it", zone)
            return None
        if size > self.limit:
            self.note(Severity.WARNING, f"{size}-byte zone exceeds the read limit; skipped", zone)
            return None
        data_off = zone.offset + PRZ_HEADER.size
        return self.src.read_at(data_off + start, size - start) + self.src.read_at(data_off, start)

    def read_all(self, layout: RamoopsLayout) -> list[Record]:
        records: list[Record] = []
        # ramoops_pstore_read(): dmesg zones, then console, pmsg, ftrace.
        for zone in layout.of(Kind.DMESG):
            old = self.old_log(zone)
            if old is None:
                continue
            rec = self.dmesg_record(zone, old)
            if rec is _STOP:
                return records
            if rec is not None:
                records.append(rec)
        for kind in (Kind.CONSOLE, Kind.PMSG):
            for zone in layout.of(kind):
                old = self.old_log(zone)
                if old:
                    records.append(Record(name=f"{kind.value}-{BACKEND}-0", kind=kind, backend=BACKEND,
                                          zone=0, offset=zone.offset, data=old))
        ftrace_zones = layout.of(Kind.FTRACE)
        merged: list = []
        for zone in ftrace_zones:
            old = self.old_log(zone, ftrace=True)
            if old:
                merged = merge_by_timestamp(merged, split_records(old))
        if merged:
            records.append(Record(name=f"ftrace-{BACKEND}-0", kind=Kind.FTRACE, backend=BACKEND,
                                  zone=0, offset=ftrace_zones[0].offset, data=render(merged)))
            self.note(Severity.INFO, "ftrace addresses shown in hex: the kernel resolves them "
                      "with its own symbol table", ftrace_zones[0])
        return records

    def dmesg_record(self, zone: RamZone, old: bytes) -> Record | object | None:
        m = _KMSG_HDR.match(old)
        compressed = False
        if m:
            compressed = m.group(3) == b"C"
        else:
            m = _KMSG_HDR_OLD.match(old)
        if not m:
            # "Clear and skip this DMESG record if it has no valid header"
            self.note(Severity.WARNING, "dmesg zone without a ====<time> header; the kernel "
                      "discards it", zone)
            return None
        sec = _c_long(int(m.group(1)))
        usec = int(m.group(2))
        payload = old[m.end():]
        if not payload:
            self.note(Severity.ERROR, "empty dmesg record: the guest kernel stops listing records "
                      "here (later zones are not shown in /sys/fs/pstore)", zone)
            return _STOP
        name = f"dmesg-{BACKEND}-{zone.index}"
        limit = min(3 * zone.buffer_size, self.limit)
        decoded = decode_payload(payload, compressed, limit)
        recovered = None
        if decoded.error:
            self.note(Severity.WARNING, f"compressed record cannot be decompressed: {decoded.error}; "
                      f"kept raw as {name}.enc.z, as the kernel does", zone)
            # The writer's header ends with exactly one "\n"; the kernel's sscanf also eats
            # whitespace bytes (e.g. 0x0b, 0x0d) that begin the deflate stream.
            exact = old.find(b"\n", m.start(3) if m.lastindex == 3 else m.start(2)) + 1
            if 0 < exact < m.end():
                retry = decode_payload(old[exact:], True, limit)
                if not retry.error:
                    recovered = retry.data
                    self.note(Severity.INFO, "the kernel's header parser ate the first byte(s) of "
                              "the deflate stream; pvepstore recovered the text", zone)
        head = part_header(recovered if recovered is not None else decoded.data) \
            if (recovered is not None or not decoded.suffix) else None
        return Record(name=name + decoded.suffix, kind=Kind.DMESG, backend=BACKEND, zone=zone.index,
                      offset=zone.offset, data=decoded.data,
                      reason=head[0] if head else None,
                      reason_code=reason_code(head[0]) if head else None,
                      counter=head[1] if head else None,
                      time_sec=sec, time_nsec=(usec * 1000) % (1 << 64), compressed=compressed,
                      recovered=recovered)


_STOP = object()


def _c_long(value: int) -> int:
    """%lld wraps like the C conversion does for out-of-range input (hostile data)."""
    return (value + (1 << 63)) % (1 << 64) - (1 << 63)
