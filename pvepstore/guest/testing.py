"""Test doubles for the guest transport, shipped with the library (like ``fabric.testing``).

* :class:`FakeTransport` replays recorded command results (per command name, in
  order), counts round trips, can simulate latency, and records every call so a
  test can assert what would have been sent.  It never runs anything.
* :class:`RecordingTransport` wraps a real transport and keeps what came back,
  so a session against a real guest can be saved as a *cassette*
  (:func:`save_cassette`, JSON) and replayed later (:func:`load_cassette`).
* :func:`reply` builds script output in the wire format by hand, for tests of
  hostile or broken guests.

Used by ``tests/guest`` and by the sweep benchmark (``FakeTransport(...,
latency=0.02)`` per guest)::

    from pvepstore.guest import connect, GuestTarget
    from pvepstore.guest.testing import FakeTransport, load_cassette
    t = FakeTransport(load_cassette("tests/guest/cassettes/debian12-oops.json"), repeat=True)
    with connect(GuestTarget("vm101"), transport=t) as g:
        g.read_records()
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .transport import MAX_OUT, CommandResult, Transport


@dataclass(frozen=True)
class Recorded:
    """One command and what the guest answered."""

    name: str
    exit: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    args: tuple[str, ...] | None = None  # None: any arguments

    def to_json(self) -> dict:
        return {"name": self.name, "exit": self.exit, "args": list(self.args) if self.args is not None else None,
                "stdout": base64.b64encode(self.stdout).decode(), "stderr": base64.b64encode(self.stderr).decode()}

    @classmethod
    def from_json(cls, d: dict) -> "Recorded":
        return cls(d["name"], int(d.get("exit", 0)), base64.b64decode(d.get("stdout", "")),
                   base64.b64decode(d.get("stderr", "")), tuple(d["args"]) if d.get("args") is not None else None)


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[str, ...]
    script_sha256: str


class UnexpectedCommand(AssertionError):
    pass


@dataclass
class FakeTransport:
    """Replays :class:`Recorded` results by command name (FIFO per name).

    ``repeat=True`` keeps answering with the last result of a name once its
    queue is down to one (a guest that always looks the same).  ``latency``
    seconds are slept per command (one round trip).
    """

    replies: Iterable[Recorded] = ()
    latency: float = 0.0
    repeat: bool = False
    check_args: bool = False
    round_trips: int = 0
    calls: list[Call] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        self._queues: dict[str, deque[Recorded]] = defaultdict(deque)
        for r in self.replies:
            self._queues[r.name].append(r)

    def add(self, *replies: Recorded) -> None:
        for r in replies:
            self._queues[r.name].append(r)

    def run(self, name: str, script: str, args: Sequence[str], *, timeout: float | None = None,
            max_out: int = MAX_OUT) -> CommandResult:
        if self.closed:
            raise UnexpectedCommand(f"{name}: transport already closed")
        self.round_trips += 1
        self.calls.append(Call(name, tuple(args), hashlib.sha256(script.encode()).hexdigest()))
        if self.latency:
            time.sleep(self.latency)
        queue = self._queues.get(name)
        if not queue:
            raise UnexpectedCommand(f"no recorded result left for command {name!r}")
        rec = queue[0] if (self.repeat and len(queue) == 1) else queue.popleft()
        if self.check_args and rec.args is not None and tuple(args) != rec.args:
            raise UnexpectedCommand(f"{name}: arguments differ from the recording")
        out, truncated = rec.stdout, False
        if len(out) > max_out:
            out, truncated = out[:max_out], True
        return CommandResult(rec.exit, out, rec.stderr, truncated)

    def unused(self) -> dict[str, int]:
        return {k: len(q) for k, q in self._queues.items() if q and not self.repeat}

    def close(self) -> None:
        self.closed = True


@dataclass
class RecordingTransport:
    """Wraps a transport; ``recorded`` holds every result (for :func:`save_cassette`)."""

    inner: Transport
    recorded: list[Recorded] = field(default_factory=list)

    @property
    def round_trips(self) -> int:
        return self.inner.round_trips

    def run(self, name: str, script: str, args: Sequence[str], *, timeout: float | None = None,
            max_out: int = MAX_OUT) -> CommandResult:
        res = self.inner.run(name, script, args, timeout=timeout, max_out=max_out)
        self.recorded.append(Recorded(name, res.exit, res.stdout, res.stderr, tuple(args)))
        return res

    def close(self) -> None:
        self.inner.close()


def save_cassette(path: str | Path, recorded: Iterable[Recorded], meta: dict | None = None) -> None:
    data = {"meta": meta or {}, "commands": [r.to_json() for r in recorded]}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def load_cassette(path: str | Path, names: Iterable[str] | None = None) -> list[Recorded]:
    """The recorded commands of a cassette (only those named, when ``names`` is given)."""
    data = json.loads(Path(path).read_text())
    wanted = set(names) if names is not None else None
    return [Recorded.from_json(d) for d in data["commands"] if wanted is None or d["name"] in wanted]


def _b64(v: bytes | str) -> str:
    return base64.b64encode(v.encode() if isinstance(v, str) else v).decode()


def reply(*items: tuple, end: bool = True) -> bytes:
    """Script output in the wire format: ``reply(("uname", "6.1.0-56-amd64", "x86_64"), ...)``."""
    lines = [" ".join([key] + [_b64(v) for v in fields]) for key, *fields in items]
    if end:
        lines.append("end")
    return ("\n".join(lines) + "\n").encode()


def nothing_to_collect(latency: float = 0.0) -> FakeTransport:
    """A guest with an empty /sys/fs/pstore, forever (for benchmarks)."""
    return FakeTransport([Recorded("records", 0, reply(("pstorefs", "pstore")))], latency=latency, repeat=True)
