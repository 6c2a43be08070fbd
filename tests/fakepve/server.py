"""A stateful fake of the Proxmox VE API over HTTPS, validated against the real schema.

Every request is checked by :mod:`tests.fakepve.schema` first (unknown path or
method → 501, bad parameters → 400 ``Parameter verification failed.`` with
PVE's ``errors`` object), then served from in-memory state that is mirrored to
a simulated node under ``host_root``: VM configs in PVE's file format
(``/etc/pve/nodes/<node>/qemu-server/<vmid>.conf``, digest = SHA1 of that
text), ``.members``, ``.vmlist``, ``storage.cfg``, the CA, and volumes as
files (dir: ``<path>/images/<vmid>/``; lvm/lvmthin: a backing file that
appears as ``/dev/<vg>/<lv>`` only while active; zfspool: ``/dev/zvol/...``).

Behaviour modelled on qemu-server 9 (../shared/reference/proxmox.md §1):
``STORAGE:GiB`` allocates ``vm-<vmid>-disk-<n>``; changes go to ``[PENDING]``
and are applied at once when the VM is stopped, hotplugged when it runs and
``hotplug`` allows (virtio/scsi disks need ``disk``; ide/sata never), else
stay pending; POST config is a ``qmconfig`` task whose errors end the task,
not the HTTP call; a replaced/deleted drive becomes ``unusedN`` unless
``force``; ``delete=unusedN`` frees the volume; ``unusedN`` entries whose
volume is in use again disappear; reboot applies pending changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from pvepstore.hostpaths import HostPaths

from . import schema
from .pki import make_pki

DRIVE_RE = re.compile(r"^(ide|sata|scsi|virtio|efidisk|tpmstate)\d+$")
NEW_DISK_RE = re.compile(r"^(([^/:\s]+):)?(\d+(\.\d+)?)$")
# options PVE applies to a running VM at once (no device change)
FAST_PLUG = {"name", "description", "tags", "onboot", "protection", "hookscript", "lock",
             "startup", "ciuser", "cipassword", "ipconfig0", "sshkeys", "agent"}
API_PREFIX = "/api2/json"
# A real sleeping process standing in for QEMU: a main thread and one vCPU thread named as QEMU
# names it under KVM (the kernel logs a fault by the faulting thread's comm and id).
FAKE_QEMU = ("import threading, time\n"
             "def vcpu():\n"
             "    with open(f'/proc/self/task/{threading.get_native_id()}/comm', 'w') as f:\n"
             "        f.write('CPU 0/KVM')\n"
             "    time.sleep(3600)\n"
             "threading.Thread(target=vcpu, daemon=True).start()\n"
             "time.sleep(3600)\n")


class PveFailure(Exception):
    """A handler error: HTTP ``status`` with PVE's message (``errors`` for 400s)."""

    def __init__(self, status: int, message: str, errors: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


@dataclass
class Volume:
    volid: str
    storage: str
    name: str
    vmid: int
    size: int
    fmt: str
    backing: Path  # the file holding the bytes
    active: bool = True


@dataclass
class FakeVm:
    vmid: int
    node: str
    config: dict[str, str]
    pending: dict[str, str] = field(default_factory=dict)
    pending_delete: list[str] = field(default_factory=list)
    running: bool = False
    agent_interfaces: list | None = None
    qemu: subprocess.Popen | None = None
    hotplug_error: str | None = None  # the next hotplug fails with this text


@dataclass
class Task:
    upid: str
    node: str
    type: str
    id: str
    user: str
    exitstatus: str = "OK"
    log: list[str] = field(default_factory=list)
    polls_running: int = 0
    starttime: int = 0


@dataclass
class RecordedRequest:
    method: str
    path: str  # without /api2/json
    params: dict
    status: int
    template: str | None = None


class FakePve:
    """State of a fake single- or multi-node cluster; ``start()`` serves it."""

    def __init__(self, host_root: Path, *, nodes=("pve1",), local_node: str = "pve1",
                 user: str = "root@pam", token_name: str = "pvepstore",
                 token_value: str = "11111111-2222-3333-4444-555555555555"):
        self.host_root = Path(host_root)
        self.paths = HostPaths(self.host_root)
        self.nodes = list(nodes)
        self.local_node = local_node
        self.user, self.token_name, self.token_value = user, token_name, token_value
        self.vms: dict[int, FakeVm] = {}
        self.storages: dict[str, dict[str, str]] = {}
        self.volumes: dict[str, Volume] = {}
        self.tasks: dict[str, Task] = {}
        self.requests: list[RecordedRequest] = []
        self.task_polls_running = 0  # status polls answered "running" before a task stops
        self.reboot_hooks: list[Callable[[int], None]] = []  # called with the vmid on API reboots
        # the token's effective privileges per ACL path (propagated down); None: all of them (root@pam)
        self.privileges: dict[str, set[str]] | None = None
        self.storage_status: dict[str, dict] = {}  # overrides of GET .../storage/{storage}/status fields
        self.lock = threading.RLock()
        self._pid = 0x1000
        self.server: ThreadingHTTPServer | None = None
        self.port = 0
        self.ca_path = self.paths.pve_root_ca
        self.cert_dir = self.host_root / "etc/pve/local"
        make_pki(self.ca_path, self.cert_dir / "pve-ssl.pem", self.cert_dir / "pve-ssl.key", local_node)
        self.add_storage("local", "dir", path="/var/lib/vz", content="iso,vztmpl,backup,images")
        self.add_storage("local-lvm", "lvmthin", vgname="pve", thinpool="data", content="rootdir,images")
        self._write_members()

    # -- server -------------------------------------------------------------------
    def start(self) -> "FakePve":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_dir / "pve-ssl.pem", self.cert_dir / "pve-ssl.key")
        fake = self

        class Handler(_Handler):
            pve = fake
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="fakepve", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
        for vm in self.vms.values():
            self.stop_qemu(vm.vmid)

    # -- helpers for tests ----------------------------------------------------------
    def add_storage(self, storeid: str, type_: str, **opts: str) -> None:
        self.storages[storeid] = {"type": type_, **opts}
        self._write_storage_cfg()

    def add_vm(self, vmid: int, config: dict[str, str] | None = None, *, node: str | None = None,
               running: bool = False, qemu: bool | None = None, agent_interfaces: list | None = None,
               disk_storage: str | None = "local-lvm", pending: dict | None = None) -> FakeVm:
        """A VM with a system disk (allocated on ``disk_storage``) and one NIC."""
        node = node or self.local_node
        cfg = {"name": f"vm{vmid}", "memory": "2048", "cores": "2", "ostype": "l26",
               "scsihw": "virtio-scsi-single", "boot": "order=scsi0",
               "net0": f"virtio=BC:24:11:{vmid // 256 % 256:02X}:{vmid % 256:02X}:01,bridge=vmbr0"}
        vm = FakeVm(vmid, node, cfg, running=running, agent_interfaces=agent_interfaces)
        self.vms[vmid] = vm
        if disk_storage:
            vol = self.allocate(disk_storage, vmid, 8 << 30 if self.storages[disk_storage]["type"] != "dir"
                                else 1 << 20)
            cfg["scsi0"] = f"{vol.volid},iothread=1,size={_size_text(vol.size)}"
        cfg.update(config or {})
        vm.pending.update(pending or {})
        self._write_vm(vm)
        if qemu if qemu is not None else running:
            self.start_qemu(vmid)
        return vm

    def vm_config_path(self, vmid: int) -> Path:
        vm = self.vms[vmid]
        return self.paths.vm_config(vm.node, vmid)

    def start_qemu(self, vmid: int) -> int:
        """A real sleeping process whose cmdline carries ``-pidfile <pidfile>``, as QEMU's does."""
        vm = self.vms[vmid]
        vm.running = True
        pidfile = self.paths.vm_pidfile(vmid)
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        if vm.qemu is None or vm.qemu.poll() is not None:
            vm.qemu = subprocess.Popen([sys.executable, "-c", FAKE_QEMU,
                                        "-id", str(vmid), "-name", f"vm{vmid}", "-pidfile", str(pidfile)])
        deadline = time.monotonic() + 10
        while str(pidfile).encode() not in Path(f"/proc/{vm.qemu.pid}/cmdline").read_bytes():
            if time.monotonic() > deadline:  # the child has not exec'ed yet
                raise RuntimeError("fake QEMU did not start")
            time.sleep(0.005)
        while not self.vcpu_threads(vmid):
            if time.monotonic() > deadline:
                raise RuntimeError("fake QEMU started no vCPU thread")
            time.sleep(0.005)
        pidfile.write_text(f"{vm.qemu.pid}\n")
        return vm.qemu.pid

    def vcpu_threads(self, vmid: int) -> list[int]:
        """The thread ids of the fake QEMU's vCPU threads (named as QEMU names them)."""
        out = []
        for t in Path(f"/proc/{self.vms[vmid].qemu.pid}/task").iterdir():
            try:
                if (t / "comm").read_text().strip() == "CPU 0/KVM":
                    out.append(int(t.name))
            except OSError:
                pass
        return out

    def stop_qemu(self, vmid: int, sig: int = signal.SIGKILL) -> None:
        """QEMU ends (killed by ``sig``; a SIGSEGV stands for its crash) and its pidfile goes."""
        vm = self.vms[vmid]
        vm.running = False
        if vm.qemu is not None:
            vm.qemu.send_signal(sig)
            vm.qemu.wait()
            vm.qemu = None
        self.paths.vm_pidfile(vmid).unlink(missing_ok=True)

    def set_config(self, vmid: int, **values: str | None) -> None:
        """Change a VM's config directly (as another PVE process would)."""
        vm = self.vms[vmid]
        for k, v in values.items():
            if v is None:
                vm.config.pop(k, None)
            else:
                vm.config[k] = v
        self._write_vm(vm)

    def move_vm(self, vmid: int, node: str) -> None:
        vm = self.vms[vmid]
        self.paths.vm_config(vm.node, vmid).unlink(missing_ok=True)
        vm.node = node
        self._write_vm(vm)

    def allocate(self, storeid: str, vmid: int, size: int, fmt: str = "raw",
                 name: str | None = None) -> Volume:
        st = self.storages.get(storeid)
        if st is None:
            raise PveFailure(500, f"storage '{storeid}' does not exist")
        if "images" not in st.get("content", "images"):
            raise PveFailure(500, f"storage '{storeid}' does not support vm images")
        if name is None:
            n = 0
            while any(v.storage == storeid and v.name.split(".")[0] == f"vm-{vmid}-disk-{n}"
                      for v in self.volumes.values()):
                n += 1
            name = f"vm-{vmid}-disk-{n}" + (f".{fmt}" if st["type"] == "dir" else "")
        typ = st["type"]
        if typ == "dir":
            volname = f"{vmid}/{name}"
            backing = self.paths.storage_path(st["path"]) / "images" / str(vmid) / name
        elif typ in ("lvm", "lvmthin"):
            volname = name
            backing = self.host_root / ".fakepve" / "lvm" / st["vgname"] / name
        elif typ == "zfspool":
            volname = name
            backing = self.paths.device(f"/dev/zvol/{st['pool']}/{name}")
        else:
            raise PveFailure(500, f"fake: storage type {typ} not modelled")
        volid = f"{storeid}:{volname}"
        backing.parent.mkdir(parents=True, exist_ok=True)
        with open(backing, "wb") as f:
            f.truncate(size)
        vol = Volume(volid, storeid, name, vmid, size, fmt, backing)
        self.volumes[volid] = vol
        self.set_active(volid, typ != "lvm")  # thin LVs are created active, thick ones too but
        return vol                            # PVE deactivates them at VM stop: start inactive

    def set_active(self, volid: str, active: bool) -> None:
        vol = self.volumes[volid]
        st = self.storages[vol.storage]
        vol.active = active
        if st["type"] not in ("lvm", "lvmthin"):
            return
        dev = self.paths.device(f"/dev/{st['vgname']}/{vol.name}")
        if active:
            dev.parent.mkdir(parents=True, exist_ok=True)
            if not dev.exists():
                dev.symlink_to(vol.backing)
        else:
            dev.unlink(missing_ok=True)

    def place_image(self, volid: str, image: Path) -> None:
        """Replace a volume's bytes with an image file (a real-kernel fixture)."""
        vol = self.volumes[volid]
        size = Path(image).stat().st_size
        with open(image, "rb") as src, open(vol.backing, "r+b") as dst:
            dst.truncate(0)
            dst.truncate(size)
            pos = 0
            while pos < size:  # copy the data extents only: the volume stays sparse
                try:
                    pos = os.lseek(src.fileno(), pos, os.SEEK_DATA)
                except OSError:
                    break
                end = os.lseek(src.fileno(), pos, os.SEEK_HOLE)
                src.seek(pos)
                dst.seek(pos)
                dst.write(src.read(end - pos))
                pos = end
        vol.size = size

    def volume_bytes(self, volid: str) -> bytes:
        return self.volumes[volid].backing.read_bytes()

    def calls(self, method: str | None = None, contains: str = "") -> list[RecordedRequest]:
        return [r for r in self.requests
                if (method is None or r.method == method) and contains in r.path]

    def writes(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method != "GET"]

    def lvm_runner(self) -> "FakeLvmRunner":
        return FakeLvmRunner(self)

    # -- PVE file formats ------------------------------------------------------------
    def _write_members(self) -> None:
        members = {"nodename": self.local_node, "version": 7,
                   "cluster": {"name": "fakecluster", "version": 3, "nodes": len(self.nodes), "quorate": 1},
                   "nodelist": {n: {"id": i + 1, "online": 1, "ip": f"10.0.0.{i + 1}"}
                                for i, n in enumerate(self.nodes)}}
        self.paths.members.parent.mkdir(parents=True, exist_ok=True)
        self.paths.members.write_text(json.dumps(members, indent=1) + "\n")
        self._write_vmlist()

    def _write_vmlist(self) -> None:
        ids = {str(v.vmid): {"node": v.node, "type": "qemu", "version": 1} for v in self.vms.values()}
        (self.paths.pve / ".vmlist").write_text(json.dumps({"version": 1, "ids": ids}, indent=1) + "\n")

    def _write_storage_cfg(self) -> None:
        out = []
        for sid, st in self.storages.items():
            out.append(f"{st['type']}: {sid}")
            out.extend(f"\t{k} {v}" for k, v in st.items() if k != "type")
            out.append("")
        self.paths.storage_cfg.parent.mkdir(parents=True, exist_ok=True)
        self.paths.storage_cfg.write_text("\n".join(out))

    def raw_config(self, vm: FakeVm) -> str:
        def section(conf: dict, pending: bool) -> str:
            raw = ""
            descr = conf.get("description")
            if descr:
                raw += "".join(f"#{_encode_text(line)}\n" for line in descr.split("\n"))
            for k in sorted(conf):
                if k != "description":
                    raw += f"{k}: {conf[k]}\n"
            return raw
        raw = section(vm.config, False)
        if vm.pending or vm.pending_delete:
            pend = dict(vm.pending)
            if vm.pending_delete:
                pend["delete"] = ",".join(vm.pending_delete)
            raw += "\n[PENDING]\n" + section(pend, True)
        return raw

    def digest(self, vm: FakeVm) -> str:
        return hashlib.sha1(self.raw_config(vm).encode()).hexdigest()

    def _write_vm(self, vm: FakeVm) -> None:
        path = self.paths.vm_config(vm.node, vm.vmid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.raw_config(vm))
        self._write_vmlist()

    # -- tasks ----------------------------------------------------------------------
    def new_task(self, node: str, type_: str, id_: str, user: str, error: str | None = None,
                 log: list[str] | None = None) -> str:
        self._pid += 1
        start = int(time.time())
        upid = f"UPID:{node}:{self._pid:08X}:{0x1E240 + self._pid:08X}:{start:08X}:{type_}:{id_}:{user}:"
        self.tasks[upid] = Task(upid, node, type_, id_, user, exitstatus=error or "OK",
                                log=(log or []) + ([f"TASK ERROR: {error}"] if error else ["TASK OK"]),
                                polls_running=self.task_polls_running, starttime=start)
        return upid

    # -- request dispatch -------------------------------------------------------------
    def handle(self, method: str, path: str | list[str], params: dict, authuser: str) -> Any:
        template, p = schema.validate_request(method, path, params)
        node = p.get("node")
        if node is not None and node not in self.nodes:
            raise PveFailure(595, f"no such cluster node '{node}'")
        key = (method, template)
        handler = ROUTES.get(key)
        if handler is None:
            raise PveFailure(501, f"Method '{method} {template}' not implemented in the fake")
        with self.lock:
            return handler(self, p, authuser)

    def vm_of(self, p: dict) -> FakeVm:
        vmid = int(p["vmid"])
        vm = self.vms.get(vmid)
        if vm is None or vm.node != p["node"]:
            raise PveFailure(500, f"Configuration file 'nodes/{p['node']}/qemu-server/{vmid}.conf' does not exist")
        return vm


