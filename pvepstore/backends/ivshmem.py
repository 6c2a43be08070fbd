"""The ivshmem backend: the guest's ramoops in Proxmox's ``ivshmem`` device, whose memory is a file
in this node's /dev/shm; pvepstore's per-VM hookscript keeps it across VM stop/start.  The host reads
the records in every VM state, no SSH needed (:mod:`.ivshmem_pve` has the Proxmox side)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import GuestError
from ..guest import ramoops_wishes
from ..pipeline.handles import IvshmemVm, not_provisioned_error
from ..pipeline.hostevidence import api_sources
from ..pve import ivshmem
from ..pve import state
from .base import Backend, ProvisionOptions, VmWhere
from .ivshmem_pve import _shm_name_of, provision_ivshmem, unprovision_ivshmem
from .registry import BackendName

if TYPE_CHECKING:
    from ..config import Config
    from ..pipeline.provision import Context, UnprovisionResult, VmStatus


class Ivshmem(Backend):
    name = BackendName.IVSHMEM.value
    summary = "ramoops on Proxmox's ivshmem device (memory shared with the host)"
    proxmox_side = "sets ivshmem (1 MiB) and pvepstore's hookscript (root@pam only)"
    stopped_records = "the shm file, its keep link or the durable copy on the host"
    host_reads_running = True
    guest_rules = ramoops_wishes
    keeps_panics = True
    preference = 20  # keeps everything, but costs live migration and needs root@pam

    def captures(self, facts):
        from .capture import Event
        return {Event.OOPS: "an Oops record in the ivshmem memory", Event.PANIC: "written at panic time",
                Event.CLEAN_REBOOT: "a Shutdown record (max_reason=4)", Event.POWEROFF: "a Shutdown record"}

    def blockers(self, facts):
        from .capture import Blocker, IvshmemPolicy
        out = []
        have = facts.conf.get("ivshmem")
        if have and _shm_name_of(have) != ivshmem.shm_name(facts.vmid):
            out.append(Blocker(f"the VM has another ivshmem device ({have})",
                               "none: Proxmox allows one ivshmem device per VM"))
        if facts.ivshmem_policy is IvshmemPolicy.NEVER:
            out.append(Blocker("auto.ivshmem is never", "set auto.ivshmem: allow (costs live migration)"))
        elif facts.ivshmem_policy is IvshmemPolicy.IF_ROOT and not facts.root_options:
            out.append(Blocker("only root@pam may set ivshmem/hookscript and pvepstore's API identity is not "
                               "root@pam itself (an API token never is)",
                               "allow ivshmem (api.backend: local, or auto.ivshmem: allow and set the two "
                               "options as root): costs live migration"))
        if facts.ha_managed:
            out.append(Blocker("HA-managed: HA migrates the VM, which ivshmem forbids",
                               f"none while VM {facts.vmid} is an HA resource"))
        elif facts.ha_managed is None:
            out.append(Blocker("HA state not readable (Sys.Audit on /)",
                               "grant the API token Sys.Audit on / so pvepstore can see the VM is not HA-managed"))
        if facts.replicated:
            out.append(Blocker("in a replication job (replication is there to move the VM)",
                               "none while the VM is replicated"))
        elif facts.replicated is None:
            out.append(Blocker("replication jobs not readable", "grant the API token VM.Audit on the VM"))
        return out

    def fits(self, facts):
        return ["keeps Oopses, panics, reboots and poweroffs; read on the host in every VM state"]

    def costs(self, facts):
        return ["no live migration while the device is there (offline migration works)",
                "a hookscript and a 1 MiB ivshmem device in the VM's config"]

    def provision(self, ctx: "Context", vmid: int, opts: ProvisionOptions) -> Any:
        return provision_ivshmem(ctx, vmid, dry_run=opts.dry_run, restart=opts.restart or opts.reboot,
                                 hook_storage=opts.hook_storage)

    def pve_undo(self, ctx: "Context", vmid: int, res: "UnprovisionResult", *, delete_disk: bool) -> None:
        unprovision_ivshmem(ctx, vmid, res)
        cfg = ctx.cfg
        if state.known_volids(cfg, vmid) or delete_disk:  # a pstore_blk disk from before the switch
            from ..pve.disks import detach_disk
            res.detach = detach_disk(ctx.api, res.node, vmid, cfg.for_vm(vmid).disk,
                                     state.known_volids(cfg, vmid), delete_disk)

    def kept_state(self, rec: dict) -> dict:
        # the reader may still need them for the kept copies
        return {"backend": self.name, "ramoops_params": rec.get("ramoops_params")}

    def status_row(self, ctx: "Context", vm, row: "VmStatus") -> None:
        api = ctx.api
        conf = api.get(f"nodes/{vm.node}/qemu/{vm.vmid}/config")
        current = api.get(f"nodes/{vm.node}/qemu/{vm.vmid}/config", current=1)
        ours = _shm_name_of(conf.get("ivshmem")) == ivshmem.shm_name(vm.vmid)
        row.provisioned = ours and ivshmem.is_ours(conf.get("hookscript"))
        row.disk = self.name if ours else None
        row.pending = ours and conf.get("ivshmem") != current.get("ivshmem")

    def has_records(self, cfg: "Config", vmid: int) -> bool:
        name = ivshmem.shm_name(vmid)
        return any(p.exists() for p in (cfg.paths.ivshmem_file(name), cfg.paths.ivshmem_keep(name),
                                        ivshmem.durable_copy(cfg, vmid)))

    def open_records(self, cfg: "Config", api, ref, where: VmWhere | None, choice, *,
                     allow_offline: bool = True, connect_guest: Callable | None = None) -> Any:
        vmid, node = ref.vmid, ref.node
        if where is not None and not where.local:
            raise GuestError(f"VM {vmid} runs on node {node}: its ivshmem records are in that "
                             "node's /dev/shm", hint="run the sweep on every node")
        if not choice.provisioned and not self.has_records(cfg, vmid):
            raise not_provisioned_error(vmid, choice, "no ivshmem device set up, no records file")
        tasks, host_log, vm_config = api_sources(api, node, vmid) if api is not None else (None, None, None)
        history = None
        if api is not None and where is not None and where.running:
            history = lambda: guest_history(cfg, api, ref, connect_guest)  # noqa: E731
        return IvshmemVm(vmid, {"vmid": vmid, "node": node, "name": ref.name}, cfg, note=choice.mismatch,
                         tasks=tasks, host_log=host_log, vm_config=vm_config, guest_history=history)

    def read_host(self, cfg: "Config", vmid: int, *, clear: bool = False, runner=None) -> Any:
        """The ramoops records in the VM's ivshmem memory (live file, keep link or durable copy)."""
        from ..pipeline.handles import vm_backend
        from ..pipeline.reading import ReadResult

        choice = vm_backend(cfg, vmid)
        if not choice.provisioned and not self.has_records(cfg, vmid):
            raise not_provisioned_error(vmid, choice, "no ivshmem device set up, no records file")
        image = ivshmem.read_image(cfg, vmid)
        records = [r for r in ivshmem.parse_image(cfg, vmid, image).records if not r.erased]
        res = ReadResult(vmid, f"ivshmem-{image.source}", guest_records=records,
                         host_label="its ivshmem memory on the host")
        if clear and records:
            res.cleared = list(ivshmem.clear_records(cfg, vmid, image, records) or [])
        return res


BACKEND = Ivshmem()


def guest_history(cfg: "Config", api, ref, connect_guest: Callable | None = None):
    """The running guest's boot history, or None when it cannot be asked (no address, no SSH, not
    answering): the records are read on the host either way; only a reset inside the same QEMU run
    (no dump, no new run) goes unseen without it."""
    from ..errors import ConfigError, PveError
    from ..pipeline.handles import open_guest

    try:
        guest = open_guest(cfg, api, ref, connect_guest)
    except (GuestError, PveError, ConfigError):
        return None
    try:
        return guest.boot_history()
    except GuestError:
        return None
    finally:
        guest.close()
