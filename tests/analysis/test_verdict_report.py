"""Verdicts from pstore evidence (including the honest "no record" rule) and the incident-v1 CloudEvent."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pvepstore.analysis.evidence import (NO_RECORD_NOTE, Confidence, Evidence, VerdictKind, log_evidence,
                                         pstore_evidence)
from pvepstore.analysis.report import TEXT_LIMIT, build_report, event_id, load_schema
from pvepstore.analysis.verdict import decide
from pvepstore.pstore import FileSource, read_blk
from pvepstore.pstore.model import Kind, ParseResult, Record
from pvepstore.pstore.source import unpack_xz_sparse

from .corpus import needs_corpus, read

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def validate(event: dict) -> None:
    """Validate against the shipped schema (jsonschema is optional: not a runtime dependency)."""
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(event, load_schema())


def record(data: bytes, *, reason="Oops", kind=Kind.DMESG, name="dmesg-pstore_blk-0", time_sec=1_750_000_000):
    return Record(name=name, kind=kind, backend="pstore_blk", zone=0, offset=0, data=data, reason=reason,
                  reason_code={"Panic": 1, "Oops": 2, "Emergency": 3, "Shutdown": 4}.get(reason),
                  counter=1, time_sec=time_sec)


class _Layout:
    def to_json(self) -> dict:
        return {}


def parsed(*records: Record) -> ParseResult:
    return ParseResult("image.raw", 0, _Layout(), list(records))


def fixture_result(name: str, tmp_path: Path) -> ParseResult:
    path = FIXTURES / name / "image.xz"
    if not path.exists():
        pytest.skip(f"fixture {name} missing")
    raw = tmp_path / f"{name}.img"
    unpack_xz_sparse(path, raw)
    with FileSource(raw, 0) as src:
        return read_blk(src)


def test_no_record_is_never_a_clean_reboot():
    verdict = decide(pstore_evidence([]))
    assert verdict.kind is VerdictKind.UNKNOWN and verdict.confidence is Confidence.LOW
    assert "not evidence of a clean reboot" in verdict.summary
    assert verdict.kind not in (VerdictKind.ORDERLY_REBOOT, VerdictKind.ORDERLY_POWEROFF)


@pytest.mark.parametrize("fixture", ["panic", "reboot"])
def test_real_panic_and_reboot_images_give_unknown(fixture, tmp_path):
    # Both images were written by a real 6.1 kernel: the panic and the shutdown dump never reach the disk.
    result = fixture_result(fixture, tmp_path)
    assert not result.records
    event = build_report(result, now=NOW)
    assert event["data"]["verdict"]["kind"] == "unknown"
    assert any(e["summary"] == NO_RECORD_NOTE for e in event["data"]["evidence"])


def test_real_oops_image_gives_kernel_oops(tmp_path):
    result = fixture_result("oops-deflate", tmp_path)
    event = build_report(result, vm={"vmid": 101, "node": "pve1", "name": "web1"}, now=NOW)
    data = event["data"]
    assert data["verdict"]["kind"] == "kernel_oops" and data["verdict"]["confidence"] == "medium"
    assert "NULL pointer dereference" in data["verdict"]["summary"]
    assert data["crashes"] and all(c["record"].startswith("dmesg-pstore_blk-") for c in data["crashes"])
    assert data["signature"]["chromeos"].startswith("kernel-")
    assert event["source"] == "pvepstore://pve1/qemu/101" and event["subject"] == "101"
    assert event["type"] == "io.pvepstore.incident.kernel_oops.v1"
    validate(event)


@needs_corpus
def test_panic_record_from_a_panic_capable_backend():
    text = "Panic#1 Part1\n" + read("abrt/examples/oops-without-addrs.test")
    verdict = decide(pstore_evidence([record(text.encode(), reason="Panic")]))
    assert verdict.kind is VerdictKind.KERNEL_PANIC and verdict.confidence is Confidence.HIGH
    assert verdict.severity == "critical"


@needs_corpus
def test_hung_task_panic_reason_code():
    verdict = decide(log_evidence([c for c in _crashes("abrt/examples/oops-kernel-panic-hung-tasks-arm.test")]))
    assert verdict.kind is VerdictKind.KERNEL_PANIC and verdict.reason_code == "kernel_panic,hang"


def _crashes(relpath):
    from pvepstore.analysis import extract_crashes
    return extract_crashes(read(relpath))


def test_shutdown_record_reads_its_last_line():
    data = b"Shutdown#1 Part1\n<6>[   12.000000] systemd-shutdown[1]: Powering off.\n<0>[   12.100000] reboot: Power down\n"
    verdict = decide(pstore_evidence([record(data, reason="Shutdown")]))
    assert verdict.kind is VerdictKind.ORDERLY_POWEROFF and verdict.confidence is Confidence.HIGH
    data = data.replace(b"reboot: Power down", b"reboot: Restarting system")
    assert decide(pstore_evidence([record(data, reason="Shutdown")])).kind is VerdictKind.ORDERLY_REBOOT


def test_more_confident_evidence_wins_then_severity():
    host = Evidence("pve_task", VerdictKind.HOST_RESET, Confidence.HIGH, "qmreset by root@pam")
    oops = Evidence("pstore_blk", VerdictKind.KERNEL_OOPS, Confidence.MEDIUM, "BUG: ...")
    verdict = decide([oops, host])
    assert verdict.kind is VerdictKind.HOST_RESET and verdict.also == (VerdictKind.KERNEL_OOPS,)
    panic = Evidence("pvpanic", VerdictKind.KERNEL_PANIC, Confidence.HIGH, "GUEST_PANICKED")
    assert decide([host, panic]).kind is VerdictKind.KERNEL_PANIC


@needs_corpus
def test_event_id_is_deterministic_and_identity_bound():
    rec = record(("Oops#1 Part1\n" + read("clearlinux/oops_test_files/kernel_null_pointer.txt")).encode())
    a = build_report(parsed(rec), vm={"vmid": 101, "node": "pve1"}, now=NOW)
    b = build_report(parsed(rec), vm={"vmid": 101, "node": "pve1"}, now=datetime.now(timezone.utc))
    c = build_report(parsed(rec), vm={"vmid": 102, "node": "pve1"}, now=NOW)
    assert a["id"] == b["id"] != c["id"]
    assert a["id"] == event_id({"vmid": 101, "node": "pve1"}, [rec])
    other = record(rec.data + b"<4>[ 1.0] later line\n")
    assert build_report(parsed(other), vm={"vmid": 101, "node": "pve1"}, now=NOW)["id"] != a["id"]
    assert a == build_report(parsed(rec), vm={"vmid": 101, "node": "pve1"}, now=NOW)


def test_raw_text_is_bounded_to_its_tail():
    body = b"".join(b"<6>[    1.000000] filler line %06d\n" % i for i in range(2000)) + b"<4>[ 2.0] the end\n"
    event = build_report(parsed(record(b"Oops#1 Part1\n" + body)), now=NOW)
    rec = event["data"]["records"][0]
    assert rec["text_truncated"] is True and len(rec["text"]) == TEXT_LIMIT
    assert rec["text"].endswith("the end\n") and rec["size"] == len(body) + len(b"Oops#1 Part1\n")
    validate(event)


def test_schema_is_shipped_as_package_data():
    from importlib import resources
    text = resources.files("pvepstore.data").joinpath("incident-v1.schema.json").read_text()
    assert json.loads(text)["$id"] == "urn:pvepstore:schema:incident-v1"


def test_schema_rejects_an_open_vocabulary():
    jsonschema = pytest.importorskip("jsonschema")
    event = build_report(parsed(), now=NOW)
    validate(event)
    event["data"]["verdict"]["kind"] = "clean_reboot"
    with pytest.raises(jsonschema.ValidationError):
        validate(event)


@needs_corpus
def test_an_oops_dump_is_explained_by_the_oops_that_triggered_it_not_an_earlier_lockup(tmp_path):
    # Seen on the real-VM tier under load: a guest's soft lockup warning, then the Oops that made
    # the kernel write the dump (kmsg_dump(KMSG_DUMP_OOPS) from oops_end). The record's reason
    # names the trigger: the verdict is kernel_oops with the Oops' title, the lockup stays a crash.
    result = fixture_result("oops-deflate", tmp_path)
    oops = next(r for r in result.records if r.reason == "Oops")
    lockup = read("clearlinux/oops_test_files/soft_lockup.txt")
    rec = record(lockup.encode() + b"\n" + oops.data, reason="Oops")
    ev = pstore_evidence([rec])
    assert ev[0].suggests is VerdictKind.KERNEL_OOPS, ev[0]
    assert "NULL pointer dereference" in ev[0].summary
    assert {c.kind.value for c in ev[0].crashes} >= {"hang", "oops"}
    # Without an Oops in the record (nothing to name as the trigger) precedence decides, as before.
    assert pstore_evidence([record(lockup.encode(), reason="Oops")])[0].suggests is VerdictKind.HANG
