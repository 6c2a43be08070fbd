"""Running fixed shell scripts on a guest: the SSH transport and its contract.

Every remote command pvepstore runs is one of the fixed POSIX ``sh`` scripts in
:mod:`pvepstore.guest.scripts`.  The script travels on **stdin** to
``sh -s -- ARG...``; its arguments are positional parameters, each passed
through :func:`shlex.quote`.  No guest- or config-supplied string is ever
spliced into shell text.  Non-root users get ``sudo -n`` in front (password-less
sudo is required; a password prompt would hang).

A :class:`Transport` is anything with ``run()`` and ``close()``: the paramiko
:class:`SshTransport` here, or the recorded-command doubles in
:mod:`pvepstore.guest.testing`.  ``round_trips`` counts commands: one command is
one SSH channel (open + exec + output) on the already open connection.

Output is bounded: stdout beyond ``max_out`` bytes and stderr beyond
``MAX_ERR`` are dropped and the result says ``truncated``.  Callers treat
whatever comes back as untrusted.
"""

from __future__ import annotations

import os
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from ..errors import GuestError

MAX_OUT = 8 << 20  # default cap of a command's stdout
MAX_ERR = 16 << 10  # cap of stderr (only used in messages)
KEEPALIVE_S = 5  # an SSH keepalive on idle connections: see SshTransport.connect


