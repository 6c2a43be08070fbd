"""The pstore disk through the API: find it, attach (or reattach) it, detach or free it.

Attach is ``POST .../config`` with the config ``digest`` (a concurrent change
fails the task instead of being overwritten), then the task's exit status,
then ``GET .../pending``: a disk that was not hotplugged (hotplug off, IDE/SATA,
a hotplug failure) waits in ``[PENDING]`` until the VM is stopped and started,
and is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import DiskConfig
from ..errors import PveError
from .api import PveApi, quote
from .vmconfig import (DiskLocation, find_pstore_disk, free_slot, parse_drive, pending_map,
                       system_disk_storage)

DRIVE_OPTIONS = "format=raw,serial={serial},backup=0,replicate=0,discard=on"
PENDING_HINT = ("the disk waits in the VM's [PENDING] config (disk hotplug is off or failed): stop and "
                "start the VM (`qm reboot {vmid}` or shutdown + start; a reboot inside the guest is not "
                "enough), then run `pvepstore provision {vmid}` again")


def gib_fraction(size_mib: int) -> str:
    """512 → ``0.5`` (the ``STORAGE:SIZE_IN_GiB`` shorthand takes fractions, no unit)."""
    text = f"{size_mib / 1024:.10f}".rstrip("0").rstrip(".")
    return text or "0"


@dataclass
class DiskResult:
    action: str  # present | attached | reattached | pending | planned-attach | planned-reattach
    key: str | None = None
    volid: str | None = None
    storage: str | None = None
    pending: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.action in ("present", "attached", "reattached") and not self.pending

    def to_json(self) -> dict:
        return {"action": self.action, "key": self.key, "volid": self.volid, "storage": self.storage,
                "pending": self.pending, "notes": self.notes}


@dataclass
class VmDiskView:
    config: dict  # current values (digest removed)
    digest: str
    pending: dict
    deletes: set[str]
    location: DiskLocation


def inspect(api: PveApi, node: str, vmid: int, disk: DiskConfig, known_volids: set[str]) -> VmDiskView:
    conf = dict(api.get(f"nodes/{node}/qemu/{vmid}/config", current=1))
    digest = conf.pop("digest", "")
    pend, deletes = pending_map(api.get(f"nodes/{node}/qemu/{vmid}/pending"))
    loc = find_pstore_disk(conf, pend, disk.serial, known_volids)
    return VmDiskView(conf, digest, pend, deletes, loc)


def volume_exists(api: PveApi, node: str, volid: str) -> bool:
    storage = volid.split(":", 1)[0]
    try:
        api.get(f"nodes/{node}/storage/{quote(storage)}/content/{quote(volid)}")
    except PveError as exc:
        if getattr(exc, "status", None) in (401, 403):  # a refusal, not an absent volume
            raise
        return False
    return True


@dataclass
class DiskPlan:
    """What :func:`apply_disk` would do, decided from reads only (so provision can check it first)."""

    view: VmDiskView
    done: DiskResult | None = None  # no write needed: the disk is present or pending
    slot: str | None = None
    value: str = ""
    action: str = ""  # attached | reattached
    storage: str | None = None
    why: str = ""
    volid: str | None = None  # the existing volume a reattach uses
    notes: list[str] = field(default_factory=list)

    @property
    def allocates(self) -> bool:
        return self.done is None and self.action == "attached"


def plan_disk(api: PveApi, node: str, vmid: int, disk: DiskConfig,
              known_volids: set[str] = frozenset()) -> DiskPlan:
    """Find the pstore disk and decide the one write that would attach it (no write is sent)."""
    view = inspect(api, node, vmid, disk, known_volids)
    loc = view.location
    if loc.state == "attached":
        res = DiskResult("present", loc.key, loc.volid, (loc.volid or "").split(":")[0] or None)
        if loc.bus != "virtio":
            res.notes.append(f"the pstore disk is on {loc.key}, not virtio: on PVE 9 the guest's "
                             f"/dev/disk/by-id name of a SCSI disk ignores the serial")
        if loc.key in view.deletes:
            res.pending = True
            res.notes.append(f"{loc.key} is pending removal")
        fmt = parse_drive(loc.value or "").get("format")
        if fmt and fmt != "raw":
            res.notes.append(f"{loc.key} has format={fmt}: offline reads need a raw volume")
        return DiskPlan(view, done=res)
    if loc.state == "pending":
        return DiskPlan(view, done=DiskResult("pending", loc.key, loc.volid, (loc.volid or "").split(":")[0],
                                              pending=True, notes=[PENDING_HINT.format(vmid=vmid)]))
    slot = free_slot(view.config, view.pending, "virtio")
    if slot is None:
        raise PveError(f"VM {vmid} has no free virtio slot (virtio0..15 are used)",
                       hint="free a virtio slot or set disk options per VM")
    options = DRIVE_OPTIONS.format(serial=disk.serial)
    notes: list[str] = []
    if loc.state in ("unused", "commented") and loc.volid:
        if loc.state == "commented" and not volume_exists(api, node, loc.volid):
            notes.append(f"a restore left `#{loc.key}: {loc.value}` but {loc.volid} no longer exists: "
                         f"allocating a new disk")
            loc = DiskLocation("absent")
    if loc.state in ("unused", "commented"):
        where = " line from a restore" if loc.state == "commented" else ""
        return DiskPlan(view, slot=slot, value=f"{loc.volid},{options}", action="reattached",
                        storage=loc.volid.split(":")[0], volid=loc.volid, notes=notes,
                        why=f"reattach the pstore volume {loc.volid} ({loc.key}{where})")
    storage = disk.storage or system_disk_storage(view.config)
    if not storage:
        raise PveError(f"VM {vmid}: cannot tell the storage of its system disk",
                       hint=f"set disk.storage (or vms.{vmid}.disk.storage) in the config")
    return DiskPlan(view, slot=slot, value=f"{storage}:{gib_fraction(disk.size_mib)},{options}",
                    action="attached", storage=storage, notes=notes,
                    why=f"allocate {disk.size_mib} MiB on {storage} and attach it as {slot}")


def ensure_disk(api: PveApi, node: str, vmid: int, disk: DiskConfig,
                known_volids: set[str] = frozenset()) -> DiskResult:
    """Make sure the VM has its pstore disk; never allocates a second one."""
    return apply_disk(api, node, vmid, disk, known_volids, plan_disk(api, node, vmid, disk, known_volids))


def apply_disk(api: PveApi, node: str, vmid: int, disk: DiskConfig, known_volids: set[str],
               plan: DiskPlan) -> DiskResult:
    """Send the plan's write (with the digest of the config it was planned on) and check the result."""
    if plan.done is not None:
        return plan.done
    params = {plan.slot: plan.value, "digest": plan.view.digest}
    notes = list(plan.notes)
    if api.dry_run:
        api.write("POST", f"nodes/{node}/qemu/{vmid}/config", why=plan.why, **params)
        planned = "planned-reattach" if plan.action == "reattached" else "planned-attach"
        return DiskResult(planned, plan.slot, plan.volid, plan.storage, notes=notes)
    task_error = None
    try:
        api.run_task("POST", f"nodes/{node}/qemu/{vmid}/config", why=plan.why, **params)
    except PveError as exc:
        task_error = exc
    after = inspect(api, node, vmid, disk, known_volids | ({plan.volid} if plan.volid else set()))
    if after.location.state == "pending":
        notes.append(PENDING_HINT.format(vmid=vmid))
        if task_error:
            notes.append(f"the attach task failed: {task_error.message}")
        return DiskResult("pending", after.location.key, after.location.volid, plan.storage, pending=True,
                          notes=notes)
    if task_error:
        raise task_error
    if after.location.state != "attached":
        raise PveError(f"VM {vmid}: the attach task succeeded but no disk with serial {disk.serial} is in "
                       f"the config", hint=f"check `qm config {vmid}` and the task log")
    return DiskResult(plan.action, after.location.key, after.location.volid, plan.storage, notes=notes)


