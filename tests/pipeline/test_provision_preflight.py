"""A failed provision leaves nothing behind (issue 11 #18).

Every failure point -- the guest's host key unknown or wrong (a real SSH server with
paramiko's real client), the guest unreachable, a probe blocker, a missing privilege,
an unusable storage, the guest changing between the probe and the write, a guest apply
failure after the disk attach -- is run against the fake PVE; afterwards the VM config
file is byte-identical (or exactly as the error message says), no volume leaked, the
per-VM state is as before, and the exit code is the one the README's table gives.
"""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from pvepstore.cli import ExitStatus
from pvepstore.errors import GuestError, PveError, VmBusyError
from pvepstore.pipeline import provision as prov
from pvepstore.pve import state
from tests.conftest import run_cli
from tests.pipeline.pveguest import FakeGuests
from tests.pipeline.test_provision import IPCONFIG, Target, context

paramiko = pytest.importorskip("paramiko")


# -- a real SSH server (paramiko's server side): the client checks its host key for real --------

class _Server(paramiko.ServerInterface):
    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_FAILED


@dataclass
class SshServer:
    port: int
    key: "paramiko.PKey"
    connections: int = 0


@pytest.fixture
def ssh_server():
    host_key = paramiko.RSAKey.generate(2048)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    srv = SshServer(lsock.getsockname()[1], host_key)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            srv.connections += 1
            t = paramiko.Transport(conn)
            t.add_server_key(host_key)
            try:
                t.start_server(server=_Server())
            except Exception:
                pass
    threading.Thread(target=serve, daemon=True).start()
    yield srv
    stop.set()
    lsock.close()


def client_key(tmp_path):
    path = tmp_path / "id_test"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(path))
    return path


def ssh_vm_config(tmp_path, port, known_hosts):
    return {100: {"ssh": {"host": "127.0.0.1", "port": port, "key_file": str(client_key(tmp_path)),
                          "known_hosts": str(known_hosts), "connect_timeout": 5}}}


def real_context(fake, **overrides):
    """The production guest side (SshTransport), only the sleep is skipped."""
    cfg = fake.load_config(**overrides)
    return prov.Context(cfg, prov.api_connect(cfg), runner=fake.lvm_runner(), sleep=lambda s: None)


# -- what "nothing changed" means -------------------------------------------------------------

@dataclass
class Snapshot:
    config: str
    volumes: set
    record: dict


def snapshot(fake, vmid=100) -> Snapshot:
    return Snapshot(fake.vm_config_path(vmid).read_text(), set(fake.volumes),
                    state.provision_record(fake.load_config(), vmid))


def assert_unchanged(fake, before: Snapshot, vmid=100):
    after = snapshot(fake, vmid)
    assert after.config == before.config  # byte-identical VM config (and so the same digest)
    assert after.volumes == before.volumes  # no volume allocated and left behind
    assert after.record == before.record  # the per-VM state as it was


# -- the guest refuses before any write -------------------------------------------------------

def test_unknown_host_key_refuses_before_the_disk_attach(fakepve, ssh_server, tmp_path):
    fakepve.add_vm(100, IPCONFIG, running=True)
    before = snapshot(fakepve)
    ctx = real_context(fakepve, vms=ssh_vm_config(tmp_path, ssh_server.port, tmp_path / "known_hosts"))
    with pytest.raises(GuestError, match="unknown host key"):
        prov.provision(ctx, 100)
    assert ssh_server.connections == 1 and not fakepve.writes()
    assert_unchanged(fakepve, before)


def test_wrong_host_key_refuses_before_the_disk_attach_also_in_a_dry_run(fakepve, ssh_server, tmp_path):
    fakepve.add_vm(100, IPCONFIG, running=True)
    kh = tmp_path / "known_hosts"
    other = paramiko.RSAKey.generate(2048)
    kh.write_text(f"[127.0.0.1]:{ssh_server.port} ssh-rsa {other.get_base64()}\n")
    before = snapshot(fakepve)
    conf = fakepve.config_file(vms=ssh_vm_config(tmp_path, ssh_server.port, kh))
    for extra in (["--dry-run"], []):
        r = run_cli("--config", str(conf), "provision", "100", *extra)
        assert r.status == ExitStatus.GUEST and "does NOT match" in r.stderr, (extra, r.stderr)
    assert not fakepve.writes()
    assert_unchanged(fakepve, before)


def test_unreachable_guest_refuses_before_the_disk_attach(fakepve, tmp_path):
    fakepve.add_vm(100, IPCONFIG, running=True)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = snapshot(fakepve)
    r = run_cli("--config", str(fakepve.config_file(vms=ssh_vm_config(tmp_path, port, tmp_path / "kh"))),
                "provision", "100")
    assert r.status == ExitStatus.GUEST and "cannot connect" in r.stderr and not fakepve.writes()
    assert_unchanged(fakepve, before)


