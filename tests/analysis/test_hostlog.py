"""The node's journal as evidence: a real kernel's OOM kill of a process named kvm in VM 101's scope."""

from __future__ import annotations

import pytest

from pvepstore.analysis.evidence import Confidence, Evidence, VerdictKind
from pvepstore.analysis.hostlog import MAX_LINE, host_evidence, oom_summary, parse_lines
from pvepstore.analysis.verdict import decide
from tests.fakepve.hostlog import JournalEntry, _line, real_oom_messages

MESSAGES = real_oom_messages()


def journal(messages, *, at=1_764_745_000, boot="b0") -> list[str]:
    """As mini-journalreader prints them (cursor first and last)."""
    return ["s=x;i=1"] + [_line(JournalEntry(at, m, boot=boot)) for m in messages] + ["s=x;i=2"]


def global_oom(messages) -> list[str]:
    """The same kill when the whole node is out of memory (mm/oom_kill.c's other message)."""
    return [m.replace("constraint=CONSTRAINT_MEMCG", "constraint=CONSTRAINT_NONE")
             .replace("oom_memcg=/qemu.slice/101.scope,", "global_oom,")
             .replace("Memory cgroup out of memory:", "Out of memory:") for m in messages]


def test_a_real_memcg_oom_kill_of_vm_101s_qemu():
    (ev,) = host_evidence(journal(MESSAGES), 101)
    assert (ev.suggests, ev.confidence, ev.source) == (VerdictKind.HOST_OOM_KILL, Confidence.HIGH, "host_kernel")
    assert ev.details["pid"] == 29331 and ev.details["constraint"] == "CONSTRAINT_MEMCG"
    assert ev.details["memcg"] == "/qemu.slice/101.scope"
    assert "pid 29331, 62 MiB resident" in ev.summary and "memory limit" in ev.summary
    assert host_evidence(journal(MESSAGES), 102) == []  # another VM's scope: not this VM's cause


def test_the_node_out_of_memory():
    (ev,) = host_evidence(journal(global_oom(MESSAGES)), 101)
    assert ev.details["constraint"] == "CONSTRAINT_NONE" and "the node ran out of memory" in ev.summary


def test_a_summary_without_its_kill_line_still_names_the_victim():
    summary = [m for m in MESSAGES if m.startswith("oom-kill:")]
    (ev,) = host_evidence(journal(summary), 101)
    assert ev.suggests is VerdictKind.HOST_OOM_KILL and ev.details["pid"] == 29331


def test_a_kill_line_alone_is_not_attributed():
    killed = [m for m in MESSAGES if "Killed process" in m]
    assert host_evidence(journal(killed), 101) == []  # no memcg: the pid alone could be anyone's


def test_a_node_reboot_inside_the_window():
    lines = journal(["Linux version 6.8.12-4-pve"], boot="b0")[:-1] + ["-- Reboot --"] + \
        journal(["Linux version 6.8.12-4-pve"], boot="b1")[1:]
    (ev,) = host_evidence(lines, 101)
    assert ev.suggests is VerdictKind.NODE_REBOOT and ev.details == {"node_reboots": 1}


def test_the_host_oom_kill_outranks_an_unexplained_reset():
    reset = Evidence("boot_history", VerdictKind.UNEXPECTED_RESET, Confidence.MEDIUM, "no orderly shutdown")
    v = decide([reset, *host_evidence(journal(MESSAGES), 101)])
    assert v.kind is VerdictKind.HOST_OOM_KILL and v.severity == "error"
    assert v.also == (VerdictKind.UNEXPECTED_RESET,)


def test_junk_is_ignored_and_lines_are_bounded():
    assert parse_lines(["s=cursor", "", "no prefix here", 7, "Dec 03 07:44:12 pve kernel"]) == []
    assert oom_summary("oom-kill:task_memcg=/qemu.slice/101.scope,task=kvm,pid=x") is None
    long = "oom-kill:" + "task_memcg=/qemu.slice/101.scope," * 5000 + "task=kvm,pid=1,uid=0"
    (entry,) = parse_lines([_line(JournalEntry(0, long))])
    assert len(entry.message) < MAX_LINE  # cut before parsing: the pid past the cut is not seen
    assert host_evidence([_line(JournalEntry(0, long))], 101) == []


# pve-ha-manager's CRM (src/PVE/HA/Manager.pm, recover_service_from_fence): $haenv->log('info', $msg)
RECOVER = "recover service 'vm:{vmid}' from fenced node 'pve2' to node 'pve1'"
RECOVER_AGAIN = "recover service 'vm:{vmid}' to previous failed and fenced node 'pve2' again"


def crm(messages, *, at=1_764_745_000) -> list[str]:
    return ["s=x;i=1"] + [_line(JournalEntry(at, m, ident="pve-ha-crm", pid=1234)) for m in messages] + ["s=x;i=2"]


def test_ha_recovery_after_a_fence():
    (ev,) = host_evidence(crm([RECOVER.format(vmid=101)]), 101)
    assert (ev.suggests, ev.confidence, ev.source) == (VerdictKind.HA_RECOVERY, Confidence.HIGH, "ha_manager")
    assert (ev.details["fenced"], ev.details["to"]) == ("pve2", "pve1") and "its node failed" in ev.summary
    (ev,) = host_evidence(crm([RECOVER_AGAIN.format(vmid=101)]), 101)
    assert (ev.details["fenced"], ev.details["to"]) == ("pve2", "pve2")
    assert host_evidence(crm([RECOVER.format(vmid=1011)]), 101) == []  # another service
    # the same words from another program, or as a kernel line, are not HA's
    assert host_evidence(journal([RECOVER.format(vmid=101)]), 101) == []
    # the verdict: the node failed, the guest did not crash (beats the reset it looks like)
    unexpected = Evidence("boot_history", VerdictKind.UNEXPECTED_RESET, Confidence.MEDIUM, "no orderly shutdown")
    v = decide([unexpected, *host_evidence(crm([RECOVER.format(vmid=101)]), 101)])
    assert (v.kind, v.severity) == (VerdictKind.HA_RECOVERY, "error")


