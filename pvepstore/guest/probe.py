"""The probe report: the facts of a guest's kernel, modules, files, pstore disk and ivshmem device.

Built from one run of :data:`pvepstore.guest.scripts.PROBE`.  The verdict for one backend
(what it can capture here, what it costs, what is in the way: ``target``, ``configured``,
``capabilities``, ``costs``, ``problems``) is filled in by that backend's rules
(``blk_wishes.assess``, ``ramoops_wishes.assess``, shared parts in ``rules``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .kernels import measured_kernel
from .legacy import find_legacy
from .manifest import parse_manifest
from .model import Capability, FileState, Problem
from .scripts import MANIFEST
from .wire import Reply, decode

__all__ = ["BY_ID", "KMOD_BLK", "KMOD_RAMOOPS", "Capability", "DiskState", "FileState", "IvshmemDevice", "Problem", "ProbeReport",
           "build_report"]

BY_ID = "/dev/disk/by-id/virtio-{serial}"
# the kernel's names of the pstore backends pvepstore loads (pstore's "backend" parameter and the
# module); not pvepstore's backend names, which are the backends registry's
KMOD_BLK = "pstore_blk"
KMOD_RAMOOPS = "ramoops"
KMOD_EFI = "efi_pstore"  # the kernel module (a backend of the same name is in pvepstore.backends)
IVSHMEM_BYTES = 1 << 20  # ivshmem: size=1 (MiB), what provision sets
PSZ_SIG = b"DBGC"  # little-endian 0x43474244 at the start of a dmesg zone



@dataclass
class DiskState:
    by_id: str
    present: bool = False
    device: str = ""
    size: int | None = None
    serial: str = ""
    read_only: bool = False
    holders: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    signature: str = ""  # blkid -p output (a filesystem or partition table)
    head_is_pstore: bool = False
    zero: bool | None = None  # first min(size, 128 MiB) all zero; None: not checked
    initialized: bool = False  # pvepstore already took this disk into use

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class IvshmemDevice:
    """Proxmox's ivshmem-plain device as the guest sees it (BAR2 = the shared memory)."""

    pci: str
    start: int
    size: int
    driver: str = ""  # a driver that claimed it (uio, kvmfr): ramoops cannot use the region then

    def to_json(self) -> dict:
        return {"pci": self.pci, "address": f"0x{self.start:x}", "size": self.size, "driver": self.driver}