# -- route handlers -------------------------------------------------------------------

def _version(pve: FakePve, p: dict, user: str):
    return {"version": "9.1.1", "release": "9.1", "repoid": "fake0000"}


def _resources(pve: FakePve, p: dict, user: str):
    out = []
    if p.get("type") in (None, "vm"):
        for vm in sorted(pve.vms.values(), key=lambda v: v.vmid):
            entry = {"id": f"qemu/{vm.vmid}", "vmid": vm.vmid, "node": vm.node, "type": "qemu",
                     "status": "running" if vm.running else "stopped", "name": vm.config.get("name"),
                     "template": 1 if vm.config.get("template") == "1" else 0,
                     "maxdisk": 0, "maxmem": int(vm.config.get("memory", "512")) << 20, "uptime": 0}
            for k in ("tags", "lock"):
                if k in vm.config:
                    entry[k] = vm.config[k]
            if _cluster_config.ha_state(pve, vm.vmid):  # PVE sets hastate for HA resources only
                entry["hastate"] = _cluster_config.ha_state(pve, vm.vmid)
            out.append(entry)
    if p.get("type") in (None, "node"):
        out += [{"id": f"node/{n}", "node": n, "type": "node", "status": "online"} for n in pve.nodes]
    if p.get("type") in (None, "storage"):
        for n in pve.nodes:
            for sid, st in pve.storages.items():
                out.append({"id": f"storage/{n}/{sid}", "storage": sid, "node": n, "type": "storage",
                            "plugintype": st["type"], "status": "available",
                            "shared": 0, "content": st.get("content", "")})
    return out


