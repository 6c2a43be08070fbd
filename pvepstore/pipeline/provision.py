"""provision / unprovision / status: the pstore disk through the API, the guest over SSH.

``provision`` = the checks (reads only: the token's privileges, the storage, the
VM's lock, the guest reachable with a trusted host key, its probe without
blockers; :mod:`.preflight`) → attach the disk (never a second one) → record it in
``<state_dir>/vms/<vmid>.json`` → probe again, plan and apply the guest
configuration → (``reboot``) → verify → a summary with the guest's capability
report.  A failure after the attach takes it back (the volume freed, a reattached
one unused again, the state as before) unless the guest may already use the disk;
then the error says what was left and which run resumes.  ``dry_run`` runs the
same checks, sends no API write and changes nothing in the guest: every call and
change is listed instead.

With the **ivshmem** backend (``--backend ivshmem`` or ``backend``/``vms.<id>.backend``)
the disk is replaced by Proxmox's ``ivshmem: size=1,name=pvepstore-<vmid>`` plus
pvepstore's per-VM hookscript (which chains the operator's own), both set through
the API with the config ``digest``; the ramoops parameters go into the VM's state
so the host reader uses them exactly.  The device only appears at the VM's next
cold start (``restart`` does it: ``status/reboot``, PVE's shutdown + start, which
applies pending changes; a stopped VM is started); :mod:`.provision_ivshmem`.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import Config
from ..errors import GuestError, PvepstoreError, UsageError
from ..pve import state
from ..pve.address import GuestAddress, resolve_address
from ..pve.api import PveApi, connect as api_connect
from ..pve.commands import CommandRunner
from ..pve.disks import (DetachResult, DiskPlan, DiskResult, apply_disk, detach_disk, ensure_disk, inspect,
                         plan_disk, undo_attach)
from ..pve import ivshmem
from ..pve.inventory import in_scope, list_vms, local_node, locate
from . import preflight
from .preflight import Priv
from .provision_common import (_json, _reboot_and_wait, _remember_verify, _report_lines, _restore_record,
                               _running, _wait_new_boot, _where, token_id)  # noqa: F401
from .provision_ivshmem import (COLD_START, RAMOOPS_KEYS, ROOT_HINT, IvshmemProvisionResult, _shm_name_of,  # noqa: F401 (re-exported)
                                provision_ivshmem, snippet_storage, unprovision_ivshmem)

GuestConnect = Callable[[Any], AbstractContextManager]


def default_guest_connect(target) -> AbstractContextManager:
    from ..guest import connect  # the guest side (SSH); imported when first needed
    return connect(target)


def guest_target(vm_ssh, host: str, vmid: int):
    from ..guest import GuestTarget
    return GuestTarget.from_config(vm_ssh, host=host, label=f"VM {vmid}")


def hook_program(cfg: Config) -> list[str]:
    """The command pvepstore's hookscript runs (``<it> hook VMID PHASE``), with this config file."""
    exe = shutil.which("pvepstore")
    words = [exe] if exe else [sys.executable, "-m", "pvepstore"]
    if cfg.source:
        words += ["--config", str(Path(cfg.source).resolve())]
    return words


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
    hook_program: Callable[[Config], list[str]] = lambda cfg: hook_program(cfg)  # noqa: E731
    progress: Callable[[str], None] = lambda text: None  # noqa: E731  (the CLI: one line on stderr)


def make_context(cfg: Config, *, dry_run: bool = False, **kw) -> Context:
    return Context(cfg, api_connect(cfg, dry_run=dry_run), **kw)


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
        note = None
        if self.dry_run and self.disk.action.startswith("planned"):
            note = "(the guest cannot see the pstore disk yet: the API call above attaches it first)"
        return out + _report_lines(self, probe_note=note, done="rebooted" if self.rebooted else None)


def _hotplugs_disks(config: dict) -> bool:
    value = str(config.get("hotplug", "network,disk,usb")).strip()
    return value == "1" or "disk" in value.split(",")


