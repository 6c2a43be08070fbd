"""A backend is one module plus one registry entry (issue 12): a backend defined and registered
here, with no edit anywhere else, is a ``--backend`` choice and a valid ``backend`` in the config,
and provision, status, collect and unprovision run it against the fake PVE and the guest double."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from pvepstore.backends import registry
from pvepstore.backends.base import Backend, ProvisionOptions, ProvisionResult, PveSummary
from pvepstore.cli import ExitStatus
from pvepstore.errors import UsageError
from pvepstore.guest import rules
from pvepstore.guest.plan import GuestWishes, WantedFile
from pvepstore.guest.probe import Capability
from pvepstore.pipeline.collect import Gathered
from pvepstore.pipeline.handles import not_provisioned_error
from pvepstore.pstore.files import record_from_file
from pvepstore.pve import state
from pvepstore.pve.address import resolve_address
from pvepstore.pve.inventory import locate
from tests.conftest import run_cli
from tests.pipeline.test_pve_cli import guests  # noqa: F401 (fixture)
from tests.pipeline.test_provision import IPCONFIG

NAME = "nullpve"
OOPS = b"Oops#1 Part1\n<4>[   12.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000\n"


def _null_assess(r):
    return rules.assess(r, target=NAME, configured=lambda r: False,
                        capabilities=lambda r: {"oops": Capability("yes", "a test double keeps Oopses")},
                        problems=lambda r: rules.problems_with(r, lambda r, add: None), costs=lambda r: [])


# The backend's guest rules, as a rule module has them (assess, settings, wishes, verify)
NULL_RULES = SimpleNamespace(
    assess=_null_assess, settings=lambda r: {"backend": NAME},
    wishes=lambda r, s: GuestWishes(backend=NAME, settings=dict(s), module=NAME,
                                    files=(WantedFile(f"/etc/pvepstore/{NAME}.conf", b"on\n", reason="test"),)),
    verify=lambda r: None)


class NullResult(ProvisionResult):
    """The shared result as it is: this backend has no Proxmox side to add."""

    def summary(self) -> PveSummary:
        return PveSummary(items=[("proxmox", "nothing to change")], head=f"{NAME} backend")


@dataclass
class NullHandle:
    vmid: int
    vm: dict
    cleared: list = field(default_factory=list)
    note: str = ""

    def gather(self) -> Gathered:
        return Gathered(source=NAME, records=[record_from_file("dmesg-nullpve-1", OOPS, 1.0)], backend=NAME)

    def clear(self, records) -> None:
        self.cleared += [r.name for r in records]


class NullPve(Backend):
    """No Proxmox change (like efi_pstore); the guest is configured through its session."""

    name = NAME
    summary = "a test double"
    guest_rules = NULL_RULES
    handles: list = []

    def provision(self, ctx, vmid: int, opts: ProvisionOptions) -> NullResult:
        cfg, api = ctx.cfg, ctx.api
        vm = locate(api, vmid)
        res = NullResult(vmid, vm.node, opts.dry_run, running=True)
        vm_cfg = cfg.for_vm(vmid)
        res.address = resolve_address(api, vm.node, vmid, vm_cfg.ssh, api.get(f"nodes/{vm.node}/qemu/{vmid}/config"))
        with ctx.guest_connect(ctx.make_target(vm_cfg.ssh, res.address.host, vmid)) as guest:
            res.probe = self.probe(guest, vm_cfg.disk.serial)
            plan = self.plan(guest, res.probe, cfg)
            res.plan = list(plan.describe())
            res.applied = guest.apply(plan, dry_run=opts.dry_run)
            if not opts.dry_run:
                res.verify = self.verify(guest, vm_cfg.disk.serial)
                state.update(cfg, vmid, provision={"backend": NAME, "node": vm.node, "at": ctx.clock()})
        return res

    def pve_undo(self, ctx, vmid: int, res, *, delete_disk: bool) -> None:
        res.changes.append("nothing to take back")

    def kept_state(self, rec: dict) -> dict:
        return {"backend": NAME}

    def status_row(self, ctx, vm, row) -> None:
        rec = state.provision_record(ctx.cfg, vm.vmid)
        row.provisioned = rec.get("backend") == NAME and not rec.get("removed")
        row.disk = NAME if row.provisioned else None

    def open_records(self, cfg, api, ref, where, choice, *, allow_offline=True, connect_guest=None):
        if not choice.provisioned:
            raise not_provisioned_error(ref.vmid, choice, "never provisioned")
        handle = NullHandle(ref.vmid, {"vmid": ref.vmid, "node": ref.node, "name": ref.name})
        self.handles.append((handle, where))
        return handle

    def read_host(self, cfg, vmid: int, *, clear: bool = False, runner=None):
        raise UsageError("nothing on the host")


@pytest.fixture
def nullpve():
    registry.register(NullPve)
    NullPve.handles = []
    try:
        yield registry.get(NAME)
    finally:
        registry.unregister(NAME)


def test_registered_backend_is_a_name_and_unregistered_is_gone(nullpve):
    assert NAME in registry.names() and registry.names()[:2] == ("pstore_blk", "ivshmem")
    assert isinstance(registry.get(NAME), NullPve)
    registry.unregister(NAME)
    assert NAME not in registry.names()
    with pytest.raises(UsageError):
        registry.get(NAME)


def test_a_new_backend_needs_no_edit_outside_its_module(fakepve, guests, nullpve):  # noqa: F811
    # the guest double verifies a pstore_blk-shaped guest: it wants to see a disk with the serial
    fakepve.add_vm(100, {**IPCONFIG, "tags": "pvepstore", "virtio1": "local-lvm:vm-100-disk-1,serial=pvepstore"},
                   running=True)
    conf = str(fakepve.config_file(vms={100: {"backend": NAME}}))  # the config accepts the name
    r = run_cli("--config", conf, "provision", "100", "--backend", "no-such-backend")
    assert r.status == ExitStatus.USAGE and NAME in r.stderr  # listed among the choices
    r = run_cli("--config", conf, "provision", "100", "--backend", NAME)
    assert r.status == ExitStatus.SUCCESS, (r.stdout, r.stderr)
    assert f"provision, {NAME} backend" in r.stdout and "proxmox: nothing to change" in r.stdout
    assert "result: provisioned" in r.stdout and not fakepve.writes()  # no Proxmox change
    r = run_cli("--config", conf, "status", "--json")
    (row,) = r.json["vms"]
    assert row["provisioned"] and row["disk"] == NAME and row["backend_ok"]
    r = run_cli("--config", conf, "collect", "100", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert r.json["records"] == 1 and r.json["status"] == "collected"
    ((handle, where),) = NullPve.handles
    assert handle.cleared == ["dmesg-nullpve-1"] and where.running and where.local
    r = run_cli("--config", conf, "unprovision", "100")
    assert r.status == ExitStatus.SUCCESS and "proxmox: nothing to take back" in r.stdout
    rec = state.provision_record(fakepve.load_config(), 100)
    assert rec["backend"] == NAME and rec["removed"]