@dataclass
class ProbeReport:
    serial: str
    disk_bytes: int | None
    target: str = ""  # the backend the verdict below is for (set with it, by the backend's assess)
    kernel: str = ""
    arch: str = ""
    distro: str = ""
    distro_id: str = ""
    distro_version: str = ""
    boot_id: str = ""
    cmdline: str = ""
    measured: str = ""  # the measured kernel it runs (kernels.MEASURED label); "": not measured on it
    kconfig_read: bool = False  # its kernel config was readable (/boot/config-<release>, /proc/config.gz)
    pstore_blk: str = "missing"  # module | builtin | missing
    frontends: dict[str, bool | None] = field(default_factory=dict)  # pmsg/console/ftrace
    backend: str | None = None
    blk_params: dict[str, str] = field(default_factory=dict)
    loaded: dict[str, str] = field(default_factory=dict)
    efi: bool = False
    erst: bool = False
    efi_pstore_available: bool = False
    efi_pstore_blacklisted: bool = False
    efi_pstore_disabled: bool = False  # options efi_pstore pstore_disable=Y (or the live parameter)
    kmsg_bytes: int | None = None  # pstore.kmsg_bytes now (bytes per dmesg dump); None: pstore not loaded
    always_kmsg_dump: bool | None = None  # printk.always_kmsg_dump now (dumps at clean shutdown/reboot too)
    ramoops: str = "missing"  # module | builtin | missing
    ramoops_params: dict[str, str] = field(default_factory=dict)
    ivshmem: IvshmemDevice | None = None
    ivshmem_all: list[IvshmemDevice] = field(default_factory=list)
    ramoops_service: dict[str, str] = field(default_factory=dict)
    modprobe_config: list[str] = field(default_factory=list)
    builtin_modules: str = ""  # the pstore lines of modules.builtin
    pstorefs: str = ""
    pstore_files: int = 0
    panic_on_oops: bool | None = None
    kdump_loaded: bool | None = None
    crash_kexec_post_notifiers: bool | None = None
    systemd_pstore: dict[str, Any] = field(default_factory=dict)
    service: dict[str, str] = field(default_factory=dict)
    units: dict[str, dict[str, str]] = field(default_factory=dict)  # every unit probed: enabled/active
    tools: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)
    files: dict[str, FileState] = field(default_factory=dict)
    disk: DiskState | None = None
    dmesg: list[str] = field(default_factory=list)
    manifest: dict | None = None
    manifest_error: str | None = None
    cmdline_legacy: list[str] = field(default_factory=list)
    legacy: list[dict] = field(default_factory=list)  # filled by legacy.find_legacy
    # the verdict for the target backend (see the module docstring)
    configured: bool = False  # the target backend is registered right now, on pvepstore's target
    capabilities: dict[str, Capability] = field(default_factory=dict)
    costs: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    incomplete: bool = False

    @property
    def by_id(self) -> str:
        return BY_ID.format(serial=self.serial)

    @property
    def ramoops_on_ivshmem(self) -> bool:
        d = self.ivshmem
        return (self.backend == "ramoops" and d is not None
                and _int(self.ramoops_params.get("mem_address")) == d.start)

    @property
    def efi_pstore_kept_out(self) -> bool:
        """efi_pstore cannot take pstore's slot at the next boot (disabled, blacklisted or absent)."""
        return self.efi_pstore_disabled or self.efi_pstore_blacklisted or not self.efi_pstore_available

    @property
    def blockers(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "blocker"]

    def to_json(self) -> dict:
        return {
            "serial": self.serial, "disk_bytes": self.disk_bytes,
            "kernel": self.kernel, "arch": self.arch, "distro": self.distro,
            "distro_id": self.distro_id, "distro_version": self.distro_version,
            "boot_id": self.boot_id, "cmdline": self.cmdline,
            "measured_kernel": self.measured or None, "kconfig_read": self.kconfig_read,
            "pstore_blk": self.pstore_blk, "frontends": self.frontends,
            "backend": self.backend, "blk_params": self.blk_params, "loaded": self.loaded,
            "efi": self.efi, "erst": self.erst, "efi_pstore_available": self.efi_pstore_available,
            "efi_pstore_blacklisted": self.efi_pstore_blacklisted,
            "efi_pstore_disabled": self.efi_pstore_disabled,
            "kmsg_bytes": self.kmsg_bytes, "always_kmsg_dump": self.always_kmsg_dump,
            "target": self.target, "ramoops": self.ramoops, "ramoops_params": self.ramoops_params,
            "ivshmem": self.ivshmem.to_json() if self.ivshmem else None,
            "ramoops_service": self.ramoops_service,
            "pstorefs_mounted": self.pstorefs == "pstore", "pstore_files": self.pstore_files,
            "panic_on_oops": self.panic_on_oops, "kdump_loaded": self.kdump_loaded,
            "crash_kexec_post_notifiers": self.crash_kexec_post_notifiers,
            "systemd_pstore": self.systemd_pstore, "service": self.service,
            "disk": self.disk.to_json() if self.disk else None,
            "configured": self.configured,
            "managed": bool(self.manifest),
            "cmdline_legacy": self.cmdline_legacy,
            "legacy": [{"path": x["path"], "kind": x["kind"], "lines": x["lines"]} for x in self.legacy],
            "dmesg": self.dmesg,
            "capabilities": {k: v.to_json() for k, v in self.capabilities.items()},
            "costs": self.costs,
            "problems": [p.to_json() for p in self.problems],
            "incomplete": self.incomplete,
        }


# -- building the report ----------------------------------------------------------

_CMDLINE_LEGACY = re.compile(r"(?:^|\s)((?:memmap|ramoops\.[\w.]+|printk\.always_kmsg_dump|"
                             r"pstore_blk\.\w+|pstore\.backend|efi_pstore\.\w+)=\S*)")


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip(), 0)
    except (TypeError, ValueError):
        return None


def disables_efi_pstore(line: str) -> bool:
    """A modprobe.d line ``options efi_pstore pstore_disable=<true>``."""
    w = line.split()
    return w[:2] == ["options", KMOD_EFI] and any(
        x.startswith("pstore_disable=") and bool(_flag(x.split("=", 1)[1])) for x in w[2:])


def cmdline_disables_efi_pstore(cmdline: str) -> bool:
    """``efi_pstore.pstore_disable=<true>`` on the kernel command line."""
    return any(w.startswith("efi_pstore.pstore_disable=") and bool(_flag(w.split("=", 1)[1]))
               for w in cmdline.split())


def _flag(value: str) -> bool | None:
    v = value.strip()
    if v in ("Y", "1", "y", "yes"):
        return True
    if v in ("N", "0", "n", "no"):
        return False
    return None


def current_kmsg_bytes(mount_options: str, kconf: dict[str, str]) -> int | None:
    """pstore's kmsg_bytes where the kernel has no ``pstore.kmsg_bytes`` parameter (6.1: it came as a
    module parameter later): pstorefs shows ``kmsg_bytes=`` only when it differs from
    CONFIG_PSTORE_DEFAULT_KMSG_BYTES (fs/pstore/inode.c pstore_show_options)."""
    for opt in mount_options.strip().split(","):
        if opt.startswith("kmsg_bytes="):
            return _int(opt.partition("=")[2])
    return _int(kconf.get("PSTORE_DEFAULT_KMSG_BYTES"))


