"""The pstore disk through the API: attach, idempotence, reattach, pending, detach."""

from __future__ import annotations

import pytest

from pvepstore.config import DiskConfig
from pvepstore.errors import PveError
from pvepstore.pve import api as pveapi
from pvepstore.pve.disks import detach_disk, ensure_disk, gib_fraction

DISK = DiskConfig()


@pytest.fixture
def api(fakepve):
    return pveapi.connect(fakepve.load_config())


def post_configs(fake):
    return [r for r in fake.calls("POST", "/config")]


def test_gib_fraction():
    assert gib_fraction(512) == "0.5" and gib_fraction(1024) == "1" and gib_fraction(4) == "0.00390625"


def test_attach_then_idempotent(fakepve, api):
    fakepve.add_vm(100)
    res = ensure_disk(api, "pve1", 100, DISK)
    assert (res.action, res.key, res.volid, res.pending) == ("attached", "virtio0", "local-lvm:vm-100-disk-1", False)
    (call,) = post_configs(fakepve)
    assert call.params["virtio0"] == "local-lvm:0.5,format=raw,serial=pvepstore,backup=0,replicate=0,discard=on"
    assert len(call.params["digest"]) == 40
    assert fakepve.volumes["local-lvm:vm-100-disk-1"].size == 512 << 20
    again = ensure_disk(api, "pve1", 100, DISK)
    assert again.action == "present" and len(post_configs(fakepve)) == 1
    assert len([v for v in fakepve.volumes if v.startswith("local-lvm:vm-100-")]) == 2


def test_storage_defaults_to_the_system_disk_and_can_be_overridden(fakepve, api):
    fakepve.add_storage("tank", "zfspool", pool="rpool/data", content="images")
    fakepve.add_vm(100, disk_storage="tank")
    assert ensure_disk(api, "pve1", 100, DISK).volid == "tank:vm-100-disk-1"
    fakepve.add_vm(101)
    assert ensure_disk(api, "pve1", 101, DiskConfig(storage="tank")).volid.startswith("tank:")


def test_found_on_another_bus_is_not_allocated_again(fakepve, api):
    vol = None
    fakepve.add_vm(100)
    vol = fakepve.allocate("local-lvm", 100, 512 << 20)
    fakepve.set_config(100, scsi3=f"{vol.volid},serial=pvepstore,backup=0")
    res = ensure_disk(api, "pve1", 100, DISK)
    assert res.action == "present" and res.key == "scsi3" and "SCSI" in res.notes[0]
    assert not post_configs(fakepve)


def test_reattach_unused_recorded_volume(fakepve, api):
    fakepve.add_vm(100)
    vol = fakepve.allocate("local-lvm", 100, 512 << 20)
    fakepve.set_config(100, unused0=vol.volid)
    res = ensure_disk(api, "pve1", 100, DISK, known_volids={vol.volid})
    assert (res.action, res.volid) == ("reattached", vol.volid)
    conf = fakepve.vms[100].config
    assert "unused0" not in conf and conf["virtio0"].startswith(vol.volid + ",")
    assert len(fakepve.volumes) == 2


def test_reattach_line_commented_out_by_a_restore(fakepve, api):
    fakepve.add_vm(100)
    vol = fakepve.allocate("local-lvm", 100, 512 << 20)
    line = f"virtio1: {vol.volid},backup=0,discard=on,replicate=0,serial=pvepstore,size=512M"
    fakepve.set_config(100, description=line, unused0=vol.volid)
    assert "#" + line.replace(":", "%3A") + "\n" in fakepve.vm_config_path(100).read_text()
    res = ensure_disk(api, "pve1", 100, DISK)  # no record: the commented line names the volume
    assert (res.action, res.volid) == ("reattached", vol.volid)
    fakepve.set_config(100, virtio0=None, description=line)
    del fakepve.volumes[vol.volid]  # restored elsewhere: the volume is gone
    res = ensure_disk(api, "pve1", 100, DISK)
    assert res.action == "attached" and "no longer exists" in res.notes[0]
    assert len(post_configs(fakepve)) == 2


def test_hotplug_off_is_reported_pending_and_not_allocated_twice(fakepve, api):
    fakepve.add_vm(100, {"hotplug": "0"}, running=True)
    res = ensure_disk(api, "pve1", 100, DISK)
    assert res.action == "pending" and res.pending and "stop and start the VM" in res.notes[0]
    again = ensure_disk(api, "pve1", 100, DISK)
    assert again.action == "pending" and len(post_configs(fakepve)) == 1
    api.run_task("POST", "nodes/pve1/qemu/100/status/reboot")
    assert ensure_disk(api, "pve1", 100, DISK).action == "present"


