"""Offline read/clear of a powered-off VM's pstore volume, with real-kernel images as the volumes."""

from __future__ import annotations

import fcntl
import os

import pytest

from pvepstore.errors import InputError, PveError, VmBusyError
from pvepstore.pve import hostvol, offline, state
from pvepstore.pve.hostvol import resolve_volume
from tests.conftest import load_fixtures

FIXTURES = {f.name: f for f in load_fixtures()}
# pstore disks only: ramoops (ivshmem) fixtures are read by tests/pve/test_ivshmem.py
WITH_RECORDS = [n for n, f in FIXTURES.items() if f.kernel_view and f.meta.get("format", "pstore_blk") == "pstore_blk"]


def pstore_vm(fake, unpack_dir, fixture="oops-deflate", vmid=100, storage="local-lvm", node=None,
              record_params=True, **vm_kw):
    """A stopped VM whose pstore volume holds a real-kernel fixture image."""
    fake.add_vm(vmid, node=node, **vm_kw)
    fx = FIXTURES[fixture]
    vol = fake.allocate(storage, vmid, 1 << 20)
    fake.place_image(vol.volid, fx.unpack(unpack_dir))
    fake.set_config(vmid, virtio1=f"{vol.volid},backup=0,discard=on,replicate=0,serial=pvepstore,size=1M")
    if fake.storages[storage]["type"] in ("lvm", "lvmthin"):
        fake.set_active(vol.volid, False)  # as after the VM stopped / a host reboot
    cfg = fake.load_config()
    if record_params:
        state.update(cfg, vmid, provision={"volid": vol.volid, "blk_params": fx.params.to_json()})
    return cfg, vol, fx


@pytest.mark.parametrize("name", WITH_RECORDS)
def test_offline_read_equals_the_kernel_view(fakepve, unpack_dir, name):
    if FIXTURES[name].meta.get("offset"):
        pytest.skip("partitioned pstore disks are not provisioned by pvepstore")
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir, name)
    runner = fakepve.lvm_runner()
    got = offline.read_offline(cfg, 100, runner=runner)
    assert got.layout_source == "recorded"
    assert {r.name: r.data for r in got.result.records} == fx.kernel_view
    # the thin LV was inactive: activated for the read, deactivated afterwards
    assert [t[0][:2] for t in runner.transcript] == [("lvs", "--noheadings"), ("lvchange", "-ay"),
                                                     ("lvchange", "-an")]
    assert not fakepve.volumes[vol.volid].active


def test_discovery_without_a_provision_record(fakepve, unpack_dir):
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir, "oops-deflate", record_params=False)
    got = offline.read_offline(cfg, 100, runner=fakepve.lvm_runner())
    assert got.layout_source == "discovered"
    assert {r.name: r.data for r in got.result.records} == fx.kernel_view


def test_active_lv_is_left_active(fakepve, unpack_dir):
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir)
    fakepve.set_active(vol.volid, True)
    runner = fakepve.lvm_runner()
    offline.read_offline(cfg, 100, runner=runner)
    assert [t[0][0] for t in runner.transcript] == ["lvs"] and fakepve.volumes[vol.volid].active


def test_offline_clear_writes_exactly_the_kernels_erase(fakepve, unpack_dir):
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir, "oops-deflate")
    before = fakepve.volume_bytes(vol.volid)
    got = offline.read_offline(cfg, 100, clear=["dmesg-pstore_blk-0"], runner=fakepve.lvm_runner())
    assert got.cleared == ["dmesg-pstore_blk-0"]
    after = fakepve.volume_bytes(vol.volid)
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    zone0 = 0  # kmsg_size=64 on a 1 MiB disk: dmesg zone 0 starts the device
    assert changed and set(changed) <= set(range(zone0 + 4, zone0 + 8))
    assert after[zone0 + 4:zone0 + 8] == b"\0\0\0\0"
    # the kernel's own erase (fixture "erase": rm dmesg-pstore_blk-0) left the same header
    erased = FIXTURES["erase"].unpack(unpack_dir).read_bytes()
    assert erased[zone0:zone0 + 12] == after[zone0:zone0 + 12]
    again = offline.read_offline(cfg, 100, runner=fakepve.lvm_runner())
    assert [r.name for r in again.result.records] == ["dmesg-pstore_blk-1"]
    assert again.result.records[0].data == fx.kernel_view["dmesg-pstore_blk-1"]