def _nodes(pve: FakePve, p: dict, user: str):
    return [{"node": n, "status": "online"} for n in pve.nodes]


def _qemu_list(pve: FakePve, p: dict, user: str):
    return [{"vmid": v.vmid, "status": "running" if v.running else "stopped", "name": v.config.get("name")}
            for v in pve.vms.values() if v.node == p["node"]]


def _get_config(pve: FakePve, p: dict, user: str):
    vm = pve.vm_of(p)
    conf = dict(vm.config)
    if not _true(p.get("current")):
        conf.update(vm.pending)
        for k in vm.pending_delete:
            conf.pop(k, None)
    conf["digest"] = pve.digest(vm)
    return conf


def _pending(pve: FakePve, p: dict, user: str):
    vm = pve.vm_of(p)
    out = []
    for k in sorted(set(vm.config) | set(vm.pending) | set(vm.pending_delete)):
        e: dict[str, Any] = {"key": k}
        if k in vm.config:
            e["value"] = vm.config[k]
        if k in vm.pending:
            e["pending"] = vm.pending[k]
        if k in vm.pending_delete:
            e["delete"] = 1
        out.append(e)
    return out


def _update_config(pve: FakePve, p: dict, user: str, *, sync: bool):
    vm = pve.vm_of(p)
    # checked before the worker is forked (update_vm_api), so they fail the HTTP call itself
    for opt in ("hookscript", "ivshmem"):
        if opt in p and user.split("!")[0] != "root@pam":
            raise PveFailure(500, f"only root can set '{opt}' config")
    if "hookscript" in p and not _snippet_file(pve, p["hookscript"]).is_file():
        raise PveFailure(400, "Parameter verification failed.",
                         {"hookscript": f"script '{p['hookscript']}' does not exist"})
    log: list[str] = []
    try:
        _apply_update(pve, vm, p, log)
        error = None
    except PveFailure as exc:
        if sync:
            raise
        error = exc.message
    finally:
        pve._write_vm(vm)
    if sync:
        return None
    return pve.new_task(vm.node, "qmconfig", str(vm.vmid), user, error, log)


