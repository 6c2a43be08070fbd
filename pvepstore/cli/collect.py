"""``collect``, ``sweep``, ``incidents``, ``reboot`` and ``install-timer``: the collection pipeline."""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError, InputError, PvepstoreError, UsageError
from ..text import terminal_safe
from .environment import env_of
from .environment import Environment
from .status import ExitStatus

VMID = {"min": 100, "max": 999_999_999}  # Proxmox's VM id range, for every VM id option (exit 2 beyond)
incidents_app = typer.Typer(help="Browse the incident archive.", no_args_is_help=True)


def _pipeline(env: Environment):
    from ..pipeline.archive import Archive
    from ..pipeline.collect import Collector, VmState
    from ..pipeline.outbox import Outbox
    from ..pipeline.sinks import configured_sinks

    cfg = env.load_config()
    state = Path(cfg.state_dir)
    sinks, _ = configured_sinks(cfg.sinks, cfg.host_root)
    collector = Collector(Archive(state / "archive"), Outbox(state / "outbox"), VmState(state / "vms"),
                          [s.name for s in sinks])
    return cfg, collector, sinks


def _describe(res) -> str:
    parts = [f"vm={res.vmid}", f"status={res.status}"]
    if res.verdict:
        parts.append(f"verdict={res.verdict}")
    if res.incident:
        parts.append(f"incident={res.incident}")
    if res.message:
        parts.append(f"message={json.dumps(terminal_safe(res.message))}")
    return " ".join(parts)


