"""The SSH command line, targets from the configuration, the recorded-command double."""

from __future__ import annotations

import shlex

import pytest

from pvepstore.config import SshConfig
from pvepstore.errors import GuestError
from pvepstore.guest import GuestTarget, connect
from pvepstore.guest.testing import FakeTransport, Recorded, UnexpectedCommand, nothing_to_collect
from pvepstore.guest.transport import SshTransport, known_hosts_name, remote_command


class TestRemoteCommand:
    def test_arguments_are_quoted_words(self):
        hostile = "x'; rm -rf / #$(reboot)`id`\n"
        cmd = remote_command(["pvepstore", hostile], sudo=False)
        assert shlex.split(cmd) == ["sh", "-s", "--", "pvepstore", hostile]

    def test_non_root_gets_sudo_n(self):
        assert shlex.split(remote_command(["a"], sudo=True))[:2] == ["sudo", "-n"]

    def test_known_hosts_names(self):
        assert known_hosts_name("192.0.2.1", 22) == "192.0.2.1"
        assert known_hosts_name("192.0.2.1", 2222) == "[192.0.2.1]:2222"


class TestTarget:
    def test_resolved_address_wins(self):
        t = GuestTarget.from_config(SshConfig(host="10.0.0.1", port=2222, user="ops"), host="192.0.2.10")
        assert (t.host, t.port, t.user, t.needs_sudo) == ("192.0.2.10", 2222, "ops", True)

    def test_config_address(self):
        assert GuestTarget.from_config(SshConfig(host="10.0.0.1")).host == "10.0.0.1"

    def test_no_address_is_a_guest_error(self):
        with pytest.raises(GuestError) as exc:
            GuestTarget.from_config(SshConfig(), label="VM 101")
        assert "VM 101" in exc.value.message and exc.value.hint

    def test_missing_key_file(self, tmp_path):
        t = GuestTarget("127.0.0.1", key_file=str(tmp_path / "nope"), known_hosts=str(tmp_path / "kh"))
        with pytest.raises(GuestError, match="does not exist"):
            SshTransport.connect(t)

    def test_unreachable_guest(self, tmp_path):
        import socket

        key = tmp_path / "id"
        import paramiko

        paramiko.Ed25519Key  # noqa: B018 -- paramiko present
        key.write_text("not a key")
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t = GuestTarget("127.0.0.1", port=port, key_file=str(key), known_hosts=str(tmp_path / "kh"),
                        connect_timeout=2)
        with pytest.raises(GuestError) as exc:
            SshTransport.connect(t)
        assert exc.value.hint


class TestFakeTransport:
    def test_replays_in_order_and_counts(self):
        t = FakeTransport([Recorded("a", stdout=b"1"), Recorded("a", stdout=b"2")])
        assert t.run("a", "s", []).stdout == b"1"
        assert t.run("a", "s", ["x"]).stdout == b"2"
        assert t.round_trips == 2 and t.calls[1].args == ("x",)
        with pytest.raises(UnexpectedCommand):
            t.run("a", "s", [])

    def test_repeat_and_latency(self):
        t = nothing_to_collect(latency=0.001)
        for _ in range(3):
            assert t.run("records", "s", ["1", "2"]).exit == 0
        assert t.round_trips == 3

    def test_truncates_like_the_real_transport(self):
        t = FakeTransport([Recorded("a", stdout=b"x" * 100)])
        res = t.run("a", "s", [], max_out=10)
        assert res.truncated and len(res.stdout) == 10

    def test_connect_with_injected_transport_closes_it(self):
        t = FakeTransport()
        with connect(GuestTarget("vm"), transport=t) as g:
            assert g.transport is t
        assert t.closed


# -- library logging never reaches the terminal (issue 11 #19) ----------------------------------

