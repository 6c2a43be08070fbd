"""Builders of hostile pstore inputs (issue 11: items 3, 4, 6, 7, 8, 9), for tests and harnesses.

Each builder writes its input into ``directory`` and returns ``(path, argv)``:
``pvepstore parse <path> *argv`` is the run that used to exhaust memory, disk
or time, crash or hang.  Inputs are made from real-kernel fixture bytes where
a real image fits, and generated in seconds (sparse files, repeated xz
streams), so a resource-limited CLI test (RLIMIT_AS / RLIMIT_FSIZE) can run
them all.  Each run must end with exit 0 (findings) or a clear 2/3.
"""

from __future__ import annotations

import lzma
import os
import struct
from pathlib import Path
from typing import Callable

from pvepstore.pstore.ramlayout import PERSISTENT_RAM_SIG, PRZ_HEADER
from pvepstore.pstore.zoneformat import SIGNATURES, ZONE_HDR
from pvepstore.pstore.model import Kind

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MiB = 1 << 20
GiB = 1 << 30

Built = tuple[Path, list[str]]


def fixture_bytes(name: str) -> bytes:
    """The raw image of a real-kernel fixture (1 MiB: decompressed in memory)."""
    return lzma.decompress((FIXTURES / name / "image.xz").read_bytes())


