"""promtool, taken from Debian's own prometheus package (``apt-get download``; only the one binary
is unpacked, nothing is installed), cached under /var/cache/pvepstore/promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CACHE = Path("/var/cache/pvepstore/promtool")


def promtool() -> Path | None:
    """The binary, or None when the package cannot be fetched (no apt, no mirror)."""
    binary = CACHE / "usr/bin/promtool"
    if binary.exists():
        return binary
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None
    work = CACHE / "download"
    work.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", "-q", "prometheus"], cwd=work, check=True, capture_output=True,
                       timeout=300)
        deb = sorted(work.glob("prometheus_*.deb"))[-1]
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True,
                             timeout=300).stdout
        subprocess.run(["tar", "-x", "-C", str(CACHE), "./usr/bin/promtool"], input=tar, check=True,
                       capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError, IndexError):
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary if binary.exists() else None