class GarbageSshd:
    """A real socket that accepts, sends a non-SSH line and closes: paramiko's transport thread
    fails with "Error reading SSH protocol banner" and logs it with a traceback."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                conn.sendall(b"garbage \x1b[31mnot ssh\r\n")
            finally:
                conn.close()

    def close(self):
        # shutdown wakes the blocked accept(); a bare close() leaves the thread blocked on a
        # descriptor number that the next test's listening socket (the fake PVE's) reuses, and it
        # then answers that server's clients with its garbage ("TLS: wrong version number")
        import socket

        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def garbage_sshd():
    srv = GarbageSshd()
    yield srv
    srv.close()


@pytest.fixture
def bare_root_logger():
    """The logging of a plain CLI run: no handler on the root logger (pytest installs its own,
    which would hide what Python's last-resort handler prints to stderr)."""
    import logging

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        yield
    finally:
        root.handlers = saved


def garbage_target(tmp_path, port) -> GuestTarget:
    key = tmp_path / "id"
    key.write_text("unused: the handshake fails before authentication")
    return GuestTarget("127.0.0.1", port=port, key_file=str(key), known_hosts=str(tmp_path / "kh"),
                       connect_timeout=5, label="VM 100")


def test_a_broken_ssh_banner_is_one_guest_error_and_no_traceback(tmp_path, garbage_sshd, bare_root_logger,
                                                                 capfd):
    import logging

    seen = []

    class Spy(logging.Handler):
        def emit(self, record):
            seen.append(record)
    spy = Spy(logging.DEBUG)
    logging.getLogger("pvepstore.lib").addHandler(spy)
    logging.getLogger("pvepstore.lib").setLevel(logging.DEBUG)
    # The logging state of a plain CLI run, whatever other tests left: tests/vm/harness.py (imported
    # when the whole suite is collected) sets paramiko's level to CRITICAL, and a logging config
    # may have disabled loggers that existed then.
    touched = [logging.getLogger(n) for n in ("paramiko", "paramiko.transport", "pvepstore", "pvepstore.lib")]
    saved = [(lg, lg.level, lg.disabled) for lg in touched]
    for lg in touched[:2]:
        lg.setLevel(logging.NOTSET)
    for lg in touched:
        lg.disabled = False
    try:
        for _ in range(3):
            with pytest.raises(GuestError) as exc:
                SshTransport.connect(garbage_target(tmp_path, garbage_sshd.port))
            assert "\n" not in exc.value.message and "\x1b" not in exc.value.message and exc.value.hint
        import time
        # paramiko's transport threads log after the client gave up: wait for them (on a
        # loaded machine that takes longer than any fixed pause), bounded.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                "Error reading SSH protocol banner" in r.getMessage() for r in seen):
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        logging.getLogger("pvepstore.lib").removeHandler(spy)
        for lg, level, disabled in saved:
            lg.setLevel(level)
            lg.disabled = disabled
    out, err = capfd.readouterr()
    assert garbage_sshd.accepted == 3
    assert "Traceback" not in err and "Exception (client)" not in err and "paramiko" not in err, err
    # what paramiko said is kept, one line per event at DEBUG, without the traceback frames
    lines = [r.getMessage() for r in seen]
    assert any("Error reading SSH protocol banner" in m for m in lines), lines
    assert all(r.levelno == logging.DEBUG and "\n" not in r.getMessage() for r in seen)
    assert not any(m.split(": ", 1)[-1].startswith(("Traceback", " ")) for m in lines)


@pytest.fixture
def real_sshd(tmp_path):
    from tests.sshd import RealSshd

    sshd = RealSshd(tmp_path / "sshd").start()
    yield sshd
    sshd.stop()


class TestRealSshd:
    """The paramiko transport against a real OpenSSH sshd on loopback."""

    def test_a_command_runs_and_its_output_and_status_come_back(self, real_sshd):
        with connect(real_sshd.target()) as g:
            res = g.transport.run("t", 'printf "%s|" "$@"; echo err >&2; exit 3\n', ["a b", "$(x)"])
        assert (res.exit, res.stdout, res.stderr) == (3, b"a b|$(x)|", b"err\n")

    def test_a_connection_that_dies_mid_command_fails_at_once_not_at_the_timeout(self, real_sshd):
        # The session's sshd processes (the one running the script and its privileged monitor)
        # die as when a guest resets: paramiko closes the channel without an EOF.
        import time

        script = "kill -9 $PPID $(ps -o ppid= -p $PPID); sleep 30\n"
        with connect(real_sshd.target()) as g:
            t0 = time.monotonic()
            with pytest.raises(GuestError, match="connection closed during command killer") as exc:
                g.transport.run("killer", script, [], timeout=25)
        assert time.monotonic() - t0 < 10 and "reset" in exc.value.hint