def _apply_update(pve: FakePve, vm: FakeVm, p: dict, log: list[str]) -> None:
    if p.get("digest") and p["digest"] != pve.digest(vm):
        raise PveFailure(500, "detected modified configuration - file changed by other user? Try again.")
    if vm.config.get("lock"):
        raise PveFailure(500, f"VM is locked ({vm.config['lock']})")
    control = {"node", "vmid", "digest", "delete", "revert", "force", "background_delay", "skiplock"}
    force = _true(p.get("force"))
    for k in [x for x in re.split(r"[,;\s]+", p.get("revert", "")) if x]:
        vm.pending.pop(k, None)
        if k in vm.pending_delete:
            vm.pending_delete.remove(k)
    for key, value in p.items():
        if key in control:
            continue
        if DRIVE_RE.match(key):
            value = _create_disk(pve, vm, key, value, log)
        vm.pending[key] = value
        if key in vm.pending_delete:
            vm.pending_delete.remove(key)
    for key in [x for x in re.split(r"[,;\s]+", p.get("delete", "")) if x]:
        if key not in vm.config and key not in vm.pending:
            continue
        vm.pending.pop(key, None)
        if key in vm.config and key not in vm.pending_delete:
            vm.pending_delete.append(key)
    _apply_pending(pve, vm, log, force=force)


