"""The ivshmem backend on the host: ramoops memory that survives panics, reboots and VM stops.

Proxmox backs ``ivshmem: size=1,name=<name>`` with ``/dev/shm/pve-shm-<name>``
and **unlinks that file whenever the VM stops** (``vm_stop_cleanup``, before
the ``post-stop`` hook runs); QEMU reopens an existing file at start without
clearing it (../shared/reference/panic-capable-backends.md).  So pvepstore's
hookscript keeps the records alive:

* ``post-start``: hard-link the live file as ``/dev/shm/pvepstore-keep-<name>``
  (same inode: every byte the guest writes is in both names);
* ``post-stop``: PVE has unlinked its name; the keep link still holds the data.
  Copy it to ``<state_dir>/ivshmem/<vmid>.bin`` (durable: /dev/shm is lost when
  the host reboots);
* ``pre-start``: if the live file is missing, link the keep file back under
  PVE's name (or restore the durable copy), so QEMU maps the old records.

A VM has one hookscript.  pvepstore writes one per VM; if the operator already
has one, pvepstore's script runs it after its own step with the same arguments
(its exit status is what PVE sees), and unprovision puts it back.

Reading: the live file of a running, hung or paused VM (a snapshot taken until
two reads agree), else the keep link, else the durable copy.  Clearing zaps a
ramoops zone header exactly as the kernel's erase does (``start = size = 0``)
and only while the zone still holds the bytes that were archived.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import Config
from ..durable import write_atomic
from ..errors import InputError, PveError, PvepstoreError
from ..hostpaths import HostPaths
from ..pstore import BytesSource, ParseResult, RamoopsParams, read_ramoops
from ..pstore.model import Record
from ..pstore.ramoops import PRZ_HEADER
from ..safefs import Dir, kind, trusted_uids
from . import state
from .snapshot import snapshot

HOOK_NAME = "pvepstore-hook-{vmid}.sh"
SHM_MIB = 1  # ivshmem: size=1 (MiB)
MAX_SHM = 64 << 20  # never read more than this from a shm file (a bigger one is not ours)
HOOK_TEMPLATE = """#!/bin/sh
# pvepstore hookscript for VM {vmid} (installed by `pvepstore provision --backend ivshmem`).
# Keeps the ramoops records of the VM's ivshmem device across stop/start. A failure
# of pvepstore never stops the VM from starting. Arguments: <vmid> <phase>.
{program} hook "$1" "$2" || echo "pvepstore hook failed ($?); continuing" >&2
"""
CHAIN_TEMPLATE = """# The VM's own hookscript ({volid}), chained by pvepstore: its status is what PVE sees.
exec {path} "$1" "$2"
"""


def shm_name(vmid: int) -> str:
    """The stable ``ivshmem`` name pvepstore gives a VM (PVE: ``[a-zA-Z0-9-]+``)."""
    return f"pvepstore-{int(vmid)}"


def ivshmem_option(vmid: int) -> str:
    return f"size={SHM_MIB},name={shm_name(vmid)}"


def durable_copy(cfg: Config, vmid: int) -> Path:
    return Path(cfg.state_dir) / "ivshmem" / f"{int(vmid)}.bin"


# -- the hook -------------------------------------------------------------------------

def run_hook(cfg: Config, vmid: int, phase: str) -> list[str]:
    """What pvepstore's hookscript does in ``phase``; returns what it did."""
    actions: list[str] = []
    try:
        _keep_records(cfg, vmid, phase, actions)
        if phase == "post-start":
            note_run(cfg, vmid, actions)
    except (OSError, PvepstoreError) as exc:
        # A failing pvepstore must never keep a VM from starting: say it, carry on.
        actions.append(f"failed: {exc}")
    return actions


# -- the VM's QEMU runs (what a guest's boot list is for the other backends) ---------------------

RUNS_KEPT = 16  # enough to see that runs went by between two sweeps; bounded


def _runs_name(vmid: int) -> str:
    return f"{int(vmid)}.runs"


def qemu_runs(cfg: Config, vmid: int) -> list[str]:
    """The VM's QEMU runs the hook saw start, oldest first (run ids of :func:`.locking.qemu_run`)."""
    import json

    try:
        with _state_dir(cfg) as state_dir, state_dir.sub("ivshmem") as d:
            if d.lstat(_runs_name(vmid)) is None:
                return []
            got = json.loads(d.read_bytes(_runs_name(vmid), limit=64 << 10, owned=True))
    except (OSError, ValueError, PvepstoreError):
        return []
    return [r for r in got if isinstance(r, str) and re.fullmatch(r"[0-9a-f]{32}", r)] if isinstance(got, list) else []


