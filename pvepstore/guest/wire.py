"""Parsing what the guest scripts print: ``KEY B64FIELD...`` lines, bounded and strict.

Malformed lines are counted and skipped, never fatal: the guest is untrusted
and a half-written line must not crash a root process on the hypervisor.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

_KEY = re.compile(rb"^[a-z_]{1,32}$")
MAX_LINES = 100_000


@dataclass
class Reply:
    """The items of one script run: key -> list of field tuples, in output order."""

    items: list[tuple[str, tuple[bytes, ...]]] = field(default_factory=list)
    malformed: int = 0
    complete: bool = False  # the script reached its final ``end`` line

    def all(self, key: str) -> list[tuple[bytes, ...]]:
        return [f for k, f in self.items if k == key]

    def first(self, key: str) -> tuple[bytes, ...] | None:
        for k, f in self.items:
            if k == key:
                return f
        return None

    def text(self, key: str, index: int = 0, default: str = "", limit: int = 16384) -> str:
        """One field as text (UTF-8, invalid bytes replaced), bounded."""
        f = self.first(key)
        if f is None or len(f) <= index:
            return default
        return f[index][:limit].decode("utf-8", "replace")

    def has(self, key: str) -> bool:
        return self.first(key) is not None


def parse(stdout: bytes) -> Reply:
    reply = Reply()
    for n, line in enumerate(stdout.split(b"\n")):
        if n >= MAX_LINES:
            reply.malformed += 1
            break
        if not line:
            continue
        parts = line.split(b" ")
        if not _KEY.match(parts[0]):
            reply.malformed += 1
            continue
        try:
            fields = tuple(base64.b64decode(p, validate=True) for p in parts[1:])
        except (binascii.Error, ValueError):
            reply.malformed += 1
            continue
        key = parts[0].decode()
        if key == "end":
            reply.complete = True
            continue
        reply.items.append((key, fields))
    return reply


def decode(b: bytes, limit: int = 4096) -> str:
    return b[:limit].decode("utf-8", "replace")