def _kconfig(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^CONFIG_([A-Z0-9_]+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
        m = re.match(r"^# CONFIG_([A-Z0-9_]+) is not set$", line)
        if m:
            out[m.group(1)] = "n"
    return out


def _pstore_conf(text: str) -> dict[str, str]:
    """Effective [PStore] keys of ``systemd-analyze cat-config systemd/pstore.conf`` (last wins)."""
    eff: dict[str, str] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]").strip()
            continue
        if section == "PStore" and "=" in line:
            k, v = line.split("=", 1)
            eff[k.strip()] = v.strip()
    return eff


def _bool_setting(v: str | None, default: bool) -> bool:
    if v is None:
        return default
    return v.strip().lower() in ("1", "yes", "true", "on", "y")


def build_report(reply: Reply, serial: str, disk_bytes: int | None) -> ProbeReport:
    """The facts only; a backend's ``assess`` adds its verdict."""
    r = ProbeReport(serial=serial, disk_bytes=disk_bytes)
    r.incomplete = not reply.complete
    r.kernel = reply.text("uname", 0, limit=256).strip()
    r.arch = reply.text("uname", 1, limit=64).strip()
    osrel = {}
    for line in reply.text("osrelease").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            osrel[k.strip()] = v.strip().strip('"')
    r.distro = osrel.get("PRETTY_NAME", "")[:200]
    r.distro_id = osrel.get("ID", "")[:64]
    r.distro_version = osrel.get("VERSION_ID", "")[:64]
    r.boot_id = reply.text("boot_id", limit=64).strip()
    r.cmdline = reply.text("cmdline", limit=4096).strip()
    r.cmdline_legacy = _CMDLINE_LEGACY.findall(r.cmdline)

    modfiles = {decode(f[0], 64): decode(f[1], 512) for f in reply.all("modfile") if len(f) >= 2}
    r.loaded = {decode(f[0], 64): decode(f[1], 64).strip() for f in reply.all("loaded") if len(f) >= 2}
    builtin = reply.text("builtin")
    r.builtin_modules = builtin.replace("efi-pstore", "efi_pstore")[:2048]
    kconf = _kconfig(reply.text("kconfig"))
    r.kconfig_read = bool(kconf)
    known = measured_kernel(r.distro_id, r.distro_version, r.kernel)
    r.measured = known.label if known else ""
    if "/pstore_blk.ko" in builtin or kconf.get("PSTORE_BLK") == "y":
        r.pstore_blk = "builtin"
    elif modfiles.get(KMOD_BLK) or KMOD_BLK in r.loaded:
        r.pstore_blk = "module"
    if "/ramoops.ko" in builtin or kconf.get("PSTORE_RAM") == "y":
        r.ramoops = "builtin"
    elif modfiles.get("ramoops") or "ramoops" in r.loaded:
        r.ramoops = "module"
    r.efi_pstore_available = bool(modfiles.get(KMOD_EFI)) or KMOD_EFI in builtin \
        or "efi-pstore" in builtin
    for name in ("PMSG", "CONSOLE", "FTRACE"):
        val = kconf.get(f"PSTORE_{name}")
        r.frontends[name.lower()] = None if not kconf else val == "y"
    backend = reply.text("backend", limit=64).strip()
    r.backend = None if backend in ("", "(null)") else backend
    for f in reply.all("param"):
        if len(f) >= 2:
            key = decode(f[0], 128)
            if key.startswith("pstore_blk/parameters/"):
                r.blk_params[key.rsplit("/", 1)[1]] = decode(f[1], 256).strip()
            elif key.startswith("ramoops/parameters/"):
                r.ramoops_params[key.rsplit("/", 1)[1]] = decode(f[1], 256).strip()
            elif key == "pstore/parameters/kmsg_bytes":
                r.kmsg_bytes = _int(decode(f[1], 32))
            elif key == "printk/parameters/always_kmsg_dump":
                r.always_kmsg_dump = _flag(decode(f[1], 16))
            elif key == "efi_pstore/parameters/pstore_disable":
                r.loaded.setdefault(KMOD_EFI, "live")
                if _flag(decode(f[1], 16)):
                    r.efi_pstore_disabled = True
    for f in reply.all("ivshmem"):
        if len(f) >= 2:
            res = decode(f[1], 256).split()
            start, end = (_int(res[0]), _int(res[1])) if len(res) >= 2 else (None, None)
            if start and end and end > start:
                r.ivshmem_all.append(IvshmemDevice(decode(f[0], 64), start, end - start + 1,
                                                   decode(f[2], 64).strip() if len(f) > 2 else ""))
    # the device pvepstore asked Proxmox for is the 1 MiB one (a VM has at most one ivshmem option)
    r.ivshmem = next((d for d in r.ivshmem_all if d.size == IVSHMEM_BYTES), None)
    r.efi = reply.has("efi")
    r.erst = reply.has("erst")
    r.modprobe_config = [ln[:300] for ln in reply.text("modprobe_c").splitlines()][:100]
    r.efi_pstore_blacklisted = any(ln.split()[:2] == ["blacklist", KMOD_EFI] for ln in r.modprobe_config)
    r.efi_pstore_disabled = r.efi_pstore_disabled or any(map(disables_efi_pstore, r.modprobe_config))
    r.pstorefs = reply.text("pstorefs", limit=32).strip()
    has_param = any(f and decode(f[0], 128) == "pstore/parameters/kmsg_bytes" for f in reply.all("param"))
    if not has_param and r.pstorefs == "pstore":  # a garbled parameter stays unknown, never a guess
        r.kmsg_bytes = current_kmsg_bytes(reply.text("pstorefs", 1, limit=512), kconf)
    try:
        r.pstore_files = int(reply.text("pstore_files", limit=16).strip() or 0)
    except ValueError:
        r.pstore_files = 0
    sysctl = reply.first("sysctl") or ()
    vals = [decode(v, 32).strip() for v in sysctl] + ["", "", "", ""]
    r.panic_on_oops = None if vals[0] == "" else vals[0] != "0"
    r.kdump_loaded = None if vals[1] == "" else vals[1] == "1"
    r.crash_kexec_post_notifiers = _flag(vals[2]) if vals[2] else None
    for f in reply.all("unit"):
        if len(f) >= 3:
            name = decode(f[0], 64)
            state = {"enabled": decode(f[1], 64).strip(), "active": decode(f[2], 64).strip()}
            result = decode(f[3], 64).strip() if len(f) >= 4 else ""
            if result not in ("", "success"):
                state["result"] = result
            r.units[name] = state
            if name == "systemd-pstore.service":
                r.systemd_pstore.update(state)
            elif name == "pvepstore-blk.service":
                r.service = state
            elif name == "pvepstore-ramoops.service":
                r.ramoops_service = state
    conf = _pstore_conf(reply.text("pstore_conf", limit=16384))
    r.systemd_pstore["storage"] = conf.get("Storage", "external")
    r.systemd_pstore["unlink"] = _bool_setting(conf.get("Unlink"), True)
    r.systemd_pstore["present"] = bool(r.systemd_pstore.get("enabled"))
    r.tools = {decode(f[0], 64) for f in reply.all("tool") if f}
    r.dirs = {decode(f[0], 256) for f in reply.all("dir") if f}
    for f in reply.all("file"):
        if len(f) < 4:
            continue
        path = decode(f[0], 4096)
        meta = decode(f[2], 128).split()
        size = int(meta[3]) if len(meta) >= 4 and meta[3].isdigit() else 0
        content = f[3] if len(f[3]) == size else None
        r.files[path] = FileState(path, decode(f[1], 80).strip(), meta[0] if meta else "", size, content)
    for f in reply.all("link"):
        if len(f) >= 2:
            path, target = decode(f[0], 4096), decode(f[1], 4096)
            r.files[path] = FileState(path, f"link:{target}", link=target)
    disk_f = reply.first("disk")
    d = DiskState(by_id=r.by_id)
    if disk_f and len(disk_f) >= 5:
        d.present = True
        d.device = decode(disk_f[1], 256)
        size = decode(disk_f[2], 32).strip()
        d.size = int(size) if size.isdigit() else None
        d.serial = decode(disk_f[3], 64).strip()
        d.read_only = decode(disk_f[4], 8).strip() == "1"
        d.holders = reply.text("disk_holders").split()
        d.partitions = reply.text("disk_parts").split()
        mounts = reply.first("disk_mounts") or (b"", b"")
        d.mounts = decode(mounts[0]).split() + (["[swap]"] if len(mounts) > 1 and mounts[1].strip() else [])
        d.signature = reply.text("disk_blkid", limit=2048).strip()
        head = reply.first("disk_head")
        d.head_is_pstore = bool(head) and head[0][:4] == PSZ_SIG
        if reply.has("disk_zero"):
            d.zero = reply.text("disk_zero") == "yes"
        d.initialized = reply.has("disk_initialized")
    r.disk = d
    r.dmesg = [ln[:300] for ln in reply.text("dmesg", limit=8192).splitlines()][-40:]
    mf = r.files.get(MANIFEST)
    if mf is not None:
        r.manifest, r.manifest_error = parse_manifest(mf.content)
    r.legacy = find_legacy(r.files)
    return r
