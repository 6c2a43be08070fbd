"""PVE's own per-VM lock and "is it really off?" checks, for touching a VM's volume on the host.

The sequence (../shared/reference/proxmox.md §4): on the node that owns the VM,
take ``flock`` on ``/var/lock/qemu-server/lock-<vmid>.conf`` (the lock
``qm start``, config updates, migration and vzdump take: while we hold it they
wait), then re-check under it that the config file on *this* node has no
``lock:`` and no ``vmstate:`` and that QEMU is not running (pidfile +
``/proc/<pid>/cmdline`` carrying ``-pidfile <that file>``, as
``PVE::QemuServer::Helpers::vm_running_locally`` does). Hold it briefly: PVE
gives up acquiring after 10 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import PveError, VmBusyError
from ..hostpaths import HostPaths
from .vmconfig import read_config_file

ACQUIRE_TIMEOUT = 5.0  # we wait less than PVE's own 10 s: PVE's work has priority


@contextmanager
def vm_config_lock(paths: HostPaths, vmid: int, timeout: float = ACQUIRE_TIMEOUT) -> Iterator[Path]:
    path = paths.vm_lock(vmid)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # like Perl's open '>>'
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise VmBusyError(f"VM {vmid}: Proxmox's config lock {path} is held by another process",
                                      hint="PVE is working on the VM (start, backup, config change); "
                                           "try again in a moment") from None
                time.sleep(0.05)
        yield path
    finally:
        os.close(fd)  # releases the flock


def qemu_pid(paths: HostPaths, vmid: int) -> int | None:
    """The PID of the VM's running QEMU on this node, or None (PVE's vm_running_locally)."""
    pidfile = paths.vm_pidfile(vmid)
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    want = str(pidfile).encode()
    if any(a == b"-pidfile" and b == want for a, b in zip(argv, argv[1:])):
        return pid
    return None


def qemu_run(paths: HostPaths, vmid: int) -> tuple[str, float] | None:
    """The VM's running QEMU process as (run id, start on the host's clock), or None.

    The id is new for every QEMU process (its pid and its start in clock ticks since the node
    booted, from /proc/<pid>/stat), so a stop, kill or crash followed by a start is a new run
    even where nobody can ask the guest for its boot id (ivshmem: records read on the host).
    """
    pid = qemu_pid(paths, vmid)
    if pid is None:
        return None
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    # 32 hex digits, the form of a boot id: the boot-list logic (analysis.bootend) takes runs as boots
    run = hashlib.sha256(f"{btime}:{pid}:{ticks}".encode()).hexdigest()[:32]
    # The start on the wall clock: QEMU writes its pidfile as it starts, before the guest runs (the
    # latest moment the previous run can have ended).  btime + ticks is whole-second btime and can be
    # a second early, which would put the task that ended the previous run after this one's start.
    try:
        started = paths.vm_pidfile(vmid).stat().st_mtime
    except OSError:
        started = btime + ticks / os.sysconf("SC_CLK_TCK") + 1.0
    return run, started


def owner_node(paths: HostPaths, vmid: int) -> str | None:
    """The node whose config directory holds the VM (pmxcfs has exactly one)."""
    nodes = paths.pve / "nodes"
    try:
        for node_dir in sorted(nodes.iterdir()):
            if paths.vm_config(node_dir.name, vmid).is_file():
                return node_dir.name
    except OSError:
        pass
    return None


def load_local_config(paths: HostPaths, node: str, vmid: int) -> dict:
    conf = read_config_file(paths.vm_config(node, vmid))
    if conf is None:
        owner = owner_node(paths, vmid)
        if owner:
            raise PveError(f"VM {vmid} belongs to node {owner}, not to this node ({node})",
                           hint=f"read it offline on {owner} (its volume and locks are local there)")
        raise PveError(f"VM {vmid} does not exist on this node ({paths.vm_config(node, vmid)} is missing)")
    return conf


def assert_offline(paths: HostPaths, node: str, vmid: int) -> dict:
    """Config of a VM that is provably off and not locked (call under the config lock)."""
    conf = load_local_config(paths, node, vmid)
    if conf.get("lock"):
        raise VmBusyError(f"VM {vmid} is locked ({conf['lock']})",
                          hint="a backup, migration, snapshot or hibernation is in progress; try later")
    if conf.get("vmstate"):
        raise VmBusyError(f"VM {vmid} is hibernated (vmstate: {conf['vmstate']})",
                          hint="its disks must not change until it is resumed")
    pid = qemu_pid(paths, vmid)
    if pid is not None:
        raise VmBusyError(f"VM {vmid} is running (QEMU pid {pid}): its volume is never touched from the host",
                          hint="read through the guest (pvepstore read without --offline) or power the VM off")
    return conf


@contextmanager
def offline_guard(paths: HostPaths, node: str, vmid: int,
                  timeout: float = ACQUIRE_TIMEOUT) -> Iterator[dict]:
    """Hold PVE's config lock and yield the config of a VM that is off; refuse otherwise."""
    load_local_config(paths, node, vmid)  # owning node? (before waiting for a lock)
    with vm_config_lock(paths, vmid, timeout):
        yield assert_offline(paths, node, vmid)
