"""A test double of the kernel's pstore/zone writer, for cases no real kernel produces on demand.

It writes what fs/pstore/zone.c writes (psz_kmsg_write_record, psz_record_write,
psz_kmsg_erase) so unit tests can build corrupt or rare images.  The ground
truth for normal images is the real-kernel fixtures, never this file.
"""

from __future__ import annotations

import struct
import zlib

from pvepstore.pstore.layout import BlkLayout
from pvepstore.pstore.zoneformat import KMSG_HDR, KMSG_MAGIC, SIGNATURES, ZONE_HDR
from pvepstore.pstore.model import Kind


def deflate_raw(data: bytes, wbits: int = -11) -> bytes:
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, wbits, 9)
    return c.compress(data) + c.flush()


class ZoneWriter:
    def __init__(self, layout: BlkLayout, image: bytearray | None = None) -> None:
        self.layout = layout
        self.img = image if image is not None else bytearray(layout.device_size)

    def put(self, off: int, data: bytes) -> None:
        self.img[off:off + len(data)] = data

    def dmesg(self, index: int, text: bytes, *, reason: int = 2, counter: int = 1,
              sec: int = 1764130000, nsec: int = 0, compress: bool = True,
              datalen: int | None = None, magic: int = KMSG_MAGIC) -> None:
        zone = self.layout.dmesg_zone(index)
        payload = deflate_raw(text) if compress else text
        assert 40 + len(payload) <= zone.buffer_size
        dl = 40 + len(payload) if datalen is None else datalen
        self.put(zone.offset, bytes(zone.size))  # kzalloc'ed buffer, FLUSH_ALL
        self.put(zone.offset, ZONE_HDR.pack(SIGNATURES[Kind.DMESG], dl, 0))
        self.put(zone.offset + 12, KMSG_HDR.pack(magic, sec, nsec, int(compress), counter, reason))
        self.put(zone.offset + 52, payload)

    def erase_dmesg(self, index: int) -> None:
        zone = self.layout.dmesg_zone(index)
        sig, _, start = ZONE_HDR.unpack_from(self.img, zone.offset)
        self.put(zone.offset, ZONE_HDR.pack(sig, 0, start))

    def ring(self, kind: Kind, writes: list[bytes]) -> bytes:
        """Append writes to a console/pmsg ring as psz_record_write(); return the expected view."""
        zone = self.layout.zones(kind)[0]
        bufsize = zone.buffer_size
        data = bytearray(b"\xff" * bufsize)
        start, datalen = 0, 0
        history = b""
        for w in writes:
            history += w
            if len(w) > bufsize:
                w = w[-bufsize:]
            rem = bufsize - start
            if rem < len(w):
                data[start:] = w[:rem]
                w = w[rem:]
                start = 0
                datalen = bufsize
            data[start:start + len(w)] = w
            start += len(w)
            datalen = max(datalen, start)
        self.put(zone.offset, ZONE_HDR.pack(SIGNATURES[kind], datalen, start))
        self.put(zone.offset + 12, bytes(data))
        return history[-datalen:] if datalen else b""