def provision(ctx: Context, vmid: int, *, dry_run: bool = False, reboot: bool = False,
              backend: str | None = None, restart: bool = False,
              hook_storage: str | None = None) -> "ProvisionResult | IvshmemProvisionResult":
    """Checks first (reads only: privileges, storage, lock, the guest and its probe), then the
    one disk write, then the guest.  A failure after the write takes the disk back (see
    :mod:`.preflight`) unless the guest may already use it; ``dry_run`` runs the same checks."""
    cfg, api = ctx.cfg, ctx.api
    api.dry_run = dry_run
    vm_cfg = cfg.for_vm(vmid)
    backend = backend or vm_cfg.backend
    if backend == "ivshmem":
        return provision_ivshmem(ctx, vmid, dry_run=dry_run, restart=restart or reboot,
                                 hook_storage=hook_storage)
    if backend != "pstore_blk":
        raise UsageError(f"unknown backend {backend!r}", hint="pstore_blk or ivshmem")
    if restart:
        raise UsageError("--restart is for the ivshmem backend", hint="pstore_blk uses --reboot")
    from ..guest.session import refuse_blocked  # the guest side; imported when first needed

    vm = locate(api, vmid)
    node = vm.node
    known = state.known_volids(cfg, vmid)
    dplan = plan_disk(api, node, vmid, vm_cfg.disk, known)
    preflight.check_not_locked(dplan.view.config, vmid)
    running = _running(api, node, vmid)
    needs = preflight.Needs()
    needs.add(f"/vms/{vmid}", Priv.VM_AUDIT, "read the VM's config")
    if dplan.done is None:
        needs.add(f"/vms/{vmid}", Priv.VM_CONFIG_DISK, "attach the pstore disk")
    if dplan.allocates:
        needs.add(f"/storage/{dplan.storage}", Priv.DATASTORE_ALLOCATE, "allocate the pstore disk")
    pending_after = (dplan.done.pending if dplan.done else not _hotplugs_disks(dplan.view.config))
    if reboot and running and pending_after:
        needs.add(f"/vms/{vmid}", Priv.VM_POWER, "reboot through the API so the pending disk is attached")
    preflight.check_privileges(api, needs, token_id(cfg))
    if dplan.allocates:
        preflight.check_storage(api, node, dplan.storage, vm_cfg.disk.size_mib << 20, vmid)
    res = ProvisionResult(vmid, node, dry_run, dplan.done or DiskResult("planned-" + dplan.action, dplan.slot,
                                                                          dplan.volid, dplan.storage))
    res.running = running
    blk = {"kmsg_size": cfg.pstore_blk.kmsg_size, "pmsg_size": 0, "console_size": 0, "ftrace_size": 0,
           "nr_cpus": 1, "cap_128m": True}
    journal = preflight.Journal()
    committed = False  # the guest is configured: from here on nothing is taken back
    resume = f"`pvepstore provision {vmid}` resumes (it finds the disk and never allocates a second one)"
    try:
        if not running:
            # nothing in a stopped guest can be checked: the disk is attached, the guest waits for a start
            _attach(ctx, vmid, node, dplan, res, blk, journal)
            res.problems.append(f"VM {vmid} is not running: the guest was not configured; start it and run "
                                f"`pvepstore provision {vmid}` again")
            return res
        config = api.get(f"nodes/{node}/qemu/{vmid}/config")
        res.address = resolve_address(api, node, vmid, vm_cfg.ssh, config)
        target = ctx.make_target(vm_cfg.ssh, res.address.host, vmid)
        with ctx.guest_connect(target) as guest:  # unreachable, host key unknown or wrong: nothing written
            res.probe = guest.probe(serial=vm_cfg.disk.serial, disk_bytes=vm_cfg.disk.size_mib << 20)
            plan = guest.plan(res.probe, kmsg_size=cfg.pstore_blk.kmsg_size, max_reason=cfg.pstore_blk.max_reason)
            refuse_blocked(plan, _where(guest, vmid))
            _attach(ctx, vmid, node, dplan, res, blk, journal)
            if journal.steps and not res.disk.pending:
                # the guest sees the new disk now: plan from what it sees
                res.probe = guest.probe(serial=vm_cfg.disk.serial, disk_bytes=vm_cfg.disk.size_mib << 20)
                plan = guest.plan(res.probe, kmsg_size=cfg.pstore_blk.kmsg_size,
                                  max_reason=cfg.pstore_blk.max_reason)
                refuse_blocked(plan, _where(guest, vmid))
            res.plan = list(plan.describe())
            try:
                res.applied = guest.apply(plan, dry_run=dry_run)
            except GuestError as exc:
                # a guest script that stopped half-way may already use the disk: keep it then
                raise journal.fail(exc, keep=not getattr(exc, "unchanged", False), resume=resume) from None
            committed = True
            if not dry_run and not getattr(plan, "empty", False):
                journal.did("the guest configured for pstore_blk")
            settings = getattr(plan, "settings", None)
            if not dry_run and res.disk.volid and isinstance(settings, dict):
                # The layout the guest's kernel uses: pmsg/console zones exist where it has those
                # frontends, and they come BEFORE the dmesg zones -- the offline reader must know.
                blk.update({k: settings[k] for k in ("kmsg_size", "pmsg_size", "console_size")
                            if isinstance(settings.get(k), int)})
                state.update(cfg, vmid, provision={**state.provision_record(cfg, vmid), "blk_params": blk})
            if dry_run:
                if reboot:
                    res.plan.append("reboot the VM" + (" through the API (applies the pending disk)"
                                                       if res.disk.pending or res.disk.action.startswith("planned")
                                                       else "") + " and verify")
                return res
            if not reboot:
                res.verify = guest.verify(serial=vm_cfg.disk.serial)
        if reboot:
            resume = f"`pvepstore provision {vmid} --reboot` resumes"
            _reboot_and_wait(ctx, node, vmid, target, via_api=res.disk.pending,
                             old_boot=getattr(res.probe, "boot_id", "") or "")
            res.rebooted = True
            if res.disk.pending:
                res.disk = ensure_disk(api, node, vmid, vm_cfg.disk, state.known_volids(cfg, vmid))
            with ctx.guest_connect(target) as guest:
                res.verify = guest.verify(serial=vm_cfg.disk.serial)
        if res.verify is not None and not dry_run:
            _remember_verify(ctx, vmid, res.verify)
    except PvepstoreError as exc:
        raise journal.fail(exc, keep=committed, resume=resume) from None
    finally:
        res.api_calls = list(api.planned if dry_run else api.done)
    return res


