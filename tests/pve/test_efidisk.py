"""efidisk0 read on the host (fake PVE node, real OVMF vars file, real qemu-img qcow2)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pvepstore.backends.efi_pstore import check_vm_config
from pvepstore.errors import PveError, VmBusyError
from pvepstore.pve import efidisk
from pvepstore.pve.snapshot import snapshot

OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
pytestmark = pytest.mark.skipif(not OVMF_VARS.exists() or not shutil.which("qemu-img"),
                                reason="needs ovmf and qemu-img")


def efi_vm(fake, storage, fmt="raw", vmid=100, running=False):
    fake.add_vm(vmid, {"bios": "ovmf"})
    vol = fake.allocate(storage, vmid, OVMF_VARS.stat().st_size, fmt=fmt)
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(OVMF_VARS), str(vol.backing)],
                       check=True)
    else:
        fake.place_image(vol.volid, OVMF_VARS)
    fake.set_config(vmid, efidisk0=f"{vol.volid},efitype=4m,pre-enrolled-keys=1,size=528K")
    if running:
        fake.start_qemu(vmid)
    return fake.load_config(), vol


@pytest.mark.parametrize("storage,fmt", [("local", "qcow2"), ("local", "raw"), ("local-lvm", "raw")])
def test_stopped_vm_reads_the_guest_view(fakepve, storage, fmt):
    cfg, vol = efi_vm(fakepve, storage, fmt)
    before = fakepve.volume_bytes(vol.volid)
    got = efidisk.read_efidisk(cfg, 100, runner=fakepve.lvm_runner())
    assert got.image == OVMF_VARS.read_bytes() and not got.running and got.disk.format == fmt
    assert fakepve.volume_bytes(vol.volid) == before  # never written


def test_running_vm_snapshot_agrees_twice(fakepve):
    cfg, vol = efi_vm(fakepve, "local", "qcow2", running=True)
    got = efidisk.read_efidisk(cfg, 100)
    assert got.running and got.consistent and got.reads == 2 and got.image == OVMF_VARS.read_bytes()


def test_snapshot_bounded_when_the_store_keeps_changing():
    n = iter(range(100))
    snap = snapshot(lambda: bytes([next(n)]), tries=4, pause=0)
    assert not snap.consistent and snap.reads == 4
    seq = iter([b"a", b"b", b"b"])
    snap = snapshot(lambda: next(seq), tries=5, pause=0)
    assert snap.consistent and snap.reads == 3 and snap.data == b"b"


def test_locked_vm_is_refused(fakepve):
    cfg, vol = efi_vm(fakepve, "local", "raw")
    fakepve.set_config(100, lock="backup")
    with pytest.raises(VmBusyError, match="locked"):
        efidisk.read_efidisk(cfg, 100)


def test_provision_checks_bios_and_efidisk():
    with pytest.raises(PveError, match="bios is seabios: efi_pstore needs OVMF"):
        check_vm_config({}, 100)
    with pytest.raises(PveError, match="no efidisk0: OVMF gets a fresh vars file"):
        check_vm_config({"bios": "ovmf"}, 100)
    d = check_vm_config({"bios": "ovmf", "efidisk0": "local:100/vm-100-disk-0.qcow2,efitype=4m,size=528K"}, 100)
    assert (d.volid, d.format) == ("local:100/vm-100-disk-0.qcow2", "qcow2")


def test_records_of_a_real_fixture(fakepve, tmp_path):
    efi = pytest.importorskip("pvepstore.pstore.efi")
    fixtures = sorted(Path(__file__).resolve().parents[1].glob("fixtures/efi-*/image.xz"))
    if not fixtures:
        pytest.skip("no efi fixtures yet")
    import lzma
    raw = tmp_path / "vars.raw"
    raw.write_bytes(lzma.decompress(fixtures[0].read_bytes()))
    fakepve.add_vm(100, {"bios": "ovmf"})
    vol = fakepve.allocate("local", 100, raw.stat().st_size, fmt="qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(vol.backing)], check=True)
    fakepve.set_config(100, efidisk0=f"{vol.volid},efitype=4m,size=528K")
    got = efidisk.read_efidisk(fakepve.load_config(), 100)
    result = efidisk.parse(got)
    from pvepstore.pstore.source import BytesSource
    direct = efi.read_efi(BytesSource(raw.read_bytes()))
    assert [r.data for r in result.records] == [r.data for r in direct.records]
    assert result.records


def test_read_only_formats_resolve_qcow2_files_only(fakepve):
    from pvepstore.errors import InputError
    from pvepstore.pve.hostvol import load_storages, resolve_volume

    storages = load_storages(fakepve.paths)
    vol = resolve_volume(fakepve.paths, storages, "local:100/vm-100-disk-0.qcow2", "qcow2",
                         read_only_formats=("qcow2",))
    assert vol.path.name == "vm-100-disk-0.qcow2" and vol.path.parent.name == "100" and vol.lv is None
    with pytest.raises(InputError, match="is a qcow2 volume: only raw volumes"):  # pstore_blk's writers
        resolve_volume(fakepve.paths, storages, "local:100/vm-100-disk-0.qcow2")
    with pytest.raises(InputError, match="is a vmdk volume: only raw/qcow2 volumes"):
        resolve_volume(fakepve.paths, storages, "local:100/vm-100-disk-0.vmdk", read_only_formats=("qcow2",))
    # on LVM a qcow2 volume is not a qcow2 file: refused with a hint for the read-only consumer
    with pytest.raises(InputError, match="format=qcow2: only raw volumes") as err:
        resolve_volume(fakepve.paths, storages, "local-lvm:vm-100-disk-0.qcow2", "qcow2",
                       read_only_formats=("qcow2",))
    assert "qm disk move" in err.value.hint


def test_efidisk_volume_of_qcow2_and_refusals(fakepve):
    from pvepstore.errors import InputError

    cfg, vol = efi_vm(fakepve, "local", "qcow2")
    disk = efidisk.find_efidisk({"efidisk0": f"{vol.volid},efitype=4m"})
    got = efidisk.volume_of(cfg, disk)
    assert got.volid == vol.volid and got.path == vol.backing and got.type == "dir"
    with pytest.raises(InputError, match="format vmdk: only raw and qcow2"):
        efidisk.volume_of(cfg, efidisk.find_efidisk({"efidisk0": "local:100/vm-100-disk-0.vmdk"}))
    with pytest.raises(InputError, match="format=qcow2: only raw volumes"):
        efidisk.volume_of(cfg, efidisk.find_efidisk({"efidisk0": "local-lvm:vm-100-disk-0,format=qcow2"}))
