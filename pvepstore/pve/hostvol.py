"""A volume's path on this host, per storage type, and activating it for an offline read.

Paths follow the storage plugins of pve-storage (../shared/reference/proxmox.md §3),
with every host path taken from :class:`HostPaths` (so under ``host_root``):

======== ====================================================== =====================
type     path                                                   activation
======== ====================================================== =====================
dir,     ``<path>/images/<vmid>/<name>`` (nfs/cifs/cephfs:       none (files)
nfs,...  ``path``, default ``/mnt/pve/<storeid>``)
btrfs    ``<path>/images/<vmid>/<name w/o .raw>/disk.raw``       none
lvm      ``/dev/<vgname>/<name>``                                ``lvchange -aey``; undo ``-aln``
lvmthin  ``/dev/<vgname>/<name>``                                ``lvchange -ay -K``; undo ``-an``
zfspool  ``/dev/zvol/<pool>/<name>``                             none (always present)
======== ====================================================== =====================

An LV is activated only when ``lvs`` says it is inactive, and only what was
activated here is deactivated again. RBD, iSCSI and ZFS-over-iSCSI are refused
with a hint; so are non-raw volumes (qcow2/vmdk: the bytes on disk are not the
guest's view), except the ``read_only_formats`` a consumer that only reads and
translates the format itself accepts (efidisk0's qcow2 files on directory storages).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import InputError, PveError
from ..hostpaths import HostPaths
from .commands import CommandRunner

FILE_TYPES = {"dir", "nfs", "cifs", "cephfs", "glusterfs"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def parse_storage_cfg(text: str) -> dict[str, dict[str, str]]:
    """``/etc/pve/storage.cfg`` → {storeid: {type, option: value}}."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^([a-z][a-z0-9]*):\s*(\S+)\s*$", line)
        if m and not line[0].isspace():
            current = out[m.group(2)] = {"type": m.group(1)}
            continue
        if current is not None and line[0].isspace():
            key, _, value = line.strip().partition(" ")
            current[key] = value.strip() or "1"
    return out


def load_storages(paths: HostPaths) -> dict[str, dict[str, str]]:
    try:
        return parse_storage_cfg(paths.storage_cfg.read_text())
    except FileNotFoundError:
        raise PveError(f"{paths.storage_cfg} does not exist",
                       hint="offline access runs on a Proxmox VE node (or a simulated one: host_root)") from None


@dataclass(frozen=True)
class HostVolume:
    volid: str
    storage: str
    type: str
    path: Path
    lv: str | None = None  # "vg/lv" for LVM storages (activation)

    def to_json(self) -> dict:
        return {"volid": self.volid, "storage": self.storage, "type": self.type, "path": str(self.path)}


def resolve_volume(paths: HostPaths, storages: dict[str, dict[str, str]], volid: str,
                   drive_format: str | None = None, *, read_only_formats: tuple[str, ...] = ()) -> HostVolume:
    """``read_only_formats``: formats besides raw that the caller accepts because it never writes
    the volume and reads the format itself; only on file storages (dir, nfs, ...), where such a
    volume is a file ``<name>.<format>`` (on LVM the bytes would be a volume chain's)."""
    storeid, sep, volname = volid.partition(":")
    if not sep or not volname:
        raise PveError(f"{volid!r} is not a storage volume", hint="pvepstore reads only PVE-managed volumes")
    st = storages.get(storeid)
    if st is None:
        raise PveError(f"storage {storeid!r} of {volid} is not in {paths.storage_cfg}")
    typ = st["type"]
    formats = ("raw",) + (read_only_formats if typ in FILE_TYPES else ())
    hint = ("move the volume to raw or to a directory storage (qm disk move)" if read_only_formats
            else "re-create the pstore disk with format=raw")
    if drive_format and drive_format not in formats:
        raise InputError(f"{volid} is attached with format={drive_format}: only {'/'.join(formats)} volumes can "
                         "be read on the host", hint=hint if read_only_formats
                         else hint + " (pvepstore unprovision --delete-disk; provision)")
    if typ in FILE_TYPES or typ == "btrfs":
        m = re.fullmatch(r"(\d+)/([^/]+)", volname)
        if not m or not NAME_RE.match(m.group(2)):
            raise PveError(f"cannot parse the volume name of {volid}")
        name = m.group(2)
        _require_format(volid, name, formats, hint)
        if st.get("path"):
            base = paths.storage_path(st["path"])
        elif typ != "dir":
            base = paths.storage_mount(storeid)
        else:
            raise PveError(f"storage {storeid} has no path in storage.cfg")
        images = base / "images" / m.group(1)
        if typ == "btrfs":
            return HostVolume(volid, storeid, typ, images / name[:-len(".raw")] / "disk.raw")
        return HostVolume(volid, storeid, typ, images / name)
    if typ in ("lvm", "lvmthin"):
        if not NAME_RE.match(volname):
            raise PveError(f"cannot parse the volume name of {volid}")
        if volname.endswith(".qcow2"):
            _require_format(volid, volname, formats, hint)
        vg = st.get("vgname")
        if not vg:
            raise PveError(f"storage {storeid} has no vgname in storage.cfg")
        return HostVolume(volid, storeid, typ, paths.lvm_device(vg, volname), lv=f"{vg}/{volname}")
    if typ == "zfspool":
        if not NAME_RE.match(volname):
            raise PveError(f"cannot parse the volume name of {volid}")
        return HostVolume(volid, storeid, typ, paths.zvol(st["pool"], volname))
    raise PveError(f"offline access to {typ} storage ({storeid}) is not supported",
                   hint="put the pstore disk on a dir, LVM, LVM-thin or ZFS storage "
                        "(disk.storage), or read it through the running guest")


def _require_format(volid: str, name: str, formats: tuple[str, ...], hint: str) -> None:
    if "." in name and name.rsplit(".", 1)[1] not in formats:
        fmt = name.rsplit(".", 1)[1]
        raise InputError(f"{volid} is a {fmt} volume: only {'/'.join(formats)} volumes can be read on the host",
                         hint=hint)


def lv_active(runner: CommandRunner, lv: str) -> bool:
    res = runner.run(["lvs", "--noheadings", "--options", "lv_attr", lv])
    res.check(f"cannot query the logical volume {lv}")
    attr = res.stdout.strip()
    if len(attr) < 5:
        raise PveError(f"unexpected `lvs` output for {lv}: {res.stdout.strip()!r}")
    return attr[4] == "a"  # lv_attr: the 5th character is the state ('a' = active)


@contextmanager
def activated(volume: HostVolume, runner: CommandRunner) -> Iterator[Path]:
    """The volume's path, activated for the duration (LVM), deactivated again only if we activated it."""
    if volume.lv is None:
        if not volume.path.exists():
            raise InputError(f"{volume.volid}: {volume.path} does not exist",
                             hint="the volume was removed, or the storage is not mounted on this node")
        yield volume.path
        return
    activate = ["lvchange", "-aey", volume.lv] if volume.type == "lvm" else ["lvchange", "-ay", "-K", volume.lv]
    deactivate = ["lvchange", "-aln", volume.lv] if volume.type == "lvm" else ["lvchange", "-an", volume.lv]
    ours = False
    if not lv_active(runner, volume.lv):
        runner.run(activate).check(f"cannot activate {volume.lv}")
        ours = True
    try:
        if not volume.path.exists():
            raise InputError(f"{volume.volid}: {volume.path} does not exist although the LV is active")
        yield volume.path
    finally:
        if ours:
            runner.run(deactivate).check(f"cannot deactivate {volume.lv} again")
