"""The archive, the outbox spool, per-VM state and the sweep lock never follow a link (issue 11 item 1).

Policy (pvepstore.safefs): the state directory must be a real directory of root's,
not writable by others; every directory below it is opened O_NOFOLLOW (a planted
link or non-directory is refused with InputError); files are replaced by rename
from an O_EXCL temporary, markers are created O_EXCL, so a planted link, hard
link or FIFO under a file name is replaced as a name and never opened.  The
archive's incident directory name is pvepstore's own: anything else found under
it is refused.
"""

from __future__ import annotations

import os
import stat
import time

import pytest

from pvepstore.errors import InputError
from pvepstore.pipeline.archive import Archive, Retention
from pvepstore.pipeline.outbox import Outbox
from pvepstore.pipeline.sweep import sweep_lock
from pvepstore.pstore import FileSource, read_source
from pvepstore.vmstate import VmStateStore
from tests.conftest import load_fixtures
from tests.planting import KINDS, Outside, fifo_got_nothing, plant

FX = {f.name: f for f in load_fixtures()}
EVENT = {"id": "ab" * 32, "time": "2026-11-26T04:08:47Z", "data": {}}
NAME = "20261126T040847Z-" + "ab" * 6  # the incident directory Archive.store publishes


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Records of a real kernel's image (oops-deflate), as the collector archives them."""
    if "oops-deflate" not in FX:
        pytest.skip("fixture missing")
    fx = FX["oops-deflate"]
    raw = fx.unpack(tmp_path_factory.mktemp("img"))
    with FileSource(raw, 0) as src:
        recs = read_source(src, fx.params).records
    assert recs
    return recs


class Sink:
    name = "hook"

    def __init__(self, fail=False):
        self.fail, self.got = fail, []

    def send(self, event):
        if self.fail:
            raise ConnectionError("down")
        self.got.append(event["id"])


# -- archive --------------------------------------------------------------------------

def test_archive_store_writes_the_real_records_byte_exact(tmp_path, records):
    inc, fresh = Archive(tmp_path / "state" / "archive").store(101, EVENT, [], records, "offline")
    assert fresh and inc.path.name == NAME
    assert inc.records() == {r.name: r.data for r in records}
    assert stat.S_IMODE(inc.path.stat().st_mode) == 0o750


@pytest.mark.parametrize("kind", KINDS)
def test_archive_refuses_anything_planted_under_the_incident_name(tmp_path, kind, records):
    outside = Outside(tmp_path / "outside")
    vm_dir = tmp_path / "state" / "archive" / "101"
    reader = plant(vm_dir / NAME, kind, outside)
    with pytest.raises(InputError, match=f"refusing to publish .*{NAME}: it is"):
        Archive(tmp_path / "state" / "archive").store(101, EVENT, [], records, "offline")
    assert fifo_got_nothing(reader) and outside.unchanged()
    assert os.listdir(vm_dir) == [NAME]  # the build directory was removed


@pytest.mark.parametrize("where", ["archive", "archive/101"])
@pytest.mark.parametrize("kind", ["symlink-dir", "symlink-file", "fifo", "regular"])
def test_archive_refuses_a_directory_that_is_a_link_or_not_a_directory(tmp_path, where, kind, records):
    outside = Outside(tmp_path / "outside")
    reader = plant(tmp_path / "state" / where, kind, outside)
    with pytest.raises(InputError, match="refusing .*: it is .*not a directory"):
        Archive(tmp_path / "state" / "archive").store(101, EVENT, [], records, "offline")
    assert fifo_got_nothing(reader) and outside.unchanged()


def test_prune_never_enters_a_symlinked_vm_dir_nor_follows_links_in_an_incident(tmp_path, records):
    outside = Outside(tmp_path / "outside")
    lure = outside.root / "victimdir" / "20200101T000000Z-000000000000"
    lure.mkdir()
    (lure / "incident.json").write_text('{"id": "00"}')
    outside.before = outside.snapshot()
    archive = Archive(tmp_path / "state" / "archive")
    inc, _ = archive.store(101, EVENT, [], records, "offline")
    (inc.path / "records" / "link").symlink_to(outside.root / "victim")
    (tmp_path / "state" / "archive" / "102").symlink_to(outside.root / "victimdir")
    archive.prune(Retention(max_age_days=1), now=time.time())
    assert not inc.path.exists() and outside.unchanged()


