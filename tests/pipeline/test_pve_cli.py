"""The CLI commands provision/unprovision/status/read, in-process against the fake PVE."""

from __future__ import annotations

import pytest

from pvepstore.cli import ExitStatus
from pvepstore.pipeline import provision as prov
from tests.conftest import run_cli
from tests.pipeline.pveguest import FakeGuests
from tests.guest.test_transport import bare_root_logger, garbage_sshd  # noqa: F401 (fixtures)
from tests.pipeline.test_provision import IPCONFIG, Target, ivshmem_node  # noqa: F401 (fixture)


@pytest.fixture
def guests(fakepve, monkeypatch):
    g = FakeGuests(fakepve)
    monkeypatch.setattr(prov, "default_guest_connect", g.connect)
    monkeypatch.setattr(prov, "guest_target", lambda ssh, host, vmid: Target(host, f"VM {vmid}"))
    return g


def test_provision_dry_run_then_for_real(fakepve, guests):
    fakepve.add_vm(100, {**IPCONFIG, "tags": "pvepstore"}, running=True)
    conf = str(fakepve.config_file())
    r = run_cli("--config", conf, "provision", "100", "--dry-run")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert "dry run: nothing was changed" in r.stdout and "API calls that would be made:" in r.stdout
    assert "POST /nodes/pve1/qemu/100/config virtio0=local-lvm:0.5," in r.stdout
    assert "guest changes that would be made:" in r.stdout and not fakepve.writes()
    r = run_cli("--config", conf, "provision", "100")
    assert r.status == ExitStatus.SUCCESS and "result: provisioned" in r.stdout
    r = run_cli("--config", conf, "status", "--json")
    (row,) = r.json["vms"]
    assert row["provisioned"] and row["backend_ok"] and row["disk"] == "virtio0"
    r = run_cli("--config", conf, "status")
    assert "virtio0" in r.stdout and "yes" in r.stdout


def test_provision_pending_exit_status(fakepve, guests):
    fakepve.add_vm(100, {**IPCONFIG, "hotplug": "0"}, running=True)
    r = run_cli("--config", str(fakepve.config_file()), "provision", "100")
    assert r.status == ExitStatus.PVE and "PENDING" in r.stdout


