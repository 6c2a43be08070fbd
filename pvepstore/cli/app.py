"""The typer application and ``main(args, env)``: the only code that knows argv and exit codes."""

from __future__ import annotations

import sys
import traceback
from typing import Sequence

import typer

from .. import __version__
from ..errors import PvepstoreError
from .environment import Environment, env_of  # noqa: F401 (env_of: re-exported)
from .status import ExitStatus, status_for

app = typer.Typer(
    name="pvepstore",
    help="Crash and reboot reasons for Proxmox VE guests, kept on a pstore disk.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(ctx: typer.Context, value: bool) -> None:
    if value:
        env_of(ctx).out(f"pvepstore {__version__}")
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit."),
          config: str = typer.Option(None, "--config", metavar="FILE",
                                     help="Configuration file (default: $PVEPSTORE_CONFIG or "
                                          "/etc/pvepstore/config.yaml).")) -> None:
    """pvepstore reads, explains and forwards the pstore records of Proxmox VE guests."""
    if config is not None:
        env_of(ctx).config_path = config


# The commands, registered here (their modules do not know the app: no import cycle).
from . import collect, explain, guest, hook, notify, parse, pve  # noqa: E402

COMMANDS = [("parse", parse.parse_command, {}), ("explain", explain.explain_command, {}),
            ("collect", collect.collect_command, {}), ("sweep", collect.sweep_command, {}),
            ("reboot", collect.reboot_command, {}), ("install-timer", collect.install_timer, {}),
            ("notify-test", notify.notify_test_command, {}),
            ("hook", hook.hook_command, {"hidden": True}),
            ("provision", pve.provision_command, {}), ("unprovision", pve.unprovision_command, {}),
            ("status", pve.status_command, {}), ("read", pve.read_command, {})]
app.add_typer(collect.incidents_app, name="incidents")
for _name, _function, _options in COMMANDS:
    app.command(_name, **_options)(_function)
app.add_typer(guest.guest_app, name="guest")


def main(args: Sequence[str] | None = None, env: Environment | None = None) -> ExitStatus:
    """Run the CLI with ``args`` (default: sys.argv[1:]) and return its exit status."""
    env = env or Environment()
    args = list(sys.argv[1:] if args is None else args)
    command = typer.main.get_command(app)
    if "_PVEPSTORE_COMPLETE" in env.environ:  # bash asks for completions (contrib/pvepstore.bash-completion)
        from typer.completion import completion_init

        completion_init()
        try:
            command.main(args=args, prog_name=env.program_name, standalone_mode=False, obj=env)
        except SystemExit as done:
            return ExitStatus(done.code or 0) if (done.code or 0) in ExitStatus._value2member_map_ else ExitStatus.ERROR
        return ExitStatus.SUCCESS
    try:
        rv = command.main(args=args, prog_name=env.program_name, standalone_mode=False, obj=env)
    except PvepstoreError as exc:
        env.error(exc.message, exc.hint)
        return status_for(exc)
    except (typer.Abort, KeyboardInterrupt):
        env.error("interrupted")
        return ExitStatus.CTRL_C
    except BrokenPipeError:
        return ExitStatus.SUCCESS  # `pvepstore parse ... | head` is fine
    except SystemExit as exc:
        # click turns a write into a closed pipe (EPIPE) into sys.exit(1) after wrapping the streams
        # in its PacifyFlushWrapper: the reader left early, which is not pvepstore's failure
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            return ExitStatus.SUCCESS
        raise
    except Exception as exc:
        # Click's usage errors (typer may vendor its own click: match the API, not the class).
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            if exc.exit_code == ExitStatus.USAGE:
                env.error(exc.format_message(), "run with --help for usage")
                return ExitStatus.USAGE
            env.error(exc.format_message())
            return ExitStatus.ERROR
        # Anything else is a bug: say so plainly, with the traceback for the report.
        traceback.print_exc(file=env.stderr)
        env.error(f"internal error: {type(exc).__name__}: {exc}",
                  "this is a bug in pvepstore; please report it with the traceback above")
        return ExitStatus.ERROR
    if isinstance(rv, int):
        return ExitStatus(rv) if rv in ExitStatus._value2member_map_ else ExitStatus.ERROR
    return ExitStatus.SUCCESS
