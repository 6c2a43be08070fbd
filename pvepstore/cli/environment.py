"""The process environment the CLI runs in, injectable for tests (httpie's Environment)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Mapping, TextIO

from ..text import terminal_safe


@dataclass
class Environment:
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    program_name: str = "pvepstore"
    config_path: str | None = None  # --config; None: $PVEPSTORE_CONFIG or the default

    def load_config(self):
        """The validated configuration (loaded once per run)."""
        if getattr(self, "_config", None) is None:
            from ..config import load_config

            self._config = load_config(self.config_path, self.environ)
        return self._config

    @property
    def stdout_isatty(self) -> bool:
        isatty = getattr(self.stdout, "isatty", None)
        return bool(isatty and isatty())

    def out(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def error(self, message: str, hint: str | None = None) -> None:
        self._diagnostic("error", message, hint)

    def warn(self, message: str, hint: str | None = None) -> None:
        self._diagnostic("warning", message, hint)

    def _diagnostic(self, level: str, message: str, hint: str | None) -> None:
        # Messages quote paths, ids and values from arguments, files and guests: whatever they
        # hold, the terminal sees no escape sequence and each diagnostic stays one line.
        self.stderr.write(f"{self.program_name}: {level}: {_one_line(message)}\n")
        if hint:
            self.stderr.write(f"{self.program_name}: hint: {_one_line(hint)}\n")


def _one_line(text: str) -> str:
    return terminal_safe(str(text)).replace("\n", "\\n").replace("\t", " ")


def env_of(ctx: "typer.Context") -> Environment:
    """The Environment main() put in the click context (a default one when run bare)."""
    root = ctx.find_root()
    if not isinstance(root.obj, Environment):
        root.obj = Environment()
    return root.obj
