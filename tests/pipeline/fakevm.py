"""A VmHandle double: records kept as files, so a killed process and its rerun share them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from pvepstore.analysis.bootend import BootEnd
from pvepstore.pipeline.collect import Gathered
from pvepstore.pstore.files import record_from_file
from pvepstore.pstore.model import Record


class FileVm:
    """A guest whose /sys/fs/pstore is a directory; ``boot`` file holds its boot id."""

    def __init__(self, root: Path, vmid: int = 101) -> None:
        self.root = root
        self.vmid = vmid
        self.vm = {"vmid": vmid, "node": "pve1", "name": f"vm{vmid}"}
        (root / "pstore").mkdir(parents=True, exist_ok=True)
        self.gathers = 0
        self.cleared: list[str] = []

    def add(self, name: str, data: bytes) -> None:
        (self.root / "pstore" / name).write_bytes(data)

    def set_boot(self, boot_id: str, orderly: str | None = None, ended: str | None = None) -> None:
        (self.root / "boot.json").write_text(json.dumps({"boot_id": boot_id, "orderly": orderly, "ended": ended}))

    def gather(self) -> Gathered:
        self.gathers += 1
        recs = [record_from_file(p.name, p.read_bytes(), p.stat().st_mtime)
                for p in sorted((self.root / "pstore").iterdir())]
        boot = json.loads((self.root / "boot.json").read_text()) if (self.root / "boot.json").exists() else {}
        end = BootEnd(ended_boot=boot.get("ended"), orderly=boot.get("orderly")) if boot.get("ended") else None
        return Gathered(source="guest", records=[r for r in recs if r], boot_id=boot.get("boot_id"), boot_end=end)

    def clear(self, records: Sequence[Record]) -> None:
        for rec in records:
            (self.root / "pstore" / rec.name).unlink()
            self.cleared.append(rec.name)
