"""The outbox: incident events spooled on disk until every sink has them, in order.

Each event is one file ``<seq>-<id>.json`` (atomic write) holding the event and
the sinks still owed it.  Delivery walks the files in sequence order; a sink
that fails is retried with exponential backoff and, to keep its order, gets no
later event until the failed one went through.  Other sinks carry on.  An
event leaves the outbox (a ``done/<id>`` marker remains) once every sink has
it.  Event ids are deterministic, so a delivery repeated after a crash between
"sent" and "recorded as sent" is recognisable as a duplicate by the receiver.

Files are written without following links (:mod:`pvepstore.safefs`): the state
directory (``root``'s parent) must not be writable by others, ``outbox/``,
``done/`` and ``sinks/`` are opened ``O_NOFOLLOW``, each file is replaced by
rename, and a marker is created ``O_EXCL`` (an existing entry is never opened).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from ..durable import open_dir, read_json, write_json

BACKOFF_BASE = 30.0  # seconds after the first failure; doubles up to BACKOFF_MAX
BACKOFF_MAX = 3600.0


class Sink(Protocol):
    name: str

    def send(self, event: dict) -> None:
        """Deliver one event; raise on failure (the outbox retries)."""


@dataclass
class DeliveryReport:
    delivered: list[tuple[str, str]] = field(default_factory=list)  # (event id, sink)
    failed: dict[str, str] = field(default_factory=dict)  # sink -> error
    deferred: list[str] = field(default_factory=list)  # sinks still in backoff
    pending: int = 0  # events still owed to some sink


class Outbox:
    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.clock = clock
        self.done = root / "done"
        self.sink_state = root / "sinks"
        self.base = root.parent  # the state directory: private, the base of every write

    def _entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*.json") if not p.name.startswith("."))

    def contains(self, event_id: str) -> bool:
        return (self.done / event_id).exists() or any(self.root.glob(f"*-{event_id}.json"))

    def enqueue(self, event: dict, sinks: Sequence[str]) -> bool:
        """Spool an event for ``sinks`` (idempotent by event id); False if already spooled."""
        if self.contains(event["id"]):
            return False
        seq = time.time_ns()
        last = self._entries()
        if last:
            seq = max(seq, int(last[-1].name.split("-")[0]) + 1)
        write_json(self.root / f"{seq:020d}-{event['id']}.json",
                   {"event": event, "pending": list(sinks), "attempts": {}}, base=self.base)
        return True

    def backlog(self, now: float | None = None) -> tuple[int, float | None]:
        """Events not yet delivered everywhere, and the oldest one's age in seconds (from its spool
        name: the nanosecond clock when it was spooled)."""
        entries = self._entries()
        if not entries:
            return 0, None
        first = int(entries[0].name.split("-")[0]) / 1e9
        return len(entries), max(0.0, (self.clock() if now is None else now) - first)

    def pending(self) -> list[dict]:
        return [read_json(p) for p in self._entries()]

    def deliver(self, sinks: Sequence[Sink]) -> DeliveryReport:
        report = DeliveryReport()
        now = self.clock()
        blocked: set[str] = set()
        by_name = {s.name: s for s in sinks}
        for name in by_name:
            state = read_json(self.sink_state / f"{name}.json", {}) or {}
            if state.get("next_try", 0) > now:
                blocked.add(name)
                report.deferred.append(name)
        for path in self._entries():
            entry = read_json(path)
            if entry is None:
                continue
            event, still = entry["event"], list(entry["pending"])
            for name in list(still):
                sink = by_name.get(name)
                if sink is None or name in blocked:
                    continue  # a sink removed from the config keeps its events until it returns
                try:
                    sink.send(event)
                except Exception as exc:  # any failure of a sink is retried later
                    blocked.add(name)
                    report.failed[name] = f"{type(exc).__name__}: {exc}"[:300]
                    self._backoff(name, now, str(exc))
                    entry["attempts"][name] = entry["attempts"].get(name, 0) + 1
                    continue
                still.remove(name)
                report.delivered.append((event["id"], name))
                self._reset(name)
            if still:
                if still != entry["pending"] or report.failed:
                    entry["pending"] = still
                    write_json(path, entry, base=self.base)
                report.pending += 1
            else:
                self._finish(path, event["id"])
        return report

    def _finish(self, path: Path, event_id: str) -> None:
        with open_dir(self.done, self.base) as done:
            done.touch_new(event_id)  # O_EXCL: a planted link or FIFO is replaced, never opened
            done.fsync()
        with open_dir(self.root, self.base) as spool:
            spool.unlink(path.name)
            spool.fsync()

    def _backoff(self, name: str, now: float, error: str) -> None:
        path = self.sink_state / f"{name}.json"
        state = read_json(path, {}) or {}
        failures = state.get("failures", 0) + 1
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (failures - 1))
        write_json(path, {"failures": failures, "next_try": now + delay, "last_error": error[:300]},
                   base=self.base)

    def _reset(self, name: str) -> None:
        path = self.sink_state / f"{name}.json"
        if os.path.lexists(path):
            with open_dir(self.sink_state, self.base) as d:
                d.unlink(path.name)
