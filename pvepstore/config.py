"""pvepstore's configuration: one YAML file, validated into frozen dataclasses.

Lookup: ``--config FILE`` → ``$PVEPSTORE_CONFIG`` → ``/etc/pvepstore/config.yaml``.
A missing default file means "all defaults"; a missing explicit file is an
error.  Every invalid value is reported as one :class:`ConfigError` naming the
key (``vms.101.ssh.port: must be an integer from 1 to 65535 (got 0)``): each
key has a :class:`~pvepstore.configcheck.Spec` (type, range, finiteness, form)
and one function checks them all.  A file that holds a secret must not be
readable by other users.  Reading is bounded (``configload``).
``config.example.yaml`` documents every key.

Paths: ``host_root`` re-roots only the Proxmox host paths pvepstore knows by
itself (``hostpaths.HostPaths``, including the default CA ``api.verify_ssl:
proxmox``).  Every path the operator writes here (``state_dir``, key files,
a CA file, sink paths) is taken exactly as given.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .backends import registry
from .backends.capture import IvshmemPolicy
from .backends.registry import BackendName
from .configcheck import Kind, Spec, check, key_name, shown
from .configload import parse_yaml, read_config_text
from .errors import ConfigError
from .hostpaths import DEFAULT_ROOT, ENV_ROOT, PROXMOX_CA, HostPaths

DEFAULT_CONFIG = "/etc/pvepstore/config.yaml"
ENV_CONFIG = "PVEPSTORE_CONFIG"
SERIAL_RE = re.compile(r"^[A-Za-z0-9_-]{1,20}$")  # virtio-blk shows at most 20 bytes


class _BackendNames(tuple):
    """``auto`` and the registry's names when asked (a backend registered later is valid too)."""

    def __contains__(self, name: object) -> bool:
        return name in registry.choices()

    def __iter__(self):
        return iter(registry.choices())

    def __len__(self) -> int:
        return len(registry.choices())


BACKENDS = _BackendNames()
DAY = 86400.0

_HOST = Spec(Kind.STR, pattern=r"[A-Za-z0-9_.:\[\]%-]+", form="a host name or IP address")
_PORT = Spec(Kind.INT, lo=1, hi=65535)
_TIMEOUT = Spec(Kind.SECONDS, hi=DAY)  # threading refuses waits beyond ~292 years; a day is plenty
_PATH = Spec(Kind.PATH)


def _key(default: Any, spec: Spec) -> Any:
    """A dataclass field with its validation spec."""
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class ApiConfig:
    backend: str = _key("https", Spec(Kind.CHOICE, choices=("https", "local")))  # local: pvesh on this node
    host: str = _key("127.0.0.1", _HOST)
    port: int = _key(8006, _PORT)
    user: str = _key("root@pam", Spec(Kind.STR))
    token_name: str = _key("pvepstore", Spec(Kind.STR))
    token_value: str | None = field(default=None, repr=False, metadata={"spec": Spec(Kind.STR, optional=True)})
    token_value_file: str | None = _key(None, Spec(Kind.PATH, optional=True))
    # "proxmox": the node's cluster CA, HostPaths.pve_root_ca (under host_root); a path is taken as given.
    verify_ssl: bool | str = _key(PROXMOX_CA, Spec(Kind.CA, proxmox_ca=True))
    timeout: float = _key(30.0, Spec(Kind.SECONDS, lo=30, hi=DAY, hint="PVE tasks are slow to answer"))

    def secret(self) -> str | None:
        """The token secret, read from ``token_value_file`` when that is set."""
        if self.token_value_file:
            path = Path(self.token_value_file)
            _check_private(path, "api.token_value_file")
            try:
                return path.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise ConfigError(f"api.token_value_file: cannot read {path}: {why}") from None
        return self.token_value


