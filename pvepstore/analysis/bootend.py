"""Evidence about how a boot ended from sources other than pstore.

* the guest's own boot history (did the previous boot reach an orderly shutdown?),
* the Proxmox task log for the VM (who stopped, reset, rebooted or migrated it),
* pvepstore's record of a reboot it planned itself (``pvepstore reboot --reason``).

The rule the issue insists on lives in :func:`ended_boot_evidence`: a boot that
ended with no sign of an orderly shutdown is an *unexpected reset* — the usual
signature of a panic, which pstore_blk cannot store — never "clean".

Which Proxmox task explains a boot end (:func:`attribute_tasks`)
-----------------------------------------------------------------
A task may explain the end of a boot only if it started inside that boot's
lifetime, ``window.start < task.starttime <= window.end + END_SKEW``:

* ``window.start`` is when the ended boot's kernel started (host clock).  A
  task that ended the boot *before* it (the ``qmstop`` of an earlier boot, the
  ``qmreboot``/``qmreset`` that started this one) started earlier: ``qmstop``
  kills QEMU, ``qmstart`` then spawns a new QEMU, firmware runs and only then
  does the kernel start, so every task of an earlier boot starts strictly
  before ``window.start``.
* ``window.end`` is when the *next* boot's kernel started (host clock at the
  guest's reply minus its ``/proc/uptime``): the latest moment the ended boot
  can have ended.  Real PVE timing: a ``qmshutdown``/``qmreboot`` starts before
  the guest's boot ends (by up to its shutdown timeout) and ends after it; a
  ``qmstop``/``qmreset`` starts a fraction of a second before the end and its
  ``endtime`` is after it.  So the *starttime* of the task that ended a boot is
  never after ``window.end``, and no tolerance is added after it (``END_SKEW``
  is 0): PVE's whole-second ``starttime`` is rounded down, and ``window.end``
  (taken after the SSH reply) can only be late, both on the safe side.  A
  task that starts after ``window.end`` belongs to the running boot (a
  shutdown in progress while the sweep reads the guest).
* Among the tasks in the window the one closest to the end (latest start)
  wins: a ``qmshutdown`` that timed out and the ``qmstop`` after it → the stop.
  A task that failed did not end the boot (a failed shutdown leaves the guest
  running), and ``qmigrate``/``vzdump`` keep the boot running: those are
  context, never the explanation.
* When either bound is unknown (pvepstore never saw the ended boot running,
  the guest cannot list its boots, ivshmem records carry no boot id), no task
  is attributed: a wrong "host_stop" hides a crash, no attribution only loses
  a detail.  The evidence then says which tasks there were and why none was used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Mapping

from .evidence import Confidence, Evidence, VerdictKind
from .hostlog import QemuIds

# Proxmox task types that end a VM's boot, and what each says about how it ended.
TASK_VERDICTS = {
    "qmreset": (VerdictKind.HOST_RESET, "reset from Proxmox"),
    "qmstop": (VerdictKind.HOST_STOP, "hard stop from Proxmox"),
    "hastop": (VerdictKind.HOST_STOP, "stopped by HA"),
    "qmshutdown": (VerdictKind.ORDERLY_POWEROFF, "shutdown requested from Proxmox"),
    "qmreboot": (VerdictKind.ORDERLY_REBOOT, "reboot requested from Proxmox"),
}
# Tasks worth naming next to a boot end that do not end a boot (a live migration keeps it running).
CONTEXT_TASKS = {"qmigrate": "migration", "vzdump": "backup"}

END_SKEW = 0.0  # s after window.end that a task ending the previous boot may start (see above)
_LISTED = 3  # tasks named in a "not attributed" note


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
    qemu_run: bool = False  # ended_boot is a QEMU process seen on the host (ivshmem), not a guest boot
    watchdog_reset: str | None = None  # a guest watchdog device that says it reset the boot before this one
    in_run: bool = False  # a guest boot that ended inside the same QEMU run, of a backend that keeps panics
    log_tail: tuple[str, ...] = ()  # the ended boot's last journal lines (short-unix), when persistent


@dataclass(frozen=True)
class BootWindow:
    """The lifetime of the ended boot on the host's clock (epoch seconds); None where unknown.

    ``unknown`` says why a bound is missing, for the evidence.
    """

    start: float | None
    end: float | None
    unknown: str = ""
    # The QEMU process that ran the ended boot and the one running now, as sweeps saw them (None:
    # not seen, e.g. the VM runs on another node): the node's log names QEMU by these ids.
    qemu: QemuIds | None = None
    qemu_after: QemuIds | None = None

    @property
    def known(self) -> bool:
        return self.start is not None and self.end is not None and self.start < self.end


_BOOT_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


def _norm(boot_id: str) -> str:
    return boot_id.replace("-", "").strip().lower()


def boot_order(lines: Iterable[str]) -> list[str]:
    """Boot ids (32 hex digits, no dashes) in the order ``journalctl --list-boots`` prints them."""
    order = []
    for line in lines:
        m = _BOOT_ID.search(line[:200].lower())
        if m:
            order.append(m.group(0))
    return order


def ended_window(ended: str, ended_started: float | None, current: str | None,
                 current_started: float | None, boots: Iterable[str] = ()) -> BootWindow:
    """The lifetime of ``ended`` (the boot pvepstore last saw running, started at ``ended_started``)
    if it is the boot right before ``current`` (started at ``current_started``), else unknown.

    The guest's boot list (``journalctl --list-boots``) says whether boots pvepstore never
    saw ran in between: then the boot that really ended right before ``current`` is one whose
    start nobody recorded, and the window of ``ended`` would hold tasks of other boots.
    """
    short = ended[:8]
    if current_started is None:
        return BootWindow(None, None, "the guest did not report its uptime, so the end of the previous "
                                      "boot is unknown")
    if ended_started is None:
        return BootWindow(None, current_started, f"pvepstore did not record when boot {short} started")
    order = boot_order(boots)
    cur = _norm(current or "")
    if cur in order and order.index(cur) > 0:
        previous = order[order.index(cur) - 1]
        if previous != _norm(ended):
            return BootWindow(None, current_started,
                              f"boot {previous[:8]} ran between boot {short} (the last one pvepstore saw) "
                              "and this one, and pvepstore never saw when it started")
        return BootWindow(ended_started, current_started)
    return BootWindow(None, current_started,
                      f"the guest lists no earlier boot, so pvepstore cannot tell whether boot {short} (the last "
                      "one it saw) was the one right before this boot")


def ended_boot_evidence(end: BootEnd) -> Evidence:
    if end.orderly == "reboot":
        return Evidence("boot_history", VerdictKind.ORDERLY_REBOOT, Confidence.MEDIUM,
                        f"the previous boot reached an orderly reboot{_detail(end)}", record=end.ended_boot)
    if end.orderly == "poweroff":
        return Evidence("boot_history", VerdictKind.ORDERLY_POWEROFF, Confidence.MEDIUM,
                        f"the previous boot reached an orderly poweroff{_detail(end)}", record=end.ended_boot)
    if end.qemu_run:
        # ramoops on ivshmem writes a dump for a panic and for an orderly shutdown alike: a QEMU
        # process that ended without either was ended from outside the guest
        return Evidence("qemu_run", VerdictKind.UNEXPECTED_RESET, Confidence.MEDIUM,
                        "the VM's QEMU process ended and the guest wrote no dump (ramoops keeps panics and "
                        "orderly shutdowns): it was stopped, killed or crashed on the host", record=end.ended_boot)
    if end.in_run:
        # ramoops on ivshmem keeps panics and orderly shutdowns; none was written and QEMU went on
        return Evidence("boot_history", VerdictKind.UNEXPECTED_RESET, Confidence.MEDIUM,
                        "the guest's boot ended inside the same QEMU process and wrote no dump (ramoops keeps "
                        "panics and orderly shutdowns): it was reset from outside its kernel -- `qm reset`, a "
                        f"watchdog device or a triple fault{_detail(end)}", record=end.ended_boot)
    confidence = Confidence.MEDIUM if end.orderly == "none" else Confidence.LOW
    why = ("its log ends without an orderly shutdown" if end.orderly == "none"
           else "no sign of an orderly shutdown (the guest keeps no persistent log of it)")
    return Evidence("boot_history", VerdictKind.UNEXPECTED_RESET, confidence,
                    f"the previous boot ended unexpectedly: {why}; this is the usual signature of a "
                    f"kernel panic, which pstore_blk cannot store{_detail(end)}", record=end.ended_boot)


def watchdog_evidence(end: BootEnd) -> Evidence | None:
    """The guest's watchdog device reset the boot before this one: nothing fed it, the guest hung
    (a watchdog daemon or systemd's RuntimeWatchdogSec stopped being scheduled).  The device's own
    word, read in the new boot: QEMU's i6300esb keeps its "previous reboot" flag across the reset
    it performed, and the guest's driver reports it as bootstatus WDIOF_CARDRESET."""
    if not end.watchdog_reset:
        return None
    return Evidence("guest_watchdog", VerdictKind.HANG, Confidence.HIGH,
                    f"the VM's watchdog device ({end.watchdog_reset}) reset the boot before this one: nothing "
                    "fed it, so the guest was hung (or stuck after a panic)", record=end.ended_boot,
                    details={"device": end.watchdog_reset})


def _detail(end: BootEnd) -> str:
    return f" ({end.detail})" if end.detail else ""


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _start(task: Mapping) -> float | None:
    start = task.get("starttime")
    return float(start) if isinstance(start, (int, float)) and not isinstance(start, bool) else None


def _ok(task: Mapping) -> bool:
    return task.get("status") in (None, "OK")  # None: still running (listed with source=all)


def _name(task: Mapping) -> str:
    start = _start(task)
    return f"{task.get('type')} at {_stamp(start) if start is not None else '?'}"


def attribute_tasks(tasks: Iterable[Mapping], window: BootWindow) -> list[Evidence]:
    """At most one task that explains the end of the boot in ``window`` (see the module doc),
    plus one context item naming the tasks that were seen but not used and why."""
    relevant = [t for t in tasks if (str(t.get("type", "")) in TASK_VERDICTS or str(t.get("type", "")) in
                                     CONTEXT_TASKS) and _start(t) is not None]
    relevant.sort(key=lambda t: (_start(t), float(t.get("endtime") or 0)))
    if not relevant:
        return []
    if not window.known:
        why = window.unknown or "the ended boot's lifetime is unknown"
        return [_note(relevant, f"not attributed ({why}): a task outside the boot's lifetime would "
                                "explain the wrong boot")]
    inside = [t for t in relevant if window.start < _start(t) <= window.end + END_SKEW]
    ending = [t for t in inside if str(t["type"]) in TASK_VERDICTS and _ok(t)]
    winner = ending[-1] if ending else None
    items = [_task_item(winner, _backup_around(inside, winner))] if winner is not None else []
    unused = [t for t in relevant if t is not winner]
    if unused:
        outside = [t for t in unused if t not in inside]
        parts = []
        if outside:
            parts.append(f"{len(outside)} outside the ended boot's lifetime "
                         f"({_stamp(window.start)} .. {_stamp(window.end)})")
        if len(unused) > len(outside):
            parts.append(f"{len(unused) - len(outside)} inside it that did not end it (failed, earlier "
                         "than the one that did, or a migration/backup, which keep the boot running)")
        items.append(_note(unused, "not attributed: " + "; ".join(parts)))
    return items


def _backup_around(tasks: Iterable[Mapping], winner: Mapping | None) -> Mapping | None:
    """The vzdump task a shutdown/stop ran inside: a stop-mode backup shuts the VM down with
    ``qm shutdown <vmid> --skiplock --keepActive`` (PVE/VZDump/QemuServer.pm ``stop_vm``, a qmshutdown
    task of its own) and starts it again when the backup is taken."""
    if winner is None or str(winner.get("type")) not in ("qmshutdown", "qmstop"):
        return None
    at = _start(winner)
    for t in tasks:
        end = t.get("endtime")
        if (str(t.get("type")) == "vzdump" and (_start(t) or at + 1) <= at
                and (not isinstance(end, (int, float)) or end >= at)):
            return t
    return None


def _task_item(task: Mapping, backup: Mapping | None = None) -> Evidence:
    verdict, what = TASK_VERDICTS[str(task["type"])]
    start = _start(task)
    assert start is not None
    when = datetime.fromtimestamp(start, tz=timezone.utc)
    details = {"type": task.get("type"), "status": task.get("status"), "endtime": task.get("endtime")}
    if backup is not None:
        what += " by a stop-mode backup (vzdump shuts the VM down, then starts it again)"
        details["backup"] = str(backup.get("upid", ""))
    return Evidence("pve_task", verdict, Confidence.HIGH,
                    f"{what} by {task.get('user', '?')} at {_stamp(start)}",
                    time=when, record=str(task.get("upid", "")) or None, details=details)


def _note(tasks: list[Mapping], why: str) -> Evidence:
    shown = ", ".join(_name(t) for t in tasks[-_LISTED:])
    more = f" and {len(tasks) - _LISTED} more" if len(tasks) > _LISTED else ""
    return Evidence("pve_task", None, Confidence.LOW, f"Proxmox tasks {shown}{more} {why}",
                    details={"tasks": [str(t.get("upid", "")) for t in tasks[-20:]]})


def task_evidence(tasks: Iterable[Mapping], window: BootWindow) -> list[Evidence]:
    """Evidence from the Proxmox tasks of one VM (``/nodes/{node}/tasks?vmid=``) about one boot end."""
    return attribute_tasks(tasks, window)


def planned_reboot_evidence(plan: Mapping | None) -> list[Evidence]:
    """pvepstore's own note of a reboot it was asked to do: ``orderly_reboot: <reason>``."""
    if not plan:
        return []
    when = plan.get("time")
    stamp = datetime.fromtimestamp(when, tz=timezone.utc) if isinstance(when, (int, float)) else None
    return [Evidence("pvepstore", VerdictKind.ORDERLY_REBOOT, Confidence.HIGH,
                     f"orderly_reboot: {plan.get('reason', '')}".strip(), time=stamp,
                     details={"requested_by": plan.get("user")})]
