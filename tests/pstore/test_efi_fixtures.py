"""efi_pstore in OVMF variable stores written by the real Debian 6.1 kernel (tests/fixtures/efi-*).

Each fixture's ``kernel/`` is the guest kernel's own /sys/fs/pstore at the next boot; the reader
must give the same names and bytes from ``image.xz`` (the vars file = efidisk0), with the
format given and auto-detected.
"""

from __future__ import annotations

import lzma
import re

import pytest

from pvepstore.pstore import BytesSource, ReadOptions, read_image, read_source
from pvepstore.pstore.efi import EFI_PSTORE_GUID, generic_id, name_for_release, parse_dump_name, read_efi
from pvepstore.pstore.efivars import VarState, looks_like_varstore, parse_varstore
from pvepstore.pstore.model import Kind
from tests.conftest import load_fixtures


def _opts(fx) -> ReadOptions:
    """The writing kernel's release from the fixture: a store of Shutdown dumps does not name it."""
    return ReadOptions(kernel_release=fx.meta.get("kernel"))

EFI = [f for f in load_fixtures() if f.format == "efi"]
BY_NAME = {f.name: f for f in EFI}
REASON_OF = {"efi-oops": {"Oops"}, "efi-panic": {"Panic"}, "efi-reboot": {"Shutdown"},
             "efi-poweroff": {"Shutdown"}, "efi-sysrq-b": {"Emergency"}, "efi-erase": {"Oops"},
             "efi-q35-secboot": {"Oops", "Panic"}}


def _image(fx) -> bytes:
    return lzma.decompress((fx.path / "image.xz").read_bytes())


def test_efi_fixtures_present():
    assert {"efi-oops", "efi-panic", "efi-reboot", "efi-poweroff", "efi-sysrq-b", "efi-erase",
            "efi-q35-secboot"} <= set(BY_NAME)


@pytest.mark.parametrize("fmt", ["efi", "auto"])
@pytest.mark.parametrize("fx", EFI, ids=[f.name for f in EFI])
def test_records_equal_kernel_view(fx, fmt, unpack_dir):
    result = read_image(fx.unpack(unpack_dir), fmt=fmt, options=_opts(fx))
    assert result.layout.to_json()["format"] == "efi"
    got = {r.name: r.data for r in result.records}
    assert sorted(got) == sorted(fx.kernel_view)
    for name, data in fx.kernel_view.items():
        assert got[name] == data, f"{name} differs from the kernel's bytes"
    assert not [f for f in result.findings if f.severity.value == "error"]


@pytest.mark.parametrize("fx", EFI, ids=[f.name for f in EFI])
def test_record_fields_follow_name_and_text(fx):
    result = read_efi(BytesSource(_image(fx)), options=_opts(fx))
    prefix = f"dmesg-{name_for_release(fx.meta['kernel'])}-"  # efi up to 6.1, efi_pstore from 6.2
    mtimes = {n: v["mtime"] for n, v in fx.meta["kernel_files"].items()}
    for rec in result.records:
        assert rec.kind is Kind.DMESG and rec.backend == "efi" and not rec.erased
        # the file's mtime is the record's time (pstore_mkfile: inode mtime = record->time)
        assert rec.time_sec == mtimes[rec.name]
        # "<Reason>#<count> Part<part>" heads every part; the name carries count and part
        m = re.match(rb"(\w+)#(\d+) Part(\d+)\n", rec.data)
        assert m and rec.reason == m[1].decode() and rec.counter == int(m[2])
        assert rec.name == f"{prefix}{generic_id(rec.time_sec, int(m[3]), int(m[2]))}"
        assert rec.compressed   # Debian 6.1 and 6.12 compress with deflate ("-C" names)
    if fx.name in REASON_OF:
        assert {r.reason for r in result.records} == REASON_OF[fx.name]


@pytest.mark.parametrize("fx", EFI, ids=[f.name for f in EFI])
def test_fill_level_is_sane(fx):
    vs = parse_varstore(BytesSource(_image(fx)), include_deleted=True)
    res = read_efi(BytesSource(_image(fx)))
    st = res.store
    # OVMF_VARS_4M.fd: a 256 KiB variable store (0x40000 - the 0x48-byte FV header - 28)
    assert st.store_size == 0x40000 - 0x48 - 28 == vs.store_size
    assert 0 < st.pstore_bytes <= st.live_bytes <= st.used_bytes <= st.store_size
    assert st.used_bytes == st.live_bytes + vs.deleted_bytes
    assert st.pstore_variables >= len(fx.kernel_view)
    # every listed record is one variable of at most 1024 bytes plus a 60-byte header and its name
    assert st.pstore_bytes >= sum(60 for _ in fx.kernel_view)
    assert len([v for v in vs.variables if v.live and v.guid == EFI_PSTORE_GUID]) == st.pstore_variables
    if "store" in fx.meta and fx.meta["store"]:
        assert fx.meta["store"]["used_bytes"] == st.used_bytes


