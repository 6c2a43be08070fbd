"""Debian 13's stock kernel for the real-kernel harness: fetched from trixie, unpacked, and a trixie
build root to compile the test module with the kernel's own compiler (gcc-14; bookworm has 12).

    python3 -m tests.kernel.debian13          # idempotent; prints the release

What it makes under /var/cache/pvepstore (the harness's CACHE):

* ``kernels/debian13/``: ``linux-image-<rel>`` unpacked (``boot/vmlinuz-<rel>``,
  ``usr/lib/modules/<rel>``, merged /usr as trixie ships it) plus a ``depmod`` index (the .deb carries
  none: depmod runs at install time);
* ``trixie-build/``: ``debootstrap --variant=minbase trixie`` with gcc-14, make, libc6-dev and dwarves
  (pahole: kbuild generates BTF for modules), with ``linux-headers-<rel>``, its ``-common`` and
  ``linux-kbuild`` unpacked into it (not installed: their dependency on the image would pull an
  initramfs build into the chroot).

apt reads trixie through a private sources list and state dir; the host's apt setup is not touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "tests.kernel"

from .harness import CACHE  # noqa: E402

KERNEL_DIR = CACHE / "kernels" / "debian13"
BUILD_ROOT = CACHE / "trixie-build"
APT_DIR = CACHE / "trixie-apt"
MIRROR = "http://deb.debian.org/debian"


def _apt(*args: str) -> subprocess.CompletedProcess:
    (APT_DIR / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (APT_DIR / "sources.list").write_text(f"deb {MIRROR} trixie main\n")
    opts = ["-o", f"Dir::Etc::SourceList={APT_DIR / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={APT_DIR / 'lists'}", "-o", f"Dir::Cache::archives={APT_DIR}",
            "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"]
    return subprocess.run([args[0], *opts, *args[1:]], check=True, capture_output=True, text=True, cwd=APT_DIR)


def release() -> str:
    """The unpacked kernel's release (``uname -r``), e.g. ``6.12.117+deb13-amd64``."""
    got = sorted(p.name.removeprefix("vmlinuz-") for p in (KERNEL_DIR / "boot").glob("vmlinuz-*"))
    if not got:
        raise FileNotFoundError(f"no Debian 13 kernel under {KERNEL_DIR}: run python3 -m tests.kernel.debian13")
    return got[-1]


def ensure() -> str:
    if not (KERNEL_DIR / "boot").is_dir() or not (BUILD_ROOT / "usr/bin/gcc-14").exists():
        _apt("apt-get", "update")
        dep = _apt("apt-cache", "depends", "linux-image-amd64").stdout
        image = next(ln.split()[-1] for ln in dep.splitlines() if ln.strip().startswith("Depends: linux-image-"))
        rel = image.removeprefix("linux-image-")
        pkgs = [image, f"linux-headers-{rel}", f"linux-headers-{rel.rsplit('-', 1)[0]}-common",
                f"linux-kbuild-{rel.rsplit('-', 1)[0]}"]
        _apt("apt-get", "download", *pkgs)
        debs = {p: next(APT_DIR.glob(f"{p}_*.deb")) for p in pkgs}
        if KERNEL_DIR.exists():
            shutil.rmtree(KERNEL_DIR)
        KERNEL_DIR.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[image]), str(KERNEL_DIR)], check=True)
        subprocess.run(["depmod", "-b", str(KERNEL_DIR / "usr"), "-a", rel], check=True)
        if not (BUILD_ROOT / "usr/bin/gcc-14").exists():
            tmp = BUILD_ROOT.with_name(BUILD_ROOT.name + ".new")
            if tmp.exists():
                shutil.rmtree(tmp)
            subprocess.run(["debootstrap", "--variant=minbase", "--include=gcc-14,make,libc6-dev,libelf-dev,"
                            "libssl-dev,dwarves", "trixie", str(tmp), MIRROR], check=True, capture_output=True)
            if BUILD_ROOT.exists():
                shutil.rmtree(BUILD_ROOT)
            tmp.rename(BUILD_ROOT)
        for p in pkgs[1:]:
            subprocess.run(["dpkg-deb", "-x", str(debs[p]), str(BUILD_ROOT)], check=True)
    return release()


if __name__ == "__main__":
    print(ensure())
