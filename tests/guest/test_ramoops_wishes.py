"""The ivshmem backend in the guest: probe, plan, apply, verify, undo, and switching from/to pstore_blk.

Synthetic probe output of a stock Debian 12 guest (recorded-command double); the
loader script is also run for real by ``sh`` against a fake sysfs tree.
"""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from pvepstore.errors import UsageError

from pvepstore.guest.blk_wishes import UNIT, UNIT_LINK
from pvepstore.guest.layout import MODPROBE_CONF, PSTORE_DROPIN
from pvepstore.guest.manifest import MANIFEST, PATHS
from pvepstore.guest.ramoops_wishes import LOADER as RAMOOPS_LOADER
from pvepstore.guest.ramoops_wishes import UNIT as RAMOOPS_UNIT
from pvepstore.guest.ramoops_wishes import UNIT_LINK as RAMOOPS_LINK
from pvepstore.guest.ramoops_wishes import RamoopsSettings, files
from pvepstore.guest.testing import Recorded, reply

from .conftest import assessed, fake_guest, items_after, file_item, plan_for, probe_items, probe_reply, verify_for

BAR2 = ("0x00000000fe000000", "0x00000000fe0fffff", "0x0000000000040200")
DEVICE = ("ivshmem", "0000:00:03.0", " ".join(BAR2), "")
RAMOOPS_LIVE = {"mem_address": str(0xfe000000), "mem_size": str(1 << 20), "record_size": "65536",
                "console_size": "0", "pmsg_size": "0", "ftrace_size": "0", "max_reason": "4", "ecc": "0",
                "dump_oops": "-1", "mem_type": "0"}
BLK_PARAMS = (("blkdev", "/dev/disk/by-id/virtio-pvepstore"), ("best_effort", "Y"), ("kmsg_size", "64"),
              ("max_reason", "2"))


def written(plan) -> dict[str, bytes]:
    return {c.path: base64.b64decode(c.arg.split(":", 1)[1]) for c in plan.changes if c.op == "write"}


def probe(g, backend="ivshmem"):
    return assessed(g, serial="pvepstore", disk_bytes=None, backend=backend)


def state_after(plans, backend, *extra, device=True, pre=()):
    """Probe output of a guest on which ``plans`` were applied in order (files as the last left them)."""
    items = items_after(plans, pre)
    items += [("modprobe_c", "options efi_pstore pstore_disable=Y\n")]
    if backend == "ivshmem":
        items += [("backend", "ramoops"), ("loaded", "ramoops", "live"),
                  ("unit", "pvepstore-ramoops.service", "enabled", "active")]
        items += [("param", f"ramoops/parameters/{k}", v) for k, v in RAMOOPS_LIVE.items()]
    else:
        items += [("backend", "pstore_blk"), ("loaded", "pstore_blk", "live"), ("disk_initialized", "yes"),
                  ("unit", "pvepstore-blk.service", "enabled", "active")]
        items += [("param", f"pstore_blk/parameters/{k}", v) for k, v in BLK_PARAMS]
    if device:
        items.append(DEVICE)
    base = [i for i in probe_items(unlink="no") if i[0] not in ("backend", "disk_zero")]
    return Recorded("probe", 0, reply(*(base + items + list(extra))))


