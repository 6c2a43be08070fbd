"""Golden tests: crash extraction against ABRT's and Clear Linux's expected outputs."""

from __future__ import annotations

import pytest

from pvepstore.analysis import CrashKind, extract_crashes
from pvepstore.analysis.logline import split_lines

from .corpus import CORPUS, expected, needs_corpus, read

ABRT = expected("abrt")
# Where pvepstore deliberately differs from abrt-dump-oops (see docs/analysis.md):
#  not_oops2 - ABRT skips everything before its own "Reported N kernel oopses to Abrt" bookkeeping line;
#  oops6     - a user-space "traps: chrome[...] trap invalid opcode" is not a kernel crash.
ABRT_DIFFERENCES = {"not_oops2", "oops6"}
ABRT_CASES = sorted(k for k, v in ABRT.items()
                    if "expected_oops_count" in v and k not in ABRT_DIFFERENCES
                    and any(not f.endswith(".right") for f in v["files"]))


def _abrt_input(case: str) -> str:
    name = next(f for f in ABRT[case]["files"] if not f.endswith(".right"))
    return read(f"abrt/{name}" if "/" in name else f"abrt/examples/{name}")


@needs_corpus
@pytest.mark.parametrize("case", ABRT_CASES)
def test_abrt_count_first_lines_and_taint(case):
    want = ABRT[case]
    crashes = extract_crashes(_abrt_input(case))
    assert len(crashes) == want["expected_oops_count"]
    assert [c.first_line for c in crashes] == want.get("first_lines", [])
    assert [c.taint for c in crashes if c.taint] == want.get("tainted_short", [])
    for crash, version in zip(crashes, want.get("versions", [])):
        if version:  # ABRT has no version for one-line MCE reports; we may know it from "Linux version"
            assert crash.kernel == version


@needs_corpus
def test_abrt_documented_differences_still_hold():
    # If either of these changes, the differences table in docs/analysis.md must change too.
    assert [c.kind for c in extract_crashes(_abrt_input("not_oops2"))] == [CrashKind.OOPS]
    assert extract_crashes(_abrt_input("oops6")) == []


