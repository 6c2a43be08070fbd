"""Human-readable rendering of parse results (terminal-safe: guest text is untrusted)."""

from __future__ import annotations

import json
from typing import Iterator

from ..analysis.crash import extract_crashes
from ..pstore.zoneformat import BACKEND as BLK_FORMAT  # the record format (the kernel's pstore backend)
from ..analysis.evidence import primary_crash
from ..analysis.logline import PSTORE_PART, PSTORE_TOTAL, peel
from ..pstore import ParseResult, Record
from ..pstore.model import Kind
from ..text import terminal_safe


# Text handed to crash analysis for the headlines of one image, at most: a fully
# written 128 MiB device must not be analysed whole just to print a table.
# Records past the budget get their first log line as headline instead.
HEADLINE_ANALYSIS_BYTES = 4 << 20
HEADLINE_SCAN_BYTES = 64 << 10  # the first log line is looked for in the first 64 KiB


def headline(record: Record, width: int = 100, *, analyse: bool = True) -> str:
    """The first meaningful line: the crash title if the record holds a crash, else its first log line."""
    if analyse and record.kind is Kind.DMESG and (record.recovered is not None
                                                   or not record.name.endswith(".enc.z")):
        crash = primary_crash(extract_crashes(record.best_text))
        if crash is not None:
            return terminal_safe(crash.title or crash.first_line)[:width]
    data = record.recovered if record.recovered is not None else record.data
    head = data[:HEADLINE_SCAN_BYTES].decode("utf-8", errors="replace")
    for number, raw in enumerate(head.splitlines()[:200]):
        line = peel(raw, number).text.strip()
        if line and not PSTORE_PART.match(line) and not PSTORE_TOTAL.match(line):
            return terminal_safe(line)[:width]
    return ""


def describe_layout(result: ParseResult) -> str:
    """One line for a layout: pstore_blk and ramoops have a dmesg grid and front zones, efi a store."""
    doc = result.layout.to_json()
    if doc.get("format") == "efi":  # a variable store: no zone grid, its fill level is what matters
        return (f"layout: OVMF variable store, {doc['used_bytes']}/{doc['store_size']} bytes used "
                f"({doc['used_percent']}%), {doc['live_bytes']} live, {doc['pstore_bytes']} bytes in "
                f"{doc['pstore_variables']} efi_pstore variables")
    dmesg = doc["dmesg"]
    parts = [f"{dmesg['count']} dmesg zones of {_size(dmesg['zone_size'])} at {dmesg['base']:#x}"]
    for zone in doc["zones"][:16]:
        parts.append(f"{zone['kind']} {_size(zone['size'])} at {zone['offset']:#x}")
    if len(doc["zones"]) > 16:
        parts.append(f"{len(doc['zones']) - 16} more zones")
    disc = doc.get("discovery")
    how = (f"discovered from {'signatures' if doc['format'] == BLK_FORMAT else 'zone headers'}, "
           f"{disc['confidence']} confidence" if disc else "from the given parameters")
    cap = ""
    if doc["format"] == BLK_FORMAT and doc["total_size"] != doc["device_size"]:
        cap = f", kernel uses the first {doc['total_size'] >> 20} MiB"
    kind = "ramoops, " if doc["format"] == "ramoops" else ""
    return f"layout: {kind}{', '.join(parts)} ({how}{cap})"


# Printable ASCII, tab and newline: bytes that terminal_safe() never changes.
_PLAIN = bytes(range(0x20, 0x7f)) + b"\t\n"


def _safe_text(data: bytes) -> str:
    """terminal_safe() of a record's text; plain ASCII (most kernel logs) skips the regexes,
    found at C speed, so a fully written device is printed in seconds."""
    if not data.translate(None, _PLAIN):
        return data.decode("ascii")
    return terminal_safe(data.decode("utf-8", errors="replace"))


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} bytes"


def _image_size(result: ParseResult) -> int:
    layout = result.layout
    return getattr(layout, "device_size", None) or getattr(layout, "mem_size", 0)


def render_summary(result: ParseResult, *, with_texts: bool = True) -> Iterator[str]:
    """The human output, line by line: a caller writes each line before the next is built,
    so only one record's text is ever held as a string."""
    yield (f"image: {terminal_safe(result.source)}"
           + (f" at offset {result.offset}" if result.offset else "")
           + f" ({_image_size(result)} bytes)")
    yield describe_layout(result)
    if not result.records:
        yield "no records"
    else:
        yield f"{'NAME':<26} {'REASON':<12} {'TIME (UTC)':<20} {'SIZE':>7}  FIRST LINE"
        budget = HEADLINE_ANALYSIS_BYTES
        for rec in result.records:
            reason = rec.reason or rec.kind.value
            if rec.counter:
                reason = f"{reason} #{rec.counter}"
            when = rec.time.strftime("%Y-%m-%d %H:%M:%S") if rec.time else "-"
            name = rec.name + (" (erased)" if rec.erased else "")
            analyse = rec.size <= budget
            budget -= rec.size if analyse else 0
            yield f"{name:<26} {terminal_safe(reason):<12} {when:<20} {rec.size:>7}  {headline(rec, analyse=analyse)}"
    if result.findings:
        yield "findings:"
        for f in result.findings:
            where = ""
            if f.offset is not None:
                where = f" [{f.kind or 'zone'} {f.zone if f.zone is not None else ''} @ {f.offset:#x}]"
            yield f"  {f.severity.value}: {terminal_safe(f.message)}{where}"
    if with_texts:
        for rec in result.records:
            yield ""
            yield f"==> {rec.name}{' (erased)' if rec.erased else ''} <=="
            yield _safe_text(rec.data).rstrip("\n")


def write_json(doc: dict, write) -> None:
    """``json.dumps(doc, indent=2, ensure_ascii=True)`` plus a newline, written piece by piece."""
    pending: list[str] = []
    size = 0
    for chunk in json.JSONEncoder(indent=2, ensure_ascii=True).iterencode(doc):
        pending.append(chunk)
        size += len(chunk)
        if size >= 1 << 16:  # a few writes of 64 KiB, not one per JSON token
            write("".join(pending))
            pending, size = [], 0
    pending.append("\n")
    write("".join(pending))