# -- the VM's QEMU itself dying: real fault lines (tests/fixtures/hostlog/qemu-faults-6.18.dmesg) ----------
from pvepstore.analysis.hostlog import QemuIds, qemu_continuity, watchdog_action  # noqa: E402
from tests.fakepve.hostlog import real_fault_lines, with_tid  # noqa: E402

FAULTS = real_fault_lines()
# the captures' own ids: main thread 11623; the vcpu run was process 11625 with its vCPU thread 11626
MAIN, VCPU_RUN = QemuIds(11623), QemuIds(11625, (11626,))


def qemu_said(messages, pid, *, at=1_764_745_000) -> list[str]:
    return [_line(JournalEntry(at, m, ident="QEMU", pid=pid)) for m in messages]


@pytest.mark.parametrize("fault,ids,what", [("main", MAIN, "segfault"), ("vcpu", VCPU_RUN, "segfault"),
                                            ("gp", QemuIds(11627), "general protection fault"),
                                            ("ud2", QemuIds(11629), "trap invalid opcode")])
def test_a_real_fault_of_the_vms_qemu(fault, ids, what):
    (ev,) = host_evidence(journal([FAULTS[fault]]), 101, ids)
    assert (ev.suggests, ev.confidence, ev.source) == (VerdictKind.QEMU_CRASH, Confidence.HIGH, "host_kernel")
    assert what in ev.summary and f"pid {ids.pid}" in ev.summary and " in kvm " in ev.summary
    thread = "CPU 0/KVM" if fault == "vcpu" else "main thread"
    assert thread in ev.summary and ev.details["tid"] == (11626 if fault == "vcpu" else ids.pid)


def test_a_fault_is_matched_by_the_recorded_ids_never_by_the_name_kvm():
    # every VM's QEMU is a "kvm": another VM's fault, or one pvepstore never saw the ids of, is not this VM's
    assert host_evidence(journal([FAULTS["vcpu"]]), 101, QemuIds(11625)) == []  # thread not recorded
    assert host_evidence(journal([FAULTS["main"]]), 101, QemuIds(4242, (4243,))) == []
    assert host_evidence(journal([FAULTS["main"]]), 101, None) == []
    (ev,) = host_evidence(journal([with_tid(FAULTS["vcpu"], 4243)]), 101, QemuIds(4242, (4243,)))
    assert ev.suggests is VerdictKind.QEMU_CRASH


def test_qemus_own_assertion_failure_in_the_journal():
    ids = QemuIds(11631)
    lines = ["s=x;i=1", *qemu_said(["kvm: warning: host doesn't support requested feature", FAULTS["assert"]], 11631)]
    (ev,) = host_evidence(lines, 101, ids)
    assert (ev.suggests, ev.source) == (VerdictKind.QEMU_CRASH, "qemu") and "assertion" in ev.summary
    assert ev.details["qemu_log"][-1] == FAULTS["assert"] and len(ev.details["qemu_log"]) == 2
    assert host_evidence(lines, 101, QemuIds(999)) == []  # another process's stderr


def test_who_terminated_qemu():
    # qemu_kill_report (system/runstate.c): "terminating on signal %d from pid %d (%s)"
    admin = qemu_said(["kvm: terminating on signal 15 from pid 5150 (-bash)"], 4242)
    (ev,) = host_evidence(admin, 101, QemuIds(4242))
    assert (ev.suggests, ev.confidence) == (VerdictKind.HOST_STOP, Confidence.MEDIUM)
    assert "pid 5150 (-bash)" in ev.summary and ev.details["signal"] == 15
    after_shutdown = qemu_said(["kvm: terminating on signal 15 from pid 1796 (/usr/sbin/qmeventd)"], 4242)
    (ev,) = host_evidence(after_shutdown, 101, QemuIds(4242))
    assert ev.suggests is None and "qmeventd" in ev.summary  # qmeventd ends QEMU after the guest's own shutdown


def test_a_crash_is_not_overwritten_by_later_words():
    lines = qemu_said([FAULTS["assert"], "kvm: terminating on signal 15 from pid 5150 (-bash)"], 11631)
    (ev,) = host_evidence(lines, 101, QemuIds(11631))
    assert ev.suggests is VerdictKind.QEMU_CRASH


def test_a_qemu_crash_outranks_an_unexplained_reset():
    reset = Evidence("boot_history", VerdictKind.UNEXPECTED_RESET, Confidence.MEDIUM, "no orderly shutdown")
    v = decide([reset, *host_evidence(journal([FAULTS["vcpu"]]), 101, VCPU_RUN)])
    assert (v.kind, v.severity) == (VerdictKind.QEMU_CRASH, "error")


def test_the_same_qemu_kept_running():
    ids = QemuIds(4242, (4243,))
    ev = qemu_continuity(101, ids, ids, "model=i6300esb,action=reset")
    assert ev.suggests is None and "kept running" in ev.summary and "watchdog device (i6300esb" in ev.summary
    assert "watchdog device" not in qemu_continuity(101, ids, ids, "i6300esb,action=pause").summary
    assert qemu_continuity(101, ids, QemuIds(5000), None) is None  # a new QEMU: the old one ended on the host
    assert qemu_continuity(101, None, ids, None) is None
    assert watchdog_action("ib700") == ("ib700", "reset") and watchdog_action(None) is None
