"""Boot the cached Debian guest under QEMU with a pstore disk and SSH forwarded to localhost.

* root disk: a qcow2 overlay on the cached ``rootfs.img`` (the cache stays pristine);
* pstore disk: ``pstore.img``, 512 MiB sparse raw, ``virtio-blk-pci`` with ``serial=pvepstore``;
* ``-kernel``/``-initrd`` are the image's own Debian kernel and initramfs; the guest
  boots systemd normally from ``/dev/vda``;
* SSH: ``hostfwd=tcp:127.0.0.1:PORT-:22``; the guest's host key (copied out at
  image build time) is pinned in a known_hosts file written here -- nothing is
  ever auto-added; the root key is the one generated at image build time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import logging

from pvepstore.errors import GuestError
from pvepstore.guest import GuestTarget, connect
from pvepstore.guest.transport import known_hosts_name

from .image import GuestImage

QEMU = os.environ.get("PVEPSTORE_QEMU", "qemu-system-x86_64")
SERIAL = "pvepstore"
DISK_BYTES = 512 << 20


logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # refused connects while booting


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accel() -> str:
    try:
        from tests.kernel.harness import probe_accel

        return probe_accel()
    except Exception:  # pragma: no cover - the kernel harness is another engineer's
        return "tcg"


# banner and auth wait too: a client that gives up after 10 s on a slow TCG guest (CI once ran ~2.5x
# slower) leaves sshd's half-started children behind; past MaxStartups (10) sshd resets new
# connections at random, and the retries feed that ("Error reading SSH protocol banner", "reset by peer")
CONNECT_TIMEOUT = 40


@dataclass
class GuestVM:
    image: GuestImage
    workdir: Path
    mem_mib: int = 1024
    smp: int = 2
    port: int = 0
    proc: subprocess.Popen | None = None
    boots: int = 0
    log: list[str] = field(default_factory=list)
    # Proxmox's `ivshmem: size=1,name=...`: exactly qemu-server's -object/-device pair, mem-path = this file
    ivshmem_file: Path | None = None

    @property
    def pstore_img(self) -> Path:
        return self.workdir / "pstore.img"

    @property
    def overlay(self) -> Path:
        return self.workdir / "root.qcow2"

    @property
    def console_log(self) -> Path:
        return self.workdir / f"console-{self.boots}.log"

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.overlay.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                            "-b", str(self.image.rootfs), str(self.overlay)], check=True)
        if not self.pstore_img.exists():
            with open(self.pstore_img, "wb") as fh:
                fh.truncate(DISK_BYTES)
        key = self.workdir / "id_ed25519"
        if not key.exists():
            shutil.copy2(self.image.key, key)
            key.chmod(0o600)

    def target(self, user: str = "root", **kw) -> GuestTarget:
        return GuestTarget(host="127.0.0.1", port=self.port, user=user,
                           key_file=str(self.workdir / "id_ed25519"),
                           known_hosts=str(self.workdir / "known_hosts"),
                           connect_timeout=CONNECT_TIMEOUT, command_timeout=kw.pop("command_timeout", 120),
                           **kw)

    def start(self) -> None:
        self.prepare()
        self.port = free_port()
        pub = self.image.host_key.read_text().split()
        (self.workdir / "known_hosts").write_text(
            f"{known_hosts_name('127.0.0.1', self.port)} {pub[0]} {pub[1]}\n")
        self.boots += 1
        argv = [QEMU, "-accel", accel(), "-machine", "pc", "-m", str(self.mem_mib),
                "-smp", str(self.smp), "-nographic", "-monitor", "none",
                "-serial", f"file:{self.console_log}",
                "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
                "-append", "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 "
                           "systemd.show_status=0 loglevel=4",
                # the root disk's device comes first so that it is /dev/vda
                "-drive", f"file={self.overlay},if=none,id=root,format=qcow2,cache=unsafe",
                "-device", "virtio-blk-pci,drive=root,serial=root",
                "-drive", f"file={self.pstore_img},if=none,id=d1,format=raw,cache=writeback",
                "-device", f"virtio-blk-pci,drive=d1,serial={SERIAL}",
                "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
                "-device", "virtio-net-pci,netdev=n0"]
        if self.ivshmem_file is not None:
            argv += ["-object", f"memory-backend-file,id=ivshmem,share=on,mem-path={self.ivshmem_file},size=1M",
                     "-device", "ivshmem-plain,memdev=ivshmem"]
        (self.workdir / "qemu.argv").write_text(json.dumps(argv) + "\n")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "qemu.err", "ab"),
                                     start_new_session=True)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ssh(self, timeout: float = 300) -> float:
        """Wait until the guest answers SSH (host key pinned); returns the seconds waited."""
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < timeout:
            if not self.running():
                raise RuntimeError(f"QEMU exited ({self.proc.returncode}); see {self.console_log}")
            try:
                with connect(self.target()) as g:
                    g.transport.run("ping", "echo ok\n", [], timeout=30)
                return time.monotonic() - t0
            except GuestError as exc:
                last = exc
                time.sleep(2)
        raise TimeoutError(f"no SSH after {timeout:.0f} s: {last}; see {self.console_log}")

    def wait_exit(self, timeout: float = 120) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    # -- guest helpers -----------------------------------------------------------------
    def run(self, script: str, *args: str, timeout: float = 120) -> bytes:
        """A throwaway root shell script in the guest (test setup only; pvepstore has its own)."""
        with connect(self.target()) as g:
            res = g.transport.run("test", script, list(args), timeout=timeout)
        if res.exit != 0:
            raise RuntimeError(f"guest script failed ({res.exit}): {res.stderr[-2000:]!r}")
        return res.stdout

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(self.workdir / "known_hosts"))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port=self.port, username="root",
                       key_filename=str(self.workdir / "id_ed25519"), allow_agent=False, look_for_keys=False)
        try:
            sftp = client.open_sftp()
            parent = path.rsplit("/", 1)[0]
            try:
                sftp.stat(parent)
            except OSError:  # e.g. /etc/default/grub.d: the seed's leftovers live in dirs Debian lacks
                sftp.mkdir(parent)
            with sftp.open(path, "wb") as fh:
                fh.write(data)
            sftp.chmod(path, mode)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def oops_module(release: str) -> Path:
    """tests/kernel/oopsmod built for the guest's kernel: Debian 13's in its trixie build root (the
    kernel's own gcc-14), Debian 12's against the host's headers (the image takes the host's release)."""
    import pytest

    from tests.kernel.harness import build_oopsmod, debian13_kernel, stock_kernel

    kernel = stock_kernel(release)
    if "+deb13" in release:
        kernel = debian13_kernel()
        assert kernel.release == release, (kernel.release, release)
    elif not (kernel.builddir / "Makefile").exists():
        pytest.skip(f"no kernel headers for {release} on this host")
    return build_oopsmod(kernel)
