"""The pve-notify sink against a stand-in PVE::Notify (the real one's signatures, recording calls),
the fallback mail through a stand-in sendmail, and the templates rendered by a real Handlebars
implementation (pybars3; proxmox-notify uses handlebars-rust with the same syntax)."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from pvepstore.pipeline.outbox import Outbox
from pvepstore.pipeline.pvenotify import (OVERRIDE_TEMPLATES, TEMPLATE_FILES, VENDOR_TEMPLATES, PveNotifySink,
                                          Route, body_text, route, subject_line, template_data, template_text)
from pvepstore.pipeline.sinks import SinkOrigin, build_sinks, configured_sinks
from tests.conftest import run_cli
from tests.pipeline.test_sweep_fakepve import stopped_vm_with_oopses  # noqa: F401 (a fixture)

STANDIN = Path(__file__).resolve().parents[1] / "fakepve" / "perl" / "PVE" / "Notify.pm"


def pve_node(root: Path, *, common_data: bool = True, vendor_dir: bool = True) -> Path:
    """A host root with PVE's notification system as far as pvepstore looks at it."""
    pm = root / "usr/share/perl5/PVE/Notify.pm"
    pm.parent.mkdir(parents=True, exist_ok=True)
    text = STANDIN.read_text()
    if not common_data:  # PVE < 8.4
        text = "\n".join(ln for ln in text.splitlines() if "# COMMON-DATA" not in ln) + "\n"
    pm.write_text(text)
    if vendor_dir:  # PVE >= 8.2.3 ships its named templates here
        (root / VENDOR_TEMPLATES).mkdir(parents=True, exist_ok=True)
        (root / VENDOR_TEMPLATES / "vzdump-subject.txt.hbs").write_text("vzdump backup status ({{fqdn}})\n")
    (root / "var/log").mkdir(parents=True, exist_ok=True)
    return root


def calls(root: Path) -> list[dict]:
    log = root / "var/log/pve-notify.jsonl"
    return [json.loads(ln) for ln in log.read_text().splitlines()] if log.exists() else []


def sendmail(root: Path, exit_status: int = 0) -> Path:
    path = root / "usr/sbin/sendmail"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{root}/sendmail.argv"\ncat > "{root}/sendmail.msg"\n'
                    f"exit {exit_status}\n")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def event():
    r = run_cli("parse", "--sample", "--report")
    assert r.status == 0
    ev = json.loads(r.stdout)
    ev["data"]["vm"] = {"vmid": 101, "node": "pve1", "name": "web1"}
    return ev


def hostile(event: dict) -> dict:
    ev = json.loads(json.dumps(event))
    ev["data"]["verdict"]["summary"] = "BUG\x1b[31m: {{#each x}}{{/each}} \u202eevil\r\nSubject: injected"
    ev["data"]["vm"]["name"] = "n\x07ame\n"
    return ev


def test_route_follows_what_the_node_has(tmp_path):
    assert route(tmp_path) is Route.NONE
    sendmail(tmp_path)
    assert route(tmp_path) is Route.MAIL
    pve_node(tmp_path, vendor_dir=False)  # PVE 8.1 - 8.2.2: PVE::Notify without named templates
    assert route(tmp_path) is Route.MAIL
    (tmp_path / VENDOR_TEMPLATES).mkdir(parents=True)  # only pvepstore's packaged copies: still 8.2.2
    (tmp_path / VENDOR_TEMPLATES / TEMPLATE_FILES[0]).write_text("x\n")
    assert route(tmp_path) is Route.MAIL
    pve_node(tmp_path)
    assert route(tmp_path) is Route.NOTIFY


@pytest.mark.parametrize("common_data", [True, False], ids=["pve8.4+", "pve8.2.3-8.3"])
def test_an_incident_is_one_notify_call_with_the_real_signature(tmp_path, event, common_data):
    root = pve_node(tmp_path, common_data=common_data)
    PveNotifySink(host_root=str(root)).send(event)
    [call] = calls(root)
    assert (call["severity"], call["template"], call["config"]) == ("error", "pvepstore-incident", 0)
    assert call["fields"]["type"] == "pvepstore" and call["fields"]["vmid"] == "101"
    assert call["fields"]["verdict"] == "kernel_oops" and "." not in call["fields"]["hostname"]
    data = call["data"]
    assert data["vmid"] == "101" and data["vm-name"] == "web1" and data["incident-id"] == event["id"]
    assert data["summary"].startswith("BUG: unable to handle kernel NULL pointer dereference")
    # PVE's own common data wins where the node has it; before 8.4 pvepstore fills it in
    assert (data["hostname"] == "standin") == common_data and data["fqdn"]
    # the templates went into the override directory (nothing there, nothing in the vendor's)
    for name in TEMPLATE_FILES:
        assert (root / OVERRIDE_TEMPLATES / name).read_text() == template_text(name)


