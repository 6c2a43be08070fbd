"""What the node's own log says about one VM's QEMU process (issue 14, "causes on the host").

Pure: lines in, evidence out.  The lines are what Proxmox's ``GET /nodes/{node}/journal`` returns,
i.e. pve-manager's ``mini-journalreader`` output: a cursor line first and last, and between them
``<Mon DD HH:MM:SS> <host> <identifier>[<pid>]: <message>`` (kernel lines have no ``[pid]``), with
``-- Reboot --`` where the journal's boot id changes -- the node itself rebooted.

What is recognised (formats from the kernel's ``mm/oom_kill.c``, checked against a real 6.18
kernel's output in ``tests/fixtures/hostlog/``):

* the OOM killer's one-line summary (``dump_oom_summary``, kernels >= 5.0)::

      oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,
      task_memcg=/qemu.slice/101.scope,task=kvm,pid=4321,uid=0

  qemu-server runs every VM in the systemd scope ``qemu.slice/<vmid>.scope``, so the victim's
  memory cgroup names the VM without any pid bookkeeping;
* the kill itself (``__oom_kill_process``): ``Out of memory: Killed process 4321 (kvm) ...`` (global)
  or ``Memory cgroup out of memory: Killed process ...`` (a memory limit) -- matched to the VM by the
  pid of its summary line;
* ``-- Reboot --`` inside the ended boot's window: the node rebooted, which ends every VM's boot;
* HA's recovery of the VM after its node was fenced, as pve-ha-manager's CRM logs it
  (``PVE/HA/Manager.pm``, ``recover_service_from_fence``)::

      pve-ha-crm[1234]: recover service 'vm:101' from fenced node 'pve2' to node 'pve1'

  (or ``... to previous failed and fenced node 'pve2' again``).  The CRM master logs it, so it is
  in this node's journal when this node was the master at the time.

Bounded: at most ``MAX_LINES`` lines of at most ``MAX_LINE`` characters are looked at, each by
anchored regexes without nested repetition or by splitting (linear).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from .evidence import Confidence, Evidence, VerdictKind

MAX_LINES = 200_000
MAX_LINE = 4096

_PREFIX = re.compile(r"^(?P<stamp>[A-Z][a-z]{2} [ 0-3]\d \d\d:\d\d:\d\d) (?P<host>\S+) (?P<ident>[^\s\[:]+)"
                     r"(?:\[\d+\])?: (?P<msg>.*)$")
_KILLED = re.compile(r"^(?P<scope>Out of memory|Memory cgroup out of memory): Killed process (?P<pid>\d+) "
                     r"\((?P<comm>[^)]*)\)(?: total-vm:(?P<vm>\d+)kB, anon-rss:(?P<rss>\d+)kB)?")
_VM_SCOPE = re.compile(r"^/qemu\.slice/(?P<vmid>\d+)\.scope(?:/|$)")
REBOOT_MARK = "-- Reboot --"
_RECOVER = re.compile(r"^recover service '(?:vm:)?(?P<vmid>\d+)' (?:from fenced node '(?P<fenced>[^']*)' to node "
                      r"'(?P<to>[^']*)'|to previous failed and fenced node '(?P<again>[^']*)' again)$")


@dataclass(frozen=True)
class HostLine:
    stamp: str  # as the node printed it: local time, no year
    host: str
    ident: str
    message: str


def parse_lines(lines: Iterable[str]) -> list[HostLine | str]:
    """Journal lines as :class:`HostLine`; ``REBOOT_MARK`` kept as is; cursors and junk dropped."""
    out: list[HostLine | str] = []
    for n, raw in enumerate(lines):
        if n >= MAX_LINES:
            break
        if not isinstance(raw, str):
            continue
        line = raw[:MAX_LINE].rstrip("\n")
        if line == REBOOT_MARK:
            out.append(REBOOT_MARK)
            continue
        m = _PREFIX.match(line)
        if m:
            out.append(HostLine(m["stamp"], m["host"], m["ident"], m["msg"]))
    return out


def oom_summary(message: str) -> dict | None:
    """The fields of ``oom-kill:k=v,k=v,...`` (split, not a regex: linear on any line); None unless
    it names a victim (task_memcg, task, a numeric pid)."""
    if not message.startswith("oom-kill:"):
        return None
    fields = dict(f.partition("=")[::2] for f in message[len("oom-kill:"):].split(","))
    if not fields.get("pid", "").isdigit() or "task_memcg" not in fields or "task" not in fields:
        return None
    return {"constraint": fields.get("constraint", "?"), "memcg": fields["task_memcg"], "comm": fields["task"],
            "pid": fields["pid"]}


def vm_of_memcg(path: str) -> int | None:
    m = _VM_SCOPE.match(path)
    return int(m["vmid"]) if m else None


def host_evidence(lines: Iterable[str], vmid: int) -> list[Evidence]:
    """Evidence from the node's journal over the ended boot's window about VM ``vmid``."""
    parsed = parse_lines(lines)
    items: list[Evidence] = []
    victims: dict[int, dict] = {}  # pid -> the summary line of an OOM kill of this VM's QEMU
    for entry in parsed:
        if isinstance(entry, HostLine) and entry.ident == "pve-ha-crm":
            r = _RECOVER.match(entry.message)
            if r and int(r["vmid"]) == vmid:
                fenced = r["fenced"] or r["again"]
                to = r["to"] or fenced
                items.append(Evidence("ha_manager", VerdictKind.HA_RECOVERY, Confidence.HIGH,
                                      f"HA fenced node {fenced} (it stopped answering the cluster) and recovered "
                                      f"VM {vmid} on node {to}: the guest did not crash, its node failed",
                                      details={"node_time": entry.stamp, "fenced": fenced, "to": to,
                                               "line": entry.message}))
            continue
        if entry == REBOOT_MARK or not isinstance(entry, HostLine) or entry.ident != "kernel":
            continue
        m = oom_summary(entry.message)
        if m and vm_of_memcg(m["memcg"]) == vmid:
            victims[int(m["pid"])] = {"stamp": entry.stamp, "constraint": m["constraint"], "comm": m["comm"],
                                      "memcg": m["memcg"], "summary": entry.message}
            continue
        k = _KILLED.match(entry.message)
        if k and int(k["pid"]) in victims:
            items.append(_oom_kill(vmid, int(k["pid"]), victims.pop(int(k["pid"])), entry, k))
    for pid, v in victims.items():  # a summary whose kill line is missing (rate limit, cut window)
        items.append(_oom_kill(vmid, pid, v))
    reboots = sum(1 for e in parsed if e == REBOOT_MARK)
    if reboots:
        items.append(Evidence("host_journal", VerdictKind.NODE_REBOOT, Confidence.HIGH,
                              "the node itself rebooted while this boot ran: every VM on it stopped",
                              details={"node_reboots": reboots}))
    return items


def _oom_kill(vmid: int, pid: int, v: dict, entry: HostLine | None = None, k: re.Match | None = None) -> Evidence:
    """One OOM kill of the VM's QEMU: from its ``Killed process`` line ``k`` when there is one, else
    from the summary ``v`` alone."""
    details = {"node_time": v["stamp"], "pid": pid, "constraint": v["constraint"], "memcg": v["memcg"],
               "line": v["summary"]}
    if k is None:
        return Evidence("host_kernel", VerdictKind.HOST_OOM_KILL, Confidence.HIGH,
                        f"the node's OOM killer picked VM {vmid}'s QEMU process ({v['comm']}, pid {pid})",
                        details=details)
    why = ("a memory limit of its cgroup" if k["scope"].startswith("Memory cgroup") else "the node ran out of memory")
    rss = f", {int(k['rss']) // 1024} MiB resident" if k["rss"] else ""
    details.update(node_time=entry.stamp, line=entry.message)
    return Evidence("host_kernel", VerdictKind.HOST_OOM_KILL, Confidence.HIGH,
                    f"the node's OOM killer killed VM {vmid}'s QEMU process ({k['comm']}, pid {pid}{rss}): {why}",
                    details=details)