def _create_disk(pve: FakePve, vm: FakeVm, key: str, value: str, log: list[str]) -> str:
    props = schema.lookup_property(
        schema.load_schema()["/nodes/{node}/qemu/{vmid}/config"]["POST"]["parameters"]["properties"], key)
    opts = schema.parse_property_string(props["format"], value)
    file = opts.pop("file")
    m = NEW_DISK_RE.match(file)
    if m:
        storeid = m.group(2)
        if not storeid:
            raise PveFailure(500, f"{key}: no storage ID specified (and no default storage)")
        size = int(float(m.group(3)) * (1 << 30) + 1023) // 1024 * 1024
        vol = pve.allocate(storeid, vm.vmid, size, opts.get("format", "raw"))
        log.append(f"{key}: successfully created disk '{vol.volid},{_opts_text(opts)}'")
        opts["size"] = _size_text(size)
        opts.pop("format", None)  # "no longer needed" (create_disks)
        file = vol.volid
    elif file not in ("none", "cdrom") and not file.startswith("/"):
        if file not in pve.volumes:
            raise PveFailure(500, f"{key}: volume '{file}' does not exist")
        fmt = pve.volumes[file].fmt
        if opts.get("format") and opts["format"] != fmt:
            raise PveFailure(500, f"drive '{key}' - volume '{file}' - 'format={opts['format']}' option "
                                  f"different from storage format '{fmt}'")
    return ",".join([file] + [f"{k}={v}" for k, v in sorted(opts.items())])


def _opts_text(opts: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(opts.items()))


def _hotplug_features(vm: FakeVm) -> set[str]:
    value = vm.config.get("hotplug", "network,disk,usb")
    if value.strip() == "1":
        return {"network", "disk", "usb"}
    if value.strip() == "0":
        return set()
    return set(value.split(","))


def _apply_pending(pve: FakePve, vm: FakeVm, log: list[str], *, force: bool = False) -> None:
    features = _hotplug_features(vm)
    errors = []
    for key in list(vm.pending_delete):
        if vm.running and not _can_hotplug(key, features):
            continue
        old = vm.config.pop(key, None)
        vm.pending_delete.remove(key)
        if old is None:
            continue
        volid = old.split(",")[0]
        if key.startswith("unused") or (force and DRIVE_RE.match(key)):
            _free(pve, volid)
        elif DRIVE_RE.match(key):
            _register_unused(vm, volid)
    for key, value in list(vm.pending.items()):
        if vm.running and not _can_hotplug(key, features):
            continue
        if vm.running and DRIVE_RE.match(key) and vm.hotplug_error:
            errors.append(f"{key}: hotplug problem - {vm.hotplug_error}")
            vm.hotplug_error = None
            continue
        old = vm.config.get(key)
        vm.config[key] = value
        del vm.pending[key]
        if old and DRIVE_RE.match(key) and old.split(",")[0] != value.split(",")[0]:
            _register_unused(vm, old.split(",")[0])
    used = {v.split(",")[0] for k, v in list(vm.config.items()) + list(vm.pending.items()) if DRIVE_RE.match(k)}
    for k in [k for k in vm.config if k.startswith("unused") and vm.config[k] in used]:
        del vm.config[k]
    if errors:
        raise PveFailure(400, "\n".join(errors))


def _can_hotplug(key: str, features: set[str]) -> bool:
    if key in FAST_PLUG or key.startswith("unused"):
        return True
    if re.match(r"^(virtio|scsi)\d+$", key):
        return "disk" in features
    if re.match(r"^net\d+$", key):
        return "network" in features
    return False


def _register_unused(vm: FakeVm, volid: str) -> None:
    if volid in vm.config.values():
        return
    n = 0
    while f"unused{n}" in vm.config:
        n += 1
    vm.config[f"unused{n}"] = volid


