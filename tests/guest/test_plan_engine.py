"""The plan engine knows no backend: a made-up third backend (one file + one unit) gets a plan, a
manifest and a byte-exact undo; switching to it from pstore_blk and back out leaves the guest as it was.

The guest is a small in-memory model of what :data:`pvepstore.guest.scripts.CHANGE` does to the
file system (backup of the first original, write/link/remove/restore/mkdir/rmdir; ``run`` actions
are the kernel's business and only recorded), probed through the real probe parser.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import inspect
import json
from pathlib import Path

import pytest

from pvepstore.guest import blk_wishes, layout, manifest, plan, rules, wire
from pvepstore.guest.changes import run
from pvepstore.guest.manifest import MANIFEST, backup_path
from pvepstore.guest.plan import GuestWishes, WantedFile, make_plan, make_undo_plan
from pvepstore.guest.probe import ProbeReport, build_report
from pvepstore.guest.scripts import BACKUP_DIR, STATE_DIR
from pvepstore.backends.registry import names as backend_names
from pvepstore.guest.testing import reply

from .conftest import probe_items

CONF = "/etc/pvepstore/testcap.conf"
UNIT = "/etc/systemd/system/pvepstore-testcap.service"
LINK = "/etc/systemd/system/sysinit.target.wants/pvepstore-testcap.service"


def third_wishes(r: ProbeReport, size: int = 8) -> GuestWishes:
    """A third backend: one configuration file and one unit (enabled by its link), loaded now."""
    return GuestWishes(
        backend="testcap", settings={"backend": "testcap", "size": size}, module="testcap",
        files=(WantedFile(CONF, f"size={size}\n".encode(), mode="600", reason="testcap options"),
               WantedFile(UNIT, b"[Service]\nExecStart=/bin/true\n", reason="load testcap at boot"),
               WantedFile(LINK, link=UNIT)),
        actions=[run("load-testcap", "load testcap now")])


def third_assess(r: ProbeReport) -> ProbeReport:
    return rules.assess(r, target="testcap", configured=lambda r: False, capabilities=lambda r: {},
                        problems=lambda r: rules.problems_with(r, lambda r, add: None), costs=lambda r: [])


class SimGuest:
    """Files, links and directories of a guest, changed the way the change script changes them."""

    BASE_DIRS = {"/etc", "/etc/modprobe.d", "/etc/systemd", "/etc/systemd/system",
                 "/etc/systemd/system/sysinit.target.wants", "/var/lib"}

    def __init__(self, files: dict[str, tuple[str, bytes | str, str]] | None = None) -> None:
        self.fs: dict[str, tuple[str, bytes | str, str]] = dict(files or {})  # path -> (kind, data, mode)
        self.dirs = set(self.BASE_DIRS)
        self.ran: list[str] = []

    def snapshot(self):
        return dict(self.fs), set(self.dirs)

    def probe(self, assess=blk_wishes.assess, **kw) -> ProbeReport:
        items = []
        for path, (kind, data, mode) in sorted(self.fs.items()):
            if kind == "link":
                items.append(("link", path, data))
            else:
                items.append(("file", path, hashlib.sha256(data).hexdigest(), f"{mode} 0 0 {len(data)}", data))
        items += [("dir", d) for d in sorted(self.dirs)]
        if f"{STATE_DIR}/initialized-pvepstore" in self.fs:
            items.append(("disk_initialized", "yes"))
        base = [i for i in probe_items(**kw) if i[0] != "dir"]
        return assess(build_report(wire.parse(reply(*base, *items)), "pvepstore", 512 << 20))

    def _sha(self, path: str) -> str:
        e = self.fs.get(path)
        if e is None:
            return "-"
        return f"link:{e[1]}" if e[0] == "link" else hashlib.sha256(e[1]).hexdigest()

    def apply(self, p: plan.Plan) -> None:
        for c in p.changes:  # pass 1: nothing changes when the guest moved on
            if c.op in ("write", "link", "remove"):
                assert self._sha(c.path) == c.sha_before, f"{c.path} changed since the probe"
        self.dirs |= {STATE_DIR, BACKUP_DIR}
        for c in p.changes:
            if c.op in ("write", "link", "remove") and c.path in self.fs and backup_path(c.path) not in self.fs:
                self.fs[backup_path(c.path)] = self.fs[c.path]
            if c.op == "mkdir":
                self.dirs.add(c.path)
            elif c.op == "write":
                mode, b64 = c.arg.split(":", 1)
                self.fs[c.path] = ("file", base64.b64decode(b64), mode)
            elif c.op == "link":
                self.fs[c.path] = ("link", c.arg, "777")
            elif c.op == "remove":
                self.fs.pop(c.path, None)
            elif c.op == "restore":
                self.fs.pop(c.path, None)
                if c.arg != "-":
                    self.fs[c.path] = self.fs[c.arg]
            elif c.op == "rmdir":
                if not any(p.startswith(c.path + "/") for p in self.fs) and \
                        not any(d.startswith(c.path + "/") for d in self.dirs):
                    self.dirs.discard(c.path)
            elif c.path == "drop-state":
                self.fs = {k: v for k, v in self.fs.items() if not k.startswith(STATE_DIR + "/")}
                self.dirs -= {STATE_DIR, BACKUP_DIR}
                self.ran.append(c.path)
            elif c.path == "mark-disk":
                self.fs[f"{STATE_DIR}/initialized-{c.arg}"] = ("file", b"", "644")
                self.ran.append(c.path)
            else:
                self.ran.append(c.path)


def test_a_third_backend_gets_a_plan_a_manifest_and_is_idempotent():
    g = SimGuest()
    r = g.probe(third_assess)
    p = make_plan(r, third_wishes(r), now="2026-12-02T05:30:00Z")
    assert [(c.op, c.path) for c in p.changes] == [
        ("mkdir", "/etc/pvepstore"), ("write", MANIFEST), ("write", manifest.PATHS), ("write", CONF),
        ("write", UNIT), ("link", LINK), ("run", "daemon-reload"), ("run", "load-testcap")]
    assert p.backend == "testcap" and p.settings == {"backend": "testcap", "size": 8}
    assert "create /etc/pvepstore/testcap.conf: testcap options" in p.describe()
    m = json.loads(base64.b64decode(p.changes[1].arg.split(":", 1)[1]))
    assert {e["path"]: e["action"] for e in m["files"]} == {CONF: "created", UNIT: "created", LINK: "created"}
    assert m["dirs_created"] == ["/etc/pvepstore"] and m["settings"]["backend"] == "testcap"
    assert m["pre"] == {"backend": None, "state_dir_existed": False, "pstore_blk_loaded": False,
                        "ramoops_loaded": False}
    g.apply(p)
    assert g.fs[CONF] == ("file", b"size=8\n", "600") and g.fs[LINK] == ("link", UNIT, "777")
    r2 = g.probe(third_assess)
    assert manifest.manifest_backend(r2.manifest) == "testcap"
    again = make_plan(r2, third_wishes(r2))
    assert [c.path for c in again.changes] == ["load-testcap"]  # files as wanted; the action is the backend's
    changed = make_plan(r2, third_wishes(r2, size=16))
    assert [(c.op, c.path) for c in changed.changes if c.op != "run"] == [("write", MANIFEST), ("write", CONF)]


def test_undo_of_the_third_backend_is_byte_exact():
    before = {CONF: ("file", b"# the admin's own\n", "640"), "/etc/modules": ("file", b"loop\n", "644")}
    g = SimGuest(before)
    g.dirs.add("/etc/pvepstore")
    original = g.snapshot()
    r = g.probe(third_assess)
    p = make_plan(r, third_wishes(r))
    m = json.loads(base64.b64decode(next(c for c in p.changes if c.path == MANIFEST).arg.split(":", 1)[1]))
    entry = {e["path"]: e for e in m["files"]}[CONF]
    assert entry["action"] == "modified" and entry["backup"] == backup_path(CONF)
    assert entry["sha256_before"] == hashlib.sha256(b"# the admin's own\n").hexdigest()
    g.apply(p)
    assert g.fs[backup_path(CONF)] == before[CONF]
    undo = make_undo_plan(g.probe(third_assess))
    assert [c.op for c in undo.changes] == ["restore", "restore", "restore", "run", "run"]
    g.apply(undo)
    assert g.snapshot() == original


def test_switching_from_pstore_blk_to_the_third_backend_and_undo():
    g = SimGuest({"/etc/modules": ("file", b"loop\n", "644")})
    original = g.snapshot()
    r = g.probe()
    g.apply(make_plan(r, blk_wishes.wishes(r, blk_wishes.settings(r))))
    r = g.probe(third_assess, backend="pstore_blk", loaded=("pstore_blk",))
    p = make_plan(r, third_wishes(r))
    assert any("switches this guest from the pstore_blk backend to testcap" in n for n in p.notes)
    restored = {c.path for c in p.changes if c.op == "restore"}
    assert restored == {layout.MODPROBE_CONF, blk_wishes.UNIT, blk_wishes.UNIT_LINK, layout.PSTORE_DROPIN}
    g.apply(p)
    assert blk_wishes.UNIT not in g.fs and CONF in g.fs and layout.PSTORE_DROPIN not in g.fs
    undo = make_undo_plan(g.probe(third_assess, loaded=("pstore_blk",)))
    assert ("run", "unload-module") in [(c.op, c.path) for c in undo.changes]  # pvepstore loaded it
    g.apply(undo)
    assert g.snapshot() == original


def test_wanted_files_must_be_pvepstores_own():
    with pytest.raises(ValueError, match="not a path pvepstore owns"):
        WantedFile("/etc/default/grub", b"x")
    with pytest.raises(ValueError, match="content or a link"):
        WantedFile(CONF)


def test_legacy_blockers_block_unless_removed():
    g = SimGuest()
    r = g.probe(third_assess)
    w = third_wishes(r)
    w.legacy_blockers = [rules.Problem("old", "blocker", "an old loader")]
    assert make_plan(r, w).blockers and not make_plan(r, w).changes
    assert not make_plan(r, w, remove_legacy=True).blockers


GUEST_MODULES = sorted(Path(inspect.getfile(plan)).parent.glob("*.py"))


@pytest.mark.parametrize("path", GUEST_MODULES, ids=lambda p: p.name)
def test_the_guest_package_compares_no_backend_name(path):
    """The kernel's module names are probe.KMOD_*; pvepstore's backend names live in the registry."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            consts = [n.value for n in [node.left, *node.comparators] if isinstance(n, ast.Constant)]
            assert not set(consts) & set(backend_names()), f"{path.name}:{node.lineno} compares a backend name"


