"""The sweep end to end against the fake Proxmox node: a stopped VM's volume holds real Oopses."""

from __future__ import annotations

import json
import time

import pytest

from pvepstore.cli import ExitStatus
from tests.conftest import FIXTURES as FIX_DIR, load_fixtures, run_cli
from tests.pipeline.receiver import Receiver

FIXTURES = {f.name: f for f in load_fixtures()}
OOPS = (FIX_DIR / "oops-nocompress" / "kernel" / "dmesg-pstore_blk-0").read_bytes()


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
        (row,) = r.json["incidents"]
        assert r.json["skipped"] == []
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
    vol103 = fake.allocate("local", 103, 1 << 20)  # provisioned: a pstore disk is attached
    fake.set_config(103, virtio1=f"{vol103.volid},backup=0,discard=on,replicate=0,serial=pvepstore,size=1M")
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


# -- issue 11 #17: the task that ended the PREVIOUS boot is never blamed -----------------------------

class RunningGuest:
    """The guest side of a running VM 101 as the sweep's SSH transport sees it (wire-format replies)."""

    def __init__(self):
        self.boot_id, self.uptime, self.history = "", 0.0, []  # history: boot ids, oldest first
        self.tail = ""
        self.records: dict[str, bytes] = {}
        self.watchdogs = ""  # /sys/class/watchdog lines: "watchdog0 <bootstatus> <identity>"

    def boot(self, boot_id: str, uptime: float, tail: str = "", watchdogs: str = "") -> None:
        self.boot_id, self.uptime, self.tail, self.watchdogs = boot_id, uptime, tail, watchdogs
        self.history.append(boot_id)

    def connect(self, target):
        from pvepstore.guest.testing import FakeTransport, Recorded, reply

        recs = [("rec", n, str(len(d)), str(int(time.time())), d) for n, d in sorted(self.records.items())]
        boots = "\n".join(f"{i - len(self.history) + 1:>2} {b.replace('-', '')} Thu 2026-11-26 04:43:34 UTC"
                          for i, b in enumerate(self.history))
        history = reply(("boot_id", self.boot_id), ("uptime", f"{self.uptime:.2f}"), ("uname", "6.1.0-56-amd64"),
                        ("now", str(int(time.time()))), ("persistent", "yes"), ("boots", boots),
                        ("prev_tail", self.tail), ("watchdogs", self.watchdogs))
        guest = self

        class Transport(FakeTransport):
            def run(self, name, script, args, **kw):
                if name == "clear":
                    for n in args:
                        guest.records.pop(str(n), None)
                return super().run(name, script, args, **kw)

        return Transport([Recorded("records", 0, reply(("pstorefs", "pstore"), *recs)),
                          Recorded("history", 0, history),
                          Recorded("clear", 0, reply(*[("cleared", n, "ok") for n in self.records]))])


BOOT_A, BOOT_B, BOOT_C = ("%08x-1111-2222-3333-444455556666" % i for i in (0xA, 0xB, 0xC))
POWEROFF_TAIL = ("1750000000.1 vm101 systemd[1]: Reached target poweroff.target - System Power Off.\n"
                 "1750000000.2 vm101 systemd-journald[1]: Journal stopped\n")


@pytest.fixture
def running_vm(fakepve, monkeypatch):
    from pvepstore.guest import SshTransport
    from pvepstore.pve.api import connect

    fakepve.add_vm(101, config={"tags": "pvepstore"}, disk_storage="local")
    fakepve.start_qemu(101)
    guest = RunningGuest()
    monkeypatch.setattr(SshTransport, "connect", staticmethod(guest.connect))
    config = fakepve.config_file(vms={101: {"ssh": {"host": "10.0.0.101"}}})
    return fakepve, guest, config, connect(fakepve.load_config())


def _api_task(fake, api, action: str, at: float) -> None:
    """POST status/<action> through the fake API; the task is dated ``at`` (as if it ran then)."""
    upid = api.write("POST", f"nodes/pve1/qemu/101/status/{action}", why=action)
    fake.tasks[upid].starttime = int(at)


def _sweep(config):
    r = run_cli("--config", str(config), "sweep", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    (vm,) = r.json["vms"]
    return vm


@pytest.mark.parametrize("seen_boot_b", [False, True], ids=["B-never-seen", "B-seen-running"])
def test_stop_start_oops_then_clean_shutdown_never_blames_the_earlier_stop(running_vm, seen_boot_b):
    fake, guest, config, api = running_vm
    now = time.time()
    guest.boot(BOOT_A, uptime=400)  # boot A started at now-400
    assert _sweep(config)["status"] == "nothing"  # pvepstore now knows boot A and when it started
    from pvepstore.pve import state
    # ... and its kernel, which a host read of efi_pstore's Shutdown dumps names its files after
    assert state.load(fake.load_config(), 101)["guest_kernel"] == "6.1.0-56-amd64"
    _api_task(fake, api, "stop", now - 350)  # ends boot A
    _api_task(fake, api, "start", now - 345)
    guest.boot(BOOT_B, uptime=340)  # boot B from now-340
    if seen_boot_b:
        assert _sweep(config)["status"] == "collected"  # A ended: collected, B's start recorded
    guest.records["dmesg-pstore_blk-0"] = OOPS
    _api_task(fake, api, "shutdown", now - 100)  # ends boot B, cleanly
    _api_task(fake, api, "start", now - 60)
    # All within ten minutes: the old rule (any task from 600 s before this boot's start) took the
    # stop that ended boot A for the end of boot B and said host_stop.
    guest.boot(BOOT_C, uptime=50, tail=POWEROFF_TAIL)
    vm = _sweep(config)
    assert vm["status"] == "collected" and vm["verdict"] != "host_stop", vm
    evidence = _evidence(fake, vm)
    tasks = [e for e in evidence if e["source"] == "pve_task"]
    blamed = [e for e in tasks if e["suggests"]]
    assert all(e["details"]["type"] != "qmstop" for e in blamed)
    if seen_boot_b:  # B's lifetime is known: the shutdown inside it explains its end
        assert [e["details"]["type"] for e in blamed] == ["qmshutdown"]
        assert vm["verdict"] == "orderly_poweroff"
        assert any("qmstop" in e["summary"] and "outside the ended boot's lifetime" in e["summary"] for e in tasks)
    else:  # pvepstore never saw B start: no task is attributed, and the evidence says why
        assert not blamed and vm["verdict"] == "kernel_oops"
        assert any("not attributed" in e["summary"] and "ran between" in e["summary"] for e in tasks)
    kinds = {e["suggests"] for e in evidence}
    assert {"kernel_oops", "orderly_poweroff"} <= kinds  # the record and the boot history both speak


def _evidence(fake, vm) -> list[dict]:
    return json.loads((fake.state_dir / "archive" / "101" / vm["incident"] / "evidence.json").read_text())