@dataclass
class Blocker:
    message: str
    fix: str = ""


class BlockingGuests(FakeGuests):
    """The guest double whose plan carries a blocker (as a real probe of, e.g., a guest whose
    pstore slot is held by another backend)."""

    @contextmanager
    def connect(self, target):
        with super().connect(target) as guest:
            plan = guest.plan

            def blocked_plan(*a, **kw):
                p = plan(*a, **kw)
                p.blockers = [Blocker("pstore is held by erst", "boot with erst_disable")]
                return p
            guest.plan = blocked_plan
            yield guest


@pytest.mark.parametrize("dry_run", [False, True])
def test_probe_blocker_refuses_before_the_disk_attach(fakepve, dry_run):
    fakepve.add_vm(100, IPCONFIG, running=True)
    guests = BlockingGuests(fakepve)
    before = snapshot(fakepve)
    with pytest.raises(GuestError, match="held by erst") as info:
        prov.provision(context(fakepve, guests, dry_run=dry_run), 100, dry_run=dry_run)
    assert info.value.hint == "boot with erst_disable"
    assert not fakepve.writes() and not [c for c in guests.calls if c[0] == "apply"]
    assert_unchanged(fakepve, before)


# -- the API side refuses before any write --------------------------------------------------

@pytest.mark.parametrize("privileges, missing", [
    ({"/vms": {"VM.Audit"}, "/storage": {"Datastore.AllocateSpace", "Datastore.Audit"}},
     "VM.Config.Disk on /vms/100"),
    ({"/vms/100": {"VM.Audit", "VM.Config.Disk"}, "/storage/local": {"Datastore.AllocateSpace"}},
     "Datastore.AllocateSpace on /storage/local-lvm"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_missing_privilege_refuses_before_any_write(fakepve, privileges, missing, dry_run):
    fakepve.add_vm(100, IPCONFIG, running=True)
    fakepve.privileges = privileges
    guests = FakeGuests(fakepve)
    before = snapshot(fakepve)
    conf = fakepve.config_file()
    r = run_cli("--config", str(conf), "provision", "100", *(["--dry-run"] if dry_run else []))
    assert r.status == ExitStatus.PVE and missing in r.stderr, r.stderr
    assert "root@pam!pvepstore" in r.stderr and "pveum acl modify" in r.stderr
    assert not fakepve.writes() and not guests.calls
    assert fakepve.calls("GET", "/access/permissions")
    assert_unchanged(fakepve, before)


def test_power_privilege_is_needed_only_when_an_api_reboot_is(fakepve):
    fakepve.add_vm(100, {**IPCONFIG, "hotplug": "network,usb"}, running=True)  # the disk will be pending
    fakepve.privileges = {"/vms": {"VM.Audit", "VM.Config.Disk"}, "/storage": {"Datastore.AllocateSpace"}}
    guests = FakeGuests(fakepve)
    before = snapshot(fakepve)
    with pytest.raises(PveError, match="VM.PowerMgmt on /vms/100"):
        prov.provision(context(fakepve, guests), 100, reboot=True)
    assert_unchanged(fakepve, before)
    res = prov.provision(context(fakepve, guests), 100)  # without --reboot nothing needs it
    assert res.disk.pending


@pytest.mark.parametrize("disk, status, said", [
    ({"storage": "nope"}, {}, "storage 'nope' does not exist"),
    ({}, {"active": 0}, "is not active"),
    ({}, {"enabled": 0}, "is disabled"),
    ({}, {"content": "rootdir"}, "does not hold VM disk images"),
    ({}, {"avail": 1 << 20}, "has 1 MiB free, the pstore disk needs 512 MiB"),
])
def test_unusable_storage_refuses_before_any_write(fakepve, disk, status, said):
    fakepve.add_vm(100, IPCONFIG, running=True)
    fakepve.storage_status["local-lvm"] = status
    guests = FakeGuests(fakepve)
    before = snapshot(fakepve)
    r = run_cli("--config", str(fakepve.config_file(disk=disk) if disk else fakepve.config_file()),
                "provision", "100")
    assert r.status == ExitStatus.PVE and said in r.stderr and "nothing was changed" in r.stderr, r.stderr
    assert "disk.storage" in r.stderr and not fakepve.writes()
    assert_unchanged(fakepve, before)


def test_locked_vm_is_busy_before_any_write(fakepve):
    fakepve.add_vm(100, {**IPCONFIG, "lock": "backup"}, running=True)
    before = snapshot(fakepve)
    with pytest.raises(VmBusyError, match="locked"):
        prov.provision(context(fakepve, FakeGuests(fakepve)), 100)
    assert_unchanged(fakepve, before)


# -- failures after the first write: rolled back, or said what is left ------------------------

class ApplyFails(FakeGuests):
    def __init__(self, fake, error: GuestError):
        super().__init__(fake)
        self.error = error

    @contextmanager
    def connect(self, target):
        with super().connect(target) as guest:
            def apply(plan, dry_run=False):
                self.calls.append(("apply-failed", guest.vmid))
                raise self.error
            guest.apply = apply
            yield guest


@pytest.mark.parametrize("existing", ["none", "unused"])
def test_guest_apply_refused_after_the_attach_rolls_the_disk_back(fakepve, existing):
    fakepve.add_vm(100, IPCONFIG, running=True)
    if existing == "unused":  # a kept volume from an earlier unprovision is reattached, then detached again
        prov.provision(context(fakepve, FakeGuests(fakepve)), 100)
        prov.unprovision(context(fakepve, FakeGuests(fakepve)), 100)
    before = snapshot(fakepve)
    err = GuestError("VM 100: the guest changed since the probe (x); nothing was changed")
    err.unchanged = True
    guests = ApplyFails(fakepve, err)
    r_exc = None
    try:
        prov.provision(context(fakepve, guests), 100)
    except GuestError as exc:
        r_exc = exc
    assert r_exc is not None and "rolled back:" in r_exc.message and "LEFT" not in r_exc.message
    assert ("apply-failed", 100) in guests.calls and fakepve.calls("POST", "/config")
    assert_unchanged(fakepve, before)
    if existing == "none":
        assert "freed" in r_exc.message
    else:
        assert "kept as unusedN" in r_exc.message


def test_guest_apply_stopped_half_way_keeps_the_disk_and_says_how_to_resume(fakepve):
    fakepve.add_vm(100, IPCONFIG, running=True)
    guests = ApplyFails(fakepve, GuestError("VM 100: apply stopped half-way: write failed",
                                            hint="`pvepstore guest undo` restores what was changed"))
    conf = fakepve.config_file()
    from unittest import mock
    with mock.patch.object(prov, "default_guest_connect", guests.connect), \
            mock.patch.object(prov, "guest_target", lambda ssh, host, vmid: Target(host, f"VM {vmid}")):
        r = run_cli("--config", str(conf), "provision", "100")
    assert r.status == ExitStatus.GUEST
    assert "LEFT in place: virtio0 = local-lvm:vm-100-disk-1 attached" in r.stderr, r.stderr
    assert "guest undo" in r.stderr and "`pvepstore provision 100` resumes" in r.stderr
    rec = state.provision_record(fakepve.load_config(), 100)
    assert rec["volid"] == "local-lvm:vm-100-disk-1" == fakepve.vms[100].config["virtio0"].split(",")[0]
    # the next run resumes: the disk is found (no second one), the guest is configured
    again = prov.provision(context(fakepve, FakeGuests(fakepve)), 100)
    assert again.ok and again.disk.action == "present" and len(fakepve.calls("POST", "/config")) == 1


def test_concurrent_change_between_probe_and_write_fails_the_attach_without_leftovers(fakepve):
    fakepve.add_vm(100, IPCONFIG, running=True)

    class Meddling(FakeGuests):
        @contextmanager
        def connect(self, target):
            with super().connect(target) as guest:
                probe = guest.probe

                def meddle(*a, **kw):
                    fakepve.set_config(100, description="changed by another admin")
                    return probe(*a, **kw)
                guest.probe = meddle
                yield guest
    guests = Meddling(fakepve)
    with pytest.raises(PveError, match="modified configuration"):
        prov.provision(context(fakepve, guests), 100)
    conf = fakepve.vms[100].config
    assert conf["description"] == "changed by another admin" and not any(k.startswith("virtio") for k in conf)
    assert not [v for v in fakepve.volumes if v.endswith("disk-1")]
    assert not state.provision_record(fakepve.load_config(), 100)


# -- the ivshmem backend: the hookscript file and the config write are taken back too ----------

def _ivshmem(fake):
    from tests.pipeline.test_provision import IvshmemGuest, ivshmem_context
    fake.add_storage("local", "dir", path="/var/lib/vz", content="iso,vztmpl,backup,images,snippets")
    own = fake.paths.storage_path("/var/lib/vz") / "snippets" / "operator.sh"
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text("#!/bin/sh\nexit 0\n")
    fake.add_vm(100, {**IPCONFIG, "hookscript": "local:snippets/operator.sh"}, running=True)
    guest = IvshmemGuest(fake)
    return guest, ivshmem_context(fake, guest)


def _ours(fake):
    from pvepstore.pve import ivshmem
    return ivshmem.snippet_path(fake.paths, "local:snippets/pvepstore-hook-100.sh")


def test_ivshmem_unknown_host_key_writes_neither_file_nor_config(fakepve):
    guest, ctx = _ivshmem(fakepve)
    before = snapshot(fakepve)

    @contextmanager
    def refuse(target):
        raise GuestError("VM 100 (root@192.0.2.10:22): unknown host key (not in /etc/pvepstore/known_hosts)")
        yield
    ctx.guest_connect = refuse
    with pytest.raises(GuestError, match="unknown host key"):
        prov.provision(ctx, 100)
    assert not fakepve.writes() and not _ours(fakepve).exists()
    assert_unchanged(fakepve, before)


def test_ivshmem_guest_refusal_after_the_config_write_restores_the_operators_values(fakepve):
    guest, ctx = _ivshmem(fakepve)
    before = snapshot(fakepve)
    run = guest.run

    def refuse_apply(name, script, args, **kw):
        if name == "apply":
            from pvepstore.guest.transport import CommandResult
            from pvepstore.guest.testing import reply
            return CommandResult(3, reply(("mismatch", "/etc/modprobe.d/pvepstore.conf")), b"", False)
        return run(name, script, args, **kw)
    guest.run = refuse_apply
    with pytest.raises(GuestError, match="changed since the probe") as info:
        prov.provision(ctx, 100)
    msg = info.value.message
    assert "hookscript back to local:snippets/operator.sh" in msg and "ivshmem removed" in msg, msg
    assert "removed " + str(_ours(fakepve)) in msg and "LEFT" not in msg
    posts = fakepve.calls("POST", "/config")
    assert posts[0].params["hookscript"] == "local:snippets/pvepstore-hook-100.sh"  # it was set, then taken back
    assert posts[-1].params["digest"] and posts[-1].params["hookscript"] == "local:snippets/operator.sh"
    assert not _ours(fakepve).exists() and not fakepve.vms[100].pending
    assert_unchanged(fakepve, before)


def test_ivshmem_restart_failure_keeps_the_config_and_says_how_to_resume(fakepve, monkeypatch):
    guest, ctx = _ivshmem(fakepve)
    from tests.fakepve import server

    def refuse(pve, p, user):
        raise server.PveFailure(500, "VM 100 qmp command 'system_reset' failed")
    monkeypatch.setitem(server.ROUTES, ("POST", "/nodes/{node}/qemu/{vmid}/status/reboot"), refuse)
    with pytest.raises(PveError) as info:
        prov.provision(ctx, 100, restart=True)
    msg, hint = info.value.message, info.value.hint
    assert "LEFT in place: " in msg and "set ivshmem=size=1,name=pvepstore-100" in msg and "rolled back" not in msg
    assert "`pvepstore provision 100 --backend ivshmem --restart` resumes" in hint
    assert fakepve.vms[100].pending["ivshmem"] == "size=1,name=pvepstore-100" and _ours(fakepve).exists()
    assert state.provision_record(fakepve.load_config(), 100)["backend"] == "ivshmem"


def test_agent_privilege_missing_is_a_privilege_error_before_any_write(fakepve, monkeypatch):
    from tests.fakepve import server

    fakepve.add_vm(100, {"agent": "1"}, running=True)

    def refuse(pve, p, user):
        raise server.PveFailure(403, "Permission check failed (/vms/100, VM.GuestAgent.Audit)")
    monkeypatch.setitem(server.ROUTES, ("GET", "/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces"), refuse)
    before = snapshot(fakepve)
    with pytest.raises(PveError) as info:
        prov.provision(context(fakepve, FakeGuests(fakepve)), 100)
    assert "lacks VM.GuestAgent.Audit on /vms/100" in info.value.hint and "ssh.host" not in info.value.hint
    assert not fakepve.writes()
    assert_unchanged(fakepve, before)


def test_reboot_failure_after_the_guest_is_configured_keeps_everything_and_says_how_to_resume(fakepve,
                                                                                             monkeypatch):
    from tests.fakepve import server

    fakepve.add_vm(100, {**IPCONFIG, "hotplug": "network,usb"}, running=True)  # the disk stays pending

    def refuse(pve, p, user):
        raise server.PveFailure(500, "VM 100 qmp command 'system_reset' failed - got timeout")
    monkeypatch.setitem(server.ROUTES, ("POST", "/nodes/{node}/qemu/{vmid}/status/reboot"), refuse)
    with pytest.raises(PveError) as info:
        prov.provision(context(fakepve, FakeGuests(fakepve)), 100, reboot=True)
    msg = info.value.message
    assert "system_reset" in msg and "LEFT in place: " in msg and "virtio0 = local-lvm:vm-100-disk-1 attached (PENDING)" in msg
    assert "the guest configured" in msg and "rolled back" not in msg
    assert "`pvepstore provision 100 --reboot` resumes" in info.value.hint
    rec = state.provision_record(fakepve.load_config(), 100)
    assert rec["pending"] and fakepve.vms[100].pending["virtio0"].startswith("local-lvm:vm-100-disk-1")
