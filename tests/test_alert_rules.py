"""The shipped Prometheus alert rules: promtool's own check and unit tests (Debian's promtool), and
without promtool a structural check; every metric a rule reads is one pvepstore writes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.promtool import promtool

RULES = Path(__file__).resolve().parents[1] / "contrib" / "prometheus"
WRITTEN = {"pvepstore_incidents_total", "pvepstore_sweep_last_run_timestamp_seconds",
           "pvepstore_sweep_last_success_timestamp_seconds", "pvepstore_sweep_duration_seconds",
           "pvepstore_sweep_vms", "pvepstore_outbox_pending_events", "pvepstore_outbox_oldest_pending_age_seconds",
           "pvepstore_sink_up", "pvepstore_capture", "pvepstore_info"}


def test_the_rules_read_only_metrics_pvepstore_writes():
    from pvepstore.pipeline import selfmetrics, sinks

    source = Path(selfmetrics.__file__).read_text() + Path(sinks.__file__).read_text()
    assert WRITTEN == set(re.findall(r'"(pvepstore_[a-z_]+)"', source)) | {"pvepstore_incidents_total"}
    doc = yaml.safe_load((RULES / "pvepstore.rules.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"PvepstoreGuestCrashed", "PvepstoreSweepsStopped",
                                           "PvepstoreOutboxBacklog", "PvepstoreCannotCapturePanics"}
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"} and r["labels"]["severity"]
        assert set(re.findall(r"pvepstore_[a-z_]+", r["expr"])) <= WRITTEN, r["alert"]
        assert r["expr"].count("(") == r["expr"].count(")") and r["expr"].count("{") == r["expr"].count("}")


def test_promtool_checks_and_unit_tests_the_rules():
    tool = promtool()
    if tool is None:  # the structural test above still ran
        import pytest

        pytest.skip("promtool not available (Debian's prometheus package could not be fetched)")
    for args in (["check", "rules", "pvepstore.rules.yml"], ["test", "rules", "pvepstore.rules.test.yml"]):
        res = subprocess.run([str(tool), *args], cwd=RULES, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "SUCCESS" in res.stdout
