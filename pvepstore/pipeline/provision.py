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
from ..pve.disks import DetachResult, DiskResult, detach_disk, ensure_disk, inspect
from ..pve import ivshmem
from ..pve.inventory import in_scope, list_vms, local_node, locate

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


def provision(ctx: Context, vmid: int, *, dry_run: bool = False, reboot: bool = False,
              backend: str | None = None, restart: bool = False,
              hook_storage: str | None = None) -> "ProvisionResult | IvshmemProvisionResult":
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
            settings = getattr(plan, "settings", None)
            if not dry_run and disk.volid and isinstance(settings, dict):
                # The layout the guest's kernel uses: pmsg/console zones exist where it has those
                # frontends, and they come BEFORE the dmesg zones -- the offline reader must know.
                blk.update({k: settings[k] for k in ("kmsg_size", "pmsg_size", "console_size")
                            if isinstance(settings.get(k), int)})
                state.update(cfg, vmid, provision={**state.provision_record(cfg, vmid), "blk_params": blk})
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
            _remember_verify(ctx, vmid, res.verify)
    except GuestError as exc:
        if not dry_run:
            raise
        res.problems.append(f"guest not reached, its changes cannot be shown: {exc.message}")
    finally:
        res.api_calls = list(api.planned if dry_run else api.done)
    return res


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


def provision_ivshmem(ctx: Context, vmid: int, *, dry_run: bool = False, restart: bool = False,
                      hook_storage: str | None = None) -> IvshmemProvisionResult:
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
    try:
        conf = dict(api.get(path))
        digest = conf.pop("digest", "")
        current = dict(api.get(path, current=1))
        have = conf.get("ivshmem")
        if have and _shm_name_of(have) != ivshmem.shm_name(vmid):
            raise PveError(f"VM {vmid} already has an ivshmem device ({have})",
                           hint="Proxmox allows one ivshmem device per VM and pvepstore will not take over "
                                "another one (Looking Glass, ...): use the pstore_blk backend for this VM")
        rec = state.provision_record(cfg, vmid)
        hook_now = conf.get("hookscript")
        chain = rec.get("chained_hookscript") if ivshmem.is_ours(hook_now) else hook_now
        storeid = snippet_storage(cfg, chain, hook_storage)
        volid = f"{storeid}:snippets/{ivshmem.HOOK_NAME.format(vmid=int(vmid))}"
        res.hookscript, res.chained = volid, chain
        if dry_run:
            res.notes.append(f"would write {ivshmem.snippet_path(cfg.paths, volid)}"
                             + (f", which runs {chain} after pvepstore's step" if chain else ""))
        else:
            # the file first: PVE checks that a hookscript exists before it accepts it
            ivshmem.install_hookscript(cfg, storeid, ctx.hook_program(cfg), vmid, chain)
        params = {}
        if have != res.ivshmem:
            params["ivshmem"] = res.ivshmem
        if hook_now != volid:
            params["hookscript"] = volid
        if params:
            why = "ramoops memory for the guest" if "ivshmem" in params else ""
            if "hookscript" in params:
                why = (why + "; " if why else "") + "keep the records across VM stop/start"
            try:
                api.run_task("POST", path, why=why, **params, digest=digest)
            except PveError as exc:
                if any(k in exc.message for k in params) or "403" in exc.message or "root" in exc.message:
                    raise PveError(f"VM {vmid}: Proxmox refused {' and '.join(params)}: {exc.message}",
                                   hint=ROOT_HINT.format(vmid=vmid, volid=volid, ivshmem=res.ivshmem)) from None
                raise
        res.running = _running(api, node, vmid)
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
        if rec.get("volid") and rec.get("backend", "pstore_blk") == "pstore_blk" and not rec.get("removed"):
            res.notes.append(f"the pstore_blk disk {rec['volid']} stays attached (the guest stops using it); "
                             "detach it with `qm set` or keep it for switching back")
        if not res.running:
            if not restart:
                res.problems.append(f"VM {vmid} is not running: the guest was not configured; start it and run "
                                    f"`pvepstore provision {vmid} --backend ivshmem` again (or add --restart)")
                return res
            if dry_run:
                res.plan.append("start the VM, then configure and verify the guest")
                return res
            api.run_task("POST", f"nodes/{node}/qemu/{vmid}/status/start", why="start with the ivshmem device")
            res.running = res.restarted = True
            res.device_pending = False
        config = api.get(path)
        res.address = resolve_address(api, node, vmid, vm_cfg.ssh, config)
        target = ctx.make_target(vm_cfg.ssh, res.address.host, vmid)
        if res.restarted:
            _wait_new_boot(ctx, vmid, target, "")
        with ctx.guest_connect(target) as guest:
            res.probe = guest.probe(serial=vm_cfg.disk.serial, disk_bytes=None, backend="ivshmem")
            if res.running and getattr(res.probe, "ivshmem", None) is None:
                res.device_pending = True  # the guest is the authority on what the running QEMU has
            plan = guest.plan(res.probe)
            res.plan = list(plan.describe())
            res.applied = guest.apply(plan, dry_run=dry_run)
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
    except GuestError as exc:
        if not dry_run:
            raise
        res.problems.append(f"guest not reached, its changes cannot be shown: {exc.message}")
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
