"""`pvepstore parse` in every output mode over every real-kernel fixture of every format (issue 11.5).

The human output once crashed on every ramoops file while the reader tests were
green: the outputs are part of the product, so each one runs on each fixture,
through the real CLI (the .xz as a user would pass it), and must show exactly
what the kernel showed.
"""

from __future__ import annotations

import json

import pytest

from pvepstore.cli import ExitStatus
from tests.conftest import load_fixtures, run_cli

FIXTURES = load_fixtures()
MODES = ("human", "json", "report", "extract")


def _args(fx) -> list[str]:
    offset = int(fx.meta.get("offset") or 0)
    # efi_pstore's file names follow the writing kernel (efi up to 6.1, efi_pstore from 6.2), which
    # a store holding only Shutdown dumps does not name: the operator says it (the guest's uname -r)
    kernel = ["--kernel", fx.meta["kernel"]] if fx.format == "efi" and fx.meta.get("kernel") else []
    return ["parse", str(fx.path / "image.xz")] + (["--offset", str(offset)] if offset else []) + kernel


def test_efi_names_follow_the_writing_kernel():
    """6.12's Shutdown dumps carry no release: without --kernel the 6.1 name, with it the kernel's own;
    an Oops names its kernel itself, so --kernel is not needed there."""
    by = {f.name: f for f in FIXTURES}
    shutdown = str(by["d13-efi-poweroff"].path / "image.xz")
    names = lambda *a: {r["name"].rsplit("-", 1)[0] for r in run_cli("parse", *a, "--json").json["records"]}  # noqa: E731
    assert names(shutdown) == {"dmesg-efi"}
    assert names(shutdown, "--kernel", "6.12.117+deb13-amd64") == {"dmesg-efi_pstore"} == set(by["d13-efi-poweroff"].kernel_view and {n.rsplit("-", 1)[0] for n in by["d13-efi-poweroff"].kernel_view})
    assert names(str(by["d13-efi-oops"].path / "image.xz")) == {"dmesg-efi_pstore"}
    assert names(str(by["efi-oops"].path / "image.xz"), "--kernel", "6.1.0-57-amd64") == {"dmesg-efi"}


def test_every_format_is_covered():
    assert {f.format for f in FIXTURES} == {"pstore_blk", "ramoops", "efi"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fx", FIXTURES, ids=[f.name for f in FIXTURES])
def test_parse_output_mode_on_fixture(fx, mode, tmp_path):
    view = fx.kernel_view
    extra = {"human": [], "json": ["--json"], "report": ["--report"],
             "extract": ["--extract", str(tmp_path / "out")]}[mode]
    r = run_cli(*_args(fx), *extra)
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    if mode == "json":
        doc = r.json
        assert {rec["name"]: rec["size"] for rec in doc["records"]} == {n: len(d) for n, d in view.items()}
        assert doc["layout"]["format"] == fx.format
        # streamed output is the same document json.dumps would print
        assert r.stdout == json.dumps(doc, indent=2, ensure_ascii=True) + "\n"
    elif mode == "report":
        event = r.json
        assert event["specversion"] == "1.0"
        assert {rec["name"] for rec in event["data"]["records"]} <= set(view)
    elif mode == "extract":
        out = tmp_path / "out"
        got = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}
        assert got == view
    if mode in ("human", "extract"):
        assert r.stdout.startswith("image: ")
        layout_line = r.stdout.splitlines()[1]
        assert layout_line.startswith("layout: ")
        assert ("OVMF variable store" if fx.format == "efi" else "dmesg zones") in layout_line
        for name in view:
            assert f"==> {name} <==" in r.stdout
        if not view:
            assert "no records" in r.stdout
