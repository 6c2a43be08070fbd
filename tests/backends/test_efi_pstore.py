"""The efi_pstore backend on the fake PVE node: handles per VM state, deferred clearing, blockers."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from pvepstore.backends import registry
from pvepstore.backends.base import VmWhere
from pvepstore.backends.efi_pstore import EfidiskVm, pending_clear, store_line
from pvepstore.errors import UsageError
from pvepstore.pipeline.handles import BackendChoice

OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def test_registered_with_the_protocol():
    b = registry.get("efi_pstore")
    assert b.name in registry.names() and b.guest_rules.TARGET == b.name
    assert b.proxmox_side.startswith("nothing")


@pytest.mark.skipif(not OVMF_VARS.exists() or not shutil.which("qemu-img"), reason="needs ovmf")
def test_stopped_vm_is_read_from_efidisk_and_cleared_later(fakepve):
    fakepve.add_vm(100, {"bios": "ovmf"})
    vol = fakepve.allocate("local-lvm", 100, OVMF_VARS.stat().st_size)
    fakepve.place_image(vol.volid, OVMF_VARS)
    fakepve.set_config(100, efidisk0=f"{vol.volid},efitype=4m,size=4M")
    cfg = fakepve.load_config()
    b = registry.get("efi_pstore")
    ref = SimpleNamespace(vmid=100, node="pve1", name="vm100", status="stopped")
    where = VmWhere(100, "pve1", "stopped", False, True)
    h = b.open_records(cfg, None, ref, where, BackendChoice("efi_pstore", "provision", True))
    assert isinstance(h, EfidiskVm)
    rec = SimpleNamespace(name="dmesg-efi-171234567800001", sha256="ab" * 32)
    before = fakepve.volume_bytes(vol.volid)
    h.clear([rec])
    assert pending_clear(cfg, 100) == {rec.name: rec.sha256}
    assert fakepve.volume_bytes(vol.volid) == before  # the vars file is never written
    with pytest.raises(UsageError, match="only through the guest"):
        b.read_host(cfg, 100, clear=True)
    # another node's VM: not read here
    with pytest.raises(Exception, match="node"):
        b.open_records(cfg, None, ref, VmWhere(100, "pve2", "stopped", False, False),
                       BackendChoice("efi_pstore", "provision", True))


def test_store_line_warns_above_the_threshold(fakepve):
    cfg = fakepve.load_config(efi_pstore={"warn_fill_percent": 50})
    res = SimpleNamespace(store=SimpleNamespace(store_size=262144, used_bytes=200000, pstore_bytes=15000))
    assert store_line(cfg, res).startswith("efidisk0 store 76% used, 15 KB pstore (WARNING: above 50%")
    res.store.used_bytes = 50000
    assert "WARNING" not in store_line(cfg, res)
