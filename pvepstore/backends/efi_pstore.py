"""The efi_pstore backend: the guest kernel's efi_pstore writes dumps as UEFI variables, OVMF keeps
them in the VM's ``efidisk0``.  Nothing changes in the VM's config: provision checks ``bios: ovmf``
and a persistent ``efidisk0`` (never adds one), records the efidisk volid, configures the guest.

Records: a running VM through the guest's /sys/fs/pstore (a host snapshot of efidisk0 with
``pvepstore read``); a stopped VM from efidisk0 on the host (:mod:`pvepstore.pve.efidisk`, under
PVE's lock).  Clearing only ever through the guest (unlinking ``dmesg-efi-*`` deletes the
variables): records archived from a stopped VM are remembered in its state (``efi_clear``) and
cleared at the next guest contact.  The vars file is never written on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import PveError, PvepstoreError, UsageError
from ..guest import efi_wishes
from ..pipeline.collect import Gathered
from ..pipeline.handles import GuestVm, guest_vm, not_provisioned_error
from ..pipeline.provision_common import _reboot_and_wait, _running, _where
from ..pipeline import preflight
from ..pstore.efi import same_record
from ..pve import efidisk, state
from ..pve.address import resolve_address
from ..pve.inventory import locate
from .base import Backend, ProvisionOptions, ProvisionResult, PveSummary, VmWhere, check_host_readable
from .registry import BackendName

if TYPE_CHECKING:
    from ..config import Config
    from ..pipeline.provision import Context, UnprovisionResult, VmStatus

NAME = BackendName.EFI_PSTORE.value
NO_OVMF = "bios is {bios}: efi_pstore needs OVMF"
NO_EFIDISK = ("no efidisk0: OVMF gets a fresh vars file at every start (/run/qemu-server/efidisk/{vmid}-ovmf.fd), "
              "records vanish at stop; add an efidisk0 (its NVRAM/boot entries then start from the OVMF template)")


def check_vm_config(conf: dict, vmid: int) -> efidisk.EfiDisk:
    """The Proxmox side efi_pstore needs; PveError (with the hint) otherwise.  Reads only."""
    bios = str(conf.get("bios") or "seabios")
    if bios != "ovmf":
        raise PveError(NO_OVMF.format(bios=bios), hint=f"qm set {vmid} --bios ovmf (the guest must boot "
                       "through UEFI then), or use another backend")
    disk = efidisk.find_efidisk(conf)
    if disk is None:
        raise PveError(NO_EFIDISK.format(vmid=vmid), hint=f"qm set {vmid} --efidisk0 <storage>:1,efitype=4m")
    return disk


@dataclass
class EfiProvisionResult(ProvisionResult):
    efidisk: dict = field(default_factory=dict)
    rebooted: bool = False
    cleared: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {**super().to_json(), "efidisk": self.efidisk, "rebooted": self.rebooted, "cleared": self.cleared}

    def summary(self) -> PveSummary:
        return PveSummary(items=[("efidisk0", f"present {self.efidisk.get('volid', '-')} (nothing to change)")],
                          done="rebooted" if self.rebooted else None)


def guest_kernel(cfg: "Config", vmid: int) -> str | None:
    """The guest kernel pvepstore last saw running (uname -r): it wrote the store's last dumps."""
    got = state.load(cfg, vmid).get("guest_kernel")
    return got if isinstance(got, str) and got else None