def _free(pve: FakePve, volid: str) -> None:
    vol = pve.volumes.pop(volid, None)
    if vol is None:
        return
    st = pve.storages[vol.storage]
    if st["type"] in ("lvm", "lvmthin"):
        pve.paths.device(f"/dev/{st['vgname']}/{vol.name}").unlink(missing_ok=True)
    vol.backing.unlink(missing_ok=True)


def _snippet_file(pve: FakePve, volid: str) -> Path:
    storeid, _, rest = volid.partition(":")
    st = pve.storages.get(storeid, {})
    return pve.paths.storage_path(st.get("path", "/nonexistent")) / rest


ALL_PRIVILEGES = ("VM.Audit", "VM.Config.Disk", "VM.Config.Options", "VM.Config.HWType", "VM.PowerMgmt",
                  "VM.Monitor", "VM.GuestAgent.Audit", "Datastore.Audit", "Datastore.AllocateSpace",
                  "Sys.Audit", "Sys.Modify", "Sys.Syslog")


def _permissions(pve: FakePve, p: dict, user: str):
    """Effective privileges (an ACL on a path applies to everything below it)."""
    def effective(path: str) -> dict:
        if pve.privileges is None:
            return {priv: 1 for priv in ALL_PRIVILEGES}
        probe = path.rstrip("/") or "/"
        while True:
            if probe in pve.privileges:
                return {priv: 1 for priv in sorted(pve.privileges[probe])}
            if probe == "/":
                return {}
            probe = probe.rsplit("/", 1)[0] or "/"
    if p.get("path"):
        return {p["path"]: effective(p["path"])}
    return {path: effective(path) for path in (pve.privileges or {"/": None})}


def _storage_status(pve: FakePve, p: dict, user: str):
    st = pve.storages.get(p["storage"])
    if st is None:
        raise PveFailure(500, f"storage '{p['storage']}' does not exist")
    total = 64 << 30
    used = sum(v.size for v in pve.volumes.values() if v.storage == p["storage"])
    out = {"type": st["type"], "content": st.get("content", ""), "active": 1, "enabled": 1, "shared": 0,
           "total": total, "used": used, "avail": max(total - used, 0)}
    out.update(pve.storage_status.get(p["storage"], {}))
    return out


def _status_current(pve: FakePve, p: dict, user: str):
    vm = pve.vm_of(p)
    out = {"vmid": vm.vmid, "name": vm.config.get("name"), "status": "running" if vm.running else "stopped",
           "qmpstatus": "running" if vm.running else "stopped", "uptime": 10 if vm.running else 0,
           "cpus": int(vm.config.get("cores", "1")), "maxmem": int(vm.config.get("memory", "512")) << 20,
           "ha": {"managed": 0}}
    if _agent_enabled(vm):
        out["agent"] = 1
    if vm.config.get("lock"):
        out["lock"] = vm.config["lock"]
    if vm.running and vm.qemu is not None:
        out["pid"] = vm.qemu.pid
    return out


def _reboot(pve: FakePve, p: dict, user: str):
    vm = pve.vm_of(p)
    if not vm.running:
        raise PveFailure(500, f"VM {vm.vmid} not running")
    vm.running = False  # shutdown + start: pending changes are applied
    _apply_pending(pve, vm, [])
    vm.running = True
    pve._write_vm(vm)
    for hook in pve.reboot_hooks:
        hook(vm.vmid)
    return pve.new_task(vm.node, "qmreboot", str(vm.vmid), user)


def _reset(pve: FakePve, p: dict, user: str):
    """A hard reset: the guest restarts inside the same QEMU process (QMP system_reset)."""
    vm = pve.vm_of(p)
    if not vm.running:
        raise PveFailure(500, f"VM {vm.vmid} not running")
    return pve.new_task(vm.node, "qmreset", str(vm.vmid), user)


def _start(pve: FakePve, p: dict, user: str):
    vm = pve.vm_of(p)
    _apply_pending(pve, vm, [])
    pve.start_qemu(vm.vmid)
    pve._write_vm(vm)
    return pve.new_task(vm.node, "qmstart", str(vm.vmid), user)


def _stop(pve: FakePve, p: dict, user: str):
    vm = pve.vm_of(p)
    pve.stop_qemu(vm.vmid)
    return pve.new_task(vm.node, "qmstop", str(vm.vmid), user)


def _shutdown(pve: FakePve, p: dict, user: str):
    """A clean ACPI shutdown: the guest powers off in order (the fake guest always complies)."""
    vm = pve.vm_of(p)
    if not vm.running:
        raise PveFailure(500, f"VM {vm.vmid} not running")
    pve.stop_qemu(vm.vmid)
    return pve.new_task(vm.node, "qmshutdown", str(vm.vmid), user)


def _agent_enabled(vm: FakeVm) -> bool:
    value = vm.config.get("agent", "0")
    first = value.split(",")[0]
    return first in ("1", "enabled=1") or "enabled=1" in value.split(",")


def _agent_interfaces(pve: FakePve, p: dict, user: str):
    vm = pve.vm_of(p)
    if not _agent_enabled(vm):
        raise PveFailure(500, "No QEMU guest agent configured")
    if not vm.running:
        raise PveFailure(500, f"VM {vm.vmid} is not running")
    if vm.agent_interfaces is None:
        raise PveFailure(500, "QEMU guest agent is not running")
    return {"result": vm.agent_interfaces}


