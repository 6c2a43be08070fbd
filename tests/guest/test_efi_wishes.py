"""The efi_pstore backend in the guest: probe verdict, plan, switching from pstore_blk, verify."""

from __future__ import annotations

from pvepstore.guest.blk_wishes import UNIT as BLK_UNIT
from pvepstore.guest.efi_wishes import LOADER, UNIT, UNIT_LINK, EfiSettings, files
from pvepstore.guest.layout import MODPROBE_CONF, PSTORE_DROPIN
from pvepstore.guest.testing import Recorded, reply

from .conftest import assessed, fake_guest, items_after, plan_for, probe_items, probe_reply, verify_for
from .test_ramoops_wishes import state_after, written


def efi_state_after(plans, *extra, unit=("enabled", "active"), kmsg_bytes=None, always_kmsg_dump=None):
    """Probe output of a UEFI guest after ``plans``: efi_pstore registered, no modprobe option, the
    unit in state ``unit`` and the dump parameters as the last plan's settings (unless given)."""
    s = plans[-1].settings or {}
    kmsg = s.get("kmsg_bytes", 10240) if kmsg_bytes is None else kmsg_bytes
    always = s.get("always_kmsg_dump", False) if always_kmsg_dump is None else always_kmsg_dump
    items = items_after(plans)
    # 6.1 has no pstore.kmsg_bytes parameter: pstorefs shows kmsg_bytes= when it is not the default
    opts = "rw,nosuid,nodev,noexec,relatime" + (f",kmsg_bytes={kmsg}" if kmsg != 10240 else "")
    items += [("backend", "efi"), ("loaded", "efi_pstore", "live"), ("efi", "yes"),
              ("unit", "pvepstore-efi.service", *unit), ("pstorefs", "pstore", opts),
              ("param", "printk/parameters/always_kmsg_dump", "Y" if always else "N")]
    over = {i[0] for i in extra}  # a key in ``extra`` (uname, backend) replaces the default
    base = [i for i in probe_items(unlink="no", disk=False) if i[0] not in ("backend", "pstorefs") and i[0] not in over]
    items = [i for i in items if i[0] not in over]
    return Recorded("probe", 0, reply(*(base + items + list(extra))))


def probe(g):
    return assessed(g, serial="pvepstore", disk_bytes=None, backend="efi_pstore")


def test_stock_uefi_guest_keeps_efi_pstore_in_the_slot():
    g, t = fake_guest(probe_reply(backend="efi", efi=True, disk=False))
    r = probe(g)
    assert r.configured and not r.blockers
    assert r.capabilities["oops"].status == r.capabilities["panic"].status == "yes"
    assert r.capabilities["shutdown"].status == "no" and "always_kmsg_dump" in r.capabilities["shutdown"].note
    assert any("UEFI variable store" in c for c in r.costs) and any("no migration cost" in c for c in r.costs)
    plan = plan_for(g, r, kmsg_bytes=8192, always_kmsg_dump=True)
    out = written(plan)
    assert set(out) >= {LOADER, UNIT, PSTORE_DROPIN} and MODPROBE_CONF not in out
    # pstore's kmsg_bytes parameter is 0444: pstorefs' mount option is what sets it
    assert b"mount -o remount,kmsg_bytes=8192 /sys/fs/pstore" in out[LOADER]
    assert b"/sys/module/pstore/parameters/kmsg_bytes" not in out[LOADER]
    assert b"echo Y > /sys/module/printk/parameters/always_kmsg_dump" in out[LOADER]
    assert b"pstore_disable" not in b"".join(out.values())
    assert ("link", UNIT_LINK) in [(c.op, c.path) for c in plan.changes]
    assert not plan.reboot_required
    # registered already, so nothing (re)loads it; the loader still runs now for the dump settings
    # (the first real-VM run found always_kmsg_dump N until the next boot)
    assert [c.path for c in plan.changes if c.op == "run"][-1:] == ["load-efi"], plan.describe()


def test_kmsg_bytes_of_a_61_kernel_comes_from_the_mount_options_or_the_kconfig_default():
    from pvepstore.guest.probe import current_kmsg_bytes

    kconf = {"PSTORE_DEFAULT_KMSG_BYTES": "10240"}
    assert current_kmsg_bytes("rw,nosuid,nodev,noexec,relatime", kconf) == 10240
    assert current_kmsg_bytes("rw,nosuid,nodev,noexec,relatime,kmsg_bytes=8192", kconf) == 8192
    assert current_kmsg_bytes("rw", {}) is None
    g, t = fake_guest(probe_reply(backend="efi", efi=True, disk=False))
    assert probe(g).kmsg_bytes == 10240  # what the real Debian 6.1 guest printed


