"""terminal_safe: escape sequences removed line-locally, controls and format characters made visible."""

from __future__ import annotations

import time
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from pvepstore.text import INVISIBLE_RANGES, MAX_OSC, terminal_safe

BIDI_AND_ZERO_WIDTH = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u200c\u200d\u200e\u200f" \
                      "\u2028\u2029\ufeff\u061c\u00ad\u2060\U000e0041"


def _unsafe(ch: str) -> bool:
    """What must never reach a terminal raw: ESC, C0 but tab/newline, DEL, C1, Cf/Zl/Zp, surrogates."""
    code = ord(ch)
    if ch in "\t\n":
        return False
    return code < 0x20 or 0x7F <= code <= 0x9F or unicodedata.category(ch) in ("Cf", "Zl", "Zp", "Cs")


def test_the_table_covers_every_format_and_separator_character_python_knows():
    covered = {c for a, b in INVISIBLE_RANGES for c in range(a, b + 1)}
    missing = [hex(c) for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cf", "Zl", "Zp", "Cs")
               and c not in covered]
    assert not missing, f"add to INVISIBLE_RANGES (Unicode {unicodedata.unidata_version}): {missing[:20]}"


def test_bidi_overrides_and_zero_width_characters_are_shown_escaped():
    out = terminal_safe(f"BUG: a{BIDI_AND_ZERO_WIDTH}b")
    assert not any(_unsafe(c) for c in out)
    assert out.startswith("BUG: a\\u202a\\u202b") and "\\u2029" in out and "\\U000e0041" in out and out.endswith("b")


def test_unterminated_osc_hides_nothing_after_it():
    text = "line 1 \x1b]52;c;SGVsbG8=\nline 2: BUG: evil\nline 3\x07 tail\n\x1b]0;title\x07line 4"
    out = terminal_safe(text)
    assert out.split("\n") == ["line 1 52;c;SGVsbG8=", "line 2: BUG: evil", "line 3\\x07 tail", "line 4"]


def test_long_osc_is_not_a_sequence_and_csi_is_removed():
    payload = "x" * (MAX_OSC + 1)
    assert terminal_safe(f"\x1b]{payload}\x07ok") == f"{payload}\\x07ok"
    assert terminal_safe("\x1b[1;31mred\x1b[0m \x9b2J\x9d0;t\x9c ok\r") == "red  ok\\x0d"


PRINTABLE_LINE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
HOSTILE = st.lists(st.sampled_from(["\x1b", "\x1b]", "\x1b[", "\x9b", "\x9d", "\x07", "\x9c", "\x1b\\", "52;c;",
                                   "1;31", "m", "\r", "\x00", "\x7f", "\x85", "\t", "a", " ", "\u00e9",
                                   *BIDI_AND_ZERO_WIDTH, "\ud800"]), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), PRINTABLE_LINE, HOSTILE), min_size=1, max_size=12))
def test_printable_lines_survive_in_order_and_nothing_unsafe_is_left(spec):
    # A hostile line mixes sequences, controls and bidi characters into printable text.
    lines = [printable[:5] + hostile + printable[5:] if is_hostile else printable
             for is_hostile, printable, hostile in spec]
    text = "\n".join(lines)
    out = terminal_safe(text)
    assert not any(_unsafe(c) for c in out)
    out_lines = out.split("\n")
    assert len(out_lines) == len(lines)  # a sequence never spans or swallows a newline
    for given_line, shown in zip(lines, out_lines):
        if all(0x20 <= ord(c) <= 0x7E for c in given_line):
            assert shown == given_line


def _cpu(fn, arg) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        fn(arg)
        best = min(best, time.process_time() - start)
    return best


def test_terminal_safe_is_linear_on_hostile_shapes():
    shapes = ["\x1b]", "\x1b[", "\x1b[1", "\x1b]52;c;AAAA", "\x9d", "\x9b1", "\u202e", "\x1b", "\x1b[" + "1;" * 40,
              "\x1b]" + "a" * 600, "a\n\x1b]", "\x1b[\n"]
    for unit in shapes:
        small, large = unit * (16384 // len(unit)), unit * (65536 // len(unit))
        t_small, t_large = _cpu(terminal_safe, small), _cpu(terminal_safe, large)
        assert t_large < 12 * max(t_small, 1e-4), (unit, t_small, t_large)