def note_run(cfg: Config, vmid: int, actions: list[str]) -> None:
    """post-start: remember the new QEMU run, so the sweep can tell whether runs went by unseen."""
    import json

    from .locking import qemu_run

    run = qemu_run(cfg.paths, vmid)
    if run is None:
        return
    runs = qemu_runs(cfg, vmid)
    if run[0] in runs:
        return
    with _state_dir(cfg) as state_dir, state_dir.sub("ivshmem") as d:
        d.replace_file(_runs_name(vmid), json.dumps((runs + [run[0]])[-RUNS_KEPT:]).encode(), 0o600)
    actions.append(f"noted QEMU run {run[0][:8]}")


# Links and copies in /dev/shm (world-writable, sticky) and the state directory never
# follow a link: every name is handled relative to a directory fd (safefs), a source is
# used only if lstat says it is a regular file owned by root (sticky: nobody else can
# then swap it), links are made with linkat without AT_SYMLINK_FOLLOW and land under a
# fresh name renamed into place, so a planted symlink/FIFO/file is replaced, not followed.

def _shm_dir(paths: HostPaths) -> Dir:
    return Dir.open(paths.ivshmem_file("x").parent, follow=True)  # /dev/shm: a system path


def _state_dir(cfg: Config) -> Dir:
    return Dir.open(Path(cfg.state_dir), create=True, private=True)


def _root_file(d: Dir, name: str) -> os.stat_result | None:
    """lstat ``name``: None if absent; refused unless a regular file owned by root."""
    st = d.lstat(name)
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in trusted_uids():
        raise InputError(f"refusing {d.path / name}: it is {kind(st)} owned by uid {st.st_uid}",
                         hint="it was not created by QEMU or pvepstore; remove it")
    return st


def _keep_records(cfg: Config, vmid: int, phase: str, actions: list[str]) -> None:
    name = shm_name(vmid)
    live, keep = cfg.paths.ivshmem_file(name).name, cfg.paths.ivshmem_keep(name).name
    durable = durable_copy(cfg, vmid)
    if phase not in ("pre-start", "post-start", "post-stop"):
        return
    with _shm_dir(cfg.paths) as shm:
        if phase == "pre-start":
            if shm.lstat(live) is not None:
                return
            if _root_file(shm, keep) is not None:
                shm.link_replace(keep, live)
                actions.append(f"relinked {keep} as {live}")
            else:
                with _state_dir(cfg) as state_dir, state_dir.sub("ivshmem") as d:
                    if d.lstat(durable.name) is None:
                        return
                    data = d.read_bytes(durable.name, limit=MAX_SHM, owned=True)
                shm.replace_file(live, data, 0o600)
                actions.append(f"restored {live} from {durable}")
        elif phase == "post-start":
            st = _root_file(shm, live)
            if st is None:
                return
            kept = shm.lstat(keep)
            if kept is None or (kept.st_dev, kept.st_ino) != (st.st_dev, st.st_ino):
                shm.link_replace(live, keep)
                actions.append(f"linked {live} as {keep}")
        elif phase == "post-stop":
            if _root_file(shm, keep) is None:
                return
            data = shm.read_bytes(keep, limit=MAX_SHM, owned=True)
            with _state_dir(cfg) as state_dir, state_dir.sub("ivshmem") as d:
                d.replace_file(durable.name, data, 0o600)
            actions.append(f"saved {keep} to {durable}")


def snippet_path(paths: HostPaths, volid: str) -> Path:
    """Host path of a ``<storage>:snippets/<file>`` volume (its storage must hold snippets)."""
    from .hostvol import FILE_TYPES, load_storages

    storeid, _, rest = volid.partition(":")
    fname = rest[len("snippets/"):]
    if not rest.startswith("snippets/") or not re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*", fname):
        raise PveError(f"hookscript {volid!r} is not a <storage>:snippets/<file> volume")
    store = load_storages(paths).get(storeid)
    if store is None or store.get("type") not in FILE_TYPES:
        raise PveError(f"hookscript storage {storeid!r} is not a file storage",
                       hint="snippets live on dir/nfs/cifs storages with content 'snippets'")
    base = store.get("path") or f"/mnt/pve/{storeid}"
    return paths.storage_path(base) / "snippets" / fname


