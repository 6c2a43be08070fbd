"""End to end, ivshmem backend, THROUGH THE FAKE PROXMOX API (issue 7, "Done when"):
``pvepstore provision 101 --backend ivshmem`` on the real Debian 12 guest run as VM 101 of
the fake PVE (``tests/fakepve``), every step through ``pvepstore.cli.main(["--config", ...])``.

* The real QEMU carries ``-pidfile <host_root>/var/run/qemu-server/101.pid`` (the fake's
  "running" follows it) and SSH on a forwarded port with a pinned host key
  (``vms.101.ssh``); no pstore disk: the ivshmem backend needs none.
* After the cold start it gets exactly Proxmox's ``-object memory-backend-file,id=ivshmem,
  share=on,mem-path=<host_root>/dev/shm/pve-shm-pvepstore-101,size=1M -device
  ivshmem-plain,memdev=ivshmem``.
* The hookscript pvepstore installs on the ``dir`` storage ``local`` (content ``snippets``)
  is executed as PVE executes it: ``<storage>/snippets/pvepstore-hook-101.sh 101 <phase>``.

Steps (one image, three boots, two QEMU processes):

1. boot WITHOUT the ivshmem device; provision: ``ivshmem`` (pending: not hotpluggable) and
   ``hookscript`` (fast-plugged) set through the API with the config digest, the hookscript
   written, ``ramoops_params`` recorded, the guest configured, and the result says the device
   is PENDING until the next cold start (exit status PVE, not ok);
2. the cold start as Proxmox does it: poweroff (QEMU exits; ``vm_stop_cleanup`` unlinks the
   shm file -- there is none yet; ``post-stop``), the pending change applied at start,
   ``pre-start``, a NEW QEMU process with the device, ``post-start`` (the keep link);
3. provision again: ok, ramoops on BAR2 verified;
4. ``reboot`` inside the guest (same QEMU process); ``collect 101`` without SSH:
   ``orderly_reboot`` from the live file;
5. poweroff; the shm file unlinked as ``vm_stop_cleanup`` does; ``post-stop`` saves the durable
   copy; ``collect 101``: the poweroff's Shutdown dump, read from the preserved keep link ->
   ``orderly_poweroff``; once the host "reboots" (/dev/shm gone) the durable copy holds the same
   record and it is not reported twice;
6. start (the hookscript notes the QEMU run); ``qm stop`` through the API (QEMU killed: no dump)
   and start: ``collect`` says ``host_stop`` -- the new QEMU run is the boot end, the qmstop task
   in the old run's lifetime explains it, as for a guest-read backend;
7. ``qm reset`` through the API (QMP ``system_reset``, as qemu-server does): the guest restarts inside
   the SAME QEMU process and ramoops gets no dump -- no new run; the guest's own boot id (asked over
   SSH) changed within the run: ``host_reset``, once.

Run alone: ``python3 -m pytest tests/vm/test_ivshmem_pve_e2e.py -q -s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvepstore.cli import ExitStatus
from pvepstore.guest import connect
from pvepstore.pve import ivshmem, state
from tests.conftest import run_cli
from tests.guest.conftest import verify_for

from .pvehost import PveGuestVM

pytestmark = pytest.mark.vm

VMID = 101
REPO = Path(__file__).resolve().parents[2]
SNIPPETS = "iso,vztmpl,backup,images,snippets"


@dataclass
class IvshmemPveGuestVM(PveGuestVM):
    """VM 101 of the fake node: no pstore disk; with ``ivshmem_file`` set, Proxmox's ivshmem pair."""

    @property
    def pstore_img(self) -> Path:
        return self.workdir / "pstore.img"  # made by the harness's prepare(); never given to QEMU

    def disk_args(self) -> list[str]:
        if self.ivshmem_file is None:
            return []
        # qemu-server's arguments for `ivshmem: size=1,name=...`
        return ["-object", f"memory-backend-file,id=ivshmem,share=on,mem-path={self.ivshmem_file},size=1M",
                "-device", "ivshmem-plain,memdev=ivshmem"]


