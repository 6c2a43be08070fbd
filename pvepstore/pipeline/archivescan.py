"""Reading the incident archive when some of it is corrupt, planted or half-written.

``incidents list``/``show`` and retention read every entry under
``archive/``.  One bad entry (a directory ``12x/``, an ``incident.json`` that
is not JSON, is a list or has a mapping where a string belongs, a file where a
directory belongs, a symbolic link) must not hide the others: the scan returns
the good incidents and a :class:`Skipped` for each bad entry, with the reason.

Nothing here follows a link: directories are tested with ``lstat`` and files
are opened ``O_NOFOLLOW|O_NONBLOCK`` (a planted FIFO cannot block) and read up
to a bound, so a planted ``incident.json -> /etc/shadow`` is never shown.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MAX_EVENT_BYTES = 32 << 20  # an incident.json is KiB; a crash report with every record excerpt is < 1 MiB
MAX_RECORD_BYTES = 1 << 30  # records were capped when archived (collect.max_record_bytes <= 1 GiB)
_VM_NAME = re.compile(r"[0-9]{1,12}")
_INCIDENT_NAME = re.compile(r"([0-9]{8}T[0-9]{6}Z)-([0-9A-Za-z]{1,64})")
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KINDS = {stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a device", stat.S_IFBLK: "a device", stat.S_IFDIR: "a directory",
          stat.S_IFREG: "a regular file"}


class CorruptEntry(Exception):
    """An archive entry that cannot be used (the message says why)."""


@dataclass(frozen=True)
class Skipped:
    """A bad archive entry: its path under the archive root and why it was skipped."""

    entry: str
    reason: str

    def to_json(self) -> dict:
        return {"entry": self.entry, "reason": self.reason}


@dataclass(frozen=True)
class ArchivedIncident:
    vmid: int
    path: Path

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def stamp(self) -> datetime:
        return incident_stamp(self.key)

    @property
    def event(self) -> dict:
        """The CloudEvent, checked for the shape readers rely on (:class:`CorruptEntry` if not)."""
        return read_event(self.path)

    def records(self) -> dict[str, bytes]:
        return self.read_records()[0]

    def read_records(self) -> tuple[dict[str, bytes], list[Skipped]]:
        """Each regular file of ``records/`` with its bytes; anything else is skipped."""
        rdir = self.path / "records"
        where = f"{self.path.parent.name}/{self.key}/records"
        out: dict[str, bytes] = {}
        skipped: list[Skipped] = []
        try:
            if not os.path.lexists(rdir):
                return out, skipped
            names = _list_dir(rdir, missing_ok=True)
        except CorruptEntry as exc:
            return out, [Skipped(where, str(exc))]
        for name in names:
            try:
                out[name] = read_regular(rdir / name, MAX_RECORD_BYTES)
            except CorruptEntry as exc:
                skipped.append(Skipped(f"{where}/{name}", str(exc)))
        return out, skipped


def incident_stamp(name: str) -> datetime:
    m = _INCIDENT_NAME.fullmatch(name)
    if not m:
        raise CorruptEntry("not an incident name (<YYYYmmddTHHMMSSZ>-<id>)")
    try:
        return datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise CorruptEntry(f"not a valid time in the name ({m.group(1)})") from None


def scan(root: Path, vmid: int | None = None,
         since: datetime | None = None) -> tuple[list[ArchivedIncident], list[Skipped]]:
    """Every usable incident (sorted by key) and every skipped entry, in one pass."""
    good: list[ArchivedIncident] = []
    skipped: list[Skipped] = []
    if vmid is not None:
        vm_names = [str(int(vmid))]
    else:
        try:
            vm_names = sorted(n for n in os.listdir(root) if not n.startswith("."))
        except FileNotFoundError:
            return good, skipped
        except OSError as exc:
            return good, [Skipped(".", f"cannot read the archive directory: {exc.strerror}")]
    for vm_name in vm_names:
        vm_dir = root / vm_name
        try:
            if not _VM_NAME.fullmatch(vm_name):
                raise CorruptEntry("not a VM id")
            names = _list_dir(vm_dir, missing_ok=vmid is not None)
        except CorruptEntry as exc:
            skipped.append(Skipped(vm_name, str(exc)))
            continue
        for name in names:
            if name.startswith("."):  # an incident being built (or its leftovers): not an entry yet
                continue
            path = vm_dir / name
            try:
                stamp = incident_stamp(name)
                if since is not None and stamp < since:
                    continue
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    raise CorruptEntry(f"{_kind(st)}, not a directory")
                read_event(path)
            except CorruptEntry as exc:
                skipped.append(Skipped(f"{vm_name}/{name}", str(exc)))
                continue
            except OSError as exc:
                skipped.append(Skipped(f"{vm_name}/{name}", f"cannot read: {exc.strerror}"))
                continue
            good.append(ArchivedIncident(int(vm_name), path))
    return sorted(good, key=lambda i: i.key), skipped


def read_event(path: Path) -> dict:
    raw = read_regular(path / "incident.json", MAX_EVENT_BYTES)
    try:
        event = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptEntry("incident.json: not JSON") from None
    except RecursionError:
        raise CorruptEntry("incident.json: nested too deeply") from None
    problem = _event_problem(event)
    if problem:
        raise CorruptEntry(f"incident.json: {problem}")
    return event


def _event_problem(event: Any) -> str | None:
    """What makes ``event`` unusable for the readers (None: it is fine)."""
    if not isinstance(event, dict):
        return "not a JSON object"
    for key in ("id", "time"):
        if not isinstance(event.get(key), str) or not event[key]:
            return f"{key} is not a string"
    data = event.get("data", {})
    if not isinstance(data, dict):
        return "data is not an object"
    verdict = data.get("verdict", {})
    if verdict is not None and not isinstance(verdict, dict):
        return "data.verdict is not an object"
    for key in ("kind", "severity", "confidence", "summary", "reason_code"):
        value = (verdict or {}).get(key)
        if value is not None and not isinstance(value, str):
            return f"data.verdict.{key} is not a string"
    if not isinstance(data.get("signature") or {}, dict):
        return "data.signature is not an object"
    evidence = data.get("evidence", [])
    if not isinstance(evidence, list) or not all(isinstance(e, dict) for e in evidence):
        return "data.evidence is not a list of objects"
    return None


def read_regular(path: Path, limit: int) -> bytes:
    """A regular file's bytes, never through a link, at most ``limit`` bytes."""
    try:
        fd = os.open(path, _READ)
    except FileNotFoundError:
        raise CorruptEntry(f"{path.name} is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise CorruptEntry(f"{path.name} is a symbolic link") from None
        raise CorruptEntry(f"{path.name}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptEntry(f"{path.name} is {_kind(st)}, not a regular file")
        if st.st_size > limit:
            raise CorruptEntry(f"{path.name} is larger than {limit} bytes")
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise CorruptEntry(f"{path.name} is larger than {limit} bytes")
        return data
    except OSError as exc:
        raise CorruptEntry(f"{path.name}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _list_dir(path: Path, missing_ok: bool) -> list[str]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if missing_ok:
            return []
        raise CorruptEntry("vanished while reading") from None
    except OSError as exc:
        raise CorruptEntry(f"cannot read: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CorruptEntry(f"{_kind(st)}, not a directory")
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        raise CorruptEntry(f"cannot read: {exc.strerror}") from None


def _kind(st: os.stat_result) -> str:
    return _KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
