"""The process environment the CLI runs in, injectable for tests (httpie's Environment)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Mapping, TextIO


@dataclass
class Environment:
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    program_name: str = "pvepstore"

    @property
    def stdout_isatty(self) -> bool:
        isatty = getattr(self.stdout, "isatty", None)
        return bool(isatty and isatty())

    def out(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def error(self, message: str, hint: str | None = None) -> None:
        self.stderr.write(f"{self.program_name}: error: {message}\n")
        if hint:
            self.stderr.write(f"{self.program_name}: hint: {hint}\n")
