"""The node's journal as evidence: a real kernel's OOM kill of a process named kvm in VM 101's scope."""

from __future__ import annotations

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
