"""Fake PVE routes for cluster configuration: HA resources and replication jobs (registered into ROUTES).

State: ``pve.ha_resources`` (sid -> its properties, as ``ha-manager add`` writes them to
/etc/pve/ha/resources.cfg) and ``pve.replication`` (job id -> properties, as
/etc/pve/replication.cfg).  Answers and permissions as apidata.js gives them:
``/cluster/ha/resources`` needs Sys.Audit on /; ``/cluster/replication`` is open to every user
and lists the jobs of the guests the caller has VM.Audit on.
"""

from __future__ import annotations

from .server import ROUTES, PveFailure, _permissions


def add_ha_resource(pve, vmid: int, state: str = "started", **props) -> str:
    """Make VM ``vmid`` an HA resource (``ha-manager add vm:<vmid>``)."""
    sid = f"vm:{int(vmid)}"
    with pve.lock:
        if not hasattr(pve, "ha_resources"):
            pve.ha_resources = {}
        pve.ha_resources[sid] = {"sid": sid, "type": "vm", "state": state, **props}
    return sid


def add_replication(pve, vmid: int, target: str, jobnum: int = 0, **props) -> str:
    """A storage replication job for VM ``vmid`` (``pvesr create-local-job <vmid>-<n> <target>``)."""
    job = f"{int(vmid)}-{int(jobnum)}"
    with pve.lock:
        if not hasattr(pve, "replication"):
            pve.replication = {}
        pve.replication[job] = {"id": job, "guest": int(vmid), "jobnum": int(jobnum), "target": target,
                                "type": "local", "schedule": "*/15", **props}
    return job


def ha_state(pve, vmid: int) -> str | None:
    """The ``hastate`` /cluster/resources shows for the VM (set only for HA resources)."""
    got = getattr(pve, "ha_resources", {}).get(f"vm:{int(vmid)}")
    return got.get("state") if got else None


def _require(pve, user: str, path: str, priv: str) -> None:
    if priv not in _permissions(pve, {"path": path}, user)[path]:
        raise PveFailure(403, f"Permission check failed ({path}, {priv})")


def _ha_resources(pve, p: dict, user: str) -> list[dict]:
    _require(pve, user, "/", "Sys.Audit")
    return [dict(r) for _, r in sorted(getattr(pve, "ha_resources", {}).items())]


def _replication(pve, p: dict, user: str) -> list[dict]:
    out = []
    for _, job in sorted(getattr(pve, "replication", {}).items()):
        path = f"/vms/{job['guest']}"
        if "VM.Audit" in _permissions(pve, {"path": path}, user)[path]:
            out.append(dict(job))
    return out


ROUTES[("GET", "/cluster/ha/resources")] = _ha_resources
ROUTES[("GET", "/cluster/replication")] = _replication
