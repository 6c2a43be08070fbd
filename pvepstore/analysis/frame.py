"""Call-trace frames, parsed the way satyr parses a kernel oops.

The ABRT duphash is a hash over satyr's frame list, so matching ABRT means
matching satyr's parser line for line (abrt/satyr ``lib/koops_stacktrace.c``
and ``lib/koops_frame.c``, re-implemented here from their behaviour): the
first ``RIP:``/``EIP:`` line becomes the top frame, every other line that looks
like ``[<addr>] ? func+0x1/0x2 [mod]`` (x86), ``[sp] [pc] .func+0x1/0x2`` (ppc64)
or ``[<pc>] (func) from [<lr>] (caller+0x1/0x2)`` (arm) is a frame, and
``<IRQ>``/``<NMI>``/``<EOI>`` mark the special stack of the frames between them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .logline import LogLine

def _addr(name: str) -> str:
    return rf"\[<?(?P<{name}>[0-9a-fA-F]+)>?\]"


_ADDR = r"\[<?[0-9a-fA-F]+>?\]"
_HEX0X = r"0x[0-9a-fA-F]+"
_FUNC = r"(?P<func>[^\s)+<]+)\+(?P<off>(?:0x)?[0-9a-fA-F]+)/(?P<len>(?:0x)?[0-9a-fA-F]+)"
_MODULE = r"\[(?P<mod>[^\s\]]+)\]"

_PPC = re.compile(rf"^\s*{_ADDR}\s*{_addr('addr')}\s*\.?{_FUNC}\s*(?:{_MODULE})?\s*(?P<unrel>\(unreliable\))?\s*$")
_ARM = re.compile(rf"^\s*{_addr('addr')}\s*(?P<q>\?)?\s*\((?P<afunc>[^\s)+<]+)\)\s*from\s*{_ADDR}\s*"
                  rf"(?:\(?{_HEX0X}\)?|\(?{_FUNC}\s*(?:{_MODULE})?\s*\)?)")
_ADDR_ONLY = re.compile(rf"^\s*\(?\s*(?:{_addr('addr')}|(?P<hex>{_HEX0X}))")
_GENERIC = re.compile(
    rf"^\s*(?P<paren>\()?(?:{_addr('addr')})?\s*(?P<q>\?)?\s*"
    rf"(?:\(?(?P<hexonly>{_HEX0X})\)?|\(?{_FUNC}\s*(?:{_MODULE})?\s*\)?)"
    rf"\s*(?:from\s*{_ADDR}\s*\(?(?:{_HEX0X}|[^\s)+<]+\+[^\s/]+/[^\s)]+(?:\s*\[[^\s\]]+\])?)\)?)?\s*(?:\[(?P<mod2>[^\s\]]+)\])?\s*\)?\s*$"
)
_RIP_OLD = re.compile(r"^\s*RIP:[ \t]+\S+[ \t]+(?P<rest>.*)$")
# "\s*(?:\?\s*)?" rather than "\s*\??\s*": two adjacent unbounded runs over the same blanks
# backtrack quadratically on a line of blanks.
_EIP = re.compile(rf"^\s*EIP:[ \t]+{_addr('addr')}\s*(?:(?P<q>\?)\s*)?\(?{_FUNC}(?:\s*{_MODULE})?")
_ALT_END = re.compile(r"^\s*<+EO[IE]+>+")
_ALT_START = re.compile(r"^\s*<([^>\s]+)>")
_MODULES = re.compile(r"^\s*Modules linked in:([ \t]*)(.*)$")
_MODULE_STOP = re.compile(r"^(?:Pid: |CPU[ :]+\d|irq event stamp[ :]+\d|CR2: [0-9a-fA-F])")


@dataclass(frozen=True)
class Frame:
    """One call-trace entry.  ``reliable`` is False for the ``?`` entries."""

    function: str | None
    offset: int | None = None
    length: int | None = None
    module: str | None = None
    address: int | None = None
    reliable: bool = True
    special_stack: str | None = None  # IRQ, NMI, ... for frames on an exception stack

    def to_json(self) -> dict:
        return {
            "function": self.function,
            "offset": None if self.offset is None else hex(self.offset),
            "length": None if self.length is None else hex(self.length),
            "module": self.module,
            "address": None if self.address is None else hex(self.address),
            "reliable": self.reliable,
            "special_stack": self.special_stack,
        }

    def __str__(self) -> str:
        text = "? " if not self.reliable else ""
        text += self.function or (hex(self.address) if self.address is not None else "?")
        if self.offset is not None and self.length is not None:
            text += f"+{self.offset:#x}/{self.length:#x}"
        if self.module:
            text += f" [{self.module}]"
        return text


@dataclass
class Trace:
    """satyr's view of one oops: frames (crash frame first), modules, and whether an IP line was seen."""

    frames: list[Frame] = field(default_factory=list)
    modules: list[str] | None = None
    ip_frame: Frame | None = None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    return int(text, 16)