def test_templates_are_installed_only_where_no_copy_exists(tmp_path, event):
    root = pve_node(tmp_path)
    subject, body = (root / OVERRIDE_TEMPLATES / n for n in TEMPLATE_FILES)
    subject.parent.mkdir(parents=True)
    subject.write_text("admin's own subject {{vmid}}\n")
    (root / VENDOR_TEMPLATES / TEMPLATE_FILES[1]).write_text("packaged body\n")
    assert PveNotifySink(host_root=str(root)).ensure_templates() == []
    assert subject.read_text() == "admin's own subject {{vmid}}\n" and not body.exists()


def test_a_notify_failure_is_one_error_and_the_outbox_retries(tmp_path, event):
    root = pve_node(tmp_path)
    sink = PveNotifySink(host_root=str(root))
    sink.ensure_templates = lambda: []  # no template anywhere: the stand-in's die() reaches pvepstore
    now = [1000.0]
    box = Outbox(tmp_path / "outbox", clock=lambda: now[0])
    assert box.enqueue(event, ["pve-notify"])
    res = box.deliver([sink])
    assert res.pending == 1 and res.failed["pve-notify"].startswith("RuntimeError: PVE::Notify failed: failed to "
                                                                     "render notification template")
    del sink.ensure_templates  # templates installed at the next try
    now[0] += 3600
    assert box.deliver([sink]).pending == 0 and len(calls(root)) == 1
    assert not box.enqueue(event, ["pve-notify"])  # the same incident is not spooled twice
    assert box.deliver([sink]).pending == 0 and len(calls(root)) == 1


def test_a_missing_template_says_where_pve_before_8_4_reads_them(tmp_path, event):
    root = pve_node(tmp_path)
    sink = PveNotifySink(host_root=str(root))
    sink.ensure_templates = lambda: []  # as on PVE 8.2.3-8.3: the override copy is not read
    with pytest.raises(RuntimeError, match=r"failed to render.*PVE before 8.4 reads templates only from "
                                           r"/usr/share/pve-manager/templates/default"):
        sink.send(event)


def test_guest_text_is_data_not_template_source(tmp_path, event):
    root = pve_node(tmp_path)
    PveNotifySink(host_root=str(root)).send(hostile(event))
    data = calls(root)[0]["data"]
    assert "\x1b" not in data["summary"] and "\u202e" not in data["summary"] and "\n" not in data["summary"]
    assert "{{#each x}}" in data["summary"]  # handed over as a value: rendered literally
    assert data["vm-name"] == "n\\x07ame"  # made visible, as on a terminal


def test_without_named_templates_root_gets_a_mail(tmp_path, event):
    root = pve_node(tmp_path, vendor_dir=False)
    sendmail(root)
    PveNotifySink(host_root=str(root)).send(hostile(event))
    assert calls(root) == []
    assert (root / "sendmail.argv").read_text().split() == ["-i", "--", "root"]
    import email
    from email.policy import default

    raw = (root / "sendmail.msg").read_bytes()
    msg = email.message_from_bytes(raw, policy=default)
    # the guest's CR LF did not start a header of its own: one Subject, the text inside it
    assert sorted(msg.keys()) == ["Content-Transfer-Encoding", "Content-Type", "MIME-Version", "Subject", "To",
                                  "X-Pvepstore-Incident"]
    assert "Subject: injected" in msg["Subject"] and "\x1b" not in msg["Subject"]
    assert (msg["To"], msg["X-Pvepstore-Incident"]) == ("root", event["id"])
    assert msg.get_content().replace("\r\n", "\n") == body_text(template_data(hostile(event)))


def test_sendmail_failing_is_an_error(tmp_path, event):
    sendmail(tmp_path, exit_status=75)
    with pytest.raises(RuntimeError, match="sendmail root failed"):
        PveNotifySink(host_root=str(tmp_path)).send(event)


def test_templates_render_as_the_fallback_text(event):
    pybars = pytest.importorskip("pybars")
    compiler = pybars.Compiler()
    for ev in (event, hostile(event)):
        data = template_data(ev)
        subject = compiler.compile(template_text(TEMPLATE_FILES[0]))(data)
        body = compiler.compile(template_text(TEMPLATE_FILES[1]))(data)
        assert subject.replace("\n", " ").strip() == subject_line(data)
        assert body == body_text(data)
    assert "{{#each x}}" in body  # the guest's braces stay text
    # with a crash line and more evidence than the body shows
    data = {**template_data(event), "crash": "", "evidence": ["a: b"] * 12, "more-evidence": 3}
    assert compiler.compile(template_text(TEMPLATE_FILES[1]))(data) == body_text(data)
    assert "... and 3 more" in body_text(data) and "Crash:" not in body_text(data)


