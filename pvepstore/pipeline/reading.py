"""``pvepstore read``: through the guest when it runs, else from the volume on the host.

A running VM's volume is never touched from the host: if the guest cannot be
reached, the read fails with a hint instead of falling back to the volume.
Offline reads need no API at all (everything comes from host_root), so
``read --offline`` also works when pveproxy is down.

A VM whose backend keeps its records on the host (ivshmem: ``Backend.host_reads_running``;
the backend is :func:`pvepstore.pipeline.handles.vm_backend`'s) is read there in any VM state,
with or without ``--offline``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..errors import GuestError, PveError
from ..backends import registry
from ..pve import offline as offline_mod
from ..pve.address import resolve_address
from ..pve.commands import CommandRunner
from ..pve.inventory import local_node, locate
from .handles import vm_backend, vm_where
from .provision import Context


@dataclass
class ReadResult:
    vmid: int
    source: str  # guest | offline | ivshmem-live | ivshmem-keep | ivshmem-durable
    offline: offline_mod.OfflineRead | None = None
    guest_records: list = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    not_cleared: dict[str, str] = field(default_factory=dict)
    host_label: str = ""  # where on the host records were read without a volume (a backend's words)

    def to_json(self) -> dict:
        if self.offline is not None:
            return self.offline.to_json()
        return {"vmid": self.vmid, "source": self.source,
                "records": [{**r.to_json(), "text": r.data.decode("utf-8", "replace")} for r in self.guest_records],
                "cleared": self.cleared, "not_cleared": self.not_cleared}


def read_offline(cfg: Config, vmid: int, *, clear: bool = False,
                 runner: CommandRunner | None = None) -> ReadResult:
    """The VM's records read on the host, the way its backend keeps them."""
    return registry.get(vm_backend(cfg, vmid).backend).read_host(cfg, vmid, clear=clear, runner=runner)


def read(ctx: Context, vmid: int, *, offline: bool = False, clear: bool = False,
         max_bytes: int = 4 << 20) -> ReadResult:
    cfg = ctx.cfg
    if offline or registry.get(vm_backend(cfg, vmid).backend).host_reads_running:
        return read_offline(cfg, vmid, clear=clear, runner=ctx.runner)
    api = ctx.api
    vm = locate(api, vmid)
    where = vm_where(cfg, api, vm.node, vmid, local_node(cfg))
    if not where.running:
        if not where.local:
            raise PveError(f"VM {vmid} is off and belongs to node {vm.node}; its volume can only be read there",
                           hint=f"run `pvepstore read {vmid}` on {vm.node}")
        return read_offline(cfg, vmid, clear=clear, runner=ctx.runner)
    vm_cfg = cfg.for_vm(vmid)
    config = api.get(f"nodes/{vm.node}/qemu/{vmid}/config")
    try:
        address = resolve_address(api, vm.node, vmid, vm_cfg.ssh, config)
        with ctx.guest_connect(ctx.make_target(vm_cfg.ssh, address.host, vmid)) as guest:
            records = list(guest.read_records(max_bytes=max_bytes))
            res = ReadResult(vmid, "guest", guest_records=records)
            if clear and records:
                outcome: Any = guest.clear([r.name for r in records])
                res.cleared = list(getattr(outcome, "cleared", []) or [])
                res.not_cleared = dict(getattr(outcome, "not_cleared", {}) or {})
            return res
    except GuestError as exc:
        raise GuestError(f"VM {vmid} is running but its guest cannot be read: {exc.message}",
                         hint="the volume of a running VM is never read from the host; fix SSH access "
                              "or power the VM off and use --offline") from None