# The frame patterns above separate their tokens with "\s*" only, and no token contains
# whitespace, so squeezing every run of whitespace to one blank changes neither what
# they match nor what they capture -- but it takes away the runs over which their many
# adjacent "\s*" would backtrack (cubic time on a guest line of blanks).
_BLANKS = re.compile(r"\s+")


def parse_frame(text: str, special: str | None = None) -> Frame | None:
    """One trace line as a frame, or None (satyr's ``sr_koops_frame_parse``)."""
    text = _BLANKS.sub(" ", text)
    m = _PPC.match(text)
    if m:
        return Frame(m.group("func"), _int(m.group("off")), _int(m.group("len")), m.group("mod"),
                     _int(m.group("addr")), reliable=not m.group("unrel"), special_stack=special)
    m = _ARM.match(text)
    if m:
        return Frame(m.group("afunc"), address=_int(m.group("addr")), reliable=not m.group("q"), special_stack=special)
    m = _GENERIC.match(text)
    if m:
        if m.group("hexonly") or not m.group("func"):
            addr = m.group("addr") or m.group("hexonly")
            return Frame(None, address=_int(addr), reliable=not m.group("q"), special_stack=special)
        return Frame(m.group("func"), _int(m.group("off")), _int(m.group("len")),
                     m.group("mod") or m.group("mod2"), _int(m.group("addr")), reliable=not m.group("q"),
                     special_stack=special)
    m = _ADDR_ONLY.match(text)
    if m and text.strip().rstrip(")") == m.group(0).strip():
        return Frame(None, address=_int(m.group("addr") or m.group("hex")), special_stack=special)
    return None


def parse_ip(text: str) -> Frame | None:
    """The crash frame from an old-style ``RIP: 0010:[<a>] [<a>] f+0/0`` or i386 ``EIP: [<a>] f+0/0``."""
    m = _RIP_OLD.match(text)
    if m:
        return parse_frame(m.group("rest"))
    m = _EIP.match(text)
    if m:
        return Frame(m.group("func"), _int(m.group("off")), _int(m.group("len")), m.group("mod"),
                     _int(m.group("addr")), reliable=not m.group("q"))
    return None


def _parse_modules(lines: list[LogLine], i: int) -> tuple[list[str], int]:
    """The ``Modules linked in:`` list starting at line i, and the index of its last line."""
    m = _MODULES.match(lines[i].text)
    assert m
    ws_before_eol = True
    modules: list[str] = []
    rest = m.group(2)
    last = i
    while True:
        tokens = re.match(r"([^\[]*)", rest).group(1)
        stopped_at_bracket = "[" in rest
        split = tokens.split()
        if split and not ws_before_eol and modules and not rest[:1].isspace():
            modules[-1] += split.pop(0)  # a name broken across lines
        modules.extend(split)
        ws_before_eol = rest.endswith((" ", "\t")) or not rest
        if stopped_at_bracket or last + 1 >= len(lines):
            break
        nxt = lines[last + 1]
        # satyr continues the list on the next line unless that line starts
        # something else (a timestamped line, "Pid:", "CPU:", ...).
        if nxt.timestamp is not None or nxt.host is not None or _MODULE_STOP.match(nxt.text):
            break
        last += 1
        rest = nxt.text
    return modules, last


def parse_trace(lines: list[LogLine]) -> Trace:
    """satyr's frame list for the lines of one oops (the whole input, as satyr reads it)."""
    trace = Trace()
    special: str | None = None
    i = 0
    while i < len(lines):
        text = lines[i].text
        if text.strip() == "Last Breaking-Event-Address:":  # s390x: the stack ends here
            break
        if trace.modules is None and _MODULES.match(text):
            trace.modules, i = _parse_modules(lines, i)
            i += 1
            continue
        if trace.ip_frame is None:
            frame = parse_ip(text)
            if frame is not None:
                trace.ip_frame = frame
                trace.frames.insert(0, frame)
                i += 1
                continue
        m = _ALT_END.match(text)
        if m:
            special = None
            text = text[m.end():]
        m = _ALT_START.match(text)
        if m:
            special = m.group(1)
            text = text[m.end():]
        frame = parse_frame(text, special)
        if frame is not None:
            trace.frames.append(frame)
        i += 1
    return trace
