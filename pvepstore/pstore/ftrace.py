"""The combined ftrace record, as pstore_ftrace_combine_log() builds it (fs/pstore/ftrace.c)."""

from __future__ import annotations

import struct

# struct pstore_ftrace_record on x86_64: ip, parent_ip, ts (cpu in ts's low 8 bits)
FTRACE_REC = struct.Struct("<QQQ")
TS_CPU_SHIFT = 8


def split_records(data: bytes) -> list[tuple[int, int, int]]:
    """Whole records of one zone; the kernel skips ``len % 24`` leading bytes."""
    skip = len(data) % FTRACE_REC.size
    return [FTRACE_REC.unpack_from(data, off) for off in range(skip, len(data), FTRACE_REC.size)]


def merge_by_timestamp(dest: list, src: list) -> list:
    """pstore_ftrace_combine_log(): take dest only when strictly older, else src."""
    out, i, j = [], 0, 0
    while i < len(dest) and j < len(src):
        if dest[i][2] >> TS_CPU_SHIFT < src[j][2] >> TS_CPU_SHIFT:
            out.append(dest[i])
            i += 1
        else:
            out.append(src[j])
            j += 1
    out.extend(dest[i:])
    out.extend(src[j:])
    return out


def render(records: list[tuple[int, int, int]]) -> bytes:
    """pstore_ftrace_seq_show() without kallsyms: addresses instead of ``%ps`` symbol names."""
    return "".join(
        f"CPU:{ts & 0xFF} ts:{ts >> TS_CPU_SHIFT} {ip:08x}  {parent:08x}  {ip:#x} <- {parent:#x}\n"
        for ip, parent, ts in records
    ).encode()
