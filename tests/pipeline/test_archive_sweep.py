from __future__ import annotations

import threading
import time

import pytest

from pvepstore.errors import GuestError, InputError
from pvepstore.pipeline.archive import Archive, Retention
from pvepstore.pipeline.collect import Collector, VmState
from pvepstore.pipeline.outbox import Outbox
from pvepstore.pipeline.sweep import SweepBusy, run_sweep, sweep_lock
from pvepstore.pstore.files import record_from_file
from pvepstore.pstore.model import Kind, Record
from tests.pipeline.fakevm import FileVm
from tests.pipeline.receiver import Receiver
from pvepstore.pipeline.sinks import WebhookSink


def ev(n: int, when: str = "2026-11-26T04:08:47Z") -> dict:
    return {"id": f"{n:064x}", "time": when, "data": {}}


def test_hostile_record_names_stay_inside_the_incident(tmp_path):
    archive = Archive(tmp_path / "archive")
    recs = [Record(name=n, kind=Kind.DMESG, backend="x", zone=0, offset=0, data=d)
            for n, d in (("../../etc/passwd", b"a"), ("..", b"b"), ("\x1b[31mred", b"c"), ("_.._.._etc_passwd", b"d"))]
    inc, fresh = archive.store(101, ev(1), [], recs, "guest")
    assert fresh
    files = sorted(p.relative_to(inc.path).as_posix() for p in inc.path.rglob("*") if p.is_file())
    assert all(f.startswith("records/") or "/" not in f for f in files)
    assert len([f for f in files if f.startswith("records/")]) == 4
    assert not (tmp_path / "etc").exists()
    again, fresh = archive.store(101, ev(1), [], recs, "guest")
    assert not fresh and again.path == inc.path


def test_lookup_and_retention(tmp_path):
    archive = Archive(tmp_path / "archive")
    for n in range(5):
        archive.store(101, ev(n + 1, f"2026-11-2{n}T00:00:00Z"), [], [], "guest")
    archive.store(102, ev(9, "2020-01-01T00:00:00Z"), [], [], "offline")
    assert archive.get(f"{3:064x}").key.startswith("20261122T")
    assert archive.get("20261123").event["id"] == f"{4:064x}"
    with pytest.raises(InputError, match="matches 5"):
        archive.get("2026112")
    with pytest.raises(InputError):
        archive.get("zzz")
    removed = archive.prune(Retention(max_per_vm=3, max_age_days=365), now=time.mktime((2026, 11, 30, 0, 0, 0, 0, 0, 0)))
    assert len(removed) == 3  # two beyond the per-VM count, one too old
    assert [i.key[:8] for i in archive.list(101)] == ["20261122", "20261123", "20261124"]


class Unreachable:
    def __init__(self, vmid):
        self.vmid = vmid

    def __call__(self):
        raise GuestError(f"VM {self.vmid}: ssh: connection refused", hint="is sshd running?")


def test_sweep_isolates_failures_bounds_concurrency_and_delivers(tmp_path):
    state = tmp_path / "state"
    collector = Collector(Archive(state / "archive"), Outbox(state / "outbox"), VmState(state / "vms"), ["webhook"])
    vms = {}
    targets = []
    for vmid in range(101, 111):
        vm = FileVm(tmp_path / f"vm{vmid}", vmid)
        vm.set_boot("b1")
        if vmid % 3 == 0:
            vm.add("dmesg-pstore_blk-0", b"Oops: Total 1 times\nOops#1 Part1\n<4>[ 1.0] BUG: kernel NULL pointer dereference, address: 0000000000000000\n")
        vms[vmid] = vm
        targets.append((vmid, (lambda v=vm: v)))
    targets.append((200, Unreachable(200)))
    with Receiver() as rx:
        result = run_sweep(targets, collector, [WebhookSink(url=rx.url)], concurrency=4)
        statuses = {r.vmid: r.status for r in result.results}
        assert statuses[200] == "failed" and "connection refused" in result.results[-1].message
        assert [v for v, s in statuses.items() if s == "collected"] == [102, 105, 108]
        assert len(rx.ids()) == 3 and result.delivery.pending == 0
        again = run_sweep(targets, collector, [WebhookSink(url=rx.url)], concurrency=4)
        assert {r.status for r in again.results if r.vmid != 200} == {"nothing"}
        assert len(rx.ids()) == 3


def test_second_sweep_exits_cleanly_while_one_runs(tmp_path):
    with sweep_lock(tmp_path):
        with pytest.raises(SweepBusy):
            with sweep_lock(tmp_path):
                pass
    with sweep_lock(tmp_path):
        pass


def test_slow_vm_times_out_without_holding_the_others(tmp_path):
    state = tmp_path / "state"
    collector = Collector(Archive(state / "archive"), Outbox(state / "outbox"), VmState(state / "vms"), [])
    release = threading.Event()

    def slow():
        release.wait(10)
        raise GuestError("late")

    fast = FileVm(tmp_path / "fast", 102)
    fast.set_boot("b")
    result = run_sweep([(101, slow), (102, lambda: fast)], collector, [], concurrency=2, vm_timeout=1.5)
    release.set()
    by = {r.vmid: r for r in result.results}
    assert by[101].status == "failed" and "timed out" in by[101].message
    assert by[102].status == "nothing"
