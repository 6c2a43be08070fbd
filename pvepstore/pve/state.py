"""What provision recorded about a VM, in ``<state_dir>/vms/<vmid>.json`` under the key ``provision``.

The file is shared with the collector (boot id, ``last_collection``): top-level
keys are merged, never replaced wholesale, and written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..config import Config
from ..pstore import BlkParams


def state_file(cfg: Config, vmid: int) -> Path:
    return Path(cfg.state_dir) / "vms" / f"{int(vmid)}.json"


def load(cfg: Config, vmid: int) -> dict:
    try:
        doc = json.loads(state_file(cfg, vmid).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def update(cfg: Config, vmid: int, **changes) -> dict:
    path = state_file(cfg, vmid)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**load(cfg, vmid), **changes}
    fd, tmp = tempfile.mkstemp(prefix=f".{vmid}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return doc


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