def test_fresh_guest_plan_and_capabilities():
    g, t = fake_guest(probe_reply(DEVICE, disk=False))
    r = probe(g)
    assert r.ivshmem.start == 0xfe000000 and r.ivshmem.size == 1 << 20 and r.ramoops == "module"
    assert {k: c.status for k, c in r.capabilities.items()} == {
        "oops": "yes", "panic": "yes", "shutdown": "yes", "emergency_restart": "yes", "console": "no", "pmsg": "no"}
    assert any("live migration" in c for c in r.costs) and any("/dev/shm" in c for c in r.costs)
    assert {p.code for p in r.problems} == {"not-configured", "systemd-pstore-unlinks"}  # no disk needed
    plan = plan_for(g, r)
    assert [(c.op, c.path) for c in plan.changes] == [
        ("write", MANIFEST), ("write", PATHS), ("write", MODPROBE_CONF), ("mkdir", "/etc/pvepstore"),
        ("write", RAMOOPS_LOADER), ("write", RAMOOPS_UNIT), ("link", RAMOOPS_LINK),
        ("mkdir", "/etc/systemd/pstore.conf.d"), ("write", PSTORE_DROPIN),
        ("run", "daemon-reload"), ("run", "load-ramoops")]
    files = written(plan)
    assert files[MODPROBE_CONF].decode().endswith("options efi_pstore pstore_disable=Y\n")
    assert b"blacklist" not in files[MODPROBE_CONF].replace(b"a blacklist only", b"")
    loader = files[RAMOOPS_LOADER].decode()
    assert ("modprobe ramoops mem_address=$1 mem_size=1048576 record_size=0x10000 console_size=0x0 "
            "pmsg_size=0x0 ftrace_size=0 max_reason=4 ecc=0") in loader
    assert "0x1af4" in loader and "0x1110" in loader
    assert [c for c in plan.changes if c.path == RAMOOPS_LOADER][0].arg.startswith("755:")
    unit = files[RAMOOPS_UNIT].decode()
    assert "Before=systemd-pstore.service sysinit.target" in unit and "DefaultDependencies=no" in unit
    assert b"Unlink=no" in files[PSTORE_DROPIN]
    m = json.loads(files[MANIFEST])
    assert m["settings"] == {"backend": "ivshmem", "mem_size": 1 << 20, "record_size": 0x10000, "console_size": 0,
                             "ftrace_size": 0, "pmsg_size": 0, "max_reason": 4, "ecc": 0}
    assert m["pre"]["ramoops_loaded"] is False
    assert "wipe-disk" not in {c.path for c in plan.changes} and "mark-disk" not in {c.path for c in plan.changes}
    assert t.round_trips == 1


def test_console_and_pmsg_zones_only_where_the_kernel_has_them():
    g, _ = fake_guest(probe_reply(DEVICE, kconfig="CONFIG_PSTORE_RAM=m\nCONFIG_PSTORE_PMSG=y\n"
                                                  "CONFIG_PSTORE_CONSOLE=y\n"))
    r = probe(g)
    assert r.capabilities["pmsg"].status == "yes" and r.capabilities["console"].status == "yes"
    plan = plan_for(g, r)
    assert "console_size=0x10000 pmsg_size=0x10000 ftrace_size=0" in written(plan)[RAMOOPS_LOADER].decode()
    assert plan.settings["console_size"] == plan.settings["pmsg_size"] == 0x10000


def test_without_the_device_yet_the_plan_waits_for_the_cold_start():
    g, _ = fake_guest(probe_reply())
    r = probe(g)
    missing = [p for p in r.problems if p.code == "ivshmem-missing"]
    assert missing and missing[0].severity == "warning" and "cold start" in missing[0].fix
    plan = plan_for(g, r)
    assert not plan.blockers and plan.cold_start_required
    assert not [c for c in plan.changes if c.op == "run" and "ramoops" in c.path]
    assert "next cold start" in "\n".join(plan.describe())


def test_a_claimed_device_and_a_kernel_without_ramoops_are_refused():
    g, _ = fake_guest(probe_reply(("ivshmem", "0000:00:03.0", " ".join(BAR2), "uio_pci_generic")))
    assert "ivshmem-claimed" in {p.code for p in probe(g).blockers}
    g, _ = fake_guest(probe_reply(DEVICE, kconfig="# CONFIG_PSTORE_RAM is not set\n"))
    r = assessed(g, backend="ivshmem")
    r.ramoops = "missing"  # no module file either
    from pvepstore.guest.ramoops_wishes import capabilities
    assert {c.status for c in capabilities(r).values()} == {"no"}


