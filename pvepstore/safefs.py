"""File system primitives that never follow a link: every file pvepstore writes goes through here.

pvepstore runs as root and writes bytes a guest chose.  Anyone who can create a
name in a directory we write to could plant a symlink, a hard link to a root
file, or a FIFO under a name we are about to write.  So:

* A directory is reached from a *base* the operator or user named (its
  ancestors are resolved by the kernel: the operator chose that path) and every
  component below the base is created with ``mkdir`` and opened with
  ``O_DIRECTORY|O_NOFOLLOW`` relative to its parent's fd (``openat``): a
  symlinked directory is refused, never followed.
* A file is never opened for writing under its final name.  Its bytes go to a
  fresh temporary name created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` inside the
  target directory, then ``renameat`` puts it in place.  Whatever was there
  (a symlink, a hard link to another file, a FIFO, a regular file) is replaced
  as a *name*; what it pointed to is untouched.  A directory there is refused.
* Reads of pvepstore's own files use ``O_NOFOLLOW|O_NONBLOCK`` and require a
  regular file, so a planted link is refused and a planted FIFO cannot block.
* A *private* base (the state directory) must be a real directory owned by
  root (or by pvepstore's own user when it does not run as root) and not
  writable by others: a directory others can write lets them replace entries.

Refusals are :class:`~pvepstore.errors.InputError` with a one-line message.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Iterable

from .errors import InputError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW_DIR = _DIR_FLAGS | os.O_NOFOLLOW
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KIND = {stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
         stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory",
         stat.S_IFREG: "a regular file"}


def kind(st: os.stat_result) -> str:
    return _KIND.get(stat.S_IFMT(st.st_mode), "a special file")


def trusted_uids() -> frozenset[int]:
    """Owners whose files and directories pvepstore trusts: root, and itself (tests run unprivileged)."""
    return frozenset({0, os.geteuid()})


def check_name(name: str) -> str:
    """A single directory entry name: never a path, never ``.``/``..`` (names may come from a guest)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InputError(f"refusing the file name {name!r}", hint="this is a bug in the caller")
    return name


def refuse_unsafe_dir(st: os.stat_result, path: object) -> None:
    """Refuse a directory whose owner or permissions let someone else replace what is in it."""
    if st.st_uid not in trusted_uids():
        raise InputError(f"{path} is owned by uid {st.st_uid}, not by root",
                         hint="pvepstore's state directory must belong to root: chown root it")
    if st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid not in (0, os.getegid())):
        raise InputError(f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})",
                         hint=f"chmod go-w {path}: others could plant links in pvepstore's state")


