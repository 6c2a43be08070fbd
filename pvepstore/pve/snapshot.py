"""A consistent copy of a file something else may be writing: read until two reads agree.

A running VM's memory file (ivshmem) and its efidisk0 are written by the guest or the firmware at
any moment, without a lock the host could take; two equal consecutive reads are a copy no write
tore (both backends read this way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

SNAPSHOT_TRIES = 5


@dataclass
class Snapshot:
    data: bytes
    reads: int  # how many whole reads it took (2 = the first two agreed)
    consistent: bool


def snapshot(read: Callable[[], bytes], *, tries: int = SNAPSHOT_TRIES, pause: float = 0.02) -> Snapshot:
    """Read until two consecutive reads agree (at most ``tries`` reads).  A store the firmware keeps
    rewriting is returned as the last read with ``consistent`` False (the reader then copes with a
    torn variable: the record's checks fail, the rest stays readable)."""
    last = read()
    for n in range(2, max(tries, 2) + 1):
        time.sleep(pause)
        cur = read()
        if cur == last:
            return Snapshot(cur, n, True)
        last = cur
    return Snapshot(last, max(tries, 2), False)
