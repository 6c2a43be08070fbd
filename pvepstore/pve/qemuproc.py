"""The ids of a VM's running QEMU process on this node, for matching the node's log to the VM later.

The kernel logs a fault with the faulting *thread*'s id, and a guest's work runs on QEMU's vCPU
threads (named ``CPU <n>/KVM``; ``/TCG`` without KVM), so the process id alone would miss most QEMU crashes.  A sweep
records the pid and the vCPU threads' ids while the boot runs (:class:`~pvepstore.analysis.hostlog.QemuIds`);
the vCPU threads live as long as the process, so the record changes only with a new QEMU.
Worker threads (I/O, VNC, RCU) come and go and are not recorded: a fault in one of them is not
matched (said in the README).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..analysis.hostlog import MAX_THREADS, QemuIds
from ..hostpaths import HostPaths
from .locking import qemu_pid

# "CPU <n>/<accelerator>": KVM on a PVE node, TCG with kvm: 0 (and in the test tier)
_VCPU = re.compile(r"CPU \d{1,4}/(?:KVM|TCG)")


def qemu_ids(paths: HostPaths, vmid: int, proc: Path = Path("/proc")) -> QemuIds | None:
    """The VM's QEMU on this node (PVE's pidfile, checked as vm_running_locally does) and its vCPU
    threads; None when it does not run here."""
    pid = qemu_pid(paths, vmid)
    if pid is None:
        return None
    threads: list[int] = []
    try:
        tids = sorted(int(t.name) for t in (proc / str(pid) / "task").iterdir() if t.name.isdigit())
    except OSError:
        return QemuIds(pid)
    for tid in tids[: MAX_THREADS * 4]:
        if tid == pid:
            continue
        try:
            comm = (proc / str(pid) / "task" / str(tid) / "comm").read_text(errors="replace").strip()
        except OSError:
            continue  # the thread ended meanwhile
        if _VCPU.fullmatch(comm):
            threads.append(tid)
        if len(threads) >= MAX_THREADS:
            break
    return QemuIds(pid, tuple(threads))
