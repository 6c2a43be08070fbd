"""Backend name -> class.  The built-ins are loaded lazily by module path, so that config
validation and the CLI can list the names without importing the pipeline (no upward import)."""

from __future__ import annotations

import importlib
from enum import Enum
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import Backend


class BackendName(str, Enum):
    """The built-in backends (a closed set; tests may register more)."""

    PSTORE_BLK = "pstore_blk"
    IVSHMEM = "ivshmem"
    EFI_PSTORE = "efi_pstore"


DEFAULT = BackendName.PSTORE_BLK.value  # the reader of a VM nothing was set up for (it needs no device)
AUTO = "auto"  # the config's default: provision picks per VM (:mod:`.auto`); not a backend itself

_BUILTIN = {BackendName.PSTORE_BLK.value: "pvepstore.backends.pstore_blk",
            BackendName.IVSHMEM.value: "pvepstore.backends.ivshmem",
            BackendName.EFI_PSTORE.value: "pvepstore.backends.efi_pstore"}
_EXTRA: dict[str, type] = {}
_LOADED: dict[str, "Backend"] = {}


def names() -> tuple[str, ...]:
    """Every backend name, built-ins first (the order of --backend's choices and the docs)."""
    return (*_BUILTIN, *(n for n in _EXTRA if n not in _BUILTIN))


def choices() -> tuple[str, ...]:
    """What ``backend:`` in the config may say: ``auto`` or a backend's name."""
    return (AUTO, *names())


def get(name: str) -> "Backend":
    """The backend called ``name`` (one shared instance); UsageError for an unknown name."""
    name = str(getattr(name, "value", name))
    if name not in _LOADED:
        if name in _EXTRA:
            _LOADED[name] = _EXTRA[name]()
        elif name in _BUILTIN:
            _LOADED[name] = importlib.import_module(_BUILTIN[name]).BACKEND
        else:
            raise UsageError(f"unknown backend {name!r}", hint=" or ".join(names()))
    return _LOADED[name]


def register(cls: type) -> type:
    """Add a backend class (its ``name`` attribute); usable as a decorator.  For tests and plugins."""
    _EXTRA[cls.name] = cls
    _LOADED.pop(cls.name, None)
    return cls


def unregister(name: str) -> None:
    _EXTRA.pop(name, None)
    _LOADED.pop(name, None)


def for_manifest(manifest: dict | None, *, default: str) -> "Backend":
    """The backend a guest's manifest was written for; ``default`` (the configured one) for a guest
    pvepstore has not configured or a name this version does not know."""
    from ..guest.manifest import manifest_backend  # guest is below backends: no cycle at import time

    name = manifest_backend(manifest)
    return get(name if name in names() else default)


def all_backends() -> list["Backend"]:
    return [get(n) for n in names()]