def test_read_offline_and_clear(fakepve, guests, unpack_dir, monkeypatch):
    from tests.pve.test_offline import pstore_vm
    from pvepstore.pve import offline
    cfg, vol, fx = pstore_vm(fakepve, unpack_dir)
    runner = fakepve.lvm_runner()
    monkeypatch.setattr(offline, "SubprocessRunner", lambda: runner)  # LVM commands answered by the fake
    conf = str(fakepve.config_file())
    r = run_cli("--config", conf, "read", "100", "--offline", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert sorted(x["name"] for x in r.json["records"]) == sorted(fx.kernel_view)
    r = run_cli("--config", conf, "read", "100")  # the VM is off: from the volume
    assert "read offline from local-lvm:" in r.stdout and "dmesg-pstore_blk-0" in r.stdout
    r = run_cli("--config", conf, "read", "100", "--offline", "--clear")
    assert "cleared: dmesg-pstore_blk-0, dmesg-pstore_blk-1" in r.stdout
    fakepve.start_qemu(100)
    r = run_cli("--config", conf, "read", "100", "--offline")
    assert r.status == ExitStatus.BUSY and "running" in r.stderr


def test_unprovision_and_api_errors(fakepve, guests):
    fakepve.add_vm(100, IPCONFIG, running=True)
    conf = str(fakepve.config_file())
    assert run_cli("--config", conf, "provision", "100").status == ExitStatus.SUCCESS
    r = run_cli("--config", conf, "unprovision", "100", "--delete-disk")
    assert r.status == ExitStatus.SUCCESS and "disk: deleted virtio0" in r.stdout
    r = run_cli("--config", str(fakepve.config_file("bad.yaml", api={"token_value": "wrong"})), "status")
    assert r.status == ExitStatus.PVE and "401" in r.stderr and "hint:" in r.stderr
    r = run_cli("--config", conf, "provision", "999")
    assert r.status == ExitStatus.PVE and "does not exist" in r.stderr


# -- provision --backend ivshmem --restart: the wait is quiet and said once (issue 11 #19) -------

def test_ivshmem_restart_waits_quietly_over_real_failed_ssh_handshakes(ivshmem_node, monkeypatch, tmp_path,
                                                                       garbage_sshd, bare_root_logger, capfd):
    from pvepstore.guest.transport import SshTransport
    from tests.guest.test_transport import garbage_target
    from tests.pipeline.test_provision import IvshmemGuest

    fake = ivshmem_node
    fake.add_vm(100, {**IPCONFIG, "hookscript": "local:snippets/operator.sh"}, running=True)
    guest = IvshmemGuest(fake)
    rebooting = {"attempts": 0}
    fake.reboot_hooks.append(lambda vmid: rebooting.__setitem__("attempts", 3))

    def connect(target):
        if rebooting["attempts"]:  # sshd of the rebooting guest: a real connection, a broken banner
            rebooting["attempts"] -= 1
            SshTransport.connect(garbage_target(tmp_path, garbage_sshd.port))
        return guest.connect(target)

    make = prov.make_context

    def make_context(cfg, **kw):
        ctx = make(cfg, **kw)
        ctx.sleep = lambda s: None
        ctx.guest_connect = connect
        ctx.make_target = lambda ssh, host, vmid: Target(host, f"VM {vmid}")
        ctx.hook_program = lambda cfg: ["/usr/bin/pvepstore"]
        return ctx
    monkeypatch.setattr(prov, "make_context", make_context)
    conf = fake.config_file(vms={100: {"backend": "ivshmem"}})
    r = run_cli("--config", str(conf), "provision", "100", "--backend", "ivshmem", "--restart")
    import time
    time.sleep(0.2)  # paramiko's transport threads log after the client gave up
    _, err = capfd.readouterr()
    assert r.status == ExitStatus.SUCCESS, r.stdout + r.stderr
    assert garbage_sshd.accepted == 3 and rebooting["attempts"] == 0
    for text in (r.stderr, err):
        assert "Traceback" not in text and "Exception (client)" not in text and "SSH protocol banner" not in text
    assert r.stderr.count("waiting for VM 100's guest to come back over SSH (up to 300 s)") == 1, r.stderr


# -- API error messages: decoded, bounded, hinted by what the server said (issue 11 #20) ---------

def test_wrong_token_is_a_clean_401_with_the_token_hint(fakepve, guests):
    fakepve.add_vm(100, IPCONFIG, running=True)
    r = run_cli("--config", str(fakepve.config_file("bad.yaml", api={"token_value": "wrong"})), "provision", "100")
    assert r.status == ExitStatus.PVE
    first = r.stderr.splitlines()[0]
    assert first.startswith("pvepstore: error: GET /cluster/resources: 401 ") and "b''" not in r.stderr, r.stderr
    assert "errors" not in first and "token secret" in r.stderr and "privilege" not in r.stderr


def test_403_hint_names_the_privilege_and_path(fakepve, guests, monkeypatch):
    from tests.fakepve import server

    fakepve.add_vm(100, IPCONFIG, running=True)
    orig = server.ROUTES[("GET", "/nodes/{node}/qemu/{vmid}/status/current")]

    def refuse(pve, p, user):
        raise server.PveFailure(403, "Permission check failed (/vms/100, VM.Audit)")
    monkeypatch.setitem(server.ROUTES, ("GET", "/nodes/{node}/qemu/{vmid}/status/current"), refuse)
    r = run_cli("--config", str(fakepve.config_file()), "provision", "100")
    monkeypatch.setitem(server.ROUTES, ("GET", "/nodes/{node}/qemu/{vmid}/status/current"), orig)
    assert r.status == ExitStatus.PVE and "403 Permission check failed (/vms/100, VM.Audit)" in r.stderr
    assert "lacks VM.Audit on /vms/100" in r.stderr and "token secret" not in r.stderr


def test_400_hint_names_the_parameter(fakepve, guests):
    from pvepstore.errors import PveError
    from pvepstore.pve.api import connect

    fakepve.add_vm(100, IPCONFIG, running=True)
    api = connect(fakepve.load_config())
    with pytest.raises(PveError) as info:
        api.write("POST", "nodes/pve1/qemu/100/config", virtio0="\x1b]52;c;bad\x07," + "x" * 5000)
    msg, hint = info.value.message, info.value.hint
    assert msg.startswith("POST /nodes/pve1/qemu/100/config: 400 Parameter verification failed.: virtio0: ")
    assert "\x1b" not in msg and "\x07" not in msg and len(msg) < 400 and "\n" not in msg
    assert "the parameter virtio0" in hint and "token" not in hint


def test_missing_hookscript_file_is_not_blamed_on_the_token(ivshmem_node, monkeypatch):
    from tests.fakepve import server
    from tests.pipeline.test_provision import IvshmemGuest, ivshmem_context

    fake = ivshmem_node
    fake.add_vm(100, IPCONFIG, running=True)
    before = fake.vm_config_path(100).read_text()
    # Proxmox looks somewhere else than where pvepstore wrote the file (a storage path mismatch)
    monkeypatch.setattr(server, "_snippet_file", lambda pve, volid: fake.host_root / "elsewhere" / volid)
    guest = IvshmemGuest(fake)
    with pytest.raises(Exception) as info:
        prov.provision(ivshmem_context(fake, guest), 100)
    err = info.value
    assert "hookscript: script 'local:snippets/pvepstore-hook-100.sh' does not exist" in err.message
    assert "root@pam" not in err.hint and "pvesm path local:snippets/pvepstore-hook-100.sh" in err.hint
    assert "rolled back: removed" in err.message  # the snippet file this run wrote is gone again
    from pvepstore.pve import ivshmem
    assert not ivshmem.snippet_path(fake.paths, "local:snippets/pvepstore-hook-100.sh").exists()
    assert fake.vm_config_path(100).read_text() == before and "apply" not in guest.calls


def test_only_root_refusal_keeps_the_root_hint_and_a_non_root_token_is_refused_first(ivshmem_node):
    from tests.pipeline.test_provision import IvshmemGuest, ivshmem_context

    fake = ivshmem_node
    fake.add_vm(100, IPCONFIG, running=True)
    before = fake.vm_config_path(100).read_text()
    fake.user = "ops@pve"  # the fake's token is now ops@pve!pvepstore
    guest = IvshmemGuest(fake)
    with pytest.raises(Exception) as info:
        prov.provision(ivshmem_context(fake, guest, api={"user": "ops@pve"}), 100)
    assert "only root@pam" in info.value.message and "ops@pve!pvepstore" in info.value.message
    assert "api.backend: local" in info.value.hint and not fake.writes() and not guest.calls
    assert fake.vm_config_path(100).read_text() == before
