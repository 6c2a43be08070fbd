"""End to end, ivshmem backend, on the real Debian guests (12: 6.1; 13: 6.12, systemd 257): QEMU with
exactly Proxmox's ``ivshmem: size=1,name=pvepstore-100`` arguments (mem-path under the fake node's
``host_root``/dev/shm) -> guest side provisioned over SSH (probe, plan, apply, verify)
-> clean ``reboot`` inside the same QEMU process -> the host collects from the shm file
WITHOUT SSH: ``orderly_reboot`` -> a non-fatal Oops, written into the live memory at once:
``kernel_oops``, cleared there -> undo, byte for byte (ramoops unloaded) -> apply again ->
``echo c > /proc/sysrq-trigger`` with kernel.panic=0 (the guest hangs) -> the host collects from
the LIVE file: ``kernel_panic`` with the panic text.

One QEMU process, two boots.  Run alone with ``pytest -m vm tests/vm/test_ivshmem_e2e.py -s``.
"""

from __future__ import annotations

import time

import pytest

from pvepstore.guest import connect
from pvepstore.pve import ivshmem
from tests.conftest import run_cli
from tests.guest.conftest import assessed, managed_paths, plan_for, verify_for

from .harness import oops_module
from .test_e2e import OOPSMOD_GUEST, _sha_of

pytestmark = pytest.mark.vm

VMID = 100


def _reboot(vm, target) -> None:
    with connect(target) as g:
        old = g.reboot()
    time.sleep(3)
    # A warm reset in the same TCG process can crawl: CI once saw the next boot still in udev after
    # 300 s, with soft lockups (QEMU busy invalidating the old kernel's translated code), where the
    # same reboot usually takes ~70 s
    vm.wait_ssh(timeout=900)
    with connect(target) as g:
        assert g.boot_history().boot_id != old
    assert vm.running()  # a guest reboot keeps the QEMU process (and the shm file)


def _collect(config) -> dict:
    r = run_cli("--config", str(config), "collect", str(VMID), "--json")
    assert r.status == 0, r.stderr
    return r.json


def _incident_text(config, incident: str) -> str:
    r = run_cli("--config", str(config), "incidents", "show", incident, "--json")
    assert r.status == 0, r.stderr
    return r.stdout


@pytest.mark.suites("bookworm", "trixie")
def test_ivshmem_panic_and_clean_reboot(vm, fakepve, capsys):
    timings = {}
    t_all = time.monotonic()
    fakepve.add_vm(VMID, {"ivshmem": ivshmem.ivshmem_option(VMID)}, disk_storage=None)
    fakepve.start_qemu(VMID)  # the node's view: VM running (the real QEMU below is the guest)
    # no ssh settings for the VM: the host side must never need the guest
    config = fakepve.config_file(vms={VMID: {"backend": "ivshmem"}})
    cfg = fakepve.load_config(vms={VMID: {"backend": "ivshmem"}})
    shm = cfg.paths.ivshmem_file(ivshmem.shm_name(VMID))
    shm.parent.mkdir(parents=True, exist_ok=True)
    vm.ivshmem_file = shm
    vm.smp = 1  # one vCPU thread: the 2 host cores are shared with other QEMU guests (TCG)
    vm.start()
    timings["boot"] = vm.wait_ssh()
    assert shm.stat().st_size == 1 << 20

    # -- guest side over SSH -------------------------------------------------------------
    t0 = time.monotonic()
    with connect(vm.target()) as g:
        r = assessed(g, "ivshmem", serial="pvepstore", disk_bytes=None)
        assert r.ivshmem is not None and r.ivshmem.size == 1 << 20 and not r.ivshmem.driver
        assert r.ramoops == "module" and r.backend is None
        assert {k: c.status for k, c in r.capabilities.items()} == {
            "oops": "yes", "panic": "yes", "shutdown": "yes", "emergency_restart": "yes",
            "console": "no", "pmsg": "no"}
        assert not r.blockers, r.problems
        release = r.kernel
        touched = list(managed_paths()) + ["/var/lib/pvepstore/manifest.json"]
        before = _sha_of(g, touched)
        plan = plan_for(g, r)
        assert plan.settings["console_size"] == plan.settings["pmsg_size"] == 0
        res = g.apply(plan)
        assert res.ok, res.failures
        assert "ran load-ramoops" in res.done
        assert plan_for(g, assessed(g, "ivshmem", disk_bytes=None)).empty
        v = verify_for(g, "ivshmem")
        assert v.ok, v.problems
    timings["provision"] = time.monotonic() - t0

    # -- clean reboot in the same QEMU process: a Shutdown record, read by the host ------
    t0 = time.monotonic()
    _reboot(vm, vm.target())
    timings["reboot"] = time.monotonic() - t0
    with connect(vm.target()) as g:
        v = verify_for(g, "ivshmem")  # the boot unit loaded ramoops this time
        assert v.ok, v.problems
        assert ("boot unit", True, "pvepstore-ramoops.service enabled, active") in v.checks
    doc = _collect(config)
    assert (doc["status"], doc["verdict"]) == ("collected", "orderly_reboot"), doc
    assert "Shutdown" in _incident_text(config, doc["incident"])
    assert _collect(config)["status"] == "nothing"  # the zone was cleared in the live memory

    # -- a non-fatal Oops: ramoops writes it into the live memory at once; the host collects it ----
    vm.put(OOPSMOD_GUEST, oops_module(release).read_bytes())
    vm.run(f"insmod {OOPSMOD_GUEST} && (sh -c 'echo oops > /proc/pvepstore_oops' 2>/dev/null; true)\n")
    doc = _collect(config)
    assert (doc["status"], doc["verdict"], doc["records"]) == ("collected", "kernel_oops", 1), doc
    assert "pvepstore_oops" in _incident_text(config, doc["incident"])
    assert _collect(config)["status"] == "nothing"

    # -- undo: every touched file back, byte for byte, ramoops unloaded; then apply again -----------
    t0 = time.monotonic()
    with connect(vm.target()) as g:
        res = g.undo()
        assert res.ok, res.failures
        assert _sha_of(g, touched) == before
        assert g.transport.run("m", "cat /sys/module/pstore/parameters/backend\n", []).stdout.strip() in (b"", b"(null)")
        res = g.apply(plan_for(g, assessed(g, "ivshmem", disk_bytes=None)))
        assert res.ok and "ran load-ramoops" in res.done, res.failures
    timings["undo_reapply"] = time.monotonic() - t0

    # -- panic, kernel.panic=0: the guest hangs; the host reads the live file ------------
    with connect(vm.target()) as g:
        g.transport.run("panic", "sysctl -qw kernel.panic=0; sync; "
                                 "nohup sh -c 'sleep 1; echo c > /proc/sysrq-trigger' >/dev/null 2>&1 &\n", [])
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:  # the dump is deflate-compressed: ask the reader
        if any(r.reason == "Panic" for r in ivshmem.parse_image(cfg, VMID, ivshmem.read_image(cfg, VMID)).records):
            break
        time.sleep(0.5)
    timings["panic"] = time.monotonic() - t0
    assert vm.running()  # hung, not rebooted
    doc = _collect(config)
    assert (doc["status"], doc["verdict"]) == ("collected", "kernel_panic"), doc
    text = _incident_text(config, doc["incident"])
    assert "Kernel panic - not syncing: sysrq triggered crash" in text
    vm.kill()
    timings["total"] = time.monotonic() - t_all
    with capsys.disabled():
        print(f"\nivshmem e2e ({vm.image.name}) timings (s): " + ", ".join(f"{k}={v:.0f}" for k, v in timings.items()))
