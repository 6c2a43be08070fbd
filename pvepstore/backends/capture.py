"""What a VM's setup captures, and what would turn a "no" into a "yes" (pure: facts in, cells out).

The facts are what pvepstore can read about a VM without touching the guest
(:class:`VmFacts`, gathered by :mod:`pvepstore.pipeline.autoselect`); each backend says
which boot ends its records keep (``Backend.captures``) and what stands in the way of
using it for a VM (``Backend.blockers``).  :func:`matrix` combines both with the host-side
evidence every backend shares (the guest's boot history, Proxmox's task log, the node's
journal) into one row per :class:`Event`.  ``backend: auto`` (:mod:`.auto`) uses the same
blockers, so the status hints and the automatic choice never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:
    from .base import Backend


class Event(str, Enum):
    """How a boot can end (the rows of the capture matrix, in the order status shows them)."""

    OOPS = "oops"
    PANIC = "panic"
    CLEAN_REBOOT = "clean_reboot"
    POWEROFF = "poweroff"
    HOST_STOP = "host_stop"
    HOST_OOM_KILL = "host_oom_kill"
    QEMU_CRASH = "qemu_crash"
    HANG = "hang"


class IvshmemPolicy(str, Enum):
    """``auto.ivshmem``: may ``backend: auto`` pick ivshmem (it costs the VM its live migration)?"""

    IF_ROOT = "if-root"  # when pvepstore's API identity may set ivshmem/hookscript (api.backend: local)
    ALLOW = "allow"      # the operator opted in (sets the two options by hand if the identity cannot)
    NEVER = "never"


@dataclass(frozen=True)
class VmFacts:
    """What the Proxmox side says about one VM (no guest contact).  ``None``: could not be read."""

    vmid: int
    node: str
    conf: Mapping[str, str]
    ha_managed: bool | None = None
    replicated: bool | None = None
    root_options: bool = False  # the API identity may set hookscript/ivshmem (root@pam itself)
    ivshmem_policy: IvshmemPolicy = IvshmemPolicy.IF_ROOT
    host_log: bool | None = None  # the node's journal is readable (Sys.Syslog on /nodes/<node>)
    always_kmsg_dump: bool = False  # efi_pstore.always_kmsg_dump in the config

    @property
    def watchdog(self) -> str | None:
        return self.conf.get("watchdog") or None


@dataclass(frozen=True)
class Blocker:
    """Why a backend cannot serve a VM now, and the step that would change it."""

    reason: str
    fix: str

    def to_json(self) -> dict:
        return {"reason": self.reason, "fix": self.fix}


@dataclass(frozen=True)
class Cell:
    event: Event
    captured: bool
    how: str                  # where the answer comes from (yes) or why there is none (no)
    improve: tuple[str, ...] = ()  # what would turn the no into a yes

    def to_json(self) -> dict:
        return {"event": self.event.value, "captured": self.captured, "how": self.how,
                "improve": list(self.improve)}


HOST_LOG_FIX = "grant the API token Sys.Syslog on /nodes/{node} (pvepstore reads the node's journal)"
RECORD_EVENTS = (Event.OOPS, Event.PANIC, Event.CLEAN_REBOOT, Event.POWEROFF)


def stronger_hints(event: Event, current: "Backend", backends: Iterable["Backend"], facts: VmFacts) -> tuple[str, ...]:
    """What each other backend that keeps ``event`` would take: its fixes, or "switch" when it fits."""
    out: list[str] = []
    for b in sorted(backends, key=lambda b: -b.preference):
        if b.name == current.name or event not in b.captures(facts):
            continue
        blockers = b.blockers(facts)
        if blockers:
            out.append(f"{b.name}: " + "; ".join(x.fix for x in blockers))
        else:
            cost = "; ".join(b.costs(facts))
            out.append(f"switch to {b.name} (`pvepstore provision {facts.vmid} --backend {b.name}`)"
                       + (f": {cost}" if cost else ""))
    return tuple(out)


def matrix(current: "Backend", backends: Iterable["Backend"], facts: VmFacts) -> list[Cell]:
    """One cell per :class:`Event` for a VM set up with ``current``."""
    backends = list(backends)
    kept = current.captures(facts)
    cells: list[Cell] = []
    for event in RECORD_EVENTS:
        if event in kept:
            cells.append(Cell(event, True, kept[event]))
        elif event in (Event.CLEAN_REBOOT, Event.POWEROFF):
            # no record, but the guest's boot history tells an orderly shutdown from a crash
            cells.append(Cell(event, True, "no record: from the guest's boot history (an orderly shutdown)"))
        else:
            cells.append(Cell(event, False, f"{current.name} keeps no {event.value} record",
                              stronger_hints(event, current, backends, facts)))
    cells.append(Cell(Event.HOST_STOP, True, "from Proxmox's task log (qmstop/hastop in the boot's lifetime)"))
    if facts.host_log:
        cells.append(Cell(Event.HOST_OOM_KILL, True, "from the node's journal (the OOM killer names the "
                          "VM's qemu.slice scope)"))
    else:
        why = "the node's journal is not readable" if facts.host_log is False else "the node's journal was not checked"
        cells.append(Cell(Event.HOST_OOM_KILL, False, f"{why}: a killed QEMU looks like an unexpected reset",
                          (HOST_LOG_FIX.format(node=facts.node),)))
    if facts.host_log:
        cells.append(Cell(Event.QEMU_CRASH, True, "from the node's journal: the kernel's segfault/trap line of a "
                          "QEMU thread, or QEMU's own assertion, matched by the ids of the VM's QEMU that the sweep "
                          "on its node recorded while the boot ran"))
    else:
        cells.append(Cell(Event.QEMU_CRASH, False, "the node's journal is not read: a crashed QEMU looks like an "
                          "unexpected reset", (HOST_LOG_FIX.format(node=facts.node),)))
    cells.append(hang_cell(current, kept, facts))
    return cells


def hang_cell(current: "Backend", kept: Mapping[Event, str], facts: VmFacts) -> Cell:
    """A hung guest writes nothing by itself; only a panic it is made to raise leaves a record."""
    if Event.PANIC in kept:
        fix = ("set kernel.softlockup_panic=1 and kernel.hung_task_panic=1 in the guest: a lockup then "
               f"panics and {current.name} keeps it as a panic (pvepstore does not set them)")
    else:
        fix = "a panic-capable backend first (a hang can only be kept as a panic), then kernel.softlockup_panic=1"
    if current.host_reads_running:
        # read on the host: a reset inside the same QEMU process (a watchdog's, or `qm reset`) starts no
        # new QEMU run; only the guest's own boot id, when it answers over SSH, shows it
        how = (f"{current.name} is read on the host: a hung guest writes no dump, and a watchdog reset or "
               "`qm reset` inside the same QEMU process is seen only while the guest answers SSH (its boot id, "
               "journal and watchdog bootstatus); otherwise it leaves no trace")
        return Cell(Event.HANG, False, how, (fix,))
    how = ("a hung guest writes no dump; a lockup/hung-task report is seen only when the guest's persistent "
           "journal kept it (read with the boot history through the guest)")
    if facts.watchdog:
        how += (f"; its watchdog ({facts.watchdog}) says in the next boot that it reset the guest (bootstatus), "
                "read with the boot history: hang")
    return Cell(Event.HANG, False, how, (fix,))


def capture_table(cells: Iterable[Cell]) -> Mapping[str, bool]:
    return {c.event.value: c.captured for c in cells}
