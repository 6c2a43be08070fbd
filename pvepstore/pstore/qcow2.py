"""A read-only qcow2 image as a :class:`~pvepstore.pstore.source.ByteSource` of the guest's view.

Proxmox keeps an ``efidisk0`` on a directory storage as qcow2 by default (``<vmid>/vm-<vmid>-disk-N.qcow2``);
the OVMF variable store is its first 540,672 (4M build) or 131,072 (2M build) bytes.  This reader
translates guest offsets through the L1/L2 tables (qcow2 spec, qemu docs/interop/qcow2.txt, v2 and v3):
normal clusters, unallocated and all-zero clusters (zeros: no backing file), and deflate-compressed
clusters (``qemu-img convert -c``, raw deflate as qemu's ``qcow2_co_decompress`` writes it).

Refused with an :class:`InputError`, never guessed: a backing file (the bytes it would supply are not
here), encryption, an external data file, extended L2 entries (subclusters), zstd compression, an
image marked corrupt.  Pure: it reads only through the ByteSource it wraps; every table offset is
checked against that source's size and the virtual size is capped (``max_size``), so a hostile
header costs at most one table read per cluster asked for.
"""

from __future__ import annotations

import struct
import zlib
from typing import Sequence

from ..errors import InputError
from .source import ByteSource

MAGIC = b"QFI\xfb"
_HDR = struct.Struct(">4sIQIIQIIQQIIQ")  # the 72-byte v2 header
_V3 = struct.Struct(">QQQII")          # incompatible, compatible, autoclear features, refcount_order, header_length
INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2 = (1 << i for i in range(5))
OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55 of L1/L2 entries
COMPRESSED = 1 << 62
ZERO_FLAG = 1
DEFAULT_MAX_SIZE = 64 << 20  # an efidisk is < 1 MiB; the cap bounds a hostile virtual size
HINT = "convert it to a self-contained raw image (qemu-img convert -O raw) and read that"


def looks_like_qcow2(src: ByteSource) -> bool:
    return src.read_at(0, 4) == MAGIC


