"""`pvepstore guest ...` in-process, with the recorded-command double instead of SSH."""

from __future__ import annotations

import contextlib

import pytest

from pvepstore.cli import ExitStatus
from pvepstore.guest import Guest
from pvepstore.guest.testing import FakeTransport, Recorded, reply
from tests.conftest import run_cli

from .conftest import probe_reply


@pytest.fixture
def guest_double(monkeypatch, tmp_path):
    """Every `connect()` of the CLI gets the same FakeTransport; the config names VM 101's address."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text("vms:\n  101:\n    ssh:\n      host: 192.0.2.10\n")
    t = FakeTransport()
    targets = []

    @contextlib.contextmanager
    def fake_connect(target, transport=None):
        targets.append(target)
        yield Guest(t, target.where)

    monkeypatch.setattr("pvepstore.cli.guest.connect", fake_connect)
    return t, targets, str(cfg)


def test_probe_human(guest_double):
    t, targets, cfg = guest_double
    t.add(probe_reply(("osrelease", 'PRETTY_NAME="\x1b[2JDebian 12"\n')))
    res = run_cli("--config", cfg, "guest", "probe", "101")
    assert res.status == ExitStatus.SUCCESS, res.stderr
    assert "oops               yes" in res.stdout and "panic              no" in res.stdout
    assert "\x1b" not in res.stdout
    assert targets[0].host == "192.0.2.10" and targets[0].label == "VM 101"


def test_probe_flags_override_the_config(guest_double):
    t, targets, cfg = guest_double
    t.add(probe_reply())
    res = run_cli("--config", cfg, "guest", "probe", "101", "--host", "198.51.100.7", "--port", "2222",
                  "--user", "ops", "--json")
    assert res.status == ExitStatus.SUCCESS
    assert res.json["capabilities"]["oops"]["status"] == "yes"
    assert (targets[0].host, targets[0].port, targets[0].user) == ("198.51.100.7", 2222, "ops")


def test_no_address(guest_double):
    _, _, cfg = guest_double
    res = run_cli("--config", cfg, "guest", "probe", "102")
    assert res.status == ExitStatus.GUEST and "no address" in res.stderr


def test_apply_dry_run_changes_nothing(guest_double):
    t, _, cfg = guest_double
    t.add(probe_reply())
    res = run_cli("--config", cfg, "guest", "apply", "101", "--dry-run")
    assert res.status == ExitStatus.SUCCESS
    assert "would: create /etc/modprobe.d/pvepstore.conf" in res.stdout
    assert [c.name for c in t.calls] == ["probe"]


def test_plan_json(guest_double):
    t, _, cfg = guest_double
    t.add(probe_reply())
    res = run_cli("--config", cfg, "guest", "plan", "101", "--json")
    assert res.status == ExitStatus.SUCCESS and not res.json["empty"]


def test_verify_failure_is_a_guest_status(guest_double):
    t, _, cfg = guest_double
    t.add(probe_reply())
    res = run_cli("--config", cfg, "guest", "verify", "101")
    assert res.status == ExitStatus.GUEST and "FAIL manifest" in res.stdout


def test_records_extract_uses_safe_names(guest_double, tmp_path):
    t, _, cfg = guest_double
    t.add(Recorded("records", 0, reply(("pstorefs", "pstore"),
                                       ("rec", "dmesg-pstore_blk-0", "13", "5", b"Oops#1 Part1\n"),
                                       ("rec", "../../evil", "1", "5", b"x"))))
    out = tmp_path / "out"
    res = run_cli("--config", cfg, "guest", "records", "101", "--extract", str(out))
    assert res.status == ExitStatus.SUCCESS
    assert [p.name for p in out.iterdir()] == ["dmesg-pstore_blk-0"]
    assert "Oops#1 Part1" in res.stdout and "skipped" in res.stdout