def _task_status(pve: FakePve, p: dict, user: str):
    task = pve.tasks.get(p["upid"])
    if task is None:
        raise PveFailure(500, f"unable to parse worker upid '{p['upid']}'")
    base = {"upid": task.upid, "node": task.node, "type": task.type, "id": task.id, "user": task.user,
            "pid": int(task.upid.split(":")[2], 16), "starttime": task.starttime}
    if task.polls_running > 0:
        task.polls_running -= 1
        return {**base, "status": "running"}
    return {**base, "status": "stopped", "exitstatus": task.exitstatus}


def _task_log(pve: FakePve, p: dict, user: str):
    task = pve.tasks.get(p["upid"])
    if task is None:
        raise PveFailure(500, f"unable to parse worker upid '{p['upid']}'")
    return [{"n": i + 1, "t": line} for i, line in enumerate(task.log)]


def _task_list(pve: FakePve, p: dict, user: str):
    """``GET /nodes/{node}/tasks``: newest first, filtered as PVE does (vmid, since/until, type, user)."""
    out = []
    for task in sorted(pve.tasks.values(), key=lambda t: t.starttime, reverse=True):
        if task.node != p["node"] or ("vmid" in p and task.id != str(p["vmid"])):
            continue
        if ("since" in p and task.starttime < int(p["since"])) or ("until" in p and task.starttime > int(p["until"])):
            continue
        if ("typefilter" in p and task.type != p["typefilter"]) or ("userfilter" in p and task.user != p["userfilter"]):
            continue
        if _true(p.get("errors")) and task.exitstatus == "OK":
            continue
        fields = task.upid.split(":")
        out.append({"upid": task.upid, "node": task.node, "pid": int(fields[2], 16), "pstart": int(fields[3], 16),
                    "starttime": task.starttime, "endtime": task.starttime, "type": task.type, "id": task.id,
                    "user": task.user, "status": task.exitstatus})
    if p.get("source", "archive") == "active":
        out = []  # every fake task has ended by the time it is listed
    start = int(p.get("start", 0))
    return out[start:start + int(p.get("limit", 50))]


def _volume_of(pve: FakePve, p: dict) -> Volume:
    volume = p["volume"]
    volid = volume if ":" in volume else f"{p['storage']}:{volume}"
    vol = pve.volumes.get(volid)
    if vol is None:
        raise PveFailure(500, f"no such volume '{volid}'")
    return vol


def _volume_info(pve: FakePve, p: dict, user: str):
    vol = _volume_of(pve, p)
    st = pve.storages[vol.storage]
    if st["type"] == "dir":
        path = f"{st['path']}/images/{vol.vmid}/{vol.name}"
    elif st["type"] in ("lvm", "lvmthin"):
        path = f"/dev/{st['vgname']}/{vol.name}"
    else:
        path = f"/dev/zvol/{st['pool']}/{vol.name}"
    return {"path": path, "size": vol.size, "used": vol.size, "format": vol.fmt}


def _volume_delete(pve: FakePve, p: dict, user: str):
    vol = _volume_of(pve, p)
    _free(pve, vol.volid)
    return pve.new_task(p["node"], "imgdel", vol.volid, user)


def _content(pve: FakePve, p: dict, user: str):
    return [{"volid": v.volid, "format": v.fmt, "size": v.size, "vmid": v.vmid, "content": "images"}
            for v in pve.volumes.values() if v.storage == p["storage"]]


ROUTES: dict[tuple[str, str], Callable] = {
    ("GET", "/version"): _version,
    ("GET", "/cluster/resources"): _resources,
    ("GET", "/nodes"): _nodes,
    ("GET", "/nodes/{node}/qemu"): _qemu_list,
    ("GET", "/nodes/{node}/qemu/{vmid}/config"): _get_config,
    ("POST", "/nodes/{node}/qemu/{vmid}/config"): lambda pve, p, u: _update_config(pve, p, u, sync=False),
    ("PUT", "/nodes/{node}/qemu/{vmid}/config"): lambda pve, p, u: _update_config(pve, p, u, sync=True),
    ("GET", "/nodes/{node}/qemu/{vmid}/pending"): _pending,
    ("GET", "/nodes/{node}/qemu/{vmid}/status/current"): _status_current,
    ("POST", "/nodes/{node}/qemu/{vmid}/status/reboot"): _reboot,
    ("POST", "/nodes/{node}/qemu/{vmid}/status/reset"): _reset,
    ("POST", "/nodes/{node}/qemu/{vmid}/status/start"): _start,
    ("POST", "/nodes/{node}/qemu/{vmid}/status/stop"): _stop,
    ("POST", "/nodes/{node}/qemu/{vmid}/status/shutdown"): _shutdown,
    ("GET", "/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces"): _agent_interfaces,
    ("GET", "/nodes/{node}/tasks"): _task_list,
    ("GET", "/nodes/{node}/tasks/{upid}/status"): _task_status,
    ("GET", "/nodes/{node}/tasks/{upid}/log"): _task_log,
    ("GET", "/nodes/{node}/storage/{storage}/content"): _content,
    ("GET", "/nodes/{node}/storage/{storage}/status"): _storage_status,
    ("GET", "/access/permissions"): _permissions,
    ("GET", "/nodes/{node}/storage/{storage}/content/{volume}"): _volume_info,
    ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}"): _volume_delete,
}

