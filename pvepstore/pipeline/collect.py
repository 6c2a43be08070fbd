"""Collecting one VM: gather → verdict → archive → spool → clear, restartable at every step.

The order is what makes it lose nothing and report nothing twice:

1. **gather** the records (through the guest, from the host volume, or from
   the ivshmem file) and the boot-end evidence;
2. build the incident event; its id is a hash of the VM and the records (and
   the ended boot), so a repeat after a crash builds the *same* event;
3. **archive** it (one atomic directory rename; a second time is a no-op);
4. **spool** it in the outbox (atomic file; idempotent by id);
5. remember the current boot id (the ended boot is now accounted for);
6. only then **clear** the records that went into it.

``kill -9`` between any two steps leaves the records in place (before 6) or
already safe (after 6); the next run repeats the missing steps and the
deterministic id makes the repeats no-ops.  After step 5 a rerun sees no ended
boot, so the rebuilt event is the records-only one, with the same id as
before (the ended boot only enters the id of incidents without records).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Callable, Protocol, Sequence

from ..analysis.bootend import (BootEnd, ended_boot_evidence, ended_window, planned_reboot_evidence,
                                watchdog_evidence)
from ..analysis.guestlog import ended_log_evidence
from ..analysis.hostlog import QemuIds
from ..analysis.evidence import EvidenceItem
from ..analysis.report import build_event
from ..pstore.model import Record
from ..vmstate import VmStateStore
from .archive import Archive
from .outbox import Outbox


ARCHIVED_MEMORY = 2048  # record hashes remembered as "archived, maybe not cleared yet"


@dataclass(frozen=True)
class InnerBoot:
    """The guest's own boot inside a QEMU run, for a backend whose boot id is the run (ivshmem, read
    on the host): asked of the guest when it answers, so a reset inside the same QEMU process that
    leaves no dump (``qm reset``, a watchdog) is seen as an ended boot too."""

    boot_id: str
    started: float | None
    boot_end: BootEnd
    boots: tuple[str, ...] = ()


@dataclass
class Gathered:
    """What one look at a VM found."""

    source: str  # "guest", "offline" or "ivshmem"
    records: list[Record]
    boot_id: str | None = None  # the guest's current boot id, when it answered
    boot_end: BootEnd | None = None  # how the previous boot ended, when the guest could tell
    evidence: list[EvidenceItem] = field(default_factory=list)  # e.g. Proxmox tasks
    backend: str = "pstore_blk"
    # When the current boot started, on the host's clock (None: unknown), and the guest's
    # own list of its boots (``journalctl --list-boots`` lines): the ended boot's lifetime.
    boot_started: float | None = None
    boots: list[str] = field(default_factory=list)
    keeps_panics: bool = False  # the backend writes a panic's dump (no record then means no panic)
    qemu: QemuIds | None = None  # the VM's running QEMU on this node (None: not running here, or unknown)
    inner: InnerBoot | None = None  # the guest's boot inside the run (boot_id is a QEMU run), when it answered
    kernel: str = ""  # the guest's running kernel (uname -r), when it answered: kept as state guest_kernel


class VmHandle(Protocol):
    """A VM as the collector sees it, whatever the transport."""

    vmid: int
    vm: dict  # vmid, node, name (and vm_uuid when known) for the report

    def gather(self) -> Gathered: ...

    def clear(self, records: Sequence[Record]) -> None:
        """Erase exactly these records (they are archived and spooled)."""


class VmStatus(str, Enum):
    """What one sweep visit of a VM came to (a str, so JSON and comparisons read as before)."""

    NOTHING = "nothing"
    COLLECTED = "collected"
    SKIPPED = "skipped"  # busy: picked up by the next sweep
    NOT_PROVISIONED = "not_provisioned"  # in scope, but provision never ran for its backend: a state, not a failure
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass
class VmResult:
    vmid: int
    status: VmStatus
    message: str = ""
    incident: str | None = None  # archive key
    verdict: str | None = None
    records: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # e.g. config and provisioned backend disagree

    def to_json(self) -> dict:
        return {"vmid": self.vmid, "status": VmStatus(self.status).value, "message": self.message,
                "incident": self.incident, "verdict": self.verdict, "records": self.records,
                "seconds": round(self.seconds, 3), "notes": list(self.notes)}


BOOT_ENDING = ("Panic", "Emergency", "Shutdown")  # kmsg_dump reasons after which the boot does not go on
VmState = VmStateStore  # the collector's name for pvepstore's per-VM state


@dataclass
class Collector:
    archive: Archive
    outbox: Outbox
    state: VmState
    sink_names: Sequence[str]
    clock: Callable[[], float] = time.time
    # Fault injection for tests: called with the name of each step before it runs.
    checkpoint: Callable[[str], None] = lambda step: None

    def collect(self, handle: VmHandle) -> VmResult:
        started = self.clock()
        with self.state.locked(handle.vmid):
            result = self._collect(handle)
        note = getattr(handle, "note", "")
        if note:
            result.notes.append(note)
            result.message = f"{result.message}; note: {note}" if result.message else f"note: {note}"
        result.seconds = self.clock() - started
        return result

    def _collect(self, handle: VmHandle) -> VmResult:
        vmid = handle.vmid
        self.checkpoint("gather")
        got = handle.gather()
        st = self.state.load(vmid)
        records = [r for r in got.records if not r.erased]
        # Records already archived and spooled whose clearing failed or was cut short:
        # clear them again, never report them twice.
        archived = set(st.get("archived", []))
        leftovers = [r for r in records if r.sha256 in archived]
        records = [r for r in records if r.sha256 not in archived]
        if leftovers:
            self.checkpoint("clear")
            handle.clear(leftovers)
        ended = None
        inner = None  # set when the boot that ended is the guest's own inside an unchanged QEMU run
        if got.boot_id and st.get("boot_id") and got.boot_id != st["boot_id"]:
            ended = st["boot_id"]
        elif (got.inner is not None and got.boot_id and got.boot_id == st.get("boot_id")
              and st.get("inner_boot_id") and got.inner.boot_id != st["inner_boot_id"]):
            ended, inner = st["inner_boot_id"], got.inner
        seen = {}
        if got.boot_id:  # the current boot and when it started (the first sighting's start is kept)
            same = got.boot_id == st.get("boot_id")
            started = st.get("boot_started") if same else None
            seen = {"boot_id": got.boot_id, "boot_started": started if started is not None else got.boot_started}
            # the QEMU running this boot, for the node's log once the boot ends (kept if unseen this time)
            seen["qemu"] = got.qemu.to_json() if got.qemu else (st.get("qemu") if same else None)
            if got.kernel:  # what a host read of the stopped VM names its records after (efi_pstore)
                seen["guest_kernel"] = got.kernel
            if got.inner is not None:
                same_inner = same and got.inner.boot_id == st.get("inner_boot_id")
                kept = st.get("inner_boot_started") if same_inner else None
                seen.update(inner_boot_id=got.inner.boot_id,
                            inner_boot_started=kept if kept is not None else got.inner.started)
            elif not same:
                seen.update(inner_boot_id=None, inner_boot_started=None)
        if not records and ended is None:
            if seen and seen != {k: st.get(k) for k in seen}:
                self.state.update(vmid, **seen, last_seen=self.clock())
            return VmResult(vmid, VmStatus.NOTHING, "no records, no ended boot")

        evidence: list[EvidenceItem] = list(got.evidence)
        # Without a boot id (ivshmem: read on the host) a Shutdown dump marks the ended boot.
        boot_ended = ended is not None or any(r.reason == "Shutdown" for r in records)
        if ended is not None:
            boot_end = inner.boot_end if inner is not None else got.boot_end
            end = replace(boot_end, ended_boot=ended) if boot_end else BootEnd(ended_boot=ended)
            evidence.append(ended_boot_evidence(end))
            evidence.extend(e for e in [watchdog_evidence(end)] if e is not None)
            evidence.extend(ended_log_evidence(end.log_tail, orderly=end.orderly in ("reboot", "poweroff")))
            more = getattr(handle, "boot_end_evidence", None)
            if more is not None:
                # Only tasks inside the ended boot's lifetime may explain its end (issue 11 #17).
                started = st.get("inner_boot_started" if inner is not None else "boot_started")
                started = started if isinstance(started, (int, float)) else None
                if inner is not None:
                    window = ended_window(ended, started, inner.boot_id, inner.started, inner.boots)
                else:
                    window = ended_window(ended, started, got.boot_id, got.boot_started, got.boots)
                window = replace(window, qemu=QemuIds.from_json(st.get("qemu")), qemu_after=got.qemu)
                evidence.extend(more(window))
        if boot_ended:
            evidence.extend(planned_reboot_evidence(st.get("planned_reboot")))
        now = datetime.fromtimestamp(self.clock(), tz=timezone.utc)
        event = build_event(records, vm=handle.vm, now=now, extra_evidence=evidence,
                            ended_boot=ended if not records else None, backend=got.backend,
                            keeps_panics=got.keeps_panics,
                            image={"path": f"{got.source}:{vmid}"})
        verdict = event["data"]["verdict"]

        self.checkpoint("archive")
        incident, _fresh = self.archive.store(vmid, event, event["data"]["evidence"], records, got.source)
        self.checkpoint("spool")
        self.outbox.enqueue(event, self.sink_names)
        # The ended boot is accounted for before the records go: a crash after this
        # point rebuilds the same records-only event id, never a second "reset" incident.
        self.checkpoint("state")
        changes = {"last_incident": incident.key, "last_collection": self.clock(),
                   "archived": (st.get("archived", []) + [r.sha256 for r in records])[-ARCHIVED_MEMORY:]}
        changes.update(seen)
        if boot_ended:
            changes["planned_reboot"] = None
        if not got.boot_id and any(r.reason in BOOT_ENDING for r in records):
            # read on the host while the VM is off (ivshmem): these dumps explain how its last QEMU run
            # ended, so the next run must not be compared with it (one incident, not a second "reset")
            changes.update(boot_id=None, boot_started=None, qemu=None)
        if got.inner is None and any(r.reason in BOOT_ENDING for r in records):
            # the dumps explain the guest's last boot; its next one is a baseline, not a second incident
            changes.update(inner_boot_id=None, inner_boot_started=None)
        self.state.update(vmid, **changes)
        if records:
            self.checkpoint("clear")
            handle.clear(records)
        return VmResult(vmid, VmStatus.COLLECTED, verdict["summary"], incident=incident.key,
                        verdict=verdict["kind"], records=len(records))
