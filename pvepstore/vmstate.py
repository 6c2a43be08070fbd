"""pvepstore's per-VM state: ``<state_dir>/vms/<vmid>.json``, shared by provision and the collector.

One JSON object per VM; writers merge top-level keys (``provision``, ``boot_id``,
``archived``, ``planned_reboot`` ...) and never replace the file wholesale.
Writes are atomic and durable and never follow a link (:mod:`pvepstore.safefs`: the
state directory, ``root``'s parent, must not be writable by others; ``vms/`` and the
lock file are opened ``O_NOFOLLOW``).  :meth:`VmStateStore.locked` is pvepstore's own
per-VM lock (one pvepstore operation per VM at a time); it is not PVE's config lock.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .durable import open_dir, read_json, write_json
from .errors import VmBusyError


class VmStateStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def of(cls, cfg) -> "VmStateStore":
        return cls(Path(cfg.state_dir) / "vms")

    def path(self, vmid: int) -> Path:
        return self.root / f"{int(vmid)}.json"

    def load(self, vmid: int) -> dict:
        try:
            doc = read_json(self.path(vmid), {})
        except ValueError:  # a torn file cannot happen (atomic writes); a hand-edited one can
            return {}
        return doc if isinstance(doc, dict) else {}

    def update(self, vmid: int, **changes) -> dict:
        doc = {**self.load(vmid), **changes}
        write_json(self.path(vmid), doc, base=self.root.parent)
        return doc

    @contextmanager
    def locked(self, vmid: int) -> Iterator[None]:
        with open_dir(self.root, self.root.parent) as d:
            fd = d.lock_file(f".{int(vmid)}.lock")  # a planted link/FIFO is refused, never opened
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VmBusyError(f"VM {vmid} is busy with another pvepstore operation",
                                  hint="it will be picked up by the next sweep") from None
            yield
        finally:
            os.close(fd)
