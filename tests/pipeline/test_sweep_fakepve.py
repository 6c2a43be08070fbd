"""The sweep end to end against the fake Proxmox node: a stopped VM's volume holds real Oopses."""

from __future__ import annotations

import json

import pytest

from pvepstore.cli import ExitStatus
from tests.conftest import load_fixtures, run_cli
from tests.pipeline.receiver import Receiver

FIXTURES = {f.name: f for f in load_fixtures()}


@pytest.fixture
def stopped_vm_with_oopses(fakepve, unpack_dir):
    fx = FIXTURES["oops-deflate"]
    fakepve.add_vm(101, config={"tags": "pvepstore"}, disk_storage="local")
    vol = fakepve.allocate("local", 101, 1 << 20)
    fakepve.place_image(vol.volid, fx.unpack(unpack_dir))
    fakepve.set_config(101, virtio1=f"{vol.volid},backup=0,discard=on,replicate=0,serial=pvepstore,size=1M")
    fakepve.add_vm(102, config={"tags": "other"}, disk_storage="local")  # out of scope
    return fakepve, vol, fx


def test_sweep_collects_archives_forwards_and_clears_then_does_nothing(stopped_vm_with_oopses):
    fake, vol, fx = stopped_vm_with_oopses
    with Receiver() as rx:
        config = fake.config_file(sinks=[{"type": "webhook", "url": rx.url + "/hook"}])
        r = run_cli("--config", str(config), "sweep", "--json")
        assert r.status == ExitStatus.SUCCESS, r.stderr
        doc = r.json
        assert [v["vmid"] for v in doc["vms"]] == [101]
        (vm,) = doc["vms"]
        assert (vm["status"], vm["verdict"], vm["records"]) == ("collected", "kernel_oops", 2)
        assert len(rx.ids()) == 1
        event = rx.requests[0][2]
        assert event["data"]["verdict"]["kind"] == "kernel_oops"
        assert "pvepstore_oops_write" in event["data"]["verdict"]["summary"]
        # the archive holds the kernel's exact bytes
        r = run_cli("--config", str(config), "incidents", "list", "--json")
        (row,) = r.json
        shown = run_cli("--config", str(config), "incidents", "show", row["id"])
        assert "BUG: kernel NULL pointer dereference" in shown.stdout
        archived = fake.state_dir / "archive" / "101" / row["id"] / "records"
        assert {p.name: p.read_bytes() for p in archived.iterdir()} == fx.kernel_view
        # cleared on the volume exactly as the kernel erases: datalen 0, data kept
        data = fake.volume_bytes(vol.volid)
        for zone in (0, 1):
            assert data[zone * 65536 + 4:zone * 65536 + 8] == b"\0\0\0\0"
            assert data[zone * 65536:zone * 65536 + 4] == b"DBGC"
        again = run_cli("--config", str(config), "sweep", "--json")
        assert [v["status"] for v in again.json["vms"]] == ["nothing"]
        assert len(rx.ids()) == 1


def test_sweep_skips_a_locked_vm_and_reports_partial_for_failures(stopped_vm_with_oopses):
    fake, vol, fx = stopped_vm_with_oopses
    fake.set_config(101, lock="backup")
    config = fake.config_file()
    r = run_cli("--config", str(config), "sweep", "--json")
    (vm,) = r.json["vms"]
    assert vm["status"] in ("skipped", "failed") and "backup" in vm["message"]
    fake.set_config(101, lock=None)
    fake.start_qemu(101)  # QEMU runs although the API's status lags: never touch the volume
    r = run_cli("--config", str(config), "sweep", "--json")
    (vm,) = r.json["vms"]
    assert vm["status"] != "collected"
    assert fake.volume_bytes(vol.volid)[4:8] != b"\0\0\0\0"


def test_install_timer_writes_units_with_the_program_path(tmp_path, monkeypatch):
    import shutil as _shutil
    monkeypatch.setattr(_shutil, "which", lambda name: "/usr/local/bin/pvepstore" if name == "pvepstore" else None)
    r = run_cli("install-timer", "--unit-dir", str(tmp_path), "--no-enable")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    service = (tmp_path / "pvepstore-sweep.service").read_text()
    assert "ExecStart=/usr/local/bin/pvepstore sweep --quiet" in service
    assert "OnUnitInactiveSec=5min" in (tmp_path / "pvepstore-sweep.timer").read_text()


def test_incidents_on_an_empty_archive_and_bad_ids(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"state_dir: {tmp_path}/state\n")
    r = run_cli("--config", str(config), "incidents", "list")
    assert r.status == ExitStatus.SUCCESS and "no incidents" in r.stdout
    r = run_cli("--config", str(config), "incidents", "show", "nope")
    assert r.status == ExitStatus.INPUT and "hint:" in r.stderr
    r = run_cli("--config", str(config), "incidents", "list", "--since", "yesterday-ish")
    assert r.status == ExitStatus.USAGE


def test_a_vm_that_disappears_mid_sweep_fails_alone(stopped_vm_with_oopses, unpack_dir):
    fake, vol, fx = stopped_vm_with_oopses
    fake.add_vm(103, config={"tags": "pvepstore"}, disk_storage="local")
    config = fake.config_file()
    from pvepstore.pipeline import handles
    real_open = handles.OfflineVm.gather

    def vanish(self):
        if self.vmid == 103:  # deleted between the listing and the visit
            fake.paths.vm_config("pve1", 103).unlink()
        return real_open(self)

    handles.OfflineVm.gather = vanish
    try:
        r = run_cli("--config", str(config), "sweep", "--json")
    finally:
        handles.OfflineVm.gather = real_open
    by = {v["vmid"]: v for v in r.json["vms"]}
    assert by[101]["status"] == "collected"
    assert by[103]["status"] in ("failed", "skipped") and by[103]["message"]
    assert r.status == (ExitStatus.PARTIAL if by[103]["status"] == "failed" else ExitStatus.SUCCESS)


def test_a_corrupt_volume_is_reported_not_fatal(fakepve):
    fakepve.add_vm(101, config={"tags": "pvepstore"}, disk_storage="local")
    vol = fakepve.allocate("local", 101, 1 << 20)
    import os
    with open(vol.backing, "r+b") as f:  # a hostile guest filled its disk with signatures and junk
        f.write((b"DBGC" + os.urandom(60)) * 4096)
    fakepve.set_config(101, virtio1=f"{vol.volid},backup=0,discard=on,replicate=0,serial=pvepstore,size=1M")
    r = run_cli("--config", str(fakepve.config_file()), "sweep", "--json")
    assert r.status in (ExitStatus.SUCCESS, ExitStatus.PARTIAL), r.stderr
    (vm,) = r.json["vms"]
    assert vm["status"] in ("nothing", "collected", "failed")
    assert "internal error" not in vm["message"]
