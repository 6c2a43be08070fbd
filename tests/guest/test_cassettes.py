"""Replays of a real Debian 12 guest (recorded by tests/vm/test_e2e.py with PVEPSTORE_RECORD=DIR)."""

from __future__ import annotations

import base64

from pvepstore.guest import Guest
from pvepstore.guest.blk_wishes import UNIT
from pvepstore.guest.layout import MODPROBE_CONF
from pvepstore.guest.manifest import MANIFEST
from pvepstore.guest.testing import FakeTransport

from .conftest import assessed, cassette, plan_for, verify_for


def guest(name: str, **kw) -> tuple[Guest, FakeTransport]:
    t = FakeTransport(cassette(name), **kw)
    return Guest(t, "debian12"), t


def test_stock_debian_capability_report():
    g, t = guest("debian12-setup.json")
    r = assessed(g, serial="pvepstore", disk_bytes=512 << 20)
    assert (r.distro, r.kernel, r.pstore_blk, r.backend) == ("Debian GNU/Linux 12 (bookworm)", "6.1.0-56-amd64",
                                                             "module", None)
    assert {k: c.status for k, c in r.capabilities.items()} == {
        "oops": "yes", "panic": "no", "shutdown": "no", "emergency_restart": "no", "console": "no", "pmsg": "no"}
    assert {p.code for p in r.problems} == {"not-configured", "systemd-pstore-unlinks"}
    assert r.disk.device == "/dev/vdb" and r.disk.zero and r.pstorefs == "pstore"
    assert r.systemd_pstore["unlink"] is True and r.systemd_pstore["enabled"] == "enabled"
    assert t.round_trips == 1


def test_real_setup_round():
    g, t = guest("debian12-setup.json")
    assessed(g)
    r = assessed(g)  # with the seed's leftovers planted
    assert {x["path"] for x in r.legacy} == {"/etc/modules-load.d/ramoops.conf", "/etc/modprobe.d/ramoops.conf",
                                             "/etc/default/grub.d/pstore.cfg", "/etc/modules"}
    plan = plan_for(g, r, remove_legacy=True)
    assert g.apply(plan).ok
    again = plan_for(g, assessed(g), remove_legacy=True)
    # recorded with the earlier `blacklist efi_pstore` and a unit without the load retry: the
    # upgrade rewrites exactly those two files (and the manifest)
    assert sorted((c.op, c.path) for c in again.changes) == sorted(
        [("write", MANIFEST), ("write", MODPROBE_CONF), ("write", UNIT), ("run", "daemon-reload")])
    written = {c.path: base64.b64decode(c.arg.split(":", 1)[1]) for c in again.changes if c.op == "write"}
    assert b"options efi_pstore pstore_disable=Y" in written[MODPROBE_CONF]
    assert b"modprobe pstore_blk && exit 0; sleep 1" in written[UNIT]
    v = verify_for(g)
    assert v.ok, v.problems
    assert t.round_trips == 5


def test_after_reboot_through_sudo():
    g, _ = guest("debian12-after-reboot.json")
    v = verify_for(g)
    assert v.ok and ("boot unit", True, "pvepstore-blk.service enabled, active") in v.checks
    h = g.boot_history()
    assert h.previous_orderly is True and h.previous_kernel == "6.1.0-56-amd64" and len(h.boots) == 2
    assert g.read_records() == []


def test_the_oops_record():
    g, t = guest("debian12-oops.json")
    recs = g.read_records()
    assert [r.name for r in recs] == ["dmesg-pstore_blk-0"] and t.round_trips == 1
    text = recs[0].data.decode()
    assert text.startswith("Oops#1 Part1\n") and "pvepstore_oops_write" in text and not recs[0].truncated


def test_clear_and_undo():
    g, t = guest("debian12-clear-undo.json")
    recs = g.read_records()
    assert g.clear([r.name for r in recs]).cleared == ["dmesg-pstore_blk-0"]
    assert g.read_records() == []
    res = g.undo()
    assert res.ok and not res.failures
    assert any(d.startswith("restore /etc/modules") for d in res.done)
    r = assessed(g)
    # as before apply (pvepstore had loaded pstore_blk, undo unloaded it); the records stay on the disk
    assert r.manifest is None and r.backend is None
    assert {p.code for p in r.problems} == {"not-configured", "systemd-pstore-unlinks", "legacy-config",
                                            "disk-has-records"}
    plan = plan_for(g, r)
    assert ("run", "mark-disk") in [(c.op, c.path) for c in plan.changes]  # never wiped
