"""Evidence about how a guest's previous boot ended, one item per source.

An :class:`Evidence` says which verdict it points to (or none), how sure it
is, and why.  pstore records are the first source; guest boot history and the
Proxmox task log plug in later by producing the same items.

The honest rule lives here: pstore_blk on a virtual disk never stores panic,
shutdown or emergency-restart dumps (shared/reference/pstore-blk-format.md §6),
so an empty store says nothing about how the boot ended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Iterable, Protocol, Sequence

from ..pstore.model import Kind, Record
from .crash import Crash, extract_crashes
from .trigger import CrashKind


class VerdictKind(str, Enum):
    """The closed vocabulary for "why did the previous boot end" (issue #3)."""

    KERNEL_PANIC = "kernel_panic"
    KERNEL_OOPS = "kernel_oops"  # the system kept running after it
    KERNEL_WARNING = "kernel_warning"
    HANG = "hang"
    OOM = "oom"
    ORDERLY_REBOOT = "orderly_reboot"
    ORDERLY_POWEROFF = "orderly_poweroff"
    HOST_STOP = "host_stop"
    HOST_RESET = "host_reset"
    HOST_OOM_KILL = "host_oom_kill"  # the node's OOM killer killed the VM's QEMU process
    NODE_REBOOT = "node_reboot"  # the node itself rebooted (or crashed) while the boot ran
    HA_RECOVERY = "ha_recovery"  # HA fenced the VM's node and started the VM on another one
    QEMU_CRASH = "qemu_crash"  # the VM's QEMU process itself died on the host (segfault, abort)
    UNEXPECTED_RESET = "unexpected_reset"
    UNKNOWN = "unknown"


class Confidence(str, Enum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


CONFIDENCE_RANK = {Confidence.HIGH: 3, Confidence.MEDIUM: 2, Confidence.LOW: 1}


class EvidenceItem(Protocol):
    """What the verdict needs from any evidence source."""

    source: str
    suggests: VerdictKind | None
    confidence: Confidence
    summary: str

    def to_json(self) -> dict: ...


@dataclass(frozen=True)
class Evidence:
    """One finding from one source.  ``suggests`` is None for context that explains nothing by itself."""

    source: str  # "pstore_blk" now; later "boot_history", "pve_task", "pvpanic", "serial", ...
    suggests: VerdictKind | None
    confidence: Confidence
    summary: str
    time: datetime | None = None
    record: str | None = None  # the pstore file name (or task UPID, ...) this came from
    sha256: str | None = None
    details: dict = field(default_factory=dict)
    crashes: tuple[Crash, ...] = ()

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "suggests": self.suggests.value if self.suggests else None,
            "confidence": self.confidence.value,
            "summary": self.summary,
            "time": self.time.isoformat().replace("+00:00", "Z") if self.time else None,
            "record": self.record,
            "sha256": self.sha256,
            "details": self.details,
        }


# Which verdict a crash of each kind points to when it is all a record shows.
CRASH_VERDICT = {
    CrashKind.PANIC: VerdictKind.KERNEL_PANIC,
    CrashKind.OOPS: VerdictKind.KERNEL_OOPS,
    CrashKind.MEMORY_SAFETY: VerdictKind.KERNEL_OOPS,
    CrashKind.MCE: VerdictKind.KERNEL_OOPS,
    CrashKind.OTHER: VerdictKind.KERNEL_WARNING,
    CrashKind.WARNING: VerdictKind.KERNEL_WARNING,
    CrashKind.LOCKDEP: VerdictKind.KERNEL_WARNING,
    CrashKind.LEAK: VerdictKind.KERNEL_WARNING,
    CrashKind.HANG: VerdictKind.HANG,
    CrashKind.OOM: VerdictKind.OOM,
}

# Severity order used to pick the crash that speaks for a record.
CRASH_PRECEDENCE = [CrashKind.PANIC, CrashKind.HANG, CrashKind.OOM, CrashKind.OOPS, CrashKind.MEMORY_SAFETY,
                    CrashKind.MCE, CrashKind.WARNING, CrashKind.LOCKDEP, CrashKind.OTHER, CrashKind.LEAK]

# kernel/reboot.c: the last words of an orderly reboot / poweroff / halt.
_RESTART = re.compile(r"^(?:reboot: )?Restarting system")
_POWEROFF = re.compile(r"^(?:reboot: )?(?:Power down|System halted)")

NO_RECORD_NOTE = ("no pstore record: pstore_blk on a virtual disk never stores panic, shutdown or "
                  "emergency-restart dumps, so this is not evidence of a clean reboot")
# ramoops (ivshmem) and efi_pstore write a panic's dump at panic time
NO_RECORD_PANIC_KEPT = ("no pstore record: {backend} keeps panic dumps and none was written, so the guest "
                        "did not panic while pstore was loaded")


def primary_crash(crashes: Iterable[Crash]) -> Crash | None:
    """The most severe crash (panicked ones first), earliest on ties."""
    ranked = sorted(enumerate(crashes),
                    key=lambda ic: (not ic[1].panicked, CRASH_PRECEDENCE.index(ic[1].kind), ic[0]))
    return ranked[0][1] if ranked else None


def dump_trigger(rec: Record, crashes: Sequence[Crash]) -> Crash | None:
    """The crash that made the kernel write an Oops dump: kmsg_dump(KMSG_DUMP_OOPS) is called
    from oops_end(), so it is the last Oops of the record.  Reports before it (a soft lockup
    warning, a WARNING) did not trigger the dump and must not speak for it."""
    if rec.reason != "Oops":
        return None
    oopses = [c for c in crashes if c.kind is CrashKind.OOPS]
    return oopses[-1] if oopses else None


def _from_crashes(rec: Record, crashes: list[Crash], confidence: Confidence) -> Evidence:
    crash = dump_trigger(rec, crashes) or primary_crash(crashes)
    assert crash is not None
    suggests = VerdictKind.KERNEL_PANIC if crash.panicked else CRASH_VERDICT[crash.kind]
    summary = crash.title + (f" (kernel panic: {crash.panic_message})" if crash.panicked else "")
    return Evidence(rec.backend, suggests, confidence, summary,
                    time=rec.time, record=rec.name, sha256=rec.sha256,
                    details={"reason": rec.reason, "count": rec.counter, "crashes": len(crashes)},
                    crashes=tuple(crashes))


def record_evidence(rec: Record) -> Evidence | None:
    """What one pstore record says; None for records that carry no boot-end information."""
    source = rec.backend
    if rec.erased or rec.kind in (Kind.PMSG, Kind.FTRACE):
        return None
    # best_text: where the kernel itself could not decode a record, pvepstore may have
    text = rec.best_text if (rec.recovered is not None or not rec.name.endswith(".enc.z")) else ""
    crashes = extract_crashes(text)
    base = dict(time=rec.time, record=rec.name, sha256=rec.sha256,
                details={"reason": rec.reason, "count": rec.counter, "crashes": len(crashes)})
    tail = [line for line in text.splitlines()[-5:] if line.strip()]
    last = re.sub(r"^(?:<\d+>)?(?:\[\s*\d+\.\d+\]\s*)?(?:\[[TC]\d+\]\s*)?", "", tail[-1]) if tail else ""
    if rec.kind is Kind.DMESG and rec.reason == "Panic":
        # Not written by pstore_blk on a virtual disk, but by ramoops/efi/ERST and 5.10 kernels.
        crash_summary = primary_crash(crashes).title if crashes else "kernel panic"
        return Evidence(source, VerdictKind.KERNEL_PANIC, Confidence.HIGH, crash_summary, crashes=tuple(crashes),
                        **base)
    if rec.kind is Kind.DMESG and rec.reason == "Shutdown":
        kind = VerdictKind.ORDERLY_POWEROFF if _POWEROFF.search(last) else VerdictKind.ORDERLY_REBOOT
        return Evidence(source, kind, Confidence.HIGH if last else Confidence.MEDIUM,
                        f"shutdown dump: {last or 'orderly shutdown'}", **base)
    if rec.kind is Kind.DMESG and rec.reason == "Emergency":
        return Evidence(source, VerdictKind.UNEXPECTED_RESET, Confidence.MEDIUM,
                        "emergency restart dump (sysrq-b or a panic timeout)", crashes=tuple(crashes), **base)
    if crashes:
        # An Oops record on pstore_blk means the guest kept running for ~0.5 s after it (the write
        # is deferred); the boot may still have ended any way afterwards.
        confidence = Confidence.MEDIUM if rec.kind is Kind.DMESG else Confidence.LOW
        return _from_crashes(rec, crashes, confidence)
    if rec.kind is Kind.CONSOLE and (_RESTART.search(last) or _POWEROFF.search(last)):
        # The console zone lags ~0.5-1 s, so the last line seen is a hint, not proof.
        kind = VerdictKind.ORDERLY_POWEROFF if _POWEROFF.search(last) else VerdictKind.ORDERLY_REBOOT
        return Evidence(source, kind, Confidence.MEDIUM, f"console ends with: {last}", **base)
    if rec.kind is Kind.DMESG:
        return Evidence(source, None, Confidence.LOW,
                        f"{rec.reason or 'dmesg'} dump without a recognised crash report", **base)
    return None


def pstore_evidence(records: Iterable[Record], *, backend: str = "pstore_blk",
                    keeps_panics: bool = False) -> list[Evidence]:
    """Evidence from the records of one pstore device, newest dump first.

    With no record at all, a single item says so and explicitly suggests nothing.
    """
    records = [r for r in records if not r.erased]
    items = [e for r in records if (e := record_evidence(r)) is not None]
    if not any(r.kind is Kind.DMESG for r in records):
        note = NO_RECORD_PANIC_KEPT.format(backend=backend) if keeps_panics else NO_RECORD_NOTE
        items.append(Evidence(backend, None, Confidence.LOW, note))
    return sorted(items, key=lambda e: (e.time is None, -(e.time.timestamp() if e.time else 0)))


def log_evidence(crashes: Sequence[Crash], *, name: str | None = None) -> list[Evidence]:
    """Evidence from a saved kernel log (``explain``): its crashes, or a note that it has none.

    A log that shows no crash is not proof of a clean end either: it may stop
    before the end of the boot.
    """
    if not crashes:
        return [Evidence("log", None, Confidence.LOW, "no crash report in this log", record=name)]
    crash = primary_crash(crashes)
    assert crash is not None
    suggests = VerdictKind.KERNEL_PANIC if crash.panicked else CRASH_VERDICT[crash.kind]
    summary = crash.title + (f" (kernel panic: {crash.panic_message})" if crash.panicked else "")
    return [Evidence("log", suggests, Confidence.MEDIUM, summary, record=name,
                     details={"crashes": len(crashes)}, crashes=tuple(crashes))]