def install_hookscript(cfg: Config, storeid: str, program: str | Sequence[str], vmid: int,
                       chain: str | None = None) -> str:
    """Write the VM's pvepstore hookscript to ``<storage>/snippets`` (0755); return its volume id.

    ``chain`` is the operator's existing hookscript: pvepstore's script runs it
    after its own step, with the same arguments, and exits with its status.
    """
    volid = f"{storeid}:snippets/{HOOK_NAME.format(vmid=int(vmid))}"
    path = snippet_path(cfg.paths, volid)
    words = [program] if isinstance(program, str) else list(program)
    text = HOOK_TEMPLATE.format(program=" ".join(shlex.quote(w) for w in words), vmid=int(vmid))
    if chain:
        chained = snippet_path(cfg.paths, chain)
        if not chained.exists():
            raise PveError(f"VM {vmid}'s hookscript {chain} does not exist at {chained}",
                           hint="fix or remove the VM's hookscript first; pvepstore will not drop it")
        text += CHAIN_TEMPLATE.format(volid=chain, path=shlex.quote(str(chained)))
    if not path.is_file() or path.read_text() != text:
        write_atomic(path, text.encode(), 0o755)  # fresh O_EXCL temp + rename: a planted link is replaced
    return volid


def is_ours(volid: str | None) -> bool:
    return bool(volid) and bool(re.search(r":snippets/pvepstore-hook-\d+\.sh$", volid))


# -- reading and clearing -----------------------------------------------------------

@dataclass(frozen=True)
class IvshmemImage:
    data: bytes
    source: str  # live | keep | durable
    path: Path


def read_image(cfg: Config, vmid: int, attempts: int = 5) -> IvshmemImage:
    """The ramoops memory: a consistent snapshot of the live file, or the preserved copies."""
    paths = cfg.paths
    name = shm_name(vmid)
    for source, path in (("live", paths.ivshmem_file(name)), ("keep", paths.ivshmem_keep(name)),
                         ("durable", durable_copy(cfg, vmid))):
        fd = _open_root_file(path)
        if fd is None:
            continue
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(fd).st_size
            if size > MAX_SHM:
                raise InputError(f"{path} is {size} bytes: not a pvepstore ivshmem file")
            def read() -> bytes:
                f.seek(0)
                return f.read(MAX_SHM)

            # the guest may be writing: two equal reads make a snapshot (still changing: the newest)
            return IvshmemImage(snapshot(read, tries=attempts, pause=0).data, source, path)
    raise InputError(f"VM {vmid} has no ivshmem records file ({paths.ivshmem_file(name)})",
                     hint="the VM was never started with the ivshmem backend, or the host rebooted "
                          "before pvepstore saved a copy")


def parse_image(cfg: Config, vmid: int, image: IvshmemImage) -> ParseResult:
    recorded = state.provision_record(cfg, vmid).get("ramoops_params")
    params = RamoopsParams(**recorded) if isinstance(recorded, dict) else None
    result = read_ramoops(BytesSource(image.data, name=f"{image.source}:{image.path}"), params)
    return result


def clear_records(cfg: Config, vmid: int, image: IvshmemImage, records: Sequence[Record]) -> list[str]:
    """Zap the zones of ``records`` (ramoops erase: start = size = 0) if they are unchanged."""
    done = []
    fd = _open_root_file(image.path, os.O_RDWR)
    if fd is None:
        return done
    with os.fdopen(fd, "r+b") as f:
        for rec in records:
            length = PRZ_HEADER.size + _zone_used(image.data, rec.offset)
            f.seek(rec.offset)
            now = f.read(length)
            if now != image.data[rec.offset:rec.offset + length]:
                continue  # the guest wrote a new record there meanwhile: keep it
            sig = struct.unpack_from("<I", now)[0]
            f.seek(rec.offset)
            f.write(PRZ_HEADER.pack(sig, 0, 0))
            done.append(rec.name)
        f.flush()
        os.fsync(f.fileno())
    return done


def _open_root_file(path: Path, flags: int = os.O_RDONLY) -> int | None:
    """An fd on ``path`` if it is a regular file owned by root; None if absent (links refused)."""
    try:
        with Dir.open(path.parent, follow=True) as d:
            if d.lstat(path.name) is None:
                return None
            return d.open_regular(path.name, flags, owned=True)
    except FileNotFoundError:
        return None


def _zone_used(data: bytes, offset: int) -> int:
    _, _start, size = PRZ_HEADER.unpack_from(data, offset)
    return max(0, min(size, len(data) - offset - PRZ_HEADER.size))
