"""The efi_pstore backend in the guest: probe verdict, plan, switching from pstore_blk, verify."""

from __future__ import annotations

from pvepstore.guest.blk_wishes import UNIT as BLK_UNIT
from pvepstore.guest.efi_wishes import LOADER, UNIT, UNIT_LINK, EfiSettings, files
from pvepstore.guest.layout import MODPROBE_CONF, PSTORE_DROPIN

import base64

from pvepstore.guest.testing import Recorded, reply

from .conftest import assessed, fake_guest, file_item, plan_for, probe_items, probe_reply, verify_for
from .test_ramoops_wishes import state_after, written


def efi_state_after(plans):
    """Probe output of a UEFI guest after ``plans``: efi_pstore registered, no modprobe option."""
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    for plan in plans:
        for c in plan.changes:
            if c.op == "write":
                files[c.path] = base64.b64decode(c.arg.split(":", 1)[1])
            elif c.op == "link":
                links[c.path] = c.arg
    items = [file_item(p, b, "600" if p.startswith("/var/lib/") else "644") for p, b in files.items()]
    items += [("link", p, t) for p, t in links.items()] + [("dir", "/var/lib/pvepstore")]
    items += [("backend", "efi"), ("loaded", "efi_pstore", "live"), ("efi", "yes")]
    base = [i for i in probe_items(unlink="no", disk=False) if i[0] != "backend"]
    return Recorded("probe", 0, reply(*(base + items)))


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
    assert b"echo 8192 > /sys/module/pstore/parameters/kmsg_bytes" in out[LOADER]
    assert b"echo Y > /sys/module/printk/parameters/always_kmsg_dump" in out[LOADER]
    assert b"pstore_disable" not in b"".join(out.values())
    assert ("link", UNIT_LINK) in [(c.op, c.path) for c in plan.changes]
    assert not plan.reboot_required


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
    assert ("run", "unload-module") in ops and plan.reboot_required
    assert "switches this guest from the pstore_blk backend to efi_pstore" in "\n".join(plan.describe())


def test_verify_after_apply():
    g, t = fake_guest(probe_reply(backend="efi", efi=True, disk=False))
    plan = plan_for(g, probe(g))
    t.add(efi_state_after([plan]))
    v = verify_for(g, "efi_pstore")
    names = [c[0] for c in v.checks]
    assert v.ok, v.problems
    assert "backend" in names and "efi_pstore kept out" not in names
    t.add(efi_state_after([plan]))
    assert plan_for(g, probe(g)).empty  # applied: nothing more to do

def test_files_are_own_paths():
    assert {f.path for f in files(EfiSettings())} == {LOADER, UNIT, UNIT_LINK, PSTORE_DROPIN}
