"""VM handles for the collector: the same gather/clear over different transports.

* :class:`GuestVm` — a running guest over SSH (one connection, two commands when
  there is nothing to collect: read /sys/fs/pstore, boot history);
* :class:`OfflineVm` — a powered-off VM's volume on the host (PVE's lock, checks);
* :func:`open_vm` asks the VM's backend (:func:`vm_backend`: the config's ``vms.<id>.backend``,
  else what provision set up, else the default) for a handle, given :func:`vm_where` -- the one
  "is it running, and where" policy of pvepstore.

An in-scope VM that was never provisioned for its backend is a state, not a failure:
:class:`NotProvisioned` (the sweep reports it as ``not_provisioned`` and carries on).

Proxmox task-log and node-journal evidence (:mod:`.hostevidence`) is fetched only when a boot ended.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

from ..analysis.bootend import BootEnd
from ..errors import ConfigError, GuestError
from ..guest import Guest
from ..pstore.files import record_from_file
from ..pstore.model import Record
from ..backends import registry
from ..backends.base import VmWhere
from .collect import BOOT_ENDING, Gathered, InnerBoot
from .hostevidence import HostEvidence, api_sources

if TYPE_CHECKING:
    from ..analysis.hostlog import QemuIds
    from ..config import Config

# systemd < 250 says "Reached target Power-Off.", later ones "poweroff.target - System Power Off.",
# systemd-shutdown "Powering off."; the kernel "reboot: Power down".
_POWEROFF = re.compile(r"Power[- ]Off|poweroff\.target|Powering off|Power down|powering down|System Halt|halting",
                       re.I)


class NotProvisioned(ConfigError):
    """The VM is in scope but provision never set up its backend: nothing can hold records yet."""


@dataclass(frozen=True)
class BackendChoice:
    """Which backend a VM uses and why.

    ``source``: "config" (``vms.<id>.backend``, or a top-level ``backend``, naming a backend),
    "provision" (what the last provision recorded, the rule under ``auto``) or "default" (nothing
    set up and nothing named: the reader of :data:`registry.DEFAULT`).
    ``provisioned``: provision set up this very backend and unprovision has not removed it.
    ``mismatch``: the config and the provisioned state disagree (the config wins, and says so).
    """

    backend: str
    source: str
    provisioned: bool
    mismatch: str = ""


def recorded_backend(cfg: "Config", vmid: int) -> str | None:
    """The backend the last provision set up for ``vmid`` (None: never, or unprovisioned since)."""
    from ..pve import state

    rec = state.provision_record(cfg, vmid)
    if not rec or rec.get("removed"):
        return None
    if rec.get("backend") in registry.names():
        return rec["backend"]
    return registry.DEFAULT  # records of the default backend predate the key


def vm_backend(cfg: "Config", vmid: int) -> BackendChoice:
    raw = cfg.vms.get(int(vmid), {})
    recorded = recorded_backend(cfg, vmid)
    configured = key = None  # auto (the default): provision chose, and recorded what
    if "backend" in raw and str(raw["backend"]) != registry.AUTO:
        configured, key = str(raw["backend"]), f"vms.{vmid}.backend"
    elif "backend" not in raw and cfg.backend != registry.AUTO:
        configured, key = cfg.backend, "backend"
    if configured is None:
        if recorded is not None:
            return BackendChoice(recorded, "provision", True)
        return BackendChoice(registry.DEFAULT, "default", False)
    mismatch = ""
    if recorded is not None and recorded != configured:
        mismatch = (f"{key} is {configured} but provision set up {recorded}: following the config "
                    f"(run `pvepstore provision {vmid} --backend {configured}`, or drop {key})")
    return BackendChoice(configured, "config", recorded == configured, mismatch)


def not_provisioned_error(vmid: int, choice: BackendChoice, what: str) -> NotProvisioned:
    flag = registry.get(choice.backend).provision_flag()
    why = f"; {choice.mismatch}" if choice.mismatch else ""
    return NotProvisioned(f"VM {vmid} is not provisioned for {choice.backend} ({what}){why}",
                          hint=f"run `pvepstore provision {vmid}{flag}`")


def has_pstore_disk(conf: dict, serial: str) -> bool:
    from ..pve.vmconfig import DRIVE_KEY_RE, parse_drive

    pending = conf.get("pending") if isinstance(conf.get("pending"), dict) else {}
    return any(DRIVE_KEY_RE.match(str(k)) and isinstance(v, str) and parse_drive(v).get("serial") == serial
               for k, v in [*conf.items(), *pending.items()])


def vm_where(cfg: "Config", api, node: str, vmid: int, local: str | None, *, status: str | None = None,
             ask: bool = True) -> VmWhere:
    """Is the VM running, and is it this node's: PVE's word (``status`` from /cluster/resources,
    which may lag by seconds, else ``status/current`` when ``ask``), and on this node the host's
    own view (a live QEMU with the VM's pidfile) wins -- a VM it calls stopped is re-checked
    under PVE's lock anyway before its volume is read.  ``local`` None: this node's name is unknown
    (no ``node:``, no .members), so nothing is this node's."""
    from ..pve.locking import qemu_pid

    if (status is None or status == "unknown") and ask:
        status = (api.get(f"nodes/{node}/qemu/{vmid}/status/current") or {}).get("status", "unknown")
    status = status or "unknown"
    here = local is not None and node == local
    running = status == "running" or (here and qemu_pid(cfg.paths, vmid) is not None)
    return VmWhere(int(vmid), node, status, running, here)


def boot_end_from_history(history) -> BootEnd:
    """The guest's BootHistory as a BootEnd (``orderly`` reboot/poweroff/none/unknown)."""
    orderly = None
    if history.previous_orderly is True:
        tail = "\n".join(history.previous_tail[-30:])
        orderly = "poweroff" if _POWEROFF.search(tail) else "reboot"
    elif history.previous_orderly is False:
        orderly = "none"
    detail = f"previous kernel {history.previous_kernel}" if history.previous_kernel else ""
    return BootEnd(ended_boot=None, orderly=orderly, kernel=history.previous_kernel, detail=detail,
                   log_tail=tuple(history.previous_tail), watchdog_reset=history.watchdog_reset)


@dataclass
class GuestVm(HostEvidence):
    vmid: int
    vm: dict
    guest: Guest
    max_record_bytes: int = 4 << 20
    # Returns the Proxmox tasks of this VM since a time (None: no API available).
    tasks: Callable[[float | None], list[dict]] | None = None
    backend: str = "pstore_blk"
    note: str = ""  # said in the result (e.g. config and provisioned state disagree)
    clock: Callable[[], float] = time.time  # the host's clock: Proxmox task times are on it
    # The node's journal lines between two times (``GET /nodes/{node}/journal``; None: not available).
    host_log: Callable[[float, float], list[str]] | None = None
    vm_config: Callable[[], dict] | None = None  # the VM's config, asked only when a boot ended
    qemu_ids: Callable[[], "QemuIds | None"] | None = None  # the VM's QEMU on this node, each look

    def gather(self) -> Gathered:
        found = self.guest.read_records(max_bytes=max(self.max_record_bytes * 4, 16 << 20),
                                        record_bytes=self.max_record_bytes)
        history = self.guest.boot_history()
        replied = self.clock()
        qemu = self.qemu_ids() if self.qemu_ids is not None else None
        records: list[Record] = []
        for g in found:
            if g.truncated:
                raise GuestError(f"VM {self.vmid}: record {g.name} is larger than the "
                                 f"{self.max_record_bytes}-byte limit; not collected",
                                 hint="raise collect.max_record_bytes if the guest is trusted")
            rec = record_from_file(g.name, g.data, g.mtime)
            if rec is not None:
                records.append(rec)
        # When this boot's kernel started, on the HOST's clock (the guest's clock may be off;
        # uptime is not): the latest moment the previous boot can have ended.
        started = replied - history.uptime if history.uptime is not None and history.uptime >= 0 else None
        return Gathered(source="guest", records=records, boot_id=history.boot_id or None,
                        boot_end=boot_end_from_history(history), backend=self.backend,
                        boot_started=started, boots=list(history.boots), qemu=qemu, kernel=history.kernel,
                        keeps_panics=self.backend in registry.names() and registry.get(self.backend).keeps_panics)

    def close(self) -> None:
        self.guest.close()

    def clear(self, records: Sequence[Record]) -> None:
        result = self.guest.clear([r.name for r in records])
        failed = {n: why for n, why in result.not_cleared.items() if why != "gone"}
        if failed:
            # The records are safe already; the next run clears them again.
            bad = ", ".join(f"{n}: {why}" for n, why in sorted(failed.items()))
            raise GuestError(f"VM {self.vmid}: could not clear {bad}",
                             hint="the records are archived; the next sweep clears them again")


@dataclass
class OfflineVm:
    """A powered-off VM's pstore volume, read and cleared on the host under PVE's config lock.

    Reading and clearing are two short lock holds; the clear re-reads the volume
    and erases only records whose bytes are still exactly the ones archived.
    """

    vmid: int
    vm: dict
    cfg: "Config"
    runner: object | None = None
    note: str = ""

    def _parse(self, path):
        from ..pve import state
        from ..pve.offline import parse_volume

        return parse_volume(path, state.recorded_params(self.cfg, self.vmid))[0]

    def gather(self) -> Gathered:
        from ..pve.offline import open_volume

        with open_volume(self.cfg, self.vmid, self.runner) as (_node, _volume, path):
            result = self._parse(path)
        return Gathered(source="offline", records=[r for r in result.records if not r.erased])

    def clear(self, records: Sequence[Record]) -> None:
        from ..pve.offline import erase_records, open_volume

        with open_volume(self.cfg, self.vmid, self.runner) as (_node, _volume, path):
            result = self._parse(path)
            current = {r.name: r.sha256 for r in result.records if not r.erased}
            names = [r.name for r in records if current.get(r.name) == r.sha256]
            if names:
                erase_records(path, result, names)


@dataclass
class IvshmemVm(HostEvidence):
    """ramoops on an ivshmem device, read from the host's shm file: no SSH needed, any VM state.

    The records themselves say how boots ended (Panic, Shutdown, Emergency dumps).  A QEMU
    process that ended without one (stopped, killed, crashed on the host) is seen as a new
    QEMU run (:func:`pvepstore.pve.locking.qemu_run`): the run plays the part of the guest's
    boot id, so the tasks and the node's journal explain its end as for every other backend.
    A reset inside the same run without a dump (``qm reset``, a watchdog) is seen only when the
    guest answers (``guest_history``): its own boot id then changed within the run.
    """

    vmid: int
    vm: dict
    cfg: "Config"
    note: str = ""
    tasks: Callable[[float | None], list[dict]] | None = None
    host_log: Callable[[float, float], list[str]] | None = None
    vm_config: Callable[[], dict] | None = None
    clock: Callable[[], float] = time.time
    # The guest's boot history when it answers (None: it does not, or nothing to ask it with)
    guest_history: Callable[[], object | None] | None = None
    _image: object = field(default=None, repr=False)

    def gather(self) -> Gathered:
        from ..pve import ivshmem
        from ..pve.locking import qemu_run
        from ..pve.qemuproc import qemu_ids

        run = qemu_run(self.cfg.paths, self.vmid)
        qemu = qemu_ids(self.cfg.paths, self.vmid) if run else None
        self._image = ivshmem.read_image(self.cfg, self.vmid)
        result = ivshmem.parse_image(self.cfg, self.vmid, self._image)
        inner = None
        # A boot-ending dump explains the guest's last boot by itself: then the guest is not asked
        # (a panicked guest would only make the sweep wait for SSH's timeout).
        dumped = any(r.reason in BOOT_ENDING for r in result.records if not r.erased)
        if run and self.guest_history is not None and not dumped:
            history = self.guest_history()
            if history is not None and history.boot_id:
                end = replace(boot_end_from_history(history), in_run=True)
                up = history.uptime
                inner = InnerBoot(history.boot_id, self.clock() - up if up is not None and up >= 0 else None,
                                  end, tuple(history.boots))
        return Gathered(source=f"ivshmem-{self._image.source}", records=list(result.records),
                        backend="ramoops", boot_id=run[0] if run else None,
                        boot_started=run[1] if run else None, boots=ivshmem.qemu_runs(self.cfg, self.vmid),
                        boot_end=BootEnd(None, orderly="none", qemu_run=True), keeps_panics=True, qemu=qemu,
                        inner=inner)

    def clear(self, records: Sequence[Record]) -> None:
        from ..pve import ivshmem

        if self._image is not None:
            ivshmem.clear_records(self.cfg, self.vmid, self._image, records)


def open_guest(cfg: "Config", api, ref, connect_guest: Callable | None = None) -> Guest:
    """One connection to a running guest, its address from the config or from Proxmox."""
    from ..guest import GuestTarget, SshTransport
    from ..pve.address import resolve_address

    vm_cfg = cfg.for_vm(ref.vmid)
    # The VM config is only needed to find the address through cloud-init or the agent.
    conf = {} if vm_cfg.ssh.host else (api.get(f"nodes/{ref.node}/qemu/{ref.vmid}/config") or {})
    address = resolve_address(api, ref.node, ref.vmid, vm_cfg.ssh, conf)
    target = GuestTarget.from_config(vm_cfg.ssh, host=address.host, label=f"VM {ref.vmid}")
    return Guest((connect_guest or SshTransport.connect)(target), target.where)


def guest_vm(cfg: "Config", api, ref, choice: BackendChoice, connect_guest: Callable | None = None) -> GuestVm:
    """A running guest, read through /sys/fs/pstore whatever set pstore up: never "not provisioned"
    (any backend whose kernel side is pstore reads a running VM this way)."""
    from ..pve.qemuproc import qemu_ids

    vm = {"vmid": ref.vmid, "node": ref.node, "name": ref.name}
    guest = open_guest(cfg, api, ref, connect_guest)
    node, vmid = ref.node, ref.vmid
    tasks, host_log, vm_config = api_sources(api, node, vmid)
    # PVE's pidfile is node-local: on another node's VM there is none, and no ids are recorded
    return GuestVm(vmid, vm, guest, cfg.collect.max_record_bytes, tasks, backend=choice.backend,
                   note=choice.mismatch, host_log=host_log, vm_config=vm_config,
                   qemu_ids=lambda: qemu_ids(cfg.paths, vmid))


def open_vm(cfg: "Config", api, ref, local: str, *, allow_offline: bool = True,
            connect_guest: Callable | None = None):
    """The right handle for one VM, from its backend and :func:`vm_where`.  ``connect_guest(target)``
    makes the guest transport (default: an SSH connection; the sweep benchmark simulates one)."""
    choice = vm_backend(cfg, ref.vmid)
    backend = registry.get(choice.backend)
    # a backend whose records are on the host in any state needs no status call
    where = vm_where(cfg, api, ref.node, ref.vmid, local, status=ref.status, ask=not backend.host_reads_running)
    return backend.open_records(cfg, api, ref, where, choice, allow_offline=allow_offline,
                                connect_guest=connect_guest)



def where_is(cfg: "Config", api, node: str, vmid: int, *, status: str | None = None) -> VmWhere:
    """:func:`vm_where` where this node's name may be unknown (no ``node:``, no .members: then no
    VM is this node's)."""
    from ..errors import ConfigError as _NoNode
    from ..pve.inventory import local_node

    try:
        local: str | None = local_node(cfg)
    except _NoNode:
        local = None
    return vm_where(cfg, api, node, vmid, local, status=status)


def running(cfg: "Config", api, node: str, vmid: int) -> bool:
    """:func:`vm_where`'s answer for a VM whose status is not known yet (provision, unprovision)."""
    return where_is(cfg, api, node, vmid).running
