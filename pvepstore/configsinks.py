"""The keys of each ``sinks:`` entry, checked like every other configuration key.

One table per sink type, in the same :class:`~pvepstore.configcheck.Spec`
terms as the rest of the configuration; a test keeps each table equal to the
fields of its sink class in ``pipeline/sinks.py``.  ``pipeline.sinks.build_sinks``
then only builds (reads ``auth_header_file``, refuses duplicate names).
"""

from __future__ import annotations

from typing import Any

from .configcheck import Kind, Spec, check, key_name, shown
from .errors import ConfigError

DAY = 86400.0
# A sink's name is a file name in the outbox's per-sink state: one safe path component.
_NAME = Spec(Kind.STR, pattern=r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", form="a name of A-Z a-z 0-9 _ . - (1-64)")
_HTTP = {
    "url": Spec(Kind.URL),
    "name": _NAME,
    "headers": Spec(Kind.HEADERS),
    "auth_header_file": Spec(Kind.PATH),
    "verify_ssl": Spec(Kind.CA),
    "timeout": Spec(Kind.SECONDS, hi=3600),
}
SINK_KEYS: dict[str, dict[str, Spec]] = {
    "webhook": _HTTP,
    "alertmanager": {**_HTTP, "resolve_after": Spec(Kind.SECONDS, hi=365 * DAY)},
    "journald": {"name": _NAME, "socket_path": Spec(Kind.PATH), "syslog_path": Spec(Kind.PATH)},
    "textfile": {"path": Spec(Kind.PATH), "name": _NAME},
    "pve-notify": {"name": _NAME, "timeout": Spec(Kind.SECONDS, hi=3600),
                   "min_severity": Spec(Kind.CHOICE, choices=("info", "warning", "error", "critical"))},
}
REQUIRED = {"webhook": ("url",), "alertmanager": ("url",), "journald": (), "textfile": ("path",), "pve-notify": ()}
# Keys of the configuration that are not constructor arguments of the sink class.
NOT_FIELDS = frozenset({"auth_header_file"})


def check_sink(prefix: str, spec: Any) -> None:
    """Refuse a ``sinks[i]`` entry with a wrong type, a missing key or a wrong value."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{prefix}: must be a mapping with a type (got {shown(spec)})")
    kind = check(f"{prefix}.type", spec.get("type"), Spec(Kind.CHOICE, choices=tuple(SINK_KEYS)))
    keys = SINK_KEYS[kind]
    for key, value in spec.items():
        if key == "type":
            continue
        if not isinstance(key, str) or key not in keys:
            raise ConfigError(f"{prefix}.{key_name(key)}: unknown key for a {kind} sink",
                              hint=f"valid keys: type, {', '.join(sorted(keys))}")
        check(f"{prefix}.{key}", value, keys[key])
    for key in REQUIRED[kind]:
        if key not in spec:
            raise ConfigError(f"{prefix}.{key}: missing (a {kind} sink needs it)",
                              hint="see config.example.yaml for the keys of each sink type")


def check_sinks(raw: list) -> None:
    """Every entry (:func:`check_sink`), then what building them would refuse, in the same order and
    words as :func:`pvepstore.pipeline.sinks.build_sinks`: an unreadable ``auth_header_file``, a name
    used twice (config checks here so that it does not import the pipeline)."""
    from pathlib import Path

    for i, spec in enumerate(raw):
        check_sink(f"sinks.{i}", spec)
    names: set[str] = set()
    for i, spec in enumerate(raw):
        kind = spec["type"]
        header_file = spec.get("auth_header_file")
        if header_file:
            try:
                Path(header_file).read_text()
            except OSError as exc:
                raise ConfigError(f"sinks.{i}.auth_header_file: cannot read {header_file}: {exc.strerror}") from None
        name = spec.get("name", kind if kind not in names else f"{kind}-{i}")
        if name in names:
            raise ConfigError(f"sinks.{i}.name: {name!r} is used twice")
        names.add(name)
