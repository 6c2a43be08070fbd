"""Which VMs exist, where they run, which are in scope, and this node's name."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..config import Config
from ..errors import ConfigError, PveError
from .api import PveApi


@dataclass(frozen=True)
class VmRef:
    vmid: int
    node: str
    name: str | None = None
    status: str = "unknown"  # from /cluster/resources: never proof of "powered off"
    tags: tuple[str, ...] = ()
    lock: str | None = None
    hastate: str | None = None  # set when HA manages the VM (/cluster/resources' own field)


def local_node(cfg: Config) -> str:
    """``node`` from the config, else ``nodename`` from ``.members`` under host_root."""
    if cfg.node:
        return cfg.node
    path = cfg.paths.members
    try:
        data = json.loads(path.read_text())
        name = data["nodename"]
    except FileNotFoundError:
        raise ConfigError(f"cannot tell this node's name: {path} does not exist",
                          hint="run pvepstore on a Proxmox VE node, set `node:` in the config, "
                               "or point host_root at a simulated node") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read this node's name from {path}: {exc}",
                          hint="set `node:` in the config") from None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: no nodename", hint="set `node:` in the config")
    return name


def split_tags(text: str | None) -> tuple[str, ...]:
    return tuple(t for t in re.split(r"[;,\s]+", text or "") if t)


def list_vms(api: PveApi) -> list[VmRef]:
    """Every QEMU VM of the cluster (templates and containers left out)."""
    out = []
    for r in api.get("cluster/resources", type="vm") or []:
        if r.get("type") != "qemu" or r.get("template"):
            continue
        out.append(VmRef(int(r["vmid"]), r["node"], r.get("name"), r.get("status", "unknown"),
                         split_tags(r.get("tags")), r.get("lock"), r.get("hastate") or None))
    return sorted(out, key=lambda v: v.vmid)


def in_scope(cfg: Config, vms: list[VmRef]) -> list[VmRef]:
    scope = cfg.scope
    if scope.all:
        return list(vms)
    wanted = set(scope.vms) | set(cfg.vms)
    return [v for v in vms if v.vmid in wanted or (scope.tag and scope.tag in v.tags)]


def locate(api: PveApi, vmid: int) -> VmRef:
    for vm in list_vms(api):
        if vm.vmid == vmid:
            return vm
    raise PveError(f"VM {vmid} does not exist (or is a template/container, or the token cannot see it)",
                   hint="`qm list` on the nodes; the token needs VM.Audit on /vms")
