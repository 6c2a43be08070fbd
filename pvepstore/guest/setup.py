"""Plan, apply, verify and undo the guest configuration of a pstore backend.

Two backends.  **pstore_blk** (``SERIAL`` = the pstore disk's virtio serial):

* ``/etc/modprobe.d/pvepstore.conf``: ``options pstore_blk blkdev=/dev/disk/by-id/virtio-SERIAL
  best_effort=y kmsg_size=.. max_reason=.. pmsg_size=.. console_size=.. ftrace_size=0``
  (pmsg/console only where the kernel has the frontend) and ``options efi_pstore pstore_disable=Y``;
* ``/etc/systemd/system/pvepstore-blk.service`` (+ its ``sysinit.target.wants`` link):
  after udev coldplug, waits (bounded) for the by-id link, then ``modprobe pstore_blk``;
  ordered before ``systemd-pstore.service`` and ``sysinit.target``.  A missing disk
  costs at most the udev settle time and never fails the boot;
* ``/etc/systemd/pstore.conf.d/99-pvepstore.conf``: ``Unlink=no``.

**ivshmem** (ramoops on the BAR2 of Proxmox's ``ivshmem`` device, PCI 1af4:1110):

* ``/etc/modprobe.d/pvepstore.conf``: ``options efi_pstore pstore_disable=Y``;
* ``/etc/pvepstore/ramoops-load.sh``: finds the 1 MiB device, reads BAR2 from sysfs
  ``resource`` and runs ``modprobe ramoops mem_address=<BAR2> mem_size=<size> record_size=0x10000
  console_size=.. pmsg_size=.. ftrace_size=0 max_reason=4 ecc=0`` (console/pmsg 64 KiB only where
  the kernel has the frontend).  No device (the VM was not cold-started since provision): a
  message, never a failed boot;
* ``/etc/systemd/system/pvepstore-ramoops.service`` (+ link): runs it early at every boot,
  before ``systemd-pstore.service`` and ``sysinit.target``;
* the same ``Unlink=no`` drop-in.

``options efi_pstore pstore_disable=Y`` keeps efi_pstore out of pstore's single backend
slot whatever the load order (measured on an OVMF guest, tests/fixtures/ivshmem-ovmf-efi-pstore);
``blacklist efi_pstore`` only stops ``modprobe -b`` callers, so pvepstore no longer writes it.
Switching between the backends is a plan like any other: the other backend's files are
removed (or restored from their backup), the manifest keeps the first original of every file,
and ``undo`` returns the guest to its state before pvepstore, whichever backend is active.

Everything changed is listed in a manifest on the guest
(``/var/lib/pvepstore/manifest.json``); the first version of every file changed
or removed is kept in ``/var/lib/pvepstore/backup/``.  ``undo`` restores each
from there (or removes what pvepstore created), byte for byte.  Old ramoops
configuration is removed only with ``remove_legacy=True``; that is the only case
where the boot loader configuration (``update-grub``) or the initramfs is
regenerated.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from .probe import IVSHMEM_BYTES, Problem, ProbeReport, _int
from .scripts import BACKUP_DIR, MANIFEST, STATE_DIR

MODPROBE_CONF = "/etc/modprobe.d/pvepstore.conf"
UNIT = "/etc/systemd/system/pvepstore-blk.service"
UNIT_LINK = "/etc/systemd/system/sysinit.target.wants/pvepstore-blk.service"
PSTORE_DROPIN = "/etc/systemd/pstore.conf.d/99-pvepstore.conf"
RAMOOPS_UNIT = "/etc/systemd/system/pvepstore-ramoops.service"
RAMOOPS_LINK = "/etc/systemd/system/sysinit.target.wants/pvepstore-ramoops.service"
RAMOOPS_LOADER = "/etc/pvepstore/ramoops-load.sh"
BLK_FILES = (MODPROBE_CONF, UNIT, UNIT_LINK, PSTORE_DROPIN)
IVSHMEM_FILES = (MODPROBE_CONF, RAMOOPS_LOADER, RAMOOPS_UNIT, RAMOOPS_LINK, PSTORE_DROPIN)
MANAGED = tuple(dict.fromkeys(BLK_FILES + IVSHMEM_FILES))
UNITS = (UNIT, UNIT_LINK, RAMOOPS_UNIT, RAMOOPS_LINK)
EFI_PSTORE_OFF = ("# efi_pstore would take pstore's single backend slot on UEFI guests; pstore_disable keeps\n"
                  "# it out whatever the load order (a blacklist only stops `modprobe -b` callers)\n"
                  "options efi_pstore pstore_disable=Y\n")
HEADER = "# Managed by pvepstore; `pvepstore guest undo` restores the previous state.\n"
PATHS = f"{STATE_DIR}/paths"  # the manifest's paths, one a line (read by the probe script)
MANIFEST_VERSION = 1
ALLOWED_ROOTS = ("/etc/", STATE_DIR + "/")


# -- desired configuration --------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    serial: str
    kmsg_size: int = 64
    max_reason: int = 2
    pmsg_size: int = 0
    console_size: int = 0

    @property
    def blkdev(self) -> str:
        return f"/dev/disk/by-id/virtio-{self.serial}"

    backend = "pstore_blk"

    def to_json(self) -> dict:
        return {"serial": self.serial, "blkdev": self.blkdev, "kmsg_size": self.kmsg_size,
                "max_reason": self.max_reason, "pmsg_size": self.pmsg_size,
                "console_size": self.console_size, "ftrace_size": 0}


@dataclass(frozen=True)
class RamoopsSettings:
    """ramoops on the ivshmem device; sizes in bytes (``ramoops_params`` is what the host reader needs)."""

    mem_size: int = IVSHMEM_BYTES
    record_size: int = 0x10000
    console_size: int = 0
    pmsg_size: int = 0
    max_reason: int = 4
    backend = "ivshmem"

    def ramoops_params(self) -> dict:
        return {"mem_size": self.mem_size, "record_size": self.record_size, "console_size": self.console_size,
                "ftrace_size": 0, "pmsg_size": self.pmsg_size}

    def module_args(self) -> str:
        """modprobe arguments after ``mem_address=``/``mem_size=`` (which come from the device)."""
        return (f"record_size=0x{self.record_size:x} console_size=0x{self.console_size:x} "
                f"pmsg_size=0x{self.pmsg_size:x} ftrace_size=0 max_reason={self.max_reason} ecc=0")

    def to_json(self) -> dict:
        return {"backend": "ivshmem", **self.ramoops_params(), "max_reason": self.max_reason, "ecc": 0}


def _ramoops_files(s: RamoopsSettings) -> dict[str, tuple[str, bytes | str]]:
    loader = ("#!/bin/sh\n" + HEADER +
              "# Loads ramoops on the BAR2 of Proxmox's ivshmem device (PCI 1af4:1110, the 1 MiB one).\n"
              "# Never fails the boot: without the device (the VM was not cold-started since\n"
              "# `ivshmem:` was set) it only says so.\n"
              "PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"
              "[ \"$(cat /sys/module/pstore/parameters/backend 2>/dev/null)\" = ramoops ] && exit 0\n"
              "for d in /sys/bus/pci/devices/*; do\n"
              "    [ \"$(cat \"$d/vendor\" 2>/dev/null)\" = 0x1af4 ] && [ \"$(cat \"$d/device\" 2>/dev/null)\" = 0x1110 ] || continue\n"
              "    set -- $(sed -n 3p \"$d/resource\")\n"
              "    [ $# -ge 2 ] && [ $(($2 - $1 + 1)) -eq " + str(s.mem_size) + " ] || continue\n"
              "    if [ -e \"$d/driver\" ]; then\n"
              "        echo \"pvepstore: ${d##*/} is claimed by $(basename \"$(readlink \"$d/driver\")\"): ramoops not loaded\"\n"
              "        exit 0\n"
              "    fi\n"
              f"    modprobe ramoops mem_address=$1 mem_size={s.mem_size} {s.module_args()} || exit 0\n"
              "    echo \"pvepstore: ramoops on ${d##*/} BAR2 $1: backend $(cat /sys/module/pstore/parameters/backend 2>/dev/null)\"\n"
              "    exit 0\n"
              "done\n"
              "echo \"pvepstore: no 1 MiB ivshmem device (PCI 1af4:1110): ramoops not loaded; Proxmox adds it at the\"\n"
              "echo \"pvepstore: VM's next cold start (stop + start), a reboot inside the guest is not enough\"\n")
    unit = (HEADER +
            "[Unit]\n"
            "Description=pvepstore: ramoops on the ivshmem device\n"
            "DefaultDependencies=no\n"
            "After=systemd-modules-load.service\n"
            "Before=systemd-pstore.service sysinit.target shutdown.target\n"
            "Conflicts=shutdown.target\n\n"
            "[Service]\n"
            "Type=oneshot\n"
            "RemainAfterExit=yes\n"
            "TimeoutStartSec=60\n"
            f"ExecStart=/bin/sh {RAMOOPS_LOADER}\n\n"
            "[Install]\n"
            "WantedBy=sysinit.target\n")
    return {MODPROBE_CONF: ("file", (HEADER + EFI_PSTORE_OFF).encode()),
            RAMOOPS_LOADER: ("file", loader.encode()), RAMOOPS_UNIT: ("file", unit.encode()),
            RAMOOPS_LINK: ("link", RAMOOPS_UNIT), PSTORE_DROPIN: ("file", _DROPIN.encode())}


_DROPIN = (HEADER + "# Keep records on the pstore disk: the host collects and clears them.\n"
           "[PStore]\nUnlink=no\n")


def desired_files(s: Settings | RamoopsSettings) -> dict[str, tuple[str, bytes | str]]:
    """path -> ("file", content) | ("link", target)."""
    if isinstance(s, RamoopsSettings):
        return _ramoops_files(s)
    modprobe = (HEADER +
                f"options pstore_blk blkdev={s.blkdev} best_effort=y kmsg_size={s.kmsg_size} "
                f"max_reason={s.max_reason} pmsg_size={s.pmsg_size} console_size={s.console_size} "
                "ftrace_size=0\n" + EFI_PSTORE_OFF)
    unit_name = s.blkdev
    unit = (HEADER +
            "[Unit]\n"
            f"Description=pvepstore: pstore_blk on {unit_name}\n"
            "DefaultDependencies=no\n"
            "Wants=systemd-udev-trigger.service\n"
            "After=systemd-udev-trigger.service systemd-udevd.service systemd-modules-load.service\n"
            "Before=systemd-pstore.service sysinit.target shutdown.target\n"
            "Conflicts=shutdown.target\n\n"
            "[Service]\n"
            "Type=oneshot\n"
            "RemainAfterExit=yes\n"
            "TimeoutStartSec=60\n"
            f"ExecStart=-udevadm settle --timeout=30 --exit-if-exists={unit_name}\n"
            # pstore_blk opens the disk O_EXCL: a udev probe of the fresh link can hold it for
            # a moment (one e2e run saw the first load fail and a later one succeed).
            f"ExecStart=/bin/sh -c 'if [ -b {unit_name} ]; then for t in 1 2 3 4 5; do "
            f"modprobe pstore_blk && exit 0; sleep 1; done; exit 1; "
            f"else echo \"{unit_name} missing: pstore_blk not loaded\"; fi'\n\n"
            "[Install]\n"
            "WantedBy=sysinit.target\n")
    return {MODPROBE_CONF: ("file", modprobe.encode()), UNIT: ("file", unit.encode()),
            UNIT_LINK: ("link", UNIT), PSTORE_DROPIN: ("file", _DROPIN.encode())}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- legacy (the seed's ramoops setup) ---------------------------------------------

_TOKENS = re.compile(r"""(?<![^\s"'])(?:memmap=[^\s"']*|ramoops\.[^\s"'=]+=[^\s"']*|printk\.always_kmsg_dump=[^\s"']*|"""
                     r"""pstore_blk\.[^\s"'=]+=[^\s"']*|pstore\.backend=[^\s"']*)(?![^\s"'])""")
_LEGACY_MODS = {"ramoops", "pstore_blk", "pstore_zone"}


_ASSIGN = re.compile(r"""^(\s*GRUB_CMDLINE_LINUX(?:_DEFAULT)?=)(["'])(.*)\2(\s*)$""", re.S)


def _tidy(line: str) -> str:
    """Collapse the blanks a removed token leaves inside ``GRUB_CMDLINE_LINUX*="..."``."""
    m = _ASSIGN.match(line)
    if not m:
        return line
    return f"{m.group(1)}{m.group(2)}{' '.join(m.group(3).split())}{m.group(2)}{m.group(4)}"


def _meaningful(line: str) -> str:
    return line.split("#", 1)[0].strip()


def _edit(path: str, text: str) -> tuple[str, list[str]]:
    """(new text, legacy lines found) for one configuration file."""
    found: list[str] = []
    out: list[str] = []
    base = posixpath.basename(path)
    for line in text.splitlines(keepends=True):
        body = _meaningful(line)
        words = body.split()
        legacy = False
        if path.startswith("/etc/default/grub") or path == "/etc/kernel/cmdline":
            if _TOKENS.search(body) and (path == "/etc/kernel/cmdline" or "GRUB_CMDLINE_LINUX" in body):
                found.append(line.rstrip("\n"))
                line = _tidy(_TOKENS.sub("", line))
                if path == "/etc/kernel/cmdline":
                    line = " ".join(line.split()) + "\n"
        elif path.startswith("/etc/modprobe.d/"):
            legacy = len(words) >= 2 and words[0] in ("options", "install", "softdep", "remove") \
                and words[1] in _LEGACY_MODS
        elif path in ("/etc/modules", "/etc/initramfs-tools/modules") or path.startswith("/etc/modules-load.d/"):
            legacy = bool(words) and words[0] in _LEGACY_MODS
        if legacy:
            found.append(line.rstrip("\n"))
            continue
        out.append(line)
    del base
    return "".join(out), found


def find_legacy(r: ProbeReport) -> list[dict]:
    """Configuration left by an earlier ramoops/pstore setup (never pvepstore's own files)."""
    items = []
    managed_paths = set(MANAGED) | {MANIFEST}
    for path, st in sorted(r.files.items()):
        if path in managed_paths or st.link is not None or path.startswith("/etc/systemd/"):
            continue
        if st.content is None:
            items.append({"path": path, "kind": "unreadable", "lines": [], "summary": "too large to edit",
                          "new": None, "sha256": st.sha256})
            continue
        text = st.content.decode("utf-8", "replace")
        new, found = _edit(path, text)
        if not found:
            continue
        dropin = path.startswith(("/etc/modprobe.d/", "/etc/modules-load.d/", "/etc/default/grub.d/"))
        remove = dropin and not any(_meaningful(ln) for ln in new.splitlines())
        kind = ("grub" if path.startswith("/etc/default/grub") else
                "initramfs" if path.startswith("/etc/initramfs-tools") else
                "cmdline" if path == "/etc/kernel/cmdline" else "modules")
        items.append({"path": path, "kind": kind, "lines": found[:20],
                      "summary": "; ".join(x.strip() for x in found[:2])[:160],
                      "new": None if remove else new.encode(), "sha256": st.sha256})
    return items


# -- manifest ---------------------------------------------------------------------

def parse_manifest(content: bytes | None) -> tuple[dict | None, str | None]:
    """A validated manifest, or (None, why).  The guest wrote it: check everything."""
    if content is None:
        return None, "larger than the probe's cap"
    try:
        m = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "not JSON"
    if not isinstance(m, dict) or m.get("version") != MANIFEST_VERSION or not isinstance(m.get("files"), list):
        return None, "unknown format"
    for e in m["files"]:
        if not isinstance(e, dict) or not _safe_path(e.get("path")):
            return None, "bad file entry"
        if e.get("action") not in ("created", "modified", "removed"):
            return None, "bad action"
        bk = e.get("backup")
        if bk is not None and not (isinstance(bk, str) and re.fullmatch(re.escape(BACKUP_DIR) + r"/[0-9a-f]{24}", bk)):
            return None, "bad backup path"
    for d in m.get("dirs_created", []):
        if not _safe_path(d):
            return None, "bad directory entry"
    return m, None


def _safe_path(p: Any) -> bool:
    return (isinstance(p, str) and p.startswith(ALLOWED_ROOTS) and posixpath.normpath(p) == p
            and not any(c in p for c in "\n\0") and len(p) < 1024)


def backup_path(path: str) -> str:
    return f"{BACKUP_DIR}/{hashlib.sha256(path.encode()).hexdigest()[:24]}"


# -- plan ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    op: str  # mkdir | write | link | remove | restore | rmdir | run
    path: str  # file path, or the action name for "run"
    reason: str
    sha_before: str = "-"
    arg: str = "-"  # write: MODE:B64, link: target, restore: backup, run: argument
    arg2: str = "-"

    def args(self) -> list[str]:
        if self.op == "run":
            return ["run", self.path, self.arg, self.arg2]
        if self.op in ("write", "link", "remove"):
            return [self.op, self.path, self.sha_before, self.arg]
        return [self.op, self.path, "-", self.arg]

    def describe(self) -> str:
        what = {
            "mkdir": f"create directory {self.path}",
            "write": f"{'create' if self.sha_before == '-' else 'rewrite'} {self.path}",
            "link": f"link {self.path} -> {self.arg}",
            "remove": f"remove {self.path} (backed up)",
            "restore": f"restore {self.path} from the backup" if self.arg != "-" else f"remove {self.path}",
            "rmdir": f"remove directory {self.path} if empty",
            "run": f"run {self.path}" + (f" {self.arg}" if self.arg != "-" else ""),
        }[self.op]
        return f"{what}: {self.reason}" if self.reason else what

    def to_json(self) -> dict:
        d = {"op": self.op, "path": self.path, "reason": self.reason}
        if self.op == "write":
            d["content"] = base64.b64decode(self.arg.split(":", 1)[1]).decode("utf-8", "replace")
        elif self.op in ("link", "restore") and self.arg != "-":
            d["target"] = self.arg
        return d


@dataclass
class Plan:
    kind: str  # "apply" | "undo"
    changes: list[Change] = field(default_factory=list)
    blockers: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reboot_required: bool = False
    settings: dict | None = None
    backend: str = "pstore_blk"
    cold_start_required: bool = False  # ivshmem: the device appears only when the VM is started anew

    @property
    def empty(self) -> bool:
        return not self.changes

    def describe(self) -> list[str]:
        lines = []
        for b in self.blockers:
            lines.append(f"BLOCKED: {b.message}" + (f" ({b.fix})" if b.fix else ""))
        if not self.changes and not self.blockers:
            lines.append("nothing to do: the guest is already as planned" if self.kind == "apply"
                         else "nothing to undo: pvepstore has not changed this guest")
        lines += [c.describe() for c in self.changes if not c.path.startswith(STATE_DIR + "/")]
        if any(c.path == MANIFEST for c in self.changes):
            lines.append(f"{'record' if self.kind == 'apply' else 'remove'} the changes in {MANIFEST}")
        lines += [f"note: {n}" for n in self.notes]
        module = "ramoops" if self.backend == "ivshmem" else "pstore_blk"
        if self.reboot_required:
            lines.append(f"a reboot is needed before {module} can take the backend slot")
        if self.cold_start_required:
            lines.append("the ivshmem device is not in this boot: Proxmox adds it at the VM's next cold start "
                         "(stop + start; a reboot inside the guest is not enough), and the unit loads ramoops then")
        return lines

    def to_json(self) -> dict:
        return {"kind": self.kind, "empty": self.empty, "changes": [c.to_json() for c in self.changes],
                "blockers": [b.to_json() for b in self.blockers], "notes": self.notes,
                "reboot_required": self.reboot_required, "settings": self.settings, "backend": self.backend,
                "cold_start_required": self.cold_start_required}

    def script_args(self) -> list[str]:
        out: list[str] = []
        for c in self.changes:
            out += c.args()
        return out


def _file_arg(content: bytes, mode: str = "644") -> str:
    return f"{mode}:{base64.b64encode(content).decode()}"


def make_plan(r: ProbeReport, *, kmsg_size: int = 64, max_reason: int | None = None,
              remove_legacy: bool = False, now: str | None = None, backend: str | None = None) -> Plan:
    backend = backend or r.target
    if backend != r.target:
        raise ValueError(f"the probe was made for the {r.target} backend, not {backend}: probe again")
    if backend == "ivshmem":
        if max_reason not in (None, 4):
            raise ValueError("the ivshmem backend always uses max_reason=4 (it keeps shutdown dumps)")
        settings: Settings | RamoopsSettings = RamoopsSettings(
            console_size=0x10000 if r.frontends.get("console") else 0,
            pmsg_size=0x10000 if r.frontends.get("pmsg") else 0)
    else:
        max_reason = 2 if max_reason is None else max_reason
        if kmsg_size < 4 or kmsg_size % 4 or not 1 <= max_reason <= 4:
            raise ValueError("kmsg_size must be a multiple of 4 KiB and max_reason 1..4")
        settings = Settings(serial=r.serial, kmsg_size=kmsg_size, max_reason=max_reason,
                            pmsg_size=64 if r.frontends.get("pmsg") else 0,
                            console_size=64 if r.frontends.get("console") else 0)
    plan = Plan("apply", settings=settings.to_json(), backend=backend)
    plan.blockers = list(r.blockers)
    if backend == "ivshmem" and not remove_legacy:
        loads = [x["path"] for x in r.legacy if any(re.search(r"ramoops|memmap=", ln) for ln in x["lines"])]
        if loads:
            plan.blockers.append(Problem(
                "legacy-ramoops", "blocker", "an older ramoops setup would load ramoops with its own "
                f"parameters ({', '.join(loads[:3])})", "remove it with --remove-legacy (backed up; undo "
                "restores it)"))
    if plan.blockers:
        return plan
    old = r.manifest or {}
    was = (old.get("settings") or {}).get("backend", "pstore_blk") if old else None
    if was and was != backend:
        plan.notes.append(f"switches this guest from the {was} backend to {backend} "
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

    desired = desired_files(settings)
    reasons = {MODPROBE_CONF: "pstore_blk options, efi_pstore kept out of the backend slot"
               if backend == "pstore_blk" else "keep efi_pstore out of pstore's backend slot",
               UNIT: "load pstore_blk once the disk's by-id link exists",
               RAMOOPS_LOADER: "find the ivshmem device and load ramoops on its BAR2",
               RAMOOPS_UNIT: "load ramoops early at every boot, before systemd-pstore",
               PSTORE_DROPIN: "keep systemd-pstore from erasing the records"}
    for path, (kind, want) in desired.items():
        cur = r.files.get(path)
        cur_sha = cur.sha256 if cur else "-"
        parent = posixpath.dirname(path)
        if parent not in r.dirs and parent not in dirs_created:
            changes.append(Change("mkdir", parent, "for pvepstore's configuration"))
            dirs_created.append(parent)
        if kind == "file":
            if cur_sha == sha256(want):
                continue
            mode = "755" if path == RAMOOPS_LOADER else "644"
            changes.append(Change("write", path, reasons[path], cur_sha, _file_arg(want, mode)))
            record(path, cur_sha, sha256(want), "file")
        else:
            if cur_sha == f"link:{want}":
                continue
            changes.append(Change("link", path, "enable the unit at boot", cur_sha, str(want)))
            record(path, cur_sha, f"link:{want}", "link")
    # the other backend's files (a switch): removed, or put back as they were before pvepstore
    for path, e in list(entries.items()):
        if path in desired or path not in MANAGED:
            continue
        cur = r.files.get(path)
        cur_sha = cur.sha256 if cur else "-"
        after = e.get("sha256_before", "-") if e.get("backup") else "-"
        if cur_sha == after:
            continue
        changes.append(Change("restore", path, f"not used by the {backend} backend", arg=e.get("backup") or "-"))
        e["sha256_after"] = after
    unit_changed = any(c.path in UNITS for c in changes)

    regen: list[str] = []
    for item in r.legacy:
        if item["kind"] == "unreadable":
            plan.notes.append(f"{item['path']} mentions ramoops/pstore but is too large to edit; check it")
            continue
        if not remove_legacy:
            continue
        path = item["path"]
        if item["new"] is None:
            changes.append(Change("remove", path, "old ramoops/pstore setup", item["sha256"]))
            record(path, item["sha256"], "-", "file")
        else:
            mode = r.files[path].mode or "644"
            changes.append(Change("write", path, "drop the old ramoops/memmap settings", item["sha256"],
                                  _file_arg(item["new"], mode)))
            record(path, item["sha256"], sha256(item["new"]), "file")
        if item["kind"] == "grub":
            regen.append("update-grub")
        elif item["kind"] == "initramfs":
            regen.append("update-initramfs")
        elif item["kind"] == "cmdline":
            plan.notes.append("/etc/kernel/cmdline changed: regenerate the boot entries "
                              "(kernel-install / proxmox-boot-tool) yourself")
    if r.legacy and not remove_legacy:
        plan.notes.append(f"{len(r.legacy)} file(s) of an older ramoops/pstore setup left in place "
                          "(use --remove-legacy to remove them; undo restores them)")
    for cmd in dict.fromkeys(regen):
        if cmd == "update-grub" and "update-grub" not in r.tools:
            plan.notes.append("update-grub is not installed: the boot loader configuration was not regenerated")
            continue
        changes.append(Change("run", cmd, "regenerate after removing the old settings (consented)"))
        if cmd not in commands:
            commands.append(cmd)

    file_changes = [c for c in changes if c.op != "mkdir"]
    if unit_changed:
        changes.append(Change("run", "daemon-reload", "make systemd see the unit"))
    d = r.disk if backend == "pstore_blk" else None
    if isinstance(settings, RamoopsSettings):
        _ramoops_activation(r, settings, changes, plan)
    else:
        # the disk: first use only, after re-checks in the guest
        if d is not None and d.present and not d.initialized:
            if r.configured or d.zero or d.head_is_pstore:
                changes.append(Change("run", "mark-disk", "the disk is clean, or holds pstore records (kept)",
                                      arg=r.serial))
            else:
                changes.append(Change("run", "wipe-disk", "zero stale bytes of an earlier owner (first use; "
                                      "serial, size, signature and mounts re-checked)", arg=r.serial,
                                      arg2=str(d.size)))
        # activate now when the slot is free; otherwise at the next boot
        if r.backend is None:
            changes.append(Change("run", "load-module", "attach pstore_blk now"))
        elif r.backend == "pstore_blk" and not _params_match(r, settings):
            changes.append(Change("run", "reload-module", "pstore_blk runs with other parameters"))
        elif r.backend == "ramoops" and r.ramoops_on_ivshmem:
            changes.append(Change("run", "unload-ramoops", "switching from the ivshmem backend"))
            changes.append(Change("run", "load-module", "attach pstore_blk now"))
        elif r.backend != "pstore_blk":
            plan.reboot_required = True

    if file_changes or d is not None and d.present and not d.initialized:
        pre = old.get("pre") or {"pstore_blk_loaded": "pstore_blk" in r.loaded, "backend": r.backend,
                                 "state_dir_existed": STATE_DIR in r.dirs}
        pre.setdefault("ramoops_loaded", "ramoops" in r.loaded if not old else True)
        manifest = {
            "version": MANIFEST_VERSION, "tool": "pvepstore",
            "created": old.get("created", now), "settings": settings.to_json(),
            "pre": pre, "files": list(entries.values()), "dirs_created": dirs_created, "commands": commands,
        }
        body = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        cur = r.files.get(MANIFEST)
        if cur is None or cur.sha256 != sha256(body):
            # written first: an interrupted apply can still be undone
            at = _first_non_mkdir(changes)
            paths = "".join(e["path"] + "\n" for e in entries.values()).encode()
            cur_paths = r.files.get(PATHS)
            new = [Change("write", MANIFEST, "", cur.sha256 if cur else "-", _file_arg(body, "600"))]
            if cur_paths is None or cur_paths.sha256 != sha256(paths):
                new.append(Change("write", PATHS, "", cur_paths.sha256 if cur_paths else "-",
                                  _file_arg(paths, "600")))
            changes[at:at] = new
    plan.changes = changes
    return plan


def _ramoops_activation(r: ProbeReport, s: RamoopsSettings, changes: list[Change], plan: Plan) -> None:
    """Load ramoops on the device now when pstore's slot can be had; else say when it will be."""
    if r.ivshmem is None:
        plan.cold_start_required = True
        return
    if r.backend is None:
        changes.append(Change("run", "load-ramoops", "load ramoops on the ivshmem device now"))
    elif r.backend == "ramoops":
        if not _ramoops_match(r, s):
            changes.append(Change("run", "reload-ramoops", "ramoops runs with other parameters"))
    elif r.backend == "pstore_blk":
        changes.append(Change("run", "unload-module", "switching from pstore_blk"))
        changes.append(Change("run", "load-ramoops", "load ramoops on the ivshmem device now"))
    else:
        plan.reboot_required = True


def _ramoops_match(r: ProbeReport, s: RamoopsSettings) -> bool:
    p = r.ramoops_params
    want = {"mem_size": s.mem_size, "record_size": s.record_size, "console_size": s.console_size,
            "pmsg_size": s.pmsg_size, "ftrace_size": 0, "max_reason": s.max_reason, "ecc": 0}
    return r.ramoops_on_ivshmem and all(_int(p.get(k)) == v for k, v in want.items())


def _first_non_mkdir(changes: list[Change]) -> int:
    for i, c in enumerate(changes):
        if c.op != "mkdir":
            return i
    return len(changes)


def _params_match(r: ProbeReport, s: Settings) -> bool:
    p = r.blk_params
    return (p.get("blkdev") == s.blkdev and p.get("best_effort") == "Y"
            and p.get("kmsg_size") == str(s.kmsg_size) and p.get("max_reason") == str(s.max_reason))


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
    if any(e["path"] in UNITS for e in m["files"]):
        changes.append(Change("run", "daemon-reload", ""))
    for cmd in m.get("commands", []):
        if cmd in ("update-grub", "update-initramfs"):
            changes.append(Change("run", cmd, "the restored files are part of the boot configuration"))
    pre = m.get("pre", {})
    if not pre.get("pstore_blk_loaded", True) and "pstore_blk" in r.loaded:
        changes.append(Change("run", "unload-module", "pvepstore loaded it"))
    if not pre.get("ramoops_loaded", True) and "ramoops" in r.loaded:
        changes.append(Change("run", "unload-ramoops", "pvepstore loaded it"))
    changes.append(Change("run", "drop-state", f"remove {STATE_DIR} (manifest and backups)"))
    if drift:
        plan.notes.append("changed since apply (restored anyway): " + ", ".join(drift[:5]))
    plan.changes = changes
    return plan


# -- apply / verify results ----------------------------------------------------------

@dataclass
class ApplyResult:
    ok: bool
    dry_run: bool
    done: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ok": self.ok, "dry_run": self.dry_run, "done": self.done, "failures": self.failures,
                "mismatches": self.mismatches}


@dataclass
class VerifyResult:
    ok: bool
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ok": self.ok, "checks": [{"check": n, "ok": ok, "detail": d} for n, ok, d in self.checks],
                "problems": self.problems}