def test_erase_is_seen_only_forensically():
    fx = BY_NAME["efi-erase"]
    img = _image(fx)
    plain = read_efi(BytesSource(img))
    forensic = read_efi(BytesSource(img), forensic=True)
    erased = [r for r in forensic.records if r.erased]
    assert len(erased) == 1
    assert erased[0].name not in fx.kernel_view                     # the kernel no longer lists it
    assert erased[0].name not in {r.name for r in plain.records}
    assert erased[0].reason == "Oops" and erased[0].data.startswith(b"Oops#")
    assert {r.name for r in forensic.records if not r.erased} == set(fx.kernel_view)
    # the firmware marked the variable deleted; its bytes stay until a reclaim
    dead = [v for v in parse_varstore(BytesSource(img), include_deleted=True).variables
            if v.guid == EFI_PSTORE_GUID and not v.live]
    assert len(dead) == 1 and dead[0].status is VarState.DELETED
    # ReadOptions(include_erased=True) is --include-erased of `parse`
    via = read_source(BytesSource(img), fmt="auto", options=ReadOptions(include_erased=True))
    assert sorted(r.name for r in via.records) == sorted(r.name for r in forensic.records)


def test_other_formats_are_not_taken_for_efi():
    for fx in load_fixtures():
        if fx.format != "efi":
            head = lzma.decompress((fx.path / "image.xz").read_bytes())[:4096]
            assert not looks_like_varstore(BytesSource(head)), fx.name


def test_dump_names_as_the_kernel_scans_them():
    assert parse_dump_name("dump-type0-3-1-1796226240-C") == (0, 3, 1, 1796226240, True)
    assert parse_dump_name("dump-type0-3-1-1796226240-D") == (0, 3, 1, 1796226240, False)
    assert parse_dump_name("dump-type0-3-1-1796226240") == (0, 3, 1, 1796226240, False)
    assert parse_dump_name("dump-type0-3-1796226240") == (0, 3, 0, 1796226240, False)  # old format
    assert parse_dump_name("dump-type0-x") is None
    assert generic_id(1796226240, 3, 1) == 179622624003001


def test_store_fill_sequence():
    """efi-fill: 40 Oops dumps into a fresh 4M store, then the next start (meta.json has each step)."""
    fx = BY_NAME["efi-fill"]
    res = read_efi(BytesSource(_image(fx)))
    st = res.store
    assert st.used_percent > 97 and st.pstore_variables == len(fx.kernel_view) == len(res.records)
    parts: dict[int, set[int]] = {}
    for rec in res.records:
        parts.setdefault(rec.counter, set()).add(int(re.match(rb"\w+#\d+ Part(\d+)", rec.data)[1]))
    boot1 = fx.meta["boots"][0]["store_after"]
    boot2 = fx.meta["boots"][1]["store_after"]
    # boot 1: 19 complete dumps of 14 parts fit, the 20th only partly, Oopses 21..40 not at all
    assert boot1["pstore_variables"] == 277
    # boot 2 (the next start): the firmware reclaimed every deleted byte, and its one Oops got
    # only Part1..Part4 (the newest text, written first) into the space that freed
    assert boot2["used_bytes"] == boot2["live_bytes"] and boot1["used_bytes"] > boot1["live_bytes"]
    assert boot2["pstore_variables"] == 281 and fx.meta["boots"][1]["booted"]
    before = set(fx.meta["boots"][1]["views"]["mount"]["files"])      # boot 2's mount: boot 1's dumps
    assert len(before) == 277
    new = [r for r in res.records if r.name not in before]
    assert sorted(int(re.match(rb"\w+#\d+ Part(\d+)", r.data)[1]) for r in new) == [1, 2, 3, 4]
    assert all(len(parts[c]) == 14 for c in range(2, 20))


def test_backend_name_follows_the_writing_kernel():
    """6.1 names the files dmesg-efi-<id>; 6.2+ (efi_pstore_info.name = KBUILD_MODNAME)
    dmesg-efi_pstore-<id>.  The release comes from the records' own Oops/panic text."""
    from pvepstore.pstore.efi import backend_name_for
    fx = BY_NAME["efi-oops"]
    res = read_efi(BytesSource(_image(fx)))
    assert backend_name_for(res.records) == "efi"
    assert any(b"Tainted: G" in r.data and b"6.1.0-57-amd64" in r.data for r in res.records)
    newer = read_efi(BytesSource(_image(fx)), backend_name="efi_pstore")
    assert sorted(r.name for r in newer.records) == sorted(
        n.replace("dmesg-efi-", "dmesg-efi_pstore-") for n in fx.kernel_view)
    from dataclasses import replace
    fake = [replace(res.records[0], data=b"Oops#1 Part2\nCPU: 0 PID: 9 Comm: sh Not tainted 6.12.9-amd64 #1\n")]
    assert backend_name_for(fake) == "efi_pstore"
