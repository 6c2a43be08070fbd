"""provision / unprovision / status: the pstore disk through the API, the guest over SSH.

``provision`` = find or attach the disk (never a second one) → record it in
``<state_dir>/vms/<vmid>.json`` → find the guest's address → probe, plan and
apply the guest configuration → (``reboot``) → verify → a summary with the
guest's capability report. ``dry_run`` sends no API write and changes nothing
in the guest: every call and change is listed instead.

With the **ivshmem** backend (``--backend ivshmem`` or ``backend``/``vms.<id>.backend``)
the disk is replaced by Proxmox's ``ivshmem: size=1,name=pvepstore-<vmid>`` plus
pvepstore's per-VM hookscript (which chains the operator's own), both set through
the API with the config ``digest``; the ramoops parameters go into the VM's state
so the host reader uses them exactly.  The device only appears at the VM's next
cold start (``restart`` does it: ``status/reboot``, PVE's shutdown + start, which
applies pending changes; a stopped VM is started).
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
from ..errors import GuestError, PveError, PvepstoreError, UsageError
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
        note = None
        if self.dry_run and self.disk.action.startswith("planned"):
            note = "(the guest cannot see the pstore disk yet: the API call above attaches it first)"
        return out + _report_lines(self, probe_note=note, done="rebooted" if self.rebooted else None)


def _report_lines(res: Any, *, probe_note: str | None = None, done: str | None = None) -> list[str]:
    """The part of a provision summary both backends share: API calls, guest, plan, verify."""
    out: list[str] = []
    if res.api_calls:
        out.append("  API calls" + (" that would be made:" if res.dry_run else ":"))
        out += [f"    {c.describe()}" for c in res.api_calls]
    if res.address:
        out.append(f"  guest: {res.address.host} (from {res.address.source})")
    if res.probe is not None:
        caps = getattr(res.probe, "capabilities", {}) or {}
        if caps:
            out.append("  capabilities:")
            for name, cap in caps.items():
                note = getattr(cap, "note", "")
                out.append(f"    {name}: {getattr(cap, 'status', cap)}" + (f" - {note}" if note else ""))
        costs = getattr(res.probe, "costs", []) or []
        if costs:
            out.append("  costs:")
            out += [f"    {c}" for c in costs]
        for p in getattr(res.probe, "problems", []) or []:
            out.append(f"    guest problem: {getattr(p, 'message', p)}")
        if probe_note:
            out.append(f"    {probe_note}")
    if res.plan:
        out.append("  guest changes" + (" that would be made:" if res.dry_run else ":"))
        out += [f"    {line}" for line in res.plan]
    if done:
        out.append(f"  {done}")
    if res.verify is not None:
        out.append(f"  verify: {'ok' if getattr(res.verify, 'ok', False) else 'FAILED'}")
        out += [f"    {p}" for p in getattr(res.verify, "problems", []) or []]
    out += [f"  problem: {p}" for p in res.problems]
    if not res.dry_run:
        out.append(f"  result: {'provisioned' if res.ok else 'NOT complete (see above)'}")
    return out


def _running(api: PveApi, node: str, vmid: int) -> bool:
    return api.get(f"nodes/{node}/qemu/{vmid}/status/current").get("status") == "running"


def token_id(cfg: Config) -> str | None:
    return f"{cfg.api.user}!{cfg.api.token_name}" if cfg.api.backend == "https" else None


def _hotplugs_disks(config: dict) -> bool:
    value = str(config.get("hotplug", "network,disk,usb")).strip()
    return value == "1" or "disk" in value.split(",")


def _where(guest: Any, vmid: int) -> str:
    return getattr(guest, "where", None) or f"VM {vmid}"


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


def _remember_verify(ctx: Context, vmid: int, verify: Any) -> None:
    """What `status` shows as "backend verified" (the last provision's verify)."""
    state.update(ctx.cfg, vmid, verified={"ok": bool(getattr(verify, "ok", False)), "at": ctx.clock(),
                                          "problems": list(getattr(verify, "problems", []) or [])})


def _reboot_and_wait(ctx: Context, node: str, vmid: int, target, *, via_api: bool, old_boot: str,
                     why: str = "reboot (shutdown + start) so the pending disk is attached") -> None:
    """Reboot (through the API when a pending disk must be applied) and wait for a new boot id."""
    if via_api:
        ctx.api.run_task("POST", f"nodes/{node}/qemu/{vmid}/status/reboot", why=why)
    else:
        with ctx.guest_connect(target) as guest:
            old_boot = guest.reboot() or old_boot
    _wait_new_boot(ctx, vmid, target, old_boot)


def _wait_new_boot(ctx: Context, vmid: int, target, old_boot: str) -> None:
    """Poll over SSH until the guest answers with a new boot id; failed attempts are expected
    (sshd is down while it reboots) and say nothing -- the wait is announced once."""
    ctx.progress(f"waiting for VM {vmid}'s guest to come back over SSH (up to {ctx.reboot_timeout:.0f} s)...")
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


# -- the ivshmem backend -------------------------------------------------------------------

ROOT_HINT = ("Proxmox lets only root@pam set a VM's hookscript and ivshmem (an API token, even root@pam's, is "
             "refused): use api.backend: local (pvesh as root on this node) for provision, or set them yourself "
             "with `qm set {vmid} --ivshmem {ivshmem} --hookscript {volid}` and run provision again")
COLD_START = ("the ivshmem device appears only at the VM's next cold start: run `pvepstore provision {vmid} "
              "--backend ivshmem --restart`, or shut the VM down and start it (`qm reboot` also works; a "
              "reboot inside the guest is not enough)")
RAMOOPS_KEYS = ("mem_size", "record_size", "console_size", "ftrace_size", "pmsg_size")


def _shm_name_of(option: str | None) -> str | None:
    for part in (option or "").split(","):
        if part.startswith("name="):
            return part[5:]
    return None


def snippet_storage(cfg: Config, chain: str | None, wanted: str | None = None) -> str:
    """The storage for pvepstore's hookscript: ``wanted``, else the operator's hookscript's, else a
    file storage with content ``snippets`` (``local`` first)."""
    from ..pve.hostvol import FILE_TYPES, load_storages

    stores = load_storages(cfg.paths)

    def holds_snippets(sid: str) -> bool:
        st = stores.get(sid) or {}
        return st.get("type") in FILE_TYPES and "snippets" in st.get("content", "").split(",")

    if wanted:
        if not holds_snippets(wanted):
            raise PveError(f"storage {wanted!r} does not hold snippets",
                           hint=f"pvesm set {wanted} --content <its content>,snippets (a dir/nfs/cifs storage)")
        return wanted
    if chain and holds_snippets(chain.split(":", 1)[0]):
        return chain.split(":", 1)[0]
    found = sorted((sid for sid in stores if holds_snippets(sid)), key=lambda sid: (sid != "local", sid))
    if not found:
        raise PveError("no storage of this node holds snippets (pvepstore's hookscript lives there)",
                       hint="enable them on a directory storage: pvesm set local --content "
                            "<its current content>,snippets (or name one with --hook-storage)")
    return found[0]


@dataclass
class IvshmemProvisionResult:
    vmid: int
    node: str
    dry_run: bool
    ivshmem: str = ""
    hookscript: str = ""
    chained: str | None = None
    device_pending: bool = False  # set in the config, not yet in the running QEMU
    api_calls: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    address: GuestAddress | None = None
    running: bool | None = None
    probe: Any = None
    plan: list[str] = field(default_factory=list)
    applied: Any = None
    verify: Any = None
    restarted: bool = False
    ramoops_params: dict | None = None
    problems: list[str] = field(default_factory=list)

    backend = "ivshmem"

    @property
    def ok(self) -> bool:
        if self.dry_run:
            return True
        return not self.device_pending and bool(self.verify is not None and getattr(self.verify, "ok", False))

    def to_json(self) -> dict:
        return {"vmid": self.vmid, "node": self.node, "backend": "ivshmem", "dry_run": self.dry_run,
                "ok": self.ok, "ivshmem": self.ivshmem, "hookscript": self.hookscript, "chained": self.chained,
                "device_pending": self.device_pending, "api_calls": [c.to_json() for c in self.api_calls],
                "notes": self.notes, "address": None if self.address is None else {
                    "host": self.address.host, "source": self.address.source},
                "running": self.running, "probe": _json(self.probe), "plan": self.plan,
                "applied": _json(self.applied), "verify": _json(self.verify), "restarted": self.restarted,
                "ramoops_params": self.ramoops_params, "problems": self.problems}

    def lines(self) -> list[str]:
        head = "provision, ivshmem backend" + (" (dry run: nothing was changed)" if self.dry_run else "")
        out = [f"VM {self.vmid} on {self.node}: {head}"]
        out.append(f"  ivshmem: {self.ivshmem}" + (" (PENDING: next cold start)" if self.device_pending else ""))
        out.append(f"  hookscript: {self.hookscript}" + (f" (chains the VM's own {self.chained})"
                                                         if self.chained else ""))
        out += [f"    note: {n}" for n in self.notes]
        done = "restarted (cold: a new QEMU process with the device)" if self.restarted else None
        return out + _report_lines(self, done=done)


def _refusal(exc: PveError, vmid: int, params: dict, volid: str, snippet: Path, ivshmem_opt: str) -> PveError:
    """The hint that follows from what Proxmox said when it refused the ivshmem/hookscript write."""
    said = getattr(exc, "text", "") or exc.message
    errors = getattr(exc, "errors", {}) or {}
    what = " and ".join(params)
    if "only root can set" in said:
        return PveError(f"VM {vmid}: Proxmox refused {what}: {exc.message}",
                        hint=ROOT_HINT.format(vmid=vmid, volid=volid, ivshmem=ivshmem_opt))
    if "does not exist" in str(errors.get("hookscript", "")):
        return PveError(f"VM {vmid}: Proxmox refused {what}: {exc.message}",
                        hint=SNIPPET_HINT.format(volid=volid, path=snippet, storage=volid.split(":", 1)[0]))
    return exc


SNIPPET_HINT = ("pvepstore wrote the hookscript to {path}, but Proxmox does not find {volid} there: the path "
                "of storage {storage} in storage.cfg (under host_root) must be the directory Proxmox itself "
                "uses; compare with `pvesm path {volid}`")


def _check_root_rule(cfg: Config, api: PveApi, vmid: int, params: dict, volid: str, ivshmem_opt: str) -> None:
    """Proxmox lets only root@pam set hookscript/ivshmem: a token of another user is refused for
    certain, so say it before writing anything (root@pam's own token: Proxmox decides, and a
    refusal is rolled back)."""
    if not params or api.backend == "local" or cfg.api.user == "root@pam":
        return
    raise PveError(f"VM {vmid}: Proxmox lets only root@pam set {' and '.join(params)}, and the API token is "
                   f"{token_id(cfg)}; nothing was changed",
                   hint=ROOT_HINT.format(vmid=vmid, volid=volid, ivshmem=ivshmem_opt))


def _undo_options(api: PveApi, path: str, before: dict, current_before: dict, params: dict) -> str:
    """Put the options this run set back as they were (with the digest of what it wrote)."""
    conf = dict(api.get(path))
    now_current = dict(api.get(path, current=1))
    digest = conf.pop("digest", "")
    sets, deletes, reverts = {}, [], []
    for key in params:
        if conf.get(key) != params[key]:
            continue  # changed by someone else since: not ours to take back
        if now_current.get(key) != conf.get(key) and current_before.get(key) == before.get(key):
            reverts.append(key)  # only pending (the running QEMU): drop the pending change
        elif before.get(key) is None:
            deletes.append(key)
        else:
            sets[key] = before[key]
    if sets or deletes or reverts:
        api.run_task("POST", path, why="roll back what this provision set", digest=digest,
                     delete=",".join(deletes) or None, revert=",".join(reverts) or None, **sets)
    back = [f"{k} back to {before[k]}" for k in sets] + [f"{k} removed" for k in deletes + reverts]
    return "VM config: " + (", ".join(back) if back else "nothing to take back")


def _restore_record(cfg: Config, vmid: int, before: dict) -> str:
    state.update(cfg, vmid, provision=before or None)
    return "the per-VM state as it was"


def _snapshot_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


def _restore_file(path: Path, before: bytes | None) -> str:
    if before is None:
        path.unlink(missing_ok=True)
        return f"removed {path}"
    ivshmem.write_atomic(path, before, 0o755)
    return f"restored {path}"


def provision_ivshmem(ctx: Context, vmid: int, *, dry_run: bool = False, restart: bool = False,
                      hook_storage: str | None = None) -> IvshmemProvisionResult:
    """Checks first (privileges, lock, the root@pam rule, the snippet storage and the chained
    hookscript, a running guest and its probe), then the hookscript file and ONE config write,
    then the guest; a failure before the guest is configured takes every change back."""
    from contextlib import ExitStack

    from ..guest.session import refuse_blocked

    cfg, api = ctx.cfg, ctx.api
    vm_cfg = cfg.for_vm(vmid)
    vm = locate(api, vmid)
    node = vm.node
    here = local_node(cfg)
    if node != here:
        raise PveError(f"VM {vmid} is on node {node}: its hookscript and /dev/shm file live there",
                       hint=f"run `pvepstore provision {vmid} --backend ivshmem` on {node}")
    res = IvshmemProvisionResult(vmid, node, dry_run, ivshmem=ivshmem.ivshmem_option(vmid))
    if vm_cfg.backend != "ivshmem":
        res.notes.append(f"set `vms.{vmid}.backend: ivshmem` (or `backend: ivshmem`) in the config: collect "
                         "and the sweep choose the reader (the host's shm file) from it")
    path = f"nodes/{node}/qemu/{vmid}/config"
    journal = preflight.Journal()
    committed = False
    resume = f"`pvepstore provision {vmid} --backend ivshmem` resumes"
    try:
        conf = dict(api.get(path))
        digest = conf.pop("digest", "")
        current = dict(api.get(path, current=1))
        have = conf.get("ivshmem")
        if have and _shm_name_of(have) != ivshmem.shm_name(vmid):
            raise PveError(f"VM {vmid} already has an ivshmem device ({have})",
                           hint="Proxmox allows one ivshmem device per VM and pvepstore will not take over "
                                "another one (Looking Glass, ...): use the pstore_blk backend for this VM")
        preflight.check_not_locked(conf, vmid)
        rec = state.provision_record(cfg, vmid)
        hook_now = conf.get("hookscript")
        chain = rec.get("chained_hookscript") if ivshmem.is_ours(hook_now) else hook_now
        storeid = snippet_storage(cfg, chain, hook_storage)
        volid = f"{storeid}:snippets/{ivshmem.HOOK_NAME.format(vmid=int(vmid))}"
        snippet = ivshmem.snippet_path(cfg.paths, volid)
        if chain and not ivshmem.snippet_path(cfg.paths, chain).exists():
            raise PveError(f"VM {vmid}'s hookscript {chain} does not exist at "
                           f"{ivshmem.snippet_path(cfg.paths, chain)}; nothing was changed",
                           hint="fix or remove the VM's hookscript first; pvepstore will not drop it")
        res.hookscript, res.chained = volid, chain
        params = {}
        if have != res.ivshmem:
            params["ivshmem"] = res.ivshmem
        if hook_now != volid:
            params["hookscript"] = volid
        res.running = _running(api, node, vmid)
        needs = preflight.Needs()
        needs.add(f"/vms/{vmid}", Priv.VM_AUDIT, "read the VM's config")
        if restart:
            needs.add(f"/vms/{vmid}", Priv.VM_POWER, "start or restart the VM so the device appears")
        preflight.check_privileges(api, needs, token_id(cfg))
        _check_root_rule(cfg, api, vmid, params, volid, res.ivshmem)
        with ExitStack() as stack:
            guest = target = None
            if res.running:  # the guest before any write: reachable, host key trusted, no blocker
                res.address = resolve_address(api, node, vmid, vm_cfg.ssh, api.get(path))
                target = ctx.make_target(vm_cfg.ssh, res.address.host, vmid)
                guest = stack.enter_context(ctx.guest_connect(target))
                res.probe = guest.probe(serial=vm_cfg.disk.serial, disk_bytes=None, backend="ivshmem")
                plan = guest.plan(res.probe)
                refuse_blocked(plan, _where(guest, vmid))
            # -- the writes: the hookscript file first (PVE checks that it exists), then one config POST
            if dry_run:
                res.notes.append(f"would write {snippet}" + (f", which runs {chain} after pvepstore's step"
                                                              if chain else ""))
            else:
                before_file = _snapshot_file(snippet)
                ivshmem.install_hookscript(cfg, storeid, ctx.hook_program(cfg), vmid, chain)
                if before_file != _snapshot_file(snippet):
                    journal.did(f"wrote {snippet}", lambda: _restore_file(snippet, before_file))
            if params:
                why = "ramoops memory for the guest" if "ivshmem" in params else ""
                if "hookscript" in params:
                    why = (why + "; " if why else "") + "keep the records across VM stop/start"
                try:
                    api.run_task("POST", path, why=why, **params, digest=digest)
                except PveError as exc:
                    raise _refusal(exc, vmid, params, volid, snippet, res.ivshmem) from None
                if not dry_run:
                    journal.did("set " + ", ".join(f"{k}={v}" for k, v in params.items()),
                                lambda: _undo_options(api, path, conf, current, params))
            live = res.running and current.get("ivshmem") == res.ivshmem
            res.device_pending = bool(res.running and not live)
            if not res.running:
                res.notes.append("the VM is stopped: the device is there from its next start")
            defaults = {"mem_size": ivshmem.SHM_MIB << 20, "record_size": 0x10000, "console_size": 0,
                        "ftrace_size": 0, "pmsg_size": 0}
            if not dry_run:
                kept = {k: v for k, v in rec.items() if k in ("volid", "old_volids", "blk_params", "key", "serial")}
                state.update(cfg, vmid, provision={
                    **kept, "backend": "ivshmem", "node": node, "ivshmem": res.ivshmem,
                    "shm_name": ivshmem.shm_name(vmid), "hookscript": volid, "chained_hookscript": chain,
                    "ramoops_params": rec.get("ramoops_params") if rec.get("backend") == "ivshmem"
                    and isinstance(rec.get("ramoops_params"), dict) else defaults, "at": ctx.clock()})
                journal.did("the per-VM state records the ivshmem backend", lambda: _restore_record(cfg, vmid, rec))
            if rec.get("volid") and rec.get("backend", "pstore_blk") == "pstore_blk" and not rec.get("removed"):
                res.notes.append(f"the pstore_blk disk {rec['volid']} stays attached (the guest stops using it); "
                                 "detach it with `qm set` or keep it for switching back")
            if not res.running:
                committed = True  # what is set is what the operator asked for; the guest comes next run
                if not restart:
                    res.problems.append(f"VM {vmid} is not running: the guest was not configured; start it and "
                                        f"run `pvepstore provision {vmid} --backend ivshmem` again (or add --restart)")
                    return res
                if dry_run:
                    res.plan.append("start the VM, then configure and verify the guest")
                    return res
                resume = f"`pvepstore provision {vmid} --backend ivshmem --restart` resumes"
                api.run_task("POST", f"nodes/{node}/qemu/{vmid}/status/start", why="start with the ivshmem device")
                res.running = res.restarted = True
                res.device_pending = False
                res.address = resolve_address(api, node, vmid, vm_cfg.ssh, api.get(path))
                target = ctx.make_target(vm_cfg.ssh, res.address.host, vmid)
                _wait_new_boot(ctx, vmid, target, "")
                guest = stack.enter_context(ctx.guest_connect(target))
                res.probe = guest.probe(serial=vm_cfg.disk.serial, disk_bytes=None, backend="ivshmem")
                plan = guest.plan(res.probe)
            if res.running and getattr(res.probe, "ivshmem", None) is None:
                res.device_pending = True  # the guest is the authority on what the running QEMU has
            res.plan = list(plan.describe())
            try:
                res.applied = guest.apply(plan, dry_run=dry_run)
            except GuestError as exc:
                raise journal.fail(exc, keep=committed or not getattr(exc, "unchanged", False),
                                   resume=resume) from None
            committed = True
            if plan.settings:
                res.ramoops_params = {k: plan.settings[k] for k in RAMOOPS_KEYS if k in plan.settings}
            if not dry_run and res.ramoops_params:
                doc = state.provision_record(cfg, vmid)
                state.update(cfg, vmid, provision={**doc, "ramoops_params": res.ramoops_params})
            if dry_run:
                if res.device_pending:
                    res.plan.append("restart the VM through the API (shutdown + start) and verify" if restart
                                    else COLD_START.format(vmid=vmid))
                return res
            if not (res.device_pending and restart):
                res.verify = guest.verify(serial=vm_cfg.disk.serial, backend="ivshmem")
        if res.device_pending and restart:
            resume = f"`pvepstore provision {vmid} --backend ivshmem --restart` resumes"
            _reboot_and_wait(ctx, node, vmid, target, via_api=True,
                             old_boot=getattr(res.probe, "boot_id", "") or "",
                             why="restart (shutdown + start of a new QEMU process) so the ivshmem device appears")
            res.restarted, res.device_pending = True, False
            with ctx.guest_connect(target) as guest:
                res.verify = guest.verify(serial=vm_cfg.disk.serial, backend="ivshmem")
        elif res.device_pending:
            res.problems.append(COLD_START.format(vmid=vmid))
        if res.verify is not None:
            _remember_verify(ctx, vmid, res.verify)
    except PvepstoreError as exc:
        raise journal.fail(exc, keep=committed, resume=resume) from None
    finally:
        res.api_calls = list(api.planned if dry_run else api.done)
    return res


def unprovision_ivshmem(ctx: Context, vmid: int, res: "UnprovisionResult") -> None:
    """The Proxmox side: the operator's hookscript back (or none), ``ivshmem`` removed, our snippet gone."""
    cfg, api = ctx.cfg, ctx.api
    node = res.node
    path = f"nodes/{node}/qemu/{vmid}/config"
    conf = dict(api.get(path))
    digest = conf.pop("digest", "")
    rec = state.provision_record(cfg, vmid)
    hook = conf.get("hookscript")
    chain = rec.get("chained_hookscript")
    params: dict[str, Any] = {}
    deletes = []
    if ivshmem.is_ours(hook):
        if chain:
            params["hookscript"] = chain
            res.changes.append(f"hookscript: back to the VM's own {chain}")
        else:
            deletes.append("hookscript")
            res.changes.append("hookscript: removed (the VM had none before)")
    if _shm_name_of(conf.get("ivshmem")) == ivshmem.shm_name(vmid):
        deletes.append("ivshmem")
        res.changes.append("ivshmem: removed" + (" (the running QEMU keeps the device until the next cold start)"
                                                 if _running(api, node, vmid) else ""))
    if params or deletes:
        api.run_task("POST", path, why="remove pvepstore's ivshmem backend", digest=digest,
                     delete=",".join(deletes) or None, **params)
    if ivshmem.is_ours(hook):
        try:
            ivshmem.snippet_path(cfg.paths, hook).unlink(missing_ok=True)
        except PveError:
            pass
    name = ivshmem.shm_name(vmid)
    left = [p for p in (cfg.paths.ivshmem_keep(name), ivshmem.durable_copy(cfg, vmid)) if p.exists()]
    if left:
        res.changes.append("records kept in " + ", ".join(str(p) for p in left) + " (collect them, then delete)")
