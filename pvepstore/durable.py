"""Crash-safe file operations: a file or directory is either absent or complete.

Every write goes to a fresh temporary name in the same directory (created with
``O_EXCL``), is fsynced, then renamed over the target, and the directory itself
is fsynced so the rename survives a power cut (the pattern of rename(2)'s
atomicity).  The primitives live in :mod:`pvepstore.safefs` and never follow a
link: with ``base`` (pvepstore's state directory) every directory below it is
opened ``O_NOFOLLOW`` and the base must not be writable by others.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .safefs import Dir


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_dir(path: Path, base: Path | None = None, *, create: bool = True) -> Dir:
    """The directory ``path``: below a private ``base`` no link is followed; without one,
    ``path`` is an operator-given directory (followed) and only names in it are protected."""
    path = Path(path)
    if base is None:
        return Dir.open(path, create=create, follow=True)
    rel = path.relative_to(base)
    with Dir.open(base, create=create, private=True) as root:
        return root.walk(rel.parts, create=create)


def write_atomic(path: Path, data: bytes, mode: int = 0o640, *, base: Path | None = None) -> None:
    path = Path(path)
    with open_dir(path.parent, base) as d:
        d.replace_file(path.name, data, mode)


def write_json(path: Path, doc: object, *, base: Path | None = None) -> None:
    # No indent: json's C encoder only runs without one (events carry kernel text, and a
    # sweep writes many); `pvepstore incidents show --json` pretty-prints for humans.
    write_atomic(path, (dumps(doc) + "\n").encode(), base=base)


def dumps(doc: object) -> str:
    return json.dumps(doc, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def read_json(path: Path, default: object = None) -> object:
    """A JSON file pvepstore wrote; a link or FIFO under that name is refused (InputError), never read."""
    path = Path(path)
    try:
        with Dir.open(path.parent, follow=True) as d:
            return json.loads(d.read_bytes(path.name))
    except FileNotFoundError:
        return default
