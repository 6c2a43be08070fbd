"""A VM's ``efidisk0`` (OVMF's persistent variable store) read on the host: never written.

efi_pstore keeps the guest's dumps as UEFI variables; OVMF writes them to ``efidisk0``
(../shared/reference/proxmox.md, panic-capable-backends.md efi-pstore).  The volume is found as the
pstore_blk offline read finds its disk (:mod:`.hostvol` for the path, :mod:`.locking` for PVE's lock
and the "is it off" checks), only on the node that owns the VM:

* stopped VM: under PVE's flock ``lock-<vmid>.conf`` after re-checking no ``lock:`` and no QEMU;
* running VM: the firmware may write the store at any moment (SetVariable from the guest's
  efi_pstore), so the file is read whole until two consecutive reads agree (bounded retries):
  a consistent snapshot, taken without the lock (QEMU holds the volume; we only read it).

qcow2 (the default on directory storages) is read by the pure :mod:`pvepstore.pstore.qcow2`
reader from the same snapshot bytes, not by ``qemu-img convert -U``/``qemu-nbd``: the reader works
on the bytes the snapshot compared (metadata and data from one consistent copy; ``convert -U`` reads
the live file once, with no way to tell a torn copy), needs no node tool, temp file or NBD device,
and measured 0.5 ms per read of a compressed 4M vars qcow2 against 7.6 ms for ``qemu-img convert -U``
to a temp file (same bytes; tests/pstore/test_qcow2.py checks it against qemu-img's own images).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import InputError, PveError, VmBusyError
from ..pstore.qcow2 import MAGIC as QCOW2_MAGIC, Qcow2Source
from ..pstore.source import BytesSource, open_input
from .commands import CommandRunner, SubprocessRunner
from .hostvol import HostVolume, activated, load_storages, resolve_volume
from .inventory import local_node
from .locking import ACQUIRE_TIMEOUT, load_local_config, offline_guard, qemu_pid
from .snapshot import SNAPSHOT_TRIES, snapshot
from .vmconfig import parse_drive

KEY = "efidisk0"
MAX_FILE_BYTES = 64 << 20  # an efidisk is 128 KiB..4 MiB (+ qcow2 metadata); anything larger is refused
MAX_VIRTUAL_BYTES = 16 << 20  # a qcow2 efidisk's guest view (PVE makes 128K/528K/4M ones)


@dataclass(frozen=True)
class EfiDisk:
    volid: str
    value: str
    format: str  # raw | qcow2 (the drive's format=, else the volume name's suffix, else raw)
    efitype: str = ""

    def to_json(self) -> dict:
        return {"key": KEY, "volid": self.volid, "format": self.format, "efitype": self.efitype}


def find_efidisk(conf: dict) -> EfiDisk | None:
    """The VM's efidisk0 from its (current) config, or None."""
    value = conf.get(KEY)
    if not isinstance(value, str) or not value.strip():
        return None
    opts = parse_drive(value)
    volid = value.split(",", 1)[0].strip()
    if ":" not in volid:
        return None  # not a storage volume (a path): PVE-managed volumes only
    fmt = opts.get("format") or ("qcow2" if volid.endswith(".qcow2") else
                                 "vmdk" if volid.endswith(".vmdk") else "raw")
    return EfiDisk(volid, value, fmt, opts.get("efitype", ""))


def volume_of(cfg: Config, disk: EfiDisk) -> HostVolume:
    """The efidisk's volume and its path on this node.

    A qcow2 efidisk is accepted (``read_only_formats``): it is only ever read here, and the qcow2
    reader gives the guest's view; :func:`.hostvol.resolve_volume` keeps refusing it where the
    bytes would not be a qcow2 file (LVM) and for pstore_blk, whose disk the host writes."""
    if disk.format not in ("raw", "qcow2"):
        raise InputError(f"{disk.volid}: efidisk0 has format {disk.format}: only raw and qcow2 are read",
                         hint="move the EFI disk to raw or qcow2 (qm disk move --format raw)")
    return resolve_volume(cfg.paths, load_storages(cfg.paths), disk.volid, disk.format,
                          read_only_formats=("qcow2",))


