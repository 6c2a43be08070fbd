"""The incident archive: per VM and incident, the raw records, the report and the evidence.

Layout (under ``state_dir``)::

    archive/<vmid>/<YYYYmmddTHHMMSSZ>-<id12>/
        incident.json        the CloudEvent (incident-v1)
        evidence.json        every evidence item the verdict used
        records/<name>       each record with its exact bytes (safe file names)
        records.json         name, sha256, size, source of each record

An incident directory is published with one atomic rename, so it is either
complete or absent; publishing the same incident id twice is a no-op.
Retention (defaults documented in config.example.yaml) removes the oldest
incidents beyond a count per VM, an age, or a total size.
"""

from __future__ import annotations

import hashlib
import errno
import os
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import InputError
from ..pstore.model import Record
from ..text import safe_filename, terminal_safe
from .archivescan import ArchivedIncident, CorruptEntry, Skipped, read_event, scan
from ..durable import dumps, open_dir
from ..safefs import Dir, kind


@dataclass(frozen=True)
class Retention:
    max_per_vm: int = 100
    max_age_days: int = 365
    max_total_mib: int = 1024


class Archive:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _vm_dir(self, vmid: int) -> Path:
        return self.root / str(int(vmid))

    def find(self, event_id: str, vmid: int | None = None) -> ArchivedIncident | None:
        """The archived incident with this event id (corrupt or planted entries never match)."""
        suffix = f"-{event_id[:12]}"
        for vm_name in ([str(int(vmid))] if vmid is not None else _names(self.root)):
            for name in _names(self.root / vm_name):
                if not name.endswith(suffix) or not name[0].isdigit():
                    continue
                inc = self.root / vm_name / name
                try:
                    if stat.S_ISDIR(os.lstat(inc).st_mode) and read_event(inc)["id"] == event_id:
                        return ArchivedIncident(int(vm_name), inc)
                except (OSError, ValueError, CorruptEntry):
                    continue
        return None

    def store(self, vmid: int, event: dict, evidence: list[dict], records: list[Record],
              source: str) -> tuple[ArchivedIncident, bool]:
        """Archive an incident (idempotent by event id); returns (incident, newly written).

        No link is followed (:mod:`pvepstore.safefs`): the state directory must be private,
        ``archive/<vmid>/`` is opened ``O_NOFOLLOW``, the incident is built in a fresh
        ``mkdir``-ed directory with ``O_EXCL`` files and published with one rename.
        """
        existing = self.find(event["id"], vmid)
        if existing is not None:
            return existing, False
        stamp = datetime.fromisoformat(event["time"].replace("Z", "+00:00")).astimezone(timezone.utc)
        name = f"{stamp.strftime('%Y%m%dT%H%M%SZ')}-{event['id'][:12]}"
        target = self._vm_dir(vmid) / name
        with open_dir(self._vm_dir(vmid), self.root.parent) as vm_dir:
            build_name = vm_dir.mkdtemp(f".{name}.")
            try:
                with vm_dir.sub(build_name, create=False) as build:
                    with build.sub("records") as rdir:
                        index = []
                        used: set[str] = set()
                        for rec in records:
                            fname = safe_filename(rec.name)
                            while fname in used:  # two hostile names that sanitise alike
                                fname = "_" + fname
                            used.add(fname)
                            rdir.create_file(fname, rec.data)
                            index.append({"name": rec.name, "file": fname,
                                          "sha256": hashlib.sha256(rec.data).hexdigest(),
                                          "size": len(rec.data), "erased": rec.erased})
                        rdir.fsync()
                    build.create_file("records.json", dumps({"source": source, "records": index}).encode())
                    build.create_file("evidence.json", dumps(evidence).encode())
                    build.create_file("incident.json", dumps(event).encode())
                    os.fchmod(build.fd, 0o750)
                    build.fsync()
                fresh = _publish(vm_dir, build_name, name)
            except BaseException:
                vm_dir.rmtree(build_name)
                raise
        return ArchivedIncident(int(vmid), target), fresh

    def list(self, vmid: int | None = None, since: datetime | None = None) -> list[ArchivedIncident]:
        """The usable incidents, oldest first (bad entries left out: see :meth:`scan`)."""
        return self.scan(vmid, since)[0]

    def scan(self, vmid: int | None = None,
             since: datetime | None = None) -> tuple[list[ArchivedIncident], list[Skipped]]:
        """The usable incidents and every entry skipped as corrupt, with the reason."""
        return scan(self.root, vmid, since)

    def get(self, key: str, skipped: list[Skipped] | None = None) -> ArchivedIncident:
        """An incident by directory name, event id, or a unique prefix of either.

        Bad entries never match; they are appended to ``skipped`` when given.
        """
        if not key:
            raise InputError("empty incident id")
        incidents, bad = self.scan()
        if skipped is not None:
            skipped.extend(bad)
        matches = [i for i in incidents if i.key.startswith(key) or i.event["id"].startswith(key)]
        shown = terminal_safe(repr(key[:80]))
        if not matches:
            raise InputError(f"no incident {shown} in {self.root}", hint="list them with `pvepstore incidents list`")
        if len(matches) > 1:
            raise InputError(f"{shown} matches {len(matches)} incidents", hint="give more characters of the id")
        return matches[0]

    def prune(self, policy: Retention, now: float | None = None) -> list[Path]:
        """Apply retention; returns what was removed (oldest first)."""
        now = now if now is not None else time.time()
        removed: list[Path] = []
        everything = self.list()
        by_vm: dict[int, list[ArchivedIncident]] = {}
        for inc in everything:
            by_vm.setdefault(inc.vmid, []).append(inc)
        doomed: set[Path] = set()
        for incs in by_vm.values():
            doomed.update(i.path for i in incs[:-policy.max_per_vm] if len(incs) > policy.max_per_vm)
        cutoff = now - policy.max_age_days * 86400
        for inc in everything:
            stamp = datetime.strptime(inc.key.split("-")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            if stamp.timestamp() < cutoff:
                doomed.add(inc.path)
        sizes = {i.path: self._size(i) for i in everything}
        total = sum(s for p, s in sizes.items() if p not in doomed)
        for inc in sorted(everything, key=lambda i: i.key.split("-")[0]):
            if total <= policy.max_total_mib << 20:
                break
            if inc.path not in doomed:
                doomed.add(inc.path)
                total -= sizes[inc.path]
        for path in sorted(doomed):
            if self._remove(path):
                removed.append(path)
        return removed

    # Pruning walks and removes through directory fds (no link followed): a symlinked
    # archive/<vmid> is never entered, a link inside an incident is removed, not followed.
    def _vm_fd_dir(self, vm_name: str) -> Dir | None:
        try:
            return open_dir(self.root / vm_name, self.root.parent, create=False)
        except (OSError, InputError):
            return None

    def _size(self, inc: ArchivedIncident) -> int:
        d = self._vm_fd_dir(inc.path.parent.name)
        if d is None:
            return 0
        with d:
            try:
                return d.tree_size(inc.path.name)
            except OSError:
                return 0

    def _remove(self, path: Path) -> bool:
        d = self._vm_fd_dir(path.parent.name)
        if d is None:
            return False
        with d:
            try:
                d.rmtree(path.name)
            except OSError:
                return False
        return True


def _names(path: Path) -> list[str]:
    """Entry names of a real directory (none for a link, a file or nothing)."""
    try:
        return sorted(os.listdir(path)) if stat.S_ISDIR(os.lstat(path).st_mode) else []
    except OSError:
        return []


def _publish(vm_dir: Dir, build: str, name: str) -> bool:
    """Rename the built incident into place; False if it is already there (a real directory)."""
    try:
        vm_dir.rename(build, name)
    except OSError as exc:
        st = vm_dir.lstat(name)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and st is not None and stat.S_ISDIR(st.st_mode):
            vm_dir.rmtree(build)
            return False
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise InputError(f"refusing to publish {vm_dir.path / name}: it is {kind(st)}",
                             hint="something other than pvepstore created it; remove it") from None
        raise
    vm_dir.fsync()
    return True
