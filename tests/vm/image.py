"""Build (once) and cache a Debian guest disk image for the e2e tests.

The image lives OUTSIDE the repository in ``$PVEPSTORE_CACHE/vm/<name>/``
(default ``/var/cache/pvepstore/vm``) and is rebuilt when missing or when the
recipe changed (``RECIPE`` below).  A ``flock`` on ``vm/.lock`` serialises
builders (two pytest sessions, two engineers).

What is built (``python3 -m tests.vm.image [bookworm|trixie]``):

* debootstrap ``--variant=minbase`` + systemd, udev, openssh-server, sudo,
  util-linux, kmod, initramfs-tools; the stock kernel package of the suite
  (``linux-image-<release>``; for bookworm the release of the host's headers
  in /usr/src, for trixie the .deb that ``tests/kernel/debian13.py`` fetched and
  built its trixie build root for, so the oops module built for it loads in the guest);
* a persistent journal, static networking for QEMU's user net (10.0.2.15),
  ``/dev/vda`` as root;
* a root SSH key pair generated here (``ssh/id_ed25519``), its public half in
  the guest's ``/root/.ssh/authorized_keys``; the guest's ed25519 host key is
  copied out (``host_ed25519.pub``) so the harness can pin it;
* ``rootfs.img`` (raw ext4, sparse, made with ``mke2fs -d``), plus the
  image's own ``vmlinuz`` and ``initrd.img`` for direct ``-kernel`` boot.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("PVEPSTORE_CACHE", "/var/cache/pvepstore")) / "vm"
MIRROR = os.environ.get("PVEPSTORE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("PVEPSTORE_DEBIAN_SECURITY", "http://deb.debian.org/debian-security")
RECIPE = 3  # bump when the build below changes
PACKAGES = ["systemd", "systemd-sysv", "udev", "openssh-server", "sudo", "util-linux",
            "kmod", "initramfs-tools", "zstd", "procps", "iproute2", "ca-certificates"]


@dataclass(frozen=True)
class GuestImage:
    name: str
    suite: str
    release: str  # guest kernel release (uname -r)
    dir: Path

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs.img"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def key(self) -> Path:
        return self.dir / "ssh" / "id_ed25519"

    @property
    def host_key(self) -> Path:
        return self.dir / "host_ed25519.pub"

    def ready(self) -> bool:
        stamp = self.dir / "stamp.json"
        if not stamp.exists():
            return False
        try:
            data = json.loads(stamp.read_text())
        except ValueError:
            return False
        return data.get("recipe") == RECIPE and all(
            p.exists() for p in (self.rootfs, self.kernel, self.initrd, self.key, self.host_key))


def host_headers_release() -> str | None:
    """The newest -amd64 kernel release with headers on this host (builds the oops module)."""
    rels = sorted(Path(p).name.removeprefix("linux-headers-")
                  for p in glob.glob("/usr/src/linux-headers-*-amd64"))
    return rels[-1] if rels else None


def image_for(suite: str = "bookworm") -> GuestImage:
    if suite == "bookworm":
        release = os.environ.get("PVEPSTORE_VM_KERNEL") or host_headers_release() or "6.1.0-56-amd64"
        return GuestImage(f"debian12-{release}", suite, release, CACHE / f"debian12-{release}")
    if suite == "trixie":
        # the kernel of tests/kernel/debian13.py's cache, so that the test module built there loads
        from tests.kernel import debian13

        release = debian13.ensure()
        return GuestImage(f"debian13-{release}", suite, release, CACHE / f"debian13-{release}")
    raise ValueError(f"unknown suite {suite}")


@contextmanager
def _lock():
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(argv, log, **kw):
    log("+ " + " ".join(map(str, argv)))
    subprocess.run(argv, check=True, **kw)


def _chroot(root: Path, script: str, log) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LC_ALL": "C.UTF-8", "HOME": "/root"}
    _run(["chroot", str(root), "/bin/sh", "-euxc", script], log, env=env)


@contextmanager
def _mounted(root: Path):
    mounts = []
    try:
        for fstype, target in (("proc", "proc"), ("sysfs", "sys"), ("devtmpfs", "dev"),
                               ("devpts", "dev/pts")):
            tgt = root / target
            tgt.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", fstype, fstype, str(tgt)], check=True)
            mounts.append(tgt)
        yield
    finally:
        for tgt in reversed(mounts):
            subprocess.run(["umount", "-l", str(tgt)], check=False)


def ensure_image(suite: str = "bookworm", log=print) -> GuestImage:
    """Return the cached image, building it first if needed (serialised by a lock)."""
    img = image_for(suite)
    if img.ready():
        return img
    with _lock():
        if img.ready():
            return img
        t0 = time.monotonic()
        _build(img, log)
        log(f"image {img.name} built in {time.monotonic() - t0:.0f} s")
    return img


def _build(img: GuestImage, log) -> None:
    work = img.dir.with_name(img.dir.name + ".build")
    if work.exists():
        subprocess.run(["umount", "-R", "-l", str(work / "root")], check=False,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(work)
    root = work / "root"
    root.mkdir(parents=True)
    _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
          img.suite, str(root), MIRROR], log, stdout=subprocess.DEVNULL)
    sec_suite = f"{img.suite}-security"
    (root / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {img.suite} main\ndeb {MIRROR} {img.suite}-updates main\n"
        f"deb {SECURITY} {sec_suite} main\n")
    kernel_pkg = f"linux-image-{img.release}"
    if img.suite == "trixie":  # the very .deb tests/kernel/debian13.py fetched (the mirror drops old ABIs)
        from tests.kernel.debian13 import APT_DIR

        deb = next(APT_DIR.glob(f"linux-image-{img.release}_*.deb"))
        shutil.copy2(deb, root / "tmp" / deb.name)
        kernel_pkg = f"/tmp/{deb.name}"
    (root / "etc/initramfs-tools/conf.d").mkdir(parents=True, exist_ok=True)
    # a small initramfs (only what a virtio root needs) boots much faster under TCG
    (root / "etc/initramfs-tools/conf.d/pvepstore-test.conf").write_text("MODULES=list\n")
    (root / "etc/initramfs-tools/modules").write_text(
        "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
    (root / "etc/hostname").write_text("pvepstore-test\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 pvepstore-test\n")
    net = root / "etc/systemd/network/10-qemu.network"
    net.parent.mkdir(parents=True, exist_ok=True)
    net.write_text("[Match]\nName=en* eth*\n\n[Network]\nAddress=10.0.2.15/24\n"
                   "Gateway=10.0.2.2\nDNS=10.0.2.3\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    with _mounted(root):
        _chroot(root, f"""
