"""Discover a pstore_blk layout from the signatures on the device (spec §11.6).

The layout is not self-describing: it depends on module parameters.  What the
disk does tell: the kernel writes dmesg zones one after another starting at
zone 0 and never removes a signature (erase only zeroes ``datalen``), so the
written dmesg zones form a run on a fixed grid.  The gap between two of them
is ``kmsg_size``, and the first one is zone 0 (which fixes the record names).
pmsg/console/ftrace zones sit in front; ftrace zones have arbitrary sizes
(``ftrace_size / nr_cpus``), so the front is searched byte by byte.  The result
says how sure it is.
"""

from __future__ import annotations

from math import gcd

from ..errors import UsageError

from .layout import (DEFAULT_KMSG_KIB, SZ_128M, ZONE_HEADER, BlkLayout, BlkParams, compute_layout,
                     kib_param_to_bytes)
from .model import Finding, Kind, Severity
from .source import ByteSource
from .zoneformat import KINDS_BY_SIG, KMSG_HDR, KMSG_MAGIC, ZONE_HDR

STEP = 4096  # pmsg, console and (without ftrace) dmesg zones are 4 KiB aligned
DENSE = 1 << 20  # the first MiB is searched byte by byte (0.2 % of a 512 MiB disk)
FOLLOW = 1 << 20  # after a lone dmesg zone, look this far for its neighbour
PROBE = ZONE_HEADER + KMSG_HDR.size
SIG_BYTES = {sig.to_bytes(4, "little"): kind for sig, kind in KINDS_BY_SIG.items()}


def _classify(raw: bytes) -> Kind | None:
    """Kind of a plausible zone header (dmesg also needs the kmsg magic)."""
    if len(raw) < ZONE_HEADER:
        return None
    sig, datalen, start = ZONE_HDR.unpack_from(raw)
    kind = KINDS_BY_SIG.get(sig)
    if kind is None or datalen < 0:
        return None
    if kind is Kind.DMESG:
        if len(raw) < PROBE:
            return None
        if KMSG_HDR.unpack_from(raw, ZONE_HEADER)[0] != KMSG_MAGIC or 0 < datalen < KMSG_HDR.size:
            return None
    elif start < 0:
        return None
    return kind


def _probe(src: ByteSource, off: int) -> Kind | None:
    if off < 0 or off + PROBE > src.size or src.is_hole(off, ZONE_HEADER):
        return None
    return _classify(src.read_at(off, PROBE))


def _search_front(src: ByteSource, end: int) -> dict[int, Kind]:
    """Every plausible zone header in [0, end), at any alignment (one read, C-speed search)."""
    if end <= 0 or src.is_hole(0, end):
        return {}
    head = src.read_at(0, end)
    hits: dict[int, Kind] = {}
    for needle, kind in SIG_BYTES.items():
        at = head.find(needle)
        while at >= 0:
            aligned = at % STEP == 0
            # pmsg and console zones are 4 KiB aligned; ftrace and dmesg zones may not be.
            if (aligned or kind in (Kind.FTRACE, Kind.DMESG)) and _classify(head[at:at + PROBE]) is kind:
                hits[at] = kind
            at = head.find(needle, at + 1)
    return hits


