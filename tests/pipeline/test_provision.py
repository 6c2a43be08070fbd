"""provision / unprovision / status / read against the fake PVE API and a guest test double."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pvepstore.errors import GuestError, VmBusyError
from pvepstore.pipeline import provision as prov
from pvepstore.pipeline import reading
from pvepstore.pve import state
from tests.pipeline.pveguest import FakeGuests

IPCONFIG = {"ipconfig0": "ip=192.0.2.10/24,gw=192.0.2.1", "agent": "1"}


@dataclass
class Target:
    host: str
    label: str


@pytest.fixture
def guests(fakepve):
    return FakeGuests(fakepve)


def context(fake, guests, dry_run=False, **overrides):
    cfg = fake.load_config(**overrides)
    return prov.Context(cfg, prov.api_connect(cfg, dry_run=dry_run), runner=fake.lvm_runner(),
                        guest_connect=guests.connect,
                        make_target=lambda ssh, host, vmid: Target(host, f"VM {vmid}"),
                        sleep=lambda s: None)


def config_posts(fake):
    return fake.calls("POST", "/config")


def test_provision_end_to_end_and_idempotent(fakepve, guests):
    fakepve.add_vm(100, IPCONFIG, running=True)
    res = prov.provision(context(fakepve, guests), 100)
    assert res.ok and res.disk.action == "attached" and res.address.host == "192.0.2.10"
    assert res.address.source == "cloud-init ipconfig0"
    assert res.verify.ok and ("apply", 100, False) in guests.calls
    rec = state.provision_record(fakepve.load_config(), 100)
    assert rec["volid"] == res.disk.volid and rec["blk_params"]["kmsg_size"] == 64
    text = "\n".join(res.lines())
    assert "capabilities:" in text and "oops: yes" in text and "result: provisioned" in text
    # second run: nothing allocated, nothing to change in the guest
    again = prov.provision(context(fakepve, guests), 100)
    assert again.ok and again.disk.action == "present" and len(config_posts(fakepve)) == 1
    assert again.plan == ["nothing to do: the guest is already as planned"] and not again.api_calls
    assert len([v for v in fakepve.volumes if "vm-100-" in v]) == 2


def test_dry_run_changes_nothing_and_shows_everything(fakepve, guests):
    fakepve.add_vm(100, IPCONFIG, running=True)
    before = fakepve.vm_config_path(100).read_text()
    res = prov.provision(context(fakepve, guests, dry_run=True), 100, dry_run=True, reboot=True)
    assert not fakepve.writes() and fakepve.vm_config_path(100).read_text() == before
    assert ("apply", 100, True) in guests.calls and 100 not in guests.configured
    assert not state.provision_record(fakepve.load_config(), 100)
    text = "\n".join(res.lines())
    assert "POST /nodes/pve1/qemu/100/config virtio0=local-lvm:0.5,format=raw,serial=pvepstore,backup=0," \
           "replicate=0,discard=on digest=" in text
    assert "write /etc/modprobe.d/pvepstore.conf" in text and "reboot the VM through the API" in text


def test_pending_disk_is_reported_and_reboot_applies_it(fakepve, guests):
    fakepve.add_vm(100, {**IPCONFIG, "hotplug": "network,usb"}, running=True)
    res = prov.provision(context(fakepve, guests), 100)
    assert not res.ok and res.disk.pending and "stop and start the VM" in res.disk.notes[0]
    assert not res.verify.ok and "PENDING" in "\n".join(res.lines())
    res = prov.provision(context(fakepve, guests), 100, reboot=True)
    assert res.rebooted and res.ok and res.disk.action == "present"
    assert fakepve.calls("POST", "/status/reboot") and len(config_posts(fakepve)) == 1


def test_reboot_through_the_guest(fakepve, guests):
    fakepve.add_vm(100, IPCONFIG, running=True)
    res = prov.provision(context(fakepve, guests), 100, reboot=True)
    assert res.ok and res.rebooted and ("reboot", 100) in guests.calls
    assert not fakepve.calls("POST", "/status/reboot")


def test_stopped_vm_gets_the_disk_only(fakepve, guests):
    fakepve.add_vm(100, IPCONFIG)
    res = prov.provision(context(fakepve, guests), 100)
    assert res.disk.action == "attached" and not res.ok and "not running" in res.problems[0]


def test_address_from_the_guest_agent_matched_to_the_nic(fakepve, guests):
    fakepve.add_vm(100, {"agent": "1"}, running=True, agent_interfaces=[
        {"name": "lo", "hardware-address": "00:00:00:00:00:00",
         "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
        {"name": "docker0", "hardware-address": "02:42:ac:11:00:01",
         "ip-addresses": [{"ip-address": "172.17.0.1", "ip-address-type": "ipv4", "prefix": 16}]},
        {"name": "ens18", "hardware-address": "bc:24:11:00:64:01",
         "ip-addresses": [{"ip-address": "fe80::1", "ip-address-type": "ipv6", "prefix": 64},
                          {"ip-address": "198.51.100.7", "ip-address-type": "ipv4", "prefix": 24}]}])
    res = prov.provision(context(fakepve, guests), 100)
    assert res.address.host == "198.51.100.7" and "net0" in res.address.source


def test_no_address_is_a_clear_error(fakepve, guests):
    fakepve.add_vm(100, {"agent": "1"}, running=True)  # agent configured but not running
    with pytest.raises(GuestError) as info:
        prov.provision(context(fakepve, guests), 100)
    assert "guest agent is not running" in info.value.message and "ssh.host" in info.value.hint
    # an explicit address in the config wins
    res = prov.provision(context(fakepve, guests, vms={100: {"ssh": {"host": "203.0.113.9", "port": 2222}}}), 100)
    assert res.address.host == "203.0.113.9" and res.address.source == "config"


def test_unprovision(fakepve, guests):
    fakepve.add_vm(100, IPCONFIG, running=True)
    volid = prov.provision(context(fakepve, guests), 100).disk.volid
    res = prov.unprovision(context(fakepve, guests), 100)
    assert res.detach.action == "detached" and 100 not in guests.configured
    assert fakepve.vms[100].config["unused0"] == volid
    again = prov.provision(context(fakepve, guests), 100)  # the kept volume is reattached
    assert again.disk.action == "reattached" and again.disk.volid == volid
    res = prov.unprovision(context(fakepve, guests), 100, delete_disk=True)
    assert res.detach.action == "deleted" and volid not in fakepve.volumes


def test_status(fakepve, guests):
    fakepve.add_vm(100, {**IPCONFIG, "tags": "pvepstore"}, running=True)
    fakepve.add_vm(101, {"tags": "other"})
    fakepve.add_vm(102, {**IPCONFIG, "tags": "web;pvepstore", "hotplug": "0"}, running=True)
    ctx = context(fakepve, guests)
    prov.provision(ctx, 100)
    prov.provision(context(fakepve, guests), 102)
    rows = {r.vmid: r for r in prov.status(context(fakepve, guests))}
    assert set(rows) == {100, 102}
    assert (rows[100].provisioned, rows[100].pending, rows[100].running, rows[100].backend_ok) == (True, False, True, True)
    assert rows[102].pending and rows[102].disk == "virtio0"
    assert set(r.vmid for r in prov.status(context(fakepve, guests, scope={"all": True}))) == {100, 101, 102}


# -- read ---------------------------------------------------------------------------------

def test_read_through_the_running_guest_and_clear(fakepve, guests):
    fakepve.add_vm(100, IPCONFIG, running=True)
    guests.records[100] = {"dmesg-pstore_blk-0": b"<4>Oops: 0002 [#1] SMP\n"}
    res = reading.read(context(fakepve, guests), 100, clear=True)
    assert res.source == "guest" and [r.name for r in res.guest_records] == ["dmesg-pstore_blk-0"]
    assert res.cleared == ["dmesg-pstore_blk-0"] and not guests.records[100]


def test_running_vm_with_unreachable_guest_is_never_read_offline(fakepve, unpack_dir):
    from tests.pve.test_offline import pstore_vm
    guests = FakeGuests(fakepve, reachable=False)
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir)
    fakepve.set_config(100, **IPCONFIG)
    fakepve.start_qemu(100)
    runner = fakepve.lvm_runner()
    ctx = context(fakepve, guests)
    ctx.runner = runner
    with pytest.raises(GuestError, match="cannot be read") as info:
        reading.read(ctx, 100)
    assert "never read from the host" in info.value.hint
    with pytest.raises(VmBusyError):
        reading.read(ctx, 100, offline=True)
    assert not runner.transcript


def test_read_falls_back_to_the_volume_when_the_vm_is_off(fakepve, guests, unpack_dir):
    from tests.pve.test_offline import pstore_vm
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir)
    res = reading.read(context(fakepve, guests), 100)
    assert res.source == "offline" and {r.name: r.data for r in res.offline.result.records} == fx.kernel_view
    assert not [c for c in guests.calls if c[0] == "read_records"]
