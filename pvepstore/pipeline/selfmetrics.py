"""pvepstore watches itself: textfile metrics written after every sweep (``collect.metrics_file``).

They say whether pvepstore works, not only what it found: when a sweep last completed and last
completed without a failed VM, the VMs per result, the outbox backlog and the age of its oldest
event, each sink's last delivery result, and per VM what its setup captures
(``pvepstore_capture{id="qemu/101",event="panic"} 0|1``).  ``id="qemu/<vmid>"`` is the label
prometheus-pve-exporter gives ``pve_guest_info``, so alert rules can join on it (the example rules:
``contrib/prometheus/pvepstore.rules.yml``).  Label values are bounded sets (VM ids, event and
result names, sink names); incident ids never become labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..backends.capture import Cell
from ..durable import read_json, write_atomic, write_json
from .collect import VmStatus
from .sweep import SweepResult


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    oldest_age: float | None  # seconds since the oldest pending event was spooled (None: none pending)


@dataclass
class MetricsState:
    """What the next sweep's file must still say (kept beside it): the last good sweep's time."""

    last_success: float | None = None
    sinks: dict[str, int] = field(default_factory=dict)  # sink -> 1 (last delivery ok) / 0


def _label(value: object) -> str:
    return re.sub(r'["\\\n]', "_", str(value))


def render(result: SweepResult, now: float, state: MetricsState, outbox: OutboxStats,
           capture: Mapping[int, Sequence[Cell]], version: str) -> str:
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: Sequence[tuple[Mapping[str, object], float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")

    metric("pvepstore_info", "gauge", "The pvepstore that wrote this file.", [({"version": version}, 1)])
    metric("pvepstore_sweep_last_run_timestamp_seconds", "gauge",
           "When the last sweep completed (with or without failed VMs).", [({}, now)])
    if state.last_success is not None:
        metric("pvepstore_sweep_last_success_timestamp_seconds", "gauge",
               "When the last sweep completed with no failed VM.", [({}, state.last_success)])
    metric("pvepstore_sweep_duration_seconds", "gauge", "How long the last sweep took.", [({}, result.seconds)])
    counts = {s.value: 0 for s in VmStatus}
    for r in result.results:
        counts[VmStatus(r.status).value] += 1
    metric("pvepstore_sweep_vms", "gauge", "VMs of the last sweep, by result.",
           [({"result": k}, n) for k, n in counts.items()])
    metric("pvepstore_outbox_pending_events", "gauge", "Incident events spooled and not yet delivered to "
           "every sink.", [({}, outbox.pending)])
    metric("pvepstore_outbox_oldest_pending_age_seconds", "gauge", "Age of the oldest undelivered event "
           "(0: none pending).", [({}, outbox.oldest_age or 0)])
    if state.sinks:
        metric("pvepstore_sink_up", "gauge", "1 when the sink's last delivery attempt succeeded.",
               [({"sink": k}, v) for k, v in sorted(state.sinks.items())])
    samples = [({"id": f"qemu/{vmid}", "event": c.event.value}, 1 if c.captured else 0)
               for vmid in sorted(capture) for c in capture[vmid]]
    if samples:
        metric("pvepstore_capture", "gauge", "1 when the VM's setup tells this way a boot ends (the capture "
               "matrix of `pvepstore status`).", samples)
    return "\n".join(out) + "\n"


def update_state(path: Path, result: SweepResult, now: float, *, base: Path | None = None) -> MetricsState:
    """The state after this sweep (last success, each sink's last answer), saved for the next one."""
    raw = read_json(path, {}) or {}
    state = MetricsState(raw.get("last_success") if isinstance(raw.get("last_success"), (int, float)) else None,
                         {str(k): int(v) for k, v in (raw.get("sinks") or {}).items() if v in (0, 1)})
    if not result.failed:
        state.last_success = now
    if result.delivery is not None:
        for _, sink in result.delivery.delivered:
            state.sinks[sink] = 1
        for sink in result.delivery.failed:
            state.sinks[sink] = 0
    write_json(path, {"last_success": state.last_success, "sinks": state.sinks}, base=base)
    return state


def write_metrics(path: Path, text: str) -> None:
    write_atomic(path, text.encode(), mode=0o644)


def after_sweep(cfg, api, refs, result: SweepResult, outbox, now: float) -> Path:
    """Write ``collect.metrics_file`` for a finished sweep (capture from the VMs' current facts)."""
    from .. import __version__
    from .autoselect import capture_by_vm

    state = update_state(Path(cfg.state_dir) / "metrics.json", result, now, base=Path(cfg.state_dir))
    capture = capture_by_vm(cfg, api, refs)
    text = render(result, now, state, OutboxStats(*outbox.backlog(now)), capture, __version__)
    path = Path(cfg.collect.metrics_file)
    write_metrics(path, text)
    return path