apt-get update -q
apt-get install -y -q --no-install-recommends {kernel_pkg}
systemctl enable systemd-networkd.service
systemctl mask systemd-networkd-wait-online.service
mkdir -p /var/log/journal /root/.ssh
chmod 700 /root/.ssh
apt-get clean
rm -rf /var/lib/apt/lists/*
""", log)
    kernels = sorted(glob.glob(str(root / "boot/vmlinuz-*")))
    if not kernels:
        raise RuntimeError("no kernel installed in the image")
    release = Path(kernels[-1]).name.removeprefix("vmlinuz-")
    if release != img.release:
        raise RuntimeError(f"image kernel {release} != wanted {img.release}")
    for deb in (root / "tmp").glob("linux-image-*.deb"):
        deb.unlink()
    # SSH: a root key made here; sshd's host key is pinned by the harness.
    keydir = work / "ssh"
    keydir.mkdir()
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pvepstore-test",
          "-f", str(keydir / "id_ed25519")], log)
    auth = root / "root/.ssh/authorized_keys"
    auth.write_text((keydir / "id_ed25519.pub").read_text())
    auth.chmod(0o600)
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (root / "etc/ssh/sshd_config.d/pvepstore-test.conf").write_text(
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n")
    # an unprivileged user with password-less sudo (tests the sudo path)
    _chroot_simple = f"""
useradd -m -s /bin/bash pvep
mkdir -p /home/pvep/.ssh
cp /root/.ssh/authorized_keys /home/pvep/.ssh/
chown -R pvep:pvep /home/pvep/.ssh
echo 'pvep ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/pvep
chmod 440 /etc/sudoers.d/pvep
"""
    _chroot(root, _chroot_simple, log)
    shutil.copy2(root / "etc/ssh/ssh_host_ed25519_key.pub", work / "host_ed25519.pub")
    shutil.copy2(kernels[-1], work / "vmlinuz")
    initrds = sorted(glob.glob(str(root / "boot/initrd.img-*")))
    shutil.copy2(initrds[-1], work / "initrd.img")
    _run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(root), str(work / "rootfs.img"), "3G"],
         log)
    shutil.rmtree(root)
    (work / "stamp.json").write_text(json.dumps(
        {"recipe": RECIPE, "suite": img.suite, "release": release,
         "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    if img.dir.exists():
        shutil.rmtree(img.dir)
    work.rename(img.dir)


if __name__ == "__main__":
    suite = sys.argv[1] if len(sys.argv) > 1 else "bookworm"
    print(ensure_image(suite).dir)
