"""provision / unprovision / status: the pstore disk through the API, the guest over SSH.

``provision`` = find or attach the disk (never a second one) → record it in
``<state_dir>/vms/<vmid>.json`` → find the guest's address → probe, plan and
apply the guest configuration → (``reboot``) → verify → a summary with the
guest's capability report. ``dry_run`` sends no API write and changes nothing
in the guest: every call and change is listed instead.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import Config
from ..errors import GuestError, PvepstoreError, UsageError
from ..pve import state
from ..pve.address import GuestAddress, resolve_address
from ..pve.api import PveApi, connect as api_connect
from ..pve.commands import CommandRunner
from ..pve.disks import DetachResult, DiskResult, detach_disk, ensure_disk, inspect
from ..pve.inventory import in_scope, list_vms, local_node, locate

GuestConnect = Callable[[Any], AbstractContextManager]


def default_guest_connect(target) -> AbstractContextManager:
    from ..guest import connect  # the guest side (SSH); imported when first needed
    return connect(target)


def guest_target(vm_ssh, host: str, vmid: int):
    from ..guest import GuestTarget
    return GuestTarget.from_config(vm_ssh, host=host, label=f"VM {vmid}")


@dataclass
class Context:
    cfg: Config
    api: PveApi
    runner: CommandRunner | None = None  # None: run lvs/lvchange on this host
    # looked up at call time, so that tests can substitute the module functions
    guest_connect: GuestConnect = lambda target: default_guest_connect(target)  # noqa: E731
    make_target: Callable = lambda ssh, host, vmid: guest_target(ssh, host, vmid)  # noqa: E731
    reboot_timeout: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time


def make_context(cfg: Config, *, dry_run: bool = False, **kw) -> Context:
    return Context(cfg, api_connect(cfg, dry_run=dry_run), **kw)


def _json(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, int, float, bool, list, dict)):
        return obj
    to_json = getattr(obj, "to_json", None)
    return to_json() if callable(to_json) else str(obj)


@dataclass
class ProvisionResult:
    vmid: int
    node: str
    dry_run: bool
    disk: DiskResult
    api_calls: list = field(default_factory=list)
    address: GuestAddress | None = None
    running: bool | None = None
    probe: Any = None
    plan: list[str] = field(default_factory=list)
    applied: Any = None
    verify: Any = None
    rebooted: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.dry_run:
            return True
        return self.disk.ready and bool(self.verify is not None and getattr(self.verify, "ok", False))

    def to_json(self) -> dict:
        return {"vmid": self.vmid, "node": self.node, "dry_run": self.dry_run, "ok": self.ok,
                "disk": self.disk.to_json(), "api_calls": [c.to_json() for c in self.api_calls],
                "address": None if self.address is None else {"host": self.address.host,
                                                              "source": self.address.source},
                "running": self.running, "probe": _json(self.probe), "plan": self.plan,
                "applied": _json(self.applied), "verify": _json(self.verify), "rebooted": self.rebooted,
                "problems": self.problems}

    def lines(self) -> list[str]:
        head = "provision (dry run: nothing was changed)" if self.dry_run else "provision"
        out = [f"VM {self.vmid} on {self.node}: {head}"]
        d = self.disk
        where = f"{d.key} = {d.volid}" if d.volid else (d.key or "-")
        out.append(f"  disk: {d.action} {where}" + (" (PENDING)" if d.pending else ""))
        out += [f"    note: {n}" for n in d.notes]
        if self.api_calls:
            out.append("  API calls" + (" that would be made:" if self.dry_run else ":"))
            out += [f"    {c.describe()}" for c in self.api_calls]
        if self.address:
            out.append(f"  guest: {self.address.host} (from {self.address.source})")
        if self.probe is not None:
            caps = getattr(self.probe, "capabilities", {}) or {}
            if caps:
                out.append("  capabilities:")
                for name, cap in caps.items():
                    status = getattr(cap, "status", cap)
                    note = getattr(cap, "note", "")
                    out.append(f"    {name}: {status}" + (f" - {note}" if note else ""))
            for p in getattr(self.probe, "problems", []) or []:
                out.append(f"    guest problem: {getattr(p, 'message', p)}")
            if self.dry_run and self.disk.action.startswith("planned"):
                out.append("    (the guest cannot see the pstore disk yet: the API call above attaches it first)")
        if self.plan:
            out.append("  guest changes" + (" that would be made:" if self.dry_run else ":"))
            out += [f"    {line}" for line in self.plan]
        if self.rebooted:
            out.append("  rebooted")
        if self.verify is not None:
            out.append(f"  verify: {'ok' if getattr(self.verify, 'ok', False) else 'FAILED'}")
            out += [f"    {p}" for p in getattr(self.verify, "problems", []) or []]
        out += [f"  problem: {p}" for p in self.problems]
        if not self.dry_run:
            out.append(f"  result: {'provisioned' if self.ok else 'NOT complete (see above)'}")
        return out


def _running(api: PveApi, node: str, vmid: int) -> bool:
    return api.get(f"nodes/{node}/qemu/{vmid}/status/current").get("status") == "running"


def provision(ctx: Context, vmid: int, *, dry_run: bool = False, reboot: bool = False) -> ProvisionResult:
    cfg, api = ctx.cfg, ctx.api
    api.dry_run = dry_run
    vm_cfg = cfg.for_vm(vmid)
    if vm_cfg.backend != "pstore_blk":
        raise UsageError(f"VM {vmid} uses the {vm_cfg.backend} backend; provision handles pstore_blk",
                         hint=f"set vms.{vmid}.backend: pstore_blk, or use the ivshmem provisioning")
    vm = locate(api, vmid)
    disk = ensure_disk(api, vm.node, vmid, vm_cfg.disk, state.known_volids(cfg, vmid))
    res = ProvisionResult(vmid, vm.node, dry_run, disk)
    blk = {"kmsg_size": cfg.pstore_blk.kmsg_size, "pmsg_size": 0, "console_size": 0, "ftrace_size": 0,
           "nr_cpus": 1, "cap_128m": True}
    if not dry_run and disk.volid:
        old = state.provision_record(cfg, vmid)
        olds = sorted({*old.get("old_volids", []), old.get("volid")} - {None, disk.volid})
        state.update(cfg, vmid, provision={"volid": disk.volid, "key": disk.key, "serial": vm_cfg.disk.serial,
                                           "node": vm.node, "pending": disk.pending, "blk_params": blk,
                                           "max_reason": cfg.pstore_blk.max_reason, "old_volids": olds,
                                           "at": ctx.clock()})
    try:
        res.running = _running(api, vm.node, vmid)
        if not res.running:
            res.problems.append(f"VM {vmid} is not running: the guest was not configured; start it and run "
                                f"`pvepstore provision {vmid}` again")
            return res
        config = api.get(f"nodes/{vm.node}/qemu/{vmid}/config")
        res.address = resolve_address(api, vm.node, vmid, vm_cfg.ssh, config)
        target = ctx.make_target(vm_cfg.ssh, res.address.host, vmid)
        with ctx.guest_connect(target) as guest:
            res.probe = guest.probe(serial=vm_cfg.disk.serial, disk_bytes=vm_cfg.disk.size_mib << 20)
            plan = guest.plan(res.probe, kmsg_size=cfg.pstore_blk.kmsg_size, max_reason=cfg.pstore_blk.max_reason)
            res.plan = list(plan.describe())
            res.applied = guest.apply(plan, dry_run=dry_run)
            if dry_run:
                if reboot:
                    res.plan.append("reboot the VM" + (" through the API (applies the pending disk)"
                                                       if disk.pending or disk.action.startswith("planned")
                                                       else "") + " and verify")
                return res
            if not reboot:
                res.verify = guest.verify(serial=vm_cfg.disk.serial)
        if reboot:
            _reboot_and_wait(ctx, vm.node, vmid, target, via_api=disk.pending,
                             old_boot=getattr(res.probe, "boot_id", "") or "")
            res.rebooted = True
            if disk.pending:
                res.disk = ensure_disk(api, vm.node, vmid, vm_cfg.disk, state.known_volids(cfg, vmid))
            with ctx.guest_connect(target) as guest:
                res.verify = guest.verify(serial=vm_cfg.disk.serial)
        if res.verify is not None and not dry_run:
            state.update(cfg, vmid, verified={"ok": bool(getattr(res.verify, "ok", False)), "at": ctx.clock(),
                                              "problems": list(getattr(res.verify, "problems", []) or [])})
    except GuestError as exc:
        if not dry_run:
            raise
        res.problems.append(f"guest not reached, its changes cannot be shown: {exc.message}")
    finally:
        res.api_calls = list(api.planned if dry_run else api.done)
    return res


def _reboot_and_wait(ctx: Context, node: str, vmid: int, target, *, via_api: bool, old_boot: str) -> None:
    """Reboot (through the API when a pending disk must be applied) and wait for a new boot id."""
    if via_api:
        ctx.api.run_task("POST", f"nodes/{node}/qemu/{vmid}/status/reboot",
                         why="reboot (shutdown + start) so the pending disk is attached")
    else:
        with ctx.guest_connect(target) as guest:
            old_boot = guest.reboot() or old_boot
    deadline = ctx.clock() + ctx.reboot_timeout
    last: Exception | None = None
    while ctx.clock() < deadline:
        ctx.sleep(2.0)
        try:
            with ctx.guest_connect(target) as guest:
                boot = getattr(guest.probe(serial=ctx.cfg.for_vm(vmid).disk.serial, disk_bytes=None), "boot_id", "")
            if boot and boot != old_boot:
                return
        except PvepstoreError as exc:
            last = exc
    raise GuestError(f"VM {vmid} did not come back within {ctx.reboot_timeout:.0f} s after the reboot"
                     + (f" ({last})" if last else ""), hint="check the VM's console")


@dataclass
class UnprovisionResult:
    vmid: int
    node: str
    guest: Any = None
    detach: DetachResult | None = None
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"vmid": self.vmid, "node": self.node, "guest": _json(self.guest),
                "disk": None if self.detach is None else self.detach.to_json(), "problems": self.problems}

    def lines(self) -> list[str]:
        out = [f"VM {self.vmid} on {self.node}: unprovision"]
        if self.guest is not None:
            done = getattr(self.guest, "done", []) or []
            out.append("  guest: configuration undone" + ("" if done else " (nothing to undo)"))
            out += [f"    {d}" for d in done]
        if self.detach is not None:
            out.append(f"  disk: {self.detach.action} {self.detach.key or ''} {self.detach.volid or ''}".rstrip())
            out += [f"    note: {n}" for n in self.detach.notes]
        out += [f"  problem: {p}" for p in self.problems]
        return out


def unprovision(ctx: Context, vmid: int, *, delete_disk: bool = False) -> UnprovisionResult:
    cfg, api = ctx.cfg, ctx.api
    vm_cfg = cfg.for_vm(vmid)
    vm = locate(api, vmid)
    res = UnprovisionResult(vmid, vm.node)
    if _running(api, vm.node, vmid):
        config = api.get(f"nodes/{vm.node}/qemu/{vmid}/config")
        try:
            address = resolve_address(api, vm.node, vmid, vm_cfg.ssh, config)
            with ctx.guest_connect(ctx.make_target(vm_cfg.ssh, address.host, vmid)) as guest:
                res.guest = guest.undo(dry_run=False)
        except GuestError as exc:
            res.problems.append(f"guest configuration not undone ({exc.message}); run unprovision again "
                                f"when the guest is reachable")
    else:
        res.problems.append("the VM is not running: its guest configuration was not undone (it is harmless "
                            "without the disk: pstore_blk finds no device)")
    res.detach = detach_disk(api, vm.node, vmid, vm_cfg.disk, state.known_volids(cfg, vmid), delete_disk)
    rec = state.provision_record(cfg, vmid)
    kept = [] if delete_disk else [v for v in [res.detach.volid, *rec.get("old_volids", [])] if v]
    state.update(cfg, vmid, provision={"removed": ctx.clock(), "old_volids": sorted(set(kept)),
                                       "blk_params": rec.get("blk_params")})
    return res


@dataclass
class VmStatus:
    vmid: int
    name: str | None
    node: str
    running: bool | None
    provisioned: bool
    disk: str | None
    volid: str | None
    pending: bool
    backend_ok: bool | None
    last_collection: float | None
    error: str | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def status(ctx: Context) -> list[VmStatus]:
    cfg, api = ctx.cfg, ctx.api
    out = []
    for vm in in_scope(cfg, list_vms(api)):
        doc = state.load(cfg, vm.vmid)
        verified = doc.get("verified") if isinstance(doc.get("verified"), dict) else {}
        row = VmStatus(vm.vmid, vm.name, vm.node, None, False, None, None, False,
                       verified.get("ok") if verified else None, doc.get("last_collection"))
        try:
            row.running = _running(api, vm.node, vm.vmid)
            view = inspect(api, vm.node, vm.vmid, cfg.for_vm(vm.vmid).disk, state.known_volids(cfg, vm.vmid))
            loc = view.location
            row.provisioned = loc.state in ("attached", "pending")
            row.disk = loc.key if loc.state != "absent" else None
            row.volid = loc.volid
            row.pending = loc.state == "pending" or (loc.key in view.deletes)
        except PvepstoreError as exc:
            row.error = exc.message
        out.append(row)
    return out


def this_node(cfg: Config) -> str:
    return local_node(cfg)
