"""The ivshmem backend's Proxmox side: Proxmox's ``ivshmem`` device plus pvepstore's per-VM hookscript.

``ivshmem: size=1,name=pvepstore-<vmid>`` and the hookscript (which chains the
operator's own) are set in ONE config write with the ``digest``, after the
hookscript file (PVE checks that it exists).  The checks come first (privileges,
lock, the root@pam rule, the snippet storage and the chained hookscript, a
running guest and its probe); a failure before the guest is configured takes the
file, the options and the per-VM state back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..errors import GuestError, PveError, PvepstoreError
from ..guest import ramoops_wishes
from ..pipeline import preflight
from ..pipeline.preflight import Priv
from ..pipeline.provision_common import (_reboot_and_wait, _restore_record,
                                         _running, _wait_new_boot, _where, token_id)
from ..pve import ivshmem, state
from ..pve.address import resolve_address
from ..pve.api import PveApi
from ..pve.inventory import local_node, locate
from .base import ProvisionResult, PveSummary
from .registry import AUTO, BackendName

if TYPE_CHECKING:
    from ..pipeline.provision import Context, UnprovisionResult


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
class IvshmemProvisionResult(ProvisionResult):
    ivshmem: str = ""
    hookscript: str = ""
    chained: str | None = None
    device_pending: bool = False  # set in the config, not yet in the running QEMU
    notes: list[str] = field(default_factory=list)
    restarted: bool = False
    ramoops_params: dict | None = None

    @property
    def pve_ready(self) -> bool:
        return not self.device_pending

    def to_json(self) -> dict:
        return {**super().to_json(), "backend": "ivshmem", "ivshmem": self.ivshmem, "hookscript": self.hookscript,
                "chained": self.chained, "device_pending": self.device_pending, "notes": self.notes,
                "restarted": self.restarted, "ramoops_params": self.ramoops_params}

    def summary(self) -> PveSummary:
        """The Proxmox side as data for the CLI's summary."""
        return PveSummary(
            head="ivshmem backend",
            items=[("ivshmem", self.ivshmem + (" (PENDING: next cold start)" if self.device_pending else "")),
                   ("hookscript", self.hookscript + (f" (chains the VM's own {self.chained})" if self.chained
                                                     else ""))],
            notes=list(self.notes),
            done="restarted (cold: a new QEMU process with the device)" if self.restarted else None)


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


def _plan(guest, report, cfg):
    from .registry import BackendName, get
    return get(BackendName.IVSHMEM).plan(guest, report, cfg)


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
    if vm_cfg.backend not in (BackendName.IVSHMEM.value, AUTO):  # a config naming another backend wins over the record
        res.notes.append(f"the config names {vm_cfg.backend} for this VM, and collect and the sweep follow "
                         f"the config: set `vms.{vmid}.backend: ivshmem` (or auto)")
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
        res.running = _running(ctx, node, vmid)
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
                res.probe = guest.probe(serial=vm_cfg.disk.serial, disk_bytes=None, assess=ramoops_wishes.assess)
                plan = _plan(guest, res.probe, cfg)
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
                res.probe = guest.probe(serial=vm_cfg.disk.serial, disk_bytes=None, assess=ramoops_wishes.assess)
                plan = _plan(guest, res.probe, cfg)
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
                res.verify = guest.verify(serial=vm_cfg.disk.serial, assess=ramoops_wishes.assess,
                                           check=ramoops_wishes.verify)
        if res.device_pending and restart:
            resume = f"`pvepstore provision {vmid} --backend ivshmem --restart` resumes"
            _reboot_and_wait(ctx, node, vmid, target, via_api=True,
                             old_boot=getattr(res.probe, "boot_id", "") or "",
                             why="restart (shutdown + start of a new QEMU process) so the ivshmem device appears")
            res.restarted, res.device_pending = True, False
            with ctx.guest_connect(target) as guest:
                res.verify = guest.verify(serial=vm_cfg.disk.serial, assess=ramoops_wishes.assess,
                                           check=ramoops_wishes.verify)
        elif res.device_pending:
            res.problems.append(COLD_START.format(vmid=vmid))
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
                                                 if _running(ctx, node, vmid) else ""))
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
