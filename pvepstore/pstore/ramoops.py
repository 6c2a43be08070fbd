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

from ..errors import UsageError
from .dump import decode_payload, part_header, reason_code
from .ftrace import merge_by_timestamp, render, split_records
from .model import MAX_IMAGE_BYTES, MAX_RECORD_BYTES, Finding, ImageBudget, Kind, ParseResult, Record, Severity
from .ramdiscover import discover_ramoops
from .ramlayout import (DEFAULT_SIZE, PERSISTENT_RAM_SIG, PRZ_HEADER, RamoopsLayout, RamoopsParams,
                        RamZone, compute_ramoops_layout, rounddown_pow2)
from .source import ByteSource

__all__ = ["BACKEND", "DEFAULT_SIZE", "PERSISTENT_RAM_SIG", "PRZ_HEADER", "RamZone", "RamoopsLayout",
           "RamoopsParams", "compute_ramoops_layout", "discover_ramoops", "looks_like_ramoops",
           "read_ramoops", "rounddown_pow2"]

BACKEND = "ramoops"
MAX_ZONES = 1 << 20  # dmesg zones visited at most (1 GiB of 1 KiB records)
HEADER_BATCH = 4096
# sscanf("====%lld.%lu-%c\n%n"): the kernel's isspace() also takes 0xa0 (Latin-1 NBSP).
_WS = rb"[\t\n\v\f\r \xa0]*"
# The kernel's vsscanf takes a '-' for %lld but no '+', and no sign at all for %lu.
_KMSG_HDR = re.compile(rb"====" + _WS + rb"(-?\d+)\." + _WS + rb"(\d+)-(.)" + _WS, re.S)
_KMSG_HDR_OLD = re.compile(rb"====" + _WS + rb"(-?\d+)\." + _WS + rb"(\d+)" + _WS, re.S)


def _wrapped_decimal(digits: bytes) -> int:
    """The value vsscanf's %lld/%lu stores for any number of digits: modulo 2**64.

    simple_strntoull() keeps multiplying past overflow, so only the value mod
    2**64 survives; 10**64 is a multiple of 2**64, so the last 64 digits decide
    it.  (Converting all digits with int() is refused beyond 4300 of them, and
    costs quadratic time on a hostile header.)
    """
    sign = -1 if digits[:1] == b"-" else 1
    return sign * int(digits.lstrip(b"-")[-64:] or b"0") % (1 << 64)


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


def read_ramoops(source: ByteSource, params: RamoopsParams | None = None, *,
                 max_record_bytes: int = MAX_RECORD_BYTES, image_offset: int = 0,
                 max_image_bytes: int = MAX_IMAGE_BYTES) -> ParseResult:
    """Parse ramoops memory; ``params=None`` discovers the zone sizes from the zone headers."""
    findings: list[Finding] = []
    if params is None:
        params, notes = discover_ramoops(source)
        findings.extend(notes)
        confidence = "medium" if notes else "high"
        try:
            layout = compute_ramoops_layout(source.size, params)
        except UsageError as exc:
            # The user gave no argument: headers that describe no usable layout are a
            # property of the image (a finding), never a usage error (exit 2).
            findings.append(Finding(Severity.ERROR, f"the zone headers describe no layout the kernel "
                                    f"would accept ({exc.message}); nothing was read"))
            layout, confidence = RamoopsLayout(source.size, params, 0, 0, ()), "none"
        layout = layout.with_discovery({"method": "zone-headers", "confidence": confidence})
    else:
        layout = compute_ramoops_layout(source.size, params)
    reader = _RamReader(source, findings, max_record_bytes, max_image_bytes)
    records = reader.read_all(layout)
    findings.extend(reader.budget.findings())
    return ParseResult(source=source.name, offset=image_offset, layout=layout, records=records,
                       findings=findings, bytes_read=source.bytes_read)


class _RamReader:
    def __init__(self, src: ByteSource, findings: list[Finding], limit: int,
                 budget: int = MAX_IMAGE_BYTES) -> None:
        self.src = src
        self.findings = findings
        self.limit = limit
        self.budget = ImageBudget(budget)

    def note(self, severity: Severity, message: str, zone: RamZone) -> None:
        self.findings.append(Finding(severity, message, kind=zone.kind.value, zone=zone.index,
                                     offset=zone.offset))

    def old_log(self, zone: RamZone, ftrace: bool = False, raw: bytes | None = None) -> bytes | None:
        """persistent_ram_post_init() + save_old(): the zone's previous contents, or None.

        The kernel copies at most the zone's buffer (``kvzalloc(size)`` with
        ``size <= buffer_size``); pvepstore also refuses more than the per-record
        limit and the per-image budget, so no header can make it hold more.
        """
        if zone.size < PRZ_HEADER.size:
            return None
        if raw is None:
            raw = self.src.read_at(zone.offset, PRZ_HEADER.size)
        if len(raw) < PRZ_HEADER.size:
            return None
        sig, start, size = PRZ_HEADER.unpack_from(raw)
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
        if not self.spend(size, zone):
            return None
        data_off = zone.offset + PRZ_HEADER.size
        return self.src.read_at(data_off + start, size - start) + self.src.read_at(data_off, start)

    def spend(self, size: int, zone: RamZone) -> bool:
        """Take ``size`` bytes from the image's budget; False (and a finding, once) when spent."""
        return self.budget.take(size, lambda message: self.note(Severity.WARNING, message, zone))

    def dmesg_zones(self, layout: RamoopsLayout):
        """(zone, header) of each dmesg zone that has a header, fetched in batches (holes skipped)."""
        count = layout.dmesg_count
        if count > MAX_ZONES:
            self.note(Severity.WARNING, f"{count} dmesg zones; only the first {MAX_ZONES} were read",
                      layout.dmesg_zone(MAX_ZONES))
            count = MAX_ZONES
        size = layout.dmesg_zone_size
        for first in range(0, count, HEADER_BATCH):
            offsets = range(first * size, min(count, first + HEADER_BATCH) * size, size)
            headers = self.src.read_headers(offsets, PRZ_HEADER.size)
            for off in sorted(headers):  # only what is not a hole: a sparse GiB costs nothing
                yield layout.dmesg_zone(off // size), headers[off]

    def read_all(self, layout: RamoopsLayout) -> list[Record]:
        records: list[Record] = []
        # ramoops_pstore_read(): dmesg zones, then console, pmsg, ftrace.
        for zone, raw in self.dmesg_zones(layout):
            old = self.old_log(zone, raw=raw)
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
        sec = _c_long(_wrapped_decimal(m.group(1)))
        usec = _wrapped_decimal(m.group(2))
        payload = old[m.end():]
        if not payload:
            self.note(Severity.ERROR, "empty dmesg record: the guest kernel stops listing records "
                      "here (later zones are not shown in /sys/fs/pstore)", zone)
            return _STOP
        name = f"dmesg-{BACKEND}-{zone.index}"
        limit = min(3 * zone.buffer_size, self.limit)
        decoded = decode_payload(payload, compressed, limit)
        if len(decoded.data) > len(old) and not self.spend(len(decoded.data) - len(old), zone):
            return None  # inflated beyond what the image budget allows
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
