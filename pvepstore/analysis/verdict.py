"""The verdict: one closed-vocabulary answer to "why did the previous boot end", from evidence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .evidence import CONFIDENCE_RANK, Confidence, Evidence, EvidenceItem, VerdictKind

SEVERITY = {
    VerdictKind.KERNEL_PANIC: "critical",
    VerdictKind.HANG: "critical",
    VerdictKind.OOM: "error",
    VerdictKind.KERNEL_OOPS: "error",
    VerdictKind.UNEXPECTED_RESET: "error",
    VerdictKind.HOST_RESET: "warning",
    VerdictKind.HOST_OOM_KILL: "error",  # the host's memory, not the guest: another team's page
    VerdictKind.NODE_REBOOT: "warning",
    VerdictKind.HA_RECOVERY: "error",  # a node failed: the cluster's page, not the guest's
    VerdictKind.QEMU_CRASH: "error",  # a hypervisor bug: the host's page, not the guest's
    VerdictKind.KERNEL_WARNING: "warning",
    VerdictKind.UNKNOWN: "warning",  # nobody can tell yet: worth a look, not a page
    VerdictKind.HOST_STOP: "info",
    VerdictKind.ORDERLY_POWEROFF: "info",
    VerdictKind.ORDERLY_REBOOT: "info",
}

# On equal confidence the more severe explanation wins: a panic explains a reset, not vice versa.
PRECEDENCE = [VerdictKind.KERNEL_PANIC, VerdictKind.HANG, VerdictKind.OOM, VerdictKind.KERNEL_OOPS,
              VerdictKind.HOST_OOM_KILL, VerdictKind.QEMU_CRASH, VerdictKind.HA_RECOVERY, VerdictKind.NODE_REBOOT,
              VerdictKind.UNEXPECTED_RESET,
              VerdictKind.HOST_RESET, VerdictKind.HOST_STOP,
              VerdictKind.ORDERLY_POWEROFF, VerdictKind.ORDERLY_REBOOT, VerdictKind.KERNEL_WARNING]


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    severity: str
    confidence: Confidence
    summary: str
    reason_code: str  # Android-style "reason[,sub]", e.g. "kernel_panic,hang"
    evidence: Sequence[EvidenceItem] = field(default_factory=tuple)
    also: tuple[VerdictKind, ...] = ()  # other explanations the evidence suggested

    def to_json(self) -> dict:
        return {
            "kind": self.kind.value,
            "severity": self.severity,
            "confidence": self.confidence.value,
            "summary": self.summary,
            "reason_code": self.reason_code,
            "also": [k.value for k in self.also],
            "evidence": [e.to_json() for e in self.evidence],
        }


def _reason_code(kind: VerdictKind, item: EvidenceItem) -> str:
    crashes = getattr(item, "crashes", ())
    if crashes:
        from .evidence import primary_crash
        crash = primary_crash(crashes)
        if crash is not None and crash.kind.value not in kind.value:
            return f"{kind.value},{crash.kind.value.replace('-', '_')}"
    return kind.value


def decide(evidence: Sequence[EvidenceItem]) -> Verdict:
    """The verdict best supported by ``evidence``: highest confidence first, then severity.

    Evidence that suggests nothing never turns into "clean": with nothing
    else, the verdict is ``unknown`` with low confidence.
    """
    candidates = [e for e in evidence if e.suggests is not None]
    if not candidates:
        notes = "; ".join(e.summary for e in evidence) or "no evidence"
        return Verdict(VerdictKind.UNKNOWN, SEVERITY[VerdictKind.UNKNOWN], Confidence.LOW,
                       f"cause unknown: {notes}", VerdictKind.UNKNOWN.value, tuple(evidence))
    # On a full tie the operator's own stated reason (pvepstore reboot --reason) speaks.
    best = min(candidates, key=lambda e: (-CONFIDENCE_RANK[e.confidence], PRECEDENCE.index(e.suggests),
                                          e.source != "pvepstore"))
    also = tuple(dict.fromkeys(e.suggests for e in candidates if e.suggests is not best.suggests))
    return Verdict(best.suggests, SEVERITY[best.suggests], best.confidence, best.summary,
                   _reason_code(best.suggests, best), tuple(evidence), also)


__all__ = ["Evidence", "Verdict", "VerdictKind", "decide"]
