"""provision / unprovision / status: one flow each for every backend (:mod:`pvepstore.backends`).

``provision`` finds the VM's backend in the registry (``--backend``, else ``vms.<id>.backend`` or
``backend``) and runs its flow: the checks first (reads only; :mod:`.preflight`), then the
Proxmox-side writes journalled for rollback, the guest (probe, plan, apply), verify.
``unprovision`` undoes the guest (the same for every backend), then asks the backend to take back
its Proxmox side, then records what the reader still needs.  ``status`` asks each backend for
its row.  The results are data; the CLI renders them (:mod:`pvepstore.cli.pve`).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

from ..backends import registry
from ..backends.base import ProvisionOptions, ProvisionResult, as_json
from ..config import Config
from ..errors import GuestError, PvepstoreError
from ..pve import state
from ..pve.address import resolve_address
from ..pve.api import PveApi, connect as api_connect
from ..pve.commands import CommandRunner
from ..pve.disks import DetachResult
from ..pve.inventory import in_scope, list_vms, locate
from ..backends.auto import AutoDecision
from .autoselect import ClusterFacts, capture_cells, decide, effective_backend, is_auto
from .handles import vm_backend
from .provision_common import _remember_verify, _running

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


def provision(ctx: Context, vmid: int, *, dry_run: bool = False, reboot: bool = False,
              backend: str | None = None, restart: bool = False, hook_storage: str | None = None) -> ProvisionResult:
    """The VM's backend's provision flow; then what `status` shows as "backend verified"."""
    ctx.api.dry_run = dry_run
    decision = None
    if backend is None and is_auto(ctx.cfg, vmid):
        decision = auto_decision(ctx, vmid)
        backend = decision.backend
    chosen = registry.get(backend or ctx.cfg.for_vm(vmid).backend)
    res = chosen.provision(ctx, vmid, ProvisionOptions(dry_run=dry_run, reboot=reboot, restart=restart,
                                                       hook_storage=hook_storage))
    res.backend = chosen.name
    res.auto = decision
    if decision is not None and not dry_run:  # what auto decided and why, for status and the next run
        state.update(ctx.cfg, vmid, auto={**decision.to_json(), "at": ctx.clock()})
    if res.verify is not None and not dry_run:
        _remember_verify(ctx, vmid, res.verify)  # what `status` shows as "backend verified"
    return res


def auto_decision(ctx: Context, vmid: int) -> AutoDecision:
    """``backend: auto`` for one VM, from its config (as it runs) and the cluster's HA/replication."""
    vm = locate(ctx.api, vmid)
    conf = dict(ctx.api.get(f"nodes/{vm.node}/qemu/{vmid}/config", current=1) or {})
    facts = ClusterFacts(ctx.cfg, ctx.api, [vm]).for_vm(vmid, vm.node, conf)
    return decide(ctx.cfg, facts)


@dataclass
class UnprovisionResult:
    vmid: int
    node: str
    guest: Any = None
    detach: DetachResult | None = None
    problems: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # what changed in the VM's config besides a disk

    def to_json(self) -> dict:
        return {"vmid": self.vmid, "node": self.node, "guest": as_json(self.guest),
                "disk": None if self.detach is None else self.detach.to_json(), "proxmox": self.changes,
                "problems": self.problems}


def unprovision(ctx: Context, vmid: int, *, delete_disk: bool = False) -> UnprovisionResult:
    cfg, api = ctx.cfg, ctx.api
    vm_cfg = cfg.for_vm(vmid)
    vm = locate(api, vmid)
    res = UnprovisionResult(vmid, vm.node)
    if _running(ctx, vm.node, vmid):
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
    # what was set up is taken back: a backend the config names, else the one provision recorded
    choice = vm_backend(cfg, vmid)
    recorded = rec.get("backend") if rec.get("backend") in registry.names() else None  # also once removed
    chosen = registry.get(recorded if choice.source == "default" and recorded else choice.backend)
    chosen.pve_undo(ctx, vmid, res, delete_disk=delete_disk)
    detached = res.detach.volid if res.detach else None
    kept = [] if delete_disk else [v for v in [detached, *rec.get("old_volids", [])] if v]
    doc = {"removed": ctx.clock(), "old_volids": sorted(set(kept)), "blk_params": rec.get("blk_params"),
           **chosen.kept_state(rec)}
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
    store: str | None = None  # a backend's storage line (efi_pstore: the vars store's fill level)
    backend: str | None = None  # the VM's backend (the config's, else the one provision set up)
    auto: Any = None  # backend: auto's AutoDecision for the VM (None: the config names its backend)
    capture: list = field(default_factory=list)  # capture matrix cells (pvepstore.backends.capture.Cell)

    def to_json(self) -> dict:
        return {**self.__dict__, "auto": as_json(self.auto), "capture": [c.to_json() for c in self.capture]}


def status(ctx: Context) -> list[VmStatus]:
    cfg, api = ctx.cfg, ctx.api
    out = []
    vms = in_scope(cfg, list_vms(api))
    cluster = ClusterFacts(cfg, api, vms)
    for vm in vms:
        doc = state.load(cfg, vm.vmid)
        verified = doc.get("verified") if isinstance(doc.get("verified"), dict) else {}
        row = VmStatus(vm.vmid, vm.name, vm.node, None, False, None, None, False,
                       verified.get("ok") if verified else None, doc.get("last_collection"))
        try:
            row.running = _running(ctx, vm.node, vm.vmid)
            conf = dict(api.get(f"nodes/{vm.node}/qemu/{vm.vmid}/config", current=1) or {})
            facts = cluster.for_vm(vm.vmid, vm.node, conf)
            choice, row.auto = effective_backend(cfg, facts)
            row.backend = choice.backend
            registry.get(row.backend).status_row(ctx, vm, row)
            row.capture = capture_cells(facts, row.backend)
        except PvepstoreError as exc:
            row.error = exc.message
        out.append(row)
    return out