def xz_bomb(directory: Path, *, gib: int = 2) -> Built:
    """A ~0.4 MiB ``.xz`` that unpacks to ``gib`` GiB: a real image, then 0xff (not holes).

    The xz format allows concatenated streams, so one compressed 16 MiB block
    repeated makes the bomb in milliseconds.
    """
    path = Path(directory) / "bomb.img.xz"
    filler = lzma.compress(b"\xff" * (16 * MiB), preset=0)
    with open(path, "wb") as out:
        out.write(lzma.compress(fixture_bytes("oops-deflate"), preset=0))
        for _ in range(gib * GiB // (16 * MiB)):
            out.write(filler)
    return path, []


def sparse_ramoops(directory: Path) -> Built:
    """1 GiB sparse file, two crafted ramoops headers: 512 bytes apart, so discovery takes
    512-byte records (a million dmesg zones), and a full 32 MiB "console" zone near the end."""
    path = Path(directory) / "sparse-ramoops.img"
    with open(path, "wb") as f:
        f.truncate(GiB)
        first = b"====1764130000.000000-D\n" + b"Oops: crafted\n" * 30
        f.write(PRZ_HEADER.pack(PERSISTENT_RAM_SIG, 0, len(first)) + first)
        f.seek(512)
        f.write(PRZ_HEADER.pack(PERSISTENT_RAM_SIG, 0, 32 * MiB - 12))
        f.seek(GiB - 32 * MiB)
        f.write(PRZ_HEADER.pack(PERSISTENT_RAM_SIG, 0, 32 * MiB - 12))
        f.write(b"console line of a crafted zone\n" * (32 * MiB // 31 - 1))
    return path, []


def full_blk_128m(directory: Path, *, fixture: str = "oops-nocompress") -> Built:
    """128 MiB pstore_blk image whose 2048 64-KiB zones all hold a valid record: the real
    kernel-written zones of ``fixture`` (dmesg zones 0 and 1) repeated."""
    path = Path(directory) / f"full-128m-{fixture}.img"
    raw = fixture_bytes(fixture)
    zones = [raw[i * 65536:(i + 1) * 65536] for i in range(2)]
    sig = struct.pack("<I", SIGNATURES[Kind.DMESG])
    assert all(z[:4] == sig for z in zones), "fixture zones 0 and 1 must hold dmesg records"
    with open(path, "wb") as f:
        for i in range(128 * MiB // 65536):
            f.write(zones[i % 2])
    return path, []


def huge_digit_header(directory: Path, digits: int = 5000) -> Built:
    """A real ramoops image (ivshmem-oops) whose first record header is ``====`` + 5,000 digits."""
    path = Path(directory) / "digits.img"
    img = bytearray(fixture_bytes("ivshmem-oops"))
    text = b"====" + b"9" * digits + b"." + b"7" * digits + b"-D\n" + b"Oops: huge header\n"
    img[0:PRZ_HEADER.size + len(text)] = PRZ_HEADER.pack(PERSISTENT_RAM_SIG, 0, len(text)) + text
    path.write_bytes(bytes(img))
    return path, []


def ramoops_many_cpus(directory: Path) -> Built:
    """A real ramoops image with per-CPU ftrace over a million CPUs (1.35 GiB before the fix)."""
    path = Path(directory) / "ramoops-cpus.img"
    path.write_bytes(fixture_bytes("ivshmem-oops"))
    return path, ["--format", "ramoops", "--nr-cpus", "1000000", "--ftrace-size", "100"]


def zero_size_zones(directory: Path) -> Built:
    """A pmsg-only layout the kernel accepts (kmsg_size=0) on a real image."""
    path = Path(directory) / "zero-zones.img"
    path.write_bytes(fixture_bytes("oops-deflate"))
    return path, ["--kmsg-size", "0", "--pmsg-size", "64", "--console-size", "0"]


def malformed_front(directory: Path) -> Built:
    """A console zone header claiming ~2 GiB in front of nothing: no size option given."""
    path = Path(directory) / "malformed-front.img"
    img = bytearray(MiB)
    img[0:12] = ZONE_HDR.pack(SIGNATURES[Kind.CONSOLE], 0x7FFFFFF0, 0)
    path.write_bytes(bytes(img))
    return path, []


def fifo(directory: Path) -> Built:
    """A FIFO nobody writes to: opening it for reading used to block forever."""
    path = Path(directory) / "image.fifo"
    os.mkfifo(path)
    return path, []


def _cached(build: Callable[[Path], Built]) -> Callable[[Path], Built]:
    """Build once per directory: a harness calls a builder once per output mode."""
    done: dict[Path, Built] = {}

    def wrapper(directory: Path) -> Built:
        key = Path(directory).resolve()
        if key not in done or not done[key][0].exists():
            done[key] = build(Path(directory))
        return done[key]
    wrapper.__doc__ = build.__doc__
    return wrapper


# Images for `pvepstore parse <path> *argv` (any output mode); file names differ, so
# every builder may share one directory.
IMAGE_BUILDERS: dict[str, Callable[[Path], Built]] = {
    "xz_bomb": _cached(xz_bomb),
    "sparse_ramoops_1g": _cached(sparse_ramoops),
    "full_blk_128m": _cached(full_blk_128m),
    "full_blk_128m_deflate": _cached(lambda d: full_blk_128m(d, fixture="oops-deflate")),
    "huge_digit_header": _cached(huge_digit_header),
    "ramoops_many_cpus": _cached(ramoops_many_cpus),
    "zero_size_zones": _cached(zero_size_zones),
    "malformed_front": _cached(malformed_front),
}
BUILDERS: dict[str, Callable[[Path], Built]] = {**IMAGE_BUILDERS, "fifo": fifo}


def build_all(directory: Path) -> dict[str, Built]:
    """Every hostile input, each in its own subdirectory of ``directory``."""
    out = {}
    for name, build in BUILDERS.items():
        sub = Path(directory) / name
        sub.mkdir(parents=True, exist_ok=True)
        out[name] = build(sub)
    return out


# --- hostile inputs of the other classes (items 2, 10, 11), for the resource-limited harness ---

def backtracking_text(size: int) -> str:
    """Crash text whose shapes made the old frame/title patterns super-linear (item 2):
    a `BUG:` line, `Call Trace:`, then lines of long blank runs that end in a character
    no pattern accepts, long hex/digit runs, and unterminated `[<`/`(`/`+0x` fragments."""
    head = ("BUG: kernel NULL pointer dereference, address: 0000000000000000\n"
            "RIP: 0010:" + " " * 64 + "\n"
            "Call Trace:\n <TASK>\n")
    shapes = [" " * 2400 + "!",
              "\t" * 1200 + " ? " + " " * 1200 + "!",
              "[<" + "f" * 1500 + " " * 900 + "!",
              " ? func+0x" + "1" * 2000 + "/",
              "(" * 1200 + " " * 1200 + "!",
              "RIP: 0010:" + " " * 2000 + "x" * 300 + "+",
              "Modules linked in:" + " a" * 1200 + " " * 1000 + "!"]
    out = [head]
    total = len(head)
    i = 0
    while total < size:
        line = shapes[i % len(shapes)] + "\n"
        out.append(line)
        total += len(line)
        i += 1
    return "".join(out)[:size]


def yaml_alias_bomb(levels: int = 9) -> str:
    """A billion-laughs configuration (item 11): 10**levels strings from a few hundred bytes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, levels):
        refs = ", ".join([f"*a{n - 1}"] * 10)
        lines.append(f"a{n}: &a{n} [{refs}]")
    lines.append(f"state_dir: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def corrupt_archive(root: Path) -> None:
    """An archive with one usable incident and one entry of every corrupt shape (item 10)."""
    import json

    good = root / "101" / "20260101T000000Z-aaaaaaaaaaaa"
    good.mkdir(parents=True)
    event = {"specversion": "1.0", "id": "a" * 64, "time": "2026-01-01T00:00:00Z",
             "type": "io.pvepstore.incident", "source": "pvepstore", "data": {
                 "vmid": 101, "verdict": {"kind": "kernel_oops", "title": "BUG: test"}}}
    (good / "incident.json").write_text(json.dumps(event))
    (root / "12x").mkdir()
    (root / "garbage").mkdir()
    (root / "102").write_text("a file where a directory belongs")
    bad = root / "101"
    for name, content in [("20260102T000000Z-notjson00000", "{not json"),
                          ("20260103T000000Z-alist0000000", "[1, 2, 3]"),
                          ("20260104T000000Z-dictkind0000",
                           json.dumps({**event, "id": "b" * 64, "data": {"verdict": {"kind": {"x": 1}}}})),
                          ("20260105T000000Z-\x1b]52;c;AAAA\x07", json.dumps({**event, "id": "\x1b[2J" * 3})),
                          ("not-a-stamp", json.dumps(event))]:
        d = bad / name
        d.mkdir()
        (d / "incident.json").write_text(content)
    (bad / "20260106T000000Z-nofile000000").mkdir()
    (bad / "20260107T000000Z-symlink00000").symlink_to("/etc")