def read_file(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The whole file or device, once (never blocks on a FIFO: :func:`open_input`)."""
    fd = open_input(path)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size > max_bytes:
            raise InputError(f"{path}: {size} bytes is more than an EFI vars disk ({max_bytes} bytes at most)",
                             hint="is this really efidisk0?")
        out = bytearray()
        while len(out) < size:
            chunk = os.pread(fd, min(1 << 20, size - len(out)), len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


def guest_view(data: bytes, disk: EfiDisk, name: str) -> bytes:
    """The bytes the firmware sees (a qcow2 file translated; raw as is)."""
    if data[:4] == QCOW2_MAGIC:
        return Qcow2Source(BytesSource(data, name=name), max_size=MAX_VIRTUAL_BYTES).read_all()
    if disk.format == "qcow2":
        raise InputError(f"{name}: efidisk0 says format=qcow2 but the file has no qcow2 header")
    return data


@dataclass
class EfiRead:
    vmid: int
    node: str
    disk: EfiDisk
    volume: HostVolume
    running: bool
    image: bytes  # the guest's view of the vars store
    reads: int
    consistent: bool
    result: object = None  # ParseResult of read_efi
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"vmid": self.vmid, "node": self.node, "source": "efidisk", "disk": self.disk.to_json(),
                "volume": self.volume.to_json(), "running": self.running, "reads": self.reads,
                "consistent": self.consistent, "notes": self.notes}


def _no_efidisk(vmid: int) -> PveError:
    return PveError(f"VM {vmid} has no efidisk0", hint="efi_pstore records outlive a VM stop only on a "
                    "persistent efidisk0: add one (Hardware > Add > EFI Disk)")


def read_efidisk(cfg: Config, vmid: int, *, runner: CommandRunner | None = None,
                 timeout: float = ACQUIRE_TIMEOUT, tries: int = SNAPSHOT_TRIES) -> EfiRead:
    """The VM's vars store as the firmware sees it: under PVE's lock when the VM is off, a
    consistent snapshot while QEMU runs.  Read only; parsed by the caller (:func:`parse`)."""
    paths = cfg.paths
    node = local_node(cfg)
    runner = runner or SubprocessRunner()
    conf = load_local_config(paths, node, vmid)  # the owning node? (raises with the owner's name)
    if qemu_pid(paths, vmid) is None:
        try:
            with offline_guard(paths, node, vmid, timeout) as locked:
                disk = find_efidisk(locked)
                if disk is None:
                    raise _no_efidisk(vmid)
                volume = volume_of(cfg, disk)
                with activated(volume, runner) as path:
                    data = read_file(path)
                return EfiRead(vmid, node, disk, volume, False, guest_view(data, disk, disk.volid), 1, True)
        except VmBusyError:
            if qemu_pid(paths, vmid) is None:
                raise  # locked, hibernated: not ours to read now
            conf = load_local_config(paths, node, vmid)  # started meanwhile: a running snapshot
    disk = find_efidisk(conf)
    if disk is None:
        raise _no_efidisk(vmid)
    volume = volume_of(cfg, disk)
    with activated(volume, runner) as path:  # active while QEMU runs: nothing is activated here
        snap = snapshot(lambda: read_file(path), tries=tries)
    out = EfiRead(vmid, node, disk, volume, True, guest_view(snap.data, disk, disk.volid), snap.reads,
                  snap.consistent)
    if not snap.consistent:
        out.notes.append(f"the firmware kept writing the store: {snap.reads} reads never agreed; "
                         "read the last one")
    return out


def parse(read: EfiRead, *, forensic: bool = False, kernel_release: str | None = None):
    """efi_pstore's records in the snapshot (efiformat's reader).  ``kernel_release``: the guest's
    kernel as last seen running (the file names of a store of Shutdown dumps alone depend on it)."""
    from ..pstore import ReadOptions
    from ..pstore.efi import read_efi

    read.result = read_efi(BytesSource(read.image, name=f"{read.disk.volid} (efidisk0)"), forensic=forensic,
                           options=ReadOptions(kernel_release=kernel_release or None))
    return read.result
