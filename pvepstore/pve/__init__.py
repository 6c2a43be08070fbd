"""The Proxmox VE side: API transports, inventory, the pstore disk, guest addresses,
host volumes, PVE's locks and offline access to a powered-off VM's pstore volume."""
