"""The backend protocol: what one capture backend tells the rest of pvepstore.

A backend is one module with one class (proxmoxer's transports are the model): the guest
side is a rule module of :mod:`pvepstore.guest` (``assess``/``settings``/``wishes``/
``verify``: capability rows, costs, blockers and the files/units the plan engine applies);
the Proxmox side is ``provision``/``pve_undo``/``status_row``; the records are reached
through ``open_records`` (the handle classes of :mod:`pvepstore.pipeline.handles`) for a
VM in the state :class:`VmWhere` says.  The registry (:mod:`.registry`) maps names to
these classes; nothing outside :mod:`pvepstore.backends` compares backend names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..errors import UsageError

if TYPE_CHECKING:
    from ..config import Config
    from .capture import Blocker, Event, VmFacts
    from ..pipeline.provision import Context, UnprovisionResult, VmStatus


def as_json(obj: Any) -> Any:
    """A probe report, plan outcome or verify result as JSON (its ``to_json()``), else as is/str."""
    if obj is None or isinstance(obj, (str, int, float, bool, list, dict)):
        return obj
    to_json = getattr(obj, "to_json", None)
    return to_json() if callable(to_json) else str(obj)


@dataclass(frozen=True)
class VmWhere:
    """The one answer to "is it running, and where" (:func:`pvepstore.pipeline.handles.vm_where`)."""

    vmid: int
    node: str
    status: str  # PVE's word: running, stopped, paused, unknown, ...
    running: bool
    local: bool  # the VM belongs to this node (its volume and /dev/shm are here)


def check_host_readable(where: VmWhere, *, allow_offline: bool, what: str) -> None:
    """A stopped VM's records are read on the host: only on the node that owns ``what`` (its
    volume), and only when the config allows offline reads."""
    from ..errors import GuestError

    if not where.local:
        raise GuestError(f"VM {where.vmid} is {where.status} on node {where.node}",
                         hint=f"{what} can only be read on the node that owns it; run the sweep there")
    if not allow_offline:
        raise GuestError(f"VM {where.vmid} is not running", hint="collect.offline is off in the config")


@dataclass
class PveSummary:
    """What a provision result tells about the Proxmox side, for the CLI to lay out:
    ``head`` after "provision, "; ``items`` (label, value) rows; ``notes`` under them;
    ``probe_note`` after the guest's capabilities; ``done`` (rebooted, restarted)."""

    items: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)
    head: str = ""
    probe_note: str | None = None
    done: str | None = None


@dataclass
class ProvisionResult:
    """What one provision run did, for every backend; a backend's subclass adds its Proxmox side
    (``pve_ready``/``pve_pending``, ``summary()``, more JSON).  Data only: the CLI renders it."""

    vmid: int
    node: str
    dry_run: bool
    api_calls: list = field(default_factory=list)
    address: Any = None  # GuestAddress
    running: bool | None = None
    probe: Any = None
    plan: list[str] = field(default_factory=list)
    applied: Any = None
    verify: Any = None
    problems: list[str] = field(default_factory=list)
    backend: str = ""  # the registry name the run used (set by the pipeline)
    auto: Any = None  # backend: auto's AutoDecision (None: the backend was named)

    @property
    def pve_ready(self) -> bool:
        """The Proxmox side is in place and live."""
        return True

    @property
    def pve_pending(self) -> bool:
        """Not ok because of the Proxmox side (exit status PVE), not the guest."""
        return not self.pve_ready

    @property
    def ok(self) -> bool:
        if self.dry_run:
            return True
        return self.pve_ready and bool(self.verify is not None and getattr(self.verify, "ok", False))

    def summary(self) -> PveSummary:
        return PveSummary(items=[])

    def to_json(self) -> dict:
        return {"vmid": self.vmid, "node": self.node, "backend": self.backend, "auto": as_json(self.auto),
                "dry_run": self.dry_run,
                "ok": self.ok, "api_calls": [c.to_json() for c in self.api_calls],
                "address": None if self.address is None else {"host": self.address.host,
                                                              "source": self.address.source},
                "running": self.running, "probe": as_json(self.probe), "plan": self.plan,
                "applied": as_json(self.applied), "verify": as_json(self.verify), "problems": self.problems}


@dataclass(frozen=True)
class ProvisionOptions:
    dry_run: bool = False
    reboot: bool = False
    restart: bool = False
    hook_storage: str | None = None


