"""``pvepstore explain``: classify kernel log text (a saved dmesg, syslog, or an extracted pstore record)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

from ..analysis import extract_crashes
from ..analysis.limits import RECORD_TEXT_LIMIT
from ..analysis.evidence import log_evidence
from ..analysis.verdict import decide
from ..errors import InputError
from ..pstore.source import open_input
from ..text import terminal_safe
from .environment import env_of

MAX_BYTES = 64 * 1024 * 1024  # far beyond any kernel log; protects against a wrong argument (a disk image)


def _read(path: Path) -> str:
    # open_input: a FIFO, socket, tty or directory is refused before it is opened
    # (reading one would block forever or have side effects); exit 3 with a hint.
    fd = open_input(path, allow_block=False, hint="pass kernel log files, e.g. a saved dmesg")
    try:
        with open(fd, "rb", closefd=True) as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}",
                         hint="check the path and permissions") from None
    if len(data) > MAX_BYTES:
        raise InputError(f"{path} is larger than {MAX_BYTES // (1024 * 1024)} MiB",
                         hint="explain reads kernel log text; use `pvepstore parse` for a disk image")
    return data.decode("utf-8", errors="replace")


def explain_text(name: str, text: str) -> dict:
    """The explain document for one file (the --json shape)."""
    crashes = extract_crashes(text)
    verdict = decide(log_evidence(crashes, name=name))
    keys = ("kind", "title", "panic_message", "rip", "comm", "pid", "cpu", "kernel", "taint", "taint_flags",
            "frames", "modules", "duphash", "signature", "first_line", "line")
    doc = {
        "file": name,
        "crashes": [{k: c.to_json()[k] for k in keys} for c in crashes],
        "verdict": {k: v for k, v in verdict.to_json().items() if k != "evidence"},
    }
    if len(text) > RECORD_TEXT_LIMIT:
        # The analysis reads only the tail (limits.RECORD_TEXT_LIMIT): say so, never silently.
        doc["analysed_tail_chars"] = RECORD_TEXT_LIMIT
    return doc


def render(doc: dict) -> list[str]:
    """Human lines for one file's explain document (not yet terminal-safe)."""
    verdict = doc["verdict"]
    lines = [f"{doc['file']}: {verdict['kind']} ({verdict['severity']}, confidence {verdict['confidence']})"]
    if "analysed_tail_chars" in doc:
        lines.append(f"  note: only the last {doc['analysed_tail_chars'] >> 20} Mi characters of the text were analysed")
    if not doc["crashes"]:
        lines.append("  no kernel crash report found")
    for i, crash in enumerate(doc["crashes"], 1):
        lines.append(f"  [{i}] {crash['title']}  ({crash['kind']}, line {crash['line']})")
        if crash["panic_message"]:
            lines.append(f"      panic:     {crash['panic_message']}")
        if crash["rip"]:
            lines.append(f"      rip:       {crash['rip']}")
        who = ", ".join(x for x in (
            crash["comm"] and f"comm {crash['comm']}", crash["pid"] is not None and f"pid {crash['pid']}",
            crash["cpu"] is not None and f"cpu {crash['cpu']}") if x)
        if who:
            lines.append(f"      task:      {who}")
        if crash["kernel"]:
            lines.append(f"      kernel:    {crash['kernel']}")
        if crash["taint"]:
            flags = ", ".join(f"{t['flag']} {t['description']}" for t in crash["taint_flags"])
            lines.append(f"      tainted:   {crash['taint']}" + (f" ({flags})" if flags else ""))
        reliable = [f["function"] for f in crash["frames"] if f["reliable"] and f["function"]]
        rip_function = crash["rip"].split("+", 1)[0] if crash["rip"] else None
        if rip_function and reliable[:1] != [rip_function]:
            reliable.insert(0, rip_function)  # a modern "RIP: 0010:f+0x1/0x2" line is not a trace frame
        if reliable:
            shown = " < ".join(reliable[:6]) + (" < ..." if len(reliable) > 6 else "")
            lines.append(f"      trace:     {shown}")
        if crash["modules"]:
            mods = " ".join(crash["modules"][:12]) + (" ..." if len(crash["modules"]) > 12 else "")
            lines.append(f"      modules:   {mods}")
        lines.append(f"      signature: {crash['signature']}" +
                     (f"  duphash {crash['duphash']}" if crash["duphash"] else ""))
    return lines


def explain_command(
    ctx: typer.Context,
    # readable=False: explain opens the files itself (exit 3 with a hint, not click's exit 2)
    files: List[Path] = typer.Argument(..., help="Kernel log files: saved dmesg, syslog/journal, pstore records.",
                                       show_default=False, readable=False),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per file (a list for several)."),
) -> None:
    """Find and classify the kernel crash reports in log text files."""
    env = env_of(ctx)
    docs = [explain_text(str(path), _read(path)) for path in files]
    if as_json:
        # ensure_ascii: guest bytes reach the terminal only as \\u escapes
        env.out(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, ensure_ascii=True))
        return
    for i, doc in enumerate(docs):
        if i:
            env.out()
        for line in render(doc):
            env.out(terminal_safe(line))
