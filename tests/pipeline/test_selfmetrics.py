"""pvepstore's own health metrics after a sweep, read back by prometheus_client's text parser."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import pvepstore
from pvepstore.backends.capture import Event
from pvepstore.cli.status import ExitStatus
from pvepstore.pipeline.collect import VmResult, VmStatus
from pvepstore.pipeline.outbox import DeliveryReport
from pvepstore.pipeline.selfmetrics import update_state
from pvepstore.pipeline.sweep import SweepResult
from tests.conftest import run_cli
from tests.pipeline.test_sweep_fakepve import stopped_vm_with_oopses  # noqa: F401 (a fixture)


def samples(path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def one(got: dict, name: str, **labels) -> float:
    [value] = [v for lab, v in got[name] if all(lab.get(k) == w for k, w in labels.items())]
    return value


def test_a_sweep_writes_what_says_whether_pvepstore_works(stopped_vm_with_oopses, tmp_path):  # noqa: F811
    fake, vol, fx = stopped_vm_with_oopses
    prom = tmp_path / "textfile" / "pvepstore-self.prom"
    prom.parent.mkdir()
    config = fake.config_file(collect={"metrics_file": str(prom)},
                              sinks=[{"type": "webhook", "url": "http://127.0.0.1:9/down", "timeout": 2}])
    r = run_cli("--config", str(config), "sweep", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    got = samples(prom)
    assert one(got, "pvepstore_info", version=pvepstore.__version__) == 1
    assert one(got, "pvepstore_sweep_vms", result="collected") == 1
    assert one(got, "pvepstore_sweep_vms", result="failed") == 0
    last_run = one(got, "pvepstore_sweep_last_run_timestamp_seconds")
    assert one(got, "pvepstore_sweep_last_success_timestamp_seconds") == last_run
    # the incident waits in the outbox for the sink that is down
    assert one(got, "pvepstore_outbox_pending_events") == 1
    assert 0 <= one(got, "pvepstore_outbox_oldest_pending_age_seconds") < 60
    assert one(got, "pvepstore_sink_up", sink="webhook") == 0
    # VM 101 (pstore_blk): an Oops yes, a panic no -- the status matrix, by prometheus-pve-exporter's id
    cells = {lab["event"]: v for lab, v in got["pvepstore_capture"] if lab["id"] == "qemu/101"}
    assert set(cells) == {e.value for e in Event} and cells["oops"] == 1 and cells["panic"] == 0
    assert {lab["id"] for lab, _ in got["pvepstore_capture"]} == {"qemu/101"}  # in scope only
    r = run_cli("--config", str(config), "status", "--json")
    [row] = r.json["vms"]
    assert {c["event"]: int(c["captured"]) for c in row["capture"]} == cells


def test_the_last_success_stays_when_a_vm_fails_and_sinks_keep_their_last_answer(tmp_path):
    path = tmp_path / "metrics.json"
    ok = SweepResult([VmResult(101, VmStatus.NOTHING)], DeliveryReport(delivered=[("e1", "hook")]))
    assert update_state(path, ok, 1000.0).last_success == 1000.0
    bad = SweepResult([VmResult(101, VmStatus.FAILED, "x")], DeliveryReport(failed={"mail": "down"}))
    state = update_state(path, bad, 2000.0)
    assert state.last_success == 1000.0 and state.sinks == {"hook": 1, "mail": 0}


def test_an_unwritable_metrics_file_does_not_fail_the_sweep(stopped_vm_with_oopses, tmp_path):  # noqa: F811
    fake, vol, fx = stopped_vm_with_oopses
    (tmp_path / "a-file").write_text("")
    config = fake.config_file(collect={"metrics_file": str(tmp_path / "a-file" / "x.prom")})
    r = run_cli("--config", str(config), "sweep")
    assert r.status == ExitStatus.SUCCESS and "cannot write" in r.stderr and "x.prom" in r.stderr
