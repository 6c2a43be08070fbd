"""Making untrusted guest text safe to show on a terminal or use as a file name."""

from __future__ import annotations

import re

# CSI (ESC [ ... final), OSC (ESC ] ... BEL/ST), other two-byte ESC sequences,
# and the 8-bit C1 CSI/OSC introducers.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[@-Z\\-_]?"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """Drop escape sequences and show other control characters as ``\\xNN``.

    Newlines and tabs stay; a carriage return is shown, because a bare CR lets
    a guest overwrite what the operator already read on the same line.
    """
    text = _ESCAPES.sub("", text)
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


def safe_filename(name: str, *, max_len: int = 128) -> str:
    """A single, harmless path component derived from an untrusted name."""
    cleaned = _UNSAFE_NAME.sub("_", name)[:max_len].lstrip(".")
    return cleaned or "unnamed"
