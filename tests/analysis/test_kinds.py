"""One test per crash kind, each on real kernel text from the shared corpora."""

from __future__ import annotations

import pytest

from pvepstore.analysis import CrashKind, extract_crashes

from .corpus import expected, needs_corpus, read

K = CrashKind


def first(relpath: str):
    crashes = extract_crashes(read(relpath))
    assert crashes, relpath
    return crashes[0]


def syz_files(title_prefix: str) -> list[str]:
    labels = expected("syzkaller")
    return sorted((k for k, v in labels.items() if (v["title"] or "").startswith(title_prefix)), key=int)


@needs_corpus
def test_panic_standalone():
    crash = first("abrt/examples/oops-without-addrs.test")
    assert crash.kind is K.PANIC and crash.panic_message == "sysrq triggered crash"
    assert crash.title == "kernel panic: sysrq triggered crash"


@needs_corpus
def test_panic_after_oops_is_attached_to_it():
    crash = first("syzkaller/input/" + syz_files("general protection fault in")[0])
    assert crash.kind is K.OOPS
    labels = expected("syzkaller")
    name = next(k for k in syz_files("general protection fault in") if labels[k]["panicked"])
    crash = first(f"syzkaller/input/{name}")
    assert crash.panicked and crash.kind is K.OOPS


@needs_corpus
@pytest.mark.parametrize("relpath,title", [
    ("clearlinux/oops_test_files/general_protection_fault.txt", "general protection fault in alloc_pipe_info"),
    ("clearlinux/oops_test_files/kernel_null_pointer.txt",
     "BUG: unable to handle kernel NULL pointer dereference in fat_detach"),
    ("clearlinux/oops_test_files/kernel_bug_at_DONE.txt", "kernel BUG in exit_mmap"),
    ("clearlinux/oops_test_files/double_fault.txt", None),
])
def test_oops(relpath, title):
    crash = first(relpath)
    assert crash.kind is K.OOPS
    if title:
        assert crash.title == title


@needs_corpus
def test_warning_and_its_fields():
    crash = first("clearlinux/oops_test_files/warning.txt")
    assert crash.kind is K.WARNING
    assert (crash.cpu, crash.pid, crash.comm) == (1, 796, "EMT")
    assert crash.taint == "GWOE" and crash.kernel == "4.2.0-rc2-satori"
    assert "vboxpci" in crash.modules


@needs_corpus
@pytest.mark.parametrize("prefix", ["BUG: sleeping function called from invalid context", "WARNING: refcount bug"])
def test_warning_like_bugs(prefix):
    for name in syz_files(prefix):
        assert first(f"syzkaller/input/{name}").kind is K.WARNING, name


@needs_corpus
def test_hang_soft_lockup_and_hung_task_panic():
    crash = first("clearlinux/oops_test_files/soft_lockup.txt")
    assert crash.kind is K.HANG and (crash.comm, crash.pid, crash.cpu) == ("ceph-osd", 12347, 8)
    crash = first("abrt/examples/oops-kernel-panic-hung-tasks-arm.test")
    assert crash.kind is K.HANG and crash.panic_message == "hung_task: blocked tasks" and crash.taint == "PO"
    assert crash.signature.startswith("kernel-(HANG)-")


@needs_corpus
@pytest.mark.parametrize("prefix", ["INFO: task hung in", "INFO: rcu detected stall in", "BUG: soft lockup in"])
def test_hang_kinds_from_syzkaller(prefix):
    names = syz_files(prefix)
    kinds = [c[0].kind for n in names if (c := extract_crashes(read(f"syzkaller/input/{n}")))]
    assert kinds.count(K.HANG) >= 0.95 * len(names)


@needs_corpus
def test_oom_panic():
    crash = first("abrt/examples/kernel_panic_oom.test")
    assert crash.kind is K.OOM and crash.panicked


@needs_corpus
def test_oom_killer_report():
    crashes = extract_crashes(read("syzkaller/input/334"))  # the corpus' only "invoked oom-killer" log
    assert any(c.kind is K.OOM for c in crashes)


@needs_corpus
@pytest.mark.parametrize("relpath,first_line", [
    ("abrt/examples/mce1.test", "CPU 0: Machine Check Exception: 0000000000000007"),
    ("abrt/examples/mce2.test", "mce: [Hardware Error]: Machine check events logged"),
])
def test_mce(relpath, first_line):
    crash = first(relpath)
    assert crash.kind is K.MCE and crash.first_line == first_line


@needs_corpus
@pytest.mark.parametrize("prefix", ["KASAN: use-after-free Read in", "KMSAN: uninit-value in", "UBSAN:",
                                    "KFENCE:"])
def test_memory_safety(prefix):
    for name in syz_files(prefix):
        crash = first(f"syzkaller/input/{name}")
        assert crash.kind is K.MEMORY_SAFETY, name


@needs_corpus
def test_lockdep():
    crash = first("abrt/examples/oops_recursive_locking1.test")
    assert crash.kind is K.LOCKDEP and crash.first_line == "[ INFO: possible recursive locking detected ]"
    kinds = [first(f"syzkaller/input/{n}").kind for n in syz_files("possible deadlock in")]
    assert kinds.count(K.LOCKDEP) >= 0.9 * len(kinds)


@needs_corpus
def test_leak():
    names = syz_files("memory leak in")
    found = [c for n in names if (c := extract_crashes(read(f"syzkaller/input/{n}")))]
    # One log carries the report only behind syz-manager's own "2018/01/09 14:28:48 " prefix.
    assert len(found) >= len(names) - 1
    assert all(crashes[0].kind is K.LEAK for crashes in found)


@needs_corpus
@pytest.mark.parametrize("relpath,first_line", [
    ("clearlinux/oops_test_files/irq.txt", "irq 11: nobody cared"),
    ("clearlinux/oops_test_files/RTNL.txt", "RTNL: assertion failed at drivers/net/bonding/bond_main.c"),
])
def test_other(relpath, first_line):
    crash = first(relpath)
    assert crash.kind is K.OTHER and crash.first_line.startswith(first_line)


@needs_corpus
def test_no_crash_logs_stay_quiet():
    labels = expected("syzkaller")
    quiet = [k for k, v in labels.items() if not v["title"]]
    alarms = [k for k in quiet if extract_crashes(read(f"syzkaller/input/{k}"))]
    assert len(alarms) <= 1, alarms  # 1: a "BUG UNIX" slab-debug line syzkaller ignores and we report
