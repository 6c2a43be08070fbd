"""Plain data shared by the probe, the rules and the plan engine (no logic, no imports of theirs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Problem.severity: blocker = apply refuses; fix = apply fixes it; consent = apply fixes it only
# with remove_legacy; warning = pvepstore cannot fix it; info = for the record


@dataclass(frozen=True)
class Problem:
    code: str
    severity: str
    message: str
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Capability:
    status: str  # "yes" | "no" | "unknown"
    note: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FileState:
    path: str
    sha256: str  # "link:TARGET" for symlinks
    mode: str = ""
    size: int = 0
    content: bytes | None = None  # None: larger than the probe's cap (or a symlink)
    link: str | None = None
