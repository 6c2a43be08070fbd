"""Every Proxmox host path pvepstore touches, under one configurable root.

On a real node the root is ``/``.  Tests, staging hosts and dry runs point it
at a directory that mimics a node (config key ``host_root``, environment
``PVEPSTORE_HOST_ROOT``).  No other module spells one of these paths: they ask
a :class:`HostPaths`.  pvepstore's own config and state directories are not
Proxmox paths and are configured separately (``state_dir``, ``--config``).

What is re-rooted: exactly the paths built here, i.e. the Proxmox host paths
pvepstore knows by itself (``/etc/pve/...``, ``/var/lock/qemu-server``,
``/var/run/qemu-server``, ``/dev/shm/pve-shm-*``, ``/dev/<vg>/<lv>``,
``/dev/zvol``, ``/mnt/pve/<storage>``), the paths Proxmox itself names
(``path`` of a storage in storage.cfg, a volume's device path), and the CA of
``api.verify_ssl: proxmox`` (the default: ``/etc/pve/pve-root-ca.pem``).
What is not: any path the operator writes in pvepstore's configuration
(``api.verify_ssl: /some/ca.pem``, ``state_dir``, ``ssh.key_file``,
``ssh.known_hosts``, ``api.token_value_file``, sink paths) is used exactly as
given — an operator staging with ``host_root`` already wrote the full path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "/"
ENV_ROOT = "PVEPSTORE_HOST_ROOT"
PROXMOX_CA = "proxmox"  # api.verify_ssl: the node's cluster CA, pve_root_ca under the root


@dataclass(frozen=True)
class HostPaths:
    root: Path = Path(DEFAULT_ROOT)

    def _at(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    # -- /etc/pve (pmxcfs) -------------------------------------------------------
    @property
    def pve(self) -> Path:
        return self._at("/etc/pve")

    @property
    def members(self) -> Path:
        """Cluster membership and this node's name (``.members``)."""
        return self._at("/etc/pve/.members")

    @property
    def pve_root_ca(self) -> Path:
        return self._at("/etc/pve/pve-root-ca.pem")

    @property
    def storage_cfg(self) -> Path:
        return self._at("/etc/pve/storage.cfg")

    @property
    def vmlist(self) -> Path:
        """Cluster-wide VM → node map (``.vmlist``)."""
        return self._at("/etc/pve/.vmlist")

    def node_dir(self, node: str) -> Path:
        return self._at(f"/etc/pve/nodes/{node}")

    def ca_file(self, setting: str) -> Path:
        """The CA file of ``api.verify_ssl``: ``proxmox`` is the node's cluster CA
        (:attr:`pve_root_ca`, under the root); any other value is the operator's
        own path, taken as given (never re-rooted)."""
        return self.pve_root_ca if setting == PROXMOX_CA else Path(setting)

    def vm_config(self, node: str, vmid: int) -> Path:
        return self._at(f"/etc/pve/nodes/{node}/qemu-server/{int(vmid)}.conf")

    # -- qemu-server runtime -------------------------------------------------------
    def vm_lock(self, vmid: int) -> Path:
        """PVE's per-VM config flock (PVE::QemuConfig->lock_config)."""
        return self._at(f"/var/lock/qemu-server/lock-{int(vmid)}.conf")

    def vm_pidfile(self, vmid: int) -> Path:
        return self._at(f"/var/run/qemu-server/{int(vmid)}.pid")

    def ivshmem_file(self, name: str) -> Path:
        """The shared-memory file QEMU backs an ``ivshmem: name=...`` device with."""
        return self._at(f"/dev/shm/pve-shm-{name}")

    def ivshmem_keep(self, name: str) -> Path:
        """pvepstore's second link to that file: it outlives PVE's unlink at VM stop."""
        return self._at(f"/dev/shm/pvepstore-keep-{name}")

    # -- storages -----------------------------------------------------------------
    def storage_path(self, path: str) -> Path:
        """A path taken from storage.cfg (dir/nfs/cifs mount points, snippets)."""
        return self._at(path)

    def storage_mount(self, storeid: str) -> Path:
        """Default mount point of a network storage without ``path`` (nfs, cifs, cephfs)."""
        return self._at(f"/mnt/pve/{storeid}")

    def lvm_device(self, vgname: str, lvname: str) -> Path:
        """An LV's device node (present only while the LV is active)."""
        return self._at(f"/dev/{vgname}/{lvname}")

    def zvol(self, pool: str, name: str) -> Path:
        return self._at(f"/dev/zvol/{pool}/{name}")

    def device(self, path: str) -> Path:
        """A block device path (``/dev/<vg>/<lv>``, ``/dev/zvol/...``, ``/dev/rbd-pve/...``)."""
        return self._at(path)
