"""A test double of ``pvepstore.guest`` (the contract the PVE side codes against), backed by the fake PVE.

The guest "sees" the pstore disk when the fake VM's *current* config has a
drive with the serial; verify is ok once a plan was applied and the disk is
visible. ``calls`` records every method call.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from pvepstore.errors import GuestError
from pvepstore.pve.vmconfig import DRIVE_KEY_RE, parse_drive


@dataclass
class Cap:
    status: str
    note: str = ""

    def to_json(self):
        return {"status": self.status, "note": self.note}


@dataclass
class Report:
    serial: str
    disk_seen: bool
    boot_id: str
    configured: bool
    capabilities: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    def to_json(self):
        return {"serial": self.serial, "disk_seen": self.disk_seen, "boot_id": self.boot_id,
                "capabilities": {k: v.to_json() for k, v in self.capabilities.items()}}


@dataclass
class Plan:
    changes: list

    @property
    def empty(self):
        return not self.changes

    def describe(self):
        return list(self.changes) or ["nothing to do: the guest is already as planned"]

    def to_json(self):
        return {"changes": self.changes}


@dataclass
class Outcome:
    ok: bool
    done: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    dry_run: bool = False

    def to_json(self):
        return {"ok": self.ok, "done": self.done, "problems": self.problems}


@dataclass
class GuestRecord:
    name: str
    data: bytes
    mtime: int = 0
    size: int = -1

    def to_json(self):
        return {"name": self.name, "size": self.size, "mtime": self.mtime}


@dataclass
class ClearResult:
    cleared: list
    not_cleared: dict


class FakeGuests:
    """One object per test: ``connect(target)`` for the pipeline, state per VM id."""

    def __init__(self, fake, reachable: bool = True):
        self.fake = fake
        self.reachable = reachable
        self.configured: set[int] = set()
        self.boot: dict[int, int] = {}
        self.records: dict[int, dict[str, bytes]] = {}
        self.calls: list[tuple] = []
        self.targets: list = []
        fake.reboot_hooks.append(lambda vmid: self.boot.__setitem__(vmid, self.boot.get(vmid, 0) + 1))

    def _vmid(self, target) -> int:
        return int(str(target.label).split()[-1])

    @contextmanager
    def connect(self, target):
        self.targets.append(target)
        vmid = self._vmid(target)
        if not self.reachable or not self.fake.vms[vmid].running:
            raise GuestError(f"{target.host}: connection refused", hint="is sshd running?")
        yield _Guest(self, vmid)


class _Guest:
    def __init__(self, guests: FakeGuests, vmid: int):
        self.g, self.vmid = guests, vmid

    def _disk_seen(self, serial):
        conf = self.g.fake.vms[self.vmid].config
        return any(DRIVE_KEY_RE.match(k) and parse_drive(v).get("serial") == serial for k, v in conf.items())

    def probe(self, serial="pvepstore", disk_bytes=None, **_backend_rules):  # assess=: the report is canned
        self.g.calls.append(("probe", self.vmid, serial, disk_bytes))
        seen = self._disk_seen(serial)
        return Report(serial, seen, f"boot-{self.g.boot.get(self.vmid, 0)}", self.vmid in self.g.configured,
                      {"oops": Cap("yes" if seen else "unknown", "non-fatal Oopses are kept"),
                       "panic": Cap("no", "pstore_blk never keeps panics")},
                      [] if seen else [f"no disk with serial {serial}"])

    def plan(self, report, kmsg_size=64, max_reason=2):
        self.g.calls.append(("plan", self.vmid, kmsg_size, max_reason))
        if report.configured:
            return Plan([])
        return Plan([f"write /etc/modprobe.d/pvepstore.conf (pstore_blk blkdev=/dev/disk/by-id/virtio-{report.serial} "
                     f"kmsg_size={kmsg_size} max_reason={max_reason})",
                     "write /etc/modules-load.d/pvepstore.conf"])

    def apply(self, plan, dry_run=False):
        self.g.calls.append(("apply", self.vmid, dry_run))
        if not dry_run:
            self.g.configured.add(self.vmid)
        return Outcome(True, plan.describe(), dry_run=dry_run)

    def verify(self, serial="pvepstore", **_backend_rules):
        self.g.calls.append(("verify", self.vmid))
        problems = []
        if not self._disk_seen(serial):
            problems.append(f"disk: /dev/disk/by-id/virtio-{serial} missing")
        if self.vmid not in self.g.configured:
            problems.append("backend: pstore_blk is not registered")
        return Outcome(not problems, problems=problems)

    def undo(self, dry_run=False):
        self.g.calls.append(("undo", self.vmid, dry_run))
        was = self.vmid in self.g.configured
        if not dry_run:
            self.g.configured.discard(self.vmid)
        return Outcome(True, ["restore /etc/modprobe.d/pvepstore.conf"] if was else [])

    def read_records(self, max_bytes=4 << 20):
        self.g.calls.append(("read_records", self.vmid))
        return [GuestRecord(n, d, 0, len(d)) for n, d in sorted(self.g.records.get(self.vmid, {}).items())]

    def clear(self, names):
        self.g.calls.append(("clear", self.vmid, list(names)))
        recs = self.g.records.get(self.vmid, {})
        done = [n for n in names if recs.pop(n, None) is not None]
        return ClearResult(done, {})

    def reboot(self):
        self.g.calls.append(("reboot", self.vmid))
        old = f"boot-{self.g.boot.get(self.vmid, 0)}"
        self.g.boot[self.vmid] = self.g.boot.get(self.vmid, 0) + 1
        return old