@needs_corpus
@pytest.mark.parametrize("case,letters", [
    ("koops-tainted-bg1", "GB"), ("koops-tainted-g.template", "G"),
    ("koops-tainted-insane.template", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"), ("koops-tainted-spaces", None)])
def test_abrt_taint_fixtures(case, letters):
    from pvepstore.analysis.taint import taint_letters
    assert taint_letters(read(f"abrt/examples/{case}")) == letters


@needs_corpus
def test_abrt_kernel_version_fixtures():
    assert extract_crashes(read("abrt/examples/oops-kernel-3.x.x"))[0].kernel == "3.0.0-3.fc16.i686.PAE"
    assert extract_crashes(read("abrt/examples/koops-tainted-g.template"))[0].kernel == \
        "3.1.0-0.rc9.git0.0.fc16.x86_64"


@needs_corpus
def test_abrt_same_duphash_pairs():
    def dh(name):
        crashes = extract_crashes(read(f"abrt/examples/{name}"))
        assert len(crashes) == 1
        return crashes[0].duphash
    assert dh("oops4.right") == dh("oops-same-as-oops4.right") is not None
    assert dh("hash-gen-oops6.right") == dh("hash-gen-same-as-oops6.right") is not None
    assert dh("nmi_oops_hash.test") == dh("nmi_oops_hash.right") is not None
    assert dh("hash-gen-short-oops.right")
    assert dh("oops4.right") != dh("hash-gen-oops6.right")


@needs_corpus
def test_abrt_negatives():
    assert extract_crashes(read("abrt/examples/not_oops1.test")) == []  # "WARNING:" from openvpn, not the kernel
    for name in ("xorg_journal_crash1.test", "xorg_journal_crash2.test"):
        assert extract_crashes(read(f"abrt/examples/{name}")) == []


@needs_corpus
def test_foreign_host_lines_dropped_on_request():
    text = read("abrt/examples/not_oops_foreign_hostname.test")
    assert len(extract_crashes(text)) == 1  # by default every host's kernel lines count
    assert extract_crashes(text, host="pve-guest") == []


@needs_corpus
def test_pstore_efi_part_headers_are_dropped():
    lines, headers = split_lines(read("abrt/pstoreoops/dmesg-efi-1"))
    assert headers[0].reason == "Panic" and headers[0].count == 2 and headers[0].part == 1
    assert not any(line.text.startswith("Panic#") for line in lines)
    crash, = extract_crashes(read("abrt/pstoreoops/right.dmesg-efi"))
    assert crash.first_line.startswith("BUG: unable to handle kernel NULL pointer dereference")
    assert crash.rip.function == "radeon_cp_init_ring_buffer" and crash.rip.module == "radeon"


@needs_corpus
def test_vmcore_dmesg_paging_request():
    crashes = extract_crashes(read("abrt/vmcore-harvest/vmcore-dmesg.txt"))
    paging = [c for c in crashes if "paging request" in c.first_line]
    assert paging and paging[0].frames[0].function == "source_load"  # ABRT: "kernel paging request at source_load"
    assert paging[0].kernel and paging[0].kernel.startswith("3.10.0")


CLEAR = expected("clearlinux")
CLEAR_CASES = sorted(k for k, v in CLEAR.items() if "reason" in v)
# Clear Linux gathers frames for the first reason across the following, unrelated
# reports (ALSA: a later WARNING; soft_lockup: the second, interleaved lockup).
# Our crash ends where its own report ends, so only reason/version/taint are compared.
CLEAR_OWN_FRAMES_ONLY = {"ALSA.txt", "soft_lockup.txt"}


@needs_corpus
@pytest.mark.parametrize("case", CLEAR_CASES)
def test_clearlinux_reason_and_payload(case):
    want = CLEAR[case]
    crashes = extract_crashes(read(f"clearlinux/oops_test_files/{case}"))
    assert crashes and crashes[0].first_line == want["reason"]
    crash = crashes[0]
    for item in want["payload_contains"]:
        if item.startswith("Kernel Version : "):
            assert crash.kernel and item.split(" : ", 1)[1].startswith(crash.kernel)
        elif item.startswith("Tainted : "):
            # Clear Linux stops at the first run of spaces ("PF" for "PF          O"); the kernel's
            # field has every letter, which is what we report.
            flags = item.split(" : ", 1)[1]
            assert crash.taint == None if flags == "Not tainted" else set(flags.replace(" ", "")) <= set(crash.taint)
        elif case in CLEAR_OWN_FRAMES_ONLY:
            continue
        elif item.startswith("#"):
            # Clear Linux numbers the call-trace frames, without the RIP/EIP frame.
            number, rest = item[1:].split(" ", 1)
            trace = crash.frames[1:] if _has_ip(crash) else crash.frames
            frame = trace[int(number) - 1]
            assert (frame.function, frame.reliable) == (rest.removeprefix("? "), not rest.startswith("? "))
        else:
            # Module lines, wrapped by Clear Linux at a fixed width (so a name may be cut in two).
            joined = " ".join(crash.modules)
            for name in item.removeprefix("Modules : ").split():
                name = name.split("(", 1)[0]  # "vboxpci(OE)": we keep the name, taint is reported separately
                assert name in joined or name.strip("[]:") in ("last", "unloaded", "speedstep_lib"), name


def _has_ip(crash) -> bool:
    from pvepstore.analysis.frame import parse_ip
    return any(parse_ip(line.text) for line in crash.lines)


@needs_corpus
def test_every_clearlinux_file_yields_a_crash():
    for path in sorted((CORPUS / "clearlinux" / "oops_test_files").iterdir()):
        assert extract_crashes(path.read_text(errors="replace")), path.name
