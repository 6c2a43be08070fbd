"""``backend: auto``: the strongest backend a VM can have, decided from Proxmox facts (pure).

The backends are tried from the one that keeps the most (``Backend.preference``) down; the
first without blockers (``Backend.blockers``) wins, and the decision keeps every reason:
why the winner fits, what it costs, why each stronger one did not.  It never changes a VM
by itself: a VM provisioned with one backend keeps it (``recorded``) and the decision only
says what auto would choose now -- switching is an explicit ``provision --backend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from .capture import Blocker, VmFacts

if TYPE_CHECKING:
    from .base import Backend


@dataclass(frozen=True)
class AutoDecision:
    vmid: int
    backend: str                 # what auto chose (or kept: ``recorded``)
    why: tuple[str, ...]         # why it fits, and its costs
    passed_over: tuple[tuple[str, tuple[Blocker, ...]], ...] = ()  # stronger backends and their blockers
    recorded: str | None = None  # the backend provision set up before (kept over a new choice)
    would_choose: str | None = None  # auto's choice today, when it differs from ``recorded``

    @property
    def switch_hint(self) -> str | None:
        if not self.would_choose:
            return None
        return (f"auto would choose {self.would_choose} now; the VM keeps {self.recorded} until you switch "
                f"with `pvepstore provision {self.vmid} --backend {self.would_choose}` (switching back works the same way)")

    def lines(self) -> list[str]:
        """The decision as sentences, for provision's output and the record."""
        out = [f"{self.backend}: " + "; ".join(self.why)]
        out += [f"not {name}: " + "; ".join(b.reason for b in blockers) for name, blockers in self.passed_over]
        if self.switch_hint:
            out.append(self.switch_hint)
        return out

    def to_json(self) -> dict:
        return {"vmid": self.vmid, "backend": self.backend, "why": list(self.why), "recorded": self.recorded,
                "would_choose": self.would_choose,
                "passed_over": [{"backend": n, "blockers": [b.to_json() for b in bs]} for n, bs in self.passed_over]}


def choose(facts: VmFacts, backends: Iterable["Backend"], *, recorded: str | None = None) -> AutoDecision:
    """The first backend (strongest first) without blockers; ``recorded`` wins over a new choice."""
    ranked = sorted(backends, key=lambda b: -b.preference)
    passed: list[tuple[str, tuple[Blocker, ...]]] = []
    for b in ranked:
        blockers = tuple(b.blockers(facts))
        if blockers:
            passed.append((b.name, blockers))
            continue
        why = (*b.fits(facts), *(f"costs: {c}" for c in b.costs(facts)))
        if recorded and recorded != b.name:
            return AutoDecision(facts.vmid, recorded, ("provision set it up before (auto never switches a VM "
                                                       "by itself)",),
                                tuple(passed), recorded=recorded, would_choose=b.name)
        return AutoDecision(facts.vmid, b.name, why, tuple(passed), recorded=recorded)
    raise AssertionError("a backend without blockers (pstore_blk) must exist")  # pragma: no cover
