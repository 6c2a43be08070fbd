"""The pure qcow2 reader against images made by the real qemu-img from a real OVMF vars file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pvepstore.errors import InputError
from pvepstore.pstore.qcow2 import Qcow2Source, looks_like_qcow2
from pvepstore.pstore.source import BytesSource, FileSource

QEMU_IMG = shutil.which("qemu-img")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
pytestmark = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img not installed")


def _raw(tmp_path: Path) -> Path:
    """A vars-sized raw image: the real OVMF store (when installed) plus noise and a zero run."""
    base = OVMF_VARS.read_bytes() if OVMF_VARS.exists() else bytes(540672)
    data = bytearray(base)
    data[0x50000:0x52000] = os.urandom(0x2000)  # incompressible clusters next to compressible ones
    data[0x60000:0x70000] = bytes(0x10000)      # all zeros: qemu-img leaves such clusters unallocated
    raw = tmp_path / "vars.raw"
    raw.write_bytes(bytes(data))
    return raw


def _convert(raw: Path, out: Path, *opts: str) -> Path:
    subprocess.run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", *opts, str(raw), str(out)], check=True)
    return out


@pytest.mark.parametrize("opts", [(), ("-c",), ("-o", "cluster_size=4096"), ("-c", "-o", "cluster_size=512"),
                                  ("-o", "compat=0.10"), ("-c", "-o", "compat=0.10,cluster_size=2097152")])
def test_reads_the_guest_view_of_real_images(tmp_path, opts):
    raw = _raw(tmp_path)
    img = _convert(raw, tmp_path / "vars.qcow2", *opts)
    want = raw.read_bytes()
    with FileSource(img) as f:
        assert looks_like_qcow2(f)
        q = Qcow2Source(f)
        assert q.size == len(want)
        assert q.read_all() == want
        # unaligned reads across cluster boundaries
        for off, n in ((0, 1), (511, 1025), (0x4FFF0, 0x40), (len(want) - 7, 100), (len(want), 5)):
            assert q.read_at(off, n) == want[off:off + n]


def test_compressed_image_is_smaller_and_still_exact(tmp_path):
    raw = _raw(tmp_path)
    plain = _convert(raw, tmp_path / "p.qcow2")
    comp = _convert(raw, tmp_path / "c.qcow2", "-c")
    assert comp.stat().st_size < plain.stat().st_size  # really compressed clusters
    with FileSource(comp) as f:
        assert Qcow2Source(f).read_all() == raw.read_bytes()


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="qemu-io not installed")
def test_zero_flag_clusters_written_by_qemu(tmp_path):
    """``write -z`` on an allocated v3 image sets the L2 all-zeros flag (bit 0) and may keep the offset."""
    raw = _raw(tmp_path)
    img = _convert(raw, tmp_path / "z.qcow2")
    subprocess.run(["qemu-io", "-c", "write -z 0x50000 0x2000", "-c", "write -z 0 0x10000", str(img)],
                   check=True, capture_output=True)
    want = bytearray(raw.read_bytes())
    want[0x50000:0x52000] = bytes(0x2000)
    want[0:0x10000] = bytes(0x10000)
    with FileSource(img) as f:
        assert Qcow2Source(f).read_all() == bytes(want)


def test_refuses_a_backing_file(tmp_path):
    raw = _raw(tmp_path)
    subprocess.run([QEMU_IMG, "create", "-f", "qcow2", "-F", "raw", "-b", str(raw), str(tmp_path / "o.qcow2")],
                   check=True, capture_output=True)
    with FileSource(tmp_path / "o.qcow2") as f, pytest.raises(InputError, match="backing file"):
        Qcow2Source(f)


@pytest.mark.parametrize("method", [1, 2])
def test_refuses_an_encryption_method_in_a_real_header(tmp_path, method):
    """qemu-img's luks needs a CPU-time benchmark that fails under load: the field itself, deterministic."""
    img = bytearray(_convert(_raw(tmp_path), tmp_path / "p.qcow2").read_bytes())
    img[32:36] = method.to_bytes(4, "big")  # crypt_method: 1 AES, 2 LUKS
    with pytest.raises(InputError, match=f"encrypted \\(method {method}\\)"):
        Qcow2Source(BytesSource(bytes(img)))


def test_refuses_encryption(tmp_path):
    out = tmp_path / "e.qcow2"
    r = subprocess.run([QEMU_IMG, "create", "-f", "qcow2", "--object", "secret,id=s0,data=pw",
                        "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", str(out), "1M"], capture_output=True)
    if r.returncode:
        pytest.skip(f"qemu-img cannot make a luks image: {r.stderr.decode()[-200:]}")
    with FileSource(out) as f, pytest.raises(InputError, match="encrypted"):
        Qcow2Source(f)


@pytest.mark.parametrize("opt,match", [("extended_l2=on", "extended L2"), ("compression_type=zstd", "zstd")])
def test_refuses_what_it_does_not_read(tmp_path, opt, match):
    out = tmp_path / "x.qcow2"
    r = subprocess.run([QEMU_IMG, "create", "-f", "qcow2", "-o", opt, str(out), "1M"], capture_output=True)
    if r.returncode:
        pytest.skip(f"qemu-img cannot make {opt}")
    with FileSource(out) as f, pytest.raises(InputError, match=match):
        Qcow2Source(f)


def test_hostile_headers_are_input_errors(tmp_path):
    raw = _raw(tmp_path)
    good = bytearray(_convert(raw, tmp_path / "h.qcow2").read_bytes())
    with pytest.raises(InputError, match="not a qcow2"):
        Qcow2Source(BytesSource(b"\0" * 512))
    big = bytearray(good)
    big[24:32] = (1 << 50).to_bytes(8, "big")
    with pytest.raises(InputError, match="limit"):
        Qcow2Source(BytesSource(bytes(big)))
    l1 = bytearray(good)
    l1[40:48] = (len(good) + 4096).to_bytes(8, "big")
    with pytest.raises(InputError, match="L1 table"):
        Qcow2Source(BytesSource(bytes(l1)))
    # an L2 entry pointing past the file end
    q = Qcow2Source(BytesSource(bytes(good)))
    l2_off = q._l1[0] & 0x00FFFFFFFFFFFE00
    bad = bytearray(good)
    bad[l2_off:l2_off + 8] = ((1 << 63) | (len(good) + (1 << 20))).to_bytes(8, "big")
    with pytest.raises(InputError, match="outside the image"):
        Qcow2Source(BytesSource(bytes(bad))).read_at(0, 16)


def test_mutated_images_give_bytes_or_an_input_error(tmp_path):
    """Random byte flips in the header and tables of a real compressed image: never another exception,
    never more output than the virtual size."""
    import random

    raw = _raw(tmp_path)
    good = _convert(raw, tmp_path / "m.qcow2", "-c", "-o", "cluster_size=4096").read_bytes()
    q = Qcow2Source(BytesSource(good))
    l2 = sorted({e & 0x00FFFFFFFFFFFE00 for e in q._l1 if e})
    hot = list(range(0, 112)) + [o + i for o in l2 for i in range(0, 4096, 7)]
    rnd = random.Random(13)
    outcomes = {"bytes": 0, "error": 0}
    for _ in range(400):
        bad = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            bad[rnd.choice(hot)] = rnd.randrange(256)
        try:
            out = Qcow2Source(BytesSource(bytes(bad)), max_size=1 << 20).read_all()
            assert len(out) <= 1 << 20
            outcomes["bytes"] += 1
        except InputError:
            outcomes["error"] += 1
    assert outcomes["bytes"] and outcomes["error"]  # both paths were taken
