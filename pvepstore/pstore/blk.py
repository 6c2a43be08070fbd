"""Reader for the pstore/zone on-disk format written by pstore_blk.

It reproduces what the guest kernel shows in /sys/fs/pstore when it reads the
same device (fs/pstore/zone.c ``psz_recovery``/``psz_pstore_read``, inode.c,
platform.c ``decompress_record``), byte for byte.  Every deviation from a valid
zone becomes a :class:`Finding`, never an exception.  Only zone headers and the
valid data are read: work is proportional to what is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from .discover import discover_layout
from .dump import decode_payload
from .ftrace import merge_by_timestamp, render, split_records
from .layout import KMSG_HEADER, ZONE_HEADER, BlkLayout, BlkParams, Zone, compute_layout
from .model import (MAX_IMAGE_BYTES, MAX_RECORD_BYTES, Finding, ImageBudget, Kind, ParseResult, Record, Severity,
                    reason_name)
from .source import ByteSource
from .inflate import inflate_raw
from .zoneformat import BACKEND, KINDS_BY_SIG, KMSG_HDR, KMSG_MAGIC, SIGNATURES, ZONE_HDR

STOP = object()  # the kernel's listing ends at this zone

SIGNATURE_BYTES = frozenset(sig.to_bytes(4, "little") for sig in SIGNATURES.values())

# Zones visited at most (a 128 MiB device with 4 KiB zones has 32768).
MAX_ZONES = 1 << 20
HEADER_BATCH = 4096
# Raw ftrace bytes merged at most (each 24-byte entry becomes a tuple and a text line).
MAX_FTRACE_BYTES = 8 << 20


@dataclass(frozen=True)
class ReadOptions:
    include_erased: bool = False
    max_record_bytes: int = MAX_RECORD_BYTES
    max_zones: int = MAX_ZONES
    max_image_bytes: int = MAX_IMAGE_BYTES
    # The writing kernel's release (``uname -r``), when known from outside the image: efi_pstore's
    # file names depend on it and a store of Shutdown dumps alone does not say it.
    kernel_release: str | None = None


def read_blk(source: ByteSource, params: BlkParams | None = None, *,
             options: ReadOptions = ReadOptions(), image_offset: int = 0) -> ParseResult:
    """Parse a pstore_blk device; ``params=None`` discovers the layout from signatures."""
    findings: list[Finding] = []
    if params is None:
        layout, notes = discover_layout(source)
        findings.extend(notes)
    else:
        layout, complaints = compute_layout(source.size, params)
        for c in complaints:
            findings.append(Finding(Severity.ERROR,
                                    f"the kernel would refuse this device ({c}); parsed anyway"))
    reader = _Reader(source, layout, options, findings)
    records = reader.read_all()
    findings.extend(reader.budget.findings())
    return ParseResult(source=source.name, offset=image_offset, layout=layout,
                       records=records, findings=findings, bytes_read=source.bytes_read)


class _Reader:
    def __init__(self, source: ByteSource, layout: BlkLayout, options: ReadOptions,
                 findings: list[Finding]) -> None:
        self.src = source
        self.layout = layout
        self.opt = options
        self.findings = findings
        self.budget = ImageBudget(options.max_image_bytes)

    def spend(self, size: int, zone: Zone) -> bool:
        """Take ``size`` bytes from the image's budget; False (and a finding, once) when spent."""
        return self.budget.take(size, lambda message: self.note(Severity.WARNING, message, zone))

    def note(self, severity: Severity, message: str, zone: Zone | None = None) -> None:
        self.findings.append(Finding(severity, message,
                                     kind=zone.kind.value if zone else None,
                                     zone=zone.index if zone else None,
                                     offset=zone.offset if zone else None))

    def read_all(self) -> list[Record]:
        records: list[Record] = []
        count = self.layout.dmesg_count
        if count > self.opt.max_zones:
            self.note(Severity.WARNING,
                      f"{count} dmesg zones; only the first {self.opt.max_zones} were read")
            count = self.opt.max_zones
        # Read every zone header in one batch (the kernel looks at all of them too),
        # then only the zones that carry a pstore signature.
        base, size = self.layout.dmesg_base, self.layout.dmesg_zone_size
        if not size:
            count = 0  # kmsg_size=0: no dmesg zones at all (a pmsg/console-only layout)
        # Headers are fetched in batches so that a device of a million tiny zones
        # never holds a million headers at once.
        for first in range(0, count, HEADER_BATCH):
            offsets = range(base + first * size, base + min(count, first + HEADER_BATCH) * size, size)
            headers = self.src.read_headers(offsets, ZONE_HEADER + KMSG_HEADER)
            for off in sorted(headers):  # holes are left out: only written zones cost anything
                raw = headers[off]
                if raw[:4] not in SIGNATURE_BYTES:
                    continue  # never written (or foreign data): no signature, as in psz_kmsg_recover_meta
                rec = self.read_dmesg(self.layout.dmesg_zone((off - base) // size), raw)
                if rec is STOP:
                    return records
                if rec is not None:
                    records.append(rec)
        # The kernel lists dmesg, then ftrace (combined), pmsg, console.
        ftrace = self.read_ftrace(self.layout.zones(Kind.FTRACE))
        if ftrace is not None:
            records.append(ftrace)
        for kind in (Kind.PMSG, Kind.CONSOLE):
            for zone in self.layout.zones(kind):
                rec = self.read_ring_record(zone)
                if rec is not None:
                    records.append(rec)
        return records

    # -- dmesg ------------------------------------------------------------------

    def read_dmesg(self, zone: Zone, raw: bytes) -> Record | object | None:
        if len(raw) < ZONE_HEADER + KMSG_HEADER:
            self.note(Severity.ERROR, "zone header is past the end of the device "
                      "(the kernel's recovery would fail and show no records)", zone)
            return None
        sig, datalen, _start = ZONE_HDR.unpack_from(raw)
        if sig != SIGNATURES[Kind.DMESG]:
            other = KINDS_BY_SIG.get(sig)
            if other is not None:
                self.note(Severity.INFO, f"stale {other.value} signature where the layout has "
                          "a dmesg zone (written with other pstore_blk sizes?)", zone)
            return None
        if datalen < 0 or datalen > zone.buffer_size:
            self.note(Severity.WARNING, f"overtop zone: datalen {datalen} outside "
                      f"0..{zone.buffer_size}; skipped as the kernel does", zone)
            return None
        magic, sec, nsec, compressed, counter, reason = KMSG_HDR.unpack_from(raw, ZONE_HEADER)
        if magic != KMSG_MAGIC:
            self.note(Severity.WARNING, f"invalid zone: kmsg magic {magic:#010x}; "
                      "skipped as the kernel does", zone)
            return None
        meta = dict(reason=reason_name(reason), reason_code=reason,
                    counter=_s32(counter), time_sec=sec, time_nsec=nsec,
                    compressed=bool(compressed))
        if datalen == 0:
            return self.recover_erased_dmesg(zone, meta) if self.opt.include_erased else None
        if datalen < KMSG_HEADER:
            self.note(Severity.WARNING, f"datalen {datalen} is smaller than the kmsg header; "
                      "skipped (the kernel would fail to read this record)", zone)
            return None
        size = datalen - KMSG_HEADER
        if size == 0 and compressed:
            # psz_kmsg_read() returns 0 bytes, and pstore_get_backend_records() takes a
            # 0-byte record for "no more records": the kernel lists nothing after it.
            self.note(Severity.ERROR, "empty compressed record: the guest kernel stops listing "
                      "records here (later zones are not shown in /sys/fs/pstore)", zone)
            return STOP
        if size > self.opt.max_record_bytes:
            self.note(Severity.WARNING, f"record of {size} bytes exceeds the "
                      f"{self.opt.max_record_bytes}-byte limit; skipped", zone)
            return None
        if not self.spend(size, zone):
            return None
        payload = self.src.read_at(zone.offset + ZONE_HEADER + KMSG_HEADER, size)
        name = f"dmesg-{BACKEND}-{zone.index}"
        if compressed:
            limit = min(3 * (zone.buffer_size - KMSG_HEADER), self.opt.max_record_bytes)
            decoded = decode_payload(payload, True, limit)
            if len(decoded.data) > size and not self.spend(len(decoded.data) - size, zone):
                return None
            if decoded.error:
                # decompress_record() failed: the kernel keeps the raw bytes as .enc.z
                self.note(Severity.WARNING, f"compressed record cannot be decompressed: "
                          f"{decoded.error}; kept raw as {name}.enc.z, as the kernel does", zone)
            return self.dmesg_record(zone, name + decoded.suffix, decoded.data, meta)
        # psz_kmsg_read() prepends this line for uncompressed records only.
        header = f"{meta['reason']}: Total {meta['counter']} times\n".encode()
        return self.dmesg_record(zone, name, header + payload, meta)

    def recover_erased_dmesg(self, zone: Zone, meta: dict) -> Record | None:
        """Forensic: an unlinked record keeps its kmsg header and payload on disk."""
        room = min(zone.buffer_size - KMSG_HEADER, self.opt.max_record_bytes)
        if not self.spend(room, zone):
            return None
        payload = self.src.read_at(zone.offset + ZONE_HEADER + KMSG_HEADER, room)
        name = f"dmesg-{BACKEND}-{zone.index}"
        if meta["compressed"]:
            result = inflate_raw(payload, min(3 * room, self.opt.max_record_bytes))
            if result.data is None:
                self.note(Severity.INFO, f"erased record not recoverable: {result.error}", zone)
                return None
            data = result.data
        else:
            data = payload.rstrip(b"\0")  # dmesg zones are zero-filled past the payload
        if not data:
            return None
        self.note(Severity.INFO, "erased record recovered (not shown by the kernel)", zone)
        return self.dmesg_record(zone, name, data, meta, erased=True)

    def dmesg_record(self, zone: Zone, name: str, data: bytes, meta: dict,
                     erased: bool = False) -> Record:
        return Record(name=name, kind=Kind.DMESG, backend=BACKEND, zone=zone.index,
                      offset=zone.offset, data=data, erased=erased, **meta)

    # -- console / pmsg / ftrace rings ------------------------------------------

    def read_ring(self, zone: Zone) -> tuple[bytes, bool] | None:
        """Return (chronological bytes, erased) of a ring zone as psz_recover_zone() reads it."""
        if self.src.is_hole(zone.offset, ZONE_HEADER):
            return None
        raw = self.src.read_at(zone.offset, ZONE_HEADER)
        if len(raw) < ZONE_HEADER:
            self.note(Severity.ERROR, "zone header is past the end of the device", zone)
            return None
        sig, datalen, start = ZONE_HDR.unpack_from(raw)
        if sig != SIGNATURES[zone.kind]:
            return None
        bufsize = zone.buffer_size
        if not (0 <= datalen <= bufsize) or not (0 <= start <= bufsize):
            self.note(Severity.WARNING, f"overtop zone: datalen {datalen}, start {start} outside "
                      f"0..{bufsize}; skipped as the kernel does", zone)
            return None
        data_off = zone.offset + ZONE_HEADER
        if datalen == 0:
            if not self.opt.include_erased:
                return None
            # Forensic: an erased ring keeps its old bytes; the unused tail is 0xFF.
            if not self.spend(min(bufsize, self.opt.max_record_bytes), zone):
                return None
            old = self.src.read_at(data_off, min(bufsize, self.opt.max_record_bytes))
            old = old.rstrip(b"\xff").rstrip(b"\0")
            if not old:
                return None
            self.note(Severity.INFO, "erased ring contents recovered (order not guaranteed; "
                      "not shown by the kernel)", zone)
            return old, True
        if start > datalen:
            self.note(Severity.ERROR, f"corrupt ring header (start {start} > datalen {datalen}): "
                      "the guest kernel's recovery fails on this zone, so it shows no records "
                      "and writes nothing until the zone is erased; salvaged data[0:datalen]", zone)
            if not self.spend(datalen, zone):
                return None
            return self.src.read_at(data_off, datalen), False
        if datalen == start and datalen < bufsize:
            tail = self.src.read_at(data_off + datalen, min(64, bufsize - datalen))
            if tail.strip(b"\xff\0"):
                self.note(Severity.INFO, "ring header may be torn (datalen == start and old "
                          "data follows): older text may exist past datalen", zone)
        if not self.spend(datalen, zone):
            return None
        newer = self.src.read_at(data_off + start, datalen - start)
        older = self.src.read_at(data_off, start)
        return newer + older, False

    def read_ring_record(self, zone: Zone) -> Record | None:
        got = self.read_ring(zone)
        if got is None:
            return None
        data, erased = got
        return Record(name=f"{zone.kind.value}-{BACKEND}-{zone.index}", kind=zone.kind,
                      backend=BACKEND, zone=zone.index, offset=zone.offset, data=data,
                      erased=erased)

    def read_ftrace(self, zones: list[Zone]) -> Record | None:
        """Merge per-CPU ftrace rings as pstore_ftrace_combine_log() does.

        The kernel renders the file with symbol names (``%ps``) from its own
        kallsyms; the host has none, so addresses are printed in hex instead.
        """
        if not zones:
            return None
        merged: list[tuple[int, int, int]] = []
        erased_any = False
        taken = 0
        for zone in zones:
            got = self.read_ring(zone)
            if got is None:
                continue
            data, erased = got
            if taken + len(data) > MAX_FTRACE_BYTES:
                self.note(Severity.WARNING, f"ftrace zones hold more than {MAX_FTRACE_BYTES >> 20} MiB; "
                          "this and later CPUs' zones were not merged", zone)
                break
            taken += len(data)
            erased_any |= erased
            merged = merge_by_timestamp(merged, split_records(data))
        if not merged:
            return None
        self.note(Severity.INFO, "ftrace addresses shown in hex: the kernel resolves them "
                  "with its own symbol table", zones[0])
        return Record(name=f"ftrace-{BACKEND}-0", kind=Kind.FTRACE, backend=BACKEND, zone=0,
                      offset=zones[0].offset, data=render(merged), erased=erased_any)


def _s32(value: int) -> int:
    """The kernel prints the u32 counter through an ``int`` with %d."""
    return value - (1 << 32) if value >= 1 << 31 else value
