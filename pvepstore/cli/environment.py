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
        self.stderr.write(f"{self.program_name}: error: {message}\n")
        if hint:
            self.stderr.write(f"{self.program_name}: hint: {hint}\n")