# -- outbox ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_delivery_marker_is_created_exclusively_never_opened(tmp_path, kind):
    outside = Outside(tmp_path / "outside")
    box = Outbox(tmp_path / "state" / "outbox")
    assert box.enqueue(EVENT, ["hook"])
    reader = plant(tmp_path / "state" / "outbox" / "done" / EVENT["id"], kind, outside)
    sink = Sink()
    report = box.deliver([sink])
    assert sink.got == [EVENT["id"]] and report.pending == 0 and box.pending() == []
    marker = (tmp_path / "state" / "outbox" / "done" / EVENT["id"]).lstat()
    assert stat.S_ISREG(marker.st_mode)
    assert fifo_got_nothing(reader) and outside.unchanged()


@pytest.mark.parametrize("kind", ["symlink-file", "symlink-dir", "fifo"])
def test_planted_sink_state_and_spool_entries_are_refused_not_read(tmp_path, kind):
    outside = Outside(tmp_path / "outside")
    box = Outbox(tmp_path / "state" / "outbox")
    assert box.enqueue(EVENT, ["hook"])
    reader = plant(tmp_path / "state" / "outbox" / "sinks" / "hook.json", kind, outside)
    with pytest.raises(InputError, match="refusing .*hook.json"):
        box.deliver([Sink(fail=True)])
    assert fifo_got_nothing(reader)
    os.unlink(tmp_path / "state" / "outbox" / "sinks" / "hook.json")
    reader = plant(tmp_path / "state" / "outbox" / ("0" * 20 + "-x.json"), kind, outside)
    with pytest.raises(InputError, match="refusing .*-x.json"):
        box.pending()
    assert fifo_got_nothing(reader) and outside.unchanged()


@pytest.mark.parametrize("where", ["outbox", "outbox/done", "outbox/sinks"])
def test_outbox_refuses_symlinked_directories(tmp_path, where):
    outside = Outside(tmp_path / "outside")
    (tmp_path / "state" / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "state" / where).symlink_to(outside.root / "victimdir")
    box = Outbox(tmp_path / "state" / "outbox")
    with pytest.raises(InputError, match="symbolic link"):
        box.enqueue(EVENT, ["hook"])
        box.deliver([Sink(fail=where.endswith("sinks"))])
    assert outside.unchanged()


# -- per-VM state, locks and the state directory ----------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_vm_state_refuses_a_planted_link_and_replaces_a_planted_file_atomically(tmp_path, kind):
    outside = Outside(tmp_path / "outside")
    reader = plant(tmp_path / "state" / "vms" / "101.json", kind, outside)
    store = VmStateStore(tmp_path / "state" / "vms")
    if kind in ("symlink-file", "symlink-dir", "fifo"):  # update merges: it must read, and refuses
        with pytest.raises(InputError, match="refusing .*101.json: it is"):
            store.update(101, boot_id="b1")
        assert fifo_got_nothing(reader) and outside.unchanged()
        return
    store.update(101, boot_id="b1")  # a file (or a hard link) that is not our JSON: replaced by rename
    assert outside.unchanged()
    assert store.load(101) == {"boot_id": "b1"}
    assert (tmp_path / "state" / "vms" / "101.json").lstat().st_nlink == 1


@pytest.mark.parametrize("kind", ["symlink-file", "symlink-dir", "fifo"])
def test_lock_files_refuse_planted_links_and_fifos(tmp_path, kind):
    outside = Outside(tmp_path / "outside")
    reader = plant(tmp_path / "state" / "vms" / ".101.lock", kind, outside)
    with pytest.raises(InputError, match="refusing"):
        with VmStateStore(tmp_path / "state" / "vms").locked(101):
            pass
    assert fifo_got_nothing(reader)
    reader = plant(tmp_path / "state" / "sweep.lock", kind, outside)
    with pytest.raises(InputError, match="refusing"):
        with sweep_lock(tmp_path / "state"):
            pass
    assert fifo_got_nothing(reader) and outside.unchanged()


def test_a_symlinked_or_world_writable_state_dir_is_refused_by_every_writer(tmp_path, records):
    outside = Outside(tmp_path / "outside")
    (tmp_path / "state").symlink_to(outside.root / "victimdir")
    writers = [lambda s: Archive(s / "archive").store(101, EVENT, [], records, "offline"),
               lambda s: Outbox(s / "outbox").enqueue(EVENT, ["hook"]),
               lambda s: VmStateStore(s / "vms").update(101, a=1),
               lambda s: sweep_lock(s).__enter__()]
    for write in writers:
        with pytest.raises(InputError, match="symbolic link"):
            write(tmp_path / "state")
    assert outside.unchanged()
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    for write in writers:
        with pytest.raises(InputError, match="writable by other users") as exc:
            write(shared)
        assert "chmod go-w" in exc.value.hint
    assert os.listdir(shared) == []
