"""The reader must list exactly what the real kernel listed in /sys/fs/pstore, byte for byte."""

from __future__ import annotations

import pytest

from pvepstore.pstore import read_image
from tests.conftest import load_fixtures

FIXTURES = load_fixtures()


def test_fixtures_exist():
    # The byte-identity tests below are the proof of the reader: never let them vanish.
    assert len(FIXTURES) >= 2, "no real-kernel fixtures found under tests/fixtures"


def _as_view(result) -> dict[str, bytes]:
    return {rec.name: rec.data for rec in result.records}


@pytest.mark.parametrize("fx", FIXTURES, ids=[f.name for f in FIXTURES])
def test_known_parameters_match_kernel_view(fx, unpack_dir):
    image = fx.unpack(unpack_dir)
    result = read_image(image, fx.params, offset=int(fx.meta.get("offset") or 0))
    view = _as_view(result)
    assert sorted(view) == sorted(fx.kernel_view)
    for name, data in fx.kernel_view.items():
        assert view[name] == data, f"{name} differs from the kernel's bytes"
    assert not [f for f in result.findings if f.severity.value == "error"]


@pytest.mark.parametrize("fx", FIXTURES, ids=[f.name for f in FIXTURES])
def test_discovered_layout_matches_kernel_view(fx, unpack_dir):
    image = fx.unpack(unpack_dir)
    result = read_image(image, None, offset=int(fx.meta.get("offset") or 0))
    assert _as_view(result) == fx.kernel_view
    if fx.kernel_view:
        assert result.layout.discovery["confidence"] in ("high", "medium")