def test_the_default_sink_is_pve_notify_on_a_pve_node(tmp_path):
    assert configured_sinks(None, str(tmp_path)) == ([], SinkOrigin.NONE)
    pve_node(tmp_path)
    sinks, origin = configured_sinks(None, str(tmp_path))
    assert origin is SinkOrigin.DEFAULT and [s.name for s in sinks] == ["pve-notify"]
    assert sinks[0].host_root == str(tmp_path)
    assert configured_sinks((), str(tmp_path)) == ([], SinkOrigin.CONFIGURED)  # sinks: [] means none
    [s] = build_sinks([{"type": "pve-notify", "timeout": 5}], host_root=str(tmp_path))
    assert (s.name, s.timeout, s.host_root) == ("pve-notify", 5, str(tmp_path))


def test_status_says_where_incidents_go(fakepve):
    fakepve.add_vm(100, {"tags": "pvepstore"})
    r = run_cli("--config", str(fakepve.config_file()), "status")
    assert r.status == 0 and "incidents go to: the archive only (no sinks configured" in r.stdout
    pve_node(Path(fakepve.host_root))
    r = run_cli("--config", str(fakepve.config_file()), "status", "--json")
    assert r.json["sinks"] == {"origin": "default", "names": ["pve-notify"]}
    r = run_cli("--config", str(fakepve.config_file()), "status")
    assert "incidents go to: pve-notify (the default" in r.stdout
    shutil.rmtree(Path(fakepve.host_root) / "usr/share/perl5")


def test_notify_test_sends_one_valid_test_event_to_every_sink_and_says_what_each_answered(tmp_path, fakepve):
    import jsonschema

    from pvepstore.analysis.report import load_schema
    from tests.pipeline.receiver import Receiver

    pve_node(Path(fakepve.host_root))
    prom = tmp_path / "prom" / "pvepstore.prom"
    prom.parent.mkdir()
    with Receiver() as rx:
        sinks = [{"type": "pve-notify"}, {"type": "webhook", "url": rx.url + "/hook"},
                 {"type": "textfile", "path": str(prom)}, {"type": "webhook", "url": "http://127.0.0.1:9/x",
                                                            "name": "down", "timeout": 2}]
        r = run_cli("--config", str(fakepve.config_file(sinks=sinks)), "notify-test")
        assert r.status == 8, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith("pve-notify: ok: accepted (PVE::Notify, template pvepstore-incident")
        assert lines[1] == "webhook: ok: accepted" and lines[2].startswith("textfile: ok: would write ")
        assert lines[3].startswith("down: FAILED: ")
        [(_, _, ev)] = rx.requests
    jsonschema.validate(ev, load_schema())
    assert ev["source"] == "pvepstore://pve1/notify-test" and ev["data"]["verdict"]["reason_code"] == "notify_test"
    [call] = calls(Path(fakepve.host_root))
    assert call["severity"] == "info" and "test notification" in call["data"]["summary"]
    assert not prom.exists() and not (fakepve.state_dir / "outbox").exists()
    r = run_cli("--config", str(fakepve.config_file(sinks=[])), "notify-test")
    assert r.status == 4 and "no sinks to test (sinks: [] in the config)" in r.stderr


def test_a_sweep_on_a_pve_node_with_no_sinks_configured_notifies_through_pve(stopped_vm_with_oopses):  # noqa: F811
    fake, vol, fx = stopped_vm_with_oopses
    root = pve_node(Path(fake.host_root))
    config = fake.config_file()
    assert "sinks" not in fake.config_data()
    r = run_cli("--config", str(config), "sweep", "--json")
    assert r.status == 0, r.stderr
    assert r.json["delivery"] == {"delivered": 1, "failed": {}, "deferred": [], "pending": 0}
    [call] = calls(root)
    assert (call["severity"], call["fields"]["vmid"], call["fields"]["verdict"]) == ("error", "101", "kernel_oops")
    assert run_cli("--config", str(config), "sweep", "--json").json["vms"][0]["status"] == "nothing"
    assert len(calls(root)) == 1  # once


def test_incidents_below_min_severity_are_archived_not_sent(tmp_path, event):
    root = pve_node(tmp_path)
    orderly = json.loads(json.dumps(event))
    orderly["data"]["verdict"].update(kind="orderly_reboot", severity="info")
    box = Outbox(tmp_path / "outbox")
    assert box.enqueue(orderly, ["pve-notify"])
    assert box.deliver([PveNotifySink(host_root=str(root))]).pending == 0 and calls(root) == []
    PveNotifySink(host_root=str(root), min_severity="info").send(orderly)
    assert [c["severity"] for c in calls(root)] == ["info"]
    # notify-test goes past the filter (its event is info)
    from pvepstore.pipeline.sinktest import test_event, test_sinks

    [answer] = test_sinks([PveNotifySink(host_root=str(root))], test_event("pve1"))
    assert answer.ok and len(calls(root)) == 2
    [s] = build_sinks([{"type": "pve-notify", "min_severity": "error"}], host_root=str(root))
    assert not s.wants(event | {"data": {**event["data"], "verdict": {"severity": "warning"}}})
