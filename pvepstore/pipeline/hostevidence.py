"""What the host knows about how a VM's boot ended: Proxmox's tasks and the node's journal.

Shared by every handle that can tell a boot ended (a guest's boot id changed, or -- for the
ivshmem backend, read on the host -- a new QEMU process): :class:`HostEvidence` is mixed into
the handle dataclasses, which carry ``vmid``, ``tasks``, ``host_log`` and ``clock``.
Fetched only when a boot ended (each costs an API call).
"""

from __future__ import annotations

from typing import Callable

from ..analysis.bootend import BootWindow, task_evidence
from ..analysis.evidence import Confidence, Evidence, EvidenceItem
from ..analysis.hostlog import host_evidence, qemu_continuity
from ..errors import PveError

# How far before the new boot's start the node's journal is read: a boot may have run for months, and
# the API returns every line of the range (no identifier filter). A QEMU killed earlier than this
# before the VM was started again is not seen (its end is then "unexpected_reset").
HOST_LOG_LOOKBACK = 6 * 3600


def api_sources(api, node: str, vmid: int) -> tuple[Callable, Callable, Callable]:
    """``tasks(since)`` (the VM's Proxmox tasks), ``host_log(since, until)`` (the node's journal) and
    ``vm_config()`` (the VM's current config)."""
    def tasks(since: float | None) -> list[dict]:
        params = {"vmid": vmid, "limit": 50, "source": "all"}
        if since is not None:
            params["since"] = max(0, int(since))
        return api.get(f"nodes/{node}/tasks", **params) or []

    def host_log(since: float, until: float) -> list[str]:
        got = api.get(f"nodes/{node}/journal", since=max(0, int(since)), until=max(0, int(until)))
        return [line for line in got if isinstance(line, str)] if isinstance(got, list) else []

    def vm_config() -> dict:
        got = api.get(f"nodes/{node}/qemu/{vmid}/config")
        return got if isinstance(got, dict) else {}

    return tasks, host_log, vm_config


class HostEvidence:
    vmid: int
    tasks: Callable[[float | None], list[dict]] | None
    host_log: Callable[[float, float], list[str]] | None
    vm_config: Callable[[], dict] | None
    clock: Callable[[], float]

    def boot_end_evidence(self, window: BootWindow) -> list[EvidenceItem]:
        """The Proxmox task that ended the boot in ``window``, if one did (asked only when a boot ended)."""
        same = self._same_qemu(window)
        if self.tasks is None:
            return same
        end = window.end if window.end is not None else self.clock()
        # A little before the boot's start too: the evidence names the tasks it did NOT use (the
        # stop that ended the boot before, ...), so a reader sees why they do not explain this end.
        since = (window.start if window.start is not None else end - 3000) - 600
        return task_evidence(self.tasks(since), window) + self._host_evidence(window, end) + same

    def _same_qemu(self, window: BootWindow) -> list[EvidenceItem]:
        """The boot ended inside a QEMU process that still runs: context naming the VM's watchdog."""
        if window.qemu is None or window.qemu != window.qemu_after:
            return []
        conf: dict = {}
        if self.vm_config is not None:
            try:
                conf = self.vm_config()
            except PveError:
                conf = {}
        found = qemu_continuity(self.vmid, window.qemu, window.qemu_after, conf.get("watchdog"))
        return [found] if found is not None else []

    def _host_evidence(self, window: BootWindow, end: float) -> list[EvidenceItem]:
        """The node's own log over the ended boot's lifetime: its OOM killer, its own reboots."""
        if self.host_log is None or window.start is None:
            return []  # without the boot's start, a kill before it could be blamed on it
        since = max(window.start, end - HOST_LOG_LOOKBACK)
        try:
            lines = self.host_log(since, end + 5)
        except PveError as exc:  # e.g. no Sys.Syslog on the node: the verdict goes on without it
            return [Evidence("host_journal", None, Confidence.LOW, f"the node's journal was not readable: "
                             f"{exc.message}")]
        return list(host_evidence(lines, self.vmid, window.qemu))
