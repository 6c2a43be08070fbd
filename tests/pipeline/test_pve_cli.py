"""The CLI commands provision/unprovision/status/read, in-process against the fake PVE."""

from __future__ import annotations

import pytest

from pvepstore.cli import ExitStatus
from pvepstore.pipeline import provision as prov
from tests.conftest import run_cli
from tests.pipeline.pveguest import FakeGuests
from tests.pipeline.test_provision import IPCONFIG, Target


@pytest.fixture
def guests(fakepve, monkeypatch):
    g = FakeGuests(fakepve)
    monkeypatch.setattr(prov, "default_guest_connect", g.connect)
    monkeypatch.setattr(prov, "guest_target", lambda ssh, host, vmid: Target(host, f"VM {vmid}"))
    return g


def test_provision_dry_run_then_for_real(fakepve, guests):
    fakepve.add_vm(100, {**IPCONFIG, "tags": "pvepstore"}, running=True)
    conf = str(fakepve.config_file())
    r = run_cli("--config", conf, "provision", "100", "--dry-run")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert "dry run: nothing was changed" in r.stdout and "API calls that would be made:" in r.stdout
    assert "POST /nodes/pve1/qemu/100/config virtio0=local-lvm:0.5," in r.stdout
    assert "guest changes that would be made:" in r.stdout and not fakepve.writes()
    r = run_cli("--config", conf, "provision", "100")
    assert r.status == ExitStatus.SUCCESS and "result: provisioned" in r.stdout
    r = run_cli("--config", conf, "status", "--json")
    (row,) = r.json["vms"]
    assert row["provisioned"] and row["backend_ok"] and row["disk"] == "virtio0"
    r = run_cli("--config", conf, "status")
    assert "virtio0" in r.stdout and "yes" in r.stdout


def test_provision_pending_exit_status(fakepve, guests):
    fakepve.add_vm(100, {**IPCONFIG, "hotplug": "0"}, running=True)
    r = run_cli("--config", str(fakepve.config_file()), "provision", "100")
    assert r.status == ExitStatus.PVE and "PENDING" in r.stdout


def test_read_offline_and_clear(fakepve, guests, unpack_dir, monkeypatch):
    from tests.pve.test_offline import pstore_vm
    from pvepstore.pve import offline
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir)
    runner = fakepve.lvm_runner()
    monkeypatch.setattr(offline, "SubprocessRunner", lambda: runner)  # LVM commands answered by the fake
    conf = str(fakepve.config_file())
    r = run_cli("--config", conf, "read", "100", "--offline", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert sorted(x["name"] for x in r.json["records"]) == sorted(fx.kernel_view)
    r = run_cli("--config", conf, "read", "100")  # the VM is off: from the volume
    assert "read offline from local-lvm:" in r.stdout and "dmesg-pstore_blk-0" in r.stdout
    r = run_cli("--config", conf, "read", "100", "--offline", "--clear")
    assert "cleared: dmesg-pstore_blk-0, dmesg-pstore_blk-1" in r.stdout
    fakepve.start_qemu(100)
    r = run_cli("--config", conf, "read", "100", "--offline")
    assert r.status == ExitStatus.BUSY and "running" in r.stderr


def test_unprovision_and_api_errors(fakepve, guests):
    fakepve.add_vm(100, IPCONFIG, running=True)
    conf = str(fakepve.config_file())
    assert run_cli("--config", conf, "provision", "100").status == ExitStatus.SUCCESS
    r = run_cli("--config", conf, "unprovision", "100", "--delete-disk")
    assert r.status == ExitStatus.SUCCESS and "disk: deleted virtio0" in r.stdout
    r = run_cli("--config", str(fakepve.config_file("bad.yaml", api={"token_value": "wrong"})), "status")
    assert r.status == ExitStatus.PVE and "401" in r.stderr and "hint:" in r.stderr
    r = run_cli("--config", conf, "provision", "999")
    assert r.status == ExitStatus.PVE and "does not exist" in r.stderr
