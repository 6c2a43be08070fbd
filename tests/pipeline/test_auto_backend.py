"""backend: auto against the fake PVE: the choice per VM, its reasons, the record, no silent switch,
and status's capture matrix with what would turn each "no" into a "yes"."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pvepstore.backends import registry
from pvepstore.backends.auto import choose
from pvepstore.backends.capture import Event, IvshmemPolicy, VmFacts, matrix
from pvepstore.cli import ExitStatus
from pvepstore.pipeline import provision as prov
from pvepstore.pve import state
from tests.conftest import run_cli
from tests.fakepve.cluster_config import add_ha_resource, add_replication
from tests.pipeline.test_provision import IPCONFIG, context, ivshmem_node  # noqa: F401  (fixture)
from tests.pipeline.pveguest import FakeGuests

EFIDISK = "local-lvm:vm-{vmid}-disk-1,efitype=4m,pre-enrolled-keys=1,size=4M"


def as_root(ctx):
    """The run as pvepstore on the node as root (api.backend: local: pvesh as root@pam); the fake is
    still reached over https, the decision only reads the config's word."""
    ctx.cfg = replace(ctx.cfg, api=replace(ctx.cfg.api, backend="local"))
    return ctx


def decided(fake, vmid, *, root=False, **overrides):
    ctx = context(fake, FakeGuests(fake), dry_run=True, **overrides)
    res = prov.provision(as_root(ctx) if root else ctx, vmid, dry_run=True)
    assert res.auto is not None and res.auto.backend == res.backend
    return res


def passed_over(res) -> dict[str, str]:
    return {name: "; ".join(b.reason for b in blockers) for name, blockers in res.auto.passed_over}


def test_ovmf_with_efidisk0_gets_efi_pstore(fakepve):
    fakepve.add_vm(101, {"bios": "ovmf", "efidisk0": EFIDISK.format(vmid=101)})
    res = decided(fakepve, 101)
    assert res.backend == "efi_pstore" and not res.auto.passed_over
    assert "OVMF with efidisk0 local-lvm:vm-101-disk-1" in res.auto.why[0] and "migrates" in res.auto.why[0]
    assert not fakepve.writes() and not state.provision_record(fakepve.load_config(), 101)  # a dry run


def test_ovmf_without_efidisk0_falls_to_pstore_blk_and_says_why(fakepve):
    fakepve.add_vm(102, {"bios": "ovmf"})
    res = decided(fakepve, 102)
    assert res.backend == "pstore_blk"
    why = passed_over(res)
    assert "without an efidisk0" in why["efi_pstore"] and "root@pam" in why["ivshmem"]
    fix = dict(res.auto.passed_over)["efi_pstore"][0].fix
    assert fix == "add an efidisk0 (qm set 102 --efidisk0 <storage>:1,efitype=4m)"


def test_seabios_not_ha_as_root_gets_ivshmem(ivshmem_node):  # noqa: F811
    ivshmem_node.add_vm(103, {})
    res = decided(ivshmem_node, 103, root=True)
    assert res.backend == "ivshmem", res.auto.lines()
    assert "bios is seabios" in passed_over(res)["efi_pstore"]
    assert any("no live migration" in w for w in res.auto.why)  # the cost is part of the decision


def test_seabios_ha_managed_keeps_pstore_blk(ivshmem_node):  # noqa: F811
    ivshmem_node.add_vm(104, {})
    add_ha_resource(ivshmem_node, 104)
    res = decided(ivshmem_node, 104, root=True)
    assert res.backend == "pstore_blk" and "HA-managed" in passed_over(res)["ivshmem"]
    # without Sys.Audit on / the HA list is refused: /cluster/resources' hastate still tells
    ivshmem_node.privileges = {"/": {"VM.Audit", "VM.Config.Disk", "VM.Config.Options", "VM.PowerMgmt",
                                     "Datastore.Audit", "Datastore.AllocateSpace", "VM.Config.HWType"}}
    res = decided(ivshmem_node, 104, root=True)
    assert res.backend == "pstore_blk" and "HA-managed" in passed_over(res)["ivshmem"]
    assert ivshmem_node.calls("GET", "/cluster/ha/resources")[-1].status == 403


