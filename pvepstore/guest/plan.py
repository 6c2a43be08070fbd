"""The guest plan engine: from a probe report and a backend's wishes to a :class:`Plan`, and back (undo).

A backend says what it wants in the guest as :class:`GuestWishes` (its files, the actions
that activate it now, what the plan must tell); the engine knows no backend.  It writes the
wanted files, removes (or restores from backup) the own files of a previous backend the
wishes no longer name, removes an old ramoops setup on consent, reloads systemd when a unit
changed, and keeps the manifest: the first original of every file changed is backed up and
listed, so ``undo`` returns the guest to its state before pvepstore, byte for byte, whichever
backend was set up last.  The manifest is written before the first change, so an apply cut
short can still be undone.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

from .changes import ApplyResult, Change, Plan, VerifyResult, file_arg, run
from .layout import is_own_path, is_unit
from .manifest import MANIFEST_VERSION, PATHS, backup_path, manifest_backend, sha256
from .probe import KMOD_BLK, KMOD_RAMOOPS, Problem, ProbeReport
from .scripts import MANIFEST, STATE_DIR

# kernel modules pvepstore may load, and the change-script action that unloads each: the manifest's
# "pre" records whether each was loaded before pvepstore, so undo unloads only what pvepstore loaded
MODULE_UNLOAD = {KMOD_BLK: "unload-module", KMOD_RAMOOPS: "unload-ramoops"}

__all__ = ["ApplyResult", "Change", "GuestWishes", "LegacyRemoval", "Plan", "VerifyResult", "WantedFile", "make_plan",
           "make_undo_plan", "plan_removal", "run"]


@dataclass(frozen=True)
class WantedFile:
    """One file a backend wants in the guest: a regular file (``content``) or a symlink (``link``)."""

    path: str
    content: bytes | None = None
    link: str | None = None
    mode: str = "644"
    reason: str = ""

    def __post_init__(self) -> None:
        if (self.content is None) == (self.link is None):
            raise ValueError(f"{self.path}: a wanted file has content or a link target, not both/neither")
        if not is_own_path(self.path):
            raise ValueError(f"{self.path}: not a path pvepstore owns (see pvepstore.guest.layout)")


@dataclass
class GuestWishes:
    """What a backend wants in a probed guest; :func:`make_plan` turns it into changes."""

    backend: str  # a label: Plan.backend, the "switches" note
    settings: dict  # recorded in the manifest and the plan
    files: tuple[WantedFile, ...] = ()
    actions: list[Change] = field(default_factory=list)  # run after the files (activate now, deactivate the old)
    module: str = ""  # the kernel module that takes pstore's slot (named when a reboot is needed)
    first_use: bool = False  # state to record although no file changes (a disk taken into use)
    reboot_required: bool = False
    cold_start_required: bool = False
    cold_start_note: str = ""
    legacy_blockers: list[Problem] = field(default_factory=list)  # block unless remove_legacy


def make_plan(r: ProbeReport, wishes: GuestWishes, *, remove_legacy: bool = False, now: str | None = None) -> Plan:
    """The changes that make the probed guest what ``wishes`` want (blocked: none, and why)."""
    if r.target != wishes.backend:
        # the report's blockers are another backend's (or, unassessed, nobody's): never plan past them
        raise ValueError(f"the probe was assessed for the {r.target or 'no'} backend, not {wishes.backend}: "
                         "probe again")
    plan = Plan("apply", settings=wishes.settings, backend=wishes.backend, module=wishes.module,
                cold_start_note=wishes.cold_start_note)
    plan.blockers = list(r.blockers)
    if not remove_legacy:
        plan.blockers += wishes.legacy_blockers
    if plan.blockers:
        return plan
    old = r.manifest or {}
    was = manifest_backend(old)
    if was and was != wishes.backend:
        plan.notes.append(f"switches this guest from the {was} backend to {wishes.backend} "
                          "(undo still returns it to its state before pvepstore)")
    entries: dict[str, dict] = {e["path"]: dict(e) for e in old.get("files", [])}
    dirs_created: list[str] = list(old.get("dirs_created", []))
    commands: list[str] = list(old.get("commands", []))
    changes: list[Change] = []

    def record(path: str, before: str, after: str, kind: str) -> None:
        e = entries.get(path)
        if e is None:
            action = "created" if before == "-" else ("removed" if after == "-" else "modified")
            e = {"path": path, "kind": kind, "action": action,
                 "backup": None if before == "-" else backup_path(path), "sha256_before": before}
            entries[path] = e
        e["sha256_after"] = after

    wanted = {w.path for w in wishes.files}
    for w in wishes.files:
        cur = r.files.get(w.path)
        cur_sha = cur.sha256 if cur else "-"
        parent = posixpath.dirname(w.path)
        if parent not in r.dirs and parent not in dirs_created:
            changes.append(Change("mkdir", parent, "for pvepstore's configuration"))
            dirs_created.append(parent)
        if w.content is not None:
            if cur_sha == sha256(w.content):
                continue
            changes.append(Change("write", w.path, w.reason, cur_sha, file_arg(w.content, w.mode)))
            record(w.path, cur_sha, sha256(w.content), "file")
        else:
            if cur_sha == f"link:{w.link}":
                continue
            changes.append(Change("link", w.path, w.reason or "enable the unit at boot", cur_sha, str(w.link)))
            record(w.path, cur_sha, f"link:{w.link}", "link")
    # a previous backend's own files: removed, or put back as they were before pvepstore
    for path, e in list(entries.items()):
        if path in wanted or not is_own_path(path):
            continue
        cur = r.files.get(path)
        cur_sha = cur.sha256 if cur else "-"
        after = e.get("sha256_before", "-") if e.get("backup") else "-"
        if cur_sha == after:
            continue
        changes.append(Change("restore", path, f"not used by the {wishes.backend} backend",
                              arg=e.get("backup") or "-"))
        e["sha256_after"] = after
    unit_changed = any(is_unit(c.path) for c in changes)

    legacy = plan_removal(r, remove_legacy)
    changes += legacy.changes
    for rec in legacy.records:
        record(*rec)
    plan.notes += legacy.notes
    commands += [c for c in legacy.commands if c not in commands]

    file_changes = [c for c in changes if c.op != "mkdir"]
    if unit_changed:
        changes.append(run("daemon-reload", "make systemd see the unit"))
    changes += wishes.actions
    plan.reboot_required = wishes.reboot_required
    plan.cold_start_required = wishes.cold_start_required

    if file_changes or wishes.first_use:
        manifest = {
            "version": MANIFEST_VERSION, "tool": "pvepstore",
            "created": old.get("created", now), "settings": wishes.settings,
            "pre": _pre(r, old), "files": list(entries.values()), "dirs_created": dirs_created,
            "commands": commands,
        }
        body = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        cur = r.files.get(MANIFEST)
        if cur is None or cur.sha256 != sha256(body):
            # written first: an interrupted apply can still be undone
            at = _first_non_mkdir(changes)
            paths = "".join(e["path"] + "\n" for e in entries.values()).encode()
            cur_paths = r.files.get(PATHS)
            new = [Change("write", MANIFEST, "", cur.sha256 if cur else "-", file_arg(body, "600"))]
            if cur_paths is None or cur_paths.sha256 != sha256(paths):
                new.append(Change("write", PATHS, "", cur_paths.sha256 if cur_paths else "-",
                                  file_arg(paths, "600")))
            changes[at:at] = new
    plan.changes = changes
    return plan


@dataclass
class LegacyRemoval:
    """The plan's part for the old setup: file changes, their manifest rows, notes, regeneration."""

    changes: list[Change] = field(default_factory=list)
    records: list[tuple[str, str, str, str]] = field(default_factory=list)  # path, sha before, after, kind
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # run once, recorded so undo regenerates too


