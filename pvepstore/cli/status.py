"""Exit statuses, and the single place where exceptions become one."""

from __future__ import annotations

from enum import IntEnum, unique

from ..errors import ConfigError, InputError, PvepstoreError, UsageError


@unique
class ExitStatus(IntEnum):
    SUCCESS = 0
    ERROR = 1  # an unexpected failure (a bug): the message says so
    USAGE = 2  # bad arguments (also click's own usage errors)
    INPUT = 3  # an input file or device cannot be read
    CONFIG = 4  # the configuration is invalid
    CTRL_C = 130


def status_for(exc: PvepstoreError) -> ExitStatus:
    if isinstance(exc, UsageError):
        return ExitStatus.USAGE
    if isinstance(exc, InputError):
        return ExitStatus.INPUT
    if isinstance(exc, ConfigError):
        return ExitStatus.CONFIG
    return ExitStatus.ERROR
