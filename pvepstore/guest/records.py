"""Records read through the guest's /sys/fs/pstore, and boot-history evidence.

Names and contents come from the guest and are untrusted: a name is accepted
only if it is a plain pstore-style file name (no ``/``, no leading dot, no
control characters, at most 128 characters); anything else is reported in
``skipped`` and never returned, so it can never become a path on the host.
Sizes are capped per record and in total by the guest script *and* re-checked
here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..text import terminal_safe
from .wire import Reply, decode

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
DEFAULT_RECORD_CAP = 1 << 20  # dmesg records are kmsg_size (decompressed up to ~3x)
DEFAULT_TOTAL_CAP = 16 << 20


@dataclass(frozen=True)
class GuestRecord:
    name: str
    data: bytes
    mtime: int  # seconds since the epoch (for dmesg records: the dump time)
    size: int = -1  # the size the guest reported; > len(data) when truncated

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)

    def to_json(self) -> dict:
        return {"name": self.name, "size": self.size, "read": len(self.data), "mtime": self.mtime,
                "truncated": self.truncated}


@dataclass
class RecordsResult:
    records: list[GuestRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # terminal-safe descriptions
    pstorefs: str = ""


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name)) and name not in (".", "..")


def parse_records(reply: Reply, record_cap: int, total_cap: int) -> RecordsResult:
    res = RecordsResult(pstorefs=reply.text("pstorefs", limit=32).strip())
    total = 0
    for f in reply.all("rec"):
        if len(f) != 4:
            continue
        raw_name = decode(f[0], 256)
        if not valid_name(raw_name):
            res.skipped.append(f"{terminal_safe(raw_name[:64])!r}: not a valid record name")
            continue
        try:
            size, mtime = int(decode(f[1], 24)), int(decode(f[2], 24))
        except ValueError:
            res.skipped.append(f"{raw_name}: malformed size/time")
            continue
        data = f[3][:record_cap]
        if total + len(data) > total_cap:
            res.skipped.append(f"{raw_name}: over the total size cap")
            continue
        total += len(data)
        res.records.append(GuestRecord(raw_name, data, mtime, size))
    for f in reply.all("skip"):
        name = terminal_safe(decode(f[0], 64)) if f else "?"
        why = decode(f[1], 32) if len(f) > 1 else ""
        res.skipped.append(f"{name!r}: {'not a regular file' if why == 'notfile' else 'over the total size cap'}")
    return res


@dataclass(frozen=True)
class ClearResult:
    cleared: list[str]
    not_cleared: dict[str, str]  # name -> gone | changed | refused | failed | not read

    @property
    def ok(self) -> bool:
        return not self.not_cleared


# -- boot history -----------------------------------------------------------------

_ORDERLY = re.compile(r"Reached target (?:System Reboot|Reboot|System Power Off|Power-Off|System Halt|"
                      r"Halt|System Shutdown)|systemd-shutdown|System is (?:rebooting|powering down|"
                      r"halting)|Journal stopped|reboot: (?:Restarting system|Power down)")


WDIOF_CARDRESET = 0x0020  # include/uapi/linux/watchdog.h: "Card previously reset the CPU"


@dataclass
class BootHistory:
    boot_id: str = ""
    uptime: float | None = None
    kernel: str = ""
    now: int | None = None
    journal_persistent: bool | None = None
    boots: list[str] = field(default_factory=list)  # `journalctl --list-boots` lines (terminal-safe)
    previous_tail: list[str] = field(default_factory=list)
    previous_orderly: bool | None = None  # None: no evidence either way
    previous_kernel: str | None = None
    wtmp: list[str] = field(default_factory=list)
    # (device, bootstatus, identity) of each watchdog device (/sys/class/watchdog), e.g. i6300esb's
    watchdogs: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def watchdog_reset(self) -> str | None:
        """The identity of a watchdog device that says it reset the boot before this one
        (bootstatus WDIOF_CARDRESET: QEMU's i6300esb keeps that flag across the reset it did)."""
        return next((ident or dev for dev, status, ident in self.watchdogs if status & WDIOF_CARDRESET), None)

    def to_json(self) -> dict:
        return {"boot_id": self.boot_id, "uptime": self.uptime, "kernel": self.kernel, "now": self.now,
                "journal_persistent": self.journal_persistent, "boots": self.boots,
                "previous_boot": {"orderly_shutdown": self.previous_orderly,
                                  "kernel": self.previous_kernel, "journal_tail": self.previous_tail},
                "wtmp": self.wtmp, "watchdogs": [list(w) for w in self.watchdogs]}


def parse_history(reply: Reply) -> BootHistory:
    h = BootHistory()
    h.boot_id = terminal_safe(reply.text("boot_id", limit=64).strip())
    try:
        h.uptime = float(reply.text("uptime", limit=32))
    except ValueError:
        h.uptime = None
    h.kernel = terminal_safe(reply.text("uname", limit=128).strip())
    try:
        h.now = int(reply.text("now", limit=24))
    except ValueError:
        h.now = None
    if reply.has("persistent"):
        h.journal_persistent = reply.text("persistent") == "yes"
    lines = lambda key, n: [terminal_safe(ln[:300]) for ln in reply.text(key, limit=16384).splitlines()][-n:]  # noqa: E731
    h.boots = lines("boots", 20)
    h.previous_tail = lines("prev_tail", 100)
    h.wtmp = lines("wtmp", 12)
    for ln in reply.text("watchdogs", limit=1024).splitlines()[:8]:
        dev, _, rest = ln.partition(" ")
        status, _, ident = rest.partition(" ")
        if dev.startswith("watchdog") and status.isdigit():
            h.watchdogs.append((terminal_safe(dev[:16]), int(status[:10]), terminal_safe(ident.strip()[:64])))
    kline = reply.text("prev_kernel", limit=512).strip()
    if kline:
        parts = kline.split()
        h.previous_kernel = terminal_safe(parts[2]) if len(parts) > 2 else None
    if h.previous_tail:
        h.previous_orderly = any(_ORDERLY.search(ln) for ln in h.previous_tail[-30:])
    elif len(h.boots) < 2:
        h.previous_orderly = None
    return h
