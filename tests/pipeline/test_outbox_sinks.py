"""Outbox ordering/retry and the four sinks against real local endpoints."""

from __future__ import annotations

import socket

import pytest

from pvepstore.errors import ConfigError
from pvepstore.pipeline.outbox import Outbox
from pvepstore.pipeline.sinks import (MESSAGE_ID, AlertmanagerSink, JournalSink, TextfileSink, WebhookSink,
                                      build_sinks)
from tests.pipeline.receiver import Receiver


def event(n: int, vmid: int = 101, kind: str = "kernel_oops") -> dict:
    return {"specversion": "1.0", "id": f"{n:064x}", "source": f"pvepstore://pve1/qemu/{vmid}",
            "type": f"io.pvepstore.incident.{kind}.v1", "time": "2026-11-26T04:08:47Z",
            "data": {"vm": {"vmid": vmid, "node": "pve1"},
                     "verdict": {"kind": kind, "severity": "error", "summary": f"incident {n}",
                                 "reason_code": kind}}}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_manager_down_for_a_day_gets_everything_in_order_once(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "outbox", clock=clock)
    with Receiver() as rx:
        sink = WebhookSink(url=rx.url + "/hook", headers={"Authorization": "Bearer s3cret"})
        rx.down = True
        for n in range(1, 6):
            assert box.enqueue(event(n), ["webhook"])
            report = box.deliver([sink])
            assert "webhook" in report.failed or "webhook" in report.deferred
            clock.now += 3 * 3600
        assert not box.enqueue(event(3), ["webhook"])  # idempotent spool
        rx.down = False
        clock.now += 24 * 3600
        report = box.deliver([sink])
        assert rx.ids() == [f"{n:064x}" for n in range(1, 6)]
        assert report.pending == 0 and box.pending() == []
        box.deliver([sink])
        assert len(rx.ids()) == 5
        assert rx.requests[0][1]["Content-Type"] == "application/cloudevents+json"
        assert rx.requests[0][1]["Authorization"] == "Bearer s3cret"
        assert not box.enqueue(event(1), ["webhook"])  # delivered ids are remembered


def test_backoff_defers_retries_and_a_failing_sink_does_not_block_others(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "outbox", clock=clock)
    with Receiver() as good, Receiver() as bad:
        bad.down = True
        sinks = [WebhookSink(url=good.url, name="good"), WebhookSink(url=bad.url, name="bad")]
        box.enqueue(event(1), ["good", "bad"])
        box.enqueue(event(2), ["good", "bad"])
        report = box.deliver(sinks)
        assert good.ids() == [f"{1:064x}", f"{2:064x}"] and "bad" in report.failed
        assert len(bad.requests) == 0 and report.pending == 2
        clock.now += 10  # still backing off
        assert box.deliver(sinks).deferred == ["bad"]
        bad.down = False
        clock.now += 31
        box.deliver(sinks)
        assert bad.ids() == [f"{1:064x}", f"{2:064x}"] and box.pending() == []


def test_alertmanager_v2_payload(tmp_path):
    with Receiver() as rx:
        AlertmanagerSink(url=rx.url).send(event(7))
        path, _, body = rx.requests[0]
        assert path == "/api/v2/alerts"
        alert = body[0]
        assert alert["labels"] == {"alertname": "PvepstoreGuestIncident", "vmid": "101", "node": "pve1",
                                   "kind": "kernel_oops", "severity": "error"}
        assert alert["annotations"]["incident_id"] == f"{7:064x}" and alert["startsAt"] == "2026-11-26T04:08:47Z"


def test_journald_native_protocol_fields(tmp_path):
    path = str(tmp_path / "journal.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    try:
        JournalSink(socket_path=path).send(event(9))
        datagram = srv.recv(65536).decode()
    finally:
        srv.close()
    fields = dict(line.split("=", 1) for line in datagram.strip().split("\n"))
    assert fields["MESSAGE_ID"] == MESSAGE_ID and fields["PVEPSTORE_VMID"] == "101"
    assert fields["PVEPSTORE_INCIDENT_ID"] == f"{9:064x}" and fields["PRIORITY"] == "3"


def test_textfile_metrics_count_per_vm_and_kind_without_ids(tmp_path):
    prom = tmp_path / "pvepstore.prom"
    sink = TextfileSink(path=str(prom))
    sink.send(event(1))
    sink.send(event(2))
    sink.send(event(2))  # a resend is not a new incident
    sink.send(event(3, vmid=102, kind="unexpected_reset"))
    text = prom.read_text()
    assert 'pvepstore_incidents_total{id="qemu/101",vmid="101",kind="kernel_oops"} 2' in text
    assert 'pvepstore_incidents_total{id="qemu/102",vmid="102",kind="unexpected_reset"} 1' in text
    assert f"{1:064x}" not in text


def test_sink_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^sinks.0.type"):
        build_sinks([{"type": "pagerduty"}])
    with pytest.raises(ConfigError, match=r"^sinks.1"):
        build_sinks([{"type": "journald"}, {"type": "webhook"}])  # url missing
    sinks = build_sinks([{"type": "webhook", "url": "http://127.0.0.1:9/x"}, {"type": "webhook", "url": "http://x"}])
    assert [s.name for s in sinks] == ["webhook", "webhook-1"]
    assert "headers" not in repr(sinks[0]) or "Bearer" not in repr(sinks[0])