def test_clear_all_and_unknown_names(fakepve, unpack_dir):
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir, "oops-deflate")
    with pytest.raises(InputError, match="no record named"):
        offline.read_offline(cfg, 100, clear=["dmesg-pstore_blk-9"], runner=fakepve.lvm_runner())
    got = offline.read_offline(cfg, 100, clear=True, runner=fakepve.lvm_runner())
    assert sorted(got.cleared) == sorted(fx.kernel_view)
    assert not offline.read_offline(cfg, 100, runner=fakepve.lvm_runner()).result.records


def test_refused_while_qemu_runs(fakepve, unpack_dir):
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir)
    before = fakepve.volume_bytes(vol.volid)
    fakepve.start_qemu(100)
    runner = fakepve.lvm_runner()
    with pytest.raises(VmBusyError, match="running"):
        offline.read_offline(cfg, 100, clear=True, runner=runner)
    assert fakepve.volume_bytes(vol.volid) == before and not runner.transcript
    fakepve.stop_qemu(100)
    # a stale pidfile naming a process that is not this VM's QEMU does not count as running
    fakepve.paths.vm_pidfile(100).write_text(f"{os.getpid()}\n")
    offline.read_offline(cfg, 100, runner=fakepve.lvm_runner())


@pytest.mark.parametrize("key,value,text", [("lock", "backup", "locked"),
                                            ("vmstate", "local-lvm:vm-100-state-suspend-2024", "hibernated")])
def test_refused_when_config_is_locked(fakepve, unpack_dir, key, value, text):
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir)
    fakepve.set_config(100, **{key: value})
    with pytest.raises(VmBusyError, match=text):
        offline.read_offline(cfg, 100, runner=fakepve.lvm_runner())


def test_refused_while_pve_holds_the_config_flock(fakepve, unpack_dir):
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir)
    lock = fakepve.paths.vm_lock(100)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as PVE::QemuConfig->lock_config does
    try:
        with pytest.raises(VmBusyError, match="config lock"):
            offline.read_offline(cfg, 100, runner=fakepve.lvm_runner(), timeout=0.2)
    finally:
        os.close(fd)
    offline.read_offline(cfg, 100, runner=fakepve.lvm_runner())


def test_lock_is_held_during_the_read(fakepve, unpack_dir):
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir)
    lock = fakepve.paths.vm_lock(100)
    with offline.open_volume(cfg, 100, fakepve.lvm_runner()):
        fd = os.open(lock, os.O_WRONLY | os.O_APPEND)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)


def test_refused_on_a_node_that_does_not_own_the_vm(tmp_path, unpack_dir):
    from tests.fakepve.plugin import FakePveFixture
    fake = FakePveFixture(tmp_path, nodes=("pve1", "pve2")).start()
    try:
        cfg, vol, fx = pstore_vm(fake, unpack_dir, node="pve2")
        with pytest.raises(PveError, match="belongs to node pve2") as info:
            offline.read_offline(cfg, 100, runner=fake.lvm_runner())
        assert "pve2" in info.value.hint
    finally:
        fake.stop()


# -- host paths per storage type ----------------------------------------------------------

