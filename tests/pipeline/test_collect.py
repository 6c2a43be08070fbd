"""Collection: the verdicts, and nothing lost or duplicated when a run dies at any step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pvepstore.pipeline.archive import Archive
from pvepstore.pipeline.collect import Collector, VmState
from pvepstore.pipeline.outbox import Outbox
from tests.conftest import FIXTURES, REPO
from tests.pipeline.fakevm import FileVm

OOPS = (FIXTURES / "oops-nocompress" / "kernel" / "dmesg-pstore_blk-0")
STEPS = ["gather", "archive", "spool", "state", "clear"]


class Killed(Exception):
    pass


def collector(state_dir, kill_at=None):
    def checkpoint(step):
        if step == kill_at:
            raise Killed(step)
    return Collector(Archive(state_dir / "archive"), Outbox(state_dir / "outbox"), VmState(state_dir / "vms"),
                     ["webhook"], checkpoint=checkpoint)


def oops_text() -> bytes:
    return OOPS.read_bytes()


def test_records_become_one_archived_spooled_incident_and_are_cleared(tmp_path):
    vm = FileVm(tmp_path / "vm")
    vm.set_boot("boot-a")
    vm.add("dmesg-pstore_blk-0", oops_text())
    res = collector(tmp_path / "state").collect(vm)
    assert (res.status, res.verdict, res.records) == ("collected", "kernel_oops", 1)
    assert vm.cleared == ["dmesg-pstore_blk-0"]
    (inc,) = Archive(tmp_path / "state" / "archive").list()
    assert inc.records() == {"dmesg-pstore_blk-0": oops_text()}
    assert len(Outbox(tmp_path / "state" / "outbox").pending()) == 1
    again = collector(tmp_path / "state").collect(vm)
    assert again.status == "nothing"


def test_nothing_to_do_costs_one_gather(tmp_path):
    vm = FileVm(tmp_path / "vm")
    vm.set_boot("boot-a")
    c = collector(tmp_path / "state")
    assert c.collect(vm).status == "nothing"
    assert c.collect(vm).status == "nothing"
    assert vm.gathers == 2 and Archive(tmp_path / "state" / "archive").list() == []


def test_boot_that_ended_without_record_or_orderly_shutdown_is_an_unexpected_reset(tmp_path):
    vm = FileVm(tmp_path / "vm")
    vm.set_boot("boot-a")
    c = collector(tmp_path / "state")
    c.collect(vm)
    vm.set_boot("boot-b", orderly="none", ended="boot-a")
    res = c.collect(vm)
    assert (res.status, res.verdict) == ("collected", "unexpected_reset")
    event = Archive(tmp_path / "state" / "archive").list()[0].event
    assert "panic" in event["data"]["verdict"]["summary"]
    # never "clean": the orderly path needs positive evidence
    vm.set_boot("boot-c", orderly="reboot", ended="boot-b")
    assert c.collect(vm).verdict == "orderly_reboot"


def test_planned_reboot_reason_wins(tmp_path):
    vm = FileVm(tmp_path / "vm")
    vm.set_boot("boot-a")
    c = collector(tmp_path / "state")
    c.collect(vm)
    c.state.update(101, planned_reboot={"reason": "kernel upgrade", "time": 1764130000, "user": "root@pam"})
    vm.set_boot("boot-b", ended="boot-a")
    res = c.collect(vm)
    assert res.verdict == "orderly_reboot" and res.message == "orderly_reboot: kernel upgrade"
    assert c.state.load(101)["planned_reboot"] is None


@pytest.mark.parametrize("step", STEPS)
def test_a_run_dying_at_any_step_loses_nothing_and_duplicates_nothing(tmp_path, step):
    vm = FileVm(tmp_path / "vm")
    vm.set_boot("boot-a")
    collector(tmp_path / "state").collect(vm)
    vm.set_boot("boot-b", orderly="none", ended="boot-a")
    vm.add("dmesg-pstore_blk-0", oops_text())
    with pytest.raises(Killed):
        collector(tmp_path / "state", kill_at=step).collect(vm)
    collector(tmp_path / "state").collect(vm)
    collector(tmp_path / "state").collect(vm)
    incidents = Archive(tmp_path / "state" / "archive").list()
    assert len(incidents) == 1 and incidents[0].records() == {"dmesg-pstore_blk-0": oops_text()}
    assert len(Outbox(tmp_path / "state" / "outbox").pending()) == 1
    assert not any((tmp_path / "vm" / "pstore").iterdir())


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from pvepstore.pipeline.archive import Archive
    from pvepstore.pipeline.collect import Collector, VmState
    from pvepstore.pipeline.outbox import Outbox
    from tests.pipeline.fakevm import FileVm
    state, kill_at = Path(sys.argv[1]), sys.argv[3]
    def checkpoint(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    c = Collector(Archive(state / "archive"), Outbox(state / "outbox"), VmState(state / "vms"), ["webhook"],
                  checkpoint=checkpoint)
    c.collect(FileVm(Path(sys.argv[2])))
""")


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_each_step_then_a_new_run(tmp_path, step):
    vm = FileVm(tmp_path / "vm")
    vm.set_boot("boot-a")
    vm.add("dmesg-pstore_blk-0", oops_text())
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(repo=str(REPO)))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "state"), str(tmp_path / "vm"), step])
    assert proc.returncode == -signal.SIGKILL
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "state"), str(tmp_path / "vm"), "never"])
    assert proc.returncode == 0
    incidents = Archive(tmp_path / "state" / "archive").list()
    assert len(incidents) == 1 and incidents[0].records() == {"dmesg-pstore_blk-0": oops_text()}
    pending = Outbox(tmp_path / "state" / "outbox").pending()
    assert [p["event"]["id"] for p in pending] == [incidents[0].event["id"]]
    assert not any((tmp_path / "vm" / "pstore").iterdir())
    # no stray temporary files survive the kill
    leftovers = [p for p in (tmp_path / "state").rglob(".*") if p.name.endswith(".tmp") or ".2" in p.name]
    assert not [p for p in leftovers if p.is_file() and p.suffix == ".tmp"]


def test_a_record_that_could_not_be_cleared_is_cleared_later_not_reported_again(tmp_path):
    vm = FileVm(tmp_path / "vm")
    vm.set_boot("boot-a")
    vm.add("dmesg-pstore_blk-0", oops_text())
    real_clear = vm.clear
    vm.clear = lambda records: None  # the guest refused to unlink
    collector(tmp_path / "state").collect(vm)
    vm.clear = real_clear
    res = collector(tmp_path / "state").collect(vm)
    assert res.status == "nothing" and vm.cleared == ["dmesg-pstore_blk-0"]
    assert len(Archive(tmp_path / "state" / "archive").list()) == 1


def test_planned_reboot_reason_with_a_shutdown_record_and_no_boot_id(tmp_path):
    # ivshmem: no SSH, so no boot id; the ramoops Shutdown dump marks the ended boot
    vm = FileVm(tmp_path / "vm")
    c = collector(tmp_path / "state")
    c.state.update(101, planned_reboot={"reason": "new kernel", "time": 1764130000})
    vm.add("dmesg-ramoops-0", b"Shutdown#1 Part1\n<5>[   30.000000] reboot: Restarting system\n")
    res = c.collect(vm)
    assert res.verdict == "orderly_reboot" and res.message == "orderly_reboot: new kernel"
    assert c.state.load(101)["planned_reboot"] is None