class Backend(ABC):
    """One capture backend.  Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""          # one line: what it is (docs, --help)
    proxmox_side: ClassVar[str] = ""     # what provision changes in the VM's config
    stopped_records: ClassVar[str] = ""  # where the host reads a stopped VM's records
    host_reads_running: ClassVar[bool] = False  # records of a RUNNING VM are read on the host too
    guest_rules: ClassVar[Any] = None    # the guest rule module (assess, settings, wishes, verify)
    preference: ClassVar[int] = 0        # backend: auto tries the highest first
    keeps_panics: ClassVar[bool] = False  # a panic leaves a record (no record then means no panic)

    # -- what it keeps, and for which VMs (backend: auto, status's capture matrix; pure) ----------
    def captures(self, facts: "VmFacts") -> "dict[Event, str]":
        """The boot ends this backend keeps a record of, each with how."""
        return {}

    def blockers(self, facts: "VmFacts") -> "list[Blocker]":
        """Why this backend cannot serve the VM now (empty: it can), each with the fix."""
        return []

    def fits(self, facts: "VmFacts") -> list[str]:
        """Why it suits the VM (the words of auto's decision)."""
        return [self.summary] if self.summary else []

    def costs(self, facts: "VmFacts") -> list[str]:
        """What the VM gives up with it."""
        return []

    def provision_flag(self) -> str:
        """The ``--backend`` words a hint adds to ``pvepstore provision VMID``."""
        from .registry import DEFAULT
        return "" if self.name == DEFAULT else f" --backend {self.name}"

    # -- the guest ----------------------------------------------------------------------------
    def probe(self, guest, serial: str, disk_bytes: int | None = None):
        """The guest's probe report, assessed by this backend's guest rules."""
        return guest.probe(serial=serial, disk_bytes=disk_bytes, assess=self.guest_rules.assess)

    def guest_settings(self, report, cfg: "Config"):
        """This backend's guest settings for the probed guest (the rules' defaults unless overridden)."""
        return self.guest_rules.settings(report)

    def plan(self, guest, report, cfg: "Config", *, remove_legacy: bool = False):
        """The guest plan that gives the probed guest what this backend wants (nothing is changed)."""
        try:
            wishes = self.guest_rules.wishes(report, self.guest_settings(report, cfg))
        except ValueError as exc:  # settings the guest cannot take (the config was checked already)
            raise UsageError(str(exc)) from None
        return guest.plan(report, wishes=wishes, remove_legacy=remove_legacy)

    def verify(self, guest, serial: str):
        """This backend's guest configuration checked against the live state."""
        return guest.verify(serial=serial, assess=self.guest_rules.assess, check=self.guest_rules.verify)

    def verify_report(self, report):
        """:meth:`verify` on a probe already made (its facts; assessed here for this backend)."""
        return self.guest_rules.verify(self.guest_rules.assess(report))

    # -- the Proxmox side -----------------------------------------------------------------------
    @abstractmethod
    def provision(self, ctx: "Context", vmid: int, opts: ProvisionOptions) -> ProvisionResult:
        """Checks, the Proxmox-side writes (journalled for rollback), the guest, verify."""

    @abstractmethod
    def pve_undo(self, ctx: "Context", vmid: int, res: "UnprovisionResult", *, delete_disk: bool) -> None:
        """Take back what provision set on the Proxmox side (the guest is undone before)."""

    def kept_state(self, rec: dict) -> dict:
        """What unprovision keeps of the provision record so the kept records stay readable."""
        return {}

    @abstractmethod
    def status_row(self, ctx: "Context", vm, row: "VmStatus") -> None:
        """Fill ``provisioned``/``disk``/``volid``/``pending`` of one status row."""

    # -- the records ----------------------------------------------------------------------------
    def has_records(self, cfg: "Config", vmid: int) -> bool:
        """Records the host can read although provision left no record (e.g. a kept file)."""
        return False

    @abstractmethod
    def open_records(self, cfg: "Config", api, ref, where: VmWhere, choice, *,
                     allow_offline: bool = True, connect_guest: Callable | None = None) -> Any:
        """A handle (GuestVm, OfflineVm, IvshmemVm, ...) with ``gather``/``clear`` for the VM."""

    @abstractmethod
    def read_host(self, cfg: "Config", vmid: int, *, clear: bool = False, runner=None) -> Any:
        """``pvepstore read`` from the host (a stopped VM, ``--offline``, or host_reads_running)."""