def test_hotplug_failure_is_reported_pending(fakepve, api):
    fakepve.add_vm(100, running=True).hotplug_error = "virtio-blk-pci: no free slot"
    res = ensure_disk(api, "pve1", 100, DISK)
    assert res.pending and any("no free slot" in n for n in res.notes)


def test_slow_task_is_waited_for(fakepve, api):
    fakepve.task_polls_running = 3
    fakepve.add_vm(100)
    assert ensure_disk(api, "pve1", 100, DISK).action == "attached"
    assert len(fakepve.calls("GET", "/status")) >= 4


def test_dry_run_sends_no_write(fakepve):
    fakepve.add_vm(100)
    api = pveapi.connect(fakepve.load_config(), dry_run=True)
    res = ensure_disk(api, "pve1", 100, DISK)
    assert res.action == "planned-attach" and not fakepve.writes()
    (call,) = api.planned
    assert call.describe().startswith("POST /nodes/pve1/qemu/100/config virtio0=local-lvm:0.5,format=raw,")


def test_detach_and_delete(fakepve, api):
    fakepve.add_vm(100)
    res = ensure_disk(api, "pve1", 100, DISK)
    det = detach_disk(api, "pve1", 100, DISK, {res.volid}, delete=False)
    assert det.action == "detached" and fakepve.vms[100].config["unused0"] == res.volid
    assert ensure_disk(api, "pve1", 100, DISK, {res.volid}).action == "reattached"
    det = detach_disk(api, "pve1", 100, DISK, {res.volid}, delete=True)
    assert det.action == "deleted" and res.volid not in fakepve.volumes
    assert detach_disk(api, "pve1", 100, DISK, {res.volid}, delete=True).action == "nothing"


def test_errors_become_pve_errors_with_hints(fakepve, api):
    fakepve.add_vm(100)
    with pytest.raises(PveError) as info:
        api.get("nodes/pve2/qemu/100/config")
    assert "cluster node" in info.value.message
    with pytest.raises(PveError) as info:
        api.get("nodes/pve1/qemu/999/config")
    assert "migrated" in info.value.hint
    bad = pveapi.connect(fakepve.load_config(api={"token_value": "nope"}))
    with pytest.raises(PveError) as info:
        bad.get("version")
    assert "401" in info.value.message and "token" in info.value.hint
    ca_less = pveapi.connect(fakepve.load_config(api={"verify_ssl": True}))
    with pytest.raises(PveError) as info:
        ca_less.get("version")
    assert "TLS" in info.value.message and "pve-root-ca.pem" in info.value.hint
    with pytest.raises(PveError) as info:
        pveapi.connect(fakepve.load_config(api={"port": 1})).get("version")
    assert "pveproxy" in info.value.hint


class _Resource:
    """A stand-in for proxmoxer's local (pvesh) backend answers."""

    def __init__(self, answers, path):
        self.answers, self.path = answers, path

    def get(self, **kw):
        return self.answers[("GET", self.path)]

    def post(self, **kw):
        return self.answers[("POST", self.path)]

    def put(self, **kw):
        return self.answers[("PUT", self.path)]


class _Prox:
    def __init__(self, answers):
        self.answers = answers

    def __call__(self, path):
        return _Resource(self.answers, path)


UPID = "UPID:pve1:0000A1B2:0001E240:6630A1B2:qmconfig:100:root@pam:"


def test_local_backend_quirks():
    # failed task returned as success → the exit status is checked
    answers = {("POST", "nodes/pve1/qemu/100/config"): {"errors": f"some task log\n\"{UPID}\"".encode()},
               ("GET", f"nodes/pve1/tasks/{UPID}/status"): {"status": "stopped", "exitstatus": "hotplug problem"},
               ("GET", f"nodes/pve1/tasks/{UPID}/log"): [{"n": 1, "t": "TASK ERROR: hotplug problem"}]}
    api = pveapi.PveApi(_Prox(answers), backend="local")
    with pytest.raises(PveError, match="hotplug problem"):
        api.run_task("POST", "nodes/pve1/qemu/100/config", virtio1="x")
    answers[("GET", f"nodes/pve1/tasks/{UPID}/status")] = {"status": "stopped", "exitstatus": "WARNINGS: 1"}
    assert api.run_task("POST", "nodes/pve1/qemu/100/config", virtio1="x")["exitstatus"] == "WARNINGS: 1"
    # a synchronous PUT prints "update VM ..." and that is success
    answers[("PUT", "nodes/pve1/qemu/100/config")] = {"errors": b"update VM 100: -virtio1 x\n"}
    assert api.run_task("PUT", "nodes/pve1/qemu/100/config", virtio1="x") == {"status": "stopped", "exitstatus": "OK"}
    # non-JSON output of a GET is an error, not data
    answers[("GET", "cluster/resources")] = {"errors": b"perl: warning: Setting locale failed.\n"}
    with pytest.raises(PveError, match="not JSON"):
        api.get("cluster/resources")
