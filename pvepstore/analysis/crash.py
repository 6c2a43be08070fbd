"""Finding the crashes in kernel log text: where each starts and ends, and what it says.

A log can hold no crash, one, or several (a WARNING, then the oops it led to,
then the panic).  Each crash is the block of lines from its trigger line (see
:mod:`.trigger`) to its ``---[ end trace``, to the next trigger, or to the
first run of lines that no longer look like part of an oops report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .frame import Frame, parse_frame, parse_trace
from .limits import bounded
from .logline import GLUED_TIME, LogLine, PstoreHeader, peel, split_lines
from .signature import duphash, short_signature
from .taint import decode_taint, taint_letters
from .title import make_title
from .trigger import CrashKind, Role, Trigger, match_trigger, panic_cause, PRELUDE

_END = re.compile(r"^-+\[ end (?:trace|Kernel panic)")
# Lines that belong to an oops report even though they are not frames.
_BODY = re.compile(
    r"^(?:Call [Tt]race|Backtrace|Stack|Code|Modules linked in|Hardware name|CPU|Pid|PID|RIP|EIP|IP|NIP|"
    r"[RE]?[SB]P|[RE][A-D]X|[RE][SD]I|R\d+|[CDEFGS]S|CR\d|DR\d|EFLAGS|PKRU|ORIG_RAX|task|Process|Comm|"
    r"Workqueue|Last Breaking|Krnl|last sysfs file|irq event stamp|hardirqs|softirqs|pc|lr|sp|x\d+|LR|CTR|"
    r"REGS|MSR|TRAP|CFAR|DAR|DSISR|SOFTE|GPR\d+|Instruction dump|Memory state|Allocated|Freed|"
    r"The buggy address|page|flags|raw|head|INFO|Read of size|Write of size|other info|Possible|"
    r"stack backtrace|Showing|\d+ locks? held|#\d+|\*\*\*|lock|CPU\d|Mem-Info|Node|Tasks state|"
    r"active_anon|oom|Out of memory|Killed process|Free swap|Total swap|\d+ pages|Uninit|Local variable|"
    r"Bytes|Object|Redzone|Padding|Disabling lock debugging|list_|refcount_t|NETDEV|rcu|\(|"
    r"\[\s*pid|<[A-Z]+>|---|===|\.\.\.|Kernel panic|Kernel Offset|Rebooting|"
    r"Dumping ftrace|sending NMI|NMI backtrace|Sending NMI|Memory cgroup|mce|\[Hardware Error\])"
)
_CALL_TRACE = re.compile(r"^(?:Call [Tt]race|Backtrace|stack backtrace)")
_HEXDUMP = re.compile(r"^\s*(?:[0-9a-fA-F]{4,16}[: ]\s*)+[0-9a-fA-F]*\s*$")
# A whitespace run squeezed to its first character: _HEXDUMP's "[: ]" can only take the first
# character of a run and "\s*" the rest, so its verdict is unchanged, but with runs of one
# character its "\s*"s no longer backtrack over long blanks (quadratic on "0000" + blanks + "!").
_RUNS = re.compile(r"(\s)\s+")
MAX_GAP = 10  # non-report lines that end a report
MAX_LINES = 600  # a sanity bound: no oops report is longer
PANIC_ATTACH = 40  # lines after a closed crash within which a panic is still "its" panic


@dataclass
class Crash:
    """One crash report found in a log."""

    kind: CrashKind
    first_line: str  # the trigger line, prefixes removed (ABRT's and Clear Linux's "reason")
    lines: list[LogLine] = field(default_factory=list)
    panic_message: str | None = None
    title: str = ""
    rip: Frame | None = None
    comm: str | None = None
    pid: int | None = None
    cpu: int | None = None
    kernel: str | None = None
    taint: str | None = None
    frames: list[Frame] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    duphash: str | None = None
    signature: str = ""
    pstore: PstoreHeader | None = None

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    @property
    def panicked(self) -> bool:
        return self.panic_message is not None

    @property
    def start_line(self) -> int:
        return self.lines[0].number if self.lines else 0

    @property
    def reliable_frames(self) -> list[Frame]:
        return [f for f in self.frames if f.reliable]

    def to_json(self) -> dict:
        return {
            "kind": self.kind.value,
            "title": self.title,
            "first_line": self.first_line,
            "panic_message": self.panic_message,
            "rip": str(self.rip) if self.rip else None,
            "comm": self.comm,
            "pid": self.pid,
            "cpu": self.cpu,
            "kernel": self.kernel,
            "taint": self.taint,
            "taint_flags": decode_taint(self.taint),
            "frames": [f.to_json() for f in self.frames],
            "modules": self.modules,
            "duphash": self.duphash,
            "signature": self.signature,
            "line": self.start_line + 1,
        }


def _is_body(text: str) -> bool:
    if not text.strip():
        return False
    if text[:1] in " \t":
        return True  # indented: a continuation of the report (stack, frames, lock lists)
    return bool(_BODY.match(text) or _HEXDUMP.match(_RUNS.sub(r"\1", text)) or parse_frame(text) is not None)


class _Builder:
    """Groups lines into crashes in one pass."""

    def __init__(self) -> None:
        self.crashes: list[Crash] = []
        self.open: Crash | None = None
        self.gap = 0
        self.last_body = 0  # index into self.open.lines of its last report line
        self.closed_at: int | None = None  # line number where the last crash closed
        self.started_by: Role = Role.START
        self.prelude: list[LogLine] = []
        self._since_trigger = 0

    def close(self) -> None:
        if self.open is not None:
            del self.open.lines[self.last_body + 1:]
            self.crashes.append(self.open)
            self.closed_at = self.open.lines[-1].number
            self.open = None

    def start(self, line: LogLine, trig: Trigger) -> None:
        self.close()
        crash = Crash(kind=trig.kind, first_line=line.text.lstrip(" "))
        crash.lines = [*self.prelude, line]
        if trig.role is Role.PANIC:
            crash.panic_message = _panic_message(line.text)
            crash.kind = panic_cause(crash.panic_message)
        self.open, self.gap, self.last_body, self.started_by = crash, 0, len(crash.lines) - 1, trig.role
        self._since_trigger = 0

    @property
    def header_lines(self) -> int:
        """Lines since the trigger, or a large number once the report's stack has begun."""
        return self._since_trigger

    def add(self, line: LogLine, *, body: bool) -> None:
        assert self.open is not None
        self.open.lines.append(line)
        if self._since_trigger < MAX_LINES and (parse_frame(line.text) or _CALL_TRACE.match(line.text.strip())):
            self._since_trigger = MAX_LINES
        self._since_trigger += 1
        if body:
            self.gap, self.last_body = 0, len(self.open.lines) - 1
        else:
            self.gap += 1

    def recent(self, line: LogLine, within: int) -> Crash | None:
        """The crash closed at most ``within`` lines before ``line``."""
        if self.crashes and self.closed_at is not None and line.number - self.closed_at <= within:
            return self.crashes[-1]
        return None

    def feed(self, line: LogLine) -> None:
        text = line.text.strip()
        trig = match_trigger(line.text) if line.is_kernel else None
        glued = GLUED_TIME.search(line.text) if trig is None and line.is_kernel else None
        if glued and glued.start() > 0:
            # Only a crash header is rescued from glued console output; other lines stay
            # as they are (satyr, and so the duphash, reads them unglued).
            rest = peel(line.text[glued.start():], line.number)
            if (rescued := match_trigger(rest.text)) is not None:
                line, trig = rest, rescued
                text = line.text.strip()
        if self.open is not None:
            crash = self.open
            if crash.lines[-1].timestamp is not None and line.timestamp is None and trig is None \
                    and not _is_body(line.text):
                return  # untimestamped text interleaved into a timestamped console (e.g. a test program)
            if trig is not None and trig.role is Role.PANIC:
                if crash.panic_message is None and crash.kind is not CrashKind.PANIC:
                    crash.panic_message = _panic_message(line.text)
                    self.add(line, body=True)
                    return
                self.start(line, trig)
                return
            if trig is not None and trig.role is Role.START and self.header_lines <= 3:
                # Still in the report's header: a WARN's own message ("Watchdog detected hard
                # LOCKUP"), the trap that implements BUG() ("invalid opcode" after "kernel BUG at"),
                # or the same message printed again.
                self.add(line, body=True)
                return
            if trig is not None and trig.role is Role.START:
                # "list_del corruption" / "Oops:" opened the report; the real header follows.
                if self.started_by is Role.CONTINUE and not crash.frames and len(crash.lines) < 4:
                    crash.kind, crash.first_line, self.started_by = trig.kind, line.text.lstrip(" "), Role.START
                    self.add(line, body=True)
                    return
                self.start(line, trig)
                return
            if _END.match(text):
                self.add(line, body=True)
                self.close()  # a panic that still follows is attached by recent()
                return
            if len(crash.lines) >= MAX_LINES:
                self.close()
            elif line.is_kernel and (trig is not None or _is_body(line.text)):
                self.add(line, body=True)
                return
            else:
                self.add(line, body=False)
                if self.gap > MAX_GAP:
                    self.close()
                return
        prelude, self.prelude = self.prelude, []
        if trig is None:
            if line.is_kernel and PRELUDE.match(text):
                self.prelude = [line]  # kept only if the trigger comes right after it
            return
        if trig.role is Role.PANIC:
            prev = self.recent(line, PANIC_ATTACH)
            if prev is not None and prev.panic_message is None and prev.kind is not CrashKind.PANIC:
                prev.panic_message = _panic_message(line.text)
                prev.lines.append(line)
                return
        if trig.role is Role.CONTINUE:
            prev = self.recent(line, MAX_LINES)
            if prev is not None and prev.kind is trig.kind:
                prev.lines.append(line)  # e.g. "Out of memory: Killed process" after the OOM report
                self.closed_at = line.number
                return
        self.prelude = prelude
        self.start(line, trig)
        self.prelude = []

    def finish(self) -> list[Crash]:
        self.close()
        return self.crashes


