"""PVE VM config values: drive property strings, the config file format, the pstore disk's whereabouts."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

DRIVE_KEY_RE = re.compile(r"^(ide|sata|scsi|virtio)(\d+)$")
UNUSED_KEY_RE = re.compile(r"^unused(\d+)$")
MAX_SLOT = {"virtio": 15, "scsi": 30, "sata": 5, "ide": 3}


def parse_drive(value: str) -> dict[str, str]:
    """``local-lvm:vm-100-disk-1,serial=x,backup=0`` → {file: ..., serial: x, backup: 0}.

    ``serial`` is URL-decoded (PVE stores it url-encoded).
    """
    out: dict[str, str] = {}
    for i, part in enumerate(value.split(",")):
        if "=" in part:
            k, v = part.split("=", 1)
            if k == "volume":
                k = "file"
            out[k] = v
        elif i == 0 or "file" not in out:
            out["file"] = part
    if "serial" in out:
        out["serial"] = urllib.parse.unquote(out["serial"])
    return out


def parse_config_text(text: str) -> dict:
    """The main section of a VM config file (``[PENDING]`` under 'pending', comments → description)."""
    conf: dict = {}
    section = conf
    descr: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if re.match(r"^\[PENDING\]\s*$", line, re.I):
            section = conf.setdefault("pending", {})
            continue
        if re.match(r"^\[[^\]]*\]\s*$", line):
            section = {}  # snapshots and special sections are ignored
            continue
        if line.startswith("#"):
            if section is conf:
                descr.append(urllib.parse.unquote(line[1:]))
            continue
        m = re.match(r"^([a-z][a-z_\-]*\d*):\s*(.*?)\s*$", line)
        if m:
            section[m.group(1)] = m.group(2)
    if descr:
        conf["description"] = "\n".join(descr)
    return conf


def read_config_file(path: Path) -> dict | None:
    try:
        return parse_config_text(path.read_text())
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class DiskLocation:
    """Where the pstore disk of a VM is (or is not)."""

    state: str  # attached | pending | unused | commented | absent
    key: str | None = None  # virtio1, unused0, ...
    volid: str | None = None
    serial: str | None = None
    value: str | None = None  # the config value

    @property
    def bus(self) -> str | None:
        m = DRIVE_KEY_RE.match(self.key or "")
        return m.group(1) if m else None

    def to_json(self) -> dict:
        return {"state": self.state, "key": self.key, "volid": self.volid, "bus": self.bus}


def find_pstore_disk(config: dict, pending: dict, serial: str,
                     known_volids: set[str] = frozenset()) -> DiskLocation:
    """Find the pstore disk: by serial on any bus, pending, ``unusedN`` or a restore-commented line.

    ``config`` holds the *current* values; ``pending`` the values not yet
    applied (``{key: value}``). ``known_volids`` are volumes pvepstore
    recorded for this VM (``unusedN`` has no serial to match).
    """
    for key in sorted(config, key=_slot_order):
        if DRIVE_KEY_RE.match(key):
            d = parse_drive(config[key])
            if d.get("serial") == serial or d.get("file") in known_volids:
                return DiskLocation("attached", key, d.get("file"), d.get("serial"), config[key])
    for key in sorted(pending, key=_slot_order):
        if DRIVE_KEY_RE.match(key):
            d = parse_drive(pending[key])
            if d.get("serial") == serial or d.get("file") in known_volids:
                return DiskLocation("pending", key, d.get("file"), d.get("serial"), pending[key])
    commented = _commented_drives(config.get("description", ""))
    commented_volids = {d.get("file") for _, d, _ in commented if d.get("serial") == serial}
    for key in sorted(config, key=_slot_order):
        if UNUSED_KEY_RE.match(key):
            volid = parse_drive(config[key]).get("file")
            if volid in known_volids or volid in commented_volids:
                return DiskLocation("unused", key, volid, None, config[key])
    for key, d, raw in commented:
        if d.get("serial") == serial:
            return DiskLocation("commented", key, d.get("file"), serial, raw)
    return DiskLocation("absent")


def _commented_drives(description: str) -> list[tuple[str, dict, str]]:
    """``#virtio1: ...`` lines a restore wrote for ``backup=0`` drives (they land in the description)."""
    out = []
    for line in description.splitlines():
        m = re.match(r"^\s*((?:ide|sata|scsi|virtio)\d+):\s*(\S+)\s*$", line)
        if m:
            out.append((m.group(1), parse_drive(m.group(2)), m.group(2)))
    return out


def _slot_order(key: str) -> tuple:
    m = re.match(r"^([a-z]+)(\d+)$", key)
    return (m.group(1), int(m.group(2))) if m else (key, -1)


def free_slot(config: dict, pending: dict, bus: str = "virtio") -> str | None:
    used = set(config) | set(pending)
    for n in range(MAX_SLOT[bus] + 1):
        if f"{bus}{n}" not in used:
            return f"{bus}{n}"
    return None


def system_disk_storage(config: dict) -> str | None:
    """The storage of the VM's system disk: first disk in ``boot: order=``, else bootdisk, else scsi0/virtio0/..."""
    candidates: list[str] = []
    m = re.search(r"order=([^,\s]+)", config.get("boot", ""))
    if m:
        candidates += m.group(1).split(";")
    if config.get("bootdisk"):
        candidates.append(config["bootdisk"])
    candidates += [f"{b}{n}" for b in ("scsi", "virtio", "sata", "ide") for n in range(MAX_SLOT[b] + 1)]
    for key in candidates:
        value = config.get(key)
        if not value or not DRIVE_KEY_RE.match(key):
            continue
        d = parse_drive(value)
        if d.get("media") == "cdrom" or d.get("file") in ("none", "cdrom"):
            continue
        storage, sep, _ = d.get("file", "").partition(":")
        if sep and not storage.startswith("/"):
            return storage
    return None


def pending_map(pending_list: list[dict]) -> tuple[dict, set[str]]:
    """``GET .../pending`` → ({key: pending value}, {keys pending deletion})."""
    values = {e["key"]: e["pending"] for e in pending_list if "pending" in e}
    deletes = {e["key"] for e in pending_list if e.get("delete")}
    return values, deletes


def ip_configs(config: dict) -> list[tuple[int, dict[str, str]]]:
    out = []
    for key in sorted(config, key=_slot_order):
        m = re.match(r"^ipconfig(\d+)$", key)
        if m:
            out.append((int(m.group(1)), dict(p.split("=", 1) for p in config[key].split(",") if "=" in p)))
    return out


def nic_macs(config: dict) -> dict[int, str]:
    """``net0: virtio=BC:24:11:..,bridge=vmbr0`` → {0: 'bc:24:11:..'}."""
    out = {}
    for key, value in config.items():
        m = re.match(r"^net(\d+)$", key)
        if not m:
            continue
        for part in value.split(","):
            k, _, v = part.partition("=")
            if re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", v) and k != "bridge":
                out[int(m.group(1))] = v.lower()
                break
    return out
