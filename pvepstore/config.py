"""pvepstore's configuration: one YAML file, validated into frozen dataclasses.

Lookup: ``--config FILE`` → ``$PVEPSTORE_CONFIG`` → ``/etc/pvepstore/config.yaml``.
A missing default file means "all defaults"; a missing explicit file is an
error.  Every invalid value is reported as one :class:`ConfigError` naming the
key (``vms.101.ssh.port: must be an integer between 1 and 65535``).  A file
that holds a secret must not be readable by other users.
``config.example.yaml`` documents every key.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError
from .hostpaths import DEFAULT_ROOT, ENV_ROOT, HostPaths

DEFAULT_CONFIG = "/etc/pvepstore/config.yaml"
ENV_CONFIG = "PVEPSTORE_CONFIG"
SERIAL_RE = re.compile(r"^[A-Za-z0-9_-]{1,20}$")  # virtio-blk shows at most 20 bytes
BACKENDS = ("pstore_blk", "ivshmem")


@dataclass(frozen=True)
class ApiConfig:
    backend: str = "https"  # https | local (pvesh on this node)
    host: str = "127.0.0.1"
    port: int = 8006
    user: str = "root@pam"
    token_name: str = "pvepstore"
    token_value: str | None = field(default=None, repr=False)
    token_value_file: str | None = None
    verify_ssl: bool | str = "/etc/pve/pve-root-ca.pem"  # a path is taken under host_root
    timeout: float = 30.0

    def secret(self) -> str | None:
        """The token secret, read from ``token_value_file`` when that is set."""
        if self.token_value_file:
            path = Path(self.token_value_file)
            _check_private(path, "api.token_value_file")
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"api.token_value_file: cannot read {path}: {exc.strerror}") from None
        return self.token_value


@dataclass(frozen=True)
class SshConfig:
    host: str | None = None  # None: found through Proxmox (cloud-init, guest agent)
    port: int = 22
    user: str = "root"
    key_file: str = "/etc/pvepstore/id_ed25519"
    known_hosts: str = "/etc/pvepstore/known_hosts"
    trust_on_first_use: bool = False
    connect_timeout: float = 10.0
    command_timeout: float = 60.0


@dataclass(frozen=True)
class DiskConfig:
    serial: str = "pvepstore"
    size_mib: int = 512
    storage: str | None = None  # None: the storage of the VM's system disk


@dataclass(frozen=True)
class PstoreBlkConfig:
    kmsg_size: int = 64  # KiB per dmesg record; a multiple of 4
    max_reason: int = 2  # 2 = Oops (higher reasons are never persisted on a virtual disk)


@dataclass(frozen=True)
class ScopeConfig:
    vms: tuple[int, ...] = ()
    tag: str | None = "pvepstore"
    all: bool = False


@dataclass(frozen=True)
class CollectConfig:
    concurrency: int = 8  # VMs collected at once
    vm_timeout: float = 300.0  # seconds one VM may take before the sweep moves on
    max_record_bytes: int = 4 << 20  # per record read through the guest
    offline: bool = True  # read stopped VMs' volumes on the host


@dataclass(frozen=True)
class RetentionConfig:
    max_incidents_per_vm: int = 100
    max_age_days: int = 365
    max_total_mib: int = 1024


@dataclass(frozen=True)
class VmConfig:
    """Per-VM overrides: ``vms: {101: {ssh: {...}, disk: {...}, backend: ...}}``."""

    ssh: SshConfig
    disk: DiskConfig
    backend: str


@dataclass(frozen=True)
class Config:
    host_root: str = DEFAULT_ROOT
    state_dir: str = "/var/lib/pvepstore"
    node: str | None = None  # None: this node's name from /etc/pve/.members
    backend: str = "pstore_blk"
    api: ApiConfig = ApiConfig()
    ssh: SshConfig = SshConfig()
    disk: DiskConfig = DiskConfig()
    pstore_blk: PstoreBlkConfig = PstoreBlkConfig()
    scope: ScopeConfig = ScopeConfig()
    collect: CollectConfig = CollectConfig()
    retention: RetentionConfig = RetentionConfig()
    sinks: tuple[Mapping[str, Any], ...] = ()
    vms: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    source: str | None = None  # the file this came from (for messages)

    @property
    def paths(self) -> HostPaths:
        return HostPaths(Path(self.host_root))

    def for_vm(self, vmid: int) -> VmConfig:
        """Defaults merged with the VM's overrides (validated at load time)."""
        raw = self.vms.get(int(vmid), {})
        ssh = _section(SshConfig, {**_asdict(self.ssh), **raw.get("ssh", {})}, f"vms.{vmid}.ssh")
        disk = _section(DiskConfig, {**_asdict(self.disk), **raw.get("disk", {})}, f"vms.{vmid}.disk")
        return VmConfig(ssh=ssh, disk=disk, backend=raw.get("backend", self.backend))


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration (see the module docstring for the lookup)."""
    environ = os.environ if environ is None else environ
    explicit = path or environ.get(ENV_CONFIG)
    cfg_path = Path(explicit or DEFAULT_CONFIG)
    data: dict = {}
    if cfg_path.exists() or explicit:
        try:
            text = cfg_path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {cfg_path} does not exist",
                              hint="copy config.example.yaml there, or pass --config") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {cfg_path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"{cfg_path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{cfg_path}: the top level must be a mapping of keys")
        if _holds_secret(data):
            _check_private(cfg_path, "config file")
    if ENV_ROOT in environ:
        data = {**data, "host_root": environ[ENV_ROOT]}
    cfg = parse_config(data)
    return replace(cfg, source=str(cfg_path) if data else None)


def parse_config(data: Mapping[str, Any]) -> Config:
    _known(data, Config, "", extra={"vms", "sinks"})
    vms_raw = data.get("vms") or {}
    if not isinstance(vms_raw, dict):
        raise ConfigError("vms: must be a mapping of VM id to overrides")
    base = {k: v for k, v in data.items() if k != "vms"}
    cfg = Config(
        host_root=_str(base, "host_root", DEFAULT_ROOT),
        state_dir=_str(base, "state_dir", Config.state_dir),
        node=_opt_str(base, "node"),
        backend=_choice(base, "backend", BACKENDS, "pstore_blk"),
        api=_section(ApiConfig, base.get("api"), "api"),
        ssh=_section(SshConfig, base.get("ssh"), "ssh"),
        disk=_section(DiskConfig, base.get("disk"), "disk"),
        pstore_blk=_section(PstoreBlkConfig, base.get("pstore_blk"), "pstore_blk"),
        scope=_section(ScopeConfig, base.get("scope"), "scope"),
        collect=_section(CollectConfig, base.get("collect"), "collect"),
        retention=_section(RetentionConfig, base.get("retention"), "retention"),
        sinks=_sinks(base.get("sinks")),
    )
    if not os.path.isabs(cfg.host_root):
        raise ConfigError(f"host_root: must be an absolute path (got {cfg.host_root!r})")
    vms: dict[int, dict] = {}
    for key, override in vms_raw.items():
        try:
            vmid = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"vms.{key}: VM ids must be integers") from None
        if not 100 <= vmid <= 999_999_999:
            raise ConfigError(f"vms.{key}: not a valid Proxmox VM id (100..999999999)")
        if not isinstance(override, dict):
            raise ConfigError(f"vms.{key}: must be a mapping (ssh, disk, backend)")
        unknown = set(override) - {"ssh", "disk", "backend"}
        if unknown:
            raise ConfigError(f"vms.{key}.{sorted(unknown)[0]}: unknown key",
                              hint="per-VM keys are ssh, disk and backend")
        vms[vmid] = override
    cfg = replace(cfg, vms=vms)
    for vmid in vms:  # validate every override now, not at first use
        vm = cfg.for_vm(vmid)
        if vm.backend not in BACKENDS:
            raise ConfigError(f"vms.{vmid}.backend: must be one of {', '.join(BACKENDS)}")
    return cfg


# -- validation helpers ---------------------------------------------------------

def _known(data: Mapping, cls: type, prefix: str, extra: set[str] = frozenset()) -> None:
    allowed = {f.name for f in fields(cls) if f.name != "source"} | set(extra)
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}: unknown key",
                              hint=f"valid keys here: {', '.join(sorted(allowed))}")


def _section(cls: type, raw: Any, name: str):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a mapping")
    _known(raw, cls, f"{name}.")
    values = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        values[f.name] = _coerce(f"{name}.{f.name}", raw[f.name], f.default, f.type)
    obj = cls(**values)
    _check_section(obj, name)
    return obj


def _coerce(key: str, value: Any, default: Any, annotation: str) -> Any:
    if "bool | str" in annotation:  # verify_ssl: true, false or a CA file path
        if isinstance(value, bool) or (isinstance(value, str) and value):
            return value
        raise ConfigError(f"{key}: must be true, false or the path of a CA file")
    if annotation.startswith("tuple"):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key}: must be a list of VM ids")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{key}: must be a positive number of seconds")
        return float(value)
    if value is None and (default is None or "None" in annotation):
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string")
    return value


def _check_section(obj: Any, name: str) -> None:
    if isinstance(obj, ApiConfig):
        if obj.backend not in ("https", "local"):
            raise ConfigError(f"{name}.backend: must be https or local")
        if not 1 <= obj.port <= 65535:
            raise ConfigError(f"{name}.port: must be between 1 and 65535")
        if obj.timeout < 30:
            raise ConfigError(f"{name}.timeout: must be at least 30 s (PVE tasks are slow to answer)")
        if obj.token_value and obj.token_value_file:
            raise ConfigError(f"{name}.token_value: give token_value or token_value_file, not both")
        if "!" in obj.token_name or "@" not in obj.user:
            raise ConfigError(f"{name}.user/token_name: user is USER@REALM and token_name the token id",
                              hint="the token of `pveum user token add root@pam pvepstore` is "
                                   "user root@pam, token_name pvepstore")
    elif isinstance(obj, SshConfig):
        if not 1 <= obj.port <= 65535:
            raise ConfigError(f"{name}.port: must be between 1 and 65535")
        if not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", obj.user):
            raise ConfigError(f"{name}.user: not a valid user name ({obj.user!r})")
    elif isinstance(obj, DiskConfig):
        if not SERIAL_RE.match(obj.serial):
            raise ConfigError(f"{name}.serial: 1-20 characters of A-Z a-z 0-9 _ - (got {obj.serial!r})",
                              hint="the guest sees at most 20 bytes of a virtio-blk serial")
        if obj.size_mib < 1 or obj.size_mib % 4:
            raise ConfigError(f"{name}.size_mib: must be a positive multiple of 4")
        if obj.storage is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", obj.storage):
            raise ConfigError(f"{name}.storage: not a valid storage id ({obj.storage!r})")
    elif isinstance(obj, PstoreBlkConfig):
        if obj.kmsg_size < 4 or obj.kmsg_size % 4:
            raise ConfigError(f"{name}.kmsg_size: must be a multiple of 4 KiB",
                              hint="the kernel turns other values into 4 KiB zones")
        if not 1 <= obj.max_reason <= 4:
            raise ConfigError(f"{name}.max_reason: must be 1..4")
    elif isinstance(obj, CollectConfig):
        if not 1 <= obj.concurrency <= 256:
            raise ConfigError(f"{name}.concurrency: must be 1..256")
        if obj.max_record_bytes < 4096:
            raise ConfigError(f"{name}.max_record_bytes: must be at least 4096")
    elif isinstance(obj, RetentionConfig):
        for f in fields(obj):
            if getattr(obj, f.name) < 1:
                raise ConfigError(f"{name}.{f.name}: must be a positive integer")
    elif isinstance(obj, ScopeConfig):
        if obj.tag is not None and not re.fullmatch(r"[a-z0-9_][a-z0-9_+.-]*", obj.tag, re.I):
            raise ConfigError(f"{name}.tag: not a valid Proxmox tag ({obj.tag!r})")


def _sinks(raw: Any) -> tuple[Mapping[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        raise ConfigError("sinks: must be a list of mappings, each with a type")
    from .pipeline.sinks import build_sinks

    build_sinks(raw)  # validates every entry now, naming sinks.<i>.<key>
    return tuple(raw)


def _str(data: Mapping, key: str, default: str) -> str:
    return _coerce(key, data.get(key, default), default, "str")


def _opt_str(data: Mapping, key: str) -> str | None:
    return _coerce(key, data.get(key), None, "str | None")


def _choice(data: Mapping, key: str, choices: tuple[str, ...], default: str) -> str:
    value = data.get(key, default)
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)} (got {value!r})")
    return value


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
