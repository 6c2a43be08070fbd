"""The ivshmem backend's host side through the whole stop/start sequence as Proxmox runs it.

Proxmox: pre-start hook → QEMU maps /dev/shm/pve-shm-<name> (an existing file is
reopened as it is) → post-start hook → ... → QEMU exits → vm_stop_cleanup unlinks
the file → post-stop hook.  The real QEMU + kernel run of this lives in the
kernel harness; here the "QEMU" maps the file and the "guest" writes ramoops
zones into it, as ramoops does.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys

import pytest

from pvepstore.pve import ivshmem, state
from tests.conftest import REPO, run_cli
from tests.pstore.test_ramoops import PANIC_LONG, REBOOT, Ram

MiB = 1 << 20
K64 = 64 << 10


class FakeQemu:
    """Maps the shm file like ``-object memory-backend-file,share=on,mem-path=...,size=1M``."""

    def __init__(self, path):
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(fd).st_size < MiB:
            os.ftruncate(fd, MiB)
        self.mem = mmap.mmap(fd, MiB, mmap.MAP_SHARED)
        os.close(fd)

    def guest_writes(self, ram: Ram) -> None:
        self.mem[:] = bytes(ram.mem)

    def exit(self) -> None:
        self.mem.close()


def guest_memory(*dumps: tuple[int, bytes, bool]) -> Ram:
    ram = Ram()
    for i in range(16):
        ram.zone(i * K64, b"")  # ramoops gives every zone a header at probe
    for zone, text, compressed in dumps:
        ram.dump(zone, text, compressed=compressed)
    return ram


@pytest.fixture
def ivshmem_vm(fakepve):
    fakepve.add_storage("local", "dir", path="/var/lib/vz", content="iso,vztmpl,backup,images,snippets")
    (fakepve.host_root / "dev" / "shm").mkdir(parents=True, exist_ok=True)  # a node's tmpfs
    operator_log = fakepve.tmp / "operator-hook.log"
    own = fakepve.paths.storage_path("/var/lib/vz") / "snippets" / "operator.sh"
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text(f"#!/bin/sh\necho \"$1 $2\" >> {operator_log}\n[ \"$2\" != pre-start ] || exit 0\n")
    own.chmod(0o755)
    fakepve.add_vm(101, config={"hookscript": "local:snippets/operator.sh", "ivshmem": ivshmem.ivshmem_option(101)})
    config = fakepve.config_file(vms={101: {"backend": "ivshmem"}})
    cfg = fakepve.load_config(vms={101: {"backend": "ivshmem"}})
    program = [sys.executable, "-m", "pvepstore", "--config", str(config)]
    volid = ivshmem.install_hookscript(cfg, "local", program, 101, chain="local:snippets/operator.sh")
    state.update(cfg, 101, provision={"ramoops_params": {"record_size": K64, "console_size": 0,
                                                          "pmsg_size": 0, "ftrace_size": 0}})
    hook = ivshmem.snippet_path(cfg.paths, volid)
    return fakepve, cfg, config, hook, operator_log


def pve_hook(hook, phase):
    """PVE runs the hookscript as `<script> <vmid> <phase>`; a non-zero pre-start aborts the start."""
    proc = subprocess.run([str(hook), "101", phase], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_records_survive_stop_start_and_host_reboot_and_the_operator_hook_still_runs(ivshmem_vm):
    fake, cfg, config, hook, operator_log = ivshmem_vm
    live = cfg.paths.ivshmem_file(ivshmem.shm_name(101))
    pve_hook(hook, "pre-start")
    qemu = FakeQemu(live)
    pve_hook(hook, "post-start")
    qemu.guest_writes(guest_memory((0, PANIC_LONG, True)))  # the guest panicked
    qemu.exit()
    live.unlink()  # vm_stop_cleanup
    out = pve_hook(hook, "post-stop")
    assert "saved" in out
    # stopped VM: the host reads the records without SSH
    image = ivshmem.read_image(cfg, 101)
    assert image.source == "keep"
    assert [r.reason for r in ivshmem.parse_image(cfg, 101, image).records] == ["Panic"]
    # next start: QEMU maps the old inode again
    pve_hook(hook, "pre-start")
    qemu = FakeQemu(live)
    assert bytes(qemu.mem[:4]) == b"DBGC" and b"====" in bytes(qemu.mem[:64])
    pve_hook(hook, "post-start")
    qemu.exit()
    live.unlink()
    pve_hook(hook, "post-stop")
    # the host reboots: /dev/shm is empty, the durable copy brings the records back
    cfg.paths.ivshmem_keep(ivshmem.shm_name(101)).unlink()
    pve_hook(hook, "pre-start")
    assert ivshmem.read_image(cfg, 101).source == "live"
    assert operator_log.read_text().split("\n")[:3] == ["101 pre-start", "101 post-start", "101 post-stop"]


def test_collect_reads_live_memory_without_ssh_and_clears_only_unchanged_zones(ivshmem_vm):
    fake, cfg, config, hook, _ = ivshmem_vm
    live = cfg.paths.ivshmem_file(ivshmem.shm_name(101))
    pve_hook(hook, "pre-start")
    qemu = FakeQemu(live)
    pve_hook(hook, "post-start")
    fake.start_qemu(101)
    qemu.guest_writes(guest_memory((0, PANIC_LONG, True), (1, REBOOT, False)))
    r = run_cli("--config", str(config), "collect", "101", "--json")
    assert r.status == 0, r.stderr
    doc = r.json
    assert (doc["status"], doc["verdict"], doc["records"]) == ("collected", "kernel_panic", 2)
    # zones zapped as the kernel's erase does: start = size = 0, signature kept
    assert bytes(qemu.mem[4:12]) == b"\0" * 8 and bytes(qemu.mem[:4]) == b"DBGC"
    assert bytes(qemu.mem[K64 + 4:K64 + 12]) == b"\0" * 8
    r = run_cli("--config", str(config), "collect", "101", "--json")
    assert r.json["status"] == "nothing"
    qemu.exit()


def test_a_zone_rewritten_after_the_snapshot_is_not_cleared(ivshmem_vm):
    fake, cfg, config, hook, _ = ivshmem_vm
    live = cfg.paths.ivshmem_file(ivshmem.shm_name(101))
    qemu = FakeQemu(live)
    qemu.guest_writes(guest_memory((0, PANIC_LONG, True)))
    image = ivshmem.read_image(cfg, 101)
    records = ivshmem.parse_image(cfg, 101, image).records
    qemu.guest_writes(guest_memory((0, REBOOT, False)))  # next boot's first dump lands in zone 0
    assert ivshmem.clear_records(cfg, 101, image, records) == []
    assert b"Shutdown#2" in bytes(qemu.mem[:200])
    qemu.exit()


def test_a_missing_operator_hookscript_is_refused_not_dropped(fakepve):
    fakepve.add_storage("local", "dir", path="/var/lib/vz", content="images,snippets")
    cfg = fakepve.load_config()
    from pvepstore.errors import PveError
    with pytest.raises(PveError, match="does not exist") as exc:
        ivshmem.install_hookscript(cfg, "local", "/usr/bin/pvepstore", 101, chain="local:snippets/gone.sh")
    assert "will not drop it" in exc.value.hint
    with pytest.raises(PveError):
        ivshmem.snippet_path(cfg.paths, "local:snippets/../../etc/passwd")


def test_boot_ends_without_a_dump_are_seen_as_for_every_backend(ivshmem_vm):
    """An API stop + start, and a QEMU the node's OOM killer killed: no record (ramoops cannot write
    on SIGKILL), but a new QEMU run -> host_stop and host_oom_kill, each once, not "nothing"."""
    import json
    import time

    from tests.fakepve.hostlog import add_journal, real_oom_messages

    fake, cfg, config, hook, _ = ivshmem_vm
    qemu = FakeQemu(cfg.paths.ivshmem_file(ivshmem.shm_name(101)))
    qemu.guest_writes(guest_memory())  # ramoops probed: empty zones
    fake.start_qemu(101)
    pve_hook(hook, "post-start")  # Proxmox runs the hookscript after every start

    def collect():
        r = run_cli("--config", str(config), "collect", "101", "--json")
        assert r.status == 0, r.stderr
        return r.json

    def evidence(doc):
        return json.loads((fake.state_dir / "archive" / "101" / doc["incident"] / "evidence.json").read_text())

    assert collect()["status"] == "nothing"  # the QEMU run is now known
    time.sleep(1.2)  # PVE's task start times are whole seconds
    fake.handle("POST", "/nodes/pve1/qemu/101/status/stop", {}, "root@pam")
    fake.handle("POST", "/nodes/pve1/qemu/101/status/start", {}, "root@pam")
    pve_hook(hook, "post-start")
    doc = collect()
    assert (doc["status"], doc["verdict"]) == ("collected", "host_stop"), doc
    assert any(e["source"] == "qemu_run" for e in evidence(doc))
    # no record from a backend that writes panic dumps says so (not pstore_blk's "cannot store panics")
    assert any("keeps panic dumps and none was written" in e["summary"] for e in evidence(doc)), evidence(doc)
    assert collect()["status"] == "nothing"  # once
    time.sleep(1.2)
    for m in real_oom_messages():  # the real kernel's kill of a kvm process in qemu.slice/101.scope
        add_journal(fake, time.time(), m)
    fake.stop_qemu(101)  # SIGKILL, no task: what the OOM killer does
    time.sleep(0.1)
    fake.start_qemu(101)  # HA or the operator started it again
    pve_hook(hook, "post-start")
    doc = collect()
    assert (doc["status"], doc["verdict"]) == ("collected", "host_oom_kill"), doc
    qemu.exit()


def test_a_dump_read_while_the_vm_is_off_explains_its_end_once(ivshmem_vm):
    """The panic is collected from the stopped VM's memory; the next start is not a second incident."""
    fake, cfg, config, hook, _ = ivshmem_vm
    qemu = FakeQemu(cfg.paths.ivshmem_file(ivshmem.shm_name(101)))
    qemu.guest_writes(guest_memory())
    fake.start_qemu(101)
    assert run_cli("--config", str(config), "collect", "101", "--json").json["status"] == "nothing"
    qemu.guest_writes(guest_memory((0, PANIC_LONG, True)))
    fake.stop_qemu(101)
    doc = run_cli("--config", str(config), "collect", "101", "--json").json
    assert (doc["status"], doc["verdict"]) == ("collected", "kernel_panic"), doc
    fake.start_qemu(101)
    assert run_cli("--config", str(config), "collect", "101", "--json").json["status"] == "nothing"
    qemu.exit()


