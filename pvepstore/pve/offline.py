"""Reading (and clearing) a powered-off VM's pstore volume on the host.

Everything happens inside one short hold of PVE's config lock, after the
checks of :mod:`.locking`; LVM volumes are activated for the read and
deactivated again. Clearing writes exactly what the kernel's erase writes
(``psz_kmsg_erase``/``psz_record_erase`` → ``psz_zone_write(FLUSH_META)``): the
12-byte zone header with ``datalen = 0`` (``start`` kept for dmesg, 0 for
console/pmsg) — the record's bytes stay, as after ``rm /sys/fs/pstore/...`` —
then ``fsync``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..config import Config
from ..errors import InputError, PveError
from ..pstore import BlkParams, FileSource, ParseResult, read_blk
from ..pstore.model import Kind
from ..pstore.zoneformat import SIGNATURES, ZONE_HDR
from . import state
from .commands import CommandRunner, SubprocessRunner
from .hostvol import HostVolume, activated, load_storages, resolve_volume
from .inventory import local_node
from .locking import ACQUIRE_TIMEOUT, offline_guard
from .vmconfig import find_pstore_disk, parse_drive


@dataclass
class OfflineRead:
    vmid: int
    node: str
    volume: HostVolume
    result: ParseResult
    layout_source: str  # recorded | discovered
    cleared: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"vmid": self.vmid, "node": self.node, "source": "offline", "volume": self.volume.to_json(),
                "layout_source": self.layout_source, "cleared": self.cleared, **self.result.to_json()}


@contextmanager
def open_volume(cfg: Config, vmid: int, runner: CommandRunner | None = None,
                timeout: float = ACQUIRE_TIMEOUT) -> Iterator[tuple[str, HostVolume, Path]]:
    """Under PVE's config lock, for a VM that is off: (node, volume, activated path)."""
    paths = cfg.paths
    node = local_node(cfg)
    runner = runner or SubprocessRunner()
    disk = cfg.for_vm(vmid).disk
    with offline_guard(paths, node, vmid, timeout) as conf:
        loc = find_pstore_disk(conf, conf.get("pending", {}), disk.serial, state.known_volids(cfg, vmid))
        if loc.state not in ("attached", "pending", "unused") or not loc.volid:
            raise PveError(f"VM {vmid} has no pstore disk (serial {disk.serial}) in its config",
                           hint=f"pvepstore provision {vmid}")
        fmt = parse_drive(loc.value or "").get("format")
        volume = resolve_volume(paths, load_storages(paths), loc.volid, fmt)
        with activated(volume, runner) as path:
            yield node, volume, path


def parse_volume(path: Path, params: BlkParams | None) -> tuple[ParseResult, str]:
    with FileSource(path) as src:
        if params is not None:
            result = read_blk(src, params)
            if result.records:
                return result, "recorded"
        discovered = read_blk(src, None)
        if params is not None and not discovered.records:
            return result, "recorded"
        return discovered, "discovered"


def read_offline(cfg: Config, vmid: int, *, clear: Iterable[str] | bool = (),
                 runner: CommandRunner | None = None, timeout: float = ACQUIRE_TIMEOUT) -> OfflineRead:
    """Read the volume (and clear ``clear``: record names, or True for all) in one lock hold."""
    params = state.recorded_params(cfg, vmid)
    with open_volume(cfg, vmid, runner, timeout) as (node, volume, path):
        result, source = parse_volume(path, params)
        out = OfflineRead(vmid, node, volume, result, source)
        names = [r.name for r in result.records if not r.erased] if clear is True else list(clear or ())
        if names:
            out.cleared = erase_records(path, result, names)
    return out


def erase_records(path: Path, result: ParseResult, names: list[str]) -> list[str]:
    """The kernel's erase, offline: zone header datalen := 0 (+ start := 0 for ring zones), fsync."""
    by_name = {r.name: r for r in result.records if not r.erased}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"no record named {', '.join(missing)} on the volume",
                         hint="pvepstore read --offline lists the record names")
    done = []
    fd = os.open(path, os.O_RDWR)
    try:
        for name in names:
            rec = by_name[name]
            if rec.kind not in (Kind.DMESG, Kind.CONSOLE, Kind.PMSG):
                raise InputError(f"{name}: clearing {rec.kind.value} records offline is not supported")
            where = result.offset + rec.offset
            raw = os.pread(fd, ZONE_HDR.size, where)
            sig, datalen, start = ZONE_HDR.unpack(raw)
            if sig != SIGNATURES[rec.kind]:
                raise InputError(f"{name}: zone at {where} has no {rec.kind.value} signature; not writing")
            if datalen == 0:
                continue
            new = ZONE_HDR.pack(sig, 0, start if rec.kind is Kind.DMESG else 0)
            if os.pwrite(fd, new, where) != len(new):
                raise InputError(f"{name}: short write at {where}")
            done.append(name)
        os.fsync(fd)
    finally:
        os.close(fd)
    return done
