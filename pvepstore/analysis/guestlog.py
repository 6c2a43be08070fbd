"""The ended boot's last kernel messages, as the guest's persistent journal kept them (pure).

The guest's boot history carries the tail of the previous boot's journal (``journalctl -b -1
-n 100 -o short-unix``, :mod:`pvepstore.guest.records`).  A boot that ended with no dump and no
orderly shutdown, whose last kernel messages are a soft lockup, a hung task, an RCU stall or the
guest's own OOM killer, is explained by them.  They outlive the reset only once they are on the
guest's disk: journald syncs at once after a message of priority CRIT or above (``watchdog: BUG:
soft lockup`` is ``pr_emerg``), else within SyncIntervalSec (5 min) -- an RCU stall report is
``pr_err`` (measured on Debian's 6.1: a lockup shows as an RCU stall at 21 s).  The crash finder
of :mod:`.crash` reads them, as it reads a pstore record.
"""

from __future__ import annotations

import re
from typing import Iterable

from .crash import extract_crashes
from .trigger import CrashKind
from .evidence import Confidence, Evidence, primary_crash

# short-unix: "<epoch>.<usec> <hostname> kernel: <message>"
_KERNEL_LINE = re.compile(r"^\d{1,12}(?:\.\d{1,9})? \S{1,256} kernel: (.*)$")
_VERDICT = {CrashKind.HANG: "hang", CrashKind.OOM: "oom", CrashKind.PANIC: "kernel_panic"}


def kernel_messages(tail: Iterable[str]) -> list[str]:
    """The kernel's lines of a short-unix journal tail, without their prefix."""
    return [m.group(1) for line in tail if (m := _KERNEL_LINE.match(line))]


def ended_log_evidence(tail: Iterable[str], *, orderly: bool) -> list[Evidence]:
    """Evidence from the ended boot's last kernel messages: a hang/OOM/panic report there explains an
    end without an orderly shutdown (HIGH for a hang: the host's reset of a hung guest is the
    consequence, not the cause); after an orderly shutdown it is context only."""
    from .evidence import VerdictKind

    messages = kernel_messages(tail)
    if not messages:
        return []
    crashes = [c for c in extract_crashes("\n".join(messages)) if c.kind in _VERDICT or c.panicked]
    crash = primary_crash(crashes)
    if crash is None:
        return []
    kind = VerdictKind.KERNEL_PANIC if crash.panicked else VerdictKind(_VERDICT[crash.kind])
    where = "the ended boot's last kernel messages (its journal)"
    if orderly:
        return [Evidence("guest_journal", None, Confidence.LOW, f"{where} show {crash.title}, but the boot "
                         "then shut down in order", details={"crashes": len(crashes)})]
    confidence = Confidence.HIGH if kind is VerdictKind.HANG else Confidence.MEDIUM
    return [Evidence("guest_journal", kind, confidence, f"{where}: {crash.title}",
                     details={"crashes": len(crashes)}, crashes=tuple(crashes))]
