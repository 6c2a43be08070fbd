"""`parse --extract` never follows a link (issue 11 items 1 and 8), on a real kernel's image.

Policy: DIR and DIR/erased must be real directories (a symlink is refused, exit 3);
every record is written to a fresh O_EXCL temporary name and renamed over its
kernel name, so whatever was there -- a file of an earlier run, a planted
symlink, hard link or FIFO -- is replaced as a name and never opened.
"""

from __future__ import annotations

import os
import stat

import pytest

from pvepstore.cli import ExitStatus
from tests.conftest import FIXTURES, load_fixtures, run_cli
from tests.planting import KINDS, Outside, fifo_got_nothing, plant

FX = {f.name: f for f in load_fixtures()}
pytestmark = pytest.mark.skipif("erase" not in FX, reason="fixture missing")
IMAGE = FIXTURES / "erase" / "image.xz"  # dmesg-pstore_blk-1 visible, dmesg-pstore_blk-0 erased


def extract(out):
    return run_cli("parse", str(IMAGE), "--kmsg-size", "64", "--include-erased", "--extract", str(out))


def kernel_bytes():
    return FX["erase"].kernel_view["dmesg-pstore_blk-1"]


@pytest.mark.parametrize("where", ["dmesg-pstore_blk-1", "erased/dmesg-pstore_blk-0"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_entry_is_replaced_never_followed_or_opened(tmp_path, kind, where):
    outside = Outside(tmp_path / "outside")
    out = tmp_path / "out"
    reader = plant(out / where, kind, outside)
    r = extract(out)
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert fifo_got_nothing(reader) and outside.unchanged()
    for name in ("dmesg-pstore_blk-1", "erased/dmesg-pstore_blk-0"):
        st = (out / name).lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
    assert (out / "dmesg-pstore_blk-1").read_bytes() == kernel_bytes()
    assert not [p for p in out.rglob("*.tmp")]


@pytest.mark.parametrize("kind", ["symlink-dir", "symlink-file", "fifo", "regular"])
def test_an_erased_entry_that_is_not_a_real_directory_is_refused(tmp_path, kind):
    outside = Outside(tmp_path / "outside")
    out = tmp_path / "out"
    reader = plant(out / "erased", kind, outside)
    r = extract(out)
    assert r.status == ExitStatus.INPUT, r.stderr
    assert "erased: it is" in r.stderr and len(r.stderr.splitlines()) == 2 and "Traceback" not in r.stderr
    assert fifo_got_nothing(reader) and outside.unchanged()


def test_a_symlinked_extract_dir_is_refused(tmp_path):
    outside = Outside(tmp_path / "outside")
    (tmp_path / "out").symlink_to(outside.root / "victimdir")
    r = extract(tmp_path / "out")
    assert r.status == ExitStatus.INPUT and "symbolic link" in r.stderr, r.stderr
    assert outside.unchanged()


def test_a_directory_under_a_record_name_is_refused_cleanly(tmp_path):
    (tmp_path / "out" / "dmesg-pstore_blk-1").mkdir(parents=True)
    r = extract(tmp_path / "out")
    assert r.status == ExitStatus.INPUT and "is a directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_extracting_twice_replaces_the_files_of_the_first_run(tmp_path):
    out = tmp_path / "out"
    assert extract(out).status == ExitStatus.SUCCESS
    first = (out / "dmesg-pstore_blk-1").stat().st_ino
    assert extract(out).status == ExitStatus.SUCCESS
    assert (out / "dmesg-pstore_blk-1").stat().st_ino != first  # a new inode renamed in, not rewritten
    assert (out / "dmesg-pstore_blk-1").read_bytes() == kernel_bytes()


def test_a_world_writable_shared_dir_is_allowed_since_no_write_can_be_redirected(tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    os.chmod(out, 0o1777)
    assert extract(out).status == ExitStatus.SUCCESS
    assert (out / "dmesg-pstore_blk-1").read_bytes() == kernel_bytes()