def _attach(ctx: Context, vmid: int, node: str, dplan: DiskPlan, res: ProvisionResult, blk: dict,
            journal: preflight.Journal) -> None:
    """The first write: attach the disk, record it, and journal how to take it back."""
    cfg, api = ctx.cfg, ctx.api
    vm_cfg = cfg.for_vm(vmid)
    old = state.provision_record(cfg, vmid)
    res.disk = apply_disk(api, node, vmid, vm_cfg.disk, state.known_volids(cfg, vmid), dplan)
    if api.dry_run or not res.disk.volid:
        return
    if dplan.done is None:
        disk = res.disk

        def undo() -> str:
            done = undo_attach(api, node, vmid, disk)
            _restore_record(cfg, vmid, old)
            return done
        journal.did(f"{disk.key} = {disk.volid} attached" + (" (PENDING)" if disk.pending else ""), undo)
    olds = sorted({*old.get("old_volids", []), old.get("volid")} - {None, res.disk.volid})
    state.update(cfg, vmid, provision={"volid": res.disk.volid, "key": res.disk.key, "serial": vm_cfg.disk.serial,
                                       "node": node, "pending": res.disk.pending, "blk_params": blk,
                                       "max_reason": cfg.pstore_blk.max_reason, "old_volids": olds,
                                       "at": ctx.clock()})


@dataclass
class UnprovisionResult:
    vmid: int
    node: str
    guest: Any = None
    detach: DetachResult | None = None
    problems: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # ivshmem backend: what changed on the Proxmox side

    def to_json(self) -> dict:
        return {"vmid": self.vmid, "node": self.node, "guest": _json(self.guest),
                "disk": None if self.detach is None else self.detach.to_json(), "proxmox": self.changes,
                "problems": self.problems}

    def lines(self) -> list[str]:
        out = [f"VM {self.vmid} on {self.node}: unprovision"]
        if self.guest is not None:
            done = getattr(self.guest, "done", []) or []
            out.append("  guest: configuration undone" + ("" if done else " (nothing to undo)"))
            out += [f"    {d}" for d in done]
        if self.detach is not None:
            out.append(f"  disk: {self.detach.action} {self.detach.key or ''} {self.detach.volid or ''}".rstrip())
            out += [f"    note: {n}" for n in self.detach.notes]
        out += [f"  proxmox: {c}" for c in self.changes]
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
                            "without the disk or the ivshmem device: nothing is loaded then)")
    rec = state.provision_record(cfg, vmid)
    ivshmem_backend = rec.get("backend") == "ivshmem" or vm_cfg.backend == "ivshmem"
    if ivshmem_backend:
        unprovision_ivshmem(ctx, vmid, res)
    if not ivshmem_backend or state.known_volids(cfg, vmid) or delete_disk:
        res.detach = detach_disk(api, vm.node, vmid, vm_cfg.disk, state.known_volids(cfg, vmid), delete_disk)
    detached = res.detach.volid if res.detach else None
    kept = [] if delete_disk else [v for v in [detached, *rec.get("old_volids", [])] if v]
    doc = {"removed": ctx.clock(), "old_volids": sorted(set(kept)), "blk_params": rec.get("blk_params")}
    if ivshmem_backend:  # the reader may still need them for the kept copies
        doc.update(backend="ivshmem", ramoops_params=rec.get("ramoops_params"))
    state.update(cfg, vmid, provision=doc)
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
            if cfg.for_vm(vm.vmid).backend == "ivshmem":
                conf = api.get(f"nodes/{vm.node}/qemu/{vm.vmid}/config")
                current = api.get(f"nodes/{vm.node}/qemu/{vm.vmid}/config", current=1)
                ours = _shm_name_of(conf.get("ivshmem")) == ivshmem.shm_name(vm.vmid)
                row.provisioned = ours and ivshmem.is_ours(conf.get("hookscript"))
                row.disk = "ivshmem" if ours else None
                row.pending = ours and conf.get("ivshmem") != current.get("ivshmem")
                out.append(row)
                continue
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
