"""The ivshmem hookscript's links and copies never follow a planted link (issue 11 item 1).

/dev/shm is world-writable (sticky): a local user can plant any name pvepstore
uses there before it does.  Policy: a source (the live file at post-start, the
keep link at pre-start/post-stop, the durable copy) is used only if lstat says it
is a regular file owned by root (sticky: nobody else can then swap it); links are
made with linkat without following and land under a fresh name renamed into place,
copies are O_EXCL temporaries renamed into place, so whatever was planted under
the target name is replaced, never followed.  A refusal never stops the VM: the
hook reports ``failed: refusing ...`` and exits 0.
"""

from __future__ import annotations

import os
import stat

import pytest

from pvepstore.errors import InputError
from pvepstore.pve import ivshmem
from tests.conftest import run_cli
from tests.planting import KINDS, Outside, fifo_got_nothing, plant

RAM = b"DBGC" + bytes(60) + b"ramoops records" * 100


@pytest.fixture
def shm(fakepve, tmp_path):
    (fakepve.host_root / "dev" / "shm").mkdir(parents=True, exist_ok=True)
    cfg = fakepve.load_config()
    name = ivshmem.shm_name(101)
    return cfg, cfg.paths.ivshmem_file(name), cfg.paths.ivshmem_keep(name), Outside(tmp_path / "outside")


def failed(actions):
    return len(actions) == 1 and actions[0].startswith("failed: refusing")


@pytest.mark.parametrize("kind", KINDS)
def test_post_start_replaces_a_planted_keep_name_with_a_link_to_the_live_file(shm, kind):
    cfg, live, keep, outside = shm
    live.write_bytes(RAM)
    reader = plant(keep, kind, outside)
    assert ivshmem.run_hook(cfg, 101, "post-start") == [f"linked {live.name} as {keep.name}"]
    assert os.path.samefile(live, keep) and not keep.is_symlink()
    assert fifo_got_nothing(reader) and outside.unchanged()
    assert (outside.root / "victim").stat().st_nlink == 1


@pytest.mark.parametrize("kind", ["symlink-file", "symlink-dir", "fifo", "foreign"])
def test_post_start_refuses_a_live_file_that_is_not_roots_regular_file(shm, kind):
    cfg, live, keep, outside = shm
    if kind == "foreign":
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        live.write_bytes(RAM)
        os.chown(live, 65534, -1)
        reader = None
    else:
        reader = plant(live, kind, outside)
    assert failed(ivshmem.run_hook(cfg, 101, "post-start"))
    assert not os.path.lexists(keep) and fifo_got_nothing(reader) and outside.unchanged()
    assert (outside.root / "victim").stat().st_nlink == 1  # no hard link to the victim was made


@pytest.mark.parametrize("kind", ["symlink-file", "symlink-dir", "fifo", "foreign"])
def test_pre_start_refuses_to_relink_a_keep_name_it_did_not_make(shm, kind):
    cfg, live, keep, outside = shm
    if kind == "foreign":
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        keep.write_bytes(RAM)
        os.chown(keep, 65534, -1)
        reader = None
    else:
        reader = plant(keep, kind, outside)
    assert failed(ivshmem.run_hook(cfg, 101, "pre-start"))
    assert not os.path.lexists(live) and fifo_got_nothing(reader) and outside.unchanged()


def test_pre_start_relinks_roots_keep_file(shm):
    cfg, live, keep, outside = shm
    keep.write_bytes(RAM)
    assert ivshmem.run_hook(cfg, 101, "pre-start") == [f"relinked {keep.name} as {live.name}"]
    assert os.path.samefile(live, keep)


@pytest.mark.parametrize("kind", KINDS)
def test_post_stop_durable_copy_replaces_whatever_was_planted_there(shm, kind):
    cfg, live, keep, outside = shm
    keep.write_bytes(RAM)
    durable = ivshmem.durable_copy(cfg, 101)
    reader = plant(durable, kind, outside)
    assert ivshmem.run_hook(cfg, 101, "post-stop") == [f"saved {keep.name} to {durable}"]
    st = durable.lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and durable.read_bytes() == RAM
    assert fifo_got_nothing(reader) and outside.unchanged()


@pytest.mark.parametrize("kind", ["symlink-file", "symlink-dir", "fifo"])
def test_post_stop_refuses_a_keep_name_that_is_not_a_regular_file(shm, kind):
    cfg, live, keep, outside = shm
    reader = plant(keep, kind, outside)
    assert failed(ivshmem.run_hook(cfg, 101, "post-stop"))
    assert not os.path.lexists(ivshmem.durable_copy(cfg, 101))
    assert fifo_got_nothing(reader) and outside.unchanged()


@pytest.mark.parametrize("kind", ["symlink-file", "fifo"])
def test_pre_start_never_restores_from_a_planted_durable_copy(shm, kind):
    cfg, live, keep, outside = shm
    reader = plant(ivshmem.durable_copy(cfg, 101), kind, outside)
    assert failed(ivshmem.run_hook(cfg, 101, "pre-start"))
    assert not os.path.lexists(live) and fifo_got_nothing(reader) and outside.unchanged()


def test_restore_from_the_durable_copy(shm):
    cfg, live, keep, outside = shm
    ivshmem.durable_copy(cfg, 101).parent.mkdir(parents=True)
    ivshmem.durable_copy(cfg, 101).write_bytes(RAM)
    assert ivshmem.run_hook(cfg, 101, "pre-start")[0].startswith("restored")
    assert live.read_bytes() == RAM and stat.S_IMODE(live.stat().st_mode) == 0o600


def test_a_symlinked_ivshmem_dir_or_an_unsafe_state_dir_is_refused(shm):
    cfg, live, keep, outside = shm
    keep.write_bytes(RAM)
    state = ivshmem.durable_copy(cfg, 101).parent.parent
    state.mkdir(parents=True, exist_ok=True)
    (state / "ivshmem").symlink_to(outside.root / "victimdir")
    assert failed(ivshmem.run_hook(cfg, 101, "post-stop"))
    (state / "ivshmem").unlink()
    os.chmod(state, 0o777)
    actions = ivshmem.run_hook(cfg, 101, "post-stop")
    assert len(actions) == 1 and "writable by other users" in actions[0]
    assert outside.unchanged() and not (state / "ivshmem").exists()


def test_the_hook_command_reports_a_refusal_and_still_exits_0(fakepve, shm):
    cfg, live, keep, outside = shm
    plant(live, "symlink-file", outside)
    config = fakepve.config_file()
    r = run_cli("--config", str(config), "hook", "101", "post-start")
    assert r.status == 0 and "failed: refusing" in r.stdout and "Traceback" not in r.stdout + r.stderr
    assert outside.unchanged()


def test_reading_and_clearing_refuse_links(shm):
    cfg, live, keep, outside = shm
    live.write_bytes(RAM)
    image = ivshmem.read_image(cfg, 101)
    assert image.source == "live" and image.data == RAM
    live.unlink()
    live.symlink_to(outside.root / "victim")
    with pytest.raises(InputError, match="refusing .*: it is a symbolic link"):
        ivshmem.clear_records(cfg, 101, image, [])
    with pytest.raises(InputError, match="refusing"):
        ivshmem.read_image(cfg, 101)
    assert outside.unchanged()
