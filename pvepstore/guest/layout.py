"""Where pvepstore's own guest files live, and the pieces every backend writes the same way.

A backend's wanted files are pvepstore's own: under ``/etc/pvepstore/`` or ``/etc/systemd/``,
or the shared ``/etc/modprobe.d/pvepstore.conf``.  The legacy scan never touches them and a
switch of backends removes (or restores) the ones the new backend does not want.
"""

from __future__ import annotations

from .scripts import MANIFEST, STATE_DIR

MODPROBE_CONF = "/etc/modprobe.d/pvepstore.conf"
PSTORE_DROPIN = "/etc/systemd/pstore.conf.d/99-pvepstore.conf"
UNIT_DIR = "/etc/systemd/system/"
HEADER = "# Managed by pvepstore; `pvepstore guest undo` restores the previous state.\n"
EFI_PSTORE_OFF = ("# efi_pstore would take pstore's single backend slot on UEFI guests; pstore_disable keeps\n"
                  "# it out whatever the load order (a blacklist only stops `modprobe -b` callers)\n"
                  "options efi_pstore pstore_disable=Y\n")
DROPIN = (HEADER + "# Keep records on the pstore disk: the host collects and clears them.\n"
          "[PStore]\nUnlink=no\n")
DROPIN_REASON = "keep systemd-pstore from erasing the records"

__all__ = ["DROPIN", "DROPIN_REASON", "EFI_PSTORE_OFF", "HEADER", "MANIFEST", "MODPROBE_CONF", "PSTORE_DROPIN",
           "STATE_DIR", "UNIT_DIR", "is_own_path", "is_unit"]


def is_own_path(path: str) -> bool:
    """A file only pvepstore writes (never an old ramoops/pstore setup to clean)."""
    return (path == MODPROBE_CONF or path.startswith(("/etc/systemd/", "/etc/pvepstore/", STATE_DIR + "/")))


def is_unit(path: str) -> bool:
    """A systemd unit or its enable link: systemd must reload after it changes."""
    return path.startswith(UNIT_DIR)
