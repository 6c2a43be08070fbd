"""pvepstore: crash and reboot reasons for Proxmox VE guests, kept on a pstore disk."""

__version__ = "0.1.0"
