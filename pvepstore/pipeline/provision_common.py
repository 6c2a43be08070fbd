"""What the backends' provision flows share: the VM's run state, the wait for a
rebooted guest, the recorded verify result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import Config
from ..errors import GuestError, PvepstoreError
from ..pve import state

if TYPE_CHECKING:
    from .provision import Context


def _running(ctx: "Context", node: str, vmid: int) -> bool:
    from .handles import running
    return running(ctx.cfg, ctx.api, node, vmid)


def token_id(cfg: Config) -> str | None:
    return f"{cfg.api.user}!{cfg.api.token_name}" if cfg.api.backend == "https" else None


def _where(guest: Any, vmid: int) -> str:
    return getattr(guest, "where", None) or f"VM {vmid}"


def _remember_verify(ctx: Context, vmid: int, verify: Any) -> None:
    """What `status` shows as "backend verified" (the last provision's verify)."""
    state.update(ctx.cfg, vmid, verified={"ok": bool(getattr(verify, "ok", False)), "at": ctx.clock(),
                                          "problems": list(getattr(verify, "problems", []) or [])})


def _reboot_and_wait(ctx: Context, node: str, vmid: int, target, *, via_api: bool, old_boot: str,
                     why: str = "reboot (shutdown + start) so the pending disk is attached") -> None:
    """Reboot (through the API when a pending disk must be applied) and wait for a new boot id."""
    if via_api:
        ctx.api.run_task("POST", f"nodes/{node}/qemu/{vmid}/status/reboot", why=why)
    else:
        with ctx.guest_connect(target) as guest:
            old_boot = guest.reboot() or old_boot
    _wait_new_boot(ctx, vmid, target, old_boot)


def _wait_new_boot(ctx: Context, vmid: int, target, old_boot: str) -> None:
    """Poll over SSH until the guest answers with a new boot id; failed attempts are expected
    (sshd is down while it reboots) and say nothing -- the wait is announced once."""
    ctx.progress(f"waiting for VM {vmid}'s guest to come back over SSH (up to {ctx.reboot_timeout:.0f} s)...")
    deadline = ctx.clock() + ctx.reboot_timeout
    last: Exception | None = None
    while ctx.clock() < deadline:
        ctx.sleep(2.0)
        try:
            with ctx.guest_connect(target) as guest:
                boot = getattr(guest.probe(serial=ctx.cfg.for_vm(vmid).disk.serial, disk_bytes=None), "boot_id", "")
            if boot and boot != old_boot:
                return
        except PvepstoreError as exc:
            last = exc
    raise GuestError(f"VM {vmid} did not come back within {ctx.reboot_timeout:.0f} s after the reboot"
                     + (f" ({last})" if last else ""), hint="check the VM's console")


def _restore_record(cfg: Config, vmid: int, before: dict) -> str:
    state.update(cfg, vmid, provision=before or None)
    return "the per-VM state as it was"
