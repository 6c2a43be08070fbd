"""Plant what a hostile local user would under a name pvepstore is about to write.

Each kind is one class of the attack in issue 11 item 1: a symlink to a file
outside, a symlink to a directory outside, a FIFO (opening it for writing
blocks), a hard link to a file outside (writing in place would modify it) and
a plain pre-existing file.  ``Outside`` is the victim tree; tests assert it is
byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

KINDS = ("symlink-file", "symlink-dir", "fifo", "hardlink", "regular")
VICTIM = b"root-owned bytes that must survive\n"


class Outside:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "victim").write_bytes(VICTIM)
        (root / "victimdir").mkdir(exist_ok=True)
        (root / "victimdir" / "inside").write_bytes(VICTIM)
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[bytes, int]]:
        out = {}
        for p in sorted(self.root.rglob("*")):
            st = p.lstat()
            out[str(p.relative_to(self.root))] = (p.read_bytes() if p.is_file() else b"", st.st_mode)
        return out

    def unchanged(self) -> bool:
        return self.snapshot() == self.before


def plant(path: Path, kind: str, outside: Outside) -> int | None:
    """Plant ``kind`` at ``path``; for a FIFO, return a non-blocking reader fd (so a write would
    not block the test but would leave bytes in it: the test then reads the FIFO to prove none came)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink-file":
        path.symlink_to(outside.root / "victim")
    elif kind == "symlink-dir":
        path.symlink_to(outside.root / "victimdir", target_is_directory=True)
    elif kind == "fifo":
        os.mkfifo(path)
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    elif kind == "hardlink":
        os.link(outside.root / "victim", path)
    elif kind == "regular":
        path.write_bytes(b"left over from an earlier run\n")
    else:
        raise ValueError(kind)
    return None


def fifo_got_nothing(reader: int | None) -> bool:
    if reader is None:
        return True
    try:
        return os.read(reader, 4096) == b""
    except BlockingIOError:
        return True
    finally:
        os.close(reader)
