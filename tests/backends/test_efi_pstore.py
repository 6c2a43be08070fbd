"""The efi_pstore backend on the fake PVE node: handles per VM state, deferred clearing, blockers."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from pvepstore.backends import registry
from pvepstore.backends.base import VmWhere
from pvepstore.backends.efi_pstore import EfidiskVm, pending_clear, store_line
from pvepstore.errors import UsageError
from pvepstore.pipeline.handles import BackendChoice

OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def test_registered_with_the_protocol():
    b = registry.get("efi_pstore")
    assert b.name in registry.names() and b.guest_rules.TARGET == b.name
    assert b.proxmox_side.startswith("nothing")


@pytest.mark.skipif(not OVMF_VARS.exists() or not shutil.which("qemu-img"), reason="needs ovmf")
def test_stopped_vm_is_read_from_efidisk_and_cleared_later(fakepve):
    fakepve.add_vm(100, {"bios": "ovmf"})
    vol = fakepve.allocate("local-lvm", 100, OVMF_VARS.stat().st_size)
    fakepve.place_image(vol.volid, OVMF_VARS)
    fakepve.set_config(100, efidisk0=f"{vol.volid},efitype=4m,size=4M")
    cfg = fakepve.load_config()
    b = registry.get("efi_pstore")
    ref = SimpleNamespace(vmid=100, node="pve1", name="vm100", status="stopped")
    where = VmWhere(100, "pve1", "stopped", False, True)
    h = b.open_records(cfg, None, ref, where, BackendChoice("efi_pstore", "provision", True))
    assert isinstance(h, EfidiskVm)
    rec = SimpleNamespace(name="dmesg-efi-171234567800001", sha256="ab" * 32)
    before = fakepve.volume_bytes(vol.volid)
    h.clear([rec])
    assert pending_clear(cfg, 100) == {rec.name: rec.sha256}
    assert fakepve.volume_bytes(vol.volid) == before  # the vars file is never written
    with pytest.raises(UsageError, match="only through the guest"):
        b.read_host(cfg, 100, clear=True)
    # another node's VM: not read here
    with pytest.raises(Exception, match="node"):
        b.open_records(cfg, None, ref, VmWhere(100, "pve2", "stopped", False, False),
                       BackendChoice("efi_pstore", "provision", True))


def test_store_line_warns_above_the_threshold(fakepve):
    cfg = fakepve.load_config(efi_pstore={"warn_fill_percent": 50})
    res = SimpleNamespace(store=SimpleNamespace(store_size=262144, used_bytes=200000, pstore_bytes=15000))
    assert store_line(cfg, res).startswith("efidisk0 store 76% used, 15 KB pstore (WARNING: above 50%")
    res.store.used_bytes = 50000
    assert "WARNING" not in store_line(cfg, res)


# -- through the CLI on the fake PVE node (the VM is off: no guest needed) --------------------------

import lzma  # noqa: E402

from pvepstore.cli import ExitStatus  # noqa: E402
from pvepstore.pve import state  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def efi_vm(fake, tmp_path, fixture="efi-panic", storage="local", fmt="qcow2", vmid=100, **config):
    """A stopped OVMF VM whose efidisk0 holds a real-kernel efi fixture (qcow2 made by qemu-img)."""
    import subprocess
    fake.add_vm(vmid, {"bios": "ovmf", "tags": "pvepstore", **config})
    raw = tmp_path / f"{fixture}.raw"
    raw.write_bytes(lzma.decompress((FIXTURES / fixture / "image.xz").read_bytes()))
    vol = fake.allocate(storage, vmid, raw.stat().st_size, fmt=fmt)
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(vol.backing)], check=True)
    else:
        fake.place_image(vol.volid, raw)
        if fake.storages[storage]["type"] in ("lvm", "lvmthin"):
            with open(vol.backing, "r+b") as f:  # PVE's LVM efidisks are 4 MiB LVs: the vars file, then zeros
                f.truncate(4 << 20)
            fake.set_active(vol.volid, True)
    fake.set_config(vmid, efidisk0=f"{vol.volid},efitype=4m,pre-enrolled-keys=1,size=528K")
    return vol, raw


needs_efi = pytest.mark.skipif(not (FIXTURES / "efi-panic" / "image.xz").exists() or not shutil.which("qemu-img"),
                               reason="needs the efi fixtures and qemu-img")


def test_provision_blockers(fakepve):
    fakepve.add_vm(100, {"tags": "pvepstore"})
    conf = str(fakepve.config_file())
    r = run_cli("--config", conf, "provision", "100", "--backend", "efi_pstore", "--dry-run")
    assert r.status == ExitStatus.PVE and "bios is seabios: efi_pstore needs OVMF" in r.stderr
    fakepve.set_config(100, bios="ovmf")
    r = run_cli("--config", conf, "provision", "100", "--backend", "efi_pstore")
    assert r.status == ExitStatus.PVE and "no efidisk0: OVMF gets a fresh vars file" in r.stderr
    assert "/run/qemu-server/efidisk/100-ovmf.fd" in r.stderr
    assert not fakepve.writes() and not state.provision_record(fakepve.load_config(), 100)


@needs_efi
def test_provision_stopped_vm_records_the_efidisk_and_writes_nothing(fakepve, tmp_path):
    vol, _ = efi_vm(fakepve, tmp_path)
    conf = str(fakepve.config_file())
    r = run_cli("--config", conf, "provision", "100", "--backend", "efi_pstore", "--dry-run", "--json")
    assert not state.provision_record(fakepve.load_config(), 100)
    r = run_cli("--config", conf, "provision", "100", "--backend", "efi_pstore", "--json")
    assert "not running" in r.stdout + r.stderr
    rec = state.provision_record(fakepve.load_config(), 100)
    assert rec["backend"] == "efi_pstore" and rec["efidisk"] == vol.volid
    assert not fakepve.writes()  # nothing changes in the VM's config


@needs_efi
def test_status_shows_the_fill_level(fakepve, tmp_path):
    vol, _ = efi_vm(fakepve, tmp_path, "efi-oops")
    # no backend in the config: status follows what provision set up, as collect and read do
    conf = str(fakepve.config_file(efi_pstore={"warn_fill_percent": 10}))
    run_cli("--config", conf, "provision", "100", "--backend", "efi_pstore")
    r = run_cli("--config", conf, "status", "--json")
    (row,) = r.json["vms"]
    assert row["backend"] == "efi_pstore", row
    assert row["provisioned"] and row["disk"] == "efidisk0" and row["volid"] == vol.volid, row
    # efi-oops: 39,912 of 262,044 bytes used (15%), 24,792 bytes of pstore variables
    assert row["store"].startswith("efidisk0 store 15% used, 24 KB pstore (WARNING: above 10%"), row
    table = run_cli("--config", conf, "status").stdout
    assert " efi_pstore " in table and "efidisk0 store 15% used" in table, table


@needs_efi
@pytest.mark.parametrize("storage,fmt", [("local", "qcow2"), ("local-lvm", "raw")])
def test_collect_a_stopped_vm_from_efidisk0(fakepve, tmp_path, monkeypatch, storage, fmt):
    from pvepstore.pve import efidisk
    vol, raw = efi_vm(fakepve, tmp_path, "efi-panic", storage=storage, fmt=fmt)
    if fmt == "raw":
        fakepve.set_active(vol.volid, False)  # as after the VM stopped: activated for the read, then not
    runner = fakepve.lvm_runner()
    monkeypatch.setattr(efidisk, "SubprocessRunner", lambda: runner)  # LVM commands answered by the fake
    conf = str(fakepve.config_file())
    run_cli("--config", conf, "provision", "100", "--backend", "efi_pstore")
    before = fakepve.volume_bytes(vol.volid)
    r = run_cli("--config", conf, "read", "100", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert len(r.json["records"]) == 14  # 6.1's efi_pstore: one file per 1 KiB part of the panic dump
    r = run_cli("--config", conf, "collect", "100", "--json")
    assert r.status == ExitStatus.SUCCESS, (r.stdout, r.stderr)
    assert r.json["verdict"] == "kernel_panic" and r.json["records"] == 14, r.json
    assert fakepve.volume_bytes(vol.volid) == before  # cleared later, through the guest
    left = state.load(fakepve.load_config(), 100).get("efi_clear")
    assert len(left) == 14 and all(n.startswith("dmesg-efi-") for n in left)
    r = run_cli("--config", conf, "read", "100", "--clear")
    assert r.status == ExitStatus.USAGE and "only through the guest" in r.stderr
    # running: `read --offline` takes a consistent snapshot on the host (never the lock, never a write)
    fakepve.start_qemu(100)
    if fmt == "raw":
        fakepve.set_active(vol.volid, True)  # QEMU holds the LV active
    r = run_cli("--config", conf, "read", "100", "--offline", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert r.json["source"] == "efidisk-snapshot" and len(r.json["records"]) == 14
    assert fakepve.volume_bytes(vol.volid) == before
    fakepve.stop_qemu(100)
    if fmt == "raw":
        fakepve.set_active(vol.volid, False)
        assert not fakepve.volumes[vol.volid].active and ("lvchange", "-ay") in [t[0][:2] for t in runner.transcript]


@needs_efi
def test_deferred_clear_at_the_next_guest_contact(fakepve, tmp_path):
    """Records archived from a stopped VM's efidisk0 are unlinked through the guest later: only those
    whose bytes the guest shows are the archived ones (the kernel's own files of the fixture)."""
    from pvepstore.backends.efi_pstore import clear_pending
    from pvepstore.guest.testing import Recorded, reply
    from tests.guest.conftest import fake_guest

    vol, raw = efi_vm(fakepve, tmp_path, "efi-panic")
    cfg = fakepve.load_config()
    h = EfidiskVm(100, {"vmid": 100}, cfg)
    got = h.gather()
    h.clear(got.records)
    assert len(pending_clear(cfg, 100)) == 14
    kernel = sorted((FIXTURES / "efi-panic" / "kernel").iterdir())
    files = {p.name: p.read_bytes() for p in kernel if p.name.startswith("dmesg-efi-")}
    assert set(files) == set(pending_clear(cfg, 100))
    changed = sorted(files)[0]
    items = [("rec", n, str(len(b + (b"x" if n == changed else b""))), "1795661798",
              b + (b"x" if n == changed else b"")) for n, b in sorted(files.items())]
    want = sorted(set(files) - {changed})
    g, t = fake_guest(Recorded("records", 0, reply(("pstorefs", "pstore"), *items)),
                      Recorded("clear", 0, reply(*[("cleared", n, "ok") for n in want])))
    assert clear_pending(cfg, 100, g) == want
    assert [a for a in t.calls[-1].args[::3]] == want  # the changed record is not unlinked
    assert pending_clear(cfg, 100) == {changed: pending_clear(cfg, 100)[changed]}  # kept for later


@needs_efi
def test_unprovision_changes_nothing_in_the_vm_config(fakepve, tmp_path):
    efi_vm(fakepve, tmp_path, "efi-oops")
    conf = str(fakepve.config_file(vms={100: {"backend": "efi_pstore"}}))
    run_cli("--config", conf, "provision", "100", "--backend", "efi_pstore")
    state.update(fakepve.load_config(), 100, efi_clear={"dmesg-efi-1": "00"})
    r = run_cli("--config", conf, "unprovision", "100", "--delete-disk", "--json")
    assert "nothing to take back (efidisk0 is the VM's and stays" in str(r.json["proxmox"]), r.json
    assert any("not cleared from the guest yet" in p for p in r.json["problems"])
    assert not fakepve.writes() and "efidisk0" in fakepve.vms[100].config


@needs_efi
def test_provision_a_running_uefi_guest(fakepve, tmp_path, monkeypatch):
    """Dry run, then for real: the guest (recorded-command double of a stock Debian 12 UEFI guest) gets
    the plan, the VM's config is never written, verify passes on the configured guest."""
    from contextlib import contextmanager

    from pvepstore.guest.testing import Recorded, reply
    from pvepstore.pipeline import provision as prov
    from tests.guest.conftest import fake_guest, plan_for, probe_reply
    from tests.guest.test_efi_wishes import efi_state_after
    from tests.guest.test_efi_wishes import probe as efi_probe
    from tests.pipeline.test_provision import IPCONFIG

    vol, _ = efi_vm(fakepve, tmp_path, "efi-oops", **IPCONFIG)
    fakepve.start_qemu(100)
    fakepve.vms[100].running = True
    g0, _ = fake_guest(probe_reply(backend="efi", efi=True, disk=False))
    applied = plan_for(g0, efi_probe(g0))  # what the guest looks like once the plan ran
    scripts = [probe_reply(backend="efi", efi=True, disk=False),  # dry run: probe only
               probe_reply(backend="efi", efi=True, disk=False), Recorded("apply", 0, reply(end=True)),
               efi_state_after([applied])]  # verify
    guest, transport = fake_guest(*scripts)

    @contextmanager
    def connect(target):
        yield guest
    monkeypatch.setattr(prov, "default_guest_connect", connect)
    monkeypatch.setattr(prov, "guest_target", lambda ssh, host, vmid: SimpleNamespace(host=host, where=f"VM {vmid}"))
    conf = str(fakepve.config_file())
    r = run_cli("--config", conf, "provision", "100", "--backend", "efi_pstore", "--dry-run")
    assert r.status == ExitStatus.SUCCESS, (r.stdout, r.stderr)
    assert "efidisk0" in r.stdout and not state.provision_record(fakepve.load_config(), 100)
    r = run_cli("--config", conf, "provision", "100", "--json")  # no backend named: auto picks efi_pstore
    assert r.status == ExitStatus.SUCCESS, (r.stdout, r.stderr)
    assert r.json["verify"]["ok"] and r.json["efidisk"]["volid"] == vol.volid, r.json
    assert (r.json["backend"], r.json["auto"]["backend"]) == ("efi_pstore", "efi_pstore"), r.json["auto"]
    assert state.load(fakepve.load_config(), 100)["auto"]["backend"] == "efi_pstore"
    assert [c.name for c in transport.calls] == ["probe", "probe", "apply", "probe"]
    assert not fakepve.writes()


@needs_efi
def test_sweep_of_the_running_vm_clears_what_was_archived_while_it_was_off(fakepve, tmp_path):
    from pvepstore.backends.efi_pstore import EfiGuestVm
    from pvepstore.guest.testing import Recorded, reply
    from tests.guest.conftest import fake_guest

    efi_vm(fakepve, tmp_path, "efi-panic")
    cfg = fakepve.load_config()
    off = EfidiskVm(100, {"vmid": 100}, cfg)
    off.clear(off.gather().records)  # archived from efidisk0 while off
    files = {p.name: p.read_bytes() for p in sorted((FIXTURES / "efi-panic" / "kernel").iterdir())
             if p.name.startswith("dmesg-efi-")}
    items = [("rec", n, str(len(b)), "1795661798", b) for n, b in sorted(files.items())]
    g, t = fake_guest(Recorded("records", 0, reply(("pstorefs", "pstore"), *items)),
                      Recorded("clear", 0, reply(*[("cleared", n, "ok") for n in sorted(files)])),
                      Recorded("records", 0, reply(("pstorefs", "pstore"))),  # nothing new since
                      Recorded("history", 0, reply(("boot_id", "b2"), ("uptime", "12.5"))))
    h = EfiGuestVm(100, {"vmid": 100}, g, cfg=cfg)
    got = h.gather()
    assert got.records == [] and pending_clear(cfg, 100) == {}
    assert [c.name for c in t.calls] == ["records", "clear", "records", "history"]


@needs_efi
def test_a_debian13_guests_shutdown_dumps_read_on_the_host_keep_its_names_and_are_cleared(fakepve, tmp_path):
    """Debian 13's 6.12 names its files dmesg-efi_pstore-<id>; a store of Shutdown dumps alone does not
    say which kernel wrote it: the host read names them after the guest kernel the last sweep saw
    (state guest_kernel), and a pending clear matches the guest's files whatever name was archived."""
    from pvepstore.backends.efi_pstore import EfiGuestVm, clear_pending
    from pvepstore.guest.testing import Recorded, reply
    from tests.guest.conftest import fake_guest

    efi_vm(fakepve, tmp_path, "d13-efi-poweroff")
    cfg = fakepve.load_config()
    view = {p.name: p.read_bytes() for p in sorted((FIXTURES / "d13-efi-poweroff" / "kernel").iterdir())}
    assert all(n.startswith("dmesg-efi_pstore-") for n in view) and len(view) == 15

    def guest(*more):
        items = [("rec", n, str(len(b)), "1795661798", b) for n, b in sorted(view.items())]
        return fake_guest(Recorded("records", 0, reply(("pstorefs", "pstore"), *items)), *more)

    # never seen running: 6.1's names on the host; the guest's own files are still the ones cleared
    off = EfidiskVm(100, {"vmid": 100}, cfg)
    got = off.gather()
    assert sorted(r.name for r in got.records) == sorted(n.replace("-efi_pstore-", "-efi-") for n in view)
    off.clear(got.records)
    g, t = guest(Recorded("clear", 0, reply(*[("cleared", n, "ok") for n in sorted(view)])))
    assert clear_pending(cfg, 100, g) == sorted(view) and pending_clear(cfg, 100) == {}

    # a sweep of the running guest records its kernel (uname -r from the boot history) ...
    g, t = fake_guest(Recorded("records", 0, reply(("pstorefs", "pstore"))),
                      Recorded("history", 0, reply(("boot_id", "b2"), ("uptime", "12.5"),
                                                   ("uname", "6.12.117+deb13-amd64"))))
    assert EfiGuestVm(100, {"vmid": 100}, g, cfg=cfg).gather().kernel == "6.12.117+deb13-amd64"
    state.update(cfg, 100, guest_kernel="6.12.117+deb13-amd64")  # (the collector keeps it: test_collect)
    # ... and the host read then names the records exactly as that kernel does
    got = EfidiskVm(100, {"vmid": 100}, cfg).gather()
    assert {r.name: r.data for r in got.records} == view