@pytest.mark.parametrize("watchdog,verdict", [(False, "host_reset"), (True, "hang")], ids=["qm-reset", "watchdog"])
def test_a_reset_inside_the_same_qemu_run_is_seen_when_the_guest_answers(ivshmem_vm, monkeypatch, watchdog, verdict):
    """`qm reset` (or a watchdog) restarts the guest inside the same QEMU process and ramoops gets no
    dump: no new run.  The guest's own boot id, asked over SSH when it answers, shows the ended boot."""
    import time

    from pvepstore.guest import SshTransport
    from tests.pipeline.test_sweep_fakepve import BOOT_A, BOOT_B, RunningGuest

    fake, cfg, config, hook, _ = ivshmem_vm
    config = fake.config_file(vms={101: {"backend": "ivshmem", "ssh": {"host": "10.0.0.101"}}})
    guest = RunningGuest()
    monkeypatch.setattr(SshTransport, "connect", staticmethod(guest.connect))
    qemu = FakeQemu(cfg.paths.ivshmem_file(ivshmem.shm_name(101)))
    qemu.guest_writes(guest_memory())
    fake.start_qemu(101)
    pve_hook(hook, "post-start")

    def collect():
        r = run_cli("--config", str(config), "collect", "101", "--json")
        assert r.status == 0, r.stderr
        return r.json

    guest.boot(BOOT_A, uptime=30)
    assert collect()["status"] == "nothing"  # run and guest boot A known
    time.sleep(1.2)
    if watchdog:
        guest.boot(BOOT_B, uptime=0.5, watchdogs="watchdog0 32 i6300ESB timer\n")
    else:
        fake.handle("POST", "/nodes/pve1/qemu/101/status/reset", {}, "root@pam")
        guest.boot(BOOT_B, uptime=0.5)
    time.sleep(1.0)  # the new boot's kernel starts after the reset task (its start is whole seconds)
    doc = collect()
    assert (doc["status"], doc["verdict"]) == ("collected", verdict), doc
    assert collect()["status"] == "nothing"  # once
    # unreachable guest: the records are still read on the host, no incident is made up
    monkeypatch.setattr(SshTransport, "connect", staticmethod(lambda target: (_ for _ in ()).throw(
        __import__("pvepstore.errors", fromlist=["GuestError"]).GuestError("no route to host"))))
    assert collect()["status"] == "nothing"
    qemu.exit()


