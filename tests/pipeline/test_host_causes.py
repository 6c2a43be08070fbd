"""Causes on the host, through the fake PVE's journal route: a VM whose QEMU the node's OOM killer
killed is ``host_oom_kill``, not ``unexpected_reset``; a node reboot is ``node_reboot``."""

from __future__ import annotations

import signal
import time

import pytest

from tests.fakepve.hostlog import add_journal, real_oom_messages
from tests.pipeline.test_sweep_fakepve import BOOT_A, BOOT_B, _api_task, _evidence, _sweep, running_vm  # noqa: F401

MESSAGES = real_oom_messages()


def _ended_boot(fake, guest, config, api, now, journal):
    guest.boot(BOOT_A, uptime=400)  # boot A started at now-400
    assert _sweep(config)["status"] == "nothing"
    journal()  # what the node logged while boot A ran
    _api_task(fake, api, "start", now - 290)  # the admin (or HA) started the VM again
    guest.boot(BOOT_B, uptime=280)  # no record: QEMU died from outside
    return _sweep(config)


@pytest.mark.parametrize("scope", [101, 102], ids=["this-vm", "another-vm"])
def test_the_nodes_oom_killer_killed_qemu(running_vm, scope):  # noqa: F811
    fake, guest, config, api = running_vm
    now = time.time()

    def journal():
        for m in MESSAGES:
            add_journal(fake, now - 300, m.replace("/qemu.slice/101.scope", f"/qemu.slice/{scope}.scope"))
    vm = _ended_boot(fake, guest, config, api, now, journal)
    assert vm["status"] == "collected", vm
    host = [e for e in _evidence(fake, vm) if e["source"] == "host_kernel"]
    if scope == 101:
        assert vm["verdict"] == "host_oom_kill", vm
        assert [e["details"]["pid"] for e in host] == [29331]
    else:  # VM 102's QEMU was killed: not this VM's cause
        assert vm["verdict"] != "host_oom_kill" and host == [], vm
    assert any(r.path.endswith("/journal") for r in fake.requests)


def test_a_node_reboot_while_the_boot_ran(running_vm):  # noqa: F811
    fake, guest, config, api = running_vm
    now = time.time()

    def journal():
        add_journal(fake, now - 380, "pvedaemon[1234]: <root@pam> starting task", ident="pvedaemon", boot="b0")
        add_journal(fake, now - 295, "Linux version 6.8.12-4-pve", boot="b1")
    vm = _ended_boot(fake, guest, config, api, now, journal)
    assert vm["verdict"] == "node_reboot", vm


def test_without_sys_syslog_the_verdict_goes_on(running_vm):  # noqa: F811
    fake, guest, config, api = running_vm
    now = time.time()
    fake.privileges = {"/": {"VM.Audit", "VM.Monitor", "Datastore.Audit", "VM.Config.Disk", "VM.PowerMgmt"}}
    vm = _ended_boot(fake, guest, config, api, now, lambda: [add_journal(fake, now - 300, m) for m in MESSAGES])
    assert vm["status"] == "collected" and vm["verdict"] != "host_oom_kill", vm
    notes = [e for e in _evidence(fake, vm) if e["source"] == "host_journal"]
    assert notes and "not readable" in notes[0]["summary"], notes


def test_the_journal_is_read_only_hours_back_from_the_restart(running_vm):  # noqa: F811
    from pvepstore.pipeline.hostevidence import HOST_LOG_LOOKBACK

    fake, guest, config, api = running_vm
    now = time.time()
    guest.boot(BOOT_A, uptime=40_000)  # boot A ran for 11 hours
    assert _sweep(config)["status"] == "nothing"
    for m in MESSAGES:  # killed 8 hours before anyone started the VM again
        add_journal(fake, now - 30_000, m)
    _api_task(fake, api, "start", now - 290)
    guest.boot(BOOT_B, uptime=280)
    vm = _sweep(config)
    assert vm["verdict"] != "host_oom_kill", vm
    (req,) = [r for r in fake.requests if r.path.endswith("/journal")]
    assert int(req.params["since"]) >= int(now - 280 - HOST_LOG_LOOKBACK) - 1, req.params


def test_a_hung_guest_stopped_by_the_host_is_a_hang(running_vm):  # noqa: F811
    """The guest's journal kept the soft lockup (pr_emerg: journald syncs it at once); the admin then
    hard-stopped and started the VM: the root cause is the hang, the stop is how it ended."""
    from tests.analysis.corpus import CORPUS
    from tests.analysis.test_guestlog import DMESG_STAMP, short_unix

    fake, guest, config, api = running_vm
    now = time.time()
    lockup = (CORPUS / "clearlinux" / "oops_test_files" / "soft_lockup.txt").read_text()
    guest.boot(BOOT_A, uptime=400)
    assert _sweep(config)["status"] == "nothing"
    _api_task(fake, api, "stop", now - 300)
    _api_task(fake, api, "start", now - 295)
    guest.boot(BOOT_B, uptime=280, tail="\n".join(short_unix([DMESG_STAMP.sub("", ln)
                                                             for ln in lockup.splitlines() if ln.strip()])))
    vm = _sweep(config)
    assert vm["verdict"] == "hang", vm
    sources = {e["source"]: e for e in _evidence(fake, vm)}
    assert sources["guest_journal"]["suggests"] == "hang" and sources["pve_task"]["suggests"] == "host_stop"