# Routes of other concerns live in their own modules and register themselves into ROUTES
# (cluster configuration: HA resources, replication; host logs: journal, syslog, HA status).
from . import cluster_config as _cluster_config, hostlog as _hostlog  # noqa: E402,F401


def _encode_text(text: str) -> str:
    """PVE::Tools::encode_text: escape control/high-bit characters and ':'."""
    return "".join(c if (0x20 <= ord(c) <= 0x7e and c != ":") else
                   "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def _true(value: Any) -> bool:
    return str(value) == "1"


def _size_text(size: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


class _Handler(BaseHTTPRequestHandler):
    pve: FakePve
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one TLS record: with separate small writes, Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to every request.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # quiet
        pass

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        segments = [urllib.parse.unquote(s) for s in url.path.strip("/").split("/")]
        path = "/" + "/".join(segments)
        params: dict[str, Any] = {}
        pairs = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = self.rfile.read(length).decode()
            ctype = self.headers.get("Content-Type", "")
            if "json" in ctype:
                pairs += [(k, v if isinstance(v, str) else json.dumps(v) if isinstance(v, dict) else v)
                          for k, v in json.loads(body).items()]
            else:
                pairs += urllib.parse.parse_qsl(body, keep_blank_values=True)
        for k, v in pairs:
            if k in params:
                params[k] = (params[k] if isinstance(params[k], list) else [params[k]]) + [v]
            else:
                params[k] = v
        rec = RecordedRequest(method, path[len(API_PREFIX):] if path.startswith(API_PREFIX) else path,
                              dict(params), 0)
        self.pve.requests.append(rec)
        status, reason, payload = 200, "OK", None
        try:
            if not path.startswith(API_PREFIX):
                raise PveFailure(404, "Not found")
            user = self._auth()
            payload = {"data": self.pve.handle(method, segments[2:], params, user)}
        except schema.SchemaError as exc:
            status, reason, payload = 400, "Parameter verification failed.", {"data": None, "errors": exc.errors}
        except schema.NoSuchMethod:
            status, reason = 501, f"Method '{method} {rec.path}' not implemented"
            payload = {"data": None}
        except PveFailure as exc:
            status, reason = exc.status, exc.message.split("\n")[0]
            payload = {"data": None}
            if exc.errors or status == 400:
                reason = "Parameter verification failed." if status == 400 else reason
                payload["errors"] = exc.errors or {"_": exc.message}
            payload["message"] = exc.message + "\n"
        rec.status = status
        # pveproxy answers a failed authentication with a bare status line and an empty body
        body = b"" if status == 401 else json.dumps(payload).encode()
        self.send_response(status, reason.replace("\n", " "))
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _auth(self) -> str:
        header = self.headers.get("Authorization", "")
        expected = f"PVEAPIToken={self.pve.user}!{self.pve.token_name}={self.pve.token_value}"
        if header != expected:
            raise PveFailure(401, "invalid token value!" if header.startswith("PVEAPIToken=") else "No ticket")
        return f"{self.pve.user}!{self.pve.token_name}"

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")


class FakeLvmRunner:
    """Answers ``lvs``/``lvchange`` like LVM2 does for the fake's LVM storages; records every call.

    ``transcript`` holds (argv, returncode, stdout, stderr) — the outputs are
    LVM2's real formats (``lvs --noheadings -o lv_attr``: ``  Vwi-a-tz--``).
    """

    def __init__(self, pve: FakePve):
        self.pve = pve
        self.transcript: list[tuple[tuple[str, ...], int, str, str]] = []

    def _vol(self, target: str) -> Volume | None:
        vg, _, lv = target.partition("/")
        for vol in self.pve.volumes.values():
            st = self.pve.storages[vol.storage]
            if st.get("vgname") == vg and vol.name == lv:
                return vol
        return None

    def run(self, argv, *, timeout: float = 30.0):
        from pvepstore.pve.commands import CommandResult
        argv = tuple(argv)
        target = argv[-1]
        vol = self._vol(target)
        if vol is None:
            rc, out, err = 5, "", f'  Failed to find logical volume "{target}"\n'
        elif argv[0] == "lvs":
            thin = self.pve.storages[vol.storage]["type"] == "lvmthin"
            attr = ("V" if thin else "-") + "wi-" + ("a" if vol.active else "-") + ("-tz--" if thin else "-----")
            rc, out, err = 0, f"  {attr}\n", ""
        elif argv[0] == "lvchange" and any(a.startswith("-a") and "y" in a for a in argv):
            self.pve.set_active(vol.volid, True)
            rc, out, err = 0, "", ""
        elif argv[0] == "lvchange" and any(a.startswith("-a") and "n" in a for a in argv):
            self.pve.set_active(vol.volid, False)
            rc, out, err = 0, "", ""
        else:
            rc, out, err = 3, "", f"fake lvm: unexpected command {' '.join(argv)}\n"
        self.transcript.append((argv, rc, out, err))
        return CommandResult(list(argv), rc, out, err)