def plan_removal(r: ProbeReport, remove_legacy: bool) -> LegacyRemoval:
    """The old setup's files, removed or cleaned only with ``remove_legacy``: the only case where the boot
    loader configuration (``update-grub``) or the initramfs is regenerated."""
    out = LegacyRemoval()
    regen: list[str] = []
    for item in r.legacy:
        if item["kind"] == "unreadable":
            out.notes.append(f"{item['path']} mentions ramoops/pstore but is too large to edit; check it")
            continue
        if not remove_legacy:
            continue
        path = item["path"]
        if item["new"] is None:
            out.changes.append(Change("remove", path, "old ramoops/pstore setup", item["sha256"]))
            out.records.append((path, item["sha256"], "-", "file"))
        else:
            mode = r.files[path].mode or "644"
            out.changes.append(Change("write", path, "drop the old ramoops/memmap settings", item["sha256"],
                                      file_arg(item["new"], mode)))
            out.records.append((path, item["sha256"], sha256(item["new"]), "file"))
        if item["kind"] == "grub":
            regen.append("update-grub")
        elif item["kind"] == "initramfs":
            regen.append("update-initramfs")
        elif item["kind"] == "cmdline":
            out.notes.append("/etc/kernel/cmdline changed: regenerate the boot entries "
                             "(kernel-install / proxmox-boot-tool) yourself")
    if r.legacy and not remove_legacy:
        out.notes.append(f"{len(r.legacy)} file(s) of an older ramoops/pstore setup left in place "
                         "(use --remove-legacy to remove them; undo restores them)")
    for cmd in dict.fromkeys(regen):
        if cmd == "update-grub" and "update-grub" not in r.tools:
            out.notes.append("update-grub is not installed: the boot loader configuration was not regenerated")
            continue
        out.changes.append(run(cmd, "regenerate after removing the old settings (consented)"))
        out.commands.append(cmd)
    return out


