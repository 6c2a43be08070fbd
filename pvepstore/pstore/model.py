"""Result types shared by every pstore backend reader (pstore_blk now, ramoops later)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum


class Kind(str, Enum):
    """pstore front-ends, named as in /sys/fs/pstore (``pstore_type_to_name``)."""

    DMESG = "dmesg"
    CONSOLE = "console"
    FTRACE = "ftrace"
    PMSG = "pmsg"


# enum kmsg_dump_reason (include/linux/kmsg_dump.h, identical 5.8 → 6.19) and the
# strings of kmsg_dump_reason_str() (kernel/printk/printk.c).
REASONS = {1: "Panic", 2: "Oops", 3: "Emergency", 4: "Shutdown"}


def reason_name(code: int) -> str:
    return REASONS.get(code, "Unknown")


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    """Something notable or malformed in the image, tied to where it was seen."""

    severity: Severity
    message: str
    kind: str | None = None
    zone: int | None = None
    offset: int | None = None

    def to_json(self) -> dict:
        return {
            "severity": self.severity.value,
            "message": self.message,
            "kind": self.kind,
            "zone": self.zone,
            "offset": self.offset,
        }


@dataclass(frozen=True)
class Record:
    """One pstore record, with ``data`` exactly as the kernel presents it in /sys/fs/pstore.

    ``offset`` is the byte offset of the zone within the parsed device (add the
    image offset for a position in the image file).  ``compressed`` is the on-disk
    flag; ``name`` ends in ``.enc.z`` (and ``data`` is the raw compressed bytes)
    exactly where the kernel could not decompress the record either.
    """

    name: str
    kind: Kind
    backend: str
    zone: int
    offset: int
    data: bytes
    reason: str | None = None
    reason_code: int | None = None
    counter: int | None = None
    time_sec: int | None = None
    time_nsec: int | None = None
    compressed: bool = False
    erased: bool = False
    # Text the kernel itself fails to show (e.g. a ramoops header parse that eats the
    # first deflate byte): recovered by pvepstore, never part of the kernel's view.
    recovered: bytes | None = None

    @property
    def best_text(self) -> str:
        """What a human or the analysis should read: recovered text where the kernel failed."""
        data = self.recovered if self.recovered is not None else self.data
        return data.decode("utf-8", errors="replace")

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def time(self) -> datetime | None:
        """Dump time (guest CLOCK_REALTIME, UTC); None when the kernel stored 0 or nonsense."""
        if not self.time_sec or self.time_sec < 0:
            return None
        try:
            ts = datetime.fromtimestamp(self.time_sec, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
        nsec = self.time_nsec if self.time_nsec and 0 <= self.time_nsec < 1_000_000_000 else 0
        return ts.replace(microsecond=nsec // 1000)

    @property
    def text(self) -> str:
        """The data decoded for humans (invalid UTF-8 replaced); never for byte comparison."""
        return self.data.decode("utf-8", errors="replace")

    def to_json(self, *, include_text: bool = True) -> dict:
        t = self.time
        doc = {
            "name": self.name,
            "kind": self.kind.value,
            "backend": self.backend,
            "zone": self.zone,
            "offset": self.offset,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "counter": self.counter,
            "time": t.isoformat().replace("+00:00", "Z") if t else None,
            "compressed": self.compressed,
            "erased": self.erased,
            "size": self.size,
            "sha256": self.sha256,
        }
        if include_text:
            doc["text"] = self.text
            if self.recovered is not None:
                doc["recovered_text"] = self.recovered.decode("utf-8", errors="replace")
        return doc


@dataclass
class ParseResult:
    """What a reader found in one device: its layout, records and findings."""

    source: str
    offset: int
    layout: "object"  # a backend-specific layout with a to_json() method
    records: list[Record] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    bytes_read: int = 0

    def to_json(self, *, include_text: bool = True, lazy: bool = False) -> dict:
        """The JSON document; ``lazy`` builds each record's part only while it is encoded
        (``json.JSONEncoder(indent=...).iterencode``), so one record's text is held at a time."""
        records = [r.to_json(include_text=include_text) for r in self.records] if not lazy else \
            _LazyList(self.records, lambda r: r.to_json(include_text=include_text))
        return {
            "image": self.source,
            "offset": self.offset,
            "layout": self.layout.to_json(),
            "records": records,
            "findings": [f.to_json() for f in self.findings],
            "bytes_read": self.bytes_read,
        }


class _LazyList(list):
    """Looks like a list to ``json``'s pure-Python encoder, makes each item when iterated."""

    def __init__(self, items: list, make) -> None:
        super().__init__()
        self._items = items
        self._make = make

    def __iter__(self):
        return (self._make(item) for item in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)


# A record can never legitimately be larger than this (the largest kmsg_size in use is a few MiB);
# it bounds memory for hostile or mis-described images, in every reader.
MAX_RECORD_BYTES = 32 << 20
# Record bytes held per image at most, whatever the image holds: the kernel uses no more than
# 128 MiB of a pstore/zone device (6.1+), and several sweeps run at once.
MAX_IMAGE_BYTES = 128 << 20


class ImageBudget:
    """The record bytes one image may still hold (``max_image_bytes``), shared by every reader.

    A hostile header can claim any size; the budget bounds what one image makes pvepstore
    hold, whatever the format.  The first refused record gets a finding at its zone,
    :meth:`findings` adds the count of all refused ones.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self.refused = 0

    def take(self, size: int, on_first_refusal) -> bool:
        """Take ``size`` bytes; False when spent (``on_first_refusal(message)`` runs once)."""
        if size <= self.left:
            self.left -= size
            return True
        self.refused += 1
        if self.refused == 1:
            on_first_refusal(f"the records of this image exceed the {self.limit >> 20} MiB pvepstore "
                             "holds per image: this and later records were not read")
        return False

    def findings(self) -> list[Finding]:
        if self.refused <= 1:
            return []
        return [Finding(Severity.WARNING, f"{self.refused} records not read (per-image budget)")]


def select_for_analysis(records: list[Record], budget: int) -> tuple[list[Record], int]:
    """The records whose text crash analysis reads, at most ``budget`` bytes of it per image.

    Newest dmesg records first (the verdict is about how the last boot ended),
    then console/pmsg/ftrace; the chosen ones keep the kernel's order.  Returns
    them and how many were left out.  A fully written 128 MiB device holds
    2048 records: analysing all would take minutes and say nothing more.
    """
    def newest_first(pair: tuple[int, Record]) -> tuple:
        i, rec = pair
        t = rec.time_sec if rec.time_sec is not None else -1
        return (rec.kind is not Kind.DMESG, rec.erased, -t, i)

    chosen: set[int] = set()
    left = budget
    for i, rec in sorted(enumerate(records), key=newest_first):
        size = len(rec.recovered if rec.recovered is not None else rec.data)
        if size <= left:
            chosen.add(i)
            left -= size
    return [r for i, r in enumerate(records) if i in chosen], len(records) - len(chosen)
