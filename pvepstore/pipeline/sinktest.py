"""``notify-test``: one test event to every sink in use, and what each answered.

The event is a valid ``incident-v1`` CloudEvent (so a receiver's parser is exercised too) that says
plainly it is a test: verdict ``unknown``, severity ``info``, ``reason_code`` ``notify_test``, source
``pvepstore://<node>/notify-test`` (the schema admits no extension attribute).  It is sent directly: not archived, not
spooled, not counted in the textfile metrics (that sink only checks it could write).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from ..analysis.report import GENERATOR, SCHEMA, SCHEMA_URI, TEXT_LIMIT
from .sinks import TextfileSink


def test_event(node: str, now: datetime | None = None) -> dict:
    now = now or datetime.now(timezone.utc)
    stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    summary = f"pvepstore test notification from {node}: not an incident"
    return {
        "specversion": "1.0",
        "id": hashlib.sha256(f"notify-test {uuid.uuid4()}".encode()).hexdigest(),  # new each time
        "source": f"pvepstore://{node}/notify-test",
        "type": "io.pvepstore.incident.unknown.v1",
        "time": stamp,
        "datacontenttype": "application/json",
        "dataschema": SCHEMA_URI,
        "data": {"schema": SCHEMA, "generator": GENERATOR, "generated_at": stamp,
                 "vm": {"vmid": 0, "node": node, "name": "notify-test"}, "image": {},
                 "verdict": {"kind": "unknown", "severity": "info", "confidence": "low", "summary": summary,
                             "reason_code": "notify_test", "also": []},
                 "signature": None, "crashes": [], "evidence": [], "records": [], "text_limit": TEXT_LIMIT},
    }


@dataclass(frozen=True)
class SinkAnswer:
    name: str
    ok: bool
    answer: str  # what the sink said (or what failed), one line


def check_textfile(path: str) -> str:
    """The textfile sink's test: could it write its file (no counter is touched)."""
    directory = Path(path).parent
    if not directory.is_dir():
        raise RuntimeError(f"{directory} does not exist (node_exporter's textfile directory?)")
    if not os.access(directory, os.W_OK):
        raise RuntimeError(f"{directory} is not writable")
    return f"would write {path} (test events are not counted)"


def test_sinks(sinks: Sequence, event: dict) -> list[SinkAnswer]:
    answers = []
    for sink in sinks:
        try:
            if isinstance(sink, TextfileSink):
                answer = check_textfile(sink.path)
            else:
                getattr(sink, "deliver", sink.send)(event)  # past a sink's own severity filter
                how = getattr(sink, "describe", None)
                answer = f"accepted ({how()})" if how is not None else "accepted"
            answers.append(SinkAnswer(sink.name, True, answer))
        except Exception as exc:  # every sink failure is an answer here, as in the outbox
            answers.append(SinkAnswer(sink.name, False, f"{type(exc).__name__}: {exc}"[:300]))
    return answers