@pytest.fixture
def pve_guest(guest_image, fakepve, tmp_path):
    fakepve.add_storage("local", "dir", path="/var/lib/vz", content=SNIPPETS)
    fakepve.add_vm(VMID, config={"tags": "pvepstore"}, disk_storage=None)  # off
    machine = IvshmemPveGuestVM(guest_image, tmp_path / "vm", fake=fakepve, vmid=VMID)
    machine.smp = 1  # one vCPU thread: the 2 host cores are shared (TCG)
    machine.pin_host_key()
    yield machine
    machine.kill()


def _ok(r, *statuses):
    assert r.status in (statuses or (ExitStatus.SUCCESS,)), f"exit {r.status}\n{r.stdout}\n{r.stderr}"
    return r


def _hook(snippet: Path, phase: str) -> list[str]:
    """Execute the hookscript as PVE does (``<script> <vmid> <phase>``, as root, cwd /).

    pvepstore is not pip-installed on this host: its ``python -m pvepstore`` finds the
    package through PYTHONPATH (an installed pvepstore is on the path by itself)."""
    r = subprocess.run([str(snippet), str(VMID), phase], capture_output=True, text=True, timeout=120, cwd="/",
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and "hook failed" not in r.stderr, (phase, r.returncode, r.stdout, r.stderr)
    return r.stdout.splitlines()


def _records_source(fake, incident: str) -> str:
    (inc,) = [p for p in (fake.state_dir / "archive" / str(VMID)).iterdir() if p.name == incident]
    return json.loads((inc / "records.json").read_text())["source"]


def test_provision_ivshmem_through_the_fake_api(pve_guest, fakepve, capsys):
    vm, fake = pve_guest, fakepve
    timings: dict[str, float] = {}
    t_all = time.monotonic()
    vms = {VMID: {"backend": "ivshmem", "ssh": vm.ssh_config()}}
    config = fake.config_file(vms=vms)
    cfg = fake.load_config(vms=vms)
    name = ivshmem.shm_name(VMID)
    shm, keep, durable = cfg.paths.ivshmem_file(name), cfg.paths.ivshmem_keep(name), ivshmem.durable_copy(cfg, VMID)
    shm.parent.mkdir(parents=True, exist_ok=True)  # the node's /dev/shm
    snippet = fake.host_root / "var/lib/vz/snippets" / f"pvepstore-hook-{VMID}.sh"
    volid = f"local:snippets/pvepstore-hook-{VMID}.sh"
    option = f"size=1,name={name}"

    def cli(*args):
        return run_cli("--config", str(config), *args)

    # -- 1. the guest runs WITHOUT the device; provision sets it (pending) ---------------------
    vm.start()
    timings["boot1"] = vm.wait_ssh()
    assert _ok(cli("status", "--json")).json["vms"][0]["running"] is True
    t0 = time.monotonic()
    r = _ok(cli("provision", str(VMID), "--backend", "ivshmem", "--json"), ExitStatus.PVE)
    timings["provision1"] = time.monotonic() - t0
    doc = r.json
    assert (doc["backend"], doc["ivshmem"], doc["hookscript"], doc["chained"]) == ("ivshmem", option, volid, None)
    assert doc["running"] is True and doc["device_pending"] is True and doc["ok"] is False, doc
    assert doc["probe"]["ivshmem"] is None  # the guest is the authority: no device in this QEMU
    assert any("next cold start" in p for p in doc["problems"]), doc["problems"]
    assert doc["ramoops_params"]["mem_size"] == 1 << 20, doc["ramoops_params"]
    (post,) = fake.calls("POST", "/config")  # one config write, with the digest
    assert post.params.get("digest") and post.params["ivshmem"] == option and post.params["hookscript"] == volid
    fvm = fake.vms[VMID]
    assert fvm.config["hookscript"] == volid  # fast-plugged at once
    assert fvm.pending["ivshmem"] == option and "ivshmem" not in fvm.config  # only at the next start
    api_conf = _ok(cli("status", "--json")).json["vms"][0]
    assert (api_conf["provisioned"], api_conf["pending"], api_conf["disk"]) == (True, True, "ivshmem"), api_conf
    rec = state.provision_record(cfg, VMID)
    assert (rec["backend"], rec["shm_name"], rec["hookscript"]) == ("ivshmem", name, volid)
    assert rec["ramoops_params"]["mem_size"] == 1 << 20 and rec["ramoops_params"]["record_size"] > 0
    text = snippet.read_text()
    assert snippet.stat().st_mode & 0o777 == 0o755
    assert "-m pvepstore --config" in text and str(config.resolve()) in text and " hook " in text, text

    # -- 2. the cold start, as Proxmox does it --------------------------------------------------
    t0 = time.monotonic()
    timings["poweroff1"] = vm.poweroff()
    assert not vm.pidfile.exists() and fvm.running is False
    shm.unlink(missing_ok=True)  # vm_stop_cleanup (the old QEMU had no device: nothing there)
    assert _hook(snippet, "post-stop") == []  # nothing to keep yet
    from tests.fakepve.server import _apply_pending  # qm start applies pending changes first

    with fake.lock:
        _apply_pending(fake, fvm, [])
        fake._write_vm(fvm)
    assert fvm.config["ivshmem"] == option and not fvm.pending
    assert _hook(snippet, "pre-start") == []  # no old records anywhere
    vm.ivshmem_file = shm
    vm.start()  # a NEW QEMU process, with Proxmox's ivshmem arguments
    assert shm.stat().st_size == 1 << 20
    out = _hook(snippet, "post-start")
    assert out[0] == f"pvepstore: VM {VMID} post-start: linked {shm.name} as {keep.name}", out
    # and the new QEMU run is noted (the real QEMU's -pidfile under host_root): boot ends seen on the host
    assert len(out) == 2 and out[1].startswith(f"pvepstore: VM {VMID} post-start: noted QEMU run "), out
    assert os.path.samefile(shm, keep)
    timings["boot2"] = vm.wait_ssh()
    timings["cold_start"] = time.monotonic() - t0

    # -- 3. provision again: ramoops on BAR2, verified ------------------------------------------
    t0 = time.monotonic()
    doc = _ok(cli("provision", str(VMID), "--backend", "ivshmem", "--json")).json
    timings["provision2"] = time.monotonic() - t0
    assert doc["ok"] and doc["verify"]["ok"] and doc["device_pending"] is False, (doc["verify"], doc["problems"])
    assert doc["probe"]["ivshmem"]["size"] == 1 << 20, doc["probe"]["ivshmem"]
    assert len(fake.calls("POST", "/config")) == 1  # nothing more to set
    (row,) = _ok(cli("status", "--json")).json["vms"]
    assert (row["provisioned"], row["pending"], row["running"], row["backend_ok"]) == (True, False, True, True), row
    with connect(vm.target()) as g:
        v = verify_for(g, "ivshmem")
        assert v.ok, v.problems
    params = state.provision_record(cfg, VMID)["ramoops_params"]
    assert params == doc["ramoops_params"] and params["mem_size"] == 1 << 20, (params, doc["ramoops_params"])

    # -- 4. reboot inside the guest (same QEMU); collect without SSH ----------------------------
    old = vm.boot_id()
    with connect(vm.target()) as g:
        g.reboot()
    timings["reboot"] = vm.wait_new_boot(old)
    assert vm.running() and os.path.samefile(shm, keep)
    doc = _ok(cli("collect", str(VMID), "--json")).json
    assert (doc["status"], doc["verdict"]) == ("collected", "orderly_reboot"), doc
    assert _records_source(fake, doc["incident"]) == "ivshmem-live"
    assert _ok(cli("collect", str(VMID), "--json")).json["status"] == "nothing"

    # -- 5. poweroff; PVE unlinks the shm file; post-stop; the record survives ------------------
    timings["poweroff2"] = vm.poweroff()
    assert fvm.running is False
    shm.unlink()  # vm_stop_cleanup, before the post-stop hook
    out = _hook(snippet, "post-stop")
    assert out == [f"pvepstore: VM {VMID} post-stop: saved {keep.name} to {durable}"], out
    assert durable.read_bytes() == keep.read_bytes()
    doc = _ok(cli("collect", str(VMID), "--json")).json
    assert (doc["status"], doc["verdict"], doc["records"]) == ("collected", "orderly_poweroff", 1), doc
    assert _records_source(fake, doc["incident"]) == "ivshmem-keep"  # the preserved file, not the gone live one
    shown = _ok(cli("incidents", "show", doc["incident"])).stdout
    assert "Shutdown" in shown and "Power down" in shown, shown[-3000:]
    listed = _ok(cli("incidents", "list", "--vm", str(VMID), "--json")).json["incidents"]
    assert [i["verdict"] for i in listed] == ["orderly_reboot", "orderly_poweroff"], listed
    assert _ok(cli("collect", str(VMID), "--json")).json["status"] == "nothing"
    # the host reboots: /dev/shm is gone, the durable copy still holds the (archived) record
    keep.unlink()
    doc = _ok(cli("collect", str(VMID), "--json")).json
    assert doc["status"] == "nothing", doc  # recognised as archived: never reported twice
    assert len(_ok(cli("incidents", "list", "--vm", str(VMID), "--json")).json["incidents"]) == 2

    # -- 6. stop and start through the API: no dump (QEMU is killed), but a new QEMU run -----------
    keep.unlink(missing_ok=True)  # what step 5 left: the host "rebooted"; pre-start restores the copy
    _hook(snippet, "pre-start")
    vm.start()
    _hook(snippet, "post-start")  # notes the run
    timings["boot3"] = vm.wait_ssh()
    assert _ok(cli("collect", str(VMID), "--json")).json["status"] == "nothing"  # this run is now known

    def pve_stop(vmid):  # qm stop as qemu-server does it: kill QEMU, vm_stop_cleanup, post-stop
        vm.kill()
        shm.unlink(missing_ok=True)
        _hook(snippet, "post-stop")
    fake.stop_qemu = pve_stop
    time.sleep(1.2)  # task start times are whole seconds
    fake.handle("POST", f"/nodes/pve1/qemu/{VMID}/status/stop", {}, "root@pam")
    _hook(snippet, "pre-start")
    vm.start()
    _hook(snippet, "post-start")
    fake.new_task("pve1", "qmstart", str(VMID), "root@pam")
    doc = _ok(cli("collect", str(VMID), "--json")).json
    assert (doc["status"], doc["verdict"]) == ("collected", "host_stop"), doc
    assert _ok(cli("collect", str(VMID), "--json")).json["status"] == "nothing"  # once

    # -- 7. qm reset: the guest restarts inside the same QEMU process, no dump, no new run ----------
    timings["boot4"] = vm.wait_ssh()
    assert _ok(cli("collect", str(VMID), "--json")).json["status"] == "nothing"  # the guest's boot is known
    old, pid = vm.boot_id(), vm.proc.pid
    time.sleep(1.2)
    fake.handle("POST", f"/nodes/pve1/qemu/{VMID}/status/reset", {}, "root@pam")
    assert "return" in vm.qmp("system_reset")  # what qemu-server's vm_reset sends
    timings["reset"] = vm.wait_new_boot(old)
    assert vm.proc.pid == pid and vm.running()
    doc = _ok(cli("collect", str(VMID), "--json")).json
    assert (doc["status"], doc["verdict"], doc["records"]) == ("collected", "host_reset", 0), doc
    assert _ok(cli("collect", str(VMID), "--json")).json["status"] == "nothing"  # once

    timings["total"] = time.monotonic() - t_all
    with capsys.disabled():
        print(f"\nivshmem pve e2e ({vm.boots} QEMU starts) timings (s): "
              + ", ".join(f"{k}={v:.0f}" for k, v in timings.items()))
