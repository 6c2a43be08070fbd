"""Making untrusted guest text safe to show on a terminal or use as a file name.

:func:`terminal_safe` makes one linear pass over the text with a single
pattern whose every repetition is bounded and whose pieces cannot overlap, so
a guest cannot make it backtrack.  Its rules:

* A complete escape sequence is removed: CSI (``ESC [`` params final), OSC
  (``ESC ]`` ... BEL or ST) and two-byte ``ESC x``.  A sequence never spans a
  newline and an OSC payload is at most :data:`MAX_OSC` characters: a guest
  that leaves an OSC open (``ESC ] 52;c;...`` without a terminator) must not
  make the following log lines vanish, so an unterminated one loses only its
  ``ESC ]`` and the rest stays visible.
* Any other C0/C1 control (except tab and newline) and DEL is shown as
  ``\\xNN``; a carriage return too, because a bare CR lets a guest overwrite
  what the operator already read on the same line.
* Unicode format characters (category Cf: bidirectional overrides and
  isolates, zero-width spaces and joiners, the BOM, tags), line/paragraph
  separators (Zl, Zp) and lone surrogates are shown as ``\\uXXXX``: they let a
  guest reorder or hide what a terminal displays (CVE-2021-42574 "Trojan
  Source").
"""

from __future__ import annotations

import re

MAX_OSC = 512  # longer than any title/clipboard/hyperlink sequence a kernel or shell would print
MAX_CSI_PARAMS = 64

# Unicode 14-16 categories Cf, Zl and Zp (tests/test_text.py checks this table against
# unicodedata, so a newer Python that knows more format characters makes the test fail),
# plus the surrogates a decoder with errors="surrogateescape" can leave behind.
INVISIBLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
    (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E), (0x200B, 0x200F), (0x2028, 0x202E),
    (0x2060, 0x2064), (0x2066, 0x206F), (0xD800, 0xDFFF), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)
_INVISIBLE = "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in INVISIBLE_RANGES)

# _FIRST finds the next character that needs attention (one fast scan over the text);
# _SEQUENCE, tried only there, says whether an escape sequence starts at it.  Every class
# in _SEQUENCE excludes "\n", so nothing that starts on one line can reach the next.
_FIRST = re.compile(rf"[\x00-\x08\x0b-\x1f\x7f-\x9f{_INVISIBLE}]")
_SEQUENCE = re.compile(
    rf"\x1b(?:\[[0-?]{{0,{MAX_CSI_PARAMS}}}[ -/]{{0,16}}[@-~]"  # CSI
    rf"|\][^\x07\x1b\x9c\n]{{0,{MAX_OSC}}}(?:\x07|\x1b\\|\x9c)"  # terminated OSC
    r"|[@-Z\\-_])?"  # ESC + Fe byte (an unterminated CSI/OSC loses just this), or a bare ESC
    rf"|\x9b[0-?]{{0,{MAX_CSI_PARAMS}}}[ -/]{{0,16}}[@-~]"  # 8-bit CSI
    rf"|\x9d[^\x07\x1b\x9c\n]{{0,{MAX_OSC}}}(?:\x07|\x1b\\|\x9c)"  # 8-bit OSC, terminated
)


def _escaped(char: str) -> str:
    code = ord(char)
    if code <= 0x9F:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def terminal_safe(text: str) -> str:
    """``text`` with escape sequences removed and other control/format characters shown escaped.

    Newlines and tabs stay; everything else that a terminal would act on
    instead of print is removed (complete escape sequences) or made visible.
    """
    out: list[str] = []
    pos = 0
    while (m := _FIRST.search(text, pos)) is not None:
        i = m.start()
        out.append(text[pos:i])
        seq = _SEQUENCE.match(text, i)
        if seq is not None:
            pos = seq.end()
        else:
            out.append(_escaped(text[i]))
            pos = i + 1
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


def safe_filename(name: str, *, max_len: int = 128) -> str:
    """A single, harmless path component derived from an untrusted name."""
    cleaned = _UNSAFE_NAME.sub("_", name)[:max_len].lstrip(".")
    return cleaned or "unnamed"