def test_replicated_vm_keeps_pstore_blk(ivshmem_node):  # noqa: F811
    ivshmem_node.add_vm(105, {})
    add_replication(ivshmem_node, 105, "pve2")
    res = decided(ivshmem_node, 105, root=True)
    assert res.backend == "pstore_blk" and "replication job" in passed_over(res)["ivshmem"]


def test_a_token_without_root_never_gets_ivshmem_unless_allowed(ivshmem_node):  # noqa: F811
    ivshmem_node.add_vm(106, {})
    res = decided(ivshmem_node, 106)  # https with an API token: Proxmox refuses ivshmem/hookscript
    assert res.backend == "pstore_blk" and "an API token never is" in passed_over(res)["ivshmem"]
    res = decided(ivshmem_node, 106, auto={"ivshmem": "allow"})  # the operator opted in
    assert res.backend == "ivshmem"
    res = decided(ivshmem_node, 106, root=True, auto={"ivshmem": "never"})
    assert res.backend == "pstore_blk" and "auto.ivshmem is never" in passed_over(res)["ivshmem"]


def test_a_named_backend_is_not_second_guessed(fakepve):
    fakepve.add_vm(107, {"bios": "ovmf", "efidisk0": EFIDISK.format(vmid=107)})
    res = prov.provision(context(fakepve, FakeGuests(fakepve), dry_run=True, backend="pstore_blk"), 107,
                         dry_run=True)
    assert res.backend == "pstore_blk" and res.auto is None
    res = prov.provision(context(fakepve, FakeGuests(fakepve), dry_run=True), 107, dry_run=True,
                         backend="pstore_blk")
    assert res.backend == "pstore_blk" and res.auto is None


def test_decision_is_recorded_and_a_vm_never_switches_by_itself(fakepve):
    fakepve.add_vm(100, {**IPCONFIG, "bios": "ovmf", "tags": "pvepstore"}, running=True)
    guests = FakeGuests(fakepve)
    res = prov.provision(context(fakepve, guests), 100)
    assert res.ok and res.backend == "pstore_blk"
    cfg = fakepve.load_config()
    assert state.load(cfg, 100)["auto"]["backend"] == "pstore_blk"
    # the operator adds an efidisk0: auto would now choose efi_pstore, but the VM keeps its backend
    fakepve.set_config(100, efidisk0=EFIDISK.format(vmid=100))
    writes = len(fakepve.writes())
    res = prov.provision(context(fakepve, guests), 100)
    assert res.backend == "pstore_blk" and res.auto.would_choose == "efi_pstore"
    assert len(fakepve.writes()) == writes  # nothing changed in the VM's config
    assert "`pvepstore provision 100 --backend efi_pstore`" in res.auto.switch_hint
    row = status_row(fakepve, 100)
    assert row["backend"] == "pstore_blk" and row["auto"]["would_choose"] == "efi_pstore", row
    text = run_cli("--config", str(fakepve.config_file()), "status").stdout
    assert "auto would choose efi_pstore now; the VM keeps pstore_blk" in text, text


