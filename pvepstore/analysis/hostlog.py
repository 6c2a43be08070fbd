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
  in this node's journal when this node was the master at the time;
* the VM's QEMU dying on a fault, as the kernel logs it (``arch/x86/mm/fault.c`` show_signal_msg,
  ``arch/x86/kernel/traps.c`` do_trap / general protection; checked against a real kernel's lines in
  ``tests/fixtures/hostlog/``)::

      CPU 0/KVM[4325]: segfault at 0 ip 000055c035c9b1d1 sp 00007f08ddc6feb0 error 6 in kvm[11d1,55c035c9b000+1000] ...
      traps: kvm[4321] general protection fault ip:... sp:... error:0 in kvm[...]

  The kernel prints the faulting *thread*'s comm and id (a vCPU thread is ``CPU <n>/KVM``), so the
  line is matched by the ids pvepstore recorded of the VM's QEMU (:class:`QemuIds`: the process and
  its vCPU threads, seen by a sweep while the boot ran) -- never by the name ``kvm`` alone, which
  every VM's QEMU has;
* QEMU's own stderr, which Proxmox's QEMU sends to the journal as ``QEMU[<pid>]`` (pve-qemu's patch
  "redirect stderr to journal when daemonized"): an assertion failure (glibc's ``Assertion `...'
  failed.``, then abort) is a QEMU crash; ``kvm: terminating on signal 15 from pid 42 (cmd)``
  (``qemu_kill_report``) names who stopped it.

Bounded: at most ``MAX_LINES`` lines of at most ``MAX_LINE`` characters are looked at, each by
anchored regexes without nested repetition or by splitting (linear).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable

from .evidence import Confidence, Evidence, VerdictKind

MAX_LINES = 200_000
MAX_LINE = 4096

_PREFIX = re.compile(r"^(?P<stamp>[A-Z][a-z]{2} [ 0-3]\d \d\d:\d\d:\d\d) (?P<host>\S+) (?P<ident>[^\s\[:]+)"
                     r"(?:\[(?P<pid>\d{1,10})\])?: (?P<msg>.*)$")
_KILLED = re.compile(r"^(?P<scope>Out of memory|Memory cgroup out of memory): Killed process (?P<pid>\d+) "
                     r"\((?P<comm>[^)]*)\)(?: total-vm:(?P<vm>\d+)kB, anon-rss:(?P<rss>\d+)kB)?")
_VM_SCOPE = re.compile(r"^/qemu\.slice/(?P<vmid>\d+)\.scope(?:/|$)")
REBOOT_MARK = "-- Reboot --"
_RECOVER = re.compile(r"^recover service '(?:vm:)?(?P<vmid>\d+)' (?:from fenced node '(?P<fenced>[^']*)' to node "
                      r"'(?P<to>[^']*)'|to previous failed and fenced node '(?P<again>[^']*)' again)$")


_FAULT = re.compile(r"^(?P<comm>.{1,16}?)\[(?P<tid>\d+)\]: (?P<what>segfault) at [0-9a-f]+ ip [0-9a-f]+ sp [0-9a-f]+ "
                    r"error [0-9a-f]+(?: in (?P<obj>[^\[\s]{1,255})\[)?")
_TRAP = re.compile(r"^traps: (?P<comm>.{1,16}?)\[(?P<tid>\d+)\] (?P<what>[a-z][a-z ]{0,40}?) ip:[0-9a-f]+ sp:[0-9a-f]+ "
                   r"error:[0-9a-f]+(?: in (?P<obj>[^\[\s]{1,255})\[)?")
_TERMINATED = re.compile(r"^(?:[^:\s]{1,64}: )?terminat(?:ing on|ed by) signal (?P<sig>\d+)"
                         r"(?: from pid (?P<pid>\d+) \((?P<cmd>.{0,512})\))?$")
QEMU_IDENT = "QEMU"
QEMU_TAIL = 5  # QEMU's last messages kept with its crash


@dataclass(frozen=True)
class QemuIds:
    """The VM's QEMU process as a sweep saw it while a boot ran: its pid and its vCPU threads' ids
    (the threads a guest's work runs on; stable for the process's life)."""

    pid: int
    threads: tuple[int, ...] = ()

    def to_json(self) -> dict:
        return {"pid": self.pid, "threads": list(self.threads)}

    @classmethod
    def from_json(cls, got) -> "QemuIds | None":
        """The recorded form back; None for anything else (old or damaged state)."""
        if not isinstance(got, dict) or not isinstance(got.get("pid"), int) or got["pid"] <= 0:
            return None
        threads = got.get("threads") if isinstance(got.get("threads"), list) else []
        return cls(got["pid"], tuple(t for t in threads[:MAX_THREADS] if isinstance(t, int) and t > 0))

    def owns(self, tid: int) -> bool:
        return tid == self.pid or tid in self.threads


MAX_THREADS = 1024  # vCPUs per VM are far fewer (PVE allows 512 cores*sockets at most): bounded state


@dataclass(frozen=True)
class HostLine:
    stamp: str  # as the node printed it: local time, no year
    host: str
    ident: str
    message: str
    pid: int | None = None  # the journal's _PID (none on kernel lines)


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
            out.append(HostLine(m["stamp"], m["host"], m["ident"], m["msg"], int(m["pid"]) if m["pid"] else None))
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


