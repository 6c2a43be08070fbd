"""The ended boot's last kernel messages from the guest's journal: real lockup/OOM reports (the shared
oops corpus) in the short-unix form journald keeps kernel messages in."""

from __future__ import annotations

import re
import time

from pvepstore.analysis.evidence import Confidence, VerdictKind
from pvepstore.analysis.guestlog import ended_log_evidence, kernel_messages
from tests.analysis.corpus import CORPUS, needs_corpus


def journal_tail(report: str, *, host: str = "deb12", then: list[str] = ()) -> list[str]:
    """A syzkaller report's kernel lines as ``journalctl -o short-unix`` prints them (journald keeps
    the message without dmesg's [timestamp]), followed by ``then`` (other units' lines)."""
    text = (CORPUS / "syzkaller" / "report" / report).read_text(errors="replace")
    body = text.split("\n\n", 1)[1]
    return short_unix([DMESG_STAMP.sub("", ln) for ln in body.splitlines() if ln.strip()], host=host, then=then)


DMESG_STAMP = re.compile(r"^(?:<\d>)?\[ *\d+\.\d+\] ")


def short_unix(messages: list[str], *, host: str = "deb12", then=()) -> list[str]:
    t = time.time() - 500
    out = [f"{t + i / 1000:.6f} {host} kernel: {m}" for i, m in enumerate(messages)]
    return out[-100:] + [f"{t + 5:.6f} {host} {ln}" for ln in then]


@needs_corpus
def test_a_soft_lockup_before_the_end_is_a_hang():
    text = (CORPUS / "clearlinux" / "oops_test_files" / "soft_lockup.txt").read_text()
    tail = short_unix([DMESG_STAMP.sub("", ln) for ln in text.splitlines() if ln.strip()],
                      then=["systemd[1]: Starting apt-daily.service..."])
    (ev,) = ended_log_evidence(tail, orderly=False)
    assert ev.suggests is VerdictKind.HANG and ev.confidence is Confidence.HIGH
    assert "BUG: soft lockup in" in ev.summary, ev.summary
    # the same lines before an orderly shutdown: context only
    (ev,) = ended_log_evidence(tail, orderly=True)
    assert ev.suggests is None and "shut down in order" in ev.summary


@needs_corpus
def test_a_panicking_soft_lockup_is_a_panic():
    (ev,) = ended_log_evidence(journal_tail("264"), orderly=False)  # softlockup_panic=1
    assert ev.suggests is VerdictKind.KERNEL_PANIC and "softlockup: hung tasks" in ev.summary, ev.summary


@needs_corpus
def test_a_hung_task_report_is_a_hang():
    (ev,) = ended_log_evidence(journal_tail("138"), orderly=False)
    assert ev.suggests is VerdictKind.HANG, ev


def test_an_oom_kill_in_the_guests_last_messages():
    """The OOM killer's report as a real 6.18 kernel printed it (tests/fixtures/hostlog/): a guest
    kernel prints the same lines when its own OOM killer runs."""
    from tests.fakepve.hostlog import real_oom_messages

    (ev,) = ended_log_evidence(short_unix(real_oom_messages()), orderly=False)
    assert ev.suggests is VerdictKind.OOM and ev.confidence is Confidence.MEDIUM, ev


def test_only_kernel_lines_count_and_a_quiet_end_says_nothing():
    tail = ["1733212345.000001 deb12 sshd[812]: watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [x:1]",
            "1733212345.000002 deb12 kernel: e1000: eth0 NIC Link is Up"]
    assert kernel_messages(tail) == ["e1000: eth0 NIC Link is Up"]
    assert ended_log_evidence(tail, orderly=False) == []
    assert ended_log_evidence([], orderly=False) == []