def test_a_guest_whose_dump_explains_its_boot_is_not_asked(ivshmem_vm, monkeypatch):
    """A panic dump explains the boot by itself: a panicked guest is not asked over SSH (that would
    only wait for the connection's timeout), and its next boot is a baseline, not a second incident."""
    from pvepstore.guest import SshTransport
    from tests.pipeline.test_sweep_fakepve import BOOT_A, BOOT_B, RunningGuest

    fake, cfg, config, hook, _ = ivshmem_vm
    config = fake.config_file(vms={101: {"backend": "ivshmem", "ssh": {"host": "10.0.0.101"}}})
    guest, asked = RunningGuest(), []
    monkeypatch.setattr(SshTransport, "connect", staticmethod(lambda t: asked.append(t) or guest.connect(t)))
    qemu = FakeQemu(cfg.paths.ivshmem_file(ivshmem.shm_name(101)))
    qemu.guest_writes(guest_memory())
    fake.start_qemu(101)
    pve_hook(hook, "post-start")
    guest.boot(BOOT_A, uptime=30)
    assert run_cli("--config", str(config), "collect", "101", "--json").json["status"] == "nothing"
    assert len(asked) == 1
    qemu.guest_writes(guest_memory((0, PANIC_LONG, True)))  # the guest panicked and hangs
    doc = run_cli("--config", str(config), "collect", "101", "--json").json
    assert (doc["status"], doc["verdict"]) == ("collected", "kernel_panic") and len(asked) == 1, doc
    guest.boot(BOOT_B, uptime=5)  # reset by the admin (qm reset) after the panic
    assert run_cli("--config", str(config), "collect", "101", "--json").json["status"] == "nothing"
    qemu.exit()