@dataclass(frozen=True)
class CommandResult:
    exit: int
    stdout: bytes
    stderr: bytes = b""
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit == 0 and not self.truncated

    def err_line(self, limit: int = 200) -> str:
        """The last non-empty stderr line, made terminal-safe and short (for messages)."""
        from ..text import terminal_safe

        lines = [ln for ln in self.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        return terminal_safe(lines[-1][:limit]) if lines else ""


class Transport(Protocol):
    """What :class:`pvepstore.guest.Guest` needs from a connection."""

    round_trips: int

    def run(self, name: str, script: str, args: Sequence[str], *, timeout: float | None = None,
            max_out: int = MAX_OUT) -> CommandResult: ...

    def close(self) -> None: ...


def remote_command(args: Sequence[str], *, sudo: bool) -> str:
    """The exec line sent to sshd: ``[sudo -n] sh -s -- 'arg' ...`` (script on stdin)."""
    words = (["sudo", "-n"] if sudo else []) + ["sh", "-s", "--"] + [str(a) for a in args]
    return " ".join(shlex.quote(w) for w in words)


@dataclass(frozen=True)
class GuestTarget:
    """Where and how to reach one guest (an :class:`~pvepstore.config.SshConfig` plus an address)."""

    host: str
    port: int = 22
    user: str = "root"
    key_file: str = "/etc/pvepstore/id_ed25519"
    known_hosts: str = "/etc/pvepstore/known_hosts"
    trust_on_first_use: bool = False
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    label: str | None = None  # e.g. "VM 101" (messages only)

    @classmethod
    def from_config(cls, ssh, host: str | None = None, *, label: str | None = None) -> "GuestTarget":
        """From an SshConfig; ``host`` (the resolved address) wins over ``ssh.host``."""
        address = host or ssh.host
        if not address:
            raise GuestError(f"no address for {label or 'the guest'}",
                             hint="pass --host, set vms.<id>.ssh.host, or let provision resolve it")
        return cls(host=address, port=ssh.port, user=ssh.user, key_file=ssh.key_file,
                   known_hosts=ssh.known_hosts, trust_on_first_use=ssh.trust_on_first_use,
                   connect_timeout=ssh.connect_timeout, command_timeout=ssh.command_timeout,
                   label=label)

    @property
    def where(self) -> str:
        addr = f"{self.user}@{self.host}:{self.port}"
        return f"{self.label} ({addr})" if self.label else addr

    @property
    def needs_sudo(self) -> bool:
        return self.user != "root"


def known_hosts_name(host: str, port: int) -> str:
    """The host name as OpenSSH and paramiko write it in known_hosts."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass
class SshTransport:
    """One paramiko SSH connection; commands run as channels on it."""

    target: GuestTarget
    round_trips: int = 0
    _client: object = field(default=None, repr=False)

    @classmethod
    def connect(cls, target: GuestTarget) -> "SshTransport":
        import paramiko

        from ..liblog import quiet_library_logs

        quiet_library_logs()  # paramiko's transport thread would print a traceback per failed attempt

        key_path = Path(target.key_file)
        if not key_path.is_file():
            raise GuestError(f"{target.where}: SSH key {key_path} does not exist",
                             hint="create it with ssh-keygen -t ed25519 -N '' -f " + str(key_path))
        client = paramiko.SSHClient()
        kh = Path(target.known_hosts)
        if kh.is_file():
            try:
                client.load_host_keys(str(kh))
            except (OSError, paramiko.SSHException) as exc:
                raise GuestError(f"cannot read known_hosts file {kh}: {exc}") from None
        if target.trust_on_first_use:
            client.set_missing_host_key_policy(_TofuPolicy(kh))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(target.host, port=target.port, username=target.user,
                           key_filename=str(key_path), timeout=target.connect_timeout,
                           banner_timeout=target.connect_timeout, auth_timeout=target.connect_timeout,
                           allow_agent=False, look_for_keys=False)
        except paramiko.BadHostKeyException:
            client.close()
            raise GuestError(f"{target.where}: the host key does NOT match the one in {kh}",
                             hint="the guest was reinstalled, or someone is in the middle; check, "
                                  "then remove the old line from that file") from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise GuestError(f"{target.where}: unknown host key (not in {kh})",
                                 hint="add the guest's key to that file (ssh-keyscan, checked "
                                      "out of band), or set ssh.trust_on_first_use for this VM") from None
            if isinstance(exc, paramiko.AuthenticationException):
                raise GuestError(f"{target.where}: authentication with {key_path} refused",
                                 hint="install the public key in the guest user's authorized_keys") from None
            raise GuestError(f"{target.where}: SSH failed: {_said(exc)}",
                             hint="is the guest's sshd up (it may still be booting)?") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise GuestError(f"{target.where}: connection timed out after {target.connect_timeout:g} s",
                             hint="is the guest running and its sshd reachable from this host?") from None
        except OSError as exc:
            client.close()
            raise GuestError(f"{target.where}: cannot connect: {exc.strerror or exc}",
                             hint="is the guest running and its sshd reachable from this host?") from None
        # A guest that resets mid-command never closes its end: with traffic on the idle connection
        # its new kernel answers with a reset (directly, or through QEMU's user-mode network), so
        # the command fails within seconds instead of at the command timeout.
        client.get_transport().set_keepalive(KEEPALIVE_S)
        return cls(target=target, _client=client)

    def run(self, name: str, script: str, args: Sequence[str], *, timeout: float | None = None,
            max_out: int = MAX_OUT) -> CommandResult:
        import paramiko

        timeout = timeout or self.target.command_timeout
        command = remote_command(args, sudo=self.target.needs_sudo)
        self.round_trips += 1
        deadline = time.monotonic() + timeout
        try:
            chan = self._client.get_transport().open_session(timeout=self.target.connect_timeout)
            chan.settimeout(1.0)
            chan.exec_command(command)
            chan.sendall(script.encode())
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            truncated = False
            while True:
                if time.monotonic() > deadline:
                    chan.close()
                    raise GuestError(f"{self.target.where}: command {name} timed out after {timeout:g} s")
                progressed = False
                if chan.recv_ready():
                    chunk = chan.recv(65536)
                    progressed = True
                    room = max_out - len(out)
                    if len(chunk) > room:
                        out += chunk[:max(room, 0)]
                        truncated = True
                        chan.close()  # stop reading a guest that talks too much
                        break
                    out += chunk
                if chan.recv_stderr_ready():
                    chunk = chan.recv_stderr(65536)
                    progressed = True
                    err += chunk[:max(MAX_ERR - len(err), 0)]
                # done when the guest closed its output (EOF) *and* sent the exit status
                # (sshd may send the status before the last output is drained)
                if (chan.exit_status_ready() and chan.eof_received and not chan.recv_ready()
                        and not chan.recv_stderr_ready()):
                    break
                # paramiko closes the channels of a dead connection without an EOF (its status
                # event fires, with no status): fail now, not at the deadline
                if chan.closed and not chan.eof_received and not chan.recv_ready():
                    raise GuestError(f"{self.target.where}: the connection closed during command {name}",
                                     hint="the guest reset or rebooted, or its sshd stopped")
                if not progressed:
                    time.sleep(0.005)
            status = -1 if truncated else chan.recv_exit_status()
            chan.close()
        except GuestError:
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise GuestError(f"{self.target.where}: command {name} failed: {_said(exc)}",
                             hint="the SSH connection broke; is the guest still running?") from None
        result = CommandResult(status, bytes(out), bytes(err), truncated)
        if self.target.needs_sudo and result.exit == 1 and b"sudo:" in result.stderr[:200]:
            raise GuestError(f"{self.target.where}: sudo refused: {result.err_line()}",
                             hint=f"give {self.target.user} password-less sudo (NOPASSWD) or use root")
        return result

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _said(exc: BaseException) -> str:
    """An exception's text as one bounded, terminal-safe line (paramiko quotes what the peer sent)."""
    from ..text import terminal_safe

    text = " ".join(str(exc)[:800].split())
    return terminal_safe(text[:200]) or type(exc).__name__


class _TofuPolicy:
    """Trust-on-first-use, only when the operator opted in: remember the key in our file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client, hostname, key) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(line)
        client.get_host_keys().add(hostname, key.get_name(), key)
