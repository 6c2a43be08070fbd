"""The pstore_blk backend: a dedicated virtio disk (serial ``pvepstore``) the guest's
pstore/blk writes to; read through the guest while it runs, from the volume when it is off.

``provision`` = the checks (reads only: the token's privileges, the storage, the
VM's lock, the guest reachable with a trusted host key, its probe without
blockers; :mod:`pvepstore.pipeline.preflight`) → attach the disk (never a second one) → record it in
``<state_dir>/vms/<vmid>.json`` → probe again, plan and apply the guest
configuration → (``reboot``) → verify.  A failure after the attach takes it back (the volume freed,
a reattached one unused again, the state as before) unless the guest may already use the disk;
then the error says what was left and which run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import GuestError, PvepstoreError, UsageError
from ..guest import blk_wishes
from ..pipeline import preflight
from ..pipeline.handles import OfflineVm, guest_vm, has_pstore_disk, not_provisioned_error
from ..pipeline.preflight import Priv
from ..pipeline.provision_common import (_reboot_and_wait, _restore_record,
                                         _running, _where, token_id)
from ..pve import state
from ..pve.address import resolve_address
from ..pve.disks import DiskPlan, DiskResult, apply_disk, detach_disk, ensure_disk, inspect, plan_disk, undo_attach
from ..pve.inventory import locate
from .base import Backend, ProvisionOptions, ProvisionResult, PveSummary, VmWhere, check_host_readable
from .registry import BackendName

if TYPE_CHECKING:
    from ..config import Config
    from ..pipeline.provision import Context, UnprovisionResult, VmStatus


@dataclass
class DiskProvisionResult(ProvisionResult):
    disk: DiskResult = field(default_factory=lambda: DiskResult("none", None, None, None))
    rebooted: bool = False

    @property
    def pve_ready(self) -> bool:
        return self.disk.ready

    @property
    def pve_pending(self) -> bool:
        return self.disk.pending or not self.disk.ready

    def to_json(self) -> dict:
        return {**super().to_json(), "disk": self.disk.to_json(), "rebooted": self.rebooted}

    def summary(self) -> PveSummary:
        """The Proxmox side as data for the CLI's summary."""
        d = self.disk
        where = f"{d.key} = {d.volid}" if d.volid else (d.key or "-")
        note = None
        if self.dry_run and self.disk.action.startswith("planned"):
            note = "(the guest cannot see the pstore disk yet: the API call above attaches it first)"
        return PveSummary(items=[("disk", f"{d.action} {where}" + (" (PENDING)" if d.pending else ""))],
                          notes=list(d.notes), probe_note=note, done="rebooted" if self.rebooted else None)


def _hotplugs_disks(config: dict) -> bool:
    value = str(config.get("hotplug", "network,disk,usb")).strip()
    return value == "1" or "disk" in value.split(",")