def test_apply_is_idempotent_and_verify_checks_the_live_parameters():
    g, t = fake_guest(probe_reply(DEVICE))
    plan = plan_for(g, probe(g))
    t.add(state_after([plan], "ivshmem"))
    again = plan_for(g, probe(g))
    assert again.empty, again.describe()
    t.add(state_after([plan], "ivshmem"))
    v = verify_for(g, "ivshmem")
    assert v.ok, v.problems
    assert ("param mem_address", True, f"{0xfe000000} (want {0xfe000000})") in v.checks
    assert ("boot unit", True, "pvepstore-ramoops.service enabled, active") in v.checks
    # a boot without the device (not cold-started yet): verify says why
    t.add(state_after([plan], "ivshmem", ("backend", "(null)"), device=False))
    v = verify_for(g, "ivshmem")
    assert not v.ok and any(p.startswith("ivshmem device: not in this boot") for p in v.problems)


def test_other_ramoops_parameters_are_reloaded():
    g, t = fake_guest(probe_reply(DEVICE))
    plan = plan_for(g, probe(g))
    t.add(state_after([plan], "ivshmem", ("param", "ramoops/parameters/ftrace_size", "4096")))
    again = plan_for(g, probe(g))
    assert [(c.op, c.path) for c in again.changes] == [("run", "reload-ramoops")]


def test_an_old_ramoops_setup_blocks_until_consented():
    legacy = file_item("/etc/modprobe.d/ramoops.conf", b"options ramoops mem_address=0x7f000000 mem_size=0x100000\n")
    g, _ = fake_guest(probe_reply(DEVICE, legacy))
    r = probe(g)
    plan = plan_for(g, r)
    assert [b.code for b in plan.blockers] == ["legacy-ramoops"] and not plan.changes
    plan = plan_for(g, r, remove_legacy=True)
    assert ("remove", "/etc/modprobe.d/ramoops.conf") in [(c.op, c.path) for c in plan.changes]


def test_switch_blk_to_ivshmem_and_back_then_undo():
    g, t = fake_guest(probe_reply(DEVICE))
    blk = plan_for(g, assessed(g, serial="pvepstore", disk_bytes=512 << 20))
    t.add(state_after([blk], "pstore_blk"))
    r = probe(g)
    assert "backend-blk" in {p.code for p in r.problems}
    to_ivshmem = plan_for(g, r)
    ops = [(c.op, c.path) for c in to_ivshmem.changes]
    assert ("restore", UNIT) in ops and ("restore", UNIT_LINK) in ops and ("write", RAMOOPS_UNIT) in ops
    assert ops[-2:] == [("run", "unload-module"), ("run", "load-ramoops")]
    assert "switches this guest from the pstore_blk backend to ivshmem" in "\n".join(to_ivshmem.describe())
    m = {e["path"]: e for e in json.loads(written(to_ivshmem)[MANIFEST])["files"]}
    assert m[UNIT]["action"] == "created" and m[UNIT]["sha256_after"] == "-"
    assert json.loads(written(to_ivshmem)[MANIFEST])["pre"]["pstore_blk_loaded"] is False  # from the first apply

    t.add(state_after([blk, to_ivshmem], "ivshmem"))
    assert plan_for(g, probe(g)).empty
    t.add(state_after([blk, to_ivshmem], "ivshmem"))
    r = assessed(g, serial="pvepstore", disk_bytes=512 << 20)
    assert "backend-ramoops-ivshmem" in {p.code for p in r.problems} and not r.blockers
    back = plan_for(g, r)
    ops = [(c.op, c.path) for c in back.changes]
    assert ("restore", RAMOOPS_UNIT) in ops and ("restore", RAMOOPS_LOADER) in ops and ("link", UNIT_LINK) in ops
    assert ops[-2:] == [("run", "unload-ramoops"), ("run", "load-module")]
    # the files are exactly those of the first pstore_blk apply
    final = state_after([blk, to_ivshmem, back], "pstore_blk")
    t.add(final)
    assert plan_for(g, assessed(g, serial="pvepstore", disk_bytes=512 << 20)).empty
    # undo from here: every pvepstore file goes, both modules it loaded are unloaded
    t.add(state_after([blk, to_ivshmem, back], "pstore_blk", ("loaded", "ramoops", "live")))
    undo = g.undo_plan(probe(g))
    paths = {c.path for c in undo.changes if c.op == "restore"}
    assert paths >= {MODPROBE_CONF, UNIT, UNIT_LINK, RAMOOPS_UNIT, RAMOOPS_LINK, RAMOOPS_LOADER, PSTORE_DROPIN}
    runs = [c.path for c in undo.changes if c.op == "run"]
    assert runs == ["daemon-reload", "unload-module", "unload-ramoops", "drop-state"]
    assert ("rmdir", "/etc/pvepstore") in [(c.op, c.path) for c in undo.changes]
    assert not undo.notes  # nothing drifted


