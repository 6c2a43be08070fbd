"""Reading and clearing /sys/fs/pstore through the guest: untrusted names, caps, round trips."""

from __future__ import annotations

import pytest

from pvepstore.errors import GuestError
from pvepstore.guest.testing import Recorded, nothing_to_collect, reply
from pvepstore.guest import Guest

from .conftest import fake_guest


def rec(name, data=b"Oops#1 Part1\n", mtime=1795661798, size=None):
    return ("rec", name, str(len(data) if size is None else size), str(mtime), data)


def records_reply(*items, end=True):
    return Recorded("records", 0, reply(("pstorefs", "pstore"), *items, end=end))


def test_nothing_to_collect_is_one_round_trip():
    t = nothing_to_collect()
    g = Guest(t)
    assert g.read_records() == []
    assert t.round_trips == 1


def test_records_and_their_bytes():
    g, t = fake_guest(records_reply(rec("dmesg-pstore_blk-0", b"Oops#1 Part1\n\x00\xff"),
                                    rec("dmesg-pstore_blk-1.enc.z", b"\x78\x9c")))
    recs = g.read_records(max_bytes=1 << 20)
    assert [(r.name, r.data, r.mtime) for r in recs] == [
        ("dmesg-pstore_blk-0", b"Oops#1 Part1\n\x00\xff", 1795661798), ("dmesg-pstore_blk-1.enc.z", b"\x78\x9c", 1795661798)]
    assert t.calls[0].args == (str(1 << 20), str(1 << 20))


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", ".hidden", "..", "", "x" * 200,
                                  "dmesg\x1b[31m-0", "name\nwith-newline", "dmesg pstore"])
def test_hostile_names_are_never_returned(name):
    g, _ = fake_guest(records_reply(rec(name), rec("dmesg-pstore_blk-0")))
    res = g.read_records_full()
    assert [r.name for r in res.records] == ["dmesg-pstore_blk-0"]
    assert len(res.skipped) == 1 and "\x1b" not in res.skipped[0] and "\n" not in res.skipped[0]


def test_per_record_and_total_caps():
    big = b"A" * 5000
    g, _ = fake_guest(records_reply(rec("dmesg-pstore_blk-0", big), rec("dmesg-pstore_blk-1", big),
                                    rec("dmesg-pstore_blk-2", big)))
    res = g.read_records_full(max_bytes=9000, record_bytes=4096)
    assert [len(r.data) for r in res.records] == [4096, 4096]
    assert res.records[0].truncated and res.records[0].size == 5000
    assert any("total size cap" in s for s in res.skipped)


def test_a_guest_that_talks_too_much_is_cut_off():
    g, _ = fake_guest(records_reply(rec("dmesg-pstore_blk-0", b"A" * (300 << 10))))
    with pytest.raises(GuestError, match="more than"):
        g.read_records(max_bytes=4096)


def test_malformed_lines_are_ignored():
    out = reply(("pstorefs", "pstore"), rec("dmesg-pstore_blk-0")) + b"rec !!notbase64 x y z\n\x1b]0;evil\x07\n"
    g, _ = fake_guest(Recorded("records", 0, out))
    assert [r.name for r in g.read_records()] == ["dmesg-pstore_blk-0"]


def test_clear_only_what_was_read_with_its_size_and_time():
    g, t = fake_guest(records_reply(rec("dmesg-pstore_blk-0", b"abc", mtime=5)),
                      Recorded("clear", 0, reply(("cleared", "dmesg-pstore_blk-0", "ok"))))
    g.read_records()
    res = g.clear(["dmesg-pstore_blk-0", "dmesg-pstore_blk-9", "../x"])
    assert res.cleared == ["dmesg-pstore_blk-0"]
    assert res.not_cleared == {"dmesg-pstore_blk-9": "not read", "../x": "not read"}
    assert t.calls[-1].args == ("dmesg-pstore_blk-0", "3", "5")
    assert t.round_trips == 2


def test_clear_reports_records_that_changed_in_between():
    g, _ = fake_guest(records_reply(rec("dmesg-pstore_blk-0")),
                      Recorded("clear", 0, reply(("cleared", "dmesg-pstore_blk-0", "changed"))))
    g.read_records()
    res = g.clear(["dmesg-pstore_blk-0"])
    assert not res.ok and res.not_cleared == {"dmesg-pstore_blk-0": "changed"}


def test_clear_without_anything_read_sends_nothing():
    g, t = fake_guest()
    assert g.clear(["dmesg-pstore_blk-0"]).not_cleared == {"dmesg-pstore_blk-0": "not read"}
    assert t.round_trips == 0


def test_not_root():
    g, _ = fake_guest(Recorded("records", 77, b"", b"pvepstore: not root in the guest\n"))
    with pytest.raises(GuestError, match="needs root"):
        g.read_records()


def test_boot_history_orderly_previous_boot():
    tail = ("1795661000.1 host systemd[1]: Reached target reboot.target - System Reboot.\n"
            "1795661000.2 host systemd-journald[1]: Journal stopped\n")
    g, _ = fake_guest(Recorded("history", 0, reply(
        ("boot_id", "abc"), ("uptime", "12.5"), ("uname", "6.1.0-56-amd64"), ("now", "1795661100"),
        ("persistent", "yes"), ("boots", "-1 aaa Thu ...\n 0 bbb Thu ...\n"), ("prev_tail", tail),
        ("prev_kernel", "Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) ..."),
        ("wtmp", "reboot   system boot  6.1.0-56-amd64 ..."))))
    h = g.boot_history()
    assert (h.boot_id, h.uptime, h.previous_orderly, h.previous_kernel) == ("abc", 12.5, True, "6.1.0-56-amd64")
    assert len(h.boots) == 2 and h.journal_persistent


def test_boot_history_crash_looks_unorderly():
    g, _ = fake_guest(Recorded("history", 0, reply(
        ("boot_id", "abc"), ("uptime", "1"), ("persistent", "yes"), ("boots", "-1 a\n0 b\n"),
        ("prev_tail", "1795661000.1 host kernel: Oops: 0002 [#1] PREEMPT SMP NOPTI\n"))))
    assert g.boot_history().previous_orderly is False


def test_watchdog_bootstatus_in_the_boot_history():
    from pvepstore.guest.records import parse_history
    from pvepstore.guest.wire import parse

    def hist(lines: str):
        return parse_history(parse(reply(("boot_id", "b"), ("uptime", "1.0"), ("watchdogs", lines))))

    h = hist("watchdog0 32 i6300ESB timer\nwatchdog1 0 iTCO_wdt\n")
    assert h.watchdogs == [("watchdog0", 32, "i6300ESB timer"), ("watchdog1", 0, "iTCO_wdt")]
    assert h.watchdog_reset == "i6300ESB timer" and h.to_json()["watchdogs"][0] == ["watchdog0", 32, "i6300ESB timer"]
    assert hist("watchdog0 0 i6300ESB timer\n").watchdog_reset is None
    # untrusted: junk is dropped, identities are made terminal-safe and bounded
    h = hist("evil 32 x\nwatchdog0 x32 y\nwatchdog1 288 \x1b[31mred\u202e" + "A" * 500 + "\n")
    assert [w[:2] for w in h.watchdogs] == [("watchdog1", 288)] and "\x1b" not in h.watchdog_reset
    assert len(h.watchdog_reset) <= 64