def discover_layout(src: ByteSource) -> tuple[BlkLayout, list[Finding]]:
    findings: list[Finding] = []
    scan_end = min(src.size, SZ_128M)
    window = min(scan_end, DENSE)
    hits: dict[int, Kind] = {}
    for off, raw in src.read_headers(range(0, max(0, window - PROBE + 1), STEP), PROBE).items():
        kind = _classify(raw)
        if kind:
            hits[off] = kind
    if not any(k is Kind.DMESG for k in hits.values()):
        # No aligned dmesg zone: ftrace zones may have shifted them (or none was written).
        hits = _search_front(src, window)
    dmesg = sorted(o for o, k in hits.items() if k is Kind.DMESG)
    # Front zones precede the dmesg zones; a "signature" further on is payload data.
    front = sorted((o, k) for o, k in hits.items()
                   if k is not Kind.DMESG and (not dmesg or o < dmesg[0]))

    if len(dmesg) == 1:  # a lone record: look a little further for its neighbour
        lone = dmesg[0]
        start = lone + STEP * max(1, (min(scan_end, DENSE) - lone) // STEP + 1)
        for off in range(start, min(scan_end, lone + FOLLOW), STEP):
            if _probe(src, off) is Kind.DMESG:
                dmesg.append(off)
                break

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
        # Nothing marks where the last front zone ends: take the Kconfig default
        # (64 KiB), or the next power of two that holds what its header says it holds.
        last = front[-1][0]
        _, datalen, start = ZONE_HDR.unpack(src.read_at(last, ZONE_HEADER))
        need = max(datalen, start, 0) + ZONE_HEADER
        size = max(DEFAULT_KMSG_KIB * 1024, 1 << (need - 1).bit_length())
        base = -(-(last + size) // STEP) * STEP
        confidence = "medium"
        findings.append(Finding(Severity.INFO, f"no dmesg zone written: the last {front[-1][1].value} "
                                f"zone's size is assumed ({size // 1024} KiB)"))
    else:
        base = 0
    if dmesg and base and not front:
        findings.append(Finding(Severity.INFO, f"dmesg zones start at {base:#x}: "
                                f"{base} bytes of pmsg/console/ftrace space are reserved but unused"))

    params = _front_params(front, base, kmsg)
    cap = True
    if src.size > SZ_128M and dmesg:
        # Uncapped (5.10) kernels keep writing past 128 MiB: look just beyond it.
        zones_in_cap = (SZ_128M - base) // kmsg
        beyond = base + zones_in_cap * kmsg
        if _probe(src, beyond - kmsg) is Kind.DMESG and _probe(src, beyond) is Kind.DMESG:
            cap = False
            findings.append(Finding(Severity.INFO, "zones continue past 128 MiB: written by a "
                                    "kernel without the 128 MiB cap (5.10?)"))
    params = BlkParams(**{**params.to_json(), "cap_128m": cap})
    try:
        layout, complaints = compute_layout(src.size, params)
    except UsageError as exc:
        # Sizes read from the image, not given by the user: a finding, never exit 2.
        findings.append(Finding(Severity.ERROR, f"the zones found describe no layout the kernel "
                                f"would use ({exc.message}); read as dmesg zones of "
                                f"{DEFAULT_KMSG_KIB} KiB"))
        params = BlkParams(cap_128m=cap)
        layout, complaints = compute_layout(src.size, params)
        base, kmsg, confidence = layout.dmesg_base, layout.dmesg_zone_size, "low"
    if not hits:
        confidence = "none"
        findings.append(Finding(Severity.INFO, "no pstore signature found: the device was never "
                                "written by pstore_blk (or is not a pstore disk)"))
    elif layout.dmesg_base != base:
        confidence = "low"
        findings.append(Finding(Severity.WARNING, "the zones found in front do not fit the dmesg "
                                "zones; pass the sizes for an exact layout"))
    elif params.ftrace_size:
        confidence = "medium" if confidence == "high" else confidence
        findings.append(Finding(Severity.INFO, f"dmesg zones start at {base:#x}, not 4 KiB aligned: "
                                f"ftrace zones reserved (matched by ftrace_size={params.ftrace_size} "
                                f"KiB over {params.nr_cpus} CPUs)"))
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


def _front_params(front: list[tuple[int, Kind]], base: int, kmsg: int) -> BlkParams:
    """Module parameters whose pmsg/console/ftrace zones put the dmesg zones at ``base``."""
    kinds = {k: o for o, k in reversed(front)}  # first offset of each kind
    pmsg = console = 0
    if Kind.CONSOLE in kinds:
        pmsg = kinds[Kind.CONSOLE]
    aligned = base - base % STEP
    console_end = min(aligned, kinds.get(Kind.FTRACE, aligned))
    if Kind.CONSOLE in kinds:
        console = console_end - pmsg
    else:
        pmsg = console_end
    plain = BlkParams(kmsg_size=kmsg // 1024, pmsg_size=pmsg // 1024, console_size=console // 1024)
    if base % STEP == 0 and Kind.FTRACE not in kinds:
        return plain
    # ftrace zones of ftrace_size // nr_cpus bytes end at `base`: find sizes that do.
    ftrace_bytes = base - console_end
    first_f = -(-ftrace_bytes // STEP) * STEP
    for f in range(max(first_f, STEP), first_f + 8 * STEP, STEP):
        for cpus in range(1, 1025):
            rs = f // cpus
            if rs and (f // rs) * rs == ftrace_bytes and kib_param_to_bytes(f // 1024) == f:
                return BlkParams(kmsg_size=kmsg // 1024, pmsg_size=pmsg // 1024,
                                 console_size=console // 1024, ftrace_size=f // 1024, nr_cpus=cpus)
    return plain
