"""End to end, efi_pstore backend, THROUGH THE FAKE PROXMOX API (issue 13, "Proof"): the real
Debian 12 guest (6.1) and the Debian 13 one (6.12: efi_pstore registers as "efi_pstore", its files are
dmesg-efi_pstore-<id>) booted under OVMF as VM 101 of the fake PVE, with Proxmox's pflash arguments
and its efidisk0 -- first a qcow2 volume on the ``dir`` storage ``local`` (PVE's default there),
then, after a ``qm disk move``, a raw volume on the LVM-thin storage ``local-lvm``.

* ``-drive if=pflash,unit=0,format=raw,readonly=on,file=OVMF_CODE_4M.fd`` and
  ``-drive if=pflash,unit=1,id=drive-efidisk0,format=<fmt>,file=<volume>[,size=540672]``, exactly
  qemu-server's pair (``QemuServer/OVMF.pm``); the kernel is booted directly through OVMF
  (``-kernel``: OVMF's QEMU loader runs the kernel's EFI stub, so the guest runs UEFI with
  runtime services and efivarfs, as an installed UEFI guest does).
* The efidisk0 starts as a copy of Debian's ``OVMF_VARS_4M.fd`` converted to qcow2, as
  ``qm set --efidisk0 local:1,efitype=4m`` makes it.

Steps (one image, three QEMU processes):

1. provision with no backend named (``backend: auto`` picks efi_pstore; ``efi_pstore.always_kmsg_dump: true``): nothing changes in the
   VM's config; the guest registers efi_pstore at once (``load-efi``), verified;
2. a panic (``sysrq-c``; Debian's ``kernel.panic=0``: the guest hangs): the host reads the
   RUNNING VM's efidisk0 (qcow2 snapshot) -> the Panic record; then a hard stop
   (``qm stop``); ``collect`` reads the STOPPED VM's efidisk0 under PVE's lock -> ``kernel_panic``
   with the panic text; the volume is not written; the clear is deferred;
3. ``qm disk move`` to raw LVM-thin; start: the next guest contact clears the archived records
   through /sys/fs/pstore (the variables are deleted by the firmware);
4. ``reboot`` inside the guest (its reset starts a new QEMU, see ``qemu_argv``): ``orderly_reboot``
   from the Shutdown dump, cleared after archive;
5. poweroff: ``orderly_poweroff`` read from the stopped VM's raw efidisk0; the store's fill level
   stays far below the warning threshold.

Run alone: ``python3 -m pytest tests/vm/test_efi_pve_e2e.py -q -s``.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvepstore.cli import ExitStatus
from pvepstore.guest import connect
from pvepstore.pstore import efi as efi_format
from pvepstore.pve import efidisk, state
from tests.conftest import run_cli
from tests.guest.conftest import verify_for

from .pvehost import PveGuestVM

pytestmark = pytest.mark.vm

VMID = 101
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
PANIC_TEXT = "Kernel panic - not syncing: sysrq triggered crash"


@dataclass
class EfiPveGuestVM(PveGuestVM):
    """VM 101 of the fake node with ``bios: ovmf`` and an efidisk0; no pstore disk."""

    efidisk: Path | None = None
    efidisk_format: str = "qcow2"

    @property
    def pstore_img(self) -> Path:
        return self.workdir / "pstore.img"  # made by the harness's prepare(); never given to QEMU

    def disk_args(self) -> list[str]:
        return []

    def qemu_argv(self) -> list[str]:
        # Under TCG a warm reset of this OVMF guest spent 3-6 minutes in QEMU's translated-code
        # invalidation (perf: page_collection_lock 41%) as the firmware rewrote the old kernel's
        # pages; the initramfs chain's reset took 26 s. So a reset ends this QEMU process and
        # reboot_guest() starts the next one on the same efidisk0 (a TCG artefact, not Proxmox's way).
        return [*super().qemu_argv(), "-no-reboot"]

    def reboot_guest(self, timeout: float = 400) -> float:
        """``reboot`` inside the guest; the reset is a new QEMU process (see qemu_argv)."""
        t0 = time.monotonic()
        with connect(self.target()) as g:
            g.reboot()
        self.wait_exit(timeout)
        self.start()
        self.wait_ssh(timeout=max(60.0, timeout - (time.monotonic() - t0)))
        return time.monotonic() - t0

    def firmware_args(self) -> list[str]:
        # qemu-server: a raw volume (an LV is larger than the vars file) gets size=, qcow2 not
        size = f",size={OVMF_VARS.stat().st_size}" if self.efidisk_format == "raw" else ""
        return ["-drive", f"if=pflash,unit=0,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,unit=1,id=drive-efidisk0,format={self.efidisk_format},"
                          f"file={self.efidisk}{size}"]


@pytest.fixture
def efi_guest(guest_image, fakepve, tmp_path):
    if not OVMF_CODE.exists():
        pytest.skip("needs Debian's ovmf package")
    fakepve.add_vm(VMID, config={"tags": "pvepstore", "bios": "ovmf"}, disk_storage=None)
    vol = fakepve.allocate("local", VMID, 1 << 20, fmt="qcow2")
    # as `qm set --efidisk0 local:1,efitype=4m`: the OVMF template converted into the new volume
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(OVMF_VARS), str(vol.backing)],
                   check=True)
    fakepve.set_config(VMID, efidisk0=f"{vol.volid},efitype=4m,size=528K")
    machine = EfiPveGuestVM(guest_image, tmp_path / "vm", fake=fakepve, vmid=VMID, efidisk=vol.backing)
    machine.smp = 1  # one vCPU thread: the 2 host cores are shared (TCG)
    machine.pin_host_key()
    yield machine, vol
    machine.kill()


def _ok(r, *statuses):
    assert r.status in (statuses or (ExitStatus.SUCCESS,)), f"exit {r.status}\n{r.stdout}\n{r.stderr}"
    return r


def _guest_pstore(vm) -> list[str]:
    out = vm.run("ls /sys/fs/pstore\n").decode()
    return sorted(n for n in out.split() if n.startswith("dmesg-efi"))


def _incident_text(fake, incident: str) -> tuple[str, str]:
    (inc,) = [p for p in (fake.state_dir / "archive" / str(VMID)).iterdir() if p.name == incident]
    doc = json.loads((inc / "records.json").read_text())
    texts = [(inc / "records" / r["file"]).read_bytes().decode("utf-8", "replace") for r in doc["records"]]
    return doc["source"], "\n".join(texts)


@pytest.mark.suites("bookworm", "trixie")
def test_efi_pstore_through_the_fake_api(efi_guest, fakepve, capsys, monkeypatch):
    (vm, qcow), fake = efi_guest, fakepve
    runner = fake.lvm_runner()
    monkeypatch.setattr(efidisk, "SubprocessRunner", lambda: runner)  # lvs/lvchange answered by the fake
    timings: dict[str, float] = {}
    t_all = time.monotonic()
    vms = {VMID: {"ssh": vm.ssh_config()}}  # no backend named: auto picks efi_pstore (OVMF + efidisk0)
    efi = {"always_kmsg_dump": True}
    config = fake.config_file(vms=vms, efi_pstore=efi)
    cfg = fake.load_config(vms=vms, efi_pstore=efi)

    def cli(*args):
        return run_cli("--config", str(config), *args)

    # -- 1. provision: the guest keeps/registers efi_pstore; nothing in the VM config changes ----
    vm.start()
    timings["boot1"] = vm.wait_ssh(timeout=400)
    t0 = time.monotonic()
    doc = _ok(cli("provision", str(VMID), "--json")).json
    timings["provision"] = time.monotonic() - t0
    assert doc["backend"] == "efi_pstore" and doc["ok"] and doc["verify"]["ok"], (doc["verify"], doc["problems"])
    assert doc["auto"]["backend"] == "efi_pstore" and "migrates" in doc["auto"]["why"][0], doc["auto"]
    assert doc["efidisk"]["volid"] == qcow.volid and doc["efidisk"]["format"] == "qcow2", doc["efidisk"]
    caps = doc["probe"]["capabilities"]
    assert caps["panic"]["status"] == "yes" and caps["oops"]["status"] == "yes", caps
    assert not fake.writes(), [w.path for w in fake.writes()]  # efi_pstore needs no config change
    assert state.provision_record(cfg, VMID)["efidisk"] == qcow.volid
    name = efi_format.name_for_release(doc["probe"]["kernel"])  # psinfo->name: "efi" (6.1), "efi_pstore" (>= 6.2)
    assert vm.run("cat /sys/module/pstore/parameters/backend /sys/module/printk/parameters/always_kmsg_dump\n"
                  ).decode().split() == [name, "Y"]
    # 10240 is 6.1's and 6.12's CONFIG_PSTORE_DEFAULT_KMSG_BYTES: pstorefs shows kmsg_bytes= only when it differs
    assert "kmsg_bytes=" not in vm.run("grep ' /sys/fs/pstore ' /proc/mounts\n").decode()
    with connect(vm.target()) as g:
        v = verify_for(g, "efi_pstore")
        assert v.ok and ("kmsg_bytes", True, "pstore.kmsg_bytes is 10240 (want 10240)") in v.checks, v.checks
    (row,) = _ok(cli("status", "--json")).json["vms"]
    assert (row["backend"], row["provisioned"], row["running"]) == ("efi_pstore", True, True), row
    assert _guest_pstore(vm) == []

    # -- 2. a panic with Debian's kernel.panic=0: the guest hangs; the host reads the running VM ---
    # (no kernel.panic=N: its warm reset is the TCG slowness of qemu_argv)
    vm.run("nohup sh -c 'sleep 1; echo c > /proc/sysrq-trigger' >/dev/null 2>&1 &\n")
    t0 = time.monotonic()
    doc = _wait_panic_record(cli, vm)  # running: a consistent snapshot of the hung guest's efidisk0
    timings["panic_read"] = time.monotonic() - t0
    assert doc["source"] == "efidisk-snapshot", doc["source"]
    seen = sorted(r["name"] for r in doc["records"])
    before = fake.volume_bytes(qcow.volid)
    timings["stop"] = _timed(vm.kill)  # `qm stop`: QEMU killed, the fake's VM stopped
    doc = _ok(cli("collect", str(VMID), "--json")).json
    assert (doc["status"], doc["verdict"]) == ("collected", "kernel_panic"), doc
    source, text = _incident_text(fake, doc["incident"])
    assert source == "efidisk" and PANIC_TEXT in text, source
    assert fake.volume_bytes(qcow.volid) == before  # the vars file is never written on the host
    pending = state.load(cfg, VMID).get("efi_clear")
    assert sorted(pending) == seen, (pending, seen)  # cleared at the next guest contact
    shown = _ok(cli("incidents", "show", doc["incident"])).stdout
    assert "sysrq" in shown, shown[-2000:]

    # -- 3. qm disk move efidisk0 local-lvm (raw); start; the next contact clears the records -------
    raw = fake.allocate("local-lvm", VMID, 4 << 20)  # PVE's 4 MiB LV: the vars file, then zeros
    _convert_into(qcow.backing, raw.backing)
    fake.set_config(VMID, efidisk0=f"{raw.volid},efitype=4m,size=4M")
    vm.efidisk, vm.efidisk_format = raw.backing, "raw"
    vm.start()
    timings["boot3"] = vm.wait_ssh(timeout=400)
    assert _guest_pstore(vm) == seen  # the records moved with the disk; the host saw what the kernel lists
    doc = _ok(cli("collect", str(VMID), "--json")).json
    assert doc["status"] == "nothing", doc  # archived already: never reported twice
    assert _guest_pstore(vm) == [] and not state.load(cfg, VMID).get("efi_clear")
    doc = _ok(cli("read", str(VMID), "--offline", "--json")).json
    assert doc["records"] == [], doc["records"]  # the firmware deleted the variables

    # -- 4. reboot inside the guest: the Shutdown dump (always_kmsg_dump) -> orderly_reboot ----------
    old = vm.boot_id()
    timings["reboot"] = vm.reboot_guest()
    assert vm.boot_id() != old
    doc = _ok(cli("collect", str(VMID), "--json")).json
    assert (doc["status"], doc["verdict"]) == ("collected", "orderly_reboot"), doc
    assert _incident_text(fake, doc["incident"])[0] == "guest"
    assert _guest_pstore(vm) == []  # cleared after the archive

    # -- 5. poweroff: read from the stopped VM's raw efidisk0 -> orderly_poweroff --------------------
    timings["poweroff"] = vm.poweroff()
    before = fake.volume_bytes(raw.volid)
    doc = _ok(cli("collect", str(VMID), "--json")).json
    assert (doc["status"], doc["verdict"]) == ("collected", "orderly_poweroff"), doc
    assert _incident_text(fake, doc["incident"])[0] == "efidisk"
    # Shutdown dumps alone name no kernel: the host named them after the guest kernel the sweeps saw
    assert all(f.startswith(f"dmesg-{name}-") for f in _record_files(fake, doc["incident"])), name
    assert fake.volume_bytes(raw.volid) == before
    (row,) = _ok(cli("status", "--json")).json["vms"]
    fill = int(row["store"].split("store ", 1)[1].split("%", 1)[0])
    assert fill < 75 and "WARNING" not in row["store"], row["store"]  # bounded: one dump pending
    listed = _ok(cli("incidents", "list", "--vm", str(VMID), "--json")).json["incidents"]
    assert [i["verdict"] for i in listed] == ["kernel_panic", "orderly_reboot", "orderly_poweroff"], listed

    timings["total"] = time.monotonic() - t_all
    with capsys.disabled():
        print(f"\nefi pve e2e ({vm.image.name}, {vm.boots} QEMU starts, 3 boots) timings (s): "
              + ", ".join(f"{k}={v:.0f}" for k, v in timings.items()) + f"; store {row['store']}")


def _record_files(fake, incident: str) -> list[str]:
    doc = json.loads((fake.state_dir / "archive" / str(VMID) / incident / "records.json").read_text())
    return [r["name"] for r in doc["records"]]


def _wait_panic_record(cli, vm, timeout: float = 240) -> dict:
    """``read --offline`` of the running, panicked VM until its Panic dump is there."""
    t0 = time.monotonic()
    while True:
        doc = _ok(cli("read", str(VMID), "--offline", "--json")).json
        if any(r.get("reason") == "Panic" for r in doc["records"]):
            assert PANIC_TEXT in vm.console_log.read_text(errors="replace")
            return doc
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"no Panic record: {[(r['name'], r.get('reason')) for r in doc['records']]}")
        time.sleep(3)


def _timed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def _convert_into(src: Path, dst: Path) -> None:
    """``qm disk move``: the qcow2's guest view written into the (larger) raw LV, not truncating it."""
    tmp = dst.with_suffix(".tmp")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src), str(tmp)], check=True)
    with open(tmp, "rb") as s, open(dst, "r+b") as d:
        d.write(s.read())
    tmp.unlink()
