"""What provision recorded about a VM: the ``provision`` key of pvepstore's per-VM state
(:mod:`pvepstore.vmstate`, shared with the collector)."""

from __future__ import annotations

from ..config import Config
from ..pstore import BlkParams
from ..vmstate import VmStateStore


def load(cfg: Config, vmid: int) -> dict:
    return VmStateStore.of(cfg).load(vmid)


def update(cfg: Config, vmid: int, **changes) -> dict:
    return VmStateStore.of(cfg).update(vmid, **changes)


def provision_record(cfg: Config, vmid: int) -> dict:
    rec = load(cfg, vmid).get("provision")
    return rec if isinstance(rec, dict) else {}


def known_volids(cfg: Config, vmid: int) -> set[str]:
    rec = provision_record(cfg, vmid)
    return {v for v in [rec.get("volid"), *rec.get("old_volids", [])] if isinstance(v, str)}


def recorded_params(cfg: Config, vmid: int) -> BlkParams | None:
    raw = provision_record(cfg, vmid).get("blk_params")
    if not isinstance(raw, dict):
        return None
    try:
        return BlkParams(**{k: raw[k] for k in ("kmsg_size", "pmsg_size", "console_size", "ftrace_size",
                                                 "nr_cpus", "cap_128m") if k in raw})
    except TypeError:
        return None
