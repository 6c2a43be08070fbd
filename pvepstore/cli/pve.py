"""``pvepstore provision | unprovision | status | read``: the Proxmox side of pvepstore."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import typer

from ..backends import registry
from ..pipeline import provision as prov
from ..pipeline import reading
from ..text import terminal_safe
from .environment import env_of
from .provision_view import provision_lines, unprovision_lines
from .render import render_summary
from .status import ExitStatus


def _progress(env, text: str) -> None:
    """A long wait, said once on stderr (stdout stays the summary or the JSON document)."""
    env.stderr.write(f"{env.program_name}: {terminal_safe(text)}\n")
    env.stderr.flush()


def _dump(env, doc) -> None:
    env.out(json.dumps(doc, indent=2, ensure_ascii=True, default=str))


def provision_command(
    ctx: typer.Context,
    vmid: int = typer.Argument(..., min=100, help="The VM id."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show every API call and guest change; change nothing."),
    reboot: bool = typer.Option(False, "--reboot", help="Reboot the VM afterwards and verify."),
    backend: str = typer.Option(None, "--backend", metavar="|".join(registry.names()),
                                help="The backend (default: vms.<id>.backend or backend in the config; "
                                     "auto, the default there, picks the strongest the VM can have and says why)."),
    restart: bool = typer.Option(False, "--restart", help="ivshmem: restart the VM through the API (shutdown + "
                                 "start; a stopped VM is started) so the device appears, then verify."),
    hook_storage: str = typer.Option(None, "--hook-storage", metavar="STORAGE",
                                     help="ivshmem: the storage (content snippets) for pvepstore's hookscript."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> int:
    """Attach the pstore disk (or, --backend ivshmem, set the ivshmem device and pvepstore's hookscript)
    through the Proxmox API and configure the guest over SSH."""
    env = env_of(ctx)
    cfg = env.load_config()
    if backend is not None and backend not in registry.names():
        raise typer.BadParameter("must be " + " or ".join(registry.names()), param_hint="--backend")
    context = prov.make_context(cfg, dry_run=dry_run, progress=lambda text: _progress(env, text))
    result = prov.provision(context, vmid, dry_run=dry_run, reboot=reboot, backend=backend, restart=restart,
                            hook_storage=hook_storage)
    if as_json:
        _dump(env, result.to_json())
    else:
        for line in provision_lines(result):
            env.out(line)
    if result.ok:
        return ExitStatus.SUCCESS
    return ExitStatus.PVE if result.pve_pending else ExitStatus.GUEST


def unprovision_command(
    ctx: typer.Context,
    vmid: int = typer.Argument(..., min=100, help="The VM id."),
    delete_disk: bool = typer.Option(False, "--delete-disk", help="Free the volume (default: keep it as unusedN)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Undo the guest configuration and detach (or delete) the pstore disk; ivshmem backend: remove the
    device and put the VM's own hookscript back."""
    env = env_of(ctx)
    context = prov.make_context(env.load_config())
    result = prov.unprovision(context, vmid, delete_disk=delete_disk)
    if as_json:
        _dump(env, result.to_json())
    else:
        for line in unprovision_lines(result):
            env.out(line)


def _when(ts) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _yn(value) -> str:
    return "-" if value is None else ("yes" if value else "no")


def capture_lines(r) -> list[str]:
    """The capture matrix under a status row: one line of yes/no, then what would turn each no into a yes."""
    out = []
    if r.capture:
        out.append("captures: " + ", ".join(f"{c.event.value} {'yes' if c.captured else 'NO'}" for c in r.capture))
        for c in r.capture:
            if not c.captured and c.improve:
                out.append(f"  {c.event.value}: " + " | ".join(c.improve))
    if r.auto is not None and r.auto.switch_hint:
        out.append(r.auto.switch_hint)
    elif r.auto is not None and not r.provisioned:
        out.append(f"auto: provision would set up {r.auto.backend} (`pvepstore provision {r.vmid} --dry-run` says why)")
    return out


def status_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Every VM in scope: running, backend, provisioned, disk, pending, verified, last collection (and the
    backend's store line, e.g. an efidisk0's fill level)."""
    from ..pipeline.sinks import configured_sinks

    env = env_of(ctx)
    cfg = env.load_config()
    context = prov.make_context(cfg)
    rows = prov.status(context)
    sinks, origin = configured_sinks(cfg.sinks, cfg.host_root)
    if as_json:
        _dump(env, {"vms": [r.to_json() for r in rows],
                    "sinks": {"origin": origin.value, "names": [s.name for s in sinks]}})
        return
    env.out(_sinks_line(sinks, origin))
    if not rows:
        env.out("no VMs in scope (scope.vms, scope.tag or scope.all in the config)")
        return
    env.out(f"{'VMID':>6} {'NAME':<16} {'NODE':<10} {'RUNNING':<8} {'BACKEND':<11} {'PROVISIONED':<12} "
            f"{'DISK':<9} {'PENDING':<8} {'VERIFIED':<9} LAST COLLECTION")
    for r in rows:
        env.out(f"{r.vmid:>6} {terminal_safe(r.name or '-')[:16]:<16} {r.node:<10} {_yn(r.running):<8} "
                f"{r.backend or '-':<11} {_yn(r.provisioned):<12} {r.disk or '-':<9} {_yn(r.pending):<8} "
                f"{_yn(r.backend_ok):<9} {_when(r.last_collection)}" + (f"  error: {r.error}" if r.error else ""))
        if r.store:
            env.out(f"{'':>6} {terminal_safe(r.store)}")
        for line in capture_lines(r):
            env.out(f"{'':>6} {terminal_safe(line)}")


def _sinks_line(sinks, origin) -> str:
    from ..pipeline.sinks import SinkOrigin

    if origin is SinkOrigin.DEFAULT:
        return ("incidents go to: pve-notify (the default: no sinks configured, and this node has PVE's "
                "notification system; its matchers route them, type=pvepstore)")
    if origin is SinkOrigin.NONE:
        return ("incidents go to: the archive only (no sinks configured, and no PVE notification system "
                "on this host; add sinks: to the config)")
    if not sinks:
        return "incidents go to: the archive only (sinks: [] in the config)"
    return "incidents go to: " + ", ".join(s.name for s in sinks)


def read_command(
    ctx: typer.Context,
    vmid: int = typer.Argument(..., min=100, help="The VM id."),
    offline: bool = typer.Option(False, "--offline", help="Read the volume on the host (the VM must be off)."),
    clear: bool = typer.Option(False, "--clear", help="Erase the records after reading them (as the kernel does)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Read a VM's pstore records: through the guest when it runs, else from its volume on the host."""
    env = env_of(ctx)
    cfg = env.load_config()
    if offline:
        result = reading.read_offline(cfg, vmid, clear=clear)
    else:
        result = reading.read(prov.make_context(cfg), vmid, clear=clear)
    if as_json:
        _dump(env, result.to_json())
        return
    if result.offline is not None:
        got = result.offline
        env.out(f"VM {vmid}: read offline from {got.volume.volid} ({terminal_safe(str(got.volume.path))}), "
                f"layout {got.layout_source}")
        for line in render_summary(got.result):
            env.out(line)
    else:
        env.out(f"VM {vmid}: " + (f"read from {result.host_label} ({result.source})"
                                  if result.host_label else "read through the guest"))
        if not result.guest_records:
            env.out("no records")
        for rec in result.guest_records:
            first = next((ln for ln in rec.data.decode("utf-8", "replace").splitlines() if ln.strip()), "")
            env.out(f"{terminal_safe(rec.name):<26} {rec.size:>7}  {terminal_safe(first)[:80]}")
    if result.cleared:
        env.out(f"cleared: {', '.join(result.cleared)}")
    for name, why in result.not_cleared.items():
        env.out(f"not cleared: {terminal_safe(name)} ({why})")
