"""`pvepstore parse` on an OVMF vars file (efidisk0) with efi_pstore records from the real kernel."""

from __future__ import annotations

from pvepstore.cli import ExitStatus
from tests.conftest import load_fixtures, run_cli

FX = {f.name: f for f in load_fixtures()}


def test_parse_format_efi_extracts_the_kernels_files(tmp_path):
    fx = FX["efi-erase"]
    out = tmp_path / "out"
    r = run_cli("parse", str(fx.path / "image.xz"), "--format", "efi", "--extract", str(out))
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == fx.kernel_view
    assert "Oops" in r.stdout


def test_parse_include_erased_shows_the_deleted_variable(tmp_path):
    fx = FX["efi-erase"]
    r = run_cli("parse", str(fx.path / "image.xz"), "--include-erased", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    doc = r.json
    erased = [rec for rec in doc["records"] if rec["erased"]]
    assert len(erased) == 1 and erased[0]["name"] not in fx.kernel_view
    assert {rec["name"] for rec in doc["records"] if not rec["erased"]} == set(fx.kernel_view)
    lay = doc["layout"]
    assert lay["format"] == "efi" and lay["store_size"] == 262044
    assert lay["used_bytes"] > lay["live_bytes"] >= lay["pstore_bytes"] > 0
    r = run_cli("parse", str(fx.path / "image.xz"), "--json")
    assert not [rec for rec in r.json["records"] if rec["erased"]]


def test_parse_efi_refuses_size_options():
    r = run_cli("parse", str(FX["efi-oops"].path / "image.xz"), "--format", "efi", "--record-size", "4")
    assert r.status == ExitStatus.USAGE and "Traceback" not in r.stderr