@dataclass(frozen=True)
class SshConfig:
    host: str | None = _key(None, replace(_HOST, optional=True))  # None: found through Proxmox
    port: int = _key(22, _PORT)
    user: str = _key("root", Spec(Kind.STR, pattern=r"[a-z_][a-z0-9_.-]{0,31}", form="a user name"))
    key_file: str = _key("/etc/pvepstore/id_ed25519", _PATH)
    known_hosts: str = _key("/etc/pvepstore/known_hosts", _PATH)
    trust_on_first_use: bool = _key(False, Spec(Kind.BOOL))
    connect_timeout: float = _key(10.0, _TIMEOUT)
    command_timeout: float = _key(60.0, _TIMEOUT)


@dataclass(frozen=True)
class DiskConfig:
    serial: str = _key("pvepstore", Spec(Kind.STR, pattern=SERIAL_RE.pattern.strip("^$"),
                                         form="1-20 characters of A-Z a-z 0-9 _ -",
                                         hint="the guest sees at most 20 bytes of a virtio-blk serial"))
    size_mib: int = _key(512, Spec(Kind.INT, lo=4, hi=1 << 20, multiple=4))
    storage: str | None = _key(None, Spec(Kind.STR, optional=True, pattern=r"[A-Za-z][A-Za-z0-9_.-]*",
                                          form="a storage id"))  # None: the storage of the system disk


@dataclass(frozen=True)
class PstoreBlkConfig:
    kmsg_size: int = _key(64, Spec(Kind.INT, lo=4, hi=1 << 20, multiple=4,  # KiB per dmesg record
                                   hint="the kernel turns other values into 4 KiB zones"))
    max_reason: int = _key(2, Spec(Kind.INT, lo=1, hi=4))  # 2 = Oops (never more on a virtual disk)


@dataclass(frozen=True)
class EfiPstoreConfig:
    # measured on the efi-* fixtures (Debian 12, 6.1, OVMF 4M): one dump = 14 variables, ~12.5 KB of the
    # 262,044-byte store, next to ~15 KB of the firmware's own variables: ~19 dumps fill it.  A Shutdown
    # dump at every reboot would fill it between two sweeps, so the default keeps Oops/panic only
    always_kmsg_dump: bool = _key(False, Spec(Kind.BOOL))
    kmsg_bytes: int = _key(10240, Spec(Kind.INT, lo=1024, hi=65536,  # pstore.kmsg_bytes: bytes per dump
                                      hint="each dump costs about kmsg_bytes/1 KiB variables of the store"))
    warn_fill_percent: int = _key(75, Spec(Kind.INT, lo=1, hi=100))  # status warns above this fill level


@dataclass(frozen=True)
class AutoConfig:
    # may backend: auto pick ivshmem (it costs the VM its live migration)?  if-root: only when pvepstore
    # may set ivshmem/hookscript itself (api.backend: local); allow: also otherwise; never
    ivshmem: str = _key(IvshmemPolicy.IF_ROOT.value, Spec(Kind.CHOICE, choices=tuple(p.value for p in IvshmemPolicy)))


@dataclass(frozen=True)
class ScopeConfig:
    vms: tuple[int, ...] = _key((), Spec(Kind.VMIDS))
    tag: str | None = _key("pvepstore", Spec(Kind.STR, optional=True, pattern=r"(?i)[a-z0-9_][a-z0-9_+.-]*",
                                            form="a Proxmox tag"))
    all: bool = _key(False, Spec(Kind.BOOL))


@dataclass(frozen=True)
class CollectConfig:
    concurrency: int = _key(8, Spec(Kind.INT, lo=1, hi=256))  # VMs collected at once
    vm_timeout: float = _key(300.0, _TIMEOUT)  # seconds one VM may take before the sweep moves on
    max_record_bytes: int = _key(4 << 20, Spec(Kind.INT, lo=4096, hi=1 << 30))  # per record read via the guest
    offline: bool = _key(True, Spec(Kind.BOOL))  # read stopped VMs' volumes on the host
    # pvepstore's own health, rewritten after every sweep (node_exporter's textfile collector)
    metrics_file: str | None = _key(None, Spec(Kind.PATH, optional=True))


