"""Human-readable rendering of parse results (terminal-safe: guest text is untrusted)."""

from __future__ import annotations

from ..analysis.crash import extract_crashes
from ..analysis.evidence import primary_crash
from ..analysis.logline import PSTORE_PART, PSTORE_TOTAL, peel
from ..pstore import ParseResult, Record
from ..pstore.model import Kind
from ..text import terminal_safe


def headline(record: Record, width: int = 100) -> str:
    """The first meaningful line: the crash title if the record holds a crash, else its first log line."""
    text = record.best_text
    if record.kind is Kind.DMESG and (record.recovered is not None or not record.name.endswith(".enc.z")):
        crash = primary_crash(extract_crashes(text))
        if crash is not None:
            return terminal_safe(crash.title or crash.first_line)[:width]
    for number, raw in enumerate(text.splitlines()[:200]):
        line = peel(raw, number).text.strip()
        if line and not PSTORE_PART.match(line) and not PSTORE_TOTAL.match(line):
            return terminal_safe(line)[:width]
    return ""


def describe_layout(result: ParseResult) -> str:
    layout = result.layout
    doc = layout.to_json()
    dmesg = doc["dmesg"]
    parts = [f"{dmesg['count']} dmesg zones of {dmesg['zone_size'] // 1024} KiB at {dmesg['base']:#x}"]
    for zone in doc["zones"]:
        parts.append(f"{zone['kind']} {zone['size'] // 1024} KiB at {zone['offset']:#x}")
    disc = doc.get("discovery")
    how = (f"discovered from signatures, {disc['confidence']} confidence" if disc
           else "from the given parameters")
    cap = "" if doc["total_size"] == doc["device_size"] else f", kernel uses the first {doc['total_size'] >> 20} MiB"
    return f"layout: {', '.join(parts)} ({how}{cap})"


def render_summary(result: ParseResult, *, with_texts: bool = True) -> list[str]:
    lines = [f"image: {terminal_safe(result.source)}"
             + (f" at offset {result.offset}" if result.offset else "")
             + f" ({result.layout.device_size} bytes)",
             describe_layout(result)]
    if not result.records:
        lines.append("no records")
    else:
        lines.append(f"{'NAME':<26} {'REASON':<12} {'TIME (UTC)':<20} {'SIZE':>7}  FIRST LINE")
        for rec in result.records:
            reason = rec.reason or rec.kind.value
            if rec.counter:
                reason = f"{reason} #{rec.counter}"
            when = rec.time.strftime("%Y-%m-%d %H:%M:%S") if rec.time else "-"
            name = rec.name + (" (erased)" if rec.erased else "")
            lines.append(f"{name:<26} {reason:<12} {when:<20} {rec.size:>7}  {headline(rec)}")
    if result.findings:
        lines.append("findings:")
        for f in result.findings:
            where = ""
            if f.offset is not None:
                where = f" [{f.kind or 'zone'} {f.zone if f.zone is not None else ''} @ {f.offset:#x}]"
            lines.append(f"  {f.severity.value}: {terminal_safe(f.message)}{where}")
    if with_texts:
        for rec in result.records:
            lines.append("")
            lines.append(f"==> {rec.name}{' (erased)' if rec.erased else ''} <==")
            lines.append(terminal_safe(rec.text).rstrip("\n"))
    return lines
