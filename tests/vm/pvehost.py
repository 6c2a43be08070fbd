"""The real Debian guest as a VM of the fake Proxmox node (``tests/fakepve``).

* :class:`PveGuestVM` boots the cached guest image (``tests/vm/harness.py``) with the
  fake's own pstore volume -- a file-backed raw volume on a ``dir`` storage under the
  fake's ``host_root`` -- as its ``virtio-blk`` disk with serial ``pvepstore``, and with
  ``-pidfile <host_root>/var/run/qemu-server/<vmid>.pid``, so that pvepstore's
  "is QEMU running" check (pidfile + ``/proc/<pid>/cmdline`` carrying that
  ``-pidfile``, as PVE does) sees the real QEMU.  The fake's API status follows
  the real process (:meth:`start`, :meth:`wait_exit`, :meth:`kill`).
* The SSH port stays the same across restarts, so one pvepstore config file
  (``vms.<id>.ssh``: host, port, key, known_hosts with the pinned host key, no
  trust-on-first-use) serves the whole run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pvepstore.errors import GuestError
from pvepstore.guest import connect
from pvepstore.guest.transport import known_hosts_name

from .harness import CONNECT_TIMEOUT, QEMU, SERIAL, GuestVM, accel, free_port


@dataclass
class PveGuestVM(GuestVM):
    fake: object = None  # tests.fakepve.server.FakePve
    vmid: int = 101
    volume: Path | None = None  # the fake's backing file of the pstore volume
    machine: str = "pc"  # qemu-server's i440fx

    @property
    def pstore_img(self) -> Path:
        assert self.volume is not None, "attach the fake's volume first"
        return self.volume

    @property
    def pidfile(self) -> Path:
        return self.fake.paths.vm_pidfile(self.vmid)

    def ssh_config(self) -> dict:
        return {"host": "127.0.0.1", "port": self.port, "user": "root",
                "key_file": str(self.workdir / "id_ed25519"),
                "known_hosts": str(self.workdir / "known_hosts"), "trust_on_first_use": False,
                "connect_timeout": CONNECT_TIMEOUT, "command_timeout": 120}

    def pin_host_key(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        pub = self.image.host_key.read_text().split()
        (self.workdir / "known_hosts").write_text(
            f"{known_hosts_name('127.0.0.1', self.port)} {pub[0]} {pub[1]}\n")

    def _set_running(self, running: bool) -> None:
        with self.fake.lock:
            self.fake.vms[self.vmid].running = running

    def disk_args(self) -> list[str]:
        """The VM's disks after the root disk: here the fake's pstore volume."""
        # the volume file itself, as qemu-server passes a dir-storage raw volume
        return ["-drive", f"file={self.pstore_img},if=none,id=drive-pstore,format=raw,cache=writeback",
                "-device", f"virtio-blk-pci,drive=drive-pstore,id=pstore,serial={SERIAL}"]

    @property
    def qmp_socket(self) -> Path:
        # a unix socket path has 108 bytes at most: a short directory of its own, not the workdir
        if getattr(self, "_qmp_dir", None) is None:
            import tempfile

            self._qmp_dir = Path(tempfile.mkdtemp(prefix="qmp-"))
        return self._qmp_dir / f"{self.vmid}.qmp"

    def qmp(self, command: str) -> dict:
        """One QMP command (after the capabilities handshake), as qemu-server's mon_cmd sends it."""
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(self.qmp_socket))
            reader = sock.makefile("rb")
            json.loads(reader.readline())  # the greeting
            for cmd in ("qmp_capabilities", command):
                sock.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
                while True:  # events may come before the answer
                    msg = json.loads(reader.readline())
                    if "return" in msg or "error" in msg:
                        break
            return msg

    def watchdog_args(self) -> list[str]:
        """The VM config's ``watchdog:`` as qemu-server renders it (``-device <model>``, and
        ``-watchdog-action <action>`` only when the config names one)."""
        from pvepstore.analysis.hostlog import watchdog_action

        value = self.fake.vms[self.vmid].config.get("watchdog")
        if not value:
            return []
        model, action = watchdog_action(value)
        return ["-device", model] + (["-watchdog-action", action] if "action=" in value else [])

    def firmware_args(self) -> list[str]:
        return []  # SeaBIOS, QEMU's default (``bios: seabios``)

    def qemu_argv(self) -> list[str]:
        # "-name <name>,debug-threads=on" as qemu-server passes it: QEMU then names its vCPU
        # threads "CPU <n>/KVM" (here /TCG), which is how the kernel's fault lines name them
        return [QEMU, "-name", f"vm{self.vmid},debug-threads=on",
                "-accel", accel(), "-machine", self.machine, "-m", str(self.mem_mib),
                "-smp", str(self.smp), "-nographic", "-monitor", "none",
                # a QMP socket as qemu-server has (/var/run/qemu-server/<vmid>.qmp): qm reset is system_reset
                "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
                "-serial", f"file:{self.console_log}", "-pidfile", str(self.pidfile),
                *self.firmware_args(),
                "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
                "-append", "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 "
                           "systemd.show_status=0 loglevel=4",
                "-drive", f"file={self.overlay},if=none,id=root,format=qcow2,cache=unsafe",
                "-device", "virtio-blk-pci,drive=root,serial=root",
                *self.disk_args(), *self.watchdog_args(),
                "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
                "-device", "virtio-net-pci,netdev=n0"]

    def start(self) -> None:
        """Boot (same SSH port every time); the fake's VM is running from here on."""
        self.prepare()
        self.pin_host_key()
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.boots += 1
        argv = self.qemu_argv()
        (self.workdir / "qemu.argv").write_text(json.dumps(argv) + "\n")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "qemu.err", "ab"),
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.pidfile.exists():  # QEMU writes it itself, before the guest runs
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"QEMU did not write {self.pidfile}; see {self.workdir / 'qemu.err'}")
            time.sleep(0.05)
        self._set_running(True)

    def wait_exit(self, timeout: float = 120) -> int:
        code = super().wait_exit(timeout)
        self._stopped()
        return code

    def kill(self) -> None:
        super().kill()
        if self.fake is not None and self.vmid in self.fake.vms:
            self._stopped()

    def _stopped(self) -> None:
        # QEMU removes its pidfile on a clean exit; after a kill PVE's check would find a
        # stale pid without the cmdline -- remove it like a clean stop does.
        self.pidfile.unlink(missing_ok=True)
        self._set_running(False)

    def boot_id(self) -> str:
        with connect(self.target()) as g:
            return g.boot_history().boot_id

    def wait_new_boot(self, old_boot: str, timeout: float = 300) -> float:
        """After a reboot the guest started itself: wait for SSH and a new boot id."""
        t0 = time.monotonic()
        time.sleep(3)
        while True:
            self.wait_ssh(timeout=max(10.0, timeout - (time.monotonic() - t0)))
            try:
                if self.boot_id() != old_boot:
                    return time.monotonic() - t0
            except GuestError:
                pass  # an abrupt reset (a watchdog) can come while the old boot answers: ask again
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("the guest did not reboot")
            time.sleep(2)

    def poweroff(self, timeout: float = 120) -> float:
        """An orderly poweroff from inside; returns when QEMU has exited (the fake: stopped)."""
        t0 = time.monotonic()
        self.run("nohup sh -c 'sleep 1; systemctl poweroff' >/dev/null 2>&1 &\n")
        self.wait_exit(timeout)
        return time.monotonic() - t0


def copy_sparse(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


def differing_ranges(a: Path, b: Path, chunk: int = 4 << 20, limit: int = 64) -> list[tuple[int, int]]:
    """Byte ranges [start, end) where two equally long files differ (at most ``limit`` ranges)."""
    assert os.path.getsize(a) == os.path.getsize(b)
    out: list[tuple[int, int]] = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        pos = 0
        while len(out) < limit:
            x, y = fa.read(chunk), fb.read(chunk)
            if not x:
                break
            for blk in range(0, len(x), 4096) if x != y else ():
                bx, by = x[blk:blk + 4096], y[blk:blk + 4096]
                if bx == by:
                    continue
                i = 0
                while i < len(bx) and len(out) < limit:
                    if bx[i] == by[i]:
                        i += 1
                        continue
                    j = i
                    while j < len(bx) and bx[j] != by[j]:
                        j += 1
                    start, end = pos + blk + i, pos + blk + j
                    if out and out[-1][1] == start:
                        out[-1] = (out[-1][0], end)
                    else:
                        out.append((start, end))
                    i = j
            pos += len(x)
    return out
