"""``backend: auto`` and the capture matrix, fed with what the cluster says about each VM.

:class:`ClusterFacts` reads the cluster-wide facts once per run (HA resources, replication
jobs, whether each node's journal is readable); :func:`vm_facts` adds one VM's config.
The decision itself (:func:`pvepstore.backends.auto.choose`) and the matrix
(:func:`pvepstore.backends.capture.matrix`) are pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

from ..backends import registry
from ..backends.auto import AutoDecision, choose
from ..backends.capture import Cell, IvshmemPolicy, VmFacts, matrix
from ..config import Config
from ..errors import PveError, PvepstoreError
from ..pve.api import PveApi
from ..pve.cluster import ha_vmids, replicated_vmids
from ..pve.inventory import VmRef
from .handles import BackendChoice, recorded_backend, vm_backend
from .preflight import effective_privileges


@dataclass
class ClusterFacts:
    """The facts shared by every VM of one run, read on first use."""

    cfg: Config
    api: PveApi
    vms: list[VmRef] = field(default_factory=list)
    _ha: set[int] | None = None
    _replicated: set[int] | None = None
    _journal: dict[str, bool | None] = field(default_factory=dict)
    _read: set[str] = field(default_factory=set)

    def ha(self) -> set[int] | None:
        if "ha" not in self._read:
            self._read.add("ha")
            self._ha = ha_vmids(self.api, self.vms)
        return self._ha

    def replicated(self) -> set[int] | None:
        if "replication" not in self._read:
            self._read.add("replication")
            self._replicated = replicated_vmids(self.api)
        return self._replicated

    def journal_readable(self, node: str) -> bool | None:
        if node not in self._journal:
            if self.api.backend == "local":
                self._journal[node] = True  # pvesh runs as root@pam
            else:
                try:
                    self._journal[node] = "Sys.Syslog" in effective_privileges(self.api, f"/nodes/{node}")
                except PveError:
                    self._journal[node] = None
        return self._journal[node]

    def for_vm(self, vmid: int, node: str, conf: dict) -> VmFacts:
        ha, rep = self.ha(), self.replicated()
        return VmFacts(vmid=vmid, node=node, conf={str(k): str(v) for k, v in conf.items()},
                       ha_managed=None if ha is None else vmid in ha,
                       replicated=None if rep is None else vmid in rep,
                       root_options=self.cfg.api.backend == "local",
                       ivshmem_policy=IvshmemPolicy(self.cfg.auto.ivshmem),
                       host_log=self.journal_readable(node),
                       always_kmsg_dump=self.cfg.efi_pstore.always_kmsg_dump)


def is_auto(cfg: Config, vmid: int) -> bool:
    return cfg.for_vm(vmid).backend == registry.AUTO


def decide(cfg: Config, facts: VmFacts) -> AutoDecision:
    """auto's choice for the VM; a VM provisioned before keeps its backend (the decision says what
    auto would pick now)."""
    return choose(facts, registry.all_backends(), recorded=recorded_backend(cfg, facts.vmid))


def capture_cells(facts: VmFacts, backend: str) -> list[Cell]:
    """The capture matrix of the VM set up with ``backend``."""
    return matrix(registry.get(backend), registry.all_backends(), facts)


def effective_backend(cfg: Config, facts: VmFacts) -> tuple[BackendChoice, AutoDecision | None]:
    """The backend collect and read use (the config's, else the one provision recorded) and, under
    ``auto``, its decision; a VM with nothing set up yet shows what provision would set up."""
    choice = vm_backend(cfg, facts.vmid)
    auto = None
    if is_auto(cfg, facts.vmid):
        auto = decide(cfg, facts)
        if choice.source == "default":
            choice = replace(choice, backend=auto.backend)
    return choice, auto


def capture_by_vm(cfg: Config, api: PveApi, refs: Iterable[VmRef]) -> dict[int, list[Cell]]:
    """Each VM's capture matrix (one config read per VM, the cluster facts once); a VM whose config
    cannot be read is left out (the metrics then lack its series rather than claim a no)."""
    refs = list(refs)
    cluster = ClusterFacts(cfg, api, refs)
    out: dict[int, list[Cell]] = {}
    for ref in refs:
        try:
            conf = dict(api.get(f"nodes/{ref.node}/qemu/{ref.vmid}/config", current=1) or {})
            facts = cluster.for_vm(ref.vmid, ref.node, conf)
            out[ref.vmid] = capture_cells(facts, effective_backend(cfg, facts)[0].backend)
        except PvepstoreError:
            continue
    return out
