"""The incident report: ``incident-v1`` data in a CloudEvents 1.0 envelope.

The event ``id`` is a SHA-256 over the VM identity and the hashes of the
records it was built from, so building the report twice from the same store
gives the same id and a receiver can drop the resend (CloudEvents: ``source``
+ ``id`` identify an event).  Record text travels with the report, but only
its tail and only up to :data:`TEXT_LIMIT` characters per record: the crash is
at the end of a dmesg dump, and an alert must stay small.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from importlib import resources
from typing import Sequence

from .. import __version__
from ..pstore.model import Kind, ParseResult, Record
from .crash import Crash
from .limits import image_budget
from .evidence import Evidence, EvidenceItem, primary_crash, pstore_evidence
from .verdict import Verdict, decide

SCHEMA = "incident-v1"
SCHEMA_URI = "urn:pvepstore:schema:incident-v1"
SCHEMA_FILE = "incident-v1.schema.json"
# Who wrote the report, as a product token (RFC 9110 User-Agent form): receivers may key on versions.
GENERATOR = f"pvepstore/{__version__}"
TEXT_LIMIT = 16 * 1024


def load_schema() -> dict:
    """The JSON Schema shipped in the package."""
    import json
    return json.loads(resources.files("pvepstore.data").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def vm_identity(vm: dict | None) -> str:
    """The stable part of a VM's identity: its SMBIOS UUID if known, else node/vmid."""
    if not vm:
        return ""
    if vm.get("vm_uuid"):
        return f"uuid:{vm['vm_uuid']}"
    return f"vm:{vm.get('node', '')}/{vm.get('vmid', '')}"


def event_id(vm: dict | None, records: list[Record], ended_boot: str | None = None) -> str:
    """Deterministic id: the same VM, records (and ended boot) always give the same id."""
    parts = [SCHEMA, vm_identity(vm), *sorted(r.sha256 for r in records)]
    if ended_boot:
        parts.append(f"boot:{ended_boot}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def record_json(rec: Record, limit: int = TEXT_LIMIT) -> dict:
    doc = rec.to_json(include_text=False)
    text = rec.text
    doc["text"] = text[-limit:] if len(text) > limit else text
    doc["text_truncated"] = len(text) > limit
    return doc


def build_incident(*, verdict: Verdict, crashes: list[tuple[Crash, str | None]], records: list[Record],
                   vm: dict | None, image: dict, now: datetime) -> dict:
    primary = primary_crash(c for c, _ in crashes)
    signature = None
    if primary is not None:
        signature = {"abrt_duphash": primary.duphash, "chromeos": primary.signature,
                     "frames": [f.function or "?" for f in primary.frames if f.reliable][:16]}
    crash_docs = []
    for crash, record in crashes:
        doc = crash.to_json()
        doc["record"] = record
        crash_docs.append(doc)
    return {
        "schema": SCHEMA,
        "generator": GENERATOR,
        "generated_at": _iso(now),
        "vm": vm,
        "image": image,
        "verdict": {k: v for k, v in verdict.to_json().items() if k != "evidence"},
        "signature": signature,
        "crashes": crash_docs,
        "evidence": [e.to_json() for e in verdict.evidence],
        "records": [record_json(r) for r in records],
        "text_limit": TEXT_LIMIT,
    }


def build_report(result: ParseResult, *, vm: dict | None = None, now: datetime | None = None) -> dict:
    """The CloudEvent for a parsed pstore image (what ``pvepstore parse --report`` prints).

    ``vm`` is optional VM metadata (``vmid``, ``node``, ``name``, ``vm_uuid``);
    ``now`` pins ``generated_at`` (and the event time when no record has one).
    """
    return build_event(result.records, vm=vm, now=now,
                       image={"path": result.source, "offset": result.offset})


def build_event(records: list[Record], *, vm: dict | None = None, now: datetime | None = None,
                image: dict | None = None, extra_evidence: Sequence[EvidenceItem] = (),
                ended_boot: str | None = None, backend: str = "pstore_blk", keeps_panics: bool = False) -> dict:
    """The CloudEvent for one incident: pstore records plus evidence from other sources.

    ``ended_boot`` (the guest boot id that ended) makes incidents without any
    record (an unexpected reset) distinct and still deterministic.
    """
    now = now or datetime.now(timezone.utc)
    records = [r for r in records if not r.erased]
    with image_budget():  # one image's records share one analysis budget (see .limits)
        evidence = pstore_evidence(records, backend=backend, keeps_panics=keeps_panics) + list(extra_evidence)
    verdict = decide(evidence)
    crashes = [(c, e.record) for e in evidence if isinstance(e, Evidence) for c in e.crashes]
    times = [r.time for r in records if r.time is not None and r.kind is Kind.DMESG]
    node = (vm or {}).get("node") or "localhost"
    vmid = (vm or {}).get("vmid")
    event = {
        "specversion": "1.0",
        "id": event_id(vm, records, ended_boot),
        "source": f"pvepstore://{node}/qemu/{vmid}" if vmid is not None else f"pvepstore://{node}/image",
        "type": f"io.pvepstore.incident.{verdict.kind.value}.v1",
        "time": _iso(max(times) if times else now),
        "datacontenttype": "application/json",
        "dataschema": SCHEMA_URI,
        "data": build_incident(verdict=verdict, crashes=crashes, records=records, vm=vm,
                               image=image or {}, now=now),
    }
    if vmid is not None:
        event["subject"] = str(vmid)
    return event
