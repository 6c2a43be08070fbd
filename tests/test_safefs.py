"""safefs: the primitives every writer of guest-derived files uses (issue 11 item 1)."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

from pvepstore import durable
from pvepstore.errors import InputError
from pvepstore.safefs import Dir, check_name
from tests.planting import KINDS, Outside, fifo_got_nothing, plant


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), data=st.binary(max_size=4096), durable_=st.booleans())
def test_replace_file_replaces_the_name_never_what_it_points_to(tmp_path_factory, kind, data, durable_):
    base = tmp_path_factory.mktemp("w")
    outside = Outside(base / "outside")
    reader = plant(base / "d" / "rec", kind, outside)
    with Dir.open(base / "d") as d:
        d.replace_file("rec", data, 0o640, durable=durable_)
        assert [n for n in d.names() if n.endswith(".tmp")] == []  # no temporary left behind
    st_ = (base / "d" / "rec").lstat()
    assert stat.S_ISREG(st_.st_mode) and st_.st_nlink == 1 and stat.S_IMODE(st_.st_mode) == 0o640
    assert (base / "d" / "rec").read_bytes() == data
    assert fifo_got_nothing(reader) and outside.unchanged()


def test_a_directory_under_the_name_is_refused_not_replaced(tmp_path):
    (tmp_path / "rec").mkdir()
    with Dir.open(tmp_path) as d, pytest.raises(InputError, match="is a directory"):
        d.replace_file("rec", b"x")
    assert (tmp_path / "rec").is_dir() and os.listdir(tmp_path) == ["rec"]


@pytest.mark.parametrize("kind", ["symlink-dir", "symlink-file", "fifo", "regular"])
def test_a_subdirectory_that_is_not_a_real_directory_is_refused(tmp_path, kind):
    outside = Outside(tmp_path / "outside")
    reader = plant(tmp_path / "base" / "sub", kind, outside)
    with Dir.open(tmp_path / "base") as d, pytest.raises(InputError, match="refusing .*sub: it is"):
        d.sub("sub")
    assert fifo_got_nothing(reader) and outside.unchanged()


def test_a_symlinked_base_is_refused_unless_the_caller_follows_it(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(InputError, match="symbolic link"):
        Dir.open(tmp_path / "link", create=True)
    with Dir.open(tmp_path / "link", follow=True) as d:  # an operator-configured dir (textfile sink)
        d.replace_file("f", b"ok")
    assert (tmp_path / "real" / "f").read_bytes() == b"ok"


@pytest.mark.parametrize("mode, owner, refused", [
    (0o755, 0, None), (0o700, 0, None), (0o777, 0, "writable by other users"),
    (0o757, 0, "writable by other users"), (0o1777, 0, "writable by other users"),
    (0o755, 65534, "owned by uid 65534")])
def test_a_private_base_must_belong_to_root_and_not_be_writable_by_others(tmp_path, mode, owner, refused):
    if os.geteuid() != 0 and owner == 0:
        owner = os.geteuid()
    if os.geteuid() != 0 and owner != os.geteuid():
        pytest.skip("chown needs root")
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, mode)
    os.chown(state, owner, -1)
    if refused is None:
        Dir.open(state, private=True).close()
    else:
        with pytest.raises(InputError, match=refused) as exc:
            Dir.open(state, private=True)
        assert exc.value.hint


def test_group_writable_is_refused_for_a_foreign_group(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chgrp to a foreign group needs root")
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o775)
    Dir.open(state, private=True).close()  # root's own group
    os.chown(state, -1, 65534)
    with pytest.raises(InputError, match="writable by other users"):
        Dir.open(state, private=True)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "x\0y"])
def test_names_are_single_components(name):
    with pytest.raises(InputError):
        check_name(name)


@pytest.mark.parametrize("kind", ["symlink-file", "fifo", "symlink-dir"])
def test_reads_refuse_links_and_never_block_on_a_fifo(tmp_path, kind):
    outside = Outside(tmp_path / "outside")
    reader = plant(tmp_path / "d" / "state.json", kind, outside)
    with pytest.raises(InputError, match="refusing"):
        durable.read_json(tmp_path / "d" / "state.json")
    with Dir.open(tmp_path / "d") as d, pytest.raises(InputError, match="refusing"):
        d.lock_file("state.json")
    assert fifo_got_nothing(reader) and outside.unchanged()


@pytest.mark.parametrize("kind", KINDS)
def test_write_atomic_below_a_private_base_never_follows(tmp_path, kind):
    outside = Outside(tmp_path / "outside")
    reader = plant(tmp_path / "state" / "vms" / "1.json", kind, outside)
    durable.write_json(tmp_path / "state" / "vms" / "1.json", {"a": 1}, base=tmp_path / "state")
    assert durable.read_json(tmp_path / "state" / "vms" / "1.json") == {"a": 1}
    assert fifo_got_nothing(reader) and outside.unchanged()


def test_write_atomic_refuses_a_symlinked_directory_below_the_base(tmp_path):
    outside = Outside(tmp_path / "outside")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "vms").symlink_to(outside.root / "victimdir")
    with pytest.raises(InputError, match="vms: it is a symbolic link"):
        durable.write_json(tmp_path / "state" / "vms" / "inside", {"a": 1}, base=tmp_path / "state")
    assert outside.unchanged()


def test_link_replace_makes_a_second_name_of_the_entry_itself(tmp_path):
    outside = Outside(tmp_path / "outside")
    d = tmp_path / "shm"
    d.mkdir()
    (d / "live").write_bytes(b"ram")
    plant(d / "keep", "symlink-file", outside)
    (d / "alink").symlink_to(outside.root / "victim")
    with Dir.open(d) as sd:
        sd.link_replace("live", "keep")
        sd.link_replace("alink", "blink")  # a symlink source is linked as a symlink, never its target
    assert os.path.samefile(d / "live", d / "keep") and not (d / "keep").is_symlink()
    assert (d / "blink").is_symlink() and (outside.root / "victim").stat().st_nlink == 1
    assert outside.unchanged()


def test_rmtree_and_tree_size_do_not_follow_links(tmp_path):
    outside = Outside(tmp_path / "outside")
    inc = tmp_path / "vm" / "inc"
    inc.mkdir(parents=True)
    (inc / "f").write_bytes(b"12345")
    (inc / "big").symlink_to(outside.root / "victim")
    (inc / "dir").symlink_to(outside.root / "victimdir")
    (tmp_path / "vm" / "link").symlink_to(outside.root / "victimdir")
    with Dir.open(tmp_path / "vm") as d:
        assert d.tree_size("inc") == 5
        d.rmtree("inc")
        d.rmtree("link")  # removes the link itself
    assert os.listdir(tmp_path / "vm") == [] and outside.unchanged()
