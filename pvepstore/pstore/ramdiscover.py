"""Discover ramoops zone sizes from the zone headers (no module parameters given).

Every zone gets a header when ramoops first probes it (persistent_ram_post_init
writes the signature even into an empty zone), so the distance between two
headers is a zone size.  Kinds follow from what each header and zone shows:
ftrace zones store ``sig ^ LINUX_VERSION_CODE``, a dmesg record starts with
``====``, console and pmsg zones hold plain text; and the kernel's memory order
is fixed (ram.c ``ramoops_probe``: dmesg zones, console, ftrace, pmsg), which
decides zones whose content alone does not.
"""

from __future__ import annotations

from .model import Finding, Severity
from .ramlayout import PERSISTENT_RAM_SIG, PRZ_HEADER, RamoopsParams
from .source import ByteSource

SCAN = 64 << 20  # headers are looked for in the first 64 MiB (pvepstore's largest ivshmem file)
GRID = 512  # zone sizes are powers of two of at least 512 bytes (ftrace shares excepted)
BATCH = 8192  # header offsets read at a time (bounded memory for any image)


def _is_zone_sig(sig: int) -> bool:
    return sig == PERSISTENT_RAM_SIG or 0x020600 <= sig ^ PERSISTENT_RAM_SIG <= 0x0FFFFF


def _zone_starts(source: ByteSource) -> list[int]:
    scan = min(source.size, SCAN)
    starts: list[int] = []
    for first in range(0, scan, GRID * BATCH):
        offsets = range(first, min(scan, first + GRID * BATCH), GRID)
        for off, raw in sorted(source.read_headers(offsets, 4).items()):
            if len(raw) == 4 and _is_zone_sig(int.from_bytes(raw, "little")):
                starts.append(off)
    return starts


def _content(source: ByteSource, off: int) -> str:
    """``text`` (console or pmsg), ``dmesg`` (a ``====`` record) or ``empty``."""
    raw = source.read_at(off, PRZ_HEADER.size + 4)
    if len(raw) < PRZ_HEADER.size + 4:
        return "empty"
    _, start, size = PRZ_HEADER.unpack_from(raw)
    if size <= 0:
        return "empty"
    return "dmesg" if raw[PRZ_HEADER.size:] == b"====" else "text"


def _is_ftrace_at(source: ByteSource, off: int) -> bool:
    raw = source.read_at(off, 4)
    return len(raw) == 4 and int.from_bytes(raw, "little") != PERSISTENT_RAM_SIG


def discover_ramoops(source: ByteSource) -> tuple[RamoopsParams, list[Finding]]:
    """Zone sizes from the zone headers: every zone gets one when ramoops first probes it."""
    starts = _zone_starts(source)
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
    # console/pmsg zones as large as the dmesg zones: only contents and order tell them apart.
    tail = _text_tail(source, starts, count, to_the_end=count == len(starts))
    count -= tail
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


def _text_tail(source: ByteSource, starts: list[int], count: int, *, to_the_end: bool) -> int:
    """How many of the last equal-size zones are console/pmsg rather than dmesg zones.

    The kernel's order puts console right after the dmesg zones and pmsg last
    of all.  A zone holding plain text is not a dmesg zone (the kernel writes
    dmesg records only with a ``====`` header).  When the equal-size zones run
    to the end of memory, the last one is pmsg if any zone before it is console:
    so text in the second-to-last zone makes it console and the last one pmsg,
    even while that pmsg zone is empty (the usual state after a poweroff).
    """
    if count < 2:
        return 0
    last = _content(source, starts[count - 1])
    if not to_the_end:
        return 1 if last == "text" else 0  # other zones follow: only the console can be in the run
    if count >= 3 and last != "dmesg" and _content(source, starts[count - 2]) == "text":
        return 2  # console with text, then pmsg (with text or empty)
    return 1 if last == "text" else 0