@dataclass(frozen=True)
class RetentionConfig:
    max_incidents_per_vm: int = _key(100, Spec(Kind.INT, lo=1, hi=1_000_000))
    max_age_days: int = _key(365, Spec(Kind.INT, lo=1, hi=100_000))  # beyond that, timestamps overflow
    max_total_mib: int = _key(1024, Spec(Kind.INT, lo=1, hi=1 << 30))


@dataclass(frozen=True)
class VmConfig:
    """Per-VM overrides: ``vms: {101: {ssh: {...}, disk: {...}, backend: ...}}``."""

    ssh: SshConfig
    disk: DiskConfig
    backend: str


_BACKEND = Spec(Kind.CHOICE, choices=BACKENDS)


@dataclass(frozen=True)
class Config:
    host_root: str = _key(DEFAULT_ROOT, _PATH)
    state_dir: str = _key("/var/lib/pvepstore", _PATH)
    node: str | None = _key(None, Spec(Kind.STR, optional=True, pattern=r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}",
                                       form="a node name"))  # None: from /etc/pve/.members
    backend: str = _key(registry.AUTO, _BACKEND)
    auto: AutoConfig = AutoConfig()
    api: ApiConfig = ApiConfig()
    ssh: SshConfig = SshConfig()
    disk: DiskConfig = DiskConfig()
    pstore_blk: PstoreBlkConfig = PstoreBlkConfig()
    efi_pstore: EfiPstoreConfig = EfiPstoreConfig()
    scope: ScopeConfig = ScopeConfig()
    collect: CollectConfig = CollectConfig()
    retention: RetentionConfig = RetentionConfig()
    # None: no sinks: key (pve-notify where the node has PVE's notification system); (): none at all
    sinks: tuple[Mapping[str, Any], ...] | None = None
    vms: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    source: str | None = None  # the file this came from (for messages)

    @property
    def paths(self) -> HostPaths:
        return HostPaths(Path(self.host_root))

    def for_vm(self, vmid: int) -> VmConfig:
        """Defaults merged with the VM's overrides (validated at load time)."""
        raw = self.vms.get(int(vmid), {})
        ssh = _section(SshConfig, {**_asdict(self.ssh), **(raw.get("ssh") or {})}, f"vms.{vmid}.ssh")
        disk = _section(DiskConfig, {**_asdict(self.disk), **(raw.get("disk") or {})}, f"vms.{vmid}.disk")
        return VmConfig(ssh=ssh, disk=disk, backend=raw.get("backend") or self.backend)


_SECTIONS = {"api": ApiConfig, "ssh": SshConfig, "disk": DiskConfig,
             BackendName.PSTORE_BLK.value: PstoreBlkConfig,  # that backend's own settings
             BackendName.EFI_PSTORE.value: EfiPstoreConfig,
             "auto": AutoConfig, "scope": ScopeConfig, "collect": CollectConfig, "retention": RetentionConfig}
