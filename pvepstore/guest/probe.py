"""The capability report: what a guest's kernel and disk can really capture, and what is in the way.

Built from one run of :data:`pvepstore.guest.scripts.PROBE`, for a target
backend (``pstore_blk`` or ``ivshmem``).  The capability matrix follows
``pstore-blk-format.md`` §6/§10 and ``panic-capable-backends.md``: on a virtual
disk pstore_blk keeps non-fatal Oopses only (panics, shutdown and
emergency-restart dumps are never written); ramoops on Proxmox's ivshmem device
keeps all of them, written synchronously into memory the host reads.
Console/pmsg exist only where the kernel has those frontends.  Every problem
carries the fix ``apply`` would make (or why it cannot).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .wire import Reply, decode

BY_ID = "/dev/disk/by-id/virtio-{serial}"
TARGETS = ("pstore_blk", "ivshmem")
IVSHMEM_BYTES = 1 << 20  # ivshmem: size=1 (MiB), what provision sets
PSZ_SIG = b"DBGC"  # little-endian 0x43474244 at the start of a dmesg zone

# severities: blocker = apply refuses; fix = apply fixes it; consent = apply fixes it only
# with remove_legacy; warning = pvepstore cannot fix it; info = for the record
SEVERITIES = ("blocker", "fix", "consent", "warning", "info")


@dataclass(frozen=True)
class Problem:
    code: str
    severity: str
    message: str
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Capability:
    status: str  # "yes" | "no" | "unknown"
    note: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FileState:
    path: str
    sha256: str  # "link:TARGET" for symlinks
    mode: str = ""
    size: int = 0
    content: bytes | None = None  # None: larger than the probe's cap (or a symlink)
    link: str | None = None


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
    target: str = "pstore_blk"  # the backend pvepstore is to set up: pstore_blk | ivshmem
    kernel: str = ""
    arch: str = ""
    distro: str = ""
    distro_id: str = ""
    distro_version: str = ""
    boot_id: str = ""
    cmdline: str = ""
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
    tools: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)
    files: dict[str, FileState] = field(default_factory=dict)
    disk: DiskState | None = None
    dmesg: list[str] = field(default_factory=list)
    manifest: dict | None = None
    manifest_error: str | None = None
    cmdline_legacy: list[str] = field(default_factory=list)
    legacy: list[dict] = field(default_factory=list)  # filled by setup.find_legacy
    capabilities: dict[str, Capability] = field(default_factory=dict)
    costs: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    incomplete: bool = False

    @property
    def by_id(self) -> str:
        return BY_ID.format(serial=self.serial)

    @property
    def configured(self) -> bool:
        """The target backend is registered right now (pstore_blk on our disk; ramoops on the ivshmem BAR)."""
        if self.target == "ivshmem":
            return self.ramoops_on_ivshmem
        return self.backend == "pstore_blk" and self.blk_params.get("blkdev") == self.by_id

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
            "pstore_blk": self.pstore_blk, "frontends": self.frontends,
            "backend": self.backend, "blk_params": self.blk_params, "loaded": self.loaded,
            "efi": self.efi, "erst": self.erst, "efi_pstore_available": self.efi_pstore_available,
            "efi_pstore_blacklisted": self.efi_pstore_blacklisted,
            "efi_pstore_disabled": self.efi_pstore_disabled,
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


def _flag(value: str) -> bool | None:
    v = value.strip()
    if v in ("Y", "1", "y", "yes"):
        return True
    if v in ("N", "0", "n", "no"):
        return False
    return None


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


def build_report(reply: Reply, serial: str, disk_bytes: int | None, target: str = "pstore_blk") -> ProbeReport:
    if target not in TARGETS:
        raise ValueError(f"unknown backend {target!r}")
    r = ProbeReport(serial=serial, disk_bytes=disk_bytes, target=target)
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
    if "/pstore_blk.ko" in builtin or kconf.get("PSTORE_BLK") == "y":
        r.pstore_blk = "builtin"
    elif modfiles.get("pstore_blk") or "pstore_blk" in r.loaded:
        r.pstore_blk = "module"
    if "/ramoops.ko" in builtin or kconf.get("PSTORE_RAM") == "y":
        r.ramoops = "builtin"
    elif modfiles.get("ramoops") or "ramoops" in r.loaded:
        r.ramoops = "module"
    r.efi_pstore_available = bool(modfiles.get("efi_pstore")) or "efi_pstore" in builtin \
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
            elif key == "efi_pstore/parameters/pstore_disable":
                r.loaded.setdefault("efi_pstore", "live")
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
    r.efi_pstore_blacklisted = any(ln.split()[:2] == ["blacklist", "efi_pstore"] for ln in r.modprobe_config)
    r.efi_pstore_disabled = r.efi_pstore_disabled or any(
        ln.split()[:2] == ["options", "efi_pstore"] and any(
            w.startswith("pstore_disable=") and _flag(w.split("=", 1)[1]) for w in ln.split()[2:])
        for ln in r.modprobe_config)
    r.pstorefs = reply.text("pstorefs", limit=32).strip()
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
    mf = r.files.get("/var/lib/pvepstore/manifest.json")
    if mf is not None:
        from .setup import parse_manifest

        r.manifest, r.manifest_error = parse_manifest(mf.content)
    from .setup import find_legacy

    r.legacy = find_legacy(r)
    r.capabilities = capabilities(r)
    r.costs = costs(r)
    r.problems = problems(r)
    return r


# -- the truth table --------------------------------------------------------------

def _frontends(r: ProbeReport, caps: dict[str, Capability], lags: str) -> None:
    for front in ("console", "pmsg"):
        built = r.frontends.get(front)
        if built is None:
            caps[front] = Capability("unknown", "kernel config not readable; pvepstore does not enable it")
        elif built:
            lag = f" ({lags})" if front == "console" and lags else \
                " (synchronous: a reboot reason written to /dev/pmsg0 survives)" if front == "pmsg" else ""
            caps[front] = Capability("yes", f"kernel has PSTORE_{front.upper()}{lag}")
        else:
            caps[front] = Capability("no", f"kernel built without PSTORE_{front.upper()}")


def ivshmem_capabilities(r: ProbeReport) -> dict[str, Capability]:
    """ramoops on the ivshmem BAR: every dump is written synchronously into memory the host maps."""
    if r.ramoops == "missing":
        no = Capability("no", "this kernel has no ramoops (CONFIG_PSTORE_RAM)")
        return {k: no for k in ("oops", "panic", "shutdown", "emergency_restart", "console", "pmsg")}
    caps = {
        "oops": Capability("yes", "written at once into the ivshmem memory (panic_on_oops=1: as a panic)"),
        "panic": Capability("yes", "written at panic time; the host reads a hung guest's record from the "
                                   "live shm file"),
        "shutdown": Capability("yes", "clean reboot/poweroff leaves a Shutdown record (max_reason=4)"),
        "emergency_restart": Capability("yes", "sysrq-b and kernel.panic=N reboots leave an Emergency record"),
    }
    _frontends(r, caps, "synchronous in memory")
    return caps


def costs(r: ProbeReport) -> list[str]:
    """What the target backend costs the VM (shown next to the capabilities)."""
    if r.target == "ivshmem":
        return ["the ivshmem device is a local resource: Proxmox refuses live migration of the VM",
                "/dev/shm is lost when the host reboots: pvepstore's hookscript keeps a durable copy at "
                "every VM stop (records of a VM still running when the host crashes are lost)",
                "each guest boot writes its first dump into zone 0 again: collect promptly (the sweep; "
                "systemd-pstore also copies records to /var/lib/systemd/pstore at boot)"]
    return ["a 512 MiB virtual disk per VM; only non-fatal Oopses are kept"]


def capabilities(r: ProbeReport) -> dict[str, Capability]:
    if r.target == "ivshmem":
        return ivshmem_capabilities(r)
    caps: dict[str, Capability] = {}
    if r.pstore_blk == "missing":
        no = Capability("no", "this kernel has no pstore_blk (not built, or marked BROKEN as in late 5.10.y)")
        return {k: no for k in ("oops", "panic", "shutdown", "emergency_restart", "console", "pmsg")}
    if r.panic_on_oops:
        caps["oops"] = Capability("no", "panic_on_oops=1: every Oops becomes a panic, which a block "
                                        "device cannot record")
    else:
        caps["oops"] = Capability("yes", "non-fatal Oops, written ~0.5 s after the event; lost if the "
                                         "guest resets or powers off within that time")
    caps["panic"] = Capability("no", "pstore_blk on a virtual disk has no panic-time write path")
    caps["shutdown"] = Capability("no", "the shutdown/reboot dump is deferred and the machine resets first")
    caps["emergency_restart"] = Capability("no", "sysrq-b and panic=N reboots leave no record")
    _frontends(r, caps, "lags ~0.5-1 s behind the console")
    return caps


def problems(r: ProbeReport) -> list[Problem]:
    out: list[Problem] = []
    add = lambda *a: out.append(Problem(*a))  # noqa: E731
    if r.incomplete:
        add("probe-incomplete", "blocker", "the probe did not finish (output cut or script failed)",
            "check the guest's shell tools (coreutils, util-linux, kmod)")
    if r.target == "ivshmem":
        _ivshmem_problems(r, add)
    else:
        _blk_problems(r, add)
    _common_problems(r, add)
    return out


def _ivshmem_problems(r: ProbeReport, add) -> None:
    if r.ramoops == "missing":
        add("no-ramoops", "blocker", f"kernel {r.kernel or '?'} has no ramoops",
            "boot a kernel with CONFIG_PSTORE_RAM (Debian 12's 6.1 has it as a module)")
    d = r.ivshmem
    if d is None:
        other = ", ".join(f"{x.pci} ({x.size} bytes)" for x in r.ivshmem_all)
        add("ivshmem-missing", "warning", "no 1 MiB ivshmem device (PCI 1af4:1110) in this boot"
            + (f"; found {other}" if other else ""),
            "Proxmox adds the device at the VM's next cold start (stop + start, or `pvepstore provision "
            "--restart`); a reboot inside the guest is not enough. The unit loads ramoops from then on")
    elif d.driver:
        add("ivshmem-claimed", "blocker", f"the ivshmem device {d.pci} is claimed by the driver {d.driver}",
            "ramoops needs the memory region for itself: unbind or remove that driver")
    if r.backend == "pstore_blk":
        add("backend-blk", "fix", "pstore_blk holds pstore's single slot (switching backends)",
            "unload pstore_blk, then load ramoops on the ivshmem device")
    else:
        _slot_problems(r, "ramoops", add, erst_hint="remove the acpi-erst device from the VM")
    if r.ramoops != "missing" and not r.configured:
        if r.backend == "ramoops":
            add("ramoops-params", "fix", "ramoops runs with other parameters (mem_address="
                f"{r.ramoops_params.get('mem_address', '?')})", "reload ramoops on the ivshmem device")
        else:
            add("not-configured", "fix", "ramoops is not loaded on the ivshmem device",
                "a boot-time unit that loads ramoops on the device's BAR2")


def _blk_problems(r: ProbeReport, add) -> None:
    if r.pstore_blk == "missing":
        add("no-pstore-blk", "blocker", f"kernel {r.kernel or '?'} has no pstore_blk",
            "boot a kernel with CONFIG_PSTORE_BLK (Debian 12's 6.1 has it as a module)")
    d = r.disk
    if d is None or not d.present:
        add("disk-missing", "blocker", f"{r.by_id} does not exist",
            f"attach the pstore disk with serial={r.serial} (virtio-blk)")
    else:
        if r.disk_bytes is not None and d.size != r.disk_bytes:
            add("disk-size", "blocker", f"{r.by_id} is {d.size} bytes, expected {r.disk_bytes}",
                "check that this is the disk pvepstore attached")
        if d.serial and d.serial != r.serial:
            add("disk-serial", "blocker", f"{d.device} reports serial {d.serial!r}, expected {r.serial!r}", "")
        if d.signature or d.partitions:
            what = d.signature.replace("\n", " ")[:120] or "partitions " + " ".join(d.partitions)
            add("disk-signature", "blocker", f"{r.by_id} is not empty: {what}",
                "pvepstore never overwrites a disk with a filesystem or partition table; "
                "check the disk, wipe it yourself if it is really unused")
        if d.mounts or d.holders:
            add("disk-in-use", "blocker", f"{r.by_id} is in use ({' '.join(d.mounts + d.holders)})", "")
        if d.read_only:
            add("disk-read-only", "blocker", f"{r.by_id} is read-only", "")
        if not d.initialized and d.zero is False and not r.configured:
            if d.head_is_pstore:
                add("disk-has-records", "warning", f"{r.by_id} already holds pstore_blk zones (this guest's "
                    "from before an undo, or an earlier owner's)", "kept: read them on the host first; "
                    "zero the disk yourself if they are not this guest's")
            else:
                add("disk-stale", "fix", f"{r.by_id} holds stale bytes from an earlier owner", "apply zeroes "
                    "the first 128 MiB once, after re-checking serial, size, signature and mounts")
    if r.backend == "ramoops" and r.ramoops_on_ivshmem:
        add("backend-ramoops-ivshmem", "fix", "ramoops on the ivshmem device holds pstore's single slot "
            "(switching backends)", "unload ramoops, then attach pstore_blk")
    elif r.backend == "ramoops":
        add("backend-ramoops", "consent", "ramoops (the old setup) holds pstore's single slot",
            "remove the old ramoops configuration (--remove-legacy), then reboot")
    else:
        _slot_problems(r, "pstore_blk", add, erst_hint="remove the acpi-erst device from the VM (ERST itself "
                       "keeps panics; pvepstore does not read it yet)")
    if r.pstore_blk != "missing" and not r.configured:
        if r.backend == "pstore_blk":
            add("blk-params", "fix", f"pstore_blk is loaded with other parameters "
                f"(blkdev={r.blk_params.get('blkdev', '?')})", "reload pstore_blk with pvepstore's options")
        else:
            add("not-configured", "fix", "pstore_blk is not attached to the pstore disk",
                "configure and load pstore_blk (modprobe.d options + a boot-time unit)")


def _slot_problems(r: ProbeReport, ours: str, add, *, erst_hint: str) -> None:
    """pstore takes a single backend: what holds the slot (or may take it) other than ``ours``.

    Each backend handles the slot holders it can take over itself before calling this.
    """
    if r.backend and r.backend != ours:
        if r.backend == "erst":
            add("backend-erst", "blocker", "the built-in ACPI ERST backend holds pstore's single slot", erst_hint)
        elif r.backend.startswith("efi"):
            add("backend-efi", "fix", f"efi_pstore holds pstore's single slot (backend {r.backend})",
                "options efi_pstore pstore_disable=Y; takes effect at the next reboot")
        else:
            add("backend-other", "warning", f"backend {r.backend} holds pstore's single slot", "")
    elif r.efi and r.efi_pstore_available and not r.efi_pstore_kept_out:
        add("efi-pstore-competes", "fix", "UEFI guest: efi_pstore can win the race for pstore's single slot "
            "(systemd-pstore.service pulls it in)", "options efi_pstore pstore_disable=Y")


def _common_problems(r: ProbeReport, add) -> None:
    if r.efi_pstore_available and "efi_pstore" in r.builtin_modules and not r.efi_pstore_disabled:
        add("efi-pstore-builtin", "warning", "efi_pstore is built into this kernel: modprobe.d cannot keep it "
            "out of pstore's slot", "add efi_pstore.pstore_disable=1 to the kernel command line")
    sp = r.systemd_pstore
    if sp.get("present") and sp.get("enabled") != "masked" and sp.get("unlink") and sp.get("storage") != "none":
        add("systemd-pstore-unlinks", "fix", "systemd-pstore erases every record at boot (Unlink=yes)",
            "drop-in /etc/systemd/pstore.conf.d/99-pvepstore.conf with Unlink=no")
    if r.pstorefs != "pstore":
        add("pstorefs-unmounted", "warning", "/sys/fs/pstore is not mounted: the guest cannot list records "
            "(pstore_blk writes nothing then)", "mount -t pstore pstore /sys/fs/pstore (systemd normally does)")
    for item in r.legacy:
        add("legacy-config", "consent", f"{item['path']}: old ramoops/pstore setup ({item['summary']})",
            "remove it (--remove-legacy; backed up, undo restores it)")
    if r.cmdline_legacy:
        add("legacy-cmdline", "warning", "this boot runs with " + " ".join(r.cmdline_legacy[:4]),
            "gone after the boot configuration is cleaned and the guest reboots")
    if r.panic_on_oops and r.target == "pstore_blk":
        add("panic-on-oops", "warning", "kernel.panic_on_oops=1: Oopses become panics and are never recorded",
            "sysctl kernel.panic_on_oops=0 (pvepstore does not change it)")
    if r.kdump_loaded:
        add("kdump", "info", "a kdump kernel is loaded: panics go to kdump"
            + ("" if r.crash_kexec_post_notifiers else " (crash_kexec_post_notifiers is off)"), "")
    if r.manifest_error:
        add("manifest-invalid", "blocker", f"the guest's pvepstore manifest is unusable: {r.manifest_error}",
            "inspect /var/lib/pvepstore on the guest")


def report_json(r: ProbeReport) -> str:
    return json.dumps(r.to_json(), indent=2, ensure_ascii=True)
