"""What both provision backends share: the summary lines, the VM's run state, the wait for a
rebooted guest, the recorded verify result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import Config
from ..errors import GuestError, PvepstoreError
from ..pve import state
from ..pve.api import PveApi

if TYPE_CHECKING:
    from .provision import Context


def _json(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, int, float, bool, list, dict)):
        return obj
    to_json = getattr(obj, "to_json", None)
    return to_json() if callable(to_json) else str(obj)


def _report_lines(res: Any, *, probe_note: str | None = None, done: str | None = None) -> list[str]:
    """The part of a provision summary both backends share: API calls, guest, plan, verify."""
    out: list[str] = []
    if res.api_calls:
        out.append("  API calls" + (" that would be made:" if res.dry_run else ":"))
        out += [f"    {c.describe()}" for c in res.api_calls]
    if res.address:
        out.append(f"  guest: {res.address.host} (from {res.address.source})")
    if res.probe is not None:
        caps = getattr(res.probe, "capabilities", {}) or {}
        if caps:
            out.append("  capabilities:")
            for name, cap in caps.items():
                note = getattr(cap, "note", "")
                out.append(f"    {name}: {getattr(cap, 'status', cap)}" + (f" - {note}" if note else ""))
        costs = getattr(res.probe, "costs", []) or []
        if costs:
            out.append("  costs:")
            out += [f"    {c}" for c in costs]
        for p in getattr(res.probe, "problems", []) or []:
            out.append(f"    guest problem: {getattr(p, 'message', p)}")
        if probe_note:
            out.append(f"    {probe_note}")
    if res.plan:
        out.append("  guest changes" + (" that would be made:" if res.dry_run else ":"))
        out += [f"    {line}" for line in res.plan]
    if done:
        out.append(f"  {done}")
    if res.verify is not None:
        out.append(f"  verify: {'ok' if getattr(res.verify, 'ok', False) else 'FAILED'}")
        out += [f"    {p}" for p in getattr(res.verify, "problems", []) or []]
    out += [f"  problem: {p}" for p in res.problems]
    if not res.dry_run:
        out.append(f"  result: {'provisioned' if res.ok else 'NOT complete (see above)'}")
    return out


def _running(api: PveApi, node: str, vmid: int) -> bool:
    return api.get(f"nodes/{node}/qemu/{vmid}/status/current").get("status") == "running"


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
