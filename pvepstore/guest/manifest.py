"""The guest's manifest of pvepstore's changes: validation of what the guest sent, backup names.

``/var/lib/pvepstore/manifest.json`` lists every file pvepstore created, changed or
removed, with the sha256 before and after and where the first original is kept; undo
works from it alone.  The guest wrote it, so everything is checked before use.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from typing import Any

from .scripts import BACKUP_DIR, MANIFEST, STATE_DIR

MANIFEST_VERSION = 1
PATHS = f"{STATE_DIR}/paths"  # the manifest's paths, one a line (read by the probe script)
ALLOWED_ROOTS = ("/etc/", STATE_DIR + "/")
# manifests written before the ivshmem backend existed name no backend: they are pstore_blk's
UNNAMED_BACKEND = "pstore_blk"

__all__ = ["ALLOWED_ROOTS", "MANIFEST", "MANIFEST_VERSION", "PATHS", "backup_path", "manifest_backend",
           "parse_manifest", "sha256"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def manifest_backend(manifest: dict | None) -> str | None:
    """The backend a guest's (parsed) manifest was written for (None: pvepstore has not configured it)."""
    if not manifest:
        return None
    settings = manifest.get("settings") or {}
    name = settings.get("backend", UNNAMED_BACKEND) if isinstance(settings, dict) else UNNAMED_BACKEND
    return name if isinstance(name, str) else UNNAMED_BACKEND
