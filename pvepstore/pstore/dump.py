"""Decoding a kmsg dump payload the way pstore's decompress_record() does (fs/pstore/platform.c)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .inflate import inflate_raw
from .model import REASONS

# "%s#%d Part%u\n" (pstore_dump): at most 10 digits each; longer is not the kernel's line
_PART_HEADER = re.compile(rb"^(\w{1,32})#(\d{1,10}) Part(\d{1,10})\n")
_REASON_CODES = {name: code for code, name in REASONS.items()}


@dataclass(frozen=True)
class Decoded:
    data: bytes
    suffix: str  # ".enc.z" when the kernel would keep the compressed bytes
    error: str | None = None


def decode_payload(payload: bytes, compressed: bool, limit: int) -> Decoded:
    """The bytes pstorefs shows for a dump payload; undecodable ones stay raw as ``.enc.z``."""
    if not compressed:
        return Decoded(payload, "")
    result = inflate_raw(payload, limit)
    if result.data is None:
        return Decoded(payload, ".enc.z", result.error)
    return Decoded(result.data, "")


def part_header(text: bytes) -> tuple[str, int, int] | None:
    """(reason, per-boot dump count, part) from the ``Oops#1 Part1`` line pstore writes first."""
    m = _PART_HEADER.match(text)
    if not m:
        return None
    return m.group(1).decode("ascii", "replace"), int(m.group(2)), int(m.group(3))


def reason_code(reason: str) -> int:
    return _REASON_CODES.get(reason, 0)
