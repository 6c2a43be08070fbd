from __future__ import annotations

import pytest

from pvepstore.cli import ExitStatus
from pvepstore.pstore import BlkParams, compute_layout
from tests.conftest import FIXTURES, load_fixtures, run_cli
from tests.pstore.zonewriter import ZoneWriter

FX = {f.name: f for f in load_fixtures()}
needs_fixture = pytest.mark.skipif("oops-deflate" not in FX, reason="fixture missing")


@needs_fixture
def test_parse_xz_fixture_human_output():
    r = run_cli("parse", str(FIXTURES / "oops-deflate" / "image.xz"))
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert "dmesg-pstore_blk-0" in r.stdout and "dmesg-pstore_blk-1" in r.stdout
    assert "BUG: kernel NULL pointer dereference" in r.stdout
    assert "==> dmesg-pstore_blk-0 <==" in r.stdout


def test_parse_bundled_sample_json():
    r = run_cli("parse", "--sample", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    doc = r.json
    assert set(doc) >= {"image", "layout", "records", "findings"}
    assert doc["records"], "the bundled sample is a real image with records"
    rec = doc["records"][0]
    assert set(rec) >= {"name", "kind", "zone", "offset", "reason", "reason_code", "counter", "time",
                        "compressed", "size", "sha256", "text"}
    assert rec["reason"] == "Oops" and rec["time"].endswith("Z")


@needs_fixture
def test_extract_writes_the_kernels_files(tmp_path):
    fx = FX["oops-deflate"]
    out = tmp_path / "out"
    r = run_cli("parse", str(fx.path / "image.xz"), "--extract", str(out), "--kmsg-size", "64")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == fx.kernel_view


def test_zero_records_is_success(tmp_path):
    img = tmp_path / "blank.img"
    img.write_bytes(bytes(1 << 20))
    r = run_cli("parse", str(img))
    assert r.status == ExitStatus.SUCCESS and "no records" in r.stdout


def test_unreadable_input_and_bad_arguments_have_distinct_codes(tmp_path):
    r = run_cli("parse", str(tmp_path / "missing.img"))
    assert r.status == ExitStatus.INPUT
    assert r.stderr.startswith("pvepstore: error: ") and "hint:" in r.stderr
    assert len(r.stderr.splitlines()) == 2
    r = run_cli("parse", str(tmp_path))
    assert r.status == ExitStatus.INPUT
    r = run_cli("parse", "--sample", "--offset", "99999999")
    assert r.status == ExitStatus.INPUT
    r = run_cli("parse", "--sample", "--kmsg-size", "0")
    assert r.status == ExitStatus.USAGE
    r = run_cli("parse", "--sample", "--bogus")
    assert r.status == ExitStatus.USAGE
    r = run_cli("parse")
    assert r.status == ExitStatus.USAGE


def test_corrupt_xz_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.img.xz"
    bad.write_bytes(b"not xz at all")
    r = run_cli("parse", str(bad))
    assert r.status == ExitStatus.INPUT and "not a valid .xz image" in r.stderr


def test_terminal_escapes_from_the_guest_are_neutralised(tmp_path):
    layout, _ = compute_layout(1 << 20, BlkParams())
    w = ZoneWriter(layout)
    w.dmesg(0, b"Oops#1 Part1\n\x1b]0;owned\x07\x1b[2J\x1b[31mBUG: evil\rfake line\n", compress=False)
    img = tmp_path / "evil.img"
    img.write_bytes(bytes(w.img))
    r = run_cli("parse", str(img))
    assert r.status == ExitStatus.SUCCESS
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\r" not in r.stdout
    assert "BUG: evil\\x0dfake line" in r.stdout
    r = run_cli("parse", str(img), "--json")
    assert "\x1b" not in r.stdout and "\\u001b" in r.stdout


def test_partition_offset(tmp_path):
    layout, _ = compute_layout(1 << 20, BlkParams())
    w = ZoneWriter(layout)
    w.dmesg(0, b"Oops#1 Part1\nBUG: in a partition\n")
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20) + bytes(w.img))
    r = run_cli("parse", str(img), "--offset", str(1 << 20), "--json")
    assert [rec["name"] for rec in r.json["records"]] == ["dmesg-pstore_blk-0"]
    assert r.json["offset"] == 1 << 20


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("pvepstore ")
    r = run_cli("parse", "--help")
    assert r.status == ExitStatus.SUCCESS


def test_parse_ramoops_memory_with_format_and_detection(tmp_path):
    from tests.pstore.test_ramoops import PANIC_LONG, Ram

    ram = Ram()
    for i in range(16):
        ram.zone(i * 65536, b"")
    ram.dump(0, PANIC_LONG)
    img = tmp_path / "pve-shm-101"
    img.write_bytes(bytes(ram.mem))
    for args in ([], ["--format", "ramoops", "--record-size", "64", "--console-size", "0",
                      "--pmsg-size", "0", "--ftrace-size", "0"]):
        r = run_cli("parse", str(img), "--json", *args)
        assert r.status == ExitStatus.SUCCESS, r.stderr
        assert [rec["name"] for rec in r.json["records"]] == ["dmesg-ramoops-0"]
        assert r.json["records"][0]["reason"] == "Panic"
    r = run_cli("parse", str(img), "--format", "ramoops", "--kmsg-size", "64")
    assert r.status == ExitStatus.USAGE


@needs_fixture
def test_report_is_a_cloudevent_with_a_verdict():
    r = run_cli("parse", str(FIXTURES / "oops-deflate" / "image.xz"), "--report")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    event = r.json
    assert event["specversion"] == "1.0" and event["data"]["verdict"]["kind"] == "kernel_oops"
    again = run_cli("parse", str(FIXTURES / "oops-deflate" / "image.xz"), "--report").json
    assert again["id"] == event["id"]  # idempotent re-sending


@needs_fixture
def test_bundled_sample_is_the_oops_deflate_fixture_and_reads_as_the_kernel_did(tmp_path):
    # The sample `tools/sample.sh` shows is a real-kernel image with a known kernel view.
    from importlib import resources
    packed = resources.files("pvepstore.data").joinpath("sample-oops.img.xz").read_bytes()
    assert packed == (FIXTURES / "oops-deflate" / "image.xz").read_bytes()
    out = tmp_path / "out"
    r = run_cli("parse", "--sample", "--extract", str(out))
    assert r.status == ExitStatus.SUCCESS
    assert {p.name: p.read_bytes() for p in out.iterdir()} == FX["oops-deflate"].kernel_view