def test_plan_refuses_a_probe_made_for_the_other_backend():
    from pvepstore.guest import blk_wishes, ramoops_wishes

    g, _ = fake_guest(probe_reply(DEVICE))
    r = probe(g)
    with pytest.raises(UsageError, match="probe again"):
        g.plan(r, wishes=blk_wishes.wishes(r, blk_wishes.settings(r)))
    with pytest.raises(ValueError, match="max_reason=4"):
        ramoops_wishes.settings(r, max_reason=2)


@pytest.mark.parametrize("bar,size,driver,expect", [
    (("0x00000000fe000000", "0x00000000fe0fffff"), None, None, "mem_address=0x00000000fe000000 mem_size=1048576"),
    (("0x000000e000000000", "0x000000e0000fffff"), None, None, "mem_address=0x000000e000000000 mem_size=1048576"),
    (("0x00000000fe000000", "0x00000000fe1fffff"), None, None, None),  # 2 MiB: not pvepstore's device
    (("0x00000000fe000000", "0x00000000fe0fffff"), None, "uio_pci_generic", None),
])
def test_the_loader_script_on_a_fake_sysfs(tmp_path, bar, size, driver, expect):
    loader = {w.path: w for w in files(RamoopsSettings())}[RAMOOPS_LOADER].content.decode()
    root = tmp_path / "root"
    dev = root / "sys/bus/pci/devices/0000:00:03.0"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x1af4\n")
    (dev / "device").write_text("0x1110\n")
    (dev / "resource").write_text("0x000000000000c000 0x000000000000c0ff 0x0000000000040101\n"
                                  "0x00000000febf1000 0x00000000febf1fff 0x0000000000040200\n"
                                  f"{bar[0]} {bar[1]} 0x0000000000040200\n")
    if driver:
        (root / "drivers" / driver).mkdir(parents=True)
        (dev / "driver").symlink_to(root / "drivers" / driver)
    (root / "sys/module/pstore/parameters").mkdir(parents=True)
    (root / "sys/module/pstore/parameters/backend").write_text("(null)\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "modprobe").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/modprobe.args\n")
    (bindir / "modprobe").chmod(0o755)
    script = loader.replace("/sys/", f"{root}/sys/").replace("PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                                                            f"PATH={bindir}:/usr/bin:/bin")
    for shell in ("sh", "dash"):
        proc = subprocess.run([shell, "-c", script], capture_output=True, text=True)
        if proc.returncode == 127 and shell == "dash":
            continue
        assert proc.returncode == 0, proc.stderr
        args = tmp_path / "modprobe.args"
        if expect is None:
            assert not args.exists()
            assert "not loaded" in proc.stdout
        else:
            assert args.read_text().startswith(f"ramoops {expect} record_size=0x10000 ")
            args.unlink()
