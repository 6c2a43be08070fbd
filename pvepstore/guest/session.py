"""``Guest``: the operations on one guest over one transport, and ``connect()``."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from ..config import SERIAL_RE
from ..errors import GuestError, UsageError
from . import scripts, wire
from .changes import ApplyResult, Plan, VerifyResult
from .plan import GuestWishes, make_plan, make_undo_plan
from .probe import ProbeReport, build_report
from .records import (DEFAULT_RECORD_CAP, DEFAULT_TOTAL_CAP, BootHistory, ClearResult, GuestRecord,
                      parse_history, parse_records, valid_name)
from .transport import CommandResult, GuestTarget, SshTransport, Transport

PROBE_FILE_CAP = 64 << 10
NOT_ROOT = 77


class Guest:
    """One guest.  Every public method is one remote command unless its docstring says otherwise."""

    def __init__(self, transport: Transport, where: str = "guest") -> None:
        self.transport = transport
        self.where = where
        self._read: dict[str, GuestRecord] = {}

    # -- plumbing ------------------------------------------------------------------
    def _run(self, name: str, script: str, args: list[str], *, timeout: float | None = None,
             max_out: int = 8 << 20, ok_codes: tuple[int, ...] = (0,)) -> tuple[CommandResult, wire.Reply]:
        res = self.transport.run(name, script, [str(a) for a in args], timeout=timeout, max_out=max_out)
        if res.exit == NOT_ROOT:
            raise GuestError(f"{self.where}: {name} needs root in the guest",
                             hint="log in as root or as a user with password-less sudo")
        if res.truncated:
            raise GuestError(f"{self.where}: {name}: the guest sent more than {max_out} bytes; stopped reading")
        if res.exit not in ok_codes:
            raise GuestError(f"{self.where}: {name} failed (exit {res.exit}): {res.err_line()}")
        return res, wire.parse(res.stdout)

    # -- probe / plan / apply / verify / undo ---------------------------------------
    def probe(self, serial: str = "pvepstore", disk_bytes: int | None = 512 << 20, *,
              assess: Callable[[ProbeReport], ProbeReport] | None = None) -> ProbeReport:
        """Everything pvepstore needs to know about the guest -- one command.

        The facts only, unless ``assess`` (a backend's, e.g. ``blk_wishes.assess``; see
        :meth:`pvepstore.backends.base.Backend.probe`) adds the verdict for that backend.
        """
        if not SERIAL_RE.match(serial):
            raise UsageError(f"invalid disk serial {serial!r}", hint="1-20 characters of A-Z a-z 0-9 _ -")
        _, reply = self._run("probe", scripts.PROBE, [serial, PROBE_FILE_CAP], max_out=4 << 20)
        report = build_report(reply, serial, disk_bytes)
        return assess(report) if assess is not None else report

    def plan(self, report: ProbeReport, *, wishes: GuestWishes, remove_legacy: bool = False) -> Plan:
        """What apply would change to give the guest a backend's ``wishes`` (no remote command)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            return make_plan(report, wishes, remove_legacy=remove_legacy, now=now)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def apply(self, plan: Plan, dry_run: bool = False) -> ApplyResult:
        """Carry out a plan (one command).  Refuses blocked plans; a changed guest aborts untouched."""
        refuse_blocked(plan, self.where)
        return self._change(plan, dry_run)

    def undo(self, dry_run: bool = False, report: ProbeReport | None = None,
             serial: str = "pvepstore") -> ApplyResult:
        """Restore every file in the guest's manifest (a probe unless ``report`` is given, then one command)."""
        if report is None:
            report = self.probe(serial=serial, disk_bytes=None)
        plan = make_undo_plan(report)
        if plan.blockers:
            raise GuestError(f"{self.where}: {plan.blockers[0].message}",
                             hint="inspect /var/lib/pvepstore on the guest")
        return self._change(plan, dry_run)

    def undo_plan(self, report: ProbeReport) -> Plan:
        return make_undo_plan(report)

    def verify(self, serial: str = "pvepstore", *, assess: Callable[[ProbeReport], ProbeReport],
               check: Callable[[ProbeReport], VerifyResult]) -> VerifyResult:
        """Is a backend registered with pvepstore's parameters (one command)?  ``assess`` and
        ``check`` are the backend's (e.g. ``blk_wishes.assess``/``blk_wishes.verify``)."""
        return check(self.probe(serial=serial, disk_bytes=None, assess=assess))

    def _change(self, plan: Plan, dry_run: bool) -> ApplyResult:
        if dry_run or plan.empty:
            return ApplyResult(ok=True, dry_run=dry_run, done=plan.describe())
        res, reply = self._run(plan.kind, scripts.CHANGE, plan.script_args(), timeout=300,
                               ok_codes=(0, 3, 4, 75))
        out = ApplyResult(ok=res.exit == 0, dry_run=False)
        for f in reply.items:
            key, fields = f
            vals = [wire.decode(x, 300) for x in fields]
            if key == "done" and vals[:1] != ["run"]:
                out.done.append(" ".join(vals))
            elif key == "ran":
                out.done.append("ran " + " ".join(vals))
            elif key == "fail":
                out.failures.append(" ".join(v for v in vals if v))
            elif key == "mismatch":
                out.mismatches.append(f"{vals[0]} changed since the probe")
        if out.failures:
            out.ok = False
        if res.exit in (3, 75):
            err = GuestError(f"{self.where}: another pvepstore run holds the guest's lock" if res.exit == 75 else
                             f"{self.where}: the guest changed since the probe ({'; '.join(out.mismatches)}); "
                             "nothing was changed", hint=None if res.exit == 75 else "probe and plan again")
            err.unchanged = True  # the guest script refused before its first change: callers may roll back
            raise err
        if res.exit == 4:
            raise GuestError(f"{self.where}: {plan.kind} stopped half-way: {'; '.join(out.failures) or res.err_line()}",
                             hint="`pvepstore guest undo` restores what was changed")
        return out

    # -- records ---------------------------------------------------------------------
    def read_records(self, max_bytes: int = DEFAULT_TOTAL_CAP,
                     record_bytes: int = DEFAULT_RECORD_CAP) -> list[GuestRecord]:
        """List and read /sys/fs/pstore (one command; names validated, sizes capped)."""
        result = self.read_records_full(max_bytes=max_bytes, record_bytes=record_bytes)
        return result.records

    def read_records_full(self, max_bytes: int = DEFAULT_TOTAL_CAP, record_bytes: int = DEFAULT_RECORD_CAP):
        record_bytes = min(record_bytes, max_bytes)
        _, reply = self._run("records", scripts.RECORDS, [record_bytes, max_bytes],
                             max_out=max_bytes * 4 // 3 + (256 << 10))
        result = parse_records(reply, record_bytes, max_bytes)
        for rec in result.records:
            self._read[rec.name] = rec
        return result

    def clear(self, names: Iterable[str]) -> ClearResult:
        """Unlink records read earlier on this connection (the caller archived them) -- one command.

        A record is unlinked only while the guest still shows the same size and time.
        """
        args: list[str] = []
        not_cleared: dict[str, str] = {}
        for name in names:
            rec = self._read.get(name)
            if rec is None or not valid_name(name):
                not_cleared[name] = "not read"
                continue
            args += [name, str(rec.size), str(rec.mtime)]
        cleared: list[str] = []
        if args:
            _, reply = self._run("clear", scripts.CLEAR, args)
            for f in reply.all("cleared"):
                if len(f) == 2:
                    name, status = wire.decode(f[0], 200), wire.decode(f[1], 16)
                    if status == "ok":
                        cleared.append(name)
                        self._read.pop(name, None)
                    else:
                        not_cleared[name] = status
        return ClearResult(cleared, not_cleared)

    def boot_history(self, journal_lines: int = 60) -> BootHistory:
        """Boot id, uptime, previous boots, whether the previous boot shut down in order (one command)."""
        _, reply = self._run("history", scripts.HISTORY, [journal_lines], max_out=256 << 10)
        return parse_history(reply)

    def write_pmsg(self, text: str) -> str:
        """Write ``text`` (one line added) to /dev/pmsg0 where the guest kernel has pmsg (one command).

        Returns "written", "absent" (no pmsg frontend: e.g. Debian's kernels; nothing is
        done) or "failed" (the device refused the write).  Never raises for a missing device.
        """
        _, reply = self._run("pmsg", scripts.PMSG, [text])
        status = reply.text("pmsg", limit=16).strip()
        return status if status in ("written", "absent", "failed") else "failed"

    def reboot(self) -> str:
        """Ask the guest to reboot (detached, 1 s later); returns the boot id it had (one command)."""
        _, reply = self._run("reboot", scripts.REBOOT, [])
        return reply.text("boot_id", limit=64).strip()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def refuse_blocked(plan: Plan, where: str) -> None:
    """A plan with blockers is never applied (provision checks this before its first API write)."""
    blockers = getattr(plan, "blockers", None) or []
    if blockers:
        err = GuestError(f"{where}: {blockers[0].message}", hint=blockers[0].fix or "see `pvepstore guest probe`")
        err.unchanged = True
        raise err


@contextmanager
def connect(target: GuestTarget, transport: Transport | None = None) -> Iterator[Guest]:
    """One SSH connection to ``target`` (or the given transport, e.g. a test double)."""
    t = transport if transport is not None else SshTransport.connect(target)
    guest = Guest(t, target.where)
    try:
        yield guest
    finally:
        guest.close()
