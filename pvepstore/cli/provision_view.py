"""The text summaries of provision and unprovision (the pipeline's results are data)."""

from __future__ import annotations

from typing import Any


def provision_lines(res: Any) -> list[str]:
    """``res``: a backend's provision result (``summary()`` gives its Proxmox side)."""
    pve = res.summary()
    head = "provision" + (f", {pve.head}" if pve.head else "")
    head += " (dry run: nothing was changed)" if res.dry_run else ""
    out = [f"VM {res.vmid} on {res.node}: {head}"]
    out.append(f"  backend: {res.backend}" + (" (backend: auto)" if res.auto is not None else ""))
    if res.auto is not None:
        out += [f"    {line}" for line in res.auto.lines()]
    out += [f"  {label}: {value}" for label, value in pve.items]
    out += [f"    note: {n}" for n in pve.notes]
    return out + _guest_lines(res, probe_note=pve.probe_note, done=pve.done)


def _guest_lines(res: Any, *, probe_note: str | None = None, done: str | None = None) -> list[str]:
    """The part of a provision summary every backend shares: API calls, guest, plan, verify."""
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




def unprovision_lines(res: Any) -> list[str]:
    out = [f"VM {res.vmid} on {res.node}: unprovision"]
    if res.guest is not None:
        done = getattr(res.guest, "done", []) or []
        out.append("  guest: configuration undone" + ("" if done else " (nothing to undo)"))
        out += [f"    {d}" for d in done]
    if res.detach is not None:
        out.append(f"  disk: {res.detach.action} {res.detach.key or ''} {res.detach.volid or ''}".rstrip())
        out += [f"    note: {n}" for n in res.detach.notes]
    out += [f"  proxmox: {c}" for c in res.changes]
    out += [f"  problem: {p}" for p in res.problems]
    return out