def status_row(fake, vmid, **overrides):
    r = run_cli("--config", str(fake.config_file(**overrides)), "status", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    return next(v for v in r.json["vms"] if v["vmid"] == vmid)


def test_status_capture_matrix_and_hints(fakepve):
    fakepve.add_vm(100, {"bios": "ovmf", "tags": "pvepstore"})
    row = status_row(fakepve, 100)
    cells = {c["event"]: c for c in row["capture"]}
    assert list(cells) == [e.value for e in Event]
    assert row["backend"] == "pstore_blk" and row["auto"]["backend"] == "pstore_blk"
    assert cells["oops"]["captured"] and not cells["panic"]["captured"]
    assert any(h.startswith("efi_pstore: add an efidisk0") for h in cells["panic"]["improve"])
    assert any(h.startswith("ivshmem: allow ivshmem") and "live migration" in h for h in cells["panic"]["improve"])
    assert cells["host_stop"]["captured"] and cells["host_oom_kill"]["captured"] and not cells["hang"]["captured"]
    assert cells["qemu_crash"]["captured"] and "ids of the VM's QEMU" in cells["qemu_crash"]["how"]
    # with an efidisk0 the unprovisioned VM would get efi_pstore: its matrix says so
    fakepve.set_config(100, efidisk0=EFIDISK.format(vmid=100))
    row = status_row(fakepve, 100)
    cells = {c["event"]: c for c in row["capture"]}
    assert row["backend"] == "efi_pstore" and cells["panic"]["captured"]
    assert not cells["clean_reboot"]["how"].startswith("a Shutdown dump")  # always_kmsg_dump is off
    row = status_row(fakepve, 100, efi_pstore={"always_kmsg_dump": True})
    assert {c["event"]: c for c in row["capture"]}["clean_reboot"]["how"].startswith("a Shutdown dump")
    assert "kernel.softlockup_panic=1" in {c["event"]: c for c in row["capture"]}["hang"]["improve"][0]
    # no Sys.Syslog: a host OOM kill cannot be told, and the hint says what to grant
    fakepve.privileges = {"/vms": {"VM.Audit"}, "/storage": {"Datastore.Audit"}}
    cells = {c["event"]: c for c in status_row(fakepve, 100)["capture"]}
    assert not cells["host_oom_kill"]["captured"] and not cells["qemu_crash"]["captured"]
    assert cells["qemu_crash"]["improve"] == cells["host_oom_kill"]["improve"]
    assert cells["host_oom_kill"]["improve"] == ["grant the API token Sys.Syslog on /nodes/pve1 (pvepstore "
                                                 "reads the node's journal)"]
    r = run_cli("--config", str(fakepve.config_file()), "status")
    assert "captures: oops yes, panic yes, clean_reboot yes" in r.stdout and "host_oom_kill NO" in r.stdout, r


# -- the pure decision: every backend tried strongest first, on synthetic facts -----------------

@pytest.mark.parametrize("conf,ha,rep,root,policy,want", [
    ({"bios": "ovmf", "efidisk0": "local:100/vm-100-disk-0.qcow2,efitype=4m"}, True, True, False,
     IvshmemPolicy.NEVER, "efi_pstore"),  # efi fits HA and replicated VMs: it migrates with them
    ({"bios": "ovmf"}, False, False, True, IvshmemPolicy.IF_ROOT, "ivshmem"),
    ({}, None, False, True, IvshmemPolicy.IF_ROOT, "pstore_blk"),  # HA unknown: never assumed "not HA"
    ({}, False, None, True, IvshmemPolicy.IF_ROOT, "pstore_blk"),
    ({"ivshmem": "size=32,name=looking-glass"}, False, False, True, IvshmemPolicy.ALLOW, "pstore_blk"),
    ({"ivshmem": "size=1,name=pvepstore-100"}, False, False, True, IvshmemPolicy.IF_ROOT, "ivshmem"),
])
def test_choose(conf, ha, rep, root, policy, want):
    facts = VmFacts(100, "pve1", conf, ha_managed=ha, replicated=rep, root_options=root, ivshmem_policy=policy)
    got = choose(facts, registry.all_backends())
    assert got.backend == want, got.lines()
    # the matrix of the chosen backend keeps a panic exactly when the backend does
    cells = {c.event: c for c in matrix(registry.get(want), registry.all_backends(), facts)}
    assert cells[Event.PANIC].captured == (want != "pstore_blk")
    # a hang: only through the guest (journal, watchdog bootstatus); a backend read on the host says it sees none
    assert not cells[Event.HANG].captured
    assert ("leaves no trace" in cells[Event.HANG].how) == registry.get(want).host_reads_running
