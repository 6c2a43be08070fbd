"""The fake Proxmox API itself: schema validation and PVE behaviour it must reproduce."""

from __future__ import annotations

import hashlib

import pytest

from pvepstore.errors import PveError
import requests
from proxmoxer import ProxmoxAPI, ResourceException

from tests.fakepve import schema


def prox(fake, **kw):
    return ProxmoxAPI("127.0.0.1", port=fake.port, user=fake.user, token_name=fake.token_name,
                      token_value=kw.get("token_value", fake.token_value), verify_ssl=str(fake.ca_path),
                      timeout=30)


GOOD = "local-lvm:0.5,format=raw,serial=pvepstore,backup=0,replicate=0,discard=on"


@pytest.mark.parametrize("params,key,text", [
    ({"virtio1": "local-lvm:0.5,serial=bad serial"}, "virtio1", "url encoded"),
    ({"virtio1": "local-lvm:0.5,serial=" + "x" * 61}, "virtio1", "60 characters"),
    ({"virtio1": "local-lvm:0.5,discard=yes"}, "virtio1", "enumeration"),
    ({"virtio1": "local-lvm:0.5,bogus=1"}, "virtio1", "unknown key"),
    ({"virtio16": GOOD}, "virtio16", "not defined in schema"),
    ({"frobnicate": "1"}, "frobnicate", "not defined in schema"),
    ({"lock": "pvepstore"}, "lock", "enumeration"),
    ({"force": "1"}, "force", "requires"),
    ({"background_delay": "31"}, "background_delay", "maximum"),
    ({"digest": "x" * 41}, "digest", "40 characters"),
    ({"net0": "virtio=01:00:00:00:00:01,bridge=vmbr0"}, "net0", "I/G"),
    ({"ipconfig0": "ip=10.0.0.300/24"}, "ipconfig0", "IP address"),
])
def test_schema_rejects(params, key, text):
    with pytest.raises(schema.SchemaError) as info:
        schema.validate_request("POST", "/nodes/pve1/qemu/100/config", params)
    assert text in info.value.errors[key]


def test_schema_accepts_the_documented_attach_call_and_reports_unchecked_formats():
    schema.validate_request("POST", "/nodes/pve1/qemu/100/config",
                            {"virtio1": GOOD, "digest": "a" * 40, "delete": "unused0,virtio2"})
    schema.validate_request("GET", "/cluster/resources", {"type": "vm"})
    with pytest.raises(schema.SchemaError):
        schema.validate_request("GET", "/cluster/resources", {"type": "qemu"})
    with pytest.raises(schema.SchemaError):  # booleans must be 0/1 outside property strings
        schema.validate_request("GET", "/nodes/pve1/qemu/100/config", {"current": "True"})
    with pytest.raises(schema.NoSuchMethod):
        schema.validate_request("PATCH", "/nodes/pve1/qemu/100/config", {})
    with pytest.raises(schema.NoSuchMethod):
        schema.validate_request("GET", "/nodes/pve1/qemu/100/pstore", {})


def test_bad_requests_are_pve_style_400s_over_https(fakepve):
    fakepve.add_vm(100)
    p = prox(fakepve)
    with pytest.raises(ResourceException) as info:
        p.nodes("pve1").qemu(100).config.post(virtio1="local-lvm:0.5,serial=bad serial")
    assert info.value.status_code == 400
    assert info.value.content.startswith("Parameter verification failed.")
    import proxmoxer

    if int(proxmoxer.__version__.split(".")[0]) >= 2:  # 1.x drops the body's errors (pvepstore keeps them)
        assert "virtio1" in info.value.errors
    from pvepstore.pve.api import connect

    with pytest.raises(PveError, match=r"400 Parameter verification failed.: virtio1: "):
        connect(fakepve.load_config()).write("POST", "nodes/pve1/qemu/100/config",
                                             virtio1="local-lvm:0.5,serial=bad serial")
    with pytest.raises(ResourceException) as info:
        p.nodes("pve1").qemu(100).config.get(current=True)  # Python True is sent as "True"
    assert info.value.status_code == 400
    with pytest.raises(ResourceException) as info:
        p.nodes("pve1").qemu(100).pstore.get()
    assert info.value.status_code == 501
    with pytest.raises(ResourceException) as info:
        prox(fakepve, token_value="wrong").version.get()
    assert info.value.status_code == 401
    assert all(r.status in (400, 401, 501) for r in fakepve.requests)


def test_tls_is_verified_against_the_ca_under_host_root(fakepve, tmp_path):
    other = ProxmoxAPI("127.0.0.1", port=fakepve.port, user=fakepve.user, token_name=fakepve.token_name,
                       token_value=fakepve.token_value, verify_ssl=True, timeout=30)
    with pytest.raises(requests.exceptions.SSLError):
        other.version.get()
    assert prox(fakepve).version.get()["release"] == "9.1"


def test_config_file_digest_and_hotplug(fakepve):
    fakepve.add_vm(100, running=True)
    fakepve.add_vm(101, {"hotplug": "network,usb"}, running=True)
    p = prox(fakepve)
    for vmid in (100, 101):
        conf = p.nodes("pve1").qemu(vmid).config.get()
        text = fakepve.vm_config_path(vmid).read_text()
        assert conf["digest"] == hashlib.sha1(text.encode()).hexdigest()
        upid = p.nodes("pve1").qemu(vmid).config.post(virtio1=GOOD, digest=conf["digest"])
        assert p.nodes("pve1").tasks(upid).status.get()["exitstatus"] == "OK"
    assert "virtio1" in p.nodes("pve1").qemu(100).config.get(current=1)
    assert "virtio1" not in p.nodes("pve1").qemu(101).config.get(current=1)
    pend = {e["key"]: e for e in p.nodes("pve1").qemu(101).pending.get()}
    assert pend["virtio1"]["pending"].startswith("local-lvm:vm-101-disk-1,")
    text = fakepve.vm_config_path(101).read_text()
    assert "\n[PENDING]\n" in text and "virtio1: local-lvm:vm-101-disk-1" in text.split("[PENDING]")[1]
    # a stale digest fails the task, not the HTTP call
    upid = p.nodes("pve1").qemu(100).config.post(virtio2=GOOD, digest="0" * 40)
    assert "modified configuration" in p.nodes("pve1").tasks(upid).status.get()["exitstatus"]


def test_simulated_node_files(fakepve):
    fakepve.add_vm(100)
    root = fakepve.host_root
    assert (root / "etc/pve/.members").is_file()
    assert "lvmthin: local-lvm" in (root / "etc/pve/storage.cfg").read_text()
    assert (root / "etc/pve/pve-root-ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (root / "etc/pve/nodes/pve1/qemu-server/100.conf").is_file()
    pid = fakepve.start_qemu(100)
    cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    assert str(root / "var/run/qemu-server/100.pid").encode() in cmdline
    fakepve.stop_qemu(100)
    assert not (root / "var/run/qemu-server/100.pid").exists()
