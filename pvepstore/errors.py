"""The one exception hierarchy of pvepstore.

Every failure that is the user's to fix (bad input, bad configuration, an
unreachable guest) is raised as a subclass of :class:`PvepstoreError` carrying a
one-line message and a hint.  Only the CLI translates these into terminal output
and exit codes (``pvepstore.cli.status``); library code never prints or exits.
"""

from __future__ import annotations


class PvepstoreError(Exception):
    """Base class: a one-line ``message`` plus an optional ``hint``."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(PvepstoreError):
    """Arguments that cannot work together (e.g. a layout the kernel refuses)."""


class InputError(PvepstoreError):
    """An input file or device cannot be read at all.

    Malformed *content* is not an error: readers attach findings to their result.
    """


class ConfigError(PvepstoreError):
    """The configuration file or a configuration value is invalid."""


class GuestError(PvepstoreError):
    """A guest cannot be reached or refused an operation (SSH, host key, sudo)."""


class PveError(PvepstoreError):
    """The Proxmox API (or pvesh) refused a request or a task failed."""


class VmBusyError(PvepstoreError):
    """A VM is running, locked (``lock:``/``vmstate:``) or its config flock is held."""
