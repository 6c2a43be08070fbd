"""Where incident events go: webhook (CloudEvents), Alertmanager v2, journald/syslog, textfile metrics,
the node's own notification system (``pvenotify``).

Every sink takes the CloudEvent built by ``analysis.report`` and raises on
failure; the outbox retries.  Secrets (auth headers) never reach log lines.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from enum import Enum
from typing import Any, Mapping, Sequence

from ..analysis.report import GENERATOR
from ..errors import ConfigError
from ..durable import read_json, write_atomic, write_json
from .pvenotify import PveNotifySink, Route, route

USER_AGENT = GENERATOR
# journald MESSAGE_ID for pvepstore incidents (a fixed random 128-bit id, as sd-id128 wants).
MESSAGE_ID = "6f1c2b7e9d4a4c0fb1a3e5d7c9b2a4f6"


def _incident(event: dict) -> dict:
    return event.get("data") or {}


def _labels(event: dict) -> dict[str, str]:
    data = _incident(event)
    vm = data.get("vm") or {}
    verdict = data.get("verdict") or {}
    return {
        "vmid": str(vm.get("vmid", "")),
        "node": str(vm.get("node", "")),
        "kind": str(verdict.get("kind", "unknown")),
        "severity": str(verdict.get("severity", "warning")),
    }


@dataclass
class WebhookSink:
    """POST the CloudEvent in structured mode (``application/cloudevents+json``)."""

    url: str
    name: str = "webhook"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    verify_ssl: bool | str = True
    timeout: float = 10.0

    def send(self, event: dict) -> None:
        import requests

        resp = requests.post(self.url, data=json.dumps(event).encode(),
                             headers={"Content-Type": "application/cloudevents+json",
                                      "User-Agent": USER_AGENT, **self.headers},
                             verify=self.verify_ssl, timeout=self.timeout)
        if resp.status_code == 409:  # the receiver already has this id: that is success
            return
        if not 200 <= resp.status_code < 300:
            raise RuntimeError(f"{self.url} answered {resp.status_code} {resp.reason}")


@dataclass
class AlertmanagerSink:
    """``POST /api/v2/alerts``: one alert per incident, labels of bounded cardinality."""

    url: str
    name: str = "alertmanager"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    verify_ssl: bool | str = True
    timeout: float = 10.0
    resolve_after: float = 3600.0  # the alert marks an event; it resolves by itself

    def alerts(self, event: dict) -> list[dict]:
        from datetime import datetime, timedelta

        data = _incident(event)
        verdict = data.get("verdict") or {}
        start = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        labels = {"alertname": "PvepstoreGuestIncident", **{k: v for k, v in _labels(event).items() if v}}
        return [{
            "labels": labels,
            "annotations": {"summary": str(verdict.get("summary", ""))[:500],
                            "incident_id": event["id"],
                            "reason_code": str(verdict.get("reason_code", ""))},
            "startsAt": start.isoformat().replace("+00:00", "Z"),
            "endsAt": (start + timedelta(seconds=self.resolve_after)).isoformat().replace("+00:00", "Z"),
        }]

    def send(self, event: dict) -> None:
        import requests

        resp = requests.post(self.url.rstrip("/") + "/api/v2/alerts", json=self.alerts(event),
                             headers={"User-Agent": USER_AGENT, **self.headers},
                             verify=self.verify_ssl, timeout=self.timeout)
        if not 200 <= resp.status_code < 300:
            raise RuntimeError(f"alertmanager answered {resp.status_code} {resp.reason}")


@dataclass
class JournalSink:
    """journald's native protocol (structured fields), syslog when journald is absent."""

    name: str = "journald"
    socket_path: str = "/run/systemd/journal/socket"
    syslog_path: str = "/dev/log"

    def fields(self, event: dict) -> dict[str, str]:
        data = _incident(event)
        verdict = data.get("verdict") or {}
        labels = _labels(event)
        return {
            "MESSAGE": f"VM {labels['vmid'] or '?'}: {verdict.get('kind', 'unknown')}: {verdict.get('summary', '')}"[:2000],
            "MESSAGE_ID": MESSAGE_ID,
            "PRIORITY": {"critical": "2", "error": "3", "warning": "4"}.get(labels["severity"], "6"),
            "SYSLOG_IDENTIFIER": "pvepstore",
            "PVEPSTORE_INCIDENT_ID": event["id"],
            "PVEPSTORE_VMID": labels["vmid"],
            "PVEPSTORE_NODE": labels["node"],
            "PVEPSTORE_VERDICT": labels["kind"],
            "PVEPSTORE_REASON_CODE": str(verdict.get("reason_code", "")),
        }

    def send(self, event: dict) -> None:
        fields = self.fields(event)
        if os.path.exists(self.socket_path):
            payload = b"".join(_journal_field(k, v) for k, v in fields.items())
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(payload, self.socket_path)
            return
        priority = int(fields["PRIORITY"])
        line = f"<{(1 << 3) | priority}>pvepstore: {fields['MESSAGE']} incident={event['id']}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(line.encode("utf-8", "replace"), self.syslog_path)


