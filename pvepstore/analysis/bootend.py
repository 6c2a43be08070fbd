"""Evidence about how a boot ended from sources other than pstore.

* the guest's own boot history (did the previous boot reach an orderly shutdown?),
* the Proxmox task log for the VM (who stopped, reset, rebooted or migrated it),
* pvepstore's record of a reboot it planned itself (``pvepstore reboot --reason``).

The rule the issue insists on lives in :func:`ended_boot_evidence`: a boot that
ended with no sign of an orderly shutdown is an *unexpected reset* — the usual
signature of a panic, which pstore_blk cannot store — never "clean".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Mapping

from .evidence import Confidence, Evidence, VerdictKind

# Proxmox task types for a VM and what each says about how its boot ended.
TASK_VERDICTS = {
    "qmreset": (VerdictKind.HOST_RESET, "reset from Proxmox"),
    "qmstop": (VerdictKind.HOST_STOP, "hard stop from Proxmox"),
    "hastop": (VerdictKind.HOST_STOP, "stopped by HA"),
    "qmshutdown": (VerdictKind.ORDERLY_POWEROFF, "shutdown requested from Proxmox"),
    "qmreboot": (VerdictKind.ORDERLY_REBOOT, "reboot requested from Proxmox"),
    "qmigrate": (VerdictKind.HOST_STOP, "migrated to another node"),
}


@dataclass(frozen=True)
class BootEnd:
    """What the guest says about its previous boot.

    ``orderly`` is "reboot" or "poweroff" when the previous boot reached an
    orderly shutdown (journal/wtmp), "none" when its log shows it did not, and
    None when the guest cannot tell (volatile journal, no wtmp).
    """

    ended_boot: str | None
    orderly: str | None = None
    kernel: str | None = None
    detail: str = ""


def ended_boot_evidence(end: BootEnd) -> Evidence:
    if end.orderly == "reboot":
        return Evidence("boot_history", VerdictKind.ORDERLY_REBOOT, Confidence.MEDIUM,
                        f"the previous boot reached an orderly reboot{_detail(end)}", record=end.ended_boot)
    if end.orderly == "poweroff":
        return Evidence("boot_history", VerdictKind.ORDERLY_POWEROFF, Confidence.MEDIUM,
                        f"the previous boot reached an orderly poweroff{_detail(end)}", record=end.ended_boot)
    confidence = Confidence.MEDIUM if end.orderly == "none" else Confidence.LOW
    why = ("its log ends without an orderly shutdown" if end.orderly == "none"
           else "no sign of an orderly shutdown (the guest keeps no persistent log of it)")
    return Evidence("boot_history", VerdictKind.UNEXPECTED_RESET, confidence,
                    f"the previous boot ended unexpectedly: {why}; this is the usual signature of a "
                    f"kernel panic, which pstore_blk cannot store{_detail(end)}", record=end.ended_boot)


def _detail(end: BootEnd) -> str:
    return f" ({end.detail})" if end.detail else ""


def task_evidence(tasks: Iterable[Mapping], since: float | None = None,
                  until: float | None = None) -> list[Evidence]:
    """Evidence from Proxmox tasks of one VM (``/nodes/{node}/tasks?vmid=``) within a window."""
    items = []
    for task in tasks:
        kind = TASK_VERDICTS.get(str(task.get("type", "")))
        start = task.get("starttime")
        if kind is None or not isinstance(start, (int, float)):
            continue
        if (since is not None and start < since) or (until is not None and start > until):
            continue
        verdict, what = kind
        ok = task.get("status") in (None, "OK")
        when = datetime.fromtimestamp(start, tz=timezone.utc)
        items.append(Evidence("pve_task", verdict, Confidence.HIGH if ok else Confidence.MEDIUM,
                              f"{what} by {task.get('user', '?')} at {when.isoformat().replace('+00:00', 'Z')}",
                              time=when, record=str(task.get("upid", "")) or None,
                              details={"type": task.get("type"), "status": task.get("status")}))
    return items


def planned_reboot_evidence(plan: Mapping | None) -> list[Evidence]:
    """pvepstore's own note of a reboot it was asked to do: ``orderly_reboot: <reason>``."""
    if not plan:
        return []
    when = plan.get("time")
    stamp = datetime.fromtimestamp(when, tz=timezone.utc) if isinstance(when, (int, float)) else None
    return [Evidence("pvepstore", VerdictKind.ORDERLY_REBOOT, Confidence.HIGH,
                     f"orderly_reboot: {plan.get('reason', '')}".strip(), time=stamp,
                     details={"requested_by": plan.get("user")})]
