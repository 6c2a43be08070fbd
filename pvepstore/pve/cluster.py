"""The cluster's view of VMs that decides what may move them: HA resources and replication jobs.

Both are read once per run (one call each, not per VM).  ``None`` means "could not be read":
callers treat it as unknown, never as "not HA-managed" -- a wrong "no" would let ``backend:
auto`` give an HA resource a device that forbids its migration.
"""

from __future__ import annotations

from typing import Iterable

from ..errors import PveError
from .api import PveApi
from .inventory import VmRef


def ha_vmids(api: PveApi, vms: Iterable[VmRef] = ()) -> set[int] | None:
    """VM ids that are HA resources (``GET /cluster/ha/resources``, Sys.Audit on /).  Without that
    privilege: the ``hastate`` that ``/cluster/resources`` shows per VM (``vms``), when it was listed."""
    try:
        items = api.get("cluster/ha/resources")
    except PveError:
        vms = list(vms)
        if not vms:
            return None
        return {v.vmid for v in vms if v.hastate}
    out = set()
    for item in items or []:
        sid = str(item.get("sid", "")) if isinstance(item, dict) else ""
        kind, _, name = sid.rpartition(":")  # "vm:101", "ct:200", or a bare "101" (a VM)
        if kind in ("", "vm") and name.isdigit():
            out.add(int(name))
    return out


def replicated_vmids(api: PveApi) -> set[int] | None:
    """Guests with a replication job (``GET /cluster/replication``; PVE lists the jobs of the VMs the
    token may audit).  A disabled job counts: it is there to move the VM once enabled."""
    try:
        jobs = api.get("cluster/replication")
    except PveError:
        return None
    return {int(j["guest"]) for j in jobs or [] if isinstance(j, dict) and str(j.get("guest", "")).isdigit()}
