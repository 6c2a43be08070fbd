"""The README's per-kernel capture table is a claim about fixtures (issue 18): every fixture it
names exists, was written by the kernel of its column, and its kernel view (the guest's own
/sys/fs/pstore) holds a record of the row's kind for "yes" and none for "no"."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SECTION = "## What each backend captures, per guest kernel"
# the record kind (first line "<Reason>#<n> Part<m>") that proves each event row
KIND = {"non-fatal Oops": "Oops", "Oops": "Oops", "Oops, then reset/poweroff within ~0.5 s": "Oops",
        "panic": "Panic", "clean reboot/poweroff (`max_reason=4`)": "Shutdown",
        "clean reboot / poweroff": "Shutdown", "emergency restart (`kernel.panic=N`)": "Emergency",
        "emergency restart (sysrq-b)": "Emergency"}
COLUMNS = {2: r"6\.1\.\d+-\d+-amd64", 3: r"6\.12\.\d+\+deb13-amd64"}


def _rows() -> list[tuple[str, str, int, str]]:
    """(event, cell, column, fixture) for every fixture named in the table."""
    text = (ROOT / "README.md").read_text()
    assert SECTION in text
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    table = [line for line in body.splitlines() if line.startswith("|")]
    out = []
    for line in table[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        event = cells[1]
        for col in COLUMNS:
            for name in re.findall(r"`([a-z0-9-]+)`", cells[col]):
                if name != "always_kmsg_dump":
                    out.append((event, cells[col], col, name))
    return out


ROWS = _rows()


def test_the_table_names_fixtures_for_both_kernels():
    assert {col for _, _, col, _ in ROWS} == set(COLUMNS)
    assert len(ROWS) >= 30, ROWS


@pytest.mark.parametrize("event,cell,col,name", ROWS, ids=[f"{r[3]}:{r[0][:20]}" for r in ROWS])
def test_a_cell_is_what_its_fixture_shows(event, cell, col, name):
    meta = json.loads((FIXTURES / name / "meta.json").read_text())
    assert re.fullmatch(COLUMNS[col], meta["kernel"]), (name, meta["kernel"])
    kinds = set()
    view = FIXTURES / name / "kernel"
    for f in sorted(view.iterdir()) if view.is_dir() else []:
        if f.name.startswith("dmesg-"):
            # "<Reason>#<n> Part<m>"; an uncompressed record has pstorefs' "Oops: Total N times" above it
            m = re.search(rb"^(\w+)#\d+ Part\d+$", f.read_bytes()[:256], re.M)
            assert m, (name, f.name)
            kinds.add(m.group(1).decode())
    want = KIND[event]
    if cell.startswith("no"):
        assert want not in kinds, (name, kinds)
    else:
        assert cell.startswith(("yes", "with")), cell
        assert want in kinds, (name, kinds)
