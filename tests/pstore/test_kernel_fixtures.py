"""The reader must list exactly what the real kernel listed in /sys/fs/pstore, byte for byte.

pstore_blk disks and ramoops memory from Proxmox's ivshmem device (``format`` in meta.json).
"""

from __future__ import annotations

import pytest

from pvepstore.pstore import ReadOptions, read_image, read_source
from pvepstore.pstore.ramoops import compute_ramoops_layout, looks_like_ramoops
from pvepstore.pstore.source import FileSource
from tests.conftest import load_fixtures

FIXTURES = load_fixtures()


def test_fixtures_exist():
    # The byte-identity tests below are the proof of the reader: never let them vanish.
    assert len(FIXTURES) >= 2, "no real-kernel fixtures found under tests/fixtures"
    assert len([f for f in FIXTURES if f.format == "ramoops"]) >= 6, "ramoops (ivshmem) fixtures missing"


def _as_view(result) -> dict[str, bytes]:
    return {rec.name: rec.data for rec in result.records}


@pytest.mark.parametrize("fx", FIXTURES, ids=[f.name for f in FIXTURES])
def test_known_parameters_match_kernel_view(fx, unpack_dir):
    image = fx.unpack(unpack_dir)
    result = read_image(image, fx.params, offset=int(fx.meta.get("offset") or 0), fmt=fx.format,
                        options=ReadOptions(kernel_release=fx.meta.get("kernel")))
    view = _as_view(result)
    assert sorted(view) == sorted(fx.kernel_view)
    for name, data in fx.kernel_view.items():
        assert view[name] == data, f"{name} differs from the kernel's bytes"
    assert not [f for f in result.findings if f.severity.value == "error"]


@pytest.mark.parametrize("fx", FIXTURES, ids=[f.name for f in FIXTURES])
def test_discovered_layout_matches_kernel_view(fx, unpack_dir):
    image = fx.unpack(unpack_dir)
    result = read_image(image, None, offset=int(fx.meta.get("offset") or 0), fmt=fx.format,
                        options=ReadOptions(kernel_release=fx.meta.get("kernel")))
    assert _as_view(result) == fx.kernel_view
    if fx.kernel_view:
        assert result.layout.discovery["confidence"] in ("high", "medium")


RAMOOPS = [f for f in FIXTURES if f.format == "ramoops"]


@pytest.mark.parametrize("fx", RAMOOPS, ids=[f.name for f in RAMOOPS])
def test_ramoops_memory_is_detected_and_read_like_the_kernel(fx, unpack_dir):
    # `parse` without --format: the live ivshmem file must be recognised as ramoops
    with FileSource(fx.unpack(unpack_dir)) as src:
        assert looks_like_ramoops(src)
        result = read_source(src, None)
    assert result.layout.to_json()["format"] == "ramoops"
    assert _as_view(result) == fx.kernel_view


@pytest.mark.parametrize("fx", RAMOOPS, ids=[f.name for f in RAMOOPS])
def test_ramoops_layout_is_the_kernels(fx, unpack_dir):
    # every zone ramoops_probe() set up carries its header at the offset pvepstore computes
    image = fx.unpack(unpack_dir)
    layout = compute_ramoops_layout(fx.meta["image_size"], fx.params)
    headers = {h["off"] for h in fx.meta["zone_headers"]}
    assert {z.offset for z in layout.zones} == headers
    reasons = {r.name: r.reason for r in read_image(image, fx.params, fmt="ramoops").records}
    for name, head in ((n, d.split(b"\n", 1)[0]) for n, d in fx.kernel_view.items()):
        if name.startswith("dmesg-"):
            assert head.decode().startswith(reasons[name] + "#"), (name, head)