def collect_command(ctx: typer.Context, vmid: int = typer.Argument(..., help="VM id.", **VMID),
                    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> int:
    """Collect one VM now: read its records, archive, forward, clear."""
    from ..pipeline.handles import open_vm
    from ..pve.api import connect
    from ..pve.inventory import local_node, locate

    env = env_of(ctx)
    cfg, collector, sinks = _pipeline(env)
    api = connect(cfg)
    handle = open_vm(cfg, api, locate(api, vmid), local_node(cfg), allow_offline=cfg.collect.offline)
    try:
        res = collector.collect(handle)
    finally:
        close = getattr(handle, "close", None)
        if close:
            close()
    delivery = collector.outbox.deliver(sinks)
    if as_json:
        env.out(json.dumps({**res.to_json(), "delivery": {"delivered": len(delivery.delivered),
                                                           "failed": delivery.failed, "pending": delivery.pending}},
                           indent=2, ensure_ascii=True))
    else:
        env.out(_describe(res))
        for sink, error in delivery.failed.items():
            env.out(f"delivery to {sink} failed (will retry): {terminal_safe(error)}")
    return ExitStatus.SUCCESS


def sweep_command(ctx: typer.Context,
                  all_nodes: bool = typer.Option(False, "--all-nodes",
                                                 help="Also VMs of other nodes (running ones only)."),
                  as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
                  quiet: bool = typer.Option(False, "--quiet", "-q", help="Only report failures."),
                  concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, max=256)) -> int:
    """Collect every in-scope VM of this node (the timer's job). Exit 8 if some VMs failed."""
    from ..pipeline.archive import Retention
    from ..pipeline.handles import open_vm
    from ..pipeline.sweep import SweepBusy, run_sweep, sweep_lock
    from ..pve.api import connect
    from ..pve.inventory import in_scope, list_vms, local_node

    env = env_of(ctx)
    cfg, collector, sinks = _pipeline(env)
    local = local_node(cfg)
    try:
        with sweep_lock(Path(cfg.state_dir)):
            api = connect(cfg)
            refs = [r for r in in_scope(cfg, list_vms(api)) if all_nodes or r.node == local]
            targets = [(r.vmid, (lambda r=r: open_vm(cfg, api, r, local, allow_offline=cfg.collect.offline)))
                       for r in refs]
            tty = getattr(env.stderr, "isatty", lambda: False)()

            def progress(done: int, total: int, res) -> None:
                if tty and not as_json:
                    env.stderr.write(f"\r[{done}/{total}] VM {res.vmid}: {res.status:<10}")
                    env.stderr.flush()
                elif not as_json and (not quiet or res.status == "failed"):
                    env.stderr.write(f"pvepstore: {_describe(res)}\n")

            result = run_sweep(targets, collector, sinks, concurrency=concurrency or cfg.collect.concurrency,
                               vm_timeout=cfg.collect.vm_timeout, progress=progress)
            if tty and not as_json and targets:
                env.stderr.write("\n")
            r = cfg.retention
            collector.archive.prune(Retention(r.max_incidents_per_vm, r.max_age_days, r.max_total_mib))
            if cfg.collect.metrics_file:
                from ..pipeline.selfmetrics import after_sweep

                try:
                    after_sweep(cfg, api, refs, result, collector.outbox, time.time())
                except (OSError, PvepstoreError) as exc:  # the sweep's work is done; only its report failed
                    why = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
                    env.stderr.write(f"pvepstore: cannot write {cfg.collect.metrics_file}: {terminal_safe(why)}\n")
    except SweepBusy as exc:
        env.stderr.write(f"pvepstore: {exc}; nothing to do\n")
        return ExitStatus.SUCCESS
    if as_json:
        env.out(json.dumps(result.to_json(), indent=2, ensure_ascii=True))
    elif not quiet:
        for res in result.results:
            if res.status != "nothing":
                env.out(_describe(res))
        counts = result.to_json()["counts"]
        env.out(f"{len(result.results)} VMs in {result.seconds:.1f} s: "
                + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if result.delivery and result.delivery.failed:
        for sink, error in result.delivery.failed.items():
            env.stderr.write(f"pvepstore: delivery to {sink} failed (spooled, will retry): {terminal_safe(error)}\n")
    return ExitStatus.PARTIAL if result.failed else ExitStatus.SUCCESS


_SINCE_HINT = "use e.g. 2026-11-01, 2026-11-01T12:00Z or 7d"


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    shown = terminal_safe(repr(text[:80]))
    m = re.fullmatch(r"([0-9]{1,12})([smhdw])", text)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
        try:
            return datetime.now(timezone.utc) - timedelta(**{unit: int(m.group(1))})
        except OverflowError:  # before year 1
            raise UsageError(f"--since {shown}: reaches back before year 1", hint=_SINCE_HINT) from None
    if re.fullmatch(r"[0-9]+[smhdw]", text):
        raise UsageError(f"--since {shown}: reaches back before year 1", hint=_SINCE_HINT)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {shown}: not a date or a duration", hint=_SINCE_HINT) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _warn_skipped(env: Environment, skipped) -> None:
    for s in skipped:
        env.warn(f"skipped archive entry {s.entry}: {s.reason}")


def _field(value, width: int = 200) -> str:
    """An archive value for the terminal: the archive may hold anything (terminal-safe, bounded)."""
    text = terminal_safe("" if value is None else str(value))
    return text if len(text) <= width else text[:width - 3] + "..."


@incidents_app.command("list")
def incidents_list(ctx: typer.Context, vm: Optional[int] = typer.Option(None, "--vm", help="Only this VM.", **VMID),
                   since: Optional[str] = typer.Option(None, "--since", help="Date/time (UTC) or e.g. 7d."),
                   as_json: bool = typer.Option(False, "--json")) -> int:
    """List archived incidents, oldest first. Corrupt archive entries are skipped and reported."""
    from ..pipeline.archive import Archive

    env = env_of(ctx)
    cfg = env.load_config()
    when = _since(since)
    items, skipped = Archive(Path(cfg.state_dir) / "archive").scan(vm, when)
    rows = []
    for inc in items:
        event = inc.event  # shape checked by the scan
        verdict = event.get("data", {}).get("verdict") or {}
        rows.append({"id": inc.key, "vmid": inc.vmid, "time": event["time"], "event_id": event["id"],
                     "verdict": verdict.get("kind"), "severity": verdict.get("severity"),
                     "summary": verdict.get("summary")})
    _warn_skipped(env, skipped)
    if as_json:
        env.out(json.dumps({"incidents": rows, "skipped": [s.to_json() for s in skipped]},
                           indent=2, ensure_ascii=True))
        return ExitStatus.SUCCESS
    if not rows:
        env.out("no incidents")
    for row in rows:
        env.out(f"{_field(row['id'])}  VM {row['vmid']:<6} {_field(row['verdict'] or '?', 40):<17} "
                f"{_field(row['summary'], 90)}")
    return ExitStatus.SUCCESS


@incidents_app.command("show")
def incidents_show(ctx: typer.Context, incident: str = typer.Argument(..., help="Incident id (or a prefix)."),
                   as_json: bool = typer.Option(False, "--json", help="Print the incident report (CloudEvent)."),
                   text: bool = typer.Option(True, "--text/--no-text", help="Include the record texts.")) -> int:
    """Show one archived incident: verdict, evidence, crash, records."""
    from ..pipeline.archive import Archive

    env = env_of(ctx)
    cfg = env.load_config()
    skipped: list = []
    try:
        inc = Archive(Path(cfg.state_dir) / "archive").get(incident, skipped)
    finally:
        _warn_skipped(env, skipped)
    event = inc.event
    if as_json:
        env.out(json.dumps(event, indent=2, ensure_ascii=True))
        return ExitStatus.SUCCESS
    data = event.get("data", {})
    verdict = data.get("verdict") or {}
    safe = _field  # every value here came from a guest, or from whoever wrote the archive
    env.out(f"incident {safe(inc.key)}  (event {safe(event['id'])})")
    env.out(f"VM {inc.vmid}  time {safe(event['time'])}")
    env.out(f"verdict: {safe(verdict.get('kind'))} ({safe(verdict.get('severity'))}, "
            f"{safe(verdict.get('confidence'))} confidence): {safe(verdict.get('summary'))}")
    sig = data.get("signature") or {}
    if sig:
        env.out(f"signature: {safe(sig.get('chromeos'))}  duphash {safe(sig.get('abrt_duphash'))}")
    env.out("evidence:")
    for e in data.get("evidence", []):
        env.out(f"  [{safe(e.get('source'))}] {safe(e.get('suggests') or '-')}: {safe(e.get('summary'), 1000)}")
    records, bad = inc.read_records()
    _warn_skipped(env, bad)
    env.out(f"records ({len(records)}): " + ", ".join(safe(n) for n in records))
    if text:
        for name, data_bytes in records.items():
            env.out(f"\n==> {safe(name)} <==")
            env.out(terminal_safe(data_bytes.decode("utf-8", "replace")).rstrip("\n"))
    return ExitStatus.SUCCESS


def reboot_command(ctx: typer.Context, vmid: int = typer.Argument(..., help="VM id.", **VMID),
                   reason: str = typer.Option(..., "--reason", help="Why (recorded as the boot's end)."),
                   as_json: bool = typer.Option(False, "--json")) -> int:
    """Reboot a guest with a recorded reason: the next verdict is ``orderly_reboot: REASON``."""
    from ..errors import GuestError
    from ..pipeline.collect import VmState
    from ..pipeline.handles import open_guest, where_is
    from ..pve.api import connect
    from ..pve.inventory import locate

    env = env_of(ctx)
    cfg = env.load_config()
    reason = reason.strip()
    if not reason or len(reason) > 500:
        raise UsageError("--reason must be 1-500 characters")
    api = connect(cfg)
    ref = locate(api, vmid)
    where = where_is(cfg, api, ref.node, vmid, status=ref.status)
    if not where.running:
        raise GuestError(f"VM {vmid} is {where.status}, not running", hint="start it; there is nothing to reboot")
    guest = open_guest(cfg, api, ref)  # any backend: the reboot itself goes through the guest
    state = VmState(Path(cfg.state_dir) / "vms")
    plan = {"reason": reason, "time": time.time(), "user": _who(env)}
    try:
        # Recorded before the reboot, so the verdict of the next collection can use it.
        with state.locked(vmid):
            state.update(vmid, planned_reboot=plan)
        # In the guest's own pstore too, where its kernel has pmsg (skipped where it has not).
        pmsg = guest.write_pmsg(f"pvepstore: planned reboot: {reason}")
        plan["boot_id"] = guest.reboot()
    finally:
        guest.close()
    if as_json:
        env.out(json.dumps({"vmid": vmid, **plan, "pmsg": pmsg}, indent=2, ensure_ascii=True))
    else:
        env.out(f"VM {vmid}: rebooting; reason recorded: {terminal_safe(reason)}"
                + {"written": " (and in the guest's /dev/pmsg0)",
                   "failed": " (writing it to the guest's /dev/pmsg0 failed)"}.get(pmsg, ""))
    return ExitStatus.SUCCESS


def _who(env: Environment) -> str:
    return env.environ.get("SUDO_USER") or env.environ.get("USER") or getpass.getuser()


def install_timer(ctx: typer.Context,
                  unit_dir: Path = typer.Option(Path("/etc/systemd/system"), "--unit-dir",
                                                help="Where to write the units."),
                  enable: bool = typer.Option(True, "--enable/--no-enable",
                                              help="Reload systemd and enable the timer.")) -> int:
    """Install and enable pvepstore-sweep.service + .timer (a sweep every 5 minutes)."""
    env = env_of(ctx)
    program = shutil.which("pvepstore") or shutil.which(os.path.basename(env.program_name))
    if not program:
        raise ConfigError("cannot find the pvepstore program on PATH",
                          hint="install pvepstore (pip install .) so that `pvepstore` is on PATH")
    _unit_dir_ok(unit_dir)
    units = resources.files("pvepstore.data").joinpath("systemd")
    for name in ("pvepstore-sweep.service", "pvepstore-sweep.timer"):
        text = units.joinpath(name).read_text().replace("@PVEPSTORE@", os.path.abspath(program))
        target = unit_dir / name
        if target.is_dir():
            raise UsageError(f"--unit-dir {unit_dir}: {name} there is a directory",
                             hint="remove it, or pass another --unit-dir")
        try:
            target.write_text(text)
        except OSError as exc:
            raise InputError(f"cannot write {target}: {exc.strerror}",
                             hint="install-timer writes to /etc/systemd/system: run it as root") from None
        env.out(f"wrote {target}")
    if enable:
        if not shutil.which("systemctl"):
            raise InputError("systemctl not found: the units are written but not enabled",
                             hint="enable them by hand, or use contrib/pvepstore.cron")
        for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "pvepstore-sweep.timer"]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise InputError(f"{' '.join(cmd)} failed: {terminal_safe(proc.stderr.strip())[:200]}",
                                 hint="is systemd running here?")
        env.out("enabled pvepstore-sweep.timer")
    return ExitStatus.SUCCESS


def _unit_dir_ok(unit_dir: Path) -> None:
    """``--unit-dir``: an existing directory, or one that can be created (a clean error otherwise)."""
    if unit_dir.exists() and not unit_dir.is_dir():
        raise UsageError(f"--unit-dir {unit_dir}: exists and is not a directory",
                         hint="pass a directory, e.g. /etc/systemd/system")
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a parent is a file
        raise UsageError(f"--unit-dir {unit_dir}: a parent of it is not a directory") from None
    except NotADirectoryError:
        raise UsageError(f"--unit-dir {unit_dir}: a parent of it is not a directory") from None
    except OSError as exc:
        raise InputError(f"cannot create --unit-dir {unit_dir}: {exc.strerror}",
                         hint="install-timer writes to /etc/systemd/system: run it as root") from None
