"""Byte sources the readers parse: bounded, positional reads with accounting.

The readers never read a whole image.  They ask a :class:`ByteSource` for small
ranges (zone headers, then only the valid data), so work and memory depend on
what is stored, not on the size of the disk.  ``bytes_read`` lets the benchmark
prove it.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
from dataclasses import dataclass
from typing import Protocol, Sequence

from ..errors import InputError


def _kind_of(mode: int) -> str | None:
    """What a non-readable file type is, for the message (None: a regular file or block device)."""
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device")):
        if test(mode):
            return what
    return None if stat.S_ISREG(mode) or stat.S_ISBLK(mode) else "not a regular file"


def _refuse_type(name: str, mode: int, allow_block: bool, hint: str) -> None:
    what = _kind_of(mode)
    if what is None and stat.S_ISBLK(mode) and not allow_block:
        what = "a block device"
    if what is not None:
        raise InputError(f"cannot read {name}: it is {what}", hint=hint)


def open_input(path: str | os.PathLike[str], *, allow_block: bool = True,
               hint: str = "give the path of a raw disk image or block device") -> int:
    """Open an input for reading without ever blocking on it; return the fd.

    A FIFO (or a tty, a socket) would block ``open()`` or ``read()`` forever, and
    opening some character devices has side effects, so the type is checked
    with ``stat()`` before opening, and again on the open fd (the path may be
    swapped in between).  ``O_NONBLOCK`` makes the open itself return at once
    should a FIFO appear there anyway; it changes nothing for regular files
    and block devices.  Every failure is an :class:`InputError` (exit 3).
    """
    name = os.fspath(path)
    try:
        _refuse_type(name, os.stat(name).st_mode, allow_block, hint)
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise InputError(f"cannot read {name}: no such file or device", hint=hint) from None
    except PermissionError:
        raise InputError(f"cannot read {name}: permission denied",
                         hint="reading it needs read permission (a block device needs root)") from None
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror}", hint=hint) from None
    try:
        _refuse_type(name, os.fstat(fd).st_mode, allow_block, hint)
    except BaseException:
        os.close(fd)
        raise
    return fd


class ByteSource(Protocol):
    """What a reader needs: the size and positional reads of a device or image."""

    name: str
    size: int
    bytes_read: int

    def read_at(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes at ``offset`` (short only at the end)."""

    def is_hole(self, offset: int, length: int) -> bool:
        """True when the range is known to read as zeros without reading it."""

    def read_headers(self, offsets: Sequence[int], length: int) -> dict[int, bytes]:
        """Read ``length`` bytes at each of many sorted offsets; holes are left out."""


class BytesSource:
    """An in-memory image (tests, fuzzing, snapshots of shared memory)."""

    def __init__(self, data: bytes, name: str = "<memory>", offset: int = 0) -> None:
        if offset < 0 or offset > len(data):
            raise InputError(
                f"offset {offset} is outside the {len(data)}-byte image",
                hint="pass the start of the pstore partition in bytes",
            )
        self._view = memoryview(data)[offset:]
        self.name = name
        self.size = len(self._view)
        self.bytes_read = 0

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            return b""
        chunk = bytes(self._view[offset : offset + length])
        self.bytes_read += len(chunk)
        return chunk

    def is_hole(self, offset: int, length: int) -> bool:
        return False

    def read_headers(self, offsets: Sequence[int], length: int) -> dict[int, bytes]:
        return {off: self.read_at(off, length) for off in offsets}