def _journal_field(key: str, value: str) -> bytes:
    raw = value.encode("utf-8", "replace")
    if b"\n" in raw:  # the native protocol's binary-safe form
        return key.encode() + b"\n" + len(raw).to_bytes(8, "little") + raw + b"\n"
    return key.encode() + b"=" + raw + b"\n"


@dataclass
class TextfileSink:
    """node_exporter textfile collector: counters per VM and verdict, rewritten atomically.

    Labels are id (``qemu/<vmid>``), vmid and kind only (all bounded); incident ids never become labels.
    """

    path: str
    name: str = "textfile"

    def send(self, event: dict) -> None:
        target = Path(self.path)
        state_path = target.with_name("." + target.name + ".state.json")
        state = read_json(state_path, {"counts": {}, "seen": []}) or {"counts": {}, "seen": []}
        if event["id"] in state["seen"]:
            return
        labels = _labels(event)
        key = f"{labels['vmid']}|{labels['kind']}"
        state["counts"][key] = state["counts"].get(key, 0) + 1
        state["seen"] = (state["seen"] + [event["id"]])[-5000:]
        write_json(state_path, state)
        lines = ["# HELP pvepstore_incidents_total Guest incidents collected by pvepstore, by VM and verdict.",
                 "# TYPE pvepstore_incidents_total counter"]
        for k in sorted(state["counts"]):
            vmid, kind = k.split("|", 1)
            # id="qemu/<vmid>": prometheus-pve-exporter's label, so rules can join pve_guest_info
            lines.append(f'pvepstore_incidents_total{{id="qemu/{_prom(vmid)}",vmid="{_prom(vmid)}",'
                         f'kind="{_prom(kind)}"}} {state["counts"][k]}')
        write_atomic(target, ("\n".join(lines) + "\n").encode(), mode=0o644)


def _prom(value: str) -> str:
    return re.sub(r'["\\\n]', "_", value)


SINK_TYPES = {"webhook": WebhookSink, "alertmanager": AlertmanagerSink, "journald": JournalSink,
              "textfile": TextfileSink, "pve-notify": PveNotifySink}


class SinkOrigin(str, Enum):
    """Where the sinks in use came from."""

    CONFIGURED = "configured"  # the configuration's sinks: list (an empty list means none)
    DEFAULT = "default"  # no sinks: key, and the node has PVE's notification system: pve-notify
    NONE = "none"  # no sinks: key and no notification system: incidents are archived only


def configured_sinks(sinks: Sequence[Mapping[str, Any]] | None, host_root: str = "/") -> tuple[list, SinkOrigin]:
    """The sinks in use: the configured ones, else pve-notify where the node can take it."""
    if sinks is not None:
        return build_sinks(list(sinks), host_root=host_root), SinkOrigin.CONFIGURED
    if route(host_root) is Route.NOTIFY:
        return [PveNotifySink(host_root=host_root)], SinkOrigin.DEFAULT
    return [], SinkOrigin.NONE


def build_sinks(specs: list[Mapping[str, Any]], *, host_root: str = "/") -> list:
    """Sinks from the ``sinks:`` list of the configuration (validated there)."""
    sinks = []
    names: set[str] = set()
    for i, spec in enumerate(specs):
        spec = dict(spec)
        kind = spec.pop("type", None)
        cls = SINK_TYPES.get(kind)
        if cls is None:
            raise ConfigError(f"sinks.{i}.type: must be one of {', '.join(SINK_TYPES)}")
        header_file = spec.pop("auth_header_file", None)
        if header_file:
            try:
                value = Path(header_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"sinks.{i}.auth_header_file: cannot read {header_file}: {exc.strerror}") from None
            spec["headers"] = {**spec.get("headers", {}), "Authorization": value}
        spec.setdefault("name", kind if kind not in names else f"{kind}-{i}")
        if "host_root" in getattr(cls, "INJECTED", ()):
            spec["host_root"] = host_root
        try:
            sink = cls(**spec)
        except TypeError as exc:
            raise ConfigError(f"sinks.{i}: {exc}".replace("__init__() ", ""),
                              hint="see config.example.yaml for the keys of each sink type") from None
        if sink.name in names:
            raise ConfigError(f"sinks.{i}.name: {sink.name!r} is used twice")
        names.add(sink.name)
        sinks.append(sink)
    return sinks