def _pre(r: ProbeReport, old: dict) -> dict:
    """The guest before pvepstore's first change (kept from the first manifest on)."""
    pre = old.get("pre") or {"backend": r.backend, "state_dir_existed": STATE_DIR in r.dirs,
                             **{f"{module}_loaded": module in r.loaded for module in MODULE_UNLOAD}}
    for module in MODULE_UNLOAD:
        # a manifest older than a module's entry cannot say: never unload it then
        pre.setdefault(f"{module}_loaded", True)
    return pre


def _first_non_mkdir(changes: list[Change]) -> int:
    for i, c in enumerate(changes):
        if c.op != "mkdir":
            return i
    return len(changes)


def make_undo_plan(r: ProbeReport) -> Plan:
    plan = Plan("undo")
    if r.manifest_error:
        plan.blockers.append(Problem("manifest-invalid", "blocker", f"manifest unusable: {r.manifest_error}"))
        return plan
    m = r.manifest
    if not m:
        return plan
    changes: list[Change] = []
    drift = []
    for e in reversed(m["files"]):
        cur = r.files.get(e["path"])
        cur_sha = cur.sha256 if cur else "-"
        if cur_sha != e.get("sha256_after"):
            drift.append(e["path"])
        if e["action"] == "created":
            changes.append(Change("restore", e["path"], "created by pvepstore"))
        else:
            changes.append(Change("restore", e["path"], "as it was before pvepstore", arg=e["backup"]))
    for d in reversed(m.get("dirs_created", [])):
        changes.append(Change("rmdir", d, "created by pvepstore"))
    if any(is_unit(e["path"]) for e in m["files"]):
        changes.append(run("daemon-reload", ""))
    for cmd in m.get("commands", []):
        if cmd in ("update-grub", "update-initramfs"):
            changes.append(run(cmd, "the restored files are part of the boot configuration"))
    pre = m.get("pre", {})
    for module, unload in MODULE_UNLOAD.items():
        if not pre.get(f"{module}_loaded", True) and module in r.loaded:
            changes.append(run(unload, "pvepstore loaded it"))
    changes.append(run("drop-state", f"remove {STATE_DIR} (manifest and backups)"))
    if drift:
        plan.notes.append("changed since apply (restored anyway): " + ", ".join(drift[:5]))
    plan.changes = changes
    return plan
