"""``pvepstore guest ...``: probe, plan, apply, verify, undo and list records of one guest over SSH."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from ..backends import registry
from ..errors import GuestError, InputError
from ..guest import GuestTarget, connect
from ..text import safe_filename, terminal_safe
from .environment import env_of

guest_app = typer.Typer(help="Configure pstore_blk inside a guest over SSH, and read its records.",
                        no_args_is_help=True)

_VMID = typer.Argument(..., min=100, help="Proxmox VM id (its settings come from the config file).")
_HOST = typer.Option(None, "--host", help="Guest address [default: vms.<id>.ssh.host].")
_PORT = typer.Option(None, "--port", min=1, max=65535, help="SSH port [default: from the config].")
_USER = typer.Option(None, "--user", help="SSH user (root, or a user with password-less sudo).")
_JSON = typer.Option(False, "--json", help="Print one JSON document.")
_DRY = typer.Option(False, "--dry-run", help="Show what would change; change nothing.")
_LEGACY = typer.Option(False, "--remove-legacy",
                       help="Also remove the old ramoops/memmap setup (regenerates GRUB/initramfs config).")


def _setup(ctx: typer.Context, vmid: int, host, port, user):
    env = env_of(ctx)
    cfg = env.load_config()
    from ..pipeline.handles import vm_backend
    # the backend these guest commands assess for: a named one, else what provision set up (auto)
    vm = replace(cfg.for_vm(vmid), backend=vm_backend(cfg, vmid).backend)
    ssh = vm.ssh
    if port is not None:
        ssh = replace(ssh, port=port)
    if user is not None:
        ssh = replace(ssh, user=user)
    target = GuestTarget.from_config(ssh, host=host, label=f"VM {vmid}")
    return env, cfg, vm, target


def _dump(env, data) -> None:
    env.out(json.dumps(data, indent=2, ensure_ascii=True))


def _render_probe(env, r) -> None:
    s = terminal_safe
    env.out(f"{s(r.distro or r.distro_id or '?')}, kernel {s(r.kernel)} ({s(r.arch)})")
    d = r.disk
    if d and d.present:
        state = ("in use by pvepstore" if d.initialized else "clean" if d.zero else
                 "stale bytes" if d.zero is False else "?")
        disk = f"{s(d.by_id)} -> {s(d.device)}, {d.size} bytes, {state}"
    else:
        disk = f"{s(r.by_id)} missing"
    env.out(f"pstore_blk: {r.pstore_blk}; backend: {s(r.backend or 'none')}; "
            f"configured: {'yes' if r.configured else 'no'}")
    env.out(f"disk: {disk}")
    env.out("captures:")
    for name, cap in r.capabilities.items():
        env.out(f"  {name:<18} {cap.status:<8} {cap.note}")
    if r.problems:
        env.out("problems:")
        for p in r.problems:
            env.out(f"  [{p.severity}] {s(p.message)}" + (f"\n      fix: {s(p.fix)}" if p.fix else ""))


@guest_app.command("probe")
def probe_cmd(ctx: typer.Context, vmid: int = _VMID, host: Optional[str] = _HOST, port: Optional[int] = _PORT,
              user: Optional[str] = _USER, as_json: bool = _JSON) -> None:
    """Report what the guest can capture and what is in the way (changes nothing)."""
    env, cfg, vm, target = _setup(ctx, vmid, host, port, user)
    with connect(target) as g:
        r = registry.get(vm.backend).probe(g, vm.disk.serial, vm.disk.size_mib << 20)
    _dump(env, r.to_json()) if as_json else _render_probe(env, r)


def _make_plan(g, cfg, vm, remove_legacy):
    # assessed for the VM's configured backend (vms.<id>.backend)
    backend = registry.get(vm.backend)
    report = backend.probe(g, vm.disk.serial, vm.disk.size_mib << 20)
    return report, backend.plan(g, report, cfg, remove_legacy=remove_legacy)


@guest_app.command("plan")
def plan_cmd(ctx: typer.Context, vmid: int = _VMID, host: Optional[str] = _HOST, port: Optional[int] = _PORT,
             user: Optional[str] = _USER, as_json: bool = _JSON, remove_legacy: bool = _LEGACY) -> None:
    """Show what `apply` would change."""
    env, cfg, vm, target = _setup(ctx, vmid, host, port, user)
    with connect(target) as g:
        _, plan = _make_plan(g, cfg, vm, remove_legacy)
    if as_json:
        _dump(env, plan.to_json())
    else:
        for line in plan.describe():
            env.out(terminal_safe(line))


@guest_app.command("apply")
def apply_cmd(ctx: typer.Context, vmid: int = _VMID, host: Optional[str] = _HOST, port: Optional[int] = _PORT,
              user: Optional[str] = _USER, as_json: bool = _JSON, dry_run: bool = _DRY,
              remove_legacy: bool = _LEGACY) -> None:
    """Configure the VM's backend in the guest (idempotent; every change backed up and listed in a manifest)."""
    env, cfg, vm, target = _setup(ctx, vmid, host, port, user)
    with connect(target) as g:
        _, plan = _make_plan(g, cfg, vm, remove_legacy)
        result = g.apply(plan, dry_run=dry_run)
    if as_json:
        _dump(env, {"plan": plan.to_json(), "result": result.to_json()})
        return
    for line in plan.describe():
        env.out(("would: " if dry_run else "") + terminal_safe(line))
    if not dry_run and not plan.empty:
        env.out("applied" if result.ok else "applied with failures: " + terminal_safe("; ".join(result.failures)))
    if not result.ok:
        raise GuestError(f"VM {vmid}: apply failed: {'; '.join(result.failures)}",
                         hint="`pvepstore guest verify` shows the state; `undo` restores the files")


