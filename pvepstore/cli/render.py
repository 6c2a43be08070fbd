"""Human-readable rendering of parse results (terminal-safe: guest text is untrusted)."""

from __future__ import annotations

import re

from ..pstore import ParseResult, Record
from ..text import terminal_safe

_PART_HEADER = re.compile(r"^(?:\w+#\d+ Part\d+|\w+: Total -?\d+ times)$")
_LOG_PREFIX = re.compile(r"^(?:<\d+>)?(?:\[\s*\d+\.\d+\]\s?)?(?:\[\s*[TC]\d+\]\s?)?")
# Lines that start a kernel crash report (abrt's and syzkaller's trigger lists, abridged).
_TRIGGERS = re.compile(
    r"^(?:BUG: |Oops: |general protection fault|kernel BUG at|Kernel panic - not syncing|"
    r"WARNING: |Unable to handle kernel|unable to handle page fault|invalid opcode|"
    r"INFO: task .* blocked|watchdog: BUG: soft lockup|Out of memory|"
    r"rcu: INFO: rcu_\w+ detected stall|Machine check|double fault|\S*KASAN|UBSAN)"
)


def headline(record: Record, width: int = 100) -> str:
    """The first meaningful line: a crash trigger if there is one, else the first log line."""
    first = ""
    for raw in record.text.splitlines():
        line = _LOG_PREFIX.sub("", raw).strip()
        if not line or _PART_HEADER.match(line):
            continue
        if _TRIGGERS.match(line):
            return terminal_safe(line)[:width]
        first = first or line
    return terminal_safe(first)[:width]


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
