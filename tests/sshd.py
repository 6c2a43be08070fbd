"""A real OpenSSH ``sshd`` on loopback for transport tests (no VM needed).

It runs in the foreground (``-D -e``) with its own host key, ``authorized_keys`` and
config in a temporary directory, and lets only the current user in by key.  The test
suite runs as root in CI (tools/bootstrap.sh installs openssh-server); a non-root run
logs in as that user, which the transport then treats as needing sudo -- so callers
pass ``user`` from :attr:`RealSshd.user`.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pvepstore.guest.transport import GuestTarget, known_hosts_name

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RealSshd:
    workdir: Path
    port: int = 0
    user: str = field(default_factory=getpass.getuser)
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "RealSshd":
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        for name in ("host_ed25519", "id_ed25519"):
            if not (d / name).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
        shutil.copy(d / "id_ed25519.pub", d / "authorized_keys")
        self.port = _free_port()
        (d / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_ed25519'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
            f"AllowUsers {self.user}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nUseDNS no\n")
        pub = (d / "host_ed25519.pub").read_text().split()
        (d / "known_hosts").write_text(f"{known_hosts_name('127.0.0.1', self.port)} {pub[0]} {pub[1]}\n")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(d / "sshd.log", "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.proc.returncode}): {(d / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not listen")

    def target(self, **kw) -> GuestTarget:
        return GuestTarget(host="127.0.0.1", port=self.port, user=self.user,
                           key_file=str(self.workdir / "id_ed25519"),
                           known_hosts=str(self.workdir / "known_hosts"), **kw)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