class Dir:
    """An open directory; every operation is relative to its fd and never follows a link."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def __enter__(self) -> "Dir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- opening ------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str, *, create: bool = False, mode: int = 0o750, private: bool = False,
             follow: bool = False) -> "Dir":
        """The base directory ``path``: its ancestors are the caller's; itself is not followed
        unless ``follow`` (an operator-configured directory that may be a link, e.g. a textfile dir)."""
        path = Path(path)
        parent, name = path.parent, path.name
        if not name or name == ".." or follow:  # "/" or "..": nothing to plant there
            if create:
                _makedirs(path)
            return cls._checked(_open_dir(path, _DIR_FLAGS, path), path, private)
        if create:
            _makedirs(parent)
        pfd = _open_dir(parent, _DIR_FLAGS, parent)
        try:
            if create:
                _mkdir(name, mode, pfd, path)
            return cls._checked(_openat_dir(name, pfd, path), path, private)
        finally:
            os.close(pfd)

    @classmethod
    def _checked(cls, fd: int, path: Path, private: bool) -> "Dir":
        if private:
            try:
                refuse_unsafe_dir(os.fstat(fd), path)
            except BaseException:
                os.close(fd)
                raise
        return cls(fd, path)

    def sub(self, name: str, *, create: bool = True, mode: int = 0o750) -> "Dir":
        """A subdirectory, created if missing; a symlink or non-directory there is refused."""
        check_name(name)
        if create:
            _mkdir(name, mode, self.fd, self.path / name)
        return Dir(_openat_dir(name, self.fd, self.path / name), self.path / name)

    def walk(self, parts: Iterable[str], *, create: bool = True, mode: int = 0o750) -> "Dir":
        """A descendant directory; returns a new Dir (this one stays open)."""
        cur = Dir(os.dup(self.fd), self.path)
        for part in parts:
            nxt = cur.sub(part, create=create, mode=mode) if part not in ("", ".") else None
            if nxt is not None:
                cur.close()
                cur = nxt
        return cur

    # -- inspecting ---------------------------------------------------------------
    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(check_name(name), dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def tree_size(self, name: str) -> int:
        """Bytes in the regular files below ``name``, links not followed (nor counted)."""
        total = 0
        for _root, _dirs, files, rootfd in os.fwalk(check_name(name), dir_fd=self.fd, follow_symlinks=False):
            for f in files:
                st = os.stat(f, dir_fd=rootfd, follow_symlinks=False)
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
        return total

    # -- reading ------------------------------------------------------------------
    def open_regular(self, name: str, flags: int = os.O_RDONLY, *, owned: bool = False, mode: int = 0o600) -> int:
        """An fd on the regular file ``name``: a link, FIFO or device is refused, nothing blocks.

        ``owned``: the file must also belong to root (or to us), e.g. a shm file QEMU maps."""
        where = self.path / check_name(name)
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                st = self.lstat(name)
                raise InputError(f"refusing {where}: it is {kind(st) if st else 'gone'}",
                                 hint="pvepstore reads and writes only regular files it did not follow a link to")
            raise
        st = os.fstat(fd)
        bad = None if stat.S_ISREG(st.st_mode) else f"it is {kind(st)}"
        if bad is None and owned and st.st_uid not in trusted_uids():
            bad = f"it is owned by uid {st.st_uid}, not by root"
        if bad is not None:
            os.close(fd)
            raise InputError(f"refusing {where}: {bad}", hint="someone else planted it; remove it")
        return fd

    def read_bytes(self, name: str, *, limit: int | None = None, owned: bool = False) -> bytes:
        fd = self.open_regular(name, owned=owned)
        try:
            chunks, got = [], 0
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
                got += len(chunk)
                if limit is not None and got > limit:
                    raise InputError(f"{self.path / name} is more than {limit} bytes",
                                     hint="this is not a file pvepstore wrote")
            return b"".join(chunks)
        finally:
            os.close(fd)

    # -- writing ------------------------------------------------------------------
    def _tmp(self, name: str, mode: int = 0o600) -> tuple[str, int]:
        for _ in range(100):
            tmp = f".{name[:64]}.{secrets.token_hex(6)}.tmp"
            try:
                return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                    mode, dir_fd=self.fd)
            except FileExistsError:
                continue
        raise InputError(f"cannot create a temporary file in {self.path}",
                         hint="100 random names all existed: someone is racing pvepstore")

    def create_file(self, name: str, data: bytes, mode: int = 0o640, *, durable: bool = True) -> None:
        """Create ``name`` (``O_EXCL``): an existing entry of any kind is an error (FileExistsError)."""
        fd = os.open(check_name(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=self.fd)
        _fill(fd, data, mode, durable)

    def replace_file(self, name: str, data: bytes, mode: int = 0o640, *, durable: bool = True) -> None:
        """Atomically make ``name`` a new regular file holding ``data`` (temp + rename, see module doc)."""
        check_name(name)
        tmp, fd = self._tmp(name)
        try:
            _fill(fd, data, mode, durable)
            self.rename(tmp, name)
        except BaseException:
            self.unlink(tmp)
            raise
        if durable:
            self.fsync()

    def touch_new(self, name: str, mode: int = 0o640) -> None:
        """Make sure a marker ``name`` exists without opening an existing entry (of any kind)."""
        try:
            self.create_file(name, b"", mode)
        except FileExistsError:
            st = self.lstat(name)
            if st is not None and not stat.S_ISREG(st.st_mode):
                self.replace_file(name, b"", mode)  # a planted link/FIFO: replace the name

    def rename(self, src: str, dst: str, dst_dir: "Dir | None" = None) -> None:
        target = dst_dir or self
        try:
            os.rename(check_name(src), check_name(dst), src_dir_fd=self.fd, dst_dir_fd=target.fd)
        except IsADirectoryError:
            raise InputError(f"refusing to replace {target.path / dst}: it is a directory",
                             hint="remove it or choose another directory") from None

    def link(self, src: str, dst: str, dst_dir: "Dir | None" = None) -> None:
        """A hard link of the entry ``src`` itself (a symlink there is linked, never its target)."""
        target = dst_dir or self
        os.link(check_name(src), check_name(dst), src_dir_fd=self.fd, dst_dir_fd=target.fd,
                follow_symlinks=False)

    def link_replace(self, src: str, dst: str, dst_dir: "Dir | None" = None) -> None:
        """Make ``dst`` another name of ``src``'s inode, replacing whatever ``dst`` is (link + rename)."""
        target = dst_dir or self
        for _ in range(100):
            tmp = f".{dst[:64]}.{secrets.token_hex(6)}.tmp"
            try:
                self.link(src, tmp, target)
                break
            except FileExistsError:
                continue
        else:
            raise InputError(f"cannot create a temporary link in {target.path}")
        try:
            target.rename(tmp, dst)
        except BaseException:
            target.unlink(tmp)
            raise

    def mkdtemp(self, prefix: str) -> str:
        for _ in range(100):
            name = f"{prefix}{secrets.token_hex(6)}"
            try:
                os.mkdir(check_name(name), 0o700, dir_fd=self.fd)
                return name
            except FileExistsError:
                continue
        raise InputError(f"cannot create a temporary directory in {self.path}")

    def unlink(self, name: str) -> None:
        try:
            os.unlink(check_name(name), dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def rmtree(self, name: str) -> None:
        """Remove the directory ``name`` and its contents; a symlink there is removed, not followed."""
        st = self.lstat(name)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            self.unlink(name)
            return
        shutil.rmtree(name, dir_fd=self.fd)  # fd-based walk (shutil._rmtree_safe_fd): no link followed

    def fsync(self) -> None:
        os.fsync(self.fd)

    def lock_file(self, name: str) -> int:
        """An fd to flock on ``name`` (created if missing); a link or FIFO there is refused."""
        return self.open_regular(name, os.O_RDWR | os.O_CREAT)


def _fill(fd: int, data: bytes, mode: int, durable: bool) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(path: Path) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{path} exists and is not a directory") from None


def _mkdir(name: str, mode: int, dir_fd: int, path: Path) -> None:
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        pass  # whatever it is, opening it with O_NOFOLLOW decides


def _open_dir(path: Path, flags: int, shown: Path) -> int:
    try:
        return os.open(path, flags)
    except NotADirectoryError:
        raise InputError(f"{shown} is not a directory") from None


def _openat_dir(name: str, dir_fd: int, shown: Path) -> int:
    try:
        return os.open(name, _NOFOLLOW_DIR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                what = kind(st)
            except OSError:
                what = "not a directory"
            raise InputError(f"refusing {shown}: it is {what}, not a directory",
                             hint="pvepstore never follows links when writing; remove it or choose another "
                                  "directory") from None
        raise
