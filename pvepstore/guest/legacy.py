"""An older ramoops/pstore setup in the guest (the seed's memmap + ramoops): what it is and its cleaned text.

The plan engine removes it only with ``remove_legacy=True`` (:func:`pvepstore.guest.plan.plan_removal`).
"""

from __future__ import annotations

import re
from typing import Mapping

from .layout import is_own_path
from .model import FileState

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
    return "".join(out), found


def find_legacy(files: Mapping[str, FileState]) -> list[dict]:
    """Configuration left by an earlier ramoops/pstore setup in the probed ``files`` (never pvepstore's own)."""
    items = []
    for path, st in sorted(files.items()):
        if is_own_path(path) or st.link is not None:
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
