"""``Guest.write_pmsg``: the reason of a planned reboot in the guest's own pstore (pmsg), where it exists."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from pvepstore.guest import scripts
from pvepstore.guest.testing import Recorded, reply

from .conftest import fake_guest

HOSTILE = "kernel upgrade; $(touch /tmp/pwned) `id` \"quoted\" 'single'\nsecond line"


@pytest.mark.parametrize("status", ["written", "absent", "failed"])
def test_one_command_with_the_text_as_its_only_argument(status):
    g, t = fake_guest(Recorded("pmsg", 0, reply(("pmsg", status))))
    assert g.write_pmsg(HOSTILE) == status
    (call,) = t.calls
    assert call.name == "pmsg" and call.args == (HOSTILE,)
    assert call.script_sha256 == hashlib.sha256(scripts.PMSG.encode()).hexdigest()
    assert t.round_trips == 1


def test_an_unexpected_answer_is_a_failure_not_a_crash():
    g, _ = fake_guest(Recorded("pmsg", 0, reply(("pmsg", "\x1b[31mwat"))))
    assert g.write_pmsg("x") == "failed"
    g, _ = fake_guest(Recorded("pmsg", 0, reply()))
    assert g.write_pmsg("x") == "failed"


def test_the_script_uses_its_argument_only_double_quoted():
    body = scripts.PMSG[len(scripts.PRELUDE):]
    assert '"$1"' in body and "$1" not in body.replace('"$1"', "")
    assert "eval" not in body


@pytest.mark.skipif(os.geteuid() != 0, reason="the guest scripts insist on root")
@pytest.mark.skipif(os.path.exists("/dev/pmsg0"), reason="this host has a pmsg device: not touching it")
def test_the_script_skips_silently_without_a_pmsg_device(tmp_path):
    # run for real with sh, as the transport does: `sh -s -- ARGS`, script on stdin
    marker = tmp_path / "pwned"
    arg = HOSTILE.replace("/tmp/pwned", str(marker))
    proc = subprocess.run(["sh", "-s", "--", arg], input=scripts.PMSG.encode(), capture_output=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stderr == b""
    from pvepstore.guest import wire

    assert wire.parse(proc.stdout).text("pmsg") == "absent"
    assert not marker.exists()