class Qcow2Source:
    """The guest's view of a qcow2 image in ``src``; ``read_at`` like any ByteSource."""

    def __init__(self, src: ByteSource, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._src = src
        self.name = f"{src.name} (qcow2)"
        self.bytes_read = 0
        raw = src.read_at(0, 112)
        if len(raw) < _HDR.size or raw[:4] != MAGIC:
            raise InputError(f"{src.name}: not a qcow2 image (no QFI\\xfb magic)", hint=HINT)
        (_m, version, backing_off, backing_len, cluster_bits, size, crypt, l1_size, l1_off,
         _rt_off, _rt_clusters, _nsnap, _snap_off) = _HDR.unpack_from(raw)
        where = src.name
        if version not in (2, 3):
            raise InputError(f"{where}: qcow2 version {version} is not supported (2 or 3)", hint=HINT)
        if backing_off or backing_len:
            name = src.read_at(backing_off, min(backing_len, 1023)).decode("utf-8", "replace") if backing_off else "?"
            raise InputError(f"{where}: the qcow2 image has a backing file ({name!r}): the bytes it supplies "
                             "are not in this file", hint="qemu-img convert -O raw (follows the chain) and read that")
        if crypt:
            raise InputError(f"{where}: the qcow2 image is encrypted (method {crypt})",
                             hint="decrypt it with qemu-img convert and read the raw result")
        incompat = 0
        self.compression = "deflate"
        if version == 3:
            if len(raw) < _HDR.size + _V3.size:
                raise InputError(f"{where}: truncated qcow2 v3 header", hint=HINT)
            incompat, _compat, _autoclear, _order, hdr_len = _V3.unpack_from(raw, _HDR.size)
            if incompat & INCOMPAT_COMPRESSION and hdr_len > 104 and len(raw) > 104:
                self.compression = {0: "deflate", 1: "zstd"}.get(raw[104], f"type {raw[104]}")
        self.dirty = bool(incompat & INCOMPAT_DIRTY)  # refcounts may lag; the data tables are still valid
        for bit, what in ((INCOMPAT_CORRUPT, "is marked corrupt by qemu"),
                          (INCOMPAT_DATA_FILE, "keeps its data in an external data file"),
                          (INCOMPAT_EXTL2, "uses extended L2 entries (subclusters)")):
            if incompat & bit:
                raise InputError(f"{where}: the qcow2 image {what}: not supported", hint=HINT)
        unknown = incompat & ~0x1F
        if unknown:
            raise InputError(f"{where}: unknown qcow2 incompatible features 0x{unknown:x}", hint=HINT)
        if self.compression != "deflate":
            raise InputError(f"{where}: qcow2 compression {self.compression} is not supported (deflate only)",
                             hint=HINT)
        if not 9 <= cluster_bits <= 21:
            raise InputError(f"{where}: qcow2 cluster_bits {cluster_bits} out of range (9..21)", hint=HINT)
        if size > max_size:
            raise InputError(f"{where}: qcow2 virtual size {size} bytes is above the {max_size}-byte limit",
                             hint="this is not an EFI vars disk")
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.size = size
        l2_entries = self.cluster_size // 8
        need_l1 = -(-size // (self.cluster_size * l2_entries))
        if l1_size < need_l1 or (need_l1 and (l1_off % 8 or l1_off + 8 * need_l1 > src.size)):
            raise InputError(f"{where}: qcow2 L1 table ({l1_size} entries at {l1_off}) does not fit the image",
                             hint=HINT)
        table = src.read_at(l1_off, 8 * need_l1) if need_l1 else b""
        self._l1 = struct.unpack(f">{need_l1}Q", table) if need_l1 else ()
        self._l2: dict[int, tuple[int, ...]] = {}
        self._x = 62 - (cluster_bits - 8)  # compressed entries: offset bits below x, sector count above

    # -- translation ------------------------------------------------------------------------
    def _l2_table(self, index: int) -> tuple[int, ...] | None:
        off = self._l1[index] & OFFSET_MASK
        if not off:
            return None
        if index not in self._l2:
            if off % self.cluster_size or off + self.cluster_size > self._src.size:
                raise InputError(f"{self._src.name}: qcow2 L2 table at {off} is outside the image", hint=HINT)
            data = self._src.read_at(off, self.cluster_size)
            self._l2[index] = struct.unpack(f">{self.cluster_size // 8}Q", data)
        return self._l2[index]

    def _cluster(self, n: int) -> bytes:
        """Guest cluster ``n`` (cluster_size bytes; the last one may be cut by the virtual size)."""
        per = self.cluster_size // 8
        want = min(self.cluster_size, self.size - n * self.cluster_size)
        l2 = self._l2_table(n // per)
        entry = l2[n % per] if l2 is not None else 0
        if entry & COMPRESSED:
            return self._compressed(entry, want)
        off = entry & OFFSET_MASK
        if not off or entry & ZERO_FLAG:
            return bytes(want)
        if off % self.cluster_size or off >= self._src.size:
            raise InputError(f"{self._src.name}: qcow2 data cluster at {off} is outside the image", hint=HINT)
        data = self._src.read_at(off, want)
        return data + bytes(want - len(data))  # a last cluster cut short by the file end reads as zeros

    def _compressed(self, entry: int, want: int) -> bytes:
        body = entry & ((1 << 62) - 1)
        off = body & ((1 << self._x) - 1)
        sectors = (body >> self._x) + 1
        length = sectors * 512 - (off & 511)
        if off >= self._src.size:
            raise InputError(f"{self._src.name}: qcow2 compressed cluster at {off} is outside the image", hint=HINT)
        data = self._src.read_at(off, min(length, self.cluster_size + 1024))
        d = zlib.decompressobj(-15)  # raw deflate (qemu writes window bits -12; a larger window reads it)
        try:
            out = d.decompress(data, self.cluster_size)
        except zlib.error as exc:
            raise InputError(f"{self._src.name}: qcow2 compressed cluster at {off} does not inflate: {exc}",
                             hint=HINT) from None
        if len(out) < want:
            raise InputError(f"{self._src.name}: qcow2 compressed cluster at {off} inflates to {len(out)} "
                             f"bytes, not {want}", hint=HINT)
        return out[:want]

    # -- ByteSource ---------------------------------------------------------------------------
    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length <= 0 or offset >= self.size:
            return b""
        end = min(self.size, offset + length)
        parts = []
        pos = offset
        while pos < end:
            n = pos >> self.cluster_bits
            base = n << self.cluster_bits
            chunk = self._cluster(n)
            parts.append(chunk[pos - base:end - base])
            pos = base + self.cluster_size
        out = b"".join(parts)
        self.bytes_read += len(out)
        return out

    def is_hole(self, offset: int, length: int) -> bool:
        return False

    def read_headers(self, offsets: Sequence[int], length: int) -> dict[int, bytes]:
        return {off: self.read_at(off, length) for off in offsets if 0 <= off < self.size}

    def read_all(self) -> bytes:
        return self.read_at(0, self.size)
