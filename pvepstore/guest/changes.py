"""What a plan is made of and what applying or verifying it gave: data, no decisions.

A :class:`Plan` is a list of :class:`Change` rows the guest's change script carries out
in order (see :data:`pvepstore.guest.scripts.CHANGE`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from .model import Problem
from .scripts import MANIFEST, STATE_DIR


@dataclass(frozen=True)
class Change:
    op: str  # mkdir | write | link | remove | restore | rmdir | run
    path: str  # file path, or the action name for "run"
    reason: str
    sha_before: str = "-"
    arg: str = "-"  # write: MODE:B64, link: target, restore: backup, run: argument
    arg2: str = "-"

    def args(self) -> list[str]:
        if self.op == "run":
            return ["run", self.path, self.arg, self.arg2]
        if self.op in ("write", "link", "remove"):
            return [self.op, self.path, self.sha_before, self.arg]
        return [self.op, self.path, "-", self.arg]

    def describe(self) -> str:
        what = {
            "mkdir": f"create directory {self.path}",
            "write": f"{'create' if self.sha_before == '-' else 'rewrite'} {self.path}",
            "link": f"link {self.path} -> {self.arg}",
            "remove": f"remove {self.path} (backed up)",
            "restore": f"restore {self.path} from the backup" if self.arg != "-" else f"remove {self.path}",
            "rmdir": f"remove directory {self.path} if empty",
            "run": f"run {self.path}" + (f" {self.arg}" if self.arg != "-" else ""),
        }[self.op]
        return f"{what}: {self.reason}" if self.reason else what

    def to_json(self) -> dict:
        d = {"op": self.op, "path": self.path, "reason": self.reason}
        if self.op == "write":
            d["content"] = base64.b64decode(self.arg.split(":", 1)[1]).decode("utf-8", "replace")
        elif self.op in ("link", "restore") and self.arg != "-":
            d["target"] = self.arg
        return d


def run(op: str, reason: str, arg: str = "-", arg2: str = "-") -> Change:
    """One of the change script's fixed actions (``run NAME ARG ARG2``)."""
    return Change("run", op, reason, arg=arg, arg2=arg2)


def file_arg(content: bytes, mode: str = "644") -> str:
    return f"{mode}:{base64.b64encode(content).decode()}"


@dataclass
class Plan:
    kind: str  # "apply" | "undo"
    changes: list[Change] = field(default_factory=list)
    blockers: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reboot_required: bool = False
    settings: dict | None = None
    backend: str = "pstore_blk"  # a label: which backend the plan sets up
    cold_start_required: bool = False  # the device appears only when the VM is started anew
    module: str = ""  # the kernel module that takes pstore's slot after the reboot
    cold_start_note: str = ""  # why a cold start is needed (said when cold_start_required)

    @property
    def empty(self) -> bool:
        return not self.changes

    def describe(self) -> list[str]:
        lines = []
        for b in self.blockers:
            lines.append(f"BLOCKED: {b.message}" + (f" ({b.fix})" if b.fix else ""))
        if not self.changes and not self.blockers:
            lines.append("nothing to do: the guest is already as planned" if self.kind == "apply"
                         else "nothing to undo: pvepstore has not changed this guest")
        lines += [c.describe() for c in self.changes if not c.path.startswith(STATE_DIR + "/")]
        if any(c.path == MANIFEST for c in self.changes):
            lines.append(f"{'record' if self.kind == 'apply' else 'remove'} the changes in {MANIFEST}")
        lines += [f"note: {n}" for n in self.notes]
        if self.reboot_required:
            lines.append(f"a reboot is needed before {self.module or 'the backend'} can take the backend slot")
        if self.cold_start_required and self.cold_start_note:
            lines.append(self.cold_start_note)
        return lines

    def to_json(self) -> dict:
        return {"kind": self.kind, "empty": self.empty, "changes": [c.to_json() for c in self.changes],
                "blockers": [b.to_json() for b in self.blockers], "notes": self.notes,
                "reboot_required": self.reboot_required, "settings": self.settings, "backend": self.backend,
                "cold_start_required": self.cold_start_required}

    def script_args(self) -> list[str]:
        out: list[str] = []
        for c in self.changes:
            out += c.args()
        return out


@dataclass
class ApplyResult:
    ok: bool
    dry_run: bool
    done: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ok": self.ok, "dry_run": self.dry_run, "done": self.done, "failures": self.failures,
                "mismatches": self.mismatches}


@dataclass
class VerifyResult:
    ok: bool
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ok": self.ok, "checks": [{"check": n, "ok": ok, "detail": d} for n, ok, d in self.checks],
                "problems": self.problems}
