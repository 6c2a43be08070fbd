"""Kernel log lines as they really arrive, reduced to the message text.

Kernel text reaches us wrapped in several layers: a pstore dump header
(``Oops#1 Part1``, and ``Oops: Total 2 times`` added by pstorefs), a syslog or
journal prefix (``Nov 19 12:34:38 host kernel:``), the printk level (``<4>``,
or ``<12>`` with a facility), a timestamp (``[ 4552.564791]``) and, with
CONFIG_PRINTK_CALLER, a caller id (``[T123]`` / ``[C1]``).  Everything that
analyses crashes works on the bare message, so the layers are peeled here once
and kept as metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .limits import MAX_LINE

# pstore_dump(): "%s#%d Part%u" with kmsg_dump_reason_str(); pstorefs: "%s: Total %d times".
PSTORE_PART = re.compile(r"^(Panic|Oops|Emergency|Shutdown|Unknown)#(\d{1,10}) Part(\d{1,10})\s*$")
PSTORE_TOTAL = re.compile(r"^(Panic|Oops|Emergency|Shutdown|Unknown): Total (\d{1,10}) times\s*$")

# "Mon DD HH:MM:SS host kernel: " (rsyslog, journalctl -o short) and the ISO
# variant of journalctl -o short-iso / rsyslog's high-precision format.
_SYSLOG = re.compile(
    r"^(?:[A-Z][a-z]{2} [ 0-9]?\d \d\d:\d\d:\d\d"
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
    r" (?P<host>\S+) (?P<program>[^\s:\[]+)(?:\[\d+\])?: ?"
)
_LEVEL = re.compile(r"^<(\d{1,3})>")
_TIME = re.compile(r"^\[\s*(\d+\.\d+)\]")
# A console can glue other output in front of a kernel line ("host login: [  709.68] INFO: ...").
GLUED_TIME = re.compile(r"\[\s*\d+\.\d{6}\](?:\[\s*[TC]\d+\])? ")
_CALLER = re.compile(r"^\[\s*([TC]\d+)\]")


@dataclass(frozen=True)
class LogLine:
    """One line of kernel log: the bare message and what was peeled off it."""

    number: int  # 0-based index in the input text
    text: str
    level: int | None = None  # printk level 0..7 (facility removed)
    timestamp: float | None = None
    caller: str | None = None
    host: str | None = None
    program: str | None = None  # the syslog program; anything but "kernel" is not kernel text
    raw: str = ""

    @property
    def is_kernel(self) -> bool:
        return self.program in (None, "kernel")


@dataclass(frozen=True)
class PstoreHeader:
    """The dump header pstore put on top of a dmesg record."""

    reason: str
    count: int | None = None  # the per-boot dump counter of "Oops#N"
    part: int | None = None
    total: int | None = None  # pstorefs' "Total N times" (the on-disk counter)


# The shape of nearly every line of a pstore dmesg record: "<4>[    1.234567] message".
_DMESG_FAST = re.compile(r"<(\d{1,3})>\[\s*(\d+\.\d+)\] ?(?!\s*\[\s*[TC]\d+\])")


def peel(raw: str, number: int = 0) -> LogLine:
    """Strip the syslog prefix, level, timestamp and caller id from one line."""
    text = raw.rstrip("\r\n")
    m = _DMESG_FAST.match(text)
    if m:  # the common case in one regex; the loop below handles every other layering
        return LogLine(number, text[m.end():], int(m.group(1)) & 7, float(m.group(2)), None, None, None, raw)
    host = program = level = timestamp = caller = None
    m = _SYSLOG.match(text)
    if m:
        host, program = m.group("host"), m.group("program")
        text = text[m.end():]
    # The layers can repeat or come in either order (e.g. "<4>[ 1.0] " and
    # syzkaller's "[  1.0][ T123] "), so peel until nothing changes.
    while True:
        m = _LEVEL.match(text)
        if m and level is None:
            level = int(m.group(1)) & 7
            text = text[m.end():]
            continue
        m = _TIME.match(text.lstrip(" ")) if timestamp is None else None
        if m:
            text = text.lstrip(" ")[m.end():]
            timestamp = float(m.group(1))
            if text.startswith(" ") and not _CALLER.match(text.lstrip(" ")):
                text = text[1:]  # the one separator printk adds, not the message's indent
            continue
        m = _CALLER.match(text.lstrip(" ")) if caller is None else None
        if m:
            text = text.lstrip(" ")[m.end():]
            caller = m.group(1)
            if text.startswith(" "):
                text = text[1:]
            continue
        break
    return LogLine(number, text, level, timestamp, caller, host, program, raw)


def split_lines(text: str, *, host: str | None = None,
                first_number: int = 0) -> tuple[list[LogLine], list[PstoreHeader]]:
    """All message lines of ``text`` plus any pstore headers found in it.

    With ``host`` set, syslog lines from another host are dropped, as ABRT does
    for a shared /var/log/messages.  Lines without a syslog prefix are always kept.
    Each line is cut to :data:`~.limits.MAX_LINE` characters before anything
    matches it (see :mod:`.limits`); ``first_number`` is the number of the first line.
    """
    lines: list[LogLine] = []
    headers: list[PstoreHeader] = []
    for number, raw in enumerate(text.splitlines(), first_number):
        raw = raw[:MAX_LINE]
        stripped = raw.strip()
        m = PSTORE_TOTAL.match(stripped)
        if m:
            headers.append(PstoreHeader(m.group(1), total=int(m.group(2))))
            continue
        m = PSTORE_PART.match(stripped)
        if m:
            headers.append(PstoreHeader(m.group(1), count=int(m.group(2)), part=int(m.group(3))))
            continue
        line = peel(raw, number)
        if host is not None and line.host is not None and line.host != host:
            continue
        lines.append(line)
    return lines, headers
