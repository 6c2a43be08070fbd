"""On-disk structures of pstore/zone (fs/pstore/zone.c; unchanged 5.8 → 6.19)."""

from __future__ import annotations

import struct

from .model import Kind

BACKEND = "pstore_blk"
PSZ_SIG = 0x43474244  # "DBGC"; each zone stores PSZ_SIG ^ enum pstore_type_id
TYPE_IDS = {Kind.DMESG: 0, Kind.CONSOLE: 2, Kind.FTRACE: 3, Kind.PMSG: 7}
SIGNATURES = {kind: PSZ_SIG ^ tid for kind, tid in TYPE_IDS.items()}
KINDS_BY_SIG = {sig: kind for kind, sig in SIGNATURES.items()}
KMSG_MAGIC = 0x4DFC3AE5

# struct psz_buffer: u32 sig; atomic_t datalen (signed); atomic_t start (signed)
ZONE_HDR = struct.Struct("<Iii")
# struct psz_kmsg_header on x86_64: magic, pad, tv_sec, tv_nsec, bool compressed,
# pad, u32 counter, enum reason, tail pad (sizeof 40: the payload starts at +52).
KMSG_HDR = struct.Struct("<I4xqqB3xIi4x")