def pending_clear(cfg: "Config", vmid: int) -> dict[str, str]:
    got = state.load(cfg, vmid).get("efi_clear")
    return {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {}


def clear_pending(cfg: "Config", vmid: int, guest, found: Sequence | None = None) -> list[str]:
    """Unlink, through the guest, the records archived from efidisk0 while the VM was off (same name
    and bytes).  ``found``: records just read on this connection (else they are read now)."""
    want = pending_clear(cfg, vmid)
    if not want:
        return []
    from ..pstore.files import record_from_file

    if found is None:
        found = guest.read_records()
    # by the kernel-independent name: a host read of Shutdown dumps alone may have named them after
    # another kernel (dmesg-efi-<id> up to 6.1, dmesg-efi_pstore-<id> from 6.2); the bytes must match
    want = {same_record(n): h for n, h in want.items()}
    names, done_keys = [], []
    for g in found:
        rec = record_from_file(g.name, g.data, g.mtime)
        if rec is not None and want.get(same_record(g.name)) == rec.sha256:
            names.append(g.name)
    if names:
        result = guest.clear(names)
        done_keys = [same_record(n) for n in names if n not in result.not_cleared]
    seen = {same_record(g.name) for g in found}
    left = {n: h for n, h in want.items() if n in seen and n not in done_keys}  # gone from the guest: done
    done = [n for n in names if same_record(n) in done_keys]
    state.update(cfg, vmid, efi_clear=left)
    return done


def provision_efi(ctx: "Context", vmid: int, opts: ProvisionOptions) -> EfiProvisionResult:
    cfg, api = ctx.cfg, ctx.api
    if opts.restart:
        raise UsageError("--restart is for the ivshmem backend", hint="efi_pstore uses --reboot")
    from ..guest.session import refuse_blocked

    vm = locate(api, vmid)
    node = vm.node
    conf = dict(api.get(f"nodes/{node}/qemu/{vmid}/config", current=1) or {})
    preflight.check_not_locked(conf, vmid)
    disk = check_vm_config(conf, vmid)
    res = EfiProvisionResult(vmid, node, opts.dry_run, efidisk=disk.to_json())
    res.running = running = _running(ctx, node, vmid)
    record = {"backend": NAME, "efidisk": disk.volid, "node": node, "at": ctx.clock()}
    vm_cfg = cfg.for_vm(vmid)
    try:
        if not running:
            if not opts.dry_run:
                state.update(cfg, vmid, provision=record)
            res.problems.append(f"VM {vmid} is not running: the guest was not configured; start it and run "
                                f"`pvepstore provision {vmid} --backend {NAME}` again")
            return res
        res.address = resolve_address(api, node, vmid, vm_cfg.ssh, conf)
        target = ctx.make_target(vm_cfg.ssh, res.address.host, vmid)
        with ctx.guest_connect(target) as guest:
            res.probe = BACKEND.probe(guest, vm_cfg.disk.serial, None)
            plan = BACKEND.plan(guest, res.probe, cfg)
            refuse_blocked(plan, _where(guest, vmid))
            res.plan = list(plan.describe())
            res.applied = guest.apply(plan, dry_run=opts.dry_run)
            if opts.dry_run:
                if opts.reboot:
                    res.plan.append("reboot the VM and verify")
                return res
            state.update(cfg, vmid, provision=record)
            res.cleared = clear_pending(cfg, vmid, guest)
            if not opts.reboot:
                res.verify = BACKEND.verify(guest, vm_cfg.disk.serial)
        if opts.reboot:
            _reboot_and_wait(ctx, node, vmid, target, via_api=False,
                             old_boot=getattr(res.probe, "boot_id", "") or "")
            res.rebooted = True
            with ctx.guest_connect(target) as guest:
                res.verify = BACKEND.verify(guest, vm_cfg.disk.serial)
    finally:
        res.api_calls = list(api.planned if opts.dry_run else api.done)
    return res


@dataclass
class EfiGuestVm(GuestVm):
    """A running guest: /sys/fs/pstore as for every pstore backend, plus the clears left over from
    records archived while the VM was off."""

    cfg: Any = None

    def gather(self) -> Gathered:
        if self.cfg is not None and pending_clear(self.cfg, self.vmid):
            found = self.guest.read_records(max_bytes=max(self.max_record_bytes * 4, 16 << 20),
                                            record_bytes=self.max_record_bytes)
            clear_pending(self.cfg, self.vmid, self.guest, found)
        return super().gather()


@dataclass
class EfidiskVm:
    """A stopped VM's efidisk0, read on the host; clear = remember for the next guest contact."""

    vmid: int
    vm: dict
    cfg: "Config"
    runner: object | None = None
    note: str = ""

    def gather(self) -> Gathered:
        got = efidisk.read_efidisk(self.cfg, self.vmid, runner=self.runner)
        result = efidisk.parse(got, kernel_release=guest_kernel(self.cfg, self.vmid))
        return Gathered(source="efidisk", records=[r for r in result.records if not r.erased], backend=NAME,
                        keeps_panics=True)

    def clear(self, records: Sequence) -> None:
        want = pending_clear(self.cfg, self.vmid)
        want.update({r.name: r.sha256 for r in records})
        state.update(self.cfg, self.vmid, efi_clear=want)


class EfiPstore(Backend):
    name = NAME
    summary = "efi_pstore: dumps as UEFI variables in the VM's efidisk0 (OVMF)"
    proxmox_side = "nothing: needs bios ovmf and an efidisk0"
    stopped_records = "efidisk0 on the host, under PVE's lock (cleared at the next guest contact)"
    host_reads_running = False
    guest_rules = efi_wishes
    keeps_panics = True
    preference = 30  # keeps panics, changes nothing in the VM's config, migrates with the VM

    def captures(self, facts):
        from .capture import Event
        got = {Event.OOPS: "an Oops record in the UEFI variable store", Event.PANIC: "written at panic time"}
        if facts.always_kmsg_dump:
            got[Event.CLEAN_REBOOT] = got[Event.POWEROFF] = "a Shutdown dump (efi_pstore.always_kmsg_dump)"
        return got

    def blockers(self, facts):
        from .capture import Blocker
        bios = str(facts.conf.get("bios") or "seabios")
        if bios != "ovmf":
            return [Blocker(NO_OVMF.format(bios=bios),
                            f"boot the VM through UEFI (qm set {facts.vmid} --bios ovmf --efidisk0 <storage>:1,"
                            "efitype=4m; the guest must have an EFI system partition)")]
        if efidisk.find_efidisk(dict(facts.conf)) is None:
            return [Blocker("OVMF without an efidisk0 (records would vanish at every stop)",
                            f"add an efidisk0 (qm set {facts.vmid} --efidisk0 <storage>:1,efitype=4m)")]
        return []

    def fits(self, facts):
        disk = efidisk.find_efidisk(dict(facts.conf))
        return [f"OVMF with efidisk0 {disk.volid if disk else ''}".rstrip()
                + ": keeps panics, changes nothing in the VM's config, migrates with the VM"]

    def costs(self, facts):
        return ["~12.5 KB of the UEFI variable store per dump (status shows the fill level)"]

    def guest_settings(self, report, cfg: "Config"):
        return efi_wishes.settings(report, kmsg_bytes=cfg.efi_pstore.kmsg_bytes,
                                   always_kmsg_dump=cfg.efi_pstore.always_kmsg_dump)

    def provision(self, ctx: "Context", vmid: int, opts: ProvisionOptions) -> EfiProvisionResult:
        return provision_efi(ctx, vmid, opts)

    def pve_undo(self, ctx: "Context", vmid: int, res: "UnprovisionResult", *, delete_disk: bool) -> None:
        # provision changed nothing in the VM's config; efidisk0 is the VM's own (its NVRAM, boot entries)
        res.changes.append("nothing to take back (efidisk0 is the VM's and stays"
                           + (", --delete-disk does not apply)" if delete_disk else ")"))
        if pending_clear(ctx.cfg, vmid):
            res.problems.append(f"{len(pending_clear(ctx.cfg, vmid))} archived efi records were not cleared from "
                                "the guest yet: they stay in efidisk0 (rm /sys/fs/pstore/dmesg-efi-* in the guest)")

    def kept_state(self, rec: dict) -> dict:
        return {"backend": self.name, "efidisk": rec.get("efidisk")}

    def status_row(self, ctx: "Context", vm, row: "VmStatus") -> None:
        cfg = ctx.cfg
        conf = ctx.api.get(f"nodes/{vm.node}/qemu/{vm.vmid}/config", current=1) or {}
        rec = state.provision_record(cfg, vm.vmid)
        disk = efidisk.find_efidisk(conf) if str(conf.get("bios")) == "ovmf" else None
        row.provisioned = bool(disk and rec.get("backend") == self.name and not rec.get("removed"))
        row.disk = efidisk.KEY if disk else None
        row.volid = disk.volid if disk else None
        row.pending = False
        if disk is None:
            row.store = "bios is not ovmf" if str(conf.get("bios")) != "ovmf" else "no efidisk0"
            return
        try:
            row.store = store_line(cfg, efidisk.parse(efidisk.read_efidisk(cfg, vm.vmid)))
        except PvepstoreError as exc:
            row.store = f"store not read: {exc.message}"

    def open_records(self, cfg: "Config", api, ref, where: VmWhere, choice, *,
                     allow_offline: bool = True, connect_guest: Callable | None = None) -> Any:
        vmid, node = ref.vmid, ref.node
        if where.running:
            g = guest_vm(cfg, api, ref, choice, connect_guest)
            # every field of the plain handle (a field-by-field copy dropped each new one: clock, host_log)
            return EfiGuestVm(**{f.name: getattr(g, f.name) for f in fields(g)}, cfg=cfg)
        check_host_readable(where, allow_offline=allow_offline, what="its efidisk0")
        if not choice.provisioned:
            conf = api.get(f"nodes/{node}/qemu/{vmid}/config") or {}
            if efidisk.find_efidisk(conf) is None:
                raise not_provisioned_error(vmid, choice, f"{where.status}, no efidisk0")
        return EfidiskVm(vmid, {"vmid": vmid, "node": node, "name": ref.name}, cfg, note=choice.mismatch)

    def read_host(self, cfg: "Config", vmid: int, *, clear: bool = False, runner=None) -> Any:
        from ..pipeline.reading import ReadResult

        if clear:
            raise UsageError("efi_pstore records are cleared only through the guest (never by writing efidisk0)",
                             hint="collect archives them and clears them at the next guest contact")
        got = efidisk.read_efidisk(cfg, vmid, runner=runner)
        result = efidisk.parse(got, kernel_release=guest_kernel(cfg, vmid))
        records = [r for r in result.records if not r.erased]
        label = "a snapshot of its efidisk0" if got.running else "its efidisk0 on the host"
        return ReadResult(vmid, "efidisk-snapshot" if got.running else "efidisk", guest_records=records,
                          host_label=label)


def store_line(cfg: "Config", result) -> str:
    """``efidisk0 store 37% used, 15 KB pstore`` (+ a warning above efi_pstore.warn_fill_percent)."""
    st = getattr(result, "store", None)
    size = getattr(st, "store_size", 0) or 0
    used = getattr(st, "used_bytes", 0) or 0
    pstore = getattr(st, "pstore_bytes", 0) or 0
    if not size:
        return "store size unknown"
    pct = 100 * used // size
    line = f"efidisk0 store {pct}% used, {pstore // 1000} KB pstore"
    if pct >= cfg.efi_pstore.warn_fill_percent:
        line += (f" (WARNING: above {cfg.efi_pstore.warn_fill_percent}%: collect to clear the records; a full "
                 "store refuses new dumps and boot entries)")
    return line


BACKEND = EfiPstore()