def host_evidence(lines: Iterable[str], vmid: int, qemu: QemuIds | None = None) -> list[Evidence]:
    """Evidence from the node's journal over the ended boot's window about VM ``vmid``; ``qemu``:
    the ids of the QEMU process that ran the ended boot, when a sweep saw it."""
    parsed = parse_lines(lines)
    items: list[Evidence] = []
    victims: dict[int, dict] = {}  # pid -> the summary line of an OOM kill of this VM's QEMU
    qemu_log: list[str] = []  # the ended QEMU's own last messages
    ending: Evidence | None = None  # how the ended QEMU ended: the first crash, else the last word on it
    for entry in parsed:
        crashed = ending is not None and ending.suggests is VerdictKind.QEMU_CRASH
        if qemu is not None and isinstance(entry, HostLine) and entry.ident == QEMU_IDENT and entry.pid == qemu.pid:
            qemu_log = (qemu_log + [entry.message])[-QEMU_TAIL:]
            told = _qemu_says(vmid, qemu, entry)
            if told is not None and not crashed:
                ending = told
            continue
        if qemu is not None and isinstance(entry, HostLine) and entry.ident == "kernel" and not crashed:
            fault = _FAULT.match(entry.message) or _TRAP.match(entry.message)
            if fault and qemu.owns(int(fault["tid"])):
                ending = _qemu_fault(vmid, qemu, entry, fault)
                continue
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
    if ending is not None:
        items.append(replace(ending, details={**ending.details, "qemu_log": qemu_log}))
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


def _qemu_fault(vmid: int, qemu: QemuIds, entry: HostLine, fault: re.Match) -> Evidence:
    thread = "its main thread" if int(fault["tid"]) == qemu.pid else f"its thread {fault['comm']}"
    where = f" in {fault['obj']}" if fault["obj"] else ""
    return Evidence("host_kernel", VerdictKind.QEMU_CRASH, Confidence.HIGH,
                    f"VM {vmid}'s QEMU process (pid {qemu.pid}) died on the host: {fault['what']}{where} in "
                    f"{thread} -- a fault of the hypervisor process, not of the guest",
                    details={"node_time": entry.stamp, "pid": qemu.pid, "tid": int(fault["tid"]),
                             "comm": fault["comm"], "line": entry.message})


def _qemu_says(vmid: int, qemu: QemuIds, entry: HostLine) -> Evidence | None:
    """One of the ended QEMU's own messages, if it says how QEMU ended."""
    msg = entry.message
    if "Assertion `" in msg and msg.endswith("failed."):
        return Evidence("qemu", VerdictKind.QEMU_CRASH, Confidence.HIGH,
                        f"VM {vmid}'s QEMU process (pid {qemu.pid}) aborted on a failed assertion: a QEMU bug, "
                        "not a guest crash", details={"node_time": entry.stamp, "pid": qemu.pid, "line": msg})
    t = _TERMINATED.match(msg)
    if t is None:
        return None
    by = f"pid {t['pid']} ({t['cmd']})" if t["pid"] else "a signal from outside"
    details = {"node_time": entry.stamp, "pid": qemu.pid, "signal": int(t["sig"]), "line": msg}
    if t["cmd"] is not None and "qmeventd" in t["cmd"]:
        # qmeventd ends QEMU once the guest itself shut down (its SHUTDOWN event): no stop from outside
        return Evidence("qemu", None, Confidence.LOW, f"QEMU (pid {qemu.pid}) was ended by qmeventd after the "
                        "guest's shutdown", details=details)
    return Evidence("qemu", VerdictKind.HOST_STOP, Confidence.MEDIUM,
                    f"VM {vmid}'s QEMU process (pid {qemu.pid}) was terminated on the host by signal {t['sig']} "
                    f"from {by}", details=details)


def watchdog_action(value: str | None) -> tuple[str, str] | None:
    """PVE's ``watchdog: [model=]<model>[,action=<action>]`` as (model, action); QEMU's default
    action, used when PVE passes none, is ``reset``."""
    if not value:
        return None
    fields = dict(("model", part) if "=" not in part else part.split("=", 1) for part in str(value)[:256].split(","))
    return fields.get("model", "?"), fields.get("action", "reset")


def qemu_continuity(vmid: int, before: QemuIds | None, after: QemuIds | None, watchdog: str | None) -> Evidence | None:
    """The ended boot's QEMU still runs the new boot: the reset came from inside the VM (the guest's
    own restart, a panic that restarts -- ``panic=N`` --, a triple fault, or its watchdog device),
    so no host cause (OOM kill, QEMU crash, stop) applies.  Context only: which of those it was,
    the guest's records and journal tell."""
    if before is None or after is None or before != after:
        return None
    wd = watchdog_action(watchdog)
    tail = ""
    if wd is not None and wd[1] == "reset":
        tail = (f"; the VM has a watchdog device ({wd[0]}, action reset): if the guest arms it, a hung "
                "guest is reset this way")
    return Evidence("qemu", None, Confidence.LOW,
                    f"VM {vmid}'s QEMU process (pid {before.pid}) kept running: the boot was reset inside the VM "
                    f"(the guest's own restart, a panic with panic=N, a triple fault or a watchdog), not on the "
                    f"host{tail}", details={"pid": before.pid, "watchdog": watchdog or None})