class FileSource:
    """A raw image file or a block device, optionally starting at a byte offset."""

    def __init__(self, path: str | os.PathLike[str], offset: int = 0) -> None:
        self.name = os.fspath(path)
        self.bytes_read = 0
        self._offset = offset
        self._fd = open_input(self.name, allow_block=True)
        try:
            st = os.fstat(self._fd)
            if stat.S_ISREG(st.st_mode):
                total = st.st_size
            else:
                # st_size is 0 for block devices; seeking to the end gives the size.
                total = os.lseek(self._fd, 0, os.SEEK_END)
        except BaseException:
            os.close(self._fd)
            raise
        if offset < 0 or offset > total:
            os.close(self._fd)
            raise InputError(
                f"{self.name}: offset {offset} is outside the {total}-byte image",
                hint="pass the start of the pstore partition in bytes",
            )
        self.size = total - offset
        self._extents: list[tuple[int, int]] | None = None
        self._sparse = stat.S_ISREG(st.st_mode) and st.st_blocks * 512 < st.st_size

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length <= 0 or offset >= self.size:
            return b""
        length = min(length, self.size - offset)
        try:
            chunk = os.pread(self._fd, length, self._offset + offset)
        except OSError as exc:
            raise InputError(f"{self.name}: read error at byte {self._offset + offset}: {exc.strerror}",
                             hint="the disk or image may be damaged; copy what is readable with ddrescue") from None
        self.bytes_read += len(chunk)
        return chunk

    def is_hole(self, offset: int, length: int) -> bool:
        """Whether the range lies in a hole of a sparse image file.

        Proxmox keeps raw images on directory storages as sparse files; a zone
        that was never written is a hole, and skipping it costs no I/O at all.
        """
        if not self._sparse:
            return False
        if self._extents is None:
            self._extents = self._map_data_extents()
        start = self._offset + offset
        end = start + length
        for lo, hi in self._extents:
            if lo < end and start < hi:
                return False
            if lo >= end:
                break
        return True

    def read_headers(self, offsets: Sequence[int], length: int) -> dict[int, bytes]:
        """Zone headers, fast: holes skipped, cold caches prefetched in parallel.

        A device's headers are far apart (one per zone), so reading them one by
        one from a cold cache is a long chain of random reads.  When the first
        header is not cached (``RWF_NOWAIT`` says so), all of them are announced
        with ``POSIX_FADV_WILLNEED`` first, which lets the block layer fetch them
        concurrently.
        """
        wanted = [o for o in offsets if 0 <= o < self.size]
        if self._sparse:
            wanted = self._outside_holes(wanted, length)
        if not wanted:
            return {}
        base = self._offset
        if len(wanted) > 16 and not self._cached(base + wanted[len(wanted) // 2], length):
            advise, willneed = os.posix_fadvise, os.POSIX_FADV_WILLNEED
            for off in wanted:
                advise(self._fd, base + off, length, willneed)
        pread, fd = os.pread, self._fd
        try:
            out = {off: pread(fd, length, base + off) for off in wanted}
        except OSError as exc:
            raise InputError(f"{self.name}: read error: {exc.strerror}",
                             hint="the disk or image may be damaged; copy what is readable with ddrescue") from None
        self.bytes_read += sum(len(v) for v in out.values())
        return out

    def _cached(self, offset: int, length: int) -> bool:
        try:
            os.preadv(self._fd, [bytearray(length)], offset, os.RWF_NOWAIT)
            return True
        except BlockingIOError:
            return False
        except (OSError, AttributeError):  # RWF_NOWAIT unsupported here: do not prefetch
            return True

    def _outside_holes(self, offsets: list[int], length: int) -> list[int]:
        if self._extents is None:
            self._extents = self._map_data_extents()
        keep: list[int] = []
        base = self._offset
        for lo, hi in self._extents:  # offsets are sorted: bisect each data extent
            first = bisect.bisect_left(offsets, lo - base - length + 1)
            last = bisect.bisect_left(offsets, hi - base)
            keep.extend(offsets[first:last])
        return sorted(set(keep))

    def _map_data_extents(self, limit: int = 65536) -> list[tuple[int, int]]:
        extents: list[tuple[int, int]] = []
        pos, end = 0, self._offset + self.size
        try:
            while pos < end:
                lo = os.lseek(self._fd, pos, os.SEEK_DATA)
                hi = os.lseek(self._fd, lo, os.SEEK_HOLE)
                extents.append((lo, hi))
                if len(extents) > limit:  # too fragmented to be worth it
                    raise OSError(errno.EFBIG, "too fragmented")
                pos = hi
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO only means "no data past pos"
                self._sparse = False
                return [(0, end)]
        return extents

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Unpacked:
    size: int  # bytes written to dest
    truncated: bool  # the image holds more than the limit: the rest was not unpacked


def unpack_xz_sparse(path: str | os.PathLike[str], dest: str | os.PathLike[str],
                     chunk: int = 1 << 20, limit: int | None = None) -> Unpacked:
    """Stream an ``.xz`` disk image into ``dest`` as a sparse file (flat memory).

    Test fixtures and the bundled sample are xz-compressed raw images whose
    zeros compress to nothing; zero chunks become holes again on the way out.
    ``limit`` bounds what is unpacked: a few hundred KiB of xz can expand to
    terabytes (an xz bomb), and no reader looks past the largest device it
    would parse, so decompression stops there instead of filling $TMPDIR.
    """
    import lzma

    zero = bytes(chunk)
    written = 0
    truncated = False
    fd = open_input(path, allow_block=False, hint="give the path of an .xz disk image")
    try:
        with open(fd, "rb", closefd=True) as raw_in, lzma.open(raw_in, "rb") as src, \
                open(dest, "wb") as out:
            while True:
                want = chunk if limit is None else min(chunk, limit - written)
                if want <= 0:
                    truncated = bool(src.read(1))  # one more byte tells "exactly" from "more"
                    break
                block = src.read(want)
                if not block:
                    break
                if block == zero[: len(block)]:
                    out.seek(len(block), os.SEEK_CUR)
                else:
                    out.write(block)
                written += len(block)
            out.truncate()
    except (lzma.LZMAError, EOFError) as exc:
        raise InputError(f"{os.fspath(path)}: not a valid .xz image ({exc})") from None
    except OSError as exc:  # EFBIG (RLIMIT_FSIZE), ENOSPC in $TMPDIR, a read error
        raise InputError(f"{os.fspath(path)}: cannot unpack: {exc.strerror or exc}",
                         hint="unpack it yourself (xz -dk) and parse the raw image") from None
    return Unpacked(written, truncated)