def undo_attach(api: PveApi, node: str, vmid: int, result: DiskResult) -> str:
    """Take back an attach this run made: a volume it allocated is freed, a volume it reattached
    goes back to ``unusedN`` (never freed: it holds the operator's records).  Returns what was done."""
    path = f"nodes/{node}/qemu/{vmid}/config"
    digest = api.get(path).get("digest", "")
    if result.action == "attached":
        api.run_task("POST", path, why=f"roll back: free the volume {result.volid} this run allocated",
                     delete=result.key, force=1, digest=digest)
        left = pending_map(api.get(f"nodes/{node}/qemu/{vmid}/pending"))[1]
        if result.key in left:
            return f"{result.key} ({result.volid}) is removed at the next VM stop/start (not hot-unpluggable now)"
        return f"detached {result.key} and freed {result.volid}"
    api.run_task("POST", path, why=f"roll back: detach {result.volid} again (it stays as unusedN)",
                 delete=result.key, digest=digest)
    return f"detached {result.key} again ({result.volid} is kept as unusedN)"


@dataclass
class DetachResult:
    action: str  # detached | deleted | nothing | pending | planned-...
    key: str | None = None
    volid: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"action": self.action, "key": self.key, "volid": self.volid, "notes": self.notes}


def detach_disk(api: PveApi, node: str, vmid: int, disk: DiskConfig, known_volids: set[str],
                delete: bool) -> DetachResult:
    """Detach the pstore disk (it becomes ``unusedN``), or with ``delete`` free the volume."""
    view = inspect(api, node, vmid, disk, known_volids)
    loc = view.location
    path = f"nodes/{node}/qemu/{vmid}/config"
    if loc.state in ("absent", "commented"):
        return DetachResult("nothing", notes=["no pstore disk in the VM config"])
    if loc.state == "unused" and not delete:
        return DetachResult("nothing", loc.key, loc.volid, notes=[f"already detached ({loc.key})"])
    if loc.state == "pending":
        api.run_task("POST", path, why=f"drop the pending {loc.key}", revert=loc.key, digest=view.digest)
        if api.dry_run or not delete:
            return DetachResult("planned-revert" if api.dry_run else "detached", loc.key, loc.volid)
        view = inspect(api, node, vmid, disk, known_volids | {loc.volid})
        loc = view.location
        if loc.state != "unused":
            return DetachResult("detached", loc.key, loc.volid)
    params = {"delete": loc.key, "digest": view.digest}
    if delete and loc.state == "attached":
        params["force"] = 1
    why = ("free the volume " if delete else "detach (the volume stays as unusedN) ") + str(loc.volid)
    try:
        api.run_task("POST", path, why=why, **params)
    except PveError as exc:
        raise PveError(f"VM {vmid}: detaching {loc.key} failed: {exc.message}",
                       hint="a running guest may hold the disk (hot-unplug waits 5 s); "
                            "stop the VM and retry") from None
    if api.dry_run:
        return DetachResult("planned-" + ("delete" if delete else "detach"), loc.key, loc.volid)
    _, deletes = pending_map(api.get(f"nodes/{node}/qemu/{vmid}/pending"))
    if loc.key in deletes:
        return DetachResult("pending", loc.key, loc.volid,
                            notes=[f"{loc.key} is removed at the next VM stop/start (not hot-unpluggable now)"])
    return DetachResult("deleted" if delete else "detached", loc.key, loc.volid)