def _dec(digits: str) -> int | None:
    """A pid/cpu number from guest text; None when longer than any the kernel prints
    (int() of thousands of digits raises, and is quadratic)."""
    return int(digits) if len(digits) <= 20 else None


def _panic_message(text: str) -> str:
    return text.split("Kernel panic - not syncing:", 1)[-1].strip()


def find_crashes(lines: list[LogLine]) -> list[Crash]:
    """Group message lines into crash blocks (no field extraction yet)."""
    builder = _Builder()
    for line in lines:
        builder.feed(line)
    return builder.finish()


# ---------------------------------------------------------------- fields

_CPU_LINE = re.compile(r"CPU: (?P<cpu>\d+) (?:UID: \d+ )?PID: (?P<pid>\d+) Comm: (?P<comm>.{1,64}?) "
                       r"(?:Not tainted|Tainted: )")
_PID_LINE = re.compile(r"Pid: (?P<pid>\d+), comm: (?P<comm>.{1,64}?) (?:Not tainted|Tainted: )")
_OLD_CPU = re.compile(r"^CPU:? (?P<cpu>\d+)\s*$")
_WARN_CPU = re.compile(r"CPU: (?P<cpu>\d+) PID: (?P<pid>\d+) at ")
_TASK_HEADER = re.compile(r"(?:INFO: task |\[)(?P<comm>[^\s:\]]{1,64}):(?P<pid>\d+)(?:\]| blocked| can't)")
# After the taint field, or in "(release #N)" on EFLAGS/REGS lines (ABRT's oops-utils regexp, loosened
# for two-component releases such as Debian's "3.12-trunk-amd64").
_RELEASE = re.compile(r"(?:^|[ (]|kernel-)(?P<rel>\d+\.\d+(?:\.\d+)?(?:\.[^.\s-]+)*-[^\s)]+|\d+\.\d+\.\d+[^\s)]*)\)? #")
_LINUX_VERSION = re.compile(r"^Linux version (?P<rel>\S+) ")
_RIP = re.compile(
    r"(?:^|\s)(?:RIP|EIP is at|EIP|IP|NIP|pc|PC is at)\s*(?::\s*)?(?!0033:)(?:\d{4}:)?(?:\[<?[0-9a-fA-F]+>?\]\s*){0,2}"
    r"(?:\?\s*)?(?P<func>[A-Za-z0-9_.$]+)\+(?P<off>0x[0-9a-fA-F]+)/(?P<len>0x[0-9a-fA-F]+)"
    r"(?:\s*\[(?P<mod>[^\]\s]+)\])?")


