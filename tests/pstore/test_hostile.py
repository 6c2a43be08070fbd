"""Hostile images and careless inputs for the readers and `parse` (issue 11: 3, 4, 6, 7, 8, 9, 13).

Each class of problem has a test on a real fixture (or real fixture bytes) and,
where the class can be generated, a hypothesis property: no exception but
PvepstoreError with exit 2/3, bounded memory (tracemalloc peak) and bounded
bytes read.  No wall-clock assertions: work is counted instead.
"""

from __future__ import annotations

import io
import lzma
import os
import signal
import socket
import struct
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvepstore.cli import Environment, ExitStatus, main
from pvepstore.errors import PvepstoreError
from pvepstore.pstore import BytesSource, ReadOptions, read_image, read_source
from pvepstore.pstore.dump import part_header
from pvepstore.pstore.files import record_from_file
from pvepstore.pstore.model import Kind
from pvepstore.pstore.ramlayout import PERSISTENT_RAM_SIG, PRZ_HEADER
from pvepstore.pstore.ramoops import _wrapped_decimal, read_ramoops
from pvepstore.pstore.source import unpack_xz_sparse
from tests import hostile
from tests.conftest import load_fixtures, run_cli

FX = {f.name: f for f in load_fixtures()}
MiB = 1 << 20
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@contextmanager
def peak_memory():
    """Yield a one-item list that holds the tracemalloc peak (bytes) afterwards."""
    out = [0]
    tracemalloc.start()
    try:
        yield out
    finally:
        out[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


@contextmanager
def hang_guard(seconds: int = 20):
    def fail(*_):
        raise AssertionError("blocked: the input was opened or read as if it would end")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- 3: xz bombs -----------------------------------------------------------------------


def test_xz_bomb_is_unpacked_only_up_to_the_cap(tmp_path):
    bomb, _ = hostile.xz_bomb(tmp_path, gib=1)
    assert bomb.stat().st_size < MiB  # 1 GiB inside
    got = unpack_xz_sparse(bomb, tmp_path / "raw", limit=128 * MiB)
    assert got.truncated and got.size == 128 * MiB
    assert (tmp_path / "raw").stat().st_size == 128 * MiB


def test_xz_bomb_parse_reads_the_real_records_and_says_it_stopped(tmp_path):
    bomb, argv = hostile.xz_bomb(tmp_path, gib=1)
    r = run_cli("parse", str(bomb), *argv, "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    doc = r.json
    assert [rec["name"] for rec in doc["records"]] == sorted(FX["oops-deflate"].kernel_view)
    assert any("larger than" in f["message"] for f in doc["findings"])
    assert doc["layout"]["device_size"] == 128 * MiB


@SETTINGS
@given(chunks=st.lists(st.tuples(st.booleans(), st.integers(1, 300_000)), min_size=1, max_size=12),
       limit=st.integers(1, 2 * MiB))
def test_xz_unpack_never_writes_past_the_limit(tmp_path, chunks, limit):
    data = b"".join((b"\xff" if ff else b"\0") * n for ff, n in chunks)
    packed = tmp_path / "x.xz"
    packed.write_bytes(lzma.compress(data, preset=0))
    got = unpack_xz_sparse(packed, tmp_path / "raw", chunk=64 << 10, limit=limit)
    assert got.size == min(len(data), limit) == (tmp_path / "raw").stat().st_size
    assert got.truncated == (len(data) > limit)
    assert (tmp_path / "raw").read_bytes() == data[:limit]


# -- 4: memory bounded by constants, not by the image ----------------------------------


def test_sparse_gib_ramoops_with_crafted_headers_is_bounded(tmp_path):
    path, _ = hostile.sparse_ramoops(tmp_path)
    with peak_memory() as peak:
        result = read_image(path)
    assert peak[0] < 64 * MiB
    assert result.bytes_read < 8 * MiB  # headers of a hole-skipping scan, not the gigabyte
    assert [r.name for r in result.records] == ["dmesg-ramoops-0"]


def test_full_128m_image_json_is_streamed(tmp_path):
    path, _ = hostile.full_blk_128m(tmp_path)
    result = read_image(path)
    held = sum(r.size for r in result.records)
    assert len(result.records) == 2048
    env = Environment(stdout=_Sink(), stderr=io.StringIO(), environ={})
    with peak_memory() as peak:
        status = main(["parse", str(path), "--json"], env)
    assert status == ExitStatus.SUCCESS
    assert env.stdout.total > held  # every record's text was written
    # records held once plus one record's encoding at a time (was ~4x: the whole document twice)
    assert peak[0] < held * 1.5 + 32 * MiB, (peak[0], held)


def test_full_128m_image_report_analyses_a_bounded_amount_of_text(tmp_path, monkeypatch):
    from pvepstore.analysis import evidence
    from pvepstore.cli.parse import ANALYSIS_BYTES

    seen = []
    real = evidence.extract_crashes
    monkeypatch.setattr(evidence, "extract_crashes", lambda text: seen.append(len(text)) or real(text))
    path, _ = hostile.full_blk_128m(tmp_path)
    r = run_cli("parse", str(path), "--report")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert sum(seen) <= ANALYSIS_BYTES  # counted work, not time: 2048 records, 8 MiB analysed
    assert r.json["data"]["image"]["records_not_analysed"] == 2048 - len(seen)


def test_full_128m_human_output_analyses_a_bounded_amount_of_text(tmp_path, monkeypatch):
    from pvepstore.cli import render

    seen = []
    real = render.extract_crashes
    monkeypatch.setattr(render, "extract_crashes", lambda text: seen.append(len(text)) or real(text))
    path, _ = hostile.full_blk_128m(tmp_path)
    r = run_cli("parse", str(path))
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert r.stdout.count("\n==> dmesg-pstore_blk-") == 2048
    assert 0 < sum(seen) <= render.HEADLINE_ANALYSIS_BYTES


def test_record_bytes_per_image_are_budgeted():
    fx = FX["oops-deflate"]
    data = lzma.decompress((fx.path / "image.xz").read_bytes())
    full = read_source(BytesSource(data), None)
    first = full.records[0].size
    budget = read_source(BytesSource(data), None, options=ReadOptions(max_image_bytes=first))
    assert [r.name for r in budget.records] == [full.records[0].name]
    assert any("per image" in f.message for f in budget.findings)


class _Sink(io.TextIOBase):
    """stdout that counts what is written and keeps nothing (a pipe)."""

    total = 0

    def write(self, s: str) -> int:
        self.total += len(s)
        return len(s)


OPTION = st.one_of(st.none(), st.integers(0, 8), st.integers(0, 1 << 40), st.just(1 << 62))


@SETTINGS
@given(fmt=st.sampled_from(["pstore_blk", "ramoops", "auto"]), kmsg=OPTION, pmsg=OPTION,
       console=OPTION, ftrace=OPTION, cpus=st.one_of(st.none(), st.integers(1, 10_000_000)),
       record=OPTION, mem=OPTION)
def test_option_values_never_allocate_or_crash(fmt, kmsg, pmsg, console, ftrace, cpus, record, mem,
                                               tmp_path_factory):
    img = _raw("ivshmem-oops" if fmt == "ramoops" else "oops-deflate", tmp_path_factory)
    args = ["parse", str(img), "--format", fmt, "--json"]
    for flag, value in (("--kmsg-size", kmsg), ("--pmsg-size", pmsg), ("--console-size", console),
                        ("--ftrace-size", ftrace), ("--nr-cpus", cpus), ("--record-size", record),
                        ("--mem-size", mem)):
        if value is not None:
            args += [flag, str(value)]
    with peak_memory() as peak:
        r = run_cli(*args)
    assert r.status in (ExitStatus.SUCCESS, ExitStatus.USAGE, ExitStatus.INPUT), r.stderr
    assert "internal error" not in r.stderr
    assert peak[0] < 64 * MiB
    if r.status == ExitStatus.SUCCESS:
        assert r.json["bytes_read"] <= img.stat().st_size


def test_a_million_cpus_is_refused_with_a_hint(tmp_path):
    path, argv = hostile.ramoops_many_cpus(tmp_path)
    with peak_memory() as peak:
        r = run_cli("parse", str(path), *argv)
    assert r.status == ExitStatus.USAGE and "hint:" in r.stderr
    assert peak[0] < 16 * MiB


_RAW: dict[str, Path] = {}


def _raw(name: str, factory) -> Path:
    if name not in _RAW:
        _RAW[name] = FX[name].unpack(factory.mktemp(name))
    return _RAW[name]


# -- hostile ramoops headers on sparse files (3, 4, 7 generated) -----------------------

HEADER = st.tuples(st.integers(0, 4095),  # offset in 512-byte steps
                   st.sampled_from([PERSISTENT_RAM_SIG, PERSISTENT_RAM_SIG ^ 0x060100, 0]),
                   st.integers(-(1 << 31), (1 << 31) - 1), st.integers(-(1 << 31), (1 << 31) - 1),
                   st.sampled_from([b"", b"====", b"====1.2-D\n", b"====-9.9-C\n", b"text",
                                    b"====" + b"7" * 6000 + b"." + b"1" * 5000 + b"-D\n"]))


@settings(SETTINGS, max_examples=20)
@given(size_mib=st.sampled_from([1, 3, 64, 1024]), headers=st.lists(HEADER, min_size=1, max_size=6))
def test_hostile_ramoops_headers_on_sparse_files(tmp_path_factory, size_mib, headers):
    path = tmp_path_factory.mktemp("sparse") / "img"
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
        for slot, sig, start, size, body in headers:
            f.seek(min(slot * 512, size_mib * MiB - 4096))
            f.write(PRZ_HEADER.pack(sig, start, size) + body + b"Oops: x\n" * 8)
    with peak_memory() as peak:
        try:
            result = read_image(path, fmt="ramoops")
        except PvepstoreError as exc:  # only a clean, documented error may come out
            assert isinstance(exc, PvepstoreError)
            return
    assert peak[0] < 96 * MiB
    assert result.bytes_read < 40 * MiB  # one 32 MiB record at most, plus headers


# -- 6: zero-sized zones; ramoops discovery in the kernel's zone order -----------------


def test_pmsg_only_layout_parses(tmp_path):
    path, argv = hostile.zero_size_zones(tmp_path)
    r = run_cli("parse", str(path), *argv, "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert r.json["layout"]["dmesg"]["count"] == 0


def _custom_console_pmsg() -> bytearray:
    return bytearray(lzma.decompress((FX["ivshmem-custom-console-pmsg"].path / "image.xz").read_bytes()))


@pytest.mark.parametrize("console_size", [None, 120, 1])
def test_console_record_found_while_pmsg_zone_is_empty(console_size):
    # The real memory of a kernel with 64 KiB record/console/pmsg zones, as after a poweroff:
    # the pmsg zone empty (zapped), the console record short.  Ground truth: the same bytes
    # read with the kernel's parameters.
    fx = FX["ivshmem-custom-console-pmsg"]
    img = _custom_console_pmsg()
    layout_mem = fx.params
    console_off, pmsg_off = 14 * 65536, 15 * 65536
    img[pmsg_off + 4:pmsg_off + 12] = struct.pack("<ii", 0, 0)
    if console_size is not None:
        img[console_off + 4:console_off + 12] = struct.pack("<ii", 0, console_size)
    known = read_ramoops(BytesSource(bytes(img)), layout_mem)
    found = read_ramoops(BytesSource(bytes(img)), None)
    assert [r.name for r in known.records] == ["dmesg-ramoops-0", "dmesg-ramoops-1", "console-ramoops-0"]
    assert {r.name: r.data for r in found.records} == {r.name: r.data for r in known.records}
    assert found.layout.params.console_size == found.layout.params.pmsg_size == 65536
    assert not [f for f in found.findings if "without a ====" in f.message]


def test_discovery_of_the_unmodified_fixture_still_matches_the_kernel():
    fx = FX["ivshmem-custom-console-pmsg"]
    found = read_ramoops(BytesSource(bytes(_custom_console_pmsg())), None)
    assert {r.name: r.data for r in found.records} == fx.kernel_view


# -- 7: decimal headers of any length --------------------------------------------------


def test_huge_digit_header_is_read(tmp_path):
    path, _ = hostile.huge_digit_header(tmp_path)
    result = read_image(path)  # also the ivshmem collect path: read_ramoops on the bytes
    same = read_ramoops(BytesSource(path.read_bytes()), None)
    rec = result.records[0]
    assert rec.name == "dmesg-ramoops-0" and b"huge header" in rec.data
    assert rec.time_sec == _wrapped_decimal(b"9" * 5000) - (1 << 64)
    assert [r.data for r in same.records] == [r.data for r in result.records]


@SETTINGS
@given(neg=st.booleans(), digits=st.text("0123456789", min_size=1, max_size=12000))
def test_wrapped_decimal_is_the_kernels_modulo(neg, digits):
    raw = (b"-" if neg else b"") + digits.encode()
    got = _wrapped_decimal(raw)
    assert 0 <= got < 1 << 64
    if len(digits) < 4000:
        assert got == int(raw) % (1 << 64)


def test_other_decimal_fields_are_bounded():
    many = b"9" * 5000
    assert part_header(b"Oops#" + many + b" Part1\n") is None
    rec = record_from_file("dmesg-pstore_blk-0", b"Oops: Total " + many + b" times\nx")
    assert rec is not None and rec.counter is None


# -- 8: inputs that never end ----------------------------------------------------------


@pytest.mark.parametrize("command", ["parse", "explain"])
def test_fifo_socket_chardev_dir_are_refused_without_blocking(tmp_path, command):
    fifo, _ = hostile.fifo(tmp_path)
    sock_path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for path in (fifo, sock_path, Path("/dev/zero"), tmp_path, Path(str(fifo) + ".xz")):
            if path.suffix == ".xz":
                os.mkfifo(path)
            with hang_guard():
                r = run_cli(command, str(path))
            assert r.status == ExitStatus.INPUT, (path, r.stderr)
            assert r.stderr.startswith("pvepstore: error: cannot read ") and "hint:" in r.stderr
    finally:
        sock.close()


# -- 9: only a user-given argument is a usage error ------------------------------------


def test_malformed_image_without_options_is_a_finding(tmp_path):
    path, argv = hostile.malformed_front(tmp_path)
    r = run_cli("parse", str(path), *argv, "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert any(f["severity"] == "error" and "no layout" in f["message"] for f in r.json["findings"])
    # the same impossible sizes given by the user are bad arguments
    r = run_cli("parse", str(path), "--console-size", str(1 << 22))
    assert r.status == ExitStatus.USAGE


ZONE_SIGS = [0x43474244 ^ t for t in (0, 2, 3, 7)]


@SETTINGS
@given(headers=st.lists(st.tuples(st.integers(0, 255), st.sampled_from(ZONE_SIGS),
                                  st.integers(-(1 << 31), (1 << 31) - 1),
                                  st.integers(-(1 << 31), (1 << 31) - 1)), min_size=1, max_size=8))
def test_discovery_never_raises_on_hostile_zone_headers(headers):
    img = bytearray(MiB)
    for slot, sig, datalen, start in headers:
        img[slot * 4096:slot * 4096 + 12] = struct.pack("<Iii", sig, datalen, start)
    for fmt in ("pstore_blk", "ramoops"):
        result = read_source(BytesSource(bytes(img)), None, fmt=fmt)  # findings, never an exception
        assert result.bytes_read <= 2 * MiB


# -- 13: permission denied is an input error -------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
@pytest.mark.parametrize("command", ["parse", "explain"])
def test_unreadable_file_as_non_root_exits_3(tmp_path, command):
    img = tmp_path / "secret.img"
    img.write_bytes(bytes(4096))
    run_cli(command, str(img))  # warm up: the child must not import from root-only paths
    img.chmod(0)
    tmp_path.chmod(0o755)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nobody, same process image
        try:
            os.close(read_fd)
            os.setgid(65534)
            os.setuid(65534)
            env = Environment(stdout=io.StringIO(), stderr=io.StringIO(), environ={})
            status = main([command, str(img)], env)
            os.write(write_fd, f"{int(status)}\n{env.stderr.getvalue()}".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as fh:
        status, _, err = fh.read().decode().partition("\n")
    assert int(status) == ExitStatus.INPUT, err
    assert "permission denied" in err and "hint:" in err


# -- printing a fully written device: the fast path must not change what is shown -----


@SETTINGS
@given(data=st.binary(max_size=200) | st.text(max_size=80).map(lambda t: t.encode()))
def test_fast_plain_text_path_is_terminal_safe(data):
    from pvepstore.cli.render import _safe_text
    from pvepstore.text import terminal_safe

    assert _safe_text(data) == terminal_safe(data.decode("utf-8", errors="replace"))


def test_huge_numbers_in_record_text_are_not_an_internal_error(tmp_path):
    # the same class in the analysis of guest text (parse's headline, --report, explain)
    n = "9" * 5000
    text = (f"Oops#{n} Part1\nOops: Total {n} times\nBUG: kernel NULL pointer dereference\n"
            f"CPU: {n} PID: {n} Comm: sh Not tainted 6.1.0 #1\nCPU: {n} UID: 0 PID: {n} Comm: sh\n"
            "RIP: 0010:foo+0x1/0x2\nCall Trace:\n <TASK>\n foo+0x1/0x2\n </TASK>\n")
    log = tmp_path / "dmesg.txt"
    log.write_text(text)
    for args in (["explain", str(log)], ["explain", str(log), "--json"]):
        r = run_cli(*args)
        assert r.status == ExitStatus.SUCCESS, r.stderr
        assert "kernel_oops" in r.stdout  # the crash is still found and classified