@guest_app.command("verify")
def verify_cmd(ctx: typer.Context, vmid: int = _VMID, host: Optional[str] = _HOST, port: Optional[int] = _PORT,
               user: Optional[str] = _USER, as_json: bool = _JSON) -> None:
    """Check that the guest's backend is registered with pvepstore's parameters (the manifest says which)."""
    env, cfg, vm, target = _setup(ctx, vmid, host, port, user)
    with connect(target) as g:
        # the guest's manifest says which backend is verified (the configured one without a manifest)
        report = g.probe(serial=vm.disk.serial, disk_bytes=None)
        result = registry.for_manifest(report.manifest, default=vm.backend).verify_report(report)
    if as_json:
        _dump(env, result.to_json())
    else:
        for name, ok, detail in result.checks:
            env.out(f"{'ok  ' if ok else 'FAIL'} {terminal_safe(name)}" + (f": {terminal_safe(detail)}" if detail else ""))
    if not result.ok:
        raise GuestError(f"VM {vmid}: verification failed: {terminal_safe(result.problems[0])}",
                         hint="`pvepstore guest plan` shows what apply would fix")


@guest_app.command("undo")
def undo_cmd(ctx: typer.Context, vmid: int = _VMID, host: Optional[str] = _HOST, port: Optional[int] = _PORT,
             user: Optional[str] = _USER, as_json: bool = _JSON, dry_run: bool = _DRY) -> None:
    """Restore every file pvepstore changed on the guest (from its manifest)."""
    env, cfg, vm, target = _setup(ctx, vmid, host, port, user)
    with connect(target) as g:
        report = g.probe(serial=vm.disk.serial, disk_bytes=None)
        plan = g.undo_plan(report)
        result = g.undo(dry_run=dry_run, report=report)
    if as_json:
        _dump(env, {"plan": plan.to_json(), "result": result.to_json()})
        return
    for line in plan.describe():
        env.out(("would: " if dry_run else "") + terminal_safe(line))
    if not result.ok:
        raise GuestError(f"VM {vmid}: undo failed: {'; '.join(result.failures)}")


@guest_app.command("records")
def records_cmd(ctx: typer.Context, vmid: int = _VMID, host: Optional[str] = _HOST, port: Optional[int] = _PORT,
                user: Optional[str] = _USER, as_json: bool = _JSON,
                extract: Optional[Path] = typer.Option(None, "--extract", help="Write each record to DIR/<name>."),
                max_bytes: int = typer.Option(16 << 20, "--max-bytes", min=4096, help="Read at most this much.")) -> None:
    """List (and optionally save) the records in the guest's /sys/fs/pstore.  Never clears them."""
    env, cfg, vm, target = _setup(ctx, vmid, host, port, user)
    with connect(target) as g:
        result = g.read_records_full(max_bytes=max_bytes)
    if extract is not None:
        from ..safefs import Dir

        try:  # as `parse --extract`: no link followed, each file renamed into place
            with Dir.open(extract, create=True, mode=0o755) as out:
                for rec in result.records:
                    out.replace_file(safe_filename(rec.name), rec.data, 0o640, durable=False)
        except OSError as exc:
            raise InputError(f"cannot write to {extract}: {exc.strerror}") from None
    if as_json:
        _dump(env, {"records": [r.to_json() for r in result.records], "skipped": result.skipped})
        return
    if not result.records:
        env.out("no records")
    for rec in result.records:
        first = next((ln for ln in rec.data.decode("utf-8", "replace").splitlines() if ln.strip()), "")
        env.out(f"{rec.name}  {rec.size} bytes  mtime {rec.mtime}"
                + (" (truncated)" if rec.truncated else "") + f"  {terminal_safe(first[:100])}")
    for s in result.skipped:
        env.out(f"skipped {s}")
