"""A test double of ``pvepstore.guest`` (the contract the PVE side codes against), backed by the fake PVE.

The guest "sees" the pstore disk when the fake VM's *current* config has a
drive with the serial; verify is ok once a plan was applied and the disk is
visible. ``calls`` records every method call.  The probe is the real probe parser on a stock
Debian 12 guest's output (with the disk where the VM has it), assessed by the backend's own
rules, and the plan is the real plan engine on the backend's wishes; apply and verify are
simulated (a configured guest plans nothing more).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from pvepstore.errors import GuestError, UsageError
from pvepstore.guest import wire
from pvepstore.guest.plan import make_plan
from pvepstore.guest.probe import build_report
from pvepstore.guest.testing import reply
from pvepstore.pve.vmconfig import DRIVE_KEY_RE, parse_drive


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

    def probe(self, serial="pvepstore", disk_bytes=None, *, assess=None):
        self.g.calls.append(("probe", self.vmid, serial, disk_bytes))
        from tests.guest.conftest import probe_items  # the stock guest's probe output

        items = probe_items(("boot_id", f"boot-{self.g.boot.get(self.vmid, 0)}"), disk=self._disk_seen(serial))
        report = build_report(wire.parse(reply(*items)), serial, disk_bytes)
        return assess(report) if assess is not None else report

    def plan(self, report, *, wishes, remove_legacy=False):
        settings = wishes.settings
        self.g.calls.append(("plan", self.vmid, settings.get("kmsg_size"), settings.get("max_reason")))
        if self.vmid in self.g.configured:
            return Plan([])
        try:
            return make_plan(report, wishes, remove_legacy=remove_legacy)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def apply(self, plan, dry_run=False):
        self.g.calls.append(("apply", self.vmid, dry_run))
        if not dry_run:
            self.g.configured.add(self.vmid)
        return Outcome(True, plan.describe(), dry_run=dry_run)

    def verify(self, serial="pvepstore", *, assess, check):  # the live state is simulated
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
