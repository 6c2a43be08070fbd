"""pstore_blk in the guest (blk_wishes + the plan engine) on synthetic guests: plan, apply, verify, undo."""

from __future__ import annotations

import base64
import json

import pytest

from pvepstore.errors import GuestError
from pvepstore.guest.probe import ProbeReport
from pvepstore.guest.blk_wishes import UNIT, UNIT_LINK, Settings, files
from pvepstore.guest.layout import MODPROBE_CONF, PSTORE_DROPIN
from pvepstore.guest.legacy import _edit
from pvepstore.guest.manifest import MANIFEST, PATHS, parse_manifest, sha256
from pvepstore.guest.testing import Recorded, reply

from .conftest import assessed, fake_guest, file_item, plan_for, probe_items, probe_reply, verify_for

GRUB = b'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT memmap=1M\\$0x7f000000 ramoops.mem_address=0x7f000000 quiet"\n'


def probe(g, **kw) -> ProbeReport:
    return assessed(g, serial="pvepstore", disk_bytes=512 << 20, **kw)


def written(plan) -> dict[str, bytes]:
    return {c.path: base64.b64decode(c.arg.split(":", 1)[1]) for c in plan.changes if c.op == "write"}


def applied_items(plan, *extra):
    """The probe output of a guest on which ``plan`` was applied (what the real guest shows)."""
    files = written(plan)
    items = [file_item(p, b, "600" if p.startswith("/var/lib/") else "644") for p, b in files.items()]
    items += [("link", UNIT_LINK, UNIT), ("dir", "/etc/systemd/pstore.conf.d"), ("dir", "/var/lib/pvepstore"),
              ("disk_initialized", "yes"), ("unit", "pvepstore-blk.service", "enabled", "active"),
              ("modprobe_c", "blacklist efi_pstore\noptions pstore_blk blkdev=/dev/disk/by-id/virtio-pvepstore\n")]
    removed = {c.path for c in plan.changes if c.op == "remove"}
    base = [i for i in probe_items(backend="pstore_blk", loaded=("pstore_blk",), unlink="no",
                                   params=(("blkdev", "/dev/disk/by-id/virtio-pvepstore"), ("best_effort", "Y"),
                                           ("kmsg_size", "64"), ("max_reason", "2")))
            if i[0] != "disk_zero"]
    keep = [i for i in extra if not (i[0] == "file" and (i[1] in files or i[1] in removed))]
    return base + items + keep


def test_fresh_guest_plan():
    g, t = fake_guest(probe_reply())
    plan = plan_for(g, probe(g))
    ops = [(c.op, c.path) for c in plan.changes]
    assert ops == [("write", MANIFEST), ("write", PATHS), ("write", MODPROBE_CONF), ("write", UNIT),
                   ("link", UNIT_LINK), ("mkdir", "/etc/systemd/pstore.conf.d"), ("write", PSTORE_DROPIN),
                   ("run", "daemon-reload"), ("run", "mark-disk"), ("run", "load-module")]
    conf = written(plan)[MODPROBE_CONF].decode()
    assert ("options pstore_blk blkdev=/dev/disk/by-id/virtio-pvepstore best_effort=y kmsg_size=64 max_reason=2 "
            "pmsg_size=0 console_size=0 ftrace_size=0") in conf
    assert "options efi_pstore pstore_disable=Y" in conf and "\nblacklist" not in conf
    assert "Unlink=no" in written(plan)[PSTORE_DROPIN].decode()
    unit = written(plan)[UNIT].decode()
    assert "Before=systemd-pstore.service" in unit and "--exit-if-exists=/dev/disk/by-id/virtio-pvepstore" in unit
    manifest = json.loads(written(plan)[MANIFEST])
    assert {e["path"]: e["action"] for e in manifest["files"]} == {
        MODPROBE_CONF: "created", UNIT: "created", UNIT_LINK: "created", PSTORE_DROPIN: "created"}
    assert manifest["dirs_created"] == ["/etc/systemd/pstore.conf.d"]
    assert t.round_trips == 1  # plan itself is local
    assert plan.to_json()["changes"][2]["content"].startswith("# Managed by pvepstore")
    assert "create /etc/modprobe.d/pvepstore.conf" in "\n".join(plan.describe())


def test_pmsg_and_console_sizes_only_where_built():
    g, _ = fake_guest(probe_reply(kconfig="CONFIG_PSTORE_BLK=m\nCONFIG_PSTORE_PMSG=y\n# CONFIG_PSTORE_CONSOLE is not set\n"))
    conf = written(plan_for(g, probe(g)))[MODPROBE_CONF].decode()
    assert "pmsg_size=64 console_size=0" in conf