def test_settings_in_effect_need_no_load():
    g, t = fake_guest(probe_reply(backend="efi", efi=True, disk=False))
    plan = plan_for(g, probe(g), kmsg_bytes=8192, always_kmsg_dump=True)
    g, t = fake_guest(efi_state_after([plan]))
    again = plan_for(g, probe(g), kmsg_bytes=8192, always_kmsg_dump=True)
    assert again.empty, again.describe()
    g, t = fake_guest(efi_state_after([plan], always_kmsg_dump=False))  # someone reset it
    assert [c.path for c in plan_for(g, probe(g), kmsg_bytes=8192, always_kmsg_dump=True).changes
            if c.op == "run"] == ["load-efi"]


def test_not_uefi_is_a_blocker():
    g, t = fake_guest(probe_reply(efi=False, disk=False))
    r = probe(g)
    assert "not-uefi" in {p.code for p in r.blockers}
    assert all(c.status == "no" for c in r.capabilities.values())


def test_switch_from_pstore_blk_undoes_its_files_and_unloads_it():
    g, t = fake_guest(probe_reply(efi=True))
    blk = plan_for(g, assessed(g, serial="pvepstore", disk_bytes=512 << 20))
    assert MODPROBE_CONF in written(blk)  # pstore_blk keeps efi_pstore out ...
    t.add(state_after([blk], "pstore_blk", ("efi", "yes")))
    r = probe(g)
    assert r.efi_pstore_disabled and "efi-pstore-disabled" in {p.code for p in r.problems}
    plan = plan_for(g, r)
    ops = [(c.op, c.path) for c in plan.changes]
    # ... and the plan engine takes that file and pstore_blk's unit back (they were absent before)
    assert ("restore", MODPROBE_CONF) in ops and ("restore", BLK_UNIT) in ops and ("write", UNIT) in ops
    # pstore_blk's option was the only one keeping efi_pstore out: unloaded, the slot is free and
    # load-efi registers efi_pstore at once, after the files and systemd's reload
    assert ops.index(("run", "unload-module")) < ops.index(("run", "load-efi"))
    assert ops.index(("restore", MODPROBE_CONF)) < ops.index(("run", "daemon-reload")) < ops.index(("run", "load-efi"))
    assert not plan.reboot_required
    assert "switches this guest from the pstore_blk backend to efi_pstore" in "\n".join(plan.describe())
    fixes = {p.code: p.fix for p in r.problems}
    assert "reloads efi_pstore" in fixes["efi-pstore-disabled"] and fixes["backend-switch"].endswith("then")


def test_free_slot_gets_efi_pstore_now():
    g, _ = fake_guest(probe_reply(efi=True, disk=False))  # backend (null): nothing holds the slot
    plan = plan_for(g, probe(g))
    ops = [(c.op, c.path) for c in plan.changes]
    assert ops[-2:] == [("run", "daemon-reload"), ("run", "load-efi")] and not plan.reboot_required


def test_reboot_when_efi_pstore_cannot_register_now():
    # built in: its init ran once at boot
    g, _ = fake_guest(probe_reply(("builtin", "kernel/drivers/firmware/efi/efi-pstore.ko\n"), efi=True, disk=False))
    plan = plan_for(g, probe(g))
    assert plan.reboot_required and ("run", "load-efi") not in [(c.op, c.path) for c in plan.changes]
    # disabled by an option that is not pvepstore's: a reload would not register it either
    g, _ = fake_guest(probe_reply(("modprobe_c", "options efi_pstore pstore_disable=Y\n"), efi=True, disk=False))
    r = probe(g)
    plan = plan_for(g, r)
    assert plan.reboot_required and "load-efi" not in [c.path for c in plan.changes]
    assert "must go by hand" in {p.code: p.fix for p in r.problems}["efi-pstore-disabled"]
    # ... nor one on the kernel command line
    g, _ = fake_guest(probe_reply(("cmdline", "root=/dev/vda efi_pstore.pstore_disable=1"), efi=True, disk=False))
    assert plan_for(g, probe(g)).reboot_required


