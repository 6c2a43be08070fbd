"""One typed check for every configuration value: type, range, finiteness, form.

Every key of the configuration is described by a :class:`Spec` (attached to
the dataclass field in ``config.py``, or in a sink's table) and validated by
:func:`check`, so no key can slip through with the wrong type: ``nan``/``inf``
are never a number of seconds, a list is never a string, a relative path is
never a path.  Messages name the key and show the offending value through
:func:`shown` (bounded and terminal-safe: the value may be a 1 GiB string or
hold escape sequences).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .hostpaths import PROXMOX_CA
from .text import terminal_safe

SHOWN_MAX = 80  # characters of a value echoed in a message
STR_MAX = 4096  # no configuration string is longer; keeps every message and lookup bounded
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")  # an RFC 9110 token


class Kind(Enum):
    BOOL = "true or false"
    INT = "an integer"
    SECONDS = "a finite positive number of seconds"
    STR = "a non-empty string"
    PATH = "an absolute path"
    URL = "an http:// or https:// URL"
    CHOICE = "one of"
    VMIDS = "a list of VM ids (100..999999999)"
    CA = "true, false or the absolute path of a CA file"
    HEADERS = "a mapping of HTTP header names to strings"


@dataclass(frozen=True)
class Spec:
    kind: Kind
    lo: float | None = None  # inclusive bounds of INT/SECONDS
    hi: float | None = None
    multiple: int | None = None  # INT: a multiple of this
    choices: tuple[str, ...] = ()  # CHOICE
    pattern: str | None = None  # STR: must fullmatch
    form: str | None = None  # STR with pattern: what the pattern means, for the message
    optional: bool = False  # null is accepted (means "default behaviour", e.g. found through Proxmox)
    proxmox_ca: bool = False  # CA: also the keyword PROXMOX_CA
    hint: str | None = None

    def describe(self) -> str:
        if self.kind is Kind.CHOICE:
            return "one of " + ", ".join(self.choices)
        if self.kind is Kind.CA and self.proxmox_ca:
            return f"true, false, {PROXMOX_CA} (the node's cluster CA) or the absolute path of a CA file"
        text = self.form or self.kind.value
        if self.kind in (Kind.INT, Kind.SECONDS) and (self.lo is not None or self.hi is not None):
            text += f" from {_num(self.lo)} to {_num(self.hi)}"
        if self.multiple:
            text += f", a multiple of {self.multiple}"
        return text + (" or null" if self.optional else "")


def _num(x: float | None) -> str:
    if x is None:
        return "any"
    return str(int(x)) if float(x).is_integer() else str(x)


def shown(value: Any) -> str:
    """A value for a message: its repr, cut to SHOWN_MAX characters, terminal-safe.

    Containers are not repr'd in full: an alias bomb or a deep structure would
    make the repr itself unbounded (and a recursive one never ends).
    """
    if isinstance(value, dict):
        text = f"a mapping of {len(value)} keys"
    elif isinstance(value, (list, tuple, set, frozenset)):
        text = f"a list of {len(value)} items"
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        text = f"an integer of {value.bit_length()} bits"
    elif isinstance(value, (str, bytes)) and len(value) > 4 * SHOWN_MAX:
        text = repr(value[:SHOWN_MAX])
    else:
        text = repr(value)
    text = terminal_safe(text)
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX - 3] + "..."


def key_name(key: Any) -> str:
    """A mapping key as part of a dotted key name (keys come from the file too)."""
    text = key if isinstance(key, str) else shown(key)
    text = terminal_safe(text)
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX - 3] + "..."


def refuse(key: str, spec: Spec, value: Any) -> ConfigError:
    return ConfigError(f"{key}: must be {spec.describe()} (got {shown(value)})", hint=spec.hint)


def check(key: str, value: Any, spec: Spec) -> Any:
    """``value`` if it is what ``spec`` says (numbers normalised), else a ConfigError naming ``key``."""
    if value is None:
        if spec.optional:
            return None
        raise refuse(key, spec, value)
    kind = spec.kind
    if kind is Kind.BOOL:
        if isinstance(value, bool):
            return value
    elif kind is Kind.INT:
        if isinstance(value, int) and not isinstance(value, bool) and _in_range(value, spec):
            if not spec.multiple or value % spec.multiple == 0:
                return value
    elif kind is Kind.SECONDS:
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
                and (not isinstance(value, int) or value.bit_length() < 64)
                and math.isfinite(value) and value > 0 and _in_range(value, spec)):
            return float(value)
    elif kind is Kind.CHOICE:
        if isinstance(value, str) and value in spec.choices:
            return value
    elif kind is Kind.VMIDS:
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                           and 100 <= v <= 999_999_999 for v in value):
            return tuple(value)
    elif kind is Kind.CA:
        if isinstance(value, bool) or (spec.proxmox_ca and value == PROXMOX_CA) or _is_path(value):
            return value
    elif kind is Kind.HEADERS:
        if isinstance(value, dict) and len(value) <= 64 and all(
                isinstance(k, str) and HEADER_NAME.fullmatch(k) and _is_text(v) for k, v in value.items()):
            return dict(value)
    elif kind is Kind.PATH:
        if _is_path(value):
            return value
    elif kind is Kind.URL:
        if _is_text(value) and not re.search(r"\s", value) and _is_url(value):
            return value
    elif _is_text(value) and (spec.pattern is None or re.fullmatch(spec.pattern, value)):
        return value
    raise refuse(key, spec, value)


def _in_range(value: float, spec: Spec) -> bool:
    return (spec.lo is None or value >= spec.lo) and (spec.hi is None or value <= spec.hi)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= STR_MAX and not _CONTROL.search(value)


def _is_path(value: Any) -> bool:
    return _is_text(value) and os.path.isabs(value)


def _is_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        return False
