"""Records as the guest lists them in /sys/fs/pstore (read through SSH, not from the disk)."""

from __future__ import annotations

import re

from .dump import part_header, reason_code
from .model import Kind, Record

# pstore_mkfile(): "%s-%s-%llu%s" = type, backend, id, ".enc.z" when still compressed
_NAME = re.compile(r"^(dmesg|console|pmsg|ftrace)-([A-Za-z0-9_]+)-(\d{1,20})(\.enc\.z)?$")
# "%s: Total %d times\n" (psz_kmsg_read): an int, at most 10 digits
_TOTAL = re.compile(rb"^(\w{1,32}): Total (-?\d{1,10}) times\n")


def parse_name(name: str) -> tuple[Kind, str, int, bool] | None:
    """(kind, backend, id, still compressed) of a pstorefs file name; None for anything else."""
    m = _NAME.match(name)
    if not m:
        return None
    return Kind(m.group(1)), m.group(2), int(m.group(3)), bool(m.group(4))


def record_from_file(name: str, data: bytes, mtime: float | None = None) -> Record | None:
    """A Record for one /sys/fs/pstore file; None when the name is not a pstore record name.

    Reason and counter come from the text, as pstorefs keeps no metadata:
    ``Oops: Total 3 times`` (pstore_blk, uncompressed) or the ``Oops#1 Part1`` line.
    """
    parsed = parse_name(name)
    if parsed is None:
        return None
    kind, backend, ident, encoded = parsed
    reason = counter = None
    if kind is Kind.DMESG and not encoded:
        total = _TOTAL.match(data)
        head = part_header(data[total.end():] if total else data)
        if total:
            reason, counter = total.group(1).decode("ascii", "replace"), int(total.group(2))
        elif head:
            reason, counter = head[0], head[1]
    sec = int(mtime) if mtime and kind is Kind.DMESG else None
    nsec = int((mtime - int(mtime)) * 1e9) if sec is not None else None
    return Record(name=name, kind=kind, backend=backend, zone=ident, offset=-1, data=data,
                  reason=reason, reason_code=reason_code(reason) if reason else None,
                  counter=counter, time_sec=sec, time_nsec=nsec, compressed=encoded)
