"""Fake PVE routes for the node's own logs and HA state: journal, syslog, HA status (registered into ROUTES).

``GET /nodes/{node}/journal`` answers as pve-manager's API does: it runs ``mini-journalreader``
(``-b since -e until``, or ``-n lastentries``), whose output is a cursor line, then one line per
entry ``%b %d %T <hostname> <SYSLOG_IDENTIFIER>[<_PID>]: <MESSAGE>`` (local time; kernel entries have
no ``_PID``), ``-- Reboot --`` where the entries' boot id changes, and a cursor line at the end.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from .server import ROUTES, PveFailure, _permissions

HOSTLOG = Path(__file__).resolve().parents[1] / "fixtures" / "hostlog"
REAL_OOM = HOSTLOG / "memcg-oom-kvm-6.18.dmesg"


def _dmesg_messages(path: Path) -> list[str]:
    """A verbatim dmesg capture's messages, without dmesg's timestamps."""
    return [re.sub(r"^\[\s*\d+\.\d+\] ", "", line) for line in path.read_text().splitlines()]


def real_fault_lines() -> dict[str, str]:
    """The real kernel's fault lines of tests/fixtures/hostlog/qemu-faults-6.18.dmesg by what faulted
    (main, vcpu, gp, ud2), without dmesg's timestamps; ``assert`` is glibc's message on stderr."""
    faults = [ln for ln in _dmesg_messages(HOSTLOG / "qemu-faults-6.18.dmesg") if not ln.startswith("Code: ")]
    out = dict(zip(("main", "vcpu", "gp", "ud2"), faults))
    out["assert"] = (HOSTLOG / "qemu-assert.stderr").read_text().strip()
    return out


def with_tid(line: str, tid: int) -> str:
    """A fault line as the same fault in thread ``tid`` would print it."""
    return re.sub(r"\[\d+\]", f"[{tid}]", line, count=1)


def real_oom_messages() -> list[str]:
    """The real kernel's OOM-kill lines (tests/fixtures/hostlog/), without dmesg's timestamps."""
    return _dmesg_messages(REAL_OOM)


@dataclass(frozen=True)
class JournalEntry:
    when: float  # epoch seconds
    message: str
    ident: str = "kernel"
    pid: int | None = None
    boot: str = "b0"  # the node's boot id
    node: str = "pve1"


def add_journal(pve, when: float, message: str, **kw) -> JournalEntry:
    """One entry in the node's journal (``pve.journal``, made on first use)."""
    entry = JournalEntry(when, message, **kw)
    with pve.lock:
        if not hasattr(pve, "journal"):
            pve.journal = []
        pve.journal.append(entry)
    return entry


def _line(e: JournalEntry) -> str:
    stamp = time.strftime("%b %d %T", time.localtime(int(e.when)))
    return f"{stamp} {e.node} {e.ident}{'' if e.pid is None else f'[{e.pid}]'}: {e.message}"


def _journal(pve, p: dict, user: str) -> list[str]:
    path = f"/nodes/{p['node']}"  # apidata.js: perm /nodes/{node} Sys.Syslog
    if "Sys.Syslog" not in _permissions(pve, {"path": path}, user)[path]:
        raise PveFailure(403, f"Permission check failed ({path}, Sys.Syslog)")
    entries = sorted((e for e in getattr(pve, "journal", []) if e.node == p["node"]), key=lambda e: e.when)
    if "since" in p:
        entries = [e for e in entries if e.when >= int(p["since"])]
    if "until" in p:
        entries = [e for e in entries if e.when < int(p["until"])]
    if "lastentries" in p and not ("since" in p or "until" in p):
        entries = entries[-int(p["lastentries"]):] if int(p["lastentries"]) else entries
    out = [f"s=fake;i={len(entries):x};b=start"]
    boot = entries[0].boot if entries else None
    for e in entries:
        if e.boot != boot:
            out.append("-- Reboot --")
            boot = e.boot
        out.append(_line(e))
    out.append(f"s=fake;i={len(entries):x};b=end")
    return out


ROUTES[("GET", "/nodes/{node}/journal")] = _journal
