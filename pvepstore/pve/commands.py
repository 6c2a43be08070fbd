"""Running host commands (``lvs``, ``lvchange``) through one small interface.

Production uses :class:`SubprocessRunner`; tests pass a runner that answers
with recorded outputs (``tests/fakepve``'s ``FakeLvmRunner``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Protocol, Sequence

from ..errors import PveError


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> "CommandResult":
        if self.returncode != 0:
            detail = (self.stderr or self.stdout).strip().splitlines()
            raise PveError(f"{what}: `{' '.join(self.argv)}` failed ({self.returncode})"
                           + (f": {detail[-1]}" if detail else ""),
                           hint="run the command by hand as root on this node to see why")
        return self


class CommandRunner(Protocol):
    def run(self, argv: Sequence[str], *, timeout: float = 30.0) -> CommandResult: ...


class SubprocessRunner:
    """Runs commands locally without a shell; a missing program is a PveError."""

    def run(self, argv: Sequence[str], *, timeout: float = 30.0) -> CommandResult:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            raise PveError(f"`{argv[0]}` is not installed on this host",
                           hint="offline access to LVM volumes needs the lvm2 tools (run on the PVE node)") from None
        except subprocess.TimeoutExpired:
            raise PveError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s") from None
        return CommandResult(list(argv), proc.returncode, proc.stdout, proc.stderr)