def test_verify_after_apply():
    g, t = fake_guest(probe_reply(backend="efi", efi=True, disk=False))
    plan = plan_for(g, probe(g))
    t.add(efi_state_after([plan]))
    v = verify_for(g, "efi_pstore")
    names = [c[0] for c in v.checks]
    assert v.ok, v.problems
    assert "backend" in names and "efi_pstore kept out" not in names
    assert ("boot unit", True, "pvepstore-efi.service enabled, active") in v.checks
    assert ("kmsg_bytes", True, "pstore.kmsg_bytes is 10240 (want 10240)") in v.checks
    assert "always_kmsg_dump" not in names  # not configured: not asked
    t.add(efi_state_after([plan]))
    assert plan_for(g, probe(g)).empty  # applied: nothing more to do


def test_capabilities_follow_always_kmsg_dump_as_the_guest_has_it():
    g, t = fake_guest(probe_reply(backend="efi", efi=True, disk=False))
    plan = plan_for(g, probe(g), always_kmsg_dump=True)
    t.add(efi_state_after([plan]))
    caps = probe(g).capabilities
    assert caps["shutdown"].status == caps["emergency_restart"].status == "yes", caps
    assert "always_kmsg_dump=Y" in caps["shutdown"].note
    t.add(efi_state_after([plan], always_kmsg_dump=False))  # someone set it back to N
    caps = probe(g).capabilities
    assert caps["shutdown"].status == caps["emergency_restart"].status == "no"
    assert "efi_pstore.always_kmsg_dump: true" in caps["emergency_restart"].note


def test_verify_fails_on_the_unit_and_the_dump_parameters():
    g, t = fake_guest(probe_reply(backend="efi", efi=True, disk=False))
    plan = plan_for(g, probe(g), kmsg_bytes=8192, always_kmsg_dump=True)
    t.add(efi_state_after([plan]))
    v = verify_for(g, "efi_pstore")
    assert v.ok and ("always_kmsg_dump", True, "printk.always_kmsg_dump is Y (want Y)") in v.checks, v.problems
    t.add(efi_state_after([plan], unit=("enabled", "failed", "timeout"), kmsg_bytes=10240,
                          always_kmsg_dump=False))
    v = verify_for(g, "efi_pstore")
    assert not v.ok and v.problems == ["kmsg_bytes: pstore.kmsg_bytes is 10240 (want 8192)",
                                       "always_kmsg_dump: printk.always_kmsg_dump is N (want Y)",
                                       "boot unit: pvepstore-efi.service enabled, failed (timeout)"]


def test_pstore_blk_verify_still_asks_efi_pstore_kept_out():
    g, t = fake_guest(probe_reply(efi=True))
    blk = plan_for(g, assessed(g, serial="pvepstore", disk_bytes=512 << 20))
    t.add(state_after([blk], "pstore_blk", ("efi", "yes")))
    assert ("efi_pstore kept out", True, "cannot take the backend slot at the next boot") in verify_for(g).checks


def test_files_are_own_paths():
    assert {f.path for f in files(EfiSettings())} == {LOADER, UNIT, UNIT_LINK, PSTORE_DROPIN}


D13 = (("uname", "6.12.117+deb13-amd64", "x86_64"),
       ("osrelease", 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n'))


def test_a_612_kernel_registers_efi_pstore_under_its_new_name():
    """From 6.2 psinfo->name is "efi_pstore" (Debian 13's 6.12 prints "Registered efi_pstore as persistent
    store backend", tests/fixtures/d13-efi-*): that is efi_pstore in the slot, not another backend."""
    g, t = fake_guest(probe_reply(*D13, backend="efi_pstore", efi=True, disk=False))
    r = probe(g)
    assert r.configured and not r.blockers and r.measured == "Debian 13 (6.12)"
    assert not {"backend-other", "not-configured"} & {p.code for p in r.problems}, r.problems
    plan = plan_for(g, r)
    assert not plan.reboot_required
    t.add(efi_state_after([plan], *D13, ("backend", "efi_pstore")))
    v = verify_for(g, "efi_pstore")
    assert v.ok and ("backend", True, "backend is efi_pstore (want efi_pstore)") in v.checks, v.checks
    # not registered at all: the message names what this kernel would show
    g, t = fake_guest(probe_reply(*D13, efi=True, disk=False))
    t.add(efi_state_after([plan_for(g, probe(g))], *D13, ("backend", "(null)")))
    v = verify_for(g, "efi_pstore")
    assert ("backend", False, "backend is none (want efi_pstore)") in v.checks, v.checks
