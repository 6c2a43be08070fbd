"""Discover a pstore_blk layout from the signatures on the device (spec §11.6).

The layout is not self-describing: it depends on module parameters.  What the
disk does tell: the kernel writes dmesg zones one after another starting at
zone 0 and never removes a signature (erase only zeroes ``datalen``), so the
written dmesg zones form a run on a fixed grid.  The gap between two of them
is ``kmsg_size``, and the first one is zone 0 (which fixes the record names).  The result says how sure it is.
"""

from __future__ import annotations

from math import gcd

from .layout import DEFAULT_KMSG_KIB, SZ_128M, ZONE_HEADER, BlkLayout, BlkParams, compute_layout
from .model import Finding, Kind, Severity
from .source import ByteSource
from .zoneformat import KINDS_BY_SIG, KMSG_HDR, KMSG_MAGIC, ZONE_HDR

STEP = 4096  # every zone is 4 KiB aligned unless ftrace is on
DENSE = 1 << 20  # probe every 4 KiB of the first MiB ...
FOLLOW = 1 << 20  # ... and up to a MiB past a lone dmesg zone to find the next one


PROBE = ZONE_HEADER + KMSG_HDR.size


def _probe(src: ByteSource, off: int) -> Kind | None:
    if off + PROBE > src.size or src.is_hole(off, ZONE_HEADER):
        return None
    return _classify(src.read_at(off, PROBE))


def _classify(raw: bytes) -> Kind | None:
    """Kind of a plausible zone header (dmesg also needs the kmsg magic)."""
    if len(raw) < ZONE_HEADER:
        return None
    sig, datalen, start = ZONE_HDR.unpack_from(raw)
    kind = KINDS_BY_SIG.get(sig)
    if kind is None or datalen < 0:
        return None
    if kind is Kind.DMESG:
        if len(raw) < ZONE_HEADER + KMSG_HDR.size:
            return None
        if KMSG_HDR.unpack_from(raw, ZONE_HEADER)[0] != KMSG_MAGIC or 0 < datalen < KMSG_HDR.size:
            return None
    elif start < 0:
        return None
    return kind


def discover_layout(src: ByteSource) -> tuple[BlkLayout, list[Finding]]:
    findings: list[Finding] = []
    scan_end = min(src.size, SZ_128M)
    hits: dict[int, Kind] = {}
    dense = src.read_headers(range(0, max(0, min(scan_end, DENSE) - PROBE + 1), STEP), PROBE)
    for off, raw in dense.items():
        kind = _classify(raw)
        if kind:
            hits[off] = kind
    dmesg = sorted(o for o, k in hits.items() if k is Kind.DMESG)
    front = sorted((o, k) for o, k in hits.items() if k is not Kind.DMESG)

    if len(dmesg) == 1:  # a lone record: look a little further for its neighbour
        for off in range(max(dmesg[0] + STEP, min(scan_end, DENSE)), min(scan_end, dmesg[0] + FOLLOW), STEP):
            if _probe(src, off) is Kind.DMESG:
                dmesg.append(off)
                break

    if any(k is Kind.FTRACE for _, k in front):
        findings.append(Finding(Severity.WARNING, "ftrace zones found: their per-CPU size "
                                "depends on nr_cpus, pass --ftrace-size and --nr-cpus for an exact layout"))

    confidence = "high"
    kmsg = DEFAULT_KMSG_KIB * 1024
    if len(dmesg) >= 2:
        stride = 0
        for a, b in zip(dmesg, dmesg[1:]):
            stride = gcd(stride, b - a)
        if stride % 4096 == 0:
            kmsg = stride
        else:
            confidence = "low"
            findings.append(Finding(Severity.WARNING, f"dmesg zones are {stride} bytes apart, "
                                    "not a multiple of 4 KiB; assuming 64 KiB zones"))
    elif len(dmesg) == 1:
        confidence = "medium"
        findings.append(Finding(Severity.INFO, "only one dmesg zone was ever written: its size "
                                f"cannot be measured, assuming the default kmsg_size={DEFAULT_KMSG_KIB}"))

    # The kernel fills dmesg zone 0 first and an erase keeps the signature, so the
    # first written dmesg zone is zone 0 (unless the disk was partly wiped).
    if dmesg:
        base = dmesg[0]
    elif front:
        base = front[-1][0] + STEP
    else:
        base = 0
    if dmesg and base and not front:
        findings.append(Finding(Severity.INFO, f"dmesg zones start at {base:#x}: "
                                f"{base // 1024} KiB of pmsg/console space is reserved but unused"))

    pmsg_kib, console_kib = _split_front(front, base)
    cap = True
    if src.size > SZ_128M and dmesg:
        # Uncapped (5.10) kernels keep writing past 128 MiB: look just beyond it.
        zones_in_cap = (SZ_128M - base) // kmsg
        beyond = base + zones_in_cap * kmsg
        if _probe(src, beyond - kmsg) is Kind.DMESG and _probe(src, beyond) is Kind.DMESG:
            cap = False
            findings.append(Finding(Severity.INFO, "zones continue past 128 MiB: written by a "
                                    "kernel without the 128 MiB cap (5.10?)"))
    params = BlkParams(kmsg_size=kmsg // 1024, pmsg_size=pmsg_kib, console_size=console_kib,
                       cap_128m=cap)
    layout, complaints = compute_layout(src.size, params)
    if not hits:
        confidence = "none"
        findings.append(Finding(Severity.INFO, "no pstore signature found: the device was never "
                                "written by pstore_blk (or is not a pstore disk)"))
    elif layout.dmesg_base != base:
        confidence = "low"
        findings.append(Finding(Severity.WARNING, "pmsg/console zones found do not fit the dmesg zones; "
                                "pass the sizes for an exact layout"))
    for off in dmesg:
        if (off - layout.dmesg_base) % kmsg:
            confidence = "low"
            findings.append(Finding(Severity.INFO, "dmesg signature off the zone grid (stale zone "
                                    "from other sizes?)", kind="dmesg", offset=off))
    for c in complaints:
        findings.append(Finding(Severity.WARNING, f"the kernel would refuse this device ({c})"))
    if confidence != "high":
        findings.append(Finding(Severity.INFO, f"layout discovered with {confidence} confidence; "
                                "pass --kmsg-size/--pmsg-size/--console-size for certainty"))
    info = {"method": "signature-scan", "confidence": confidence,
            "signatures": [{"offset": o, "kind": k.value} for o, k in sorted(hits.items())][:64]}
    return layout.with_discovery(info), findings


def _split_front(front: list[tuple[int, Kind]], base: int) -> tuple[int, int]:
    """pmsg and console sizes (KiB) that put the dmesg zones at ``base``."""
    kinds = {k: o for o, k in front}
    if Kind.CONSOLE in kinds:
        console_at = kinds[Kind.CONSOLE]
        return console_at // 1024, (base - console_at) // 1024
    return base // 1024, 0
