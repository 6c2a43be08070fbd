"""What provision checks before its first write, and how it takes back what a failed run changed.

A provision that fails after it attached a disk or set a hookscript leaves the VM
changed by a run that reported failure.  So everything that can be known from
reads is checked first -- the API token's privileges (``GET /access/permissions``),
the storage (exists, enabled, active, holds images, has room), the VM's lock, the
guest (reachable, its host key trusted, the probe without blockers) -- and a
``--dry-run`` runs the same checks.  What can still fail afterwards (the guest
changed in between, a task failed) is undone step by step from a :class:`Journal`;
where undoing is unsafe (the guest may already use the disk) the error says what
was left and how the next run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

from ..errors import PveError, PvepstoreError, VmBusyError
from ..pve.api import PveApi, quote


class Priv(str, Enum):
    """The Proxmox privileges provision uses (README: "API token, minimal privileges")."""

    VM_AUDIT = "VM.Audit"
    VM_CONFIG_DISK = "VM.Config.Disk"
    VM_POWER = "VM.PowerMgmt"
    DATASTORE_AUDIT = "Datastore.Audit"
    DATASTORE_ALLOCATE = "Datastore.AllocateSpace"


@dataclass
class Needs:
    """Privileges per ACL path, each with the reason (for the message)."""

    paths: dict[str, dict[Priv, str]] = field(default_factory=dict)

    def add(self, path: str, priv: Priv, why: str) -> None:
        self.paths.setdefault(path, {}).setdefault(priv, why)


def effective_privileges(api: PveApi, path: str) -> set[str]:
    """The token's effective privileges on ``path`` (PVE resolves ACL propagation and privsep)."""
    got = api.get("access/permissions", path=path)
    privs = got.get(path, {}) if isinstance(got, dict) else {}
    return {str(p) for p in privs} if isinstance(privs, dict) else set()


def check_privileges(api: PveApi, needs: Needs, token_id: str | None) -> None:
    """Refuse, naming every missing privilege, its path and what it is needed for."""
    if api.backend == "local":
        return  # pvesh runs as root@pam: every privilege, and the root-only options too
    missing = []
    for path, privs in needs.paths.items():
        have = effective_privileges(api, path)
        missing += [(path, priv, why) for priv, why in privs.items() if priv.value not in have]
    if not missing:
        return
    who = f"the API token {token_id}" if token_id else "the API token"
    text = "; ".join(f"{priv.value} on {path} ({why})" for path, priv, why in missing)
    path, priv, _ = missing[0]
    raise PveError(f"{who} lacks {text}; nothing was changed",
                   hint=f"grant what is missing, e.g. `pveum acl modify {path} --tokens {token_id or '<USER@REALM!NAME>'} "
                        f"--roles <a role with {priv.value}>` (README: 'API token, minimal privileges')")


def check_storage(api: PveApi, node: str, storage: str, need_bytes: int, vmid: int) -> None:
    """The storage a new pstore disk goes to: exists on the node, enabled, active, holds images, has room."""
    try:
        st = api.get(f"nodes/{node}/storage/{quote(storage)}/status")
    except PveError as exc:
        if getattr(exc, "status", None) in (401, 403):
            raise
        raise PveError(f"VM {vmid}: storage {storage!r} for the pstore disk is not usable on node {node}: "
                       f"{exc.message}; nothing was changed",
                       hint=f"set disk.storage (or vms.{vmid}.disk.storage) to a storage with content images "
                            "(`pvesm status` lists them)") from None
    fix = f"or set disk.storage (or vms.{vmid}.disk.storage) to another storage"
    if str(st.get("enabled", 1)) == "0":
        raise PveError(f"storage {storage!r} is disabled; nothing was changed",
                       hint=f"pvesm set {storage} --disable 0, {fix}")
    if str(st.get("active", 1)) == "0":
        raise PveError(f"storage {storage!r} is not active on node {node}; nothing was changed",
                       hint=f"check it with `pvesm status` (a network storage that is down?), {fix}")
    if "images" not in str(st.get("content", "")).split(","):
        raise PveError(f"storage {storage!r} does not hold VM disk images (content: {st.get('content', '')}); "
                       "nothing was changed", hint=f"pvesm set {storage} --content <its content>,images, {fix}")
    avail = st.get("avail")
    if isinstance(avail, int) and avail < need_bytes:
        raise PveError(f"storage {storage!r} has {avail >> 20} MiB free, the pstore disk needs "
                       f"{need_bytes >> 20} MiB; nothing was changed", hint=f"free space, {fix}")


def check_not_locked(config: dict, vmid: int) -> None:
    """A locked VM (backup, migrate, snapshot...) refuses config changes: say so before trying."""
    lock = config.get("lock")
    if lock:
        raise VmBusyError(f"VM {vmid} is locked ({lock}); nothing was changed",
                          hint="wait until the operation holding the lock ends (`qm unlock` only if it is stale)")


@dataclass
class Step:
    done: str  # what this run changed, as the message says it
    undo: Callable[[], str] | None  # takes it back and says how; None: it cannot be undone


@dataclass
class Journal:
    """The changes of one provision run, newest last."""

    steps: list[Step] = field(default_factory=list)

    def did(self, done: str, undo: Callable[[], str] | None = None) -> None:
        self.steps.append(Step(done, undo))

    def fail(self, exc: PvepstoreError, *, keep: bool = False, resume: str = "") -> PvepstoreError:
        """The error to raise for ``exc``: with ``keep`` every change stays (said so), else each one
        is undone newest first; the message lists what was undone and what is left."""
        if not self.steps:
            return exc
        undone: list[str] = []
        left: list[str] = []
        for step in reversed(self.steps):
            if keep or step.undo is None:
                left.append(step.done)
                continue
            try:
                undone.append(step.undo())
            except PvepstoreError as err:
                left.append(f"{step.done} (taking it back failed: {err.message})")
        self.steps = []
        message = exc.message
        if undone:
            message += "; rolled back: " + "; ".join(undone)
        if left:
            message += "; LEFT in place: " + "; ".join(left)
        hint = exc.hint
        if left and resume:
            hint = f"{hint}; then {resume}" if hint else resume
        new = type(exc)(message, hint=hint)
        new.__dict__.update({k: v for k, v in exc.__dict__.items() if k not in ("message", "hint")})
        return new
