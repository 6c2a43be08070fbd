"""Finding a guest's SSH address: config → cloud-init ipconfigN → guest agent (matched to the NIC MAC)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..config import SshConfig
from ..errors import GuestError, PveError
from .api import PveApi
from .vmconfig import ip_configs, nic_macs


@dataclass(frozen=True)
class GuestAddress:
    host: str
    source: str  # config | cloud-init ipconfigN | guest agent (netN <mac>)


def _usable(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified)


def resolve_address(api: PveApi, node: str, vmid: int, ssh: SshConfig, config: dict) -> GuestAddress:
    if ssh.host:
        return GuestAddress(ssh.host, "config")
    for n, ipc in ip_configs(config):
        for key in ("ip", "ip6"):
            value = ipc.get(key, "")
            if "/" in value and _usable(value.split("/")[0]):
                return GuestAddress(value.split("/")[0], f"cloud-init ipconfig{n}")
    tried = []
    if config.get("agent", "0").split(",")[0] in ("1", "enabled=1"):
        try:
            reply = api.get(f"nodes/{node}/qemu/{vmid}/agent/network-get-interfaces")
            interfaces = reply.get("result", []) if isinstance(reply, dict) else []
        except PveError as exc:
            if getattr(exc, "status", None) in (401, 403):
                raise  # a missing privilege (VM.GuestAgent.Audit): its hint says which, not "set ssh.host"
            tried.append(f"guest agent: {exc.message.split(': ', 1)[-1]}")
            interfaces = []
        macs = nic_macs(config)
        by_mac = {str(i.get("hardware-address", "")).lower(): i for i in interfaces}
        for n in sorted(macs):
            iface = by_mac.get(macs[n])
            if iface is None:
                continue
            ips = [a for a in iface.get("ip-addresses", []) if _usable(str(a.get("ip-address", "")))]
            ips.sort(key=lambda a: a.get("ip-address-type") != "ipv4")
            if ips:
                return GuestAddress(ips[0]["ip-address"], f"guest agent (net{n} {macs[n]})")
        if interfaces and not tried:
            tried.append("guest agent: no usable address on an interface with the MAC of a netN device")
    else:
        tried.append("guest agent: not enabled (agent: 1)")
    raise GuestError(f"cannot find an SSH address for VM {vmid} ({'; '.join(tried) or 'nothing to try'})",
                     hint=f"set vms.{vmid}.ssh.host in the config, give the VM a static cloud-init "
                          f"ipconfig0, or install and enable the QEMU guest agent")