def test_volume_paths_per_storage_type(fakepve):
    fakepve.add_storage("thick", "lvm", vgname="vg0", content="images")
    fakepve.add_storage("tank", "zfspool", pool="rpool/data", content="images")
    fakepve.add_storage("nas", "nfs", server="192.0.2.5", export="/x", content="images")
    fakepve.add_storage("bt", "btrfs", path="/srv/btrfs", content="images")
    fakepve.add_storage("ceph", "rbd", pool="rbd", content="images")
    storages = hostvol.load_storages(fakepve.paths)
    root = fakepve.host_root
    cases = {
        "local:100/vm-100-disk-1.raw": root / "var/lib/vz/images/100/vm-100-disk-1.raw",
        "local-lvm:vm-100-disk-1": root / "dev/pve/vm-100-disk-1",
        "thick:vm-100-disk-1": root / "dev/vg0/vm-100-disk-1",
        "tank:vm-100-disk-1": root / "dev/zvol/rpool/data/vm-100-disk-1",
        "nas:100/vm-100-disk-1.raw": root / "mnt/pve/nas/images/100/vm-100-disk-1.raw",
        "bt:100/vm-100-disk-1.raw": root / "srv/btrfs/images/100/vm-100-disk-1/disk.raw",
    }
    for volid, path in cases.items():
        assert resolve_volume(fakepve.paths, storages, volid).path == path, volid
    with pytest.raises(PveError, match="rbd"):
        resolve_volume(fakepve.paths, storages, "ceph:vm-100-disk-1")
    with pytest.raises(InputError, match="qcow2"):
        resolve_volume(fakepve.paths, storages, "local:100/vm-100-disk-1.qcow2")
    with pytest.raises(InputError, match="format=qcow2"):
        resolve_volume(fakepve.paths, storages, "local-lvm:vm-100-disk-1", "qcow2")
    with pytest.raises(PveError, match="parse"):
        resolve_volume(fakepve.paths, storages, "local:100/../../etc/shadow")


@pytest.mark.parametrize("storage,typ,opts,expected", [
    ("local", "dir", {}, []),
    ("tank", "zfspool", {"pool": "rpool/data"}, []),
    ("thick", "lvm", {"vgname": "vg0"},
     [(("lvs", "--noheadings", "--options", "lv_attr", "vg0/vm-100-disk-1"), 0, "  -wi-------\n", ""),
      (("lvchange", "-aey", "vg0/vm-100-disk-1"), 0, "", ""),
      (("lvchange", "-aln", "vg0/vm-100-disk-1"), 0, "", "")]),
    ("local-lvm", "lvmthin", {},
     [(("lvs", "--noheadings", "--options", "lv_attr", "pve/vm-100-disk-1"), 0, "  Vwi---tz--\n", ""),
      (("lvchange", "-ay", "-K", "pve/vm-100-disk-1"), 0, "", ""),
      (("lvchange", "-an", "pve/vm-100-disk-1"), 0, "", "")]),
])
def test_offline_read_per_storage_type_with_recorded_commands(fakepve, unpack_dir, storage, typ, opts, expected):
    if storage not in fakepve.storages:
        fakepve.add_storage(storage, typ, content="images", **opts)
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir, storage=storage)
    runner = fakepve.lvm_runner()
    got = offline.read_offline(cfg, 100, runner=runner)
    assert {r.name: r.data for r in got.result.records} == fx.kernel_view
    expected = [(tuple(a.replace("vm-100-disk-1", vol.name) for a in argv), *rest) for argv, *rest in expected]
    assert runner.transcript == expected


def test_failed_activation_is_a_pve_error(fakepve, unpack_dir):
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir)

    class Broken:
        def run(self, argv, timeout=30.0):
            from pvepstore.pve.commands import CommandResult
            if argv[0] == "lvs":
                return CommandResult(list(argv), 0, "  Vwi---tz--\n", "")
            return CommandResult(list(argv), 5, "", "  Activation of logical volume pve/vm-100-disk-1 is prohibited\n")

    with pytest.raises(PveError, match="prohibited"):
        offline.read_offline(cfg, 100, runner=Broken())
