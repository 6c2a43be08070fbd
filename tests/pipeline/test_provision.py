"""provision / unprovision / status / read against the fake PVE API and a guest test double."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pvepstore.errors import GuestError, VmBusyError
from pvepstore.backends.ivshmem_pve import IvshmemProvisionResult
from pvepstore.cli.provision_view import provision_lines
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
    text = "\n".join(provision_lines(res))
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
    text = "\n".join(provision_lines(res))
    assert "POST /nodes/pve1/qemu/100/config virtio0=local-lvm:0.5,format=raw,serial=pvepstore,backup=0," \
           "replicate=0,discard=on digest=" in text
    assert "create /etc/modprobe.d/pvepstore.conf: pstore_blk options" in text and "reboot the VM through the API" in text
    assert "does not exist yet" in text  # the disk this run attaches: no blocker


def test_pending_disk_is_reported_and_reboot_applies_it(fakepve, guests):
    fakepve.add_vm(100, {**IPCONFIG, "hotplug": "network,usb"}, running=True)
    res = prov.provision(context(fakepve, guests), 100)
    assert not res.ok and res.disk.pending and "stop and start the VM" in res.disk.notes[0]
    assert not res.verify.ok and "PENDING" in "\n".join(provision_lines(res))
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


# -- the ivshmem backend --------------------------------------------------------------------
# The guest is pvepstore's real Guest (probe/plan/apply/verify as in production) over a
# stateful transport double: its probe output follows what apply wrote and whether the fake
# VM's QEMU has the ivshmem device (it has it only after a cold start, as in Proxmox).

import base64  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from pvepstore.errors import PveError  # noqa: E402
from pvepstore.guest import Guest  # noqa: E402
from pvepstore.guest.transport import CommandResult  # noqa: E402
from pvepstore.pve import ivshmem  # noqa: E402
from tests.guest.conftest import file_item, probe_items  # noqa: E402
from pvepstore.guest.testing import reply  # noqa: E402

BAR2 = "0x00000000fe000000 0x00000000fe0fffff 0x0000000000040200"
RAMOOPS_BYTES = {"mem_size": 1 << 20, "record_size": 0x10000, "console_size": 0, "ftrace_size": 0, "pmsg_size": 0}


class IvshmemGuest:
    """One guest's state; ``connect`` is the Context's guest_connect."""

    def __init__(self, fake, vmid=100):
        self.fake, self.vmid = fake, vmid
        self.files: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.dirs: set[str] = set()
        self.loaded = False
        self.boot = 0
        self.calls: list[str] = []
        self.device_at_boot = self._device()
        fake.reboot_hooks.append(self._rebooted)

    def _device(self) -> bool:
        vm = self.fake.vms[self.vmid]
        return vm.running and vm.config.get("ivshmem") == ivshmem.ivshmem_option(self.vmid)

    def _rebooted(self, vmid):
        if vmid == self.vmid:
            self.boot += 1
            self.device_at_boot = self._device()
            self.loaded = self.device_at_boot and "/etc/pvepstore/ramoops-load.sh" in self.files

    def started(self):
        self._rebooted(self.vmid)

    def probe_out(self) -> bytes:
        items = [i for i in probe_items(unlink="no" if self.files.get("/etc/systemd/pstore.conf.d/99-pvepstore.conf")
                                        else None, disk=False) if i[0] not in ("backend", "boot_id")]
        items.append(("boot_id", f"boot-{self.boot}"))
        items += [file_item(p, b, "600" if p.startswith("/var/lib/") else "644") for p, b in self.files.items()]
        items += [("link", p, t) for p, t in self.links.items()] + [("dir", d) for d in sorted(self.dirs)]
        if self.files.get("/etc/modprobe.d/pvepstore.conf"):
            items.append(("modprobe_c", "options efi_pstore pstore_disable=Y\n"))
        if self.device_at_boot:
            items.append(("ivshmem", "0000:00:03.0", BAR2, ""))
        if self.loaded:
            items += [("backend", "ramoops"), ("loaded", "ramoops", "live"),
                      ("unit", "pvepstore-ramoops.service", "enabled", "active")]
            params = {"mem_address": str(0xfe000000), "mem_size": "1048576", "record_size": "65536",
                      "console_size": "0", "pmsg_size": "0", "ftrace_size": "0", "max_reason": "4", "ecc": "0"}
            items += [("param", f"ramoops/parameters/{k}", v) for k, v in params.items()]
        else:
            items.append(("backend", "(null)"))
        return reply(*items)

    def run(self, name, script, args, *, timeout=None, max_out=None):
        self.calls.append(name)
        if not self.fake.vms[self.vmid].running:
            from pvepstore.errors import GuestError
            raise GuestError("connection refused")
        if name == "probe":
            return CommandResult(0, self.probe_out(), b"", False)
        if name in ("apply", "undo"):
            out = []
            for i in range(0, len(args), 4):
                op, path, _sha, arg = args[i:i + 4]
                if op == "write":
                    self.files[path] = base64.b64decode(arg.split(":", 1)[1])
                elif op == "link":
                    self.links[path] = arg
                elif op in ("restore", "remove"):
                    self.files.pop(path, None)
                    self.links.pop(path, None)
                elif op == "mkdir":
                    self.dirs.add(path)
                elif op == "rmdir":
                    self.dirs.discard(path)
                elif op == "run":
                    if path == "load-ramoops":
                        self.loaded = self.device_at_boot
                        out.append(("ran" if self.loaded else "fail", path))
                        continue
                    if path == "unload-ramoops":
                        self.loaded = False
                    if path == "drop-state":
                        self.files = {p: b for p, b in self.files.items() if not p.startswith("/var/lib/")}
                    out.append(("ran", path))
                    continue
                out.append(("done", op, path))
            return CommandResult(0, reply(*out), b"", False)
        raise AssertionError(f"unexpected guest command {name}")

    def close(self):
        pass

    @contextmanager
    def connect(self, target):
        if not self.fake.vms[self.vmid].running:
            from pvepstore.errors import GuestError
            raise GuestError(f"{target.host}: connection refused")
        yield Guest(self, target.label)


@pytest.fixture
def ivshmem_node(fakepve):
    fakepve.add_storage("local", "dir", path="/var/lib/vz", content="iso,vztmpl,backup,images,snippets")
    own = fakepve.paths.storage_path("/var/lib/vz") / "snippets" / "operator.sh"
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text("#!/bin/sh\nexit 0\n")
    own.chmod(0o755)
    return fakepve


def ivshmem_context(fake, guest, dry_run=False, **overrides):
    ctx = context(fake, guest, dry_run=dry_run, vms={100: {"backend": "ivshmem"}}, **overrides)
    ctx.guest_connect = guest.connect
    ctx.hook_program = lambda cfg: ["/usr/bin/pvepstore", "--config", "/etc/pvepstore/config.yaml"]
    return ctx


def test_provision_ivshmem_on_a_running_vm_then_restart_then_unprovision(ivshmem_node):
    fake = ivshmem_node
    fake.add_vm(100, {**IPCONFIG, "hookscript": "local:snippets/operator.sh"}, running=True)
    guest = IvshmemGuest(fake)
    res = prov.provision(ivshmem_context(fake, guest), 100)
    assert isinstance(res, IvshmemProvisionResult) and not res.ok and res.device_pending
    conf, pending = fake.vms[100].config, fake.vms[100].pending
    assert conf["hookscript"] == "local:snippets/pvepstore-hook-100.sh"  # applied at once
    assert pending["ivshmem"] == "size=1,name=pvepstore-100" and "ivshmem" not in conf  # next cold start
    post = config_posts(fake)[-1].params
    assert post["digest"] and post["ivshmem"] == "size=1,name=pvepstore-100"
    hook = ivshmem.snippet_path(fake.paths, conf["hookscript"]).read_text()
    assert "/usr/bin/pvepstore --config /etc/pvepstore/config.yaml hook" in hook and "operator.sh" in hook
    text = "\n".join(provision_lines(res))
    assert "PENDING: next cold start" in text and "--restart" in text and "live migration" in text
    assert "panic: yes" in text and "chains the VM's own local:snippets/operator.sh" in text
    rec = state.provision_record(fake.load_config(), 100)
    assert rec["backend"] == "ivshmem" and rec["ramoops_params"] == RAMOOPS_BYTES
    assert rec["chained_hookscript"] == "local:snippets/operator.sh"
    assert "pvepstore-ramoops.service" in "\n".join(res.plan)  # the guest was configured already

    res = prov.provision(ivshmem_context(fake, guest), 100, restart=True)
    assert res.ok and res.restarted and res.verify.ok, provision_lines(res)
    assert fake.calls("POST", "/status/reboot") and fake.vms[100].config["ivshmem"] == "size=1,name=pvepstore-100"
    posts = len(config_posts(fake))

    again = prov.provision(ivshmem_context(fake, guest), 100)
    assert again.ok and len(config_posts(fake)) == posts and not again.api_calls
    assert again.plan == ["nothing to do: the guest is already as planned"]
    rows = {r.vmid: r for r in prov.status(ivshmem_context(fake, guest, scope={"all": True}))}
    assert (rows[100].provisioned, rows[100].disk, rows[100].pending) == (True, "ivshmem", False)

    un = prov.unprovision(ivshmem_context(fake, guest), 100)
    assert fake.vms[100].config["hookscript"] == "local:snippets/operator.sh"  # the operator's, back
    assert "ivshmem" in fake.vms[100].pending_delete  # the running QEMU keeps it until a cold start
    assert not ivshmem.snippet_path(fake.paths, "local:snippets/pvepstore-hook-100.sh").exists()
    assert un.detach is None and any("operator.sh" in c for c in un.changes)
    assert not [p for p in guest.files if p.startswith("/etc/")] and not guest.loaded


def test_provision_ivshmem_dry_run_changes_nothing(ivshmem_node):
    fake = ivshmem_node
    fake.add_vm(100, IPCONFIG, running=True)
    guest = IvshmemGuest(fake)
    before = fake.vm_config_path(100).read_text()
    res = prov.provision(ivshmem_context(fake, guest, dry_run=True), 100, dry_run=True)
    assert res.ok and not fake.writes() and fake.vm_config_path(100).read_text() == before
    assert not guest.files and "apply" not in guest.calls
    res = prov.provision(context(fake, guest, dry_run=True), 100, dry_run=True, backend="ivshmem")
    # --backend without a config key (auto): collect follows what provision records, no note needed
    assert not any("vms.100.backend" in n for n in res.notes), res.notes
    text = "\n".join(provision_lines(res))
    assert ("POST /nodes/pve1/qemu/100/config ivshmem=size=1,name=pvepstore-100 "
            "hookscript=local:snippets/pvepstore-hook-100.sh digest=") in text
    assert "would write" in text and "next cold start" in text
    assert not state.provision_record(fake.load_config(), 100)
    assert not ivshmem.snippet_path(fake.paths, "local:snippets/pvepstore-hook-100.sh").exists()


def test_provision_ivshmem_starts_a_stopped_vm_when_asked(ivshmem_node):
    fake = ivshmem_node
    fake.add_vm(100, IPCONFIG)
    guest = IvshmemGuest(fake)
    res = prov.provision(ivshmem_context(fake, guest), 100)
    assert not res.ok and "not running" in res.problems[0] and not res.device_pending
    assert fake.vms[100].config["ivshmem"] == "size=1,name=pvepstore-100"  # stopped: applied at once
    fake.reboot_hooks.clear()
    orig = fake.start_qemu

    def start(vmid):
        pid = orig(vmid)
        guest.started()
        return pid
    fake.start_qemu = start
    res = prov.provision(ivshmem_context(fake, guest), 100, restart=True)
    assert res.ok and res.restarted and fake.calls("POST", "/status/start"), provision_lines(res)
    assert "ran load-ramoops" in res.applied.done


def test_provision_ivshmem_refusals(ivshmem_node, monkeypatch):
    fake = ivshmem_node
    fake.add_vm(100, {**IPCONFIG, "ivshmem": "size=32,name=looking-glass"}, running=True)
    guest = IvshmemGuest(fake)
    with pytest.raises(PveError, match="already has an ivshmem device") as info:
        prov.provision(ivshmem_context(fake, guest), 100)
    assert "one ivshmem device per VM" in info.value.hint
    fake.set_config(100, ivshmem=None)
    ctx = ivshmem_context(fake, guest)

    def refuse(method, path, **kw):
        raise PveError(f"{method} /{path}: 500 only root can set 'hookscript' config")
    monkeypatch.setattr(ctx.api, "run_task", refuse)
    with pytest.raises(PveError, match="refused ivshmem and hookscript") as info:
        prov.provision(ctx, 100)
    assert "only root@pam" in info.value.hint and "api.backend: local" in info.value.hint
    # no snippets storage at all: said, with the fix
    fake.storages["local"]["content"] = "iso,images"
    fake._write_storage_cfg()
    with pytest.raises(PveError, match="holds snippets") as info:
        prov.provision(ivshmem_context(fake, guest), 100)
    assert "pvesm set local --content" in info.value.hint