def test_stale_disk_is_wiped_once():
    g, _ = fake_guest(probe_reply(zero="no"))
    plan = plan_for(g, probe(g))
    wipe = [c for c in plan.changes if c.path == "wipe-disk"]
    assert wipe and wipe[0].args() == ["run", "wipe-disk", "pvepstore", str(512 << 20)]


def test_second_apply_is_a_no_op():
    g, t = fake_guest(probe_reply())
    plan = plan_for(g, probe(g))
    t.add(Recorded("probe", 0, reply(*applied_items(plan))))
    again = plan_for(g, probe(g))
    assert again.empty, again.describe()
    before = t.round_trips
    assert g.apply(again).ok and t.round_trips == before  # nothing sent
    assert again.describe() == ["nothing to do: the guest is already as planned"]


def test_a_disk_with_pstore_zones_is_kept():
    g, _ = fake_guest(probe_reply(("disk_head", b"DBGC" + b"\0" * 12), zero="no"))
    r = probe(g)
    assert "disk-has-records" in {p.code for p in r.problems} and "disk-stale" not in {p.code for p in r.problems}
    assert "wipe-disk" not in {c.path for c in plan_for(g, r).changes}


def test_changed_settings_rewrite_but_keep_the_original_backup_entry():
    g, t = fake_guest(probe_reply())
    plan = plan_for(g, probe(g))
    t.add(Recorded("probe", 0, reply(*applied_items(plan))))
    plan2 = plan_for(g, probe(g), kmsg_size=32)
    assert [c.path for c in plan2.changes if c.op == "write"] == [MANIFEST, MODPROBE_CONF]
    assert [c.path for c in plan2.changes if c.op == "run"] == ["reload-module"]
    entry = {e["path"]: e for e in json.loads(written(plan2)[MANIFEST])["files"]}[MODPROBE_CONF]
    assert entry["action"] == "created" and entry["sha256_after"] == sha256(written(plan2)[MODPROBE_CONF])


def test_legacy_needs_consent():
    legacy = (file_item("/etc/modules-load.d/ramoops.conf", b"ramoops\n"),
              file_item("/etc/default/grub.d/pstore.cfg", GRUB),
              file_item("/etc/modules", b"# modules\nloop\nramoops\n"))
    g, _ = fake_guest(probe_reply(*legacy))
    r = probe(g)
    plain = plan_for(g, r)
    assert not {c.path for c in plain.changes} & {i[1] for i in legacy}
    assert any("--remove-legacy" in n for n in plain.notes)
    plan = plan_for(g, r, remove_legacy=True)
    by_path = {c.path: c for c in plan.changes}
    assert by_path["/etc/modules-load.d/ramoops.conf"].op == "remove"
    assert written(plan)["/etc/default/grub.d/pstore.cfg"] == b'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT quiet"\n'
    assert written(plan)["/etc/modules"] == b"# modules\nloop\n"
    assert "update-grub" not in by_path  # not installed in this guest: said, not run
    assert any("update-grub is not installed" in n for n in plan.notes)
    m = {e["path"]: e for e in json.loads(written(plan)[MANIFEST])["files"]}
    assert m["/etc/modules-load.d/ramoops.conf"]["action"] == "removed"
    assert m["/etc/modules"]["action"] == "modified" and m["/etc/modules"]["backup"].startswith("/var/lib/pvepstore/backup/")


def test_update_grub_runs_when_present_and_consented():
    g, _ = fake_guest(probe_reply(file_item("/etc/default/grub.d/pstore.cfg", GRUB), ("tool", "update-grub")))
    plan = plan_for(g, probe(g), remove_legacy=True)
    assert ("run", "update-grub") in [(c.op, c.path) for c in plan.changes]
    assert json.loads(written(plan)[MANIFEST])["commands"] == ["update-grub"]


@pytest.mark.parametrize("path,text,new", [
    ("/etc/modprobe.d/x.conf", "options ramoops mem_size=1\nblacklist efi_pstore\n", "blacklist efi_pstore\n"),
    ("/etc/modprobe.d/x.conf", "options pstore_blk blkdev=/dev/sda best_effort=y\n", ""),
    ("/etc/modules-load.d/x.conf", "pstore_blk\n# ramoops\nfoo\n", "# ramoops\nfoo\n"),
    ("/etc/default/grub", 'GRUB_CMDLINE_LINUX="quiet printk.always_kmsg_dump=Y"\nGRUB_TIMEOUT=5\n',
     'GRUB_CMDLINE_LINUX="quiet"\nGRUB_TIMEOUT=5\n'),
    ("/etc/default/grub", "# memmap= is dangerous\n", "# memmap= is dangerous\n"),
    ("/etc/kernel/cmdline", "root=ZFS=rpool/ROOT boot=zfs memmap=1M$0x7f000000\n", "root=ZFS=rpool/ROOT boot=zfs\n"),
])
def test_legacy_edits_touch_only_the_old_settings(path, text, new):
    assert _edit(path, text)[0] == new