def provision_disk(ctx: "Context", vmid: int, opts: ProvisionOptions) -> DiskProvisionResult:
    """Checks first (reads only: privileges, storage, lock, the guest and its probe), then the
    one disk write, then the guest.  A failure after the write takes the disk back (see
    :mod:`pvepstore.pipeline.preflight`) unless the guest may already use it; ``dry_run`` runs the same checks."""
    cfg, api = ctx.cfg, ctx.api
    dry_run, reboot = opts.dry_run, opts.reboot
    vm_cfg = cfg.for_vm(vmid)
    if opts.restart:
        raise UsageError("--restart is for the ivshmem backend", hint="pstore_blk uses --reboot")
    from ..guest.session import refuse_blocked  # the guest side; imported when first needed

    vm = locate(api, vmid)
    node = vm.node
    known = state.known_volids(cfg, vmid)
    dplan = plan_disk(api, node, vmid, vm_cfg.disk, known)
    preflight.check_not_locked(dplan.view.config, vmid)
    running = _running(ctx, node, vmid)
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
    res = DiskProvisionResult(vmid, node, dry_run, disk=dplan.done or DiskResult("planned-" + dplan.action, dplan.slot,
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
            # a disk this run attaches (or attached, pending a start) is not there yet: that is no blocker
            attaching = dplan.done is None or dplan.done.pending
            assess = blk_wishes.assess_for_attach if attaching else blk_wishes.assess
            res.probe = guest.probe(serial=vm_cfg.disk.serial, disk_bytes=vm_cfg.disk.size_mib << 20, assess=assess)
            plan = BACKEND.plan(guest, res.probe, cfg)
            refuse_blocked(plan, _where(guest, vmid))
            _attach(ctx, vmid, node, dplan, res, blk, journal)
            if journal.steps and not res.disk.pending:
                # the guest sees the new disk now: plan from what it sees
                res.probe = BACKEND.probe(guest, vm_cfg.disk.serial, vm_cfg.disk.size_mib << 20)
                plan = BACKEND.plan(guest, res.probe, cfg)
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
                res.verify = BACKEND.verify(guest, vm_cfg.disk.serial)
        if reboot:
            resume = f"`pvepstore provision {vmid} --reboot` resumes"
            _reboot_and_wait(ctx, node, vmid, target, via_api=res.disk.pending,
                             old_boot=getattr(res.probe, "boot_id", "") or "")
            res.rebooted = True
            if res.disk.pending:
                res.disk = ensure_disk(api, node, vmid, vm_cfg.disk, state.known_volids(cfg, vmid))
            with ctx.guest_connect(target) as guest:
                res.verify = BACKEND.verify(guest, vm_cfg.disk.serial)
    except PvepstoreError as exc:
        raise journal.fail(exc, keep=committed, resume=resume) from None
    finally:
        res.api_calls = list(api.planned if dry_run else api.done)
    return res


def _attach(ctx: "Context", vmid: int, node: str, dplan: DiskPlan, res: DiskProvisionResult, blk: dict,
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




class PstoreBlk(Backend):
    name = BackendName.PSTORE_BLK.value
    summary = "pstore/blk on a dedicated virtio disk (serial pvepstore)"
    proxmox_side = "attaches one disk (disk.size_mib, default 512 MiB; serial pvepstore)"
    stopped_records = "the disk's volume on the host, under PVE's lock"
    guest_rules = blk_wishes
    preference = 10  # fits every VM: the floor of backend: auto

    def captures(self, facts):
        from .capture import Event
        return {Event.OOPS: "a non-fatal Oops, written ~0.5 s after it (a panic, a shutdown or reset dump: never)"}

    def fits(self, facts):
        return ["fits every VM (a 512 MiB virtio disk); keeps non-fatal Oopses only"]

    def guest_settings(self, report, cfg: "Config"):
        return blk_wishes.settings(report, kmsg_size=cfg.pstore_blk.kmsg_size, max_reason=cfg.pstore_blk.max_reason)

    def provision(self, ctx: "Context", vmid: int, opts: ProvisionOptions) -> DiskProvisionResult:
        return provision_disk(ctx, vmid, opts)

    def pve_undo(self, ctx: "Context", vmid: int, res: "UnprovisionResult", *, delete_disk: bool) -> None:
        cfg = ctx.cfg
        res.detach = detach_disk(ctx.api, res.node, vmid, cfg.for_vm(vmid).disk, state.known_volids(cfg, vmid),
                                 delete_disk)

    def status_row(self, ctx: "Context", vm, row: "VmStatus") -> None:
        cfg = ctx.cfg
        view = inspect(ctx.api, vm.node, vm.vmid, cfg.for_vm(vm.vmid).disk, state.known_volids(cfg, vm.vmid))
        loc = view.location
        row.provisioned = loc.state in ("attached", "pending")
        row.disk = loc.key if loc.state != "absent" else None
        row.volid = loc.volid
        row.pending = loc.state == "pending" or (loc.key in view.deletes)

    def open_records(self, cfg: "Config", api, ref, where: VmWhere, choice, *,
                     allow_offline: bool = True, connect_guest: Callable | None = None) -> Any:
        vmid, node = ref.vmid, ref.node
        vm = {"vmid": vmid, "node": node, "name": ref.name}
        if where.running:
            return guest_vm(cfg, api, ref, choice, connect_guest)
        check_host_readable(where, allow_offline=allow_offline, what="its volume")
        if not choice.provisioned:
            # Never provisioned and no pstore disk either: there is no volume to read (one API call,
            # only for VMs provision has no record of).
            conf = api.get(f"nodes/{node}/qemu/{vmid}/config") or {}
            serial = cfg.for_vm(vmid).disk.serial
            if not has_pstore_disk(conf, serial):
                raise not_provisioned_error(vmid, choice, f"{where.status}, no disk with serial {serial}")
        return OfflineVm(vmid, vm, cfg, note=choice.mismatch)

    def read_host(self, cfg: "Config", vmid: int, *, clear: bool = False, runner=None) -> Any:
        from ..pipeline.reading import ReadResult
        from ..pve import offline as offline_mod

        got = offline_mod.read_offline(cfg, vmid, clear=clear, runner=runner)
        return ReadResult(vmid, "offline", offline=got, cleared=got.cleared)


BACKEND = PstoreBlk()