def verify_report(r: ProbeReport) -> VerifyResult:
    m = r.manifest or {}
    s = m.get("settings", {})
    backend = s.get("backend", "pstore_blk") if m else r.target
    checks: list[tuple[str, bool, str]] = []
    add = lambda name, ok, detail="": checks.append((name, bool(ok), detail))  # noqa: E731
    add("manifest", bool(m), MANIFEST if m else "pvepstore has not configured this guest")
    if backend == "ivshmem":
        d = r.ivshmem
        add("ivshmem device", d is not None and not d.driver,
            f"{d.pci} BAR2 0x{d.start:x} ({d.size} bytes)" + (f", claimed by {d.driver}" if d.driver else "")
            if d else "not in this boot: Proxmox adds it at the VM's next cold start (stop + start)")
        add("backend", r.backend == "ramoops", f"backend is {r.backend or 'none'}")
        p = r.ramoops_params
        want = {"mem_address": d.start if d else None, "mem_size": s.get("mem_size"),
                "record_size": s.get("record_size"), "console_size": s.get("console_size"),
                "pmsg_size": s.get("pmsg_size"), "ftrace_size": 0, "max_reason": s.get("max_reason", 4), "ecc": 0}
        for k, v in want.items():
            add(f"param {k}", v is not None and _int(p.get(k)) == v, f"{p.get(k, 'unset')} (want {v})")
        units = (RAMOOPS_UNIT, RAMOOPS_LINK)
        service, service_name = r.ramoops_service, "pvepstore-ramoops.service"
    else:
        add("disk", r.disk is not None and r.disk.present, r.by_id)
        add("backend", r.backend == "pstore_blk", f"backend is {r.backend or 'none'}")
        p = r.blk_params
        want_blk = {"blkdev": r.by_id, "best_effort": "Y", "kmsg_size": str(s.get("kmsg_size", "?")),
                    "max_reason": str(s.get("max_reason", "?"))}
        for k, v in want_blk.items():
            add(f"param {k}", p.get(k) == v, f"{p.get(k, 'unset')} (want {v})")
        units = (UNIT, UNIT_LINK)
        service, service_name = r.service, "pvepstore-blk.service"
    add("pstorefs", r.pstorefs == "pstore", "/sys/fs/pstore mounted" if r.pstorefs == "pstore" else "not mounted")
    sp = r.systemd_pstore
    keeps = not sp.get("present") or sp.get("enabled") == "masked" or not sp.get("unlink") \
        or sp.get("storage") == "none"
    add("systemd-pstore keeps records", keeps, f"Unlink={'yes' if sp.get('unlink') else 'no'}")
    add("efi_pstore kept out", r.efi_pstore_kept_out,
        "cannot take the backend slot at the next boot" if r.efi_pstore_kept_out
        else "efi_pstore can take the backend slot at the next boot")
    for e in m.get("files", []):
        cur = r.files.get(e["path"])
        cur_sha = cur.sha256 if cur else "-"
        add(f"file {e['path']}", cur_sha == e.get("sha256_after"), "as applied" if cur_sha == e.get("sha256_after")
            else "changed since apply")
    if any(e["path"] == units[1] and e.get("sha256_after") != "-" for e in m.get("files", [])):
        add("boot unit", service.get("enabled") == "enabled" and service.get("active") == "active",
            f"{service_name} {service.get('enabled')}, {service.get('active')}")
    problems = [f"{n}: {d}" if d else n for n, ok, d in checks if not ok]
    return VerifyResult(ok=not problems, checks=checks, problems=problems)


def quote_args(args: list[str]) -> str:
    """For logs: the arguments as the shell would see them (content shortened)."""
    return " ".join(shlex.quote(a if len(a) < 80 else a[:60] + "...") for a in args)