def test_undo_plan_restores_from_the_manifest():
    legacy = (file_item("/etc/modules-load.d/ramoops.conf", b"ramoops\n"),)
    g, t = fake_guest(probe_reply(*legacy))
    plan = plan_for(g, probe(g), remove_legacy=True)
    t.add(Recorded("probe", 0, reply(*applied_items(plan, *legacy))),
          Recorded("undo", 0, reply(("done", "restore", "x"))))
    r = probe(g)
    undo = g.undo_plan(r)
    ops = [(c.op, c.path, c.arg) for c in undo.changes]
    assert ("restore", "/etc/modules-load.d/ramoops.conf",
            json.loads(written(plan)[MANIFEST])["files"][-1]["backup"]) in ops
    assert ("restore", MODPROBE_CONF, "-") in ops  # created: removed again
    assert ("rmdir", "/etc/systemd/pstore.conf.d", "-") in ops
    assert ("run", "unload-module", "-") in ops  # it was not loaded before pvepstore
    assert ops[-1][:2] == ("run", "drop-state")
    assert not undo.notes  # nothing drifted
    assert g.undo(report=r).ok


def test_undo_without_manifest_is_empty():
    g, t = fake_guest(probe_reply())
    res = g.undo(report=probe(g))
    assert res.done == ["nothing to undo: pvepstore has not changed this guest"] and t.round_trips == 1


@pytest.mark.parametrize("manifest", [
    b"not json", b"[]", b'{"version": 1, "files": [{"path": "/root/.ssh/authorized_keys", "action": "created"}]}',
    b'{"version": 1, "files": [{"path": "/etc/../root/x", "action": "created"}]}',
    b'{"version": 1, "files": [{"path": "/etc/x", "action": "modified", "backup": "/tmp/evil"}]}',
    b'{"version": 1, "files": [{"path": "/etc/x", "action": "explode"}]}',
])
def test_hostile_manifests_are_refused(manifest):
    assert parse_manifest(manifest)[0] is None
    g, _ = fake_guest(probe_reply(file_item(MANIFEST, manifest, "600")))
    r = probe(g)
    assert "manifest-invalid" in {p.code for p in r.problems}
    with pytest.raises(GuestError):
        g.undo(report=r)


def test_apply_refuses_blocked_plans():
    g, t = fake_guest(probe_reply(disk=False))
    plan = plan_for(g, probe(g))
    assert plan.blockers and not plan.changes
    with pytest.raises(GuestError, match="does not exist"):
        g.apply(plan)
    assert t.round_trips == 1


def test_dry_run_sends_nothing():
    g, t = fake_guest(probe_reply())
    plan = plan_for(g, probe(g))
    res = g.apply(plan, dry_run=True)
    assert res.dry_run and res.done == plan.describe() and t.round_trips == 1


def test_guest_changed_since_the_probe():
    g, _ = fake_guest(probe_reply(), Recorded("apply", 3, reply(("mismatch", MODPROBE_CONF, "-", "abc"), end=True)))
    with pytest.raises(GuestError, match="changed since the probe"):
        g.apply(plan_for(g, probe(g)))


def test_half_done_apply_points_to_undo():
    g, _ = fake_guest(probe_reply(), Recorded("apply", 4, reply(("fail", "wipe", "has a signature"))))
    with pytest.raises(GuestError) as exc:
        g.apply(plan_for(g, probe(g)))
    assert "has a signature" in exc.value.message and "undo" in exc.value.hint


def test_apply_sends_one_command_with_quoted_positional_arguments():
    g, t = fake_guest(probe_reply(), Recorded("apply", 0, reply(("ran", "load-module"))))
    plan = plan_for(g, probe(g))
    assert g.apply(plan).ok
    call = t.calls[-1]
    assert call.name == "apply" and len(call.args) == 4 * len(plan.changes)


def test_verify_after_apply():
    g, t = fake_guest(probe_reply())
    plan = plan_for(g, probe(g))
    t.add(Recorded("probe", 0, reply(*applied_items(plan))))
    v = verify_for(g)
    assert v.ok, v.problems
    t.add(Recorded("probe", 0, reply(*[i if i[0] != "backend" else ("backend", "efi") for i in applied_items(plan)])))
    v = verify_for(g)
    assert not v.ok and v.problems[0].startswith("backend")


def test_desired_files_are_stable():
    a, b = files(Settings("pvepstore")), files(Settings("pvepstore"))
    assert a == b and {w.path: w.link for w in a}[UNIT_LINK] == UNIT
