"""Which Proxmox task explains a boot end (issue 11 #17): only one inside the ended boot's lifetime.

The property test generates whole VM histories the way Proxmox produces them: boots
with a start and an end, each ended by a task (qmstop, qmshutdown, a qmshutdown that
timed out and the qmstop after it, qmreboot, qmreset, hastop) or from inside the guest
(reboot, poweroff, a crash), with qmstart tasks, migrations, backups and failed
shutdowns in between, at PVE's real timing (a qmshutdown starts up to its timeout
before the boot ends and ends after it; a qmstop's endtime is after the end; QEMU's
firmware runs before the next kernel starts).  Whatever the order the task list comes
in, the task attributed to a boot lies inside that boot's lifetime, and it is the one
that really ended it (the latest successful one); a boot that ended from inside the
guest gets none.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvepstore.analysis.bootend import (END_SKEW, TASK_VERDICTS, BootEnd, BootWindow, attribute_tasks,
                                        boot_order, ended_boot_evidence, ended_window)
from pvepstore.analysis.evidence import VerdictKind
from pvepstore.analysis.verdict import decide

T0 = 1_750_000_000.0

TASK_ENDS = ["qmstop", "qmshutdown", "shutdown_timeout_then_stop", "qmreboot", "qmreset", "hastop"]
GUEST_ENDS = ["guest_reboot", "guest_poweroff", "crash_reset"]
LEAVES_OFF = {"qmstop", "qmshutdown", "shutdown_timeout_then_stop", "hastop", "guest_poweroff"}


@dataclass
class Boot:
    start: float
    end: float
    cause: str
    ended_by: str | None = None  # the UPID of the task that ended it


@dataclass
class History:
    boots: list[Boot] = field(default_factory=list)
    tasks: list[dict] = field(default_factory=list)

    def task(self, type_: str, start: float, end: float, status: str = "OK") -> str:
        upid = f"UPID:pve1:{len(self.tasks):08X}:00000000:{int(start):08X}:{type_}:101:root@pam:"
        self.tasks.append({"upid": upid, "type": type_, "starttime": math.floor(start),
                           "endtime": math.floor(end), "status": status, "user": "root@pam"})
        return upid


step = st.tuples(st.sampled_from(TASK_ENDS + GUEST_ENDS),
                 st.floats(20, 5000),  # lifetime of the boot
                 st.floats(1, 30),  # firmware (+ boot loader) time before the next kernel starts
                 st.floats(0, 3000),  # time off after a poweroff/stop
                 st.floats(0, 1),  # where in the boot a context task falls
                 st.sampled_from(["none", "vzdump", "qmigrate", "failed_shutdown"]),
                 st.floats(1, 180))  # how long before the end a shutdown/reboot was asked


def build(steps) -> History:
    h = History()
    start = T0
    for cause, life, fw, off, where, extra, lead in steps:
        end = start + life
        lead = min(lead, life / 2)  # a shutdown is asked for while the boot runs
        boot = Boot(start, end, cause)
        if extra != "none":  # a task inside the boot that does not end it
            at = start + 1 + where * max(0.0, life - lead - 3)
            if extra == "failed_shutdown":
                h.task("qmshutdown", at, at + 1, status="VM quit/powerdown failed - got timeout")
            else:
                h.task(extra, at, at + 30)
        if cause == "qmstop":
            boot.ended_by = h.task("qmstop", end - 0.3, end + 1)
        elif cause in ("qmshutdown", "hastop"):
            boot.ended_by = h.task(cause, end - lead, end + 1)
        elif cause == "shutdown_timeout_then_stop":
            h.task("qmshutdown", end - lead - 1, end - 0.5, status="VM quit/powerdown failed - got timeout")
            boot.ended_by = h.task("qmstop", end - 0.4, end + 1)
        elif cause == "qmreboot":
            boot.ended_by = h.task("qmreboot", end - lead, end + fw)
        elif cause == "qmreset":
            boot.ended_by = h.task("qmreset", end - 0.2, end)
        nxt = end + fw
        if cause in LEAVES_OFF:
            on = end + 1 + off
            h.task("qmstart", on, on + 2)
            nxt = on + fw
        h.boots.append(boot)
        start = nxt
    return h


def truth(boot: Boot) -> VerdictKind | None:
    if boot.ended_by is None:
        return None
    return TASK_VERDICTS["qmstop" if boot.cause == "shutdown_timeout_then_stop" else boot.cause][0]


def suggesting(items):
    return [e for e in items if e.suggests is not None]


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, min_size=2, max_size=6), pick=st.integers(0, 100), seed=st.integers(0, 2**32),
       rtt=st.floats(0, 0.5))
def test_the_attributed_task_is_inside_the_boot_and_is_the_one_that_ended_it(steps, pick, seed, rtt):
    h = build(steps)
    k = pick % (len(h.boots) - 1)  # the ended boot; the sweep runs during boot k+1
    ended, current = h.boots[k], h.boots[k + 1]
    window = BootWindow(ended.start + rtt, current.start + rtt)  # host clock minus uptime, after a round trip
    # The sweep reads the guest at the last moment of boot k+1: a shutdown of it may be under way.
    sweep_at = current.end - 0.1
    seen = [t for t in h.tasks if t["starttime"] <= sweep_at]  # the future is not in the task log yet
    random.Random(seed).shuffle(seen)  # every order the API could list them in
    items = attribute_tasks(seen, window)
    blamed = suggesting(items)
    assert len(blamed) <= 1
    for e in blamed:
        task = next(t for t in seen if t["upid"] == e.record)
        assert window.start < task["starttime"] <= window.end + END_SKEW
    if ended.ended_by is None:
        assert not blamed, (ended.cause, [e.summary for e in blamed])
    else:
        assert [e.record for e in blamed] == [ended.ended_by]
        # and it decides the verdict over the guest's own MEDIUM-confidence view
        history = ended_boot_evidence(BootEnd("b", orderly="none"))
        assert decide([history, *items]).kind is truth(ended)


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(step, min_size=2, max_size=6), seed=st.integers(0, 2**32))
def test_an_unknown_lifetime_attributes_nothing_and_says_so(steps, seed):
    h = build(steps)
    current = h.boots[-1]
    tasks = list(h.tasks)
    random.Random(seed).shuffle(tasks)
    for window in (BootWindow(None, current.start, "pvepstore did not record when boot x started"),
                   BootWindow(h.boots[0].start, None, "no uptime"), BootWindow(None, None)):
        items = attribute_tasks(tasks, window)
        assert not suggesting(items)
        if any(t["type"] in TASK_VERDICTS for t in tasks):
            (note,) = items
            assert "not attributed" in note.summary and (window.unknown or "unknown") in note.summary


def test_the_issue_sequence_stop_start_oops_shutdown():
    """API stop + start, later an Oops, then a clean API shutdown: the stop ended the boot BEFORE."""
    h = History()
    h.task("qmstop", T0 + 100, T0 + 101)  # ends boot A
    h.task("qmstart", T0 + 110, T0 + 112)
    b_start = T0 + 115  # boot B (the Oops happens in it)
    upid = h.task("qmshutdown", T0 + 400, T0 + 420)  # ends boot B
    h.task("qmstart", T0 + 500, T0 + 502)
    c_start = T0 + 506
    items = attribute_tasks(h.tasks, BootWindow(b_start, c_start))
    (blamed,) = suggesting(items)
    assert (blamed.record, blamed.suggests) == (upid, VerdictKind.ORDERLY_POWEROFF)
    (note,) = [e for e in items if e.suggests is None]
    assert "qmstop" in note.summary and "outside the ended boot's lifetime" in note.summary


def test_a_failed_shutdown_explains_nothing_and_a_migration_ends_no_boot():
    h = History()
    h.task("qmshutdown", T0 + 50, T0 + 230, status="VM quit/powerdown failed - got timeout")
    h.task("qmigrate", T0 + 300, T0 + 340)
    h.task("vzdump", T0 + 400, T0 + 500)
    items = attribute_tasks(h.tasks, BootWindow(T0, T0 + 1000))
    assert not suggesting(items)
    assert "did not end it" in items[0].summary


JOURNAL_252 = ["-2 1b2c3d4e5f60718293a4b5c6d7e8f901 Thu 2026-11-26 04:40:00 UTC Thu 2026-11-26 04:43:00 UTC",
               "-1 469ad01093334c3980952bd62ee6f994 Thu 2026-11-26 04:43:34 UTC Thu 2026-11-26 04:45:09 UTC",
               " 0 afe51f3bb2c74998b24168aa0a0c64e2 Thu 2026-11-26 04:45:30 UTC Thu 2026-11-26 04:46:11 UTC"]
JOURNAL_256 = ["IDX BOOT ID                          FIRST ENTRY                 LAST ENTRY",
               " -1 469ad01093334c3980952bd62ee6f994 Thu 2026-11-26 04:43:34 UTC Thu 2026-11-26 04:45:09 UTC",
               "  0 afe51f3bb2c74998b24168aa0a0c64e2 Thu 2026-11-26 04:45:30 UTC Thu 2026-11-26 04:46:11 UTC"]
CURRENT = "afe51f3b-b2c7-4998-b241-68aa0a0c64e2"  # /proc/sys/kernel/random/boot_id has dashes
PREVIOUS = "469ad010-9333-4c39-8095-2bd62ee6f994"


@pytest.mark.parametrize("lines", [JOURNAL_252, JOURNAL_256])
def test_the_window_is_known_only_when_the_last_seen_boot_is_the_one_right_before(lines):
    assert boot_order(lines)[-2:] == ["469ad01093334c3980952bd62ee6f994", "afe51f3bb2c74998b24168aa0a0c64e2"]
    assert ended_window(PREVIOUS, T0, CURRENT, T0 + 90, lines) == BootWindow(T0, T0 + 90)
    other = ended_window("1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901", T0, CURRENT, T0 + 90, lines)
    assert not other.known and other.end == T0 + 90
    assert ("ran between" in other.unknown) if lines is JOURNAL_252 else ("lists no earlier boot" not in other.unknown)


def test_the_window_is_unknown_without_a_boot_list_a_start_or_an_uptime():
    assert not ended_window(PREVIOUS, T0, CURRENT, T0 + 90, [JOURNAL_252[-1]]).known  # volatile journal
    assert "lists no earlier boot" in ended_window(PREVIOUS, T0, CURRENT, T0 + 90, []).unknown
    assert "did not record" in ended_window(PREVIOUS, None, CURRENT, T0 + 90, JOURNAL_252).unknown
    assert ended_window(PREVIOUS, T0, CURRENT, None, JOURNAL_252).end is None


def test_a_stop_mode_backup_names_itself():
    """vzdump --mode stop runs `qm shutdown <vmid> --skiplock --keepActive` (a qmshutdown task inside
    the vzdump task) and `qm start` after the backup: the ended boot was shut down for the backup."""
    window = BootWindow(T0, T0 + 1000)
    vzdump = {"upid": "UPID:pve1:1:1:1:vzdump:101:root@pam:", "type": "vzdump", "starttime": T0 + 900,
              "endtime": T0 + 1100, "status": "OK", "user": "root@pam"}
    shutdown = {"upid": "UPID:pve1:2:2:2:qmshutdown:101:root@pam:", "type": "qmshutdown",
                "starttime": T0 + 901, "endtime": T0 + 950, "status": "OK", "user": "root@pam"}
    items = attribute_tasks([vzdump, shutdown], window)
    assert items[0].suggests is VerdictKind.ORDERLY_POWEROFF and "stop-mode backup" in items[0].summary
    assert items[0].details["backup"] == vzdump["upid"]
    # a backup that ended before the shutdown (snapshot mode, then an admin's shutdown): not named
    early = {**vzdump, "endtime": T0 + 900.5}
    assert "backup" not in attribute_tasks([early, shutdown], window)[0].summary