def _module_name(token: str) -> str:
    """``vboxdrv(OE)`` -> ``vboxdrv``: what ``re.sub(r"\\(.*\\)$", "", token)`` did, without its
    quadratic search over a token full of ``(``."""
    i = token.find("(")
    return token[:i] if i >= 0 and token.endswith(")") else token


def _fill_fields(crash: Crash, release_fallback: str | None) -> None:
    text = crash.text
    for line in crash.lines:
        t = line.text
        m = _CPU_LINE.search(t) or _PID_LINE.search(t)
        if m and crash.pid is None:
            crash.pid, crash.comm = _dec(m.group("pid")), m.group("comm").strip()
            if "cpu" in m.groupdict() and m.group("cpu") is not None:
                crash.cpu = _dec(m.group("cpu"))
        if crash.cpu is None:
            m = _OLD_CPU.match(t.strip()) or _WARN_CPU.search(t)
            if m:
                crash.cpu = _dec(m.group("cpu"))
        if crash.kernel is None and re.search(r"PID|Pid|[Cc]omm|CPU|REGS|EFLAGS", t):
            m = _RELEASE.search(t)
            if m:
                crash.kernel = m.group("rel")
        if crash.rip is None:
            m = _RIP.search(t)
            if m:
                crash.rip = Frame(m.group("func"), int(m.group("off"), 16), int(m.group("len"), 16),
                                  m.group("mod"))
    if crash.pid is None:
        m = _TASK_HEADER.search(crash.first_line)
        if m:
            crash.comm, crash.pid = m.group("comm"), _dec(m.group("pid"))
    crash.kernel = crash.kernel or release_fallback
    crash.taint = taint_letters(text)
    trace = parse_trace(crash.lines)
    crash.frames = trace.frames
    crash.modules = [_module_name(m) for m in trace.modules or []]


def extract_crashes(text: str, *, host: str | None = None) -> list[Crash]:
    """Every crash in ``text``, with kind, title, fields and signatures filled in.

    Only the last :data:`~.limits.RECORD_TEXT_LIMIT` characters are analysed (less once the
    :func:`~.limits.image_budget` in effect runs out); line numbers still count from the
    start of ``text``.
    """
    text, skipped = bounded(text)
    lines, headers = split_lines(text, host=host, first_number=skipped)
    release = next((m.group("rel") for line in lines if (m := _LINUX_VERSION.match(line.text))), None)
    crashes = find_crashes(lines)
    for crash in crashes:
        _fill_fields(crash, release)
        crash.title = make_title(crash)
        crash.duphash = duphash(crash.frames)
        tag = {CrashKind.HANG: "(HANG)"}.get(crash.kind, "")
        crash.signature = short_signature(crash.frames, rip=crash.rip, tag=tag,
                                          fallback=crash.panic_message or crash.first_line)
        crash.pstore = headers[-1] if headers else None
    return crashes
