"""Bounded raw-deflate decompression of compressed dmesg records.

pstore writes raw deflate (no zlib header): crypto deflate with window 11 on
5.11-6.5, zlib with window 15 on 6.6+; ``wbits=-15`` reads both
(pstore-blk-format.md §5).  The guest is untrusted, so output is capped: the
kernel's own bound is ``3 * bufsize`` (6.6+) or ``bufsize * 100 / cmpr`` (6.1),
and a stream that wants more is a deflate bomb, not a crash log.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Inflated:
    data: bytes | None  # None when the stream is not a complete, bounded deflate stream
    error: str | None = None
    consumed: int = 0  # compressed bytes that belonged to the stream


def inflate_raw(payload: bytes, limit: int) -> Inflated:
    """Decompress a raw deflate stream, refusing to produce more than ``limit`` bytes."""
    d = zlib.decompressobj(-15)
    try:
        # One byte over the limit tells "exactly at the limit" from "over it".
        out = d.decompress(payload, limit + 1)
    except zlib.error as exc:
        return Inflated(None, f"not a raw deflate stream ({exc})")
    if len(out) > limit:
        return Inflated(None, f"decompresses to more than {limit} bytes (deflate bomb?)")
    if not d.eof:
        return Inflated(None, "truncated deflate stream")
    return Inflated(out, None, len(payload) - len(d.unused_data))
