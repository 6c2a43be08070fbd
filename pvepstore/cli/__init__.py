"""The command-line interface: a thin layer over the library (argv, output, exit codes)."""

from .app import app, main
from .environment import Environment
from .status import ExitStatus

__all__ = ["Environment", "ExitStatus", "app", "main"]