def test_ha_recovered_the_vm_after_a_fence(running_vm):  # noqa: F811
    """This node was HA's CRM master when it recovered the VM on its old, fenced and rebooted node."""
    from tests.analysis.test_hostlog import RECOVER_AGAIN

    fake, guest, config, api = running_vm
    now = time.time()

    def journal():
        add_journal(fake, now - 299, RECOVER_AGAIN.format(vmid=101).replace("pve2", "pve1"),
                    ident="pve-ha-crm", pid=1234)
    vm = _ended_boot(fake, guest, config, api, now, journal)
    assert vm["verdict"] == "ha_recovery", vm
    (ha,) = [e for e in _evidence(fake, vm) if e["source"] == "ha_manager"]
    assert ha["details"]["fenced"] == "pve1"


def test_the_vms_qemu_segfaulted_on_the_host(running_vm):  # noqa: F811
    """The sweep records the VM's QEMU (pid + vCPU threads, from PVE's pidfile and /proc); its vCPU
    thread then faults (the real kernel's line, with that thread's id) and QEMU dies; HA/the admin
    starts the VM again: ``qemu_crash``, not ``unexpected_reset``."""
    from pvepstore.config import load_config
    from pvepstore.vmstate import VmStateStore
    from tests.fakepve.hostlog import real_fault_lines, with_tid

    fake, guest, config, api = running_vm
    now = time.time()
    pid, (vcpu,) = fake.vms[101].qemu.pid, fake.vcpu_threads(101)
    guest.boot(BOOT_A, uptime=400)
    assert _sweep(config)["status"] == "nothing"
    state = VmStateStore.of(load_config(config)).load(101)
    assert state["qemu"] == {"pid": pid, "threads": [vcpu]}, state
    fake.stop_qemu(101, signal.SIGSEGV)  # the real process dies, outside any task
    add_journal(fake, now - 300, with_tid(real_fault_lines()["vcpu"], vcpu))
    add_journal(fake, now - 300, with_tid(real_fault_lines()["vcpu"], vcpu + 10_000))  # not its thread
    _api_task(fake, api, "start", now - 290)
    guest.boot(BOOT_B, uptime=280)
    vm = _sweep(config)
    assert (vm["status"], vm["verdict"]) == ("collected", "qemu_crash"), vm
    (crash,) = [e for e in _evidence(fake, vm) if e["suggests"] == "qemu_crash"]
    assert crash["details"]["tid"] == vcpu and crash["details"]["pid"] == pid
    new = VmStateStore.of(load_config(config)).load(101)["qemu"]
    assert new["pid"] == fake.vms[101].qemu.pid != pid  # the new QEMU is recorded for the next end


def test_a_reset_inside_the_same_qemu_names_the_watchdog(running_vm):  # noqa: F811
    """No task, no host line, and the QEMU process that ran boot A runs boot B: the reset came from
    inside the VM; its watchdog device (action reset) is named as one way that happens."""
    fake, guest, config, api = running_vm
    fake.set_config(101, watchdog="model=i6300esb,action=reset")
    guest.boot(BOOT_A, uptime=400)
    assert _sweep(config)["status"] == "nothing"
    guest.boot(BOOT_B, uptime=100)
    vm = _sweep(config)
    assert vm["verdict"] == "unexpected_reset", vm
    (same,) = [e for e in _evidence(fake, vm) if e["source"] == "qemu"]
    assert "kept running" in same["summary"] and "i6300esb" in same["summary"], same


@pytest.mark.parametrize("bootstatus,verdict", [(32, "hang"), (0, "unexpected_reset")], ids=["fired", "idle"])
def test_the_guests_watchdog_says_it_reset_the_boot(running_vm, bootstatus, verdict):  # noqa: F811
    """QEMU's i6300esb keeps its "previous reboot" flag across the reset it did; the guest's driver
    reports it as bootstatus WDIOF_CARDRESET (32) in the new boot: a hang, said by the device itself."""
    fake, guest, config, api = running_vm
    fake.set_config(101, watchdog="model=i6300esb,action=reset")
    guest.boot(BOOT_A, uptime=400)
    assert _sweep(config)["status"] == "nothing"
    guest.boot(BOOT_B, uptime=100, watchdogs=f"watchdog0 {bootstatus} i6300ESB timer\n")
    vm = _sweep(config)
    assert vm["verdict"] == verdict, vm
    wd = [e for e in _evidence(fake, vm) if e["source"] == "guest_watchdog"]
    assert (wd[0]["details"]["device"] if wd else None) == ("i6300ESB timer" if bootstatus else None), wd