def test_the_session_takes_a_backends_functions_and_the_registry_names_them():
    from pvepstore.backends import registry
    from pvepstore.config import load_config
    from pvepstore.errors import UsageError
    from pvepstore.guest import ramoops_wishes

    from .conftest import fake_guest, probe_reply
    iv = ("ivshmem", "0000:00:10.0", "0xfe000000 0xfe0fffff")
    g, _ = fake_guest(probe_reply(iv), repeat=True)
    backend = registry.get("ivshmem")
    by_registry = backend.probe(g, "pvepstore", None)
    direct = g.probe(disk_bytes=None, assess=ramoops_wishes.assess)
    assert direct.to_json() == by_registry.to_json() and direct.target == "ivshmem"
    wishes = ramoops_wishes.wishes(direct, ramoops_wishes.settings(direct))
    assert g.plan(direct, wishes=wishes).to_json() == backend.plan(g, by_registry, load_config(None)).to_json()
    assert g.verify(check=ramoops_wishes.verify, assess=ramoops_wishes.assess).to_json() == \
        backend.verify(g, "pvepstore").to_json()
    facts = g.probe(disk_bytes=None)  # no backend asked: the facts, no verdict
    assert facts.target == "" and not facts.capabilities
    with pytest.raises(UsageError, match="probe again"):  # never planned past nobody's blockers
        g.plan(facts, wishes=wishes)
    with pytest.raises(UsageError, match="unknown backend"):
        registry.get("nosuch")