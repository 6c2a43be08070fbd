"""Exit statuses, and the single place where exceptions become one."""

from __future__ import annotations

from enum import IntEnum, unique

from ..errors import ConfigError, GuestError, InputError, PveError, PvepstoreError, UsageError, VmBusyError


@unique
class ExitStatus(IntEnum):
    SUCCESS = 0
    ERROR = 1  # an unexpected failure (a bug): the message says so
    USAGE = 2  # bad arguments (also click's own usage errors)
    INPUT = 3  # an input file or device cannot be read
    CONFIG = 4  # the configuration is invalid
    GUEST = 5  # a guest is unreachable or refused (SSH, host key, sudo)
    PVE = 6  # the Proxmox API refused a request or a task failed
    BUSY = 7  # the VM is running, locked or its config lock is held: try again later
    PARTIAL = 8  # a sweep finished, but some VMs failed (see the per-VM results)
    CTRL_C = 130


def status_for(exc: PvepstoreError) -> ExitStatus:
    if isinstance(exc, UsageError):
        return ExitStatus.USAGE
    if isinstance(exc, InputError):
        return ExitStatus.INPUT
    if isinstance(exc, ConfigError):
        return ExitStatus.CONFIG
    if isinstance(exc, GuestError):
        return ExitStatus.GUEST
    if isinstance(exc, PveError):
        return ExitStatus.PVE
    if isinstance(exc, VmBusyError):
        return ExitStatus.BUSY
    return ExitStatus.ERROR
