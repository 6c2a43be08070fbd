"""``pvepstore(1)`` in roff, generated from the CLI itself (``tools/manpage.py`` writes
``docs/pvepstore.1``; a test keeps the committed page equal to a fresh one).

Only the command tree's own data is used (names, docstrings, options, their help) -- never click's
rendered help, whose layout differs between click/typer versions -- so Debian 12's typer 0.7 and a
current one produce the same page.
"""

from __future__ import annotations

import re
from typing import Iterable

from .. import __version__
from ..pipeline.pvenotify import OVERRIDE_TEMPLATES, TEMPLATE, VENDOR_TEMPLATES

DATE = "2026-12"  # the page's date: bumped with the version, not with each build (reproducible)

PREAMBLE = """\
pvepstore runs on a Proxmox VE node and makes every Linux VM leave a crash or reboot reason that
survives the reboot: it picks a capture backend per VM (pstore_blk on a small virtual disk, ramoops
on an ivshmem device, efi_pstore in an OVMF VM's efidisk0), configures the guest, reads the records
through the guest or straight from the host, explains them (a verdict from the records, the guest's
boot history, Proxmox's tasks and the node's journal), archives them and hands them to the
configured sinks -- by default, on a Proxmox VE node, its own notification system."""

FILES = [
    ("/etc/pvepstore/config.yaml", "the configuration (see /usr/share/doc/pvepstore/config.example.yaml)"),
    ("/var/lib/pvepstore", "state: per-VM state, the incident archive, the outbox"),
    ("/usr/lib/systemd/system/pvepstore-sweep.timer", "the sweep every 5 minutes (enable it: "
     "systemctl enable --now pvepstore-sweep.timer)"),
    (f"/{OVERRIDE_TEMPLATES}/{TEMPLATE}-*.txt.hbs",
     "an admin's own copies of the notification templates (they take precedence)"),
    (f"/{VENDOR_TEMPLATES}/{TEMPLATE}-*.txt.hbs", "the packaged notification templates"),
]

EXIT = [(0, "success"), (1, "internal error (a bug)"), (2, "bad arguments"), (3, "an input cannot be read"),
        (4, "invalid configuration"), (5, "a guest is unreachable or refused"),
        (6, "the Proxmox API refused a request or a task failed"), (7, "the VM is running or locked: try later"),
        (8, "a sweep finished but some VMs failed; notify-test: some sinks failed"), (130, "interrupted")]


def esc(text: str) -> str:
    """Roff-safe text: backslashes doubled, a leading dot or quote neutralised, dashes kept."""
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln.startswith((".", "'")) else ln for ln in text.splitlines())


def _help(obj) -> str:
    text = (getattr(obj, "help", None) or "").strip()
    text = re.sub(r"``([^`]+)``|`([^`]+)`", lambda m: m.group(1) or m.group(2), text)
    return " ".join(text.split())


# typer may vendor its own click (0.29 does): the tree is read by duck type, never by click's classes.
def _is_argument(p) -> bool:
    return getattr(p, "param_type_name", "") == "argument"


def _is_group(cmd) -> bool:
    return isinstance(getattr(cmd, "commands", None), dict)


def _option_lines(cmd) -> Iterable[str]:
    for p in cmd.params:
        if getattr(p, "hidden", False) or _is_argument(p):
            continue
        names = ", ".join(p.opts + list(p.secondary_opts))
        metavar = "" if getattr(p, "is_flag", False) else f" {p.metavar or p.name.upper()}"
        yield ".TP"
        yield f"\\fB{esc(names)}\\fR{esc(metavar)}"
        yield esc(_help(p) or "")


def _usage(path: list[str], cmd) -> str:
    args = " ".join(f"{p.name.upper()}" if p.required else f"[{p.name.upper()}]"
                    for p in cmd.params if _is_argument(p))
    sub = " COMMAND" if _is_group(cmd) else ""
    return " ".join(["pvepstore", *path, "[OPTIONS]" + sub, args]).strip()


def _commands(group, path: list[str]) -> Iterable[tuple[list[str], object]]:
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if getattr(cmd, "hidden", False):
            continue
        yield path + [name], cmd
        if _is_group(cmd):
            yield from _commands(cmd, path + [name])


def render(command) -> str:
    """The page for the click command tree ``command`` (typer.main.get_command(app))."""
    out = [f'.TH PVEPSTORE 1 "{DATE}" "pvepstore {__version__}" "pvepstore manual"',
           ".SH NAME", "pvepstore \\- crash and reboot reasons for Proxmox VE guests",
           ".SH SYNOPSIS", f"\\fBpvepstore\\fR [\\fB\\-\\-config\\fR \\fIFILE\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
           ".SH DESCRIPTION", esc(PREAMBLE), ".SH GLOBAL OPTIONS", *_option_lines(command),
           ".SH COMMANDS"]
    for path, cmd in _commands(command, []):
        out += [".SS " + esc(" ".join(path)), f"\\fB{esc(_usage(path, cmd))}\\fR", ".PP", esc(_help(cmd))]
        if not _is_group(cmd):
            out += list(_option_lines(cmd))
    out += [".SH EXIT STATUS"]
    for code, what in EXIT:
        out += [".TP", f"\\fB{code}\\fR", esc(what)]
    out += [".SH FILES"]
    for path, what in FILES:
        out += [".TP", f"\\fI{esc(path)}\\fR", esc(what)]
    out += [".SH ENVIRONMENT", ".TP", "\\fBPVEPSTORE_CONFIG\\fR", "the configuration file, instead of "
            "/etc/pvepstore/config.yaml", ".SH SEE ALSO", "\\fBqm\\fR(1), \\fBpvesh\\fR(1), "
            "/usr/share/doc/pvepstore/README.md"]
    return "\n".join(out) + "\n"


def page() -> str:
    import typer

    from .app import app

    return render(typer.main.get_command(app))


COMPLETE_VAR = "_PVEPSTORE_COMPLETE"


def bash_completion() -> str:
    """The bash completion script (typer's, for prog name pvepstore): it asks the installed
    ``pvepstore`` for the candidates (``_PVEPSTORE_COMPLETE=complete_bash``, handled in ``main``)."""
    import contextlib
    import io
    import os

    import typer
    from typer.completion import completion_init

    from .app import app

    completion_init()
    out = io.StringIO()
    old = os.environ.get(COMPLETE_VAR)
    os.environ[COMPLETE_VAR] = "source_bash"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            typer.main.get_command(app).main(args=[], prog_name="pvepstore", standalone_mode=False)
    finally:
        if old is None:
            del os.environ[COMPLETE_VAR]
        else:
            os.environ[COMPLETE_VAR] = old
    return out.getvalue().strip() + "\n"
