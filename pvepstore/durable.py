"""Crash-safe file operations: a file or directory is either absent or complete.

Every write goes to a temporary name in the same directory, is fsynced, then
renamed over the target, and the directory itself is fsynced so the rename
survives a power cut (the pattern of rename(2)'s atomicity).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o640) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, doc: object) -> None:
    # No indent: json's C encoder only runs without one (events carry kernel text, and a
    # sweep writes many); `pvepstore incidents show --json` pretty-prints for humans.
    write_atomic(path, (dumps(doc) + "\n").encode())


def dumps(doc: object) -> str:
    return json.dumps(doc, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def read_json(path: Path, default: object = None) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def publish_dir(build: Path, target: Path) -> bool:
    """Rename a fully written and fsynced directory into place; False if ``target`` exists."""
    for root, _dirs, files in os.walk(build):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))
    try:
        os.rename(build, target)  # fails if target exists and is not empty
    except OSError:
        if target.is_dir():
            shutil.rmtree(build, ignore_errors=True)
            return False
        raise
    fsync_dir(target.parent)
    return True


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True
