"""Compatibility: a backend NAME to its guest functions, for callers that still pass ``backend="..."``.

This is the one place in ``pvepstore.guest`` that maps a backend name ("pstore_blk",
"ivshmem") to the module with its guest rules (``blk_wishes``, ``ramoops_wishes``).  The
backends registry replaces it; until then ``Guest.probe(backend=...)``, ``Guest.plan``
without ``wishes=``, ``Guest.verify(backend=...)`` and the old ``make_plan``/``verify_report``
signatures go through here.  The engine itself is :mod:`pvepstore.guest.plan`.
"""

from __future__ import annotations

from types import ModuleType

from . import blk_wishes, ramoops_wishes
from .changes import Plan, VerifyResult
from .layout import MODPROBE_CONF, PSTORE_DROPIN
from .manifest import manifest_backend
from .plan import make_plan as _engine_plan
from .probe import ProbeReport

BY_NAME: dict[str, ModuleType] = {blk_wishes.TARGET: blk_wishes, ramoops_wishes.TARGET: ramoops_wishes}
NAMES = tuple(BY_NAME)

# path names the real-VM tier (tests/vm) imports from here
UNIT, UNIT_LINK = blk_wishes.UNIT, blk_wishes.UNIT_LINK
MANAGED = tuple(dict.fromkeys(w.path for mod in BY_NAME.values()
                              for w in mod.files(mod.settings(ProbeReport(serial="pvepstore", disk_bytes=None)))))

__all__ = ["BY_NAME", "MANAGED", "MODPROBE_CONF", "NAMES", "PSTORE_DROPIN", "UNIT", "UNIT_LINK", "by_name",
           "make_plan", "verify_report"]


def by_name(name: str) -> ModuleType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}") from None


def make_plan(r: ProbeReport, *, kmsg_size: int = 64, max_reason: int | None = None,
              remove_legacy: bool = False, now: str | None = None, backend: str | None = None) -> Plan:
    """The plan for the backend the report was assessed for (``backend`` must agree)."""
    backend = backend or r.target
    if backend != r.target:
        raise ValueError(f"the probe was made for the {r.target} backend, not {backend}: probe again")
    mod = by_name(backend)
    wishes = mod.wishes(r, mod.settings(r, kmsg_size=kmsg_size, max_reason=max_reason))
    return _engine_plan(r, wishes, remove_legacy=remove_legacy, now=now)


def verify_report(r: ProbeReport) -> VerifyResult:
    """Verify the backend the guest's manifest names (without one: the report's target)."""
    # as before the registry: anything but a known name is verified as pstore_blk
    return BY_NAME.get(manifest_backend(r.manifest) or r.target, blk_wishes).verify(r)
