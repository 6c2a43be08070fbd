"""The lines that start (or continue) a kernel crash report, and the kind each one means.

The patterns come from what kernels print (``lib/bug.c``, ``kernel/panic.c``,
``mm/kasan``, ``kernel/locking/lockdep.c``, ``kernel/hung_task.c``,
``kernel/watchdog.c``, ``mm/oom_kill.c``, ``arch/x86/kernel/cpu/mce``) and were
checked against the ABRT, satyr, Clear Linux and syzkaller corpora.  Order
matters: the first matching rule wins, so specific rules precede generic ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class CrashKind(str, Enum):
    """The closed vocabulary of crash kinds (issue #3)."""

    PANIC = "panic"
    OOPS = "oops"
    WARNING = "warning"
    HANG = "hang"
    OOM = "oom"
    MCE = "mce"
    MEMORY_SAFETY = "memory-safety"
    LOCKDEP = "lockdep"
    LEAK = "leak"
    OTHER = "other"


class Role(str, Enum):
    START = "start"  # begins a new crash
    CONTINUE = "continue"  # part of the crash already open (e.g. "Oops: 0000 [#1]" after "BUG: unable to handle")
    PANIC = "panic"  # "Kernel panic - not syncing": ends the crash it follows, or stands alone


@dataclass(frozen=True)
class Trigger:
    pattern: re.Pattern
    kind: CrashKind
    role: Role = Role.START


def _t(pattern: str, kind: CrashKind, role: Role = Role.START) -> Trigger:
    return Trigger(re.compile(pattern), kind, role)


K = CrashKind
# A "prefix" some kernels put before the message: "watchdog: ", "rcu: ", "Oops: " (x86 ≥ 6.9),
# "ALSA sound/core/pcm_lib.c:154: ", "mce: [Hardware Error]: ", "CPU 0: ".
TRIGGERS: tuple[Trigger, ...] = (
    _t(r"^\s*Kernel panic - not syncing: ?", K.PANIC, Role.PANIC),
    _t(r"^BUG: (?:KASAN|KFENCE|KMSAN|KCSAN):", K.MEMORY_SAFETY),
    _t(r"^UBSAN: ", K.MEMORY_SAFETY),
    _t(r"^BUG: memory leak", K.LEAK),
    _t(r"^unreferenced object 0x[0-9a-f]+ \(size \d+\):", K.LEAK),
    _t(r"^(?:NMI watchdog: |watchdog: )?BUG: soft lockup", K.HANG),
    _t(r"^(?:NMI watchdog: )?(?:watchdog: )?Watchdog detected hard LOCKUP", K.HANG),
    _t(r"^INFO: task .{1,100} (?:blocked (?:in I/O wait )?for more than \d+ seconds|can't die for more than)", K.HANG),
    _t(r"^(?:rcu: )?INFO: rcu_(?:preempt|sched|bh|tasks)(?: self)?[- ]detected(?: expedited)? stall", K.HANG),
    _t(r"^BUG: (?:spinlock lockup suspected|workqueue lockup)", K.HANG),
    _t(r"^(?:WARNING|INFO): (?:possible circular locking dependency|possible recursive locking|"
       r"inconsistent lock state|possible irq lock inversion|(?:(?!-safe -> ).)*-safe -> .*-unsafe lock order|"
       r"suspicious RCU usage|bad unlock balance|held lock freed|lock held when returning|"
       r".*still has locks held|Nested lock was not taken|trying to register non-static key)", K.LOCKDEP),
    _t(r"^\[ INFO: ", K.LOCKDEP),  # pre-4.x lockdep banners: "[ INFO: possible recursive locking detected ]"
    _t(r"^\[ BUG: (?:bad unlock balance|held lock freed|lock held when returning|.*still has locks held)",
       K.LOCKDEP),
    _t(r"^BUG: (?:bad unlock balance|held lock freed|lock held when returning|.*still has locks held|"
       r"MAX_LOCKDEP|MAX_STACK_TRACE_ENTRIES|looking up invalid subclass|Invalid wait context)", K.LOCKDEP),
    _t(r"^BUG: (?:sleeping function called from invalid context|scheduling while atomic|"
       r"using [a-z_]+\(\) in preemptible)", K.WARNING),
    _t(r"^(?:Oops: )?(?:BUG: (?:unable to handle|kernel NULL pointer|Unable to handle|Kernel NULL)|"
       r"Unable to handle kernel)", K.OOPS),
    _t(r"^(?:Oops: )?general protection fault", K.OOPS),
    _t(r"^(?:Oops: )?(?:invalid opcode|divide error|divide_error|stack segment|int3|double fault):", K.OOPS),
    _t(r"^PANIC: double fault", K.OOPS),
    _t(r"^\S*[Kk]ernel BUG", K.OOPS),
    _t(r"^(?:Internal error|Unhandled fault|Alignment trap):", K.OOPS),
    _t(r"^Oops(?:\[#\d+\])?: [0-9a-f]{4}(?: \[#\d+\])?", K.OOPS, Role.CONTINUE),
    _t(r"^(?:do_IRQ: stack overflow|.*near stack overflow \(cur:|Eeek! page_mapcount)", K.OOPS),
    _t(r"^\S.*: BUG: ", K.WARNING),  # ALSA's "sound/core/pcm_lib.c:154: BUG: ..." (printed with a WARN stack)
    _t(r"^BUG[: ]", K.OOPS),
    _t(r"^WARNING: (?:CPU: \d+ PID: \d+ at |at |\S+:\d+ |\[)", K.WARNING),
    _t(r"^WARNING: .* at \S+:\d+", K.WARNING),
    _t(r"^Badness at ", K.WARNING),
    _t(r"^(?:RTNL: assertion failed|IRQ handler type mismatch|sysctl table check failed)", K.OTHER),
    _t(r"^irq \d+: nobody cared", K.OTHER),
    _t(r"^NETDEV WATCHDOG: ", K.WARNING, Role.CONTINUE),
    _t(r"^(?:list_del|list_add) corruption", K.OOPS, Role.CONTINUE),
    _t(r"^refcount_t: ", K.WARNING, Role.CONTINUE),
    _t(r"^\S.* invoked oom-killer:", K.OOM),
    _t(r"^(?:Out of memory|Memory cgroup out of memory): ", K.OOM, Role.CONTINUE),
    _t(r"^(?:CPU \d+: )?Machine Check Exception:", K.MCE),
    _t(r"^(?:mce: )?\[Hardware Error\]: Machine check events logged", K.MCE),
    _t(r"^(?:mce: )?\[Hardware Error\]: CPU \d+: Machine Check", K.MCE),
    _t(r"^unregister_netdevice: waiting for .* to become free", K.OTHER),
    _t(r"^VFS: (?:Busy inodes after unmount|Close: file count is 0)", K.OTHER),
)

# One pass that rules out the common case (no trigger on this line) before the ordered
# per-rule loop below: the sweep analyses every line of every record.
ANY_TRIGGER = re.compile("|".join(f"(?:{t.pattern.pattern})" for t in TRIGGERS))

# Lines that announce the crash that follows (kept in its text, never a crash of their own).
PRELUDE = re.compile(r"^-+\[ cut here \]-+$|^=+$|^-{10,}$")

# Lines that look like triggers but are not kernel crashes.
IGNORED = re.compile(
    r"^BUG: no syscalls can create resource|^ODEBUG:|DEBUG:|^WARNING: (?:/etc/ssh|workqueue cpumask|"
    r"[Tt]he mand mount option|Unprivileged eBPF|See https|kernel not compiled with CPU_SRSO)|"
    r"^general protection fault .* error:\d+ in "  # a user-space GPF, not a kernel one
)


def match_trigger(text: str) -> Trigger | None:
    """The first rule that matches a bare message line, or None."""
    stripped = text.strip()
    if not stripped or not ANY_TRIGGER.search(stripped) or IGNORED.search(stripped):
        return None
    for trig in TRIGGERS:
        if trig.pattern.search(stripped):
            return trig
    return None


# What the message of a "Kernel panic - not syncing:" says about its cause.
_PANIC_CAUSES = (
    (re.compile(r"hung_task|softlockup|soft lockup|hard LOCKUP|hardlockup|rcu.*stall", re.I), K.HANG),
    (re.compile(r"Out of memory|System is deadlocked on memory|panic_on_oom", re.I), K.OOM),
    (re.compile(r"Machine check|MCE", re.I), K.MCE),
    (re.compile(r"stack-protector|corrupted stack end|kernel stack overflow", re.I), K.MEMORY_SAFETY),
)


def panic_cause(message: str) -> CrashKind:
    for pattern, kind in _PANIC_CAUSES:
        if pattern.search(message):
            return kind
    return K.PANIC