_VM_KEYS = {"ssh", "disk", "backend"}


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration (see the module docstring for the lookup)."""
    environ = os.environ if environ is None else environ
    explicit = path or environ.get(ENV_CONFIG)
    cfg_path = Path(explicit or DEFAULT_CONFIG)
    data: dict = {}
    if cfg_path.exists() or explicit:
        data = parse_yaml(read_config_text(cfg_path), cfg_path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{cfg_path}: the top level must be a mapping of keys (got {shown(data)})")
        if _holds_secret(data):
            _check_private(cfg_path, "config file")
    if ENV_ROOT in environ:
        data = {**data, "host_root": environ[ENV_ROOT]}
    cfg = parse_config(data)
    return replace(cfg, source=str(cfg_path) if data else None)


def parse_config(data: Mapping[str, Any]) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"the configuration must be a mapping of keys (got {shown(data)})")
    _known(data, Config, "")
    values: dict[str, Any] = {}
    for f in fields(Config):
        if f.name in _SECTIONS:
            values[f.name] = _section(_SECTIONS[f.name], data.get(f.name), f.name)
        elif "spec" in f.metadata and f.name in data:
            values[f.name] = check(f.name, data[f.name], f.metadata["spec"])
    values["sinks"] = _sinks(data.get("sinks"))
    cfg = Config(**values)
    vms = _vms(data.get("vms"))
    cfg = replace(cfg, vms=vms)
    for vmid in vms:  # validate every override now, not at first use
        cfg.for_vm(vmid)
    return cfg


# -- validation helpers ---------------------------------------------------------

def _known(data: Mapping, cls: type, prefix: str) -> None:
    allowed = {f.name for f in fields(cls) if f.name != "source"}
    for key in data:
        if not isinstance(key, str) or key not in allowed:
            raise ConfigError(f"{prefix}{key_name(key)}: unknown key",
                              hint=f"valid keys here: {', '.join(sorted(allowed))}")


def _section(cls: type, raw: Any, name: str):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a mapping (got {shown(raw)})")
    _known(raw, cls, f"{name}.")
    values = {f.name: check(f"{name}.{f.name}", raw[f.name], f.metadata["spec"])
              for f in fields(cls) if f.name in raw}
    obj = cls(**values)
    _check_section(obj, name)
    return obj


def _check_section(obj: Any, name: str) -> None:
    """What one key's Spec cannot say: rules across keys of a section."""
    if isinstance(obj, ApiConfig):
        if obj.token_value and obj.token_value_file:
            raise ConfigError(f"{name}.token_value: give token_value or token_value_file, not both")
        if "!" in obj.token_name or "@" not in obj.user:
            raise ConfigError(f"{name}.user/token_name: user is USER@REALM and token_name the token id",
                              hint="the token of `pveum user token add root@pam pvepstore` is "
                                   "user root@pam, token_name pvepstore")


def _vms(raw: Any) -> dict[int, dict]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"vms: must be a mapping of VM id to overrides (got {shown(raw)})")
    vms: dict[int, dict] = {}
    for key, override in raw.items():
        name = f"vms.{key_name(key)}"
        # An int, or digits as a string; never a float (101.5, .inf) or a bool.
        if isinstance(key, int) and not isinstance(key, bool):
            vmid = key
        elif isinstance(key, str) and re.fullmatch(r"[0-9]{1,12}", key):
            vmid = int(key)
        else:
            raise ConfigError(f"{name}: VM ids must be integers")
        if not 100 <= vmid <= 999_999_999:
            raise ConfigError(f"{name}: not a valid Proxmox VM id (100..999999999)")
        if vmid in vms:
            raise ConfigError(f"{name}: VM {vmid} is given twice")
        if override is None:
            override = {}
        if not isinstance(override, dict):
            raise ConfigError(f"{name}: must be a mapping (ssh, disk, backend) (got {shown(override)})")
        for k in override:
            if not isinstance(k, str) or k not in _VM_KEYS:
                raise ConfigError(f"{name}.{key_name(k)}: unknown key",
                                  hint="per-VM keys are ssh, disk and backend")
        for section in ("ssh", "disk"):
            if override.get(section) is not None and not isinstance(override[section], dict):
                raise ConfigError(f"{name}.{section}: must be a mapping (got {shown(override[section])})")
        if "backend" in override:
            check(f"{name}.backend", override["backend"], _BACKEND)
        vms[vmid] = override
    return vms


def _sinks(raw: Any) -> tuple[Mapping[str, Any], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ConfigError(f"sinks: must be a list of mappings, each with a type (got {shown(raw)})")
    from .configsinks import check_sinks

    check_sinks(raw)  # also reads auth_header_file, refuses duplicate names
    return tuple(raw)


def _asdict(obj: Any) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _holds_secret(data: Mapping) -> bool:
    api = data.get("api")
    return isinstance(api, dict) and bool(api.get("token_value"))


def _check_private(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & stat.S_IROTH:
        raise ConfigError(f"{what} {path} holds an API token secret but is world-readable",
                          hint=f"chmod 600 {path}")
