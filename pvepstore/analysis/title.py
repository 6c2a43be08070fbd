"""One-line crash titles in syzbot's convention (``WARNING in tcp_recvmsg``).

syzbot names a crash by its header and the "guilty" function: the first frame
of the relevant stack that is not generic plumbing (allocators, locking,
printk, string helpers, the warning/panic machinery).  The table below maps
headers to title formats and says which stack holds the guilty frame; it was
written from the titles in syzkaller's test corpus (``pkg/report/testdata``),
not copied from its code, and covers the common report types only.  The candidate
frames and the frames skipped are :mod:`.titleframes`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from .limits import MAX_HEADER
from .logline import LogLine
from .titleframes import (_FUNC, _PC, _call_trace, _strip_prefix, _usable, candidates_at, candidates_header,
                          candidates_rip_trace, candidates_stack_after, candidates_stall, candidates_warning,
                          first_after, pick_hung, pick_stall)

if TYPE_CHECKING:  # the type only: crash.py calls make_title
    from .crash import Crash

@dataclass(frozen=True)
class TitleRule:
    header: re.Pattern
    fmt: str  # "{0}" etc. are header groups, "{func}" the guilty frame
    candidates: Callable[[Sequence[str], re.Match], list[str]] | None = None
    skip: re.Pattern | None = None
    pick: Callable[[list[str]], str | None] | None = None
    noskip: bool = False  # the function is quoted from the report itself, used as is
    sanitize: bool = False  # free text from the header: addresses and numbers become ADDR/NUM


def _r(header: str, fmt: str, candidates=None, skip: str | None = None, pick=None, noskip=False,
       sanitize=False) -> TitleRule:
    return TitleRule(re.compile(header), fmt, candidates, re.compile(skip) if skip else None, pick, noskip,
                     sanitize)


def _quoted(anchor: str, func: str = rf"at: (?:{_PC} +)?{_FUNC}"):
    a, f = re.compile(anchor), re.compile(func)
    return lambda lines, m: first_after(lines, a, f)


_rip = lambda lines, m: candidates_rip_trace(lines)  # noqa: E731
_warn = lambda lines, m: candidates_warning(lines)  # noqa: E731
_trace = lambda lines, m: _call_trace(lines)  # noqa: E731
_at = lambda lines, m: candidates_at(lines)  # noqa: E731
_in_header = lambda lines, m: candidates_header(lines, re.compile(r" in " + _FUNC))  # noqa: E731

RULES: tuple[TitleRule, ...] = (
    _r(r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free)", "KASAN: invalid-free in {func}",
       _in_header, r"slab_|kfree|vunmap|vfree"),
    _r(r"BUG: KASAN: ([a-z\-]+) in ", "KASAN: {0} {access} in {func}", _in_header,
       r"kernel_fault|tag_check|mem_abort|^el1_|^el1h_"),
    _r(r"BUG: KASAN: ([a-z\-]+) on address", "KASAN: {0} {access}"),
    _r(r"BUG: KASAN: (.*)", "KASAN: {0}", sanitize=True),
    _r(r"BUG: KFENCE: (use-after-free|out-of-bounds) (read|write) in ", "KFENCE: {0} {1} in {func}", _in_header),
    _r(r"BUG: KFENCE: invalid free in ", "KFENCE: invalid free in {func}", _in_header),
    _r(r"BUG: KFENCE: invalid (read|write) in ", "KFENCE: invalid {0} in {func}", _in_header),
    _r(r"BUG: KFENCE: memory corruption in ", "KFENCE: memory corruption in {func}", _in_header),
    _r(r"BUG: KMSAN: kernel-usb-infoleak", "KMSAN: kernel-usb-infoleak in {func}", _in_header),
    _r(r"BUG: KMSAN: ([a-z\-]+) in ", "KMSAN: {0} in {func}", _in_header,
       r"alloc_skb|netlink_ack|netlink_rcv_skb|_encrypt$|^(?:crypto|cipher|drbg|rng)_"),
    _r(r"BUG: KCSAN: (.*)", "KCSAN: {0}"),
    _r(r"(?:BUG: (?:unable to handle kernel paging request|unable to handle page fault for address|"
       r"Unable to handle kernel data access)|Unable to handle kernel paging request)",
       "BUG: unable to handle kernel paging request in {func}", _rip),
    _r(r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference|"
       r"Kernel NULL pointer dereference)|Unable to handle kernel NULL pointer dereference",
       "BUG: unable to handle kernel NULL pointer dereference in {func}", _rip),
    _r(r"Unable to handle kernel access to user memory", "BUG: unable to handle kernel access to user memory in {func}",
       _rip),
    _r(r"BUG: (?:unable to handle kernel|Unable to handle kernel)", "BUG: unable to handle kernel"),
    _r(r"BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|cpu recursion|bad magic|"
       r"wrong owner|wrong CPU)", "BUG: {0} {1} in {func}", _trace, r"spin_|_lock|_unlock"),
    _r(r"BUG: soft lockup", "BUG: soft lockup in {func}", _rip, None, pick_stall),
    _r(r"BUG: scheduling while atomic", "BUG: scheduling while atomic in {func}", _trace, r"schedule"),
    _r(r"BUG: bad unlock balance detected", "BUG: bad unlock balance in {func}", _rip),
    _r(r"BUG: Bad rss-counter state", "BUG: Bad rss-counter state"),
    _r(r"BUG: Bad page (state|cache)", "BUG: Bad page {0} in {func}",
       lambda lines, m: candidates_stack_after(lines, re.compile(r"page last allocated")),
       r"(?:free|put|get|update|release)_page|free_unref|^_*folio|truncate_inode_pages|page_frag_free|"
       r"alloc|vmap|page_owner"),
    _r(r"BUG: Bad page map", "BUG: Bad page map"),
    _r(r"BUG: workqueue lockup", "BUG: workqueue lockup"),
    _r(r"BUG: sleeping function called from invalid context", "BUG: sleeping function called from invalid context in {func}",
       _trace),
    _r(r"BUG: using ([a-z_]+)\(\) in preemptible", "BUG: using {0}() in preemptible code in {func}", _trace,
       r"dump_stack|preemption|preempt|debug_|processor_id|this_cpu"),
    _r(r"BUG: memory leak", "memory leak in {func}",
       lambda lines, m: candidates_stack_after(lines, re.compile(r"backtrace(?: \(crc [0-9a-f]*\))?:")),
       r"kmemleak|mmap|kmem|slab|alloc|create_object|idr_get|list_lru_init|kasprintf|kvasprintf|"
       r"pcpu_create|strdup|strndup|memdup"),
    _r(r"unreferenced object", "memory leak in {func}",
       lambda lines, m: candidates_stack_after(lines, re.compile(r"backtrace(?: \(crc [0-9a-f]*\))?:")),
       r"kmemleak|mmap|kmem|slab|alloc|create_object|idr_get|list_lru_init|kasprintf|kvasprintf|"
       r"pcpu_create|strdup|strndup|memdup"),
    _r(r"BUG: .*stack guard page was hit at", "BUG: stack guard page was hit in {func}", _rip, None, pick_stall),
    _r(r"BUG: Invalid wait context", "WARNING: locking bug in {func}", _trace, r"lock_sock|release_sock"),
    _r(r"BUG: held lock freed", "BUG: held lock freed in {func}", _quoted(r"held lock freed", rf"{_PC} +{_FUNC}"),
       noskip=True),
    _r(r"BUG: .*still has locks held", "BUG: still has locks held in {func}",
       _quoted(r"still has locks held", rf"{_PC} +{_FUNC}"), noskip=True),
    _r(r"BUG: lock held when returning to user space", "BUG: lock held when returning to user space in {func}",
       _quoted(r"leaving the kernel with locks still held"), noskip=True),
    _r(r"BUG: workqueue leaked lock or atomic", "BUG: workqueue leaked lock or atomic in {func}",
       _quoted(r"workqueue leaked", r"last function: ([a-zA-Z0-9_]+)"), noskip=True),
    _r(r"BUG: Dentry .* still in use \([0-9]+\) \[(unmount) of", "BUG: Dentry still in use in {0}"),
    _r(r"WARNING: .*lib/debugobjects\.c.* (?:debug_print|debug_check|at)", "WARNING: ODEBUG bug in {func}", _warn,
       r"debug_|rcu|hrtimer_|timer_|work_|percpu_|vunmap|vfree|__free_|debug_check|kobject_"),
    _r(r"WARNING: .*mm/usercopy\.c.* (?:usercopy_warn|at)", "WARNING: bad usercopy in {func}", _warn,
       r"usercopy|__check"),
    _r(r"WARNING: .*lib/kobject\.c.* (?:kobject_|at)", "WARNING: kobject bug in {func}", _warn, r"kobject_"),
    _r(r"WARNING: .*fs/proc/generic\.c.* (?:proc_register|at)", "WARNING: proc registration bug in {func}", _warn,
       r"proc_"),
    _r(r"WARNING: .*lib/refcount\.c.* (?:refcount_|at)", "WARNING: refcount bug in {func}", _warn,
       r"refcount|kobject_"),
    _r(r"WARNING: .*kernel/locking/lockdep\.c.*lock_", "WARNING: locking bug in {func}", _warn,
       r"lock_sock|release_sock"),
    _r(r"WARNING: Nested lock was not taken", "WARNING: nested lock was not taken in {func}", _warn),
    _r(r"WARNING: .*mm/.*\.c.* k?.?malloc", "WARNING: kmalloc bug in {func}", _warn, r"kmalloc|krealloc|slab|kmem"),
    _r(r"WARNING: .*mm/vmalloc.c.*__vmalloc_node", "WARNING: zero-size vmalloc in {func}", _warn),
    _r(r"WARNING: .* usb_submit_urb", "WARNING in {func}/usb_submit_urb", _warn,
       r"usb_submit_urb|usb_start_wait_urb|usb_bulk_msg|usb_interrupt_msg|usb_control_msg"),
    _r(r"WARNING: possible circular locking dependency detected", "possible deadlock in {func}", _at,
       r"process_one_work|flush_workqueue|drain_workqueue|destroy_workqueue"),
    _r(r"(?:WARNING|INFO): possible recursive locking detected|\[ INFO: possible recursive locking detected",
       "possible deadlock in {func}", _quoted(r"is trying to acquire lock"), noskip=True),
    _r(r"(?:WARNING|INFO): possible irq lock inversion dependency detected|\[ INFO: possible irq lock inversion",
       "possible deadlock in {func}", _quoted(r"just changed the state of lock"), noskip=True),
    _r(r"INFO: possible circular locking dependency detected|\[ INFO: possible circular locking",
       "possible deadlock in {func}", _quoted(r"is trying to acquire lock"), noskip=True),
    _r(r"\[ INFO: inconsistent lock state|^INFO: inconsistent lock state", "inconsistent lock state in {func}",
       _quoted(r"takes"), noskip=True),
    _r(r"(?:WARNING|INFO): .*-safe -> .*-unsafe lock order detected", "possible deadlock in {func}",
       lambda lines, m: candidates_stack_after(lines, re.compile(r"which became (?:.*) at:"))),
    _r(r"(?:WARNING|INFO): inconsistent lock state|\[ INFO: inconsistent lock state", "inconsistent lock state in {func}",
       _trace),
    _r(r"(WARNING|INFO): suspicious RCU usage|\[ (INFO): suspicious RCU usage", "{0}: suspicious RCU usage in {func}",
       _trace, r"rcu|kmem|slab"),
    _r(r"WARNING: bad unlock balance detected", "WARNING: bad unlock balance in {func}", _rip),
    _r(r"WARNING: held lock freed", "WARNING: held lock freed in {func}",
       _quoted(r"held lock freed", rf"at:(?: {_PC})? +{_FUNC}"), noskip=True),
    _r(r"WARNING: .*still has locks held", "WARNING: still has locks held in {func}",
       _quoted(r"still has locks held", rf"at: {_FUNC}"), noskip=True),
    _r(r"WARNING: lock held when returning to user space", "WARNING: lock held when returning to user space in {func}",
       _quoted(r"leaving the kernel with locks still held"), noskip=True),
    _r(r"WARNING: kernel stack regs at [0-9a-f]+ in [^ ]* has bad '([^']+)' value",
       "WARNING: kernel stack regs has bad '{0}' value"),
    _r(r"WARNING: kernel stack frame pointer at [0-9a-f]+ in [^ ]* has bad value",
       "WARNING: kernel stack frame pointer has bad value"),
    _r(r"WARNING: .*(?: at | )\S+:\d+", "WARNING in {func}", _warn),
    _r(r"WARNING: ", "WARNING in {func}", _warn),
    _r(r"Badness at ", "WARNING in {func}", _warn),
    _r(r"INFO: rcu_(?:preempt|sched|bh|tasks) (?:self-)?detected(?: expedited)? stall",
       "INFO: rcu detected stall in {func}",
       lambda lines, m: candidates_stall(lines),
       r"apic_timer_interrupt|rcu", pick_stall),
    _r(r"INFO: trying to register non-static key", "INFO: trying to register non-static key in {func}", _trace,
       r"stack|lock|IRQ"),
    _r(r"INFO: task .{0,100}? blocked (?:in I/O wait )?for more than \d+ seconds", "INFO: task hung in {func}",
       _trace, None, pick_hung),
    _r(r"INFO: task .{0,100}? can't die for more than", "INFO: task can't die in {func}", _trace, r"schedule"),
    _r(r"Watchdog detected hard LOCKUP", "BUG: hard lockup in {func}", _rip, None, pick_stall),
    _r(r"general protection fault", "general protection fault in {func}", _rip),
    _r(r"stack segment: ", "stack segment fault in {func}", _rip),
    _r(r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: " + _FUNC,
       "kernel panic: stack is corrupted in {0}"),
    _r(r"Kernel panic - not syncing: corrupted stack end", "kernel panic: corrupted stack end in {func}", _trace,
       r"schedule|retint_kernel", pick_stall),
    _r(r"Kernel panic - not syncing: kernel stack overflow", "kernel stack overflow in {func}", _trace, r"bad_stack",
       pick_stall),
    _r(r"Kernel panic - not syncing: Attempted to kill init!", "kernel panic: Attempted to kill init!"),
    _r(r"Kernel panic - not syncing: Couldn't open N_TTY ldisc", "kernel panic: Couldn't open N_TTY ldisc"),
    _r(r"Kernel panic - not syncing: Fatal exception", "kernel panic: Fatal exception"),
    _r(r"Kernel panic - not syncing: panic_on_warn set", "kernel panic: panic_on_warn set"),
    _r(r"Kernel panic - not syncing: hung_task: blocked tasks", "kernel panic: hung_task: blocked tasks"),
    _r(r"Kernel panic - not syncing: (.*)", "kernel panic: {0}", sanitize=True),
    _r(r"PANIC: double fault", "PANIC: double fault in {func}", _rip),
    _r(r"kernel BUG at mm/usercopy.c", "BUG: bad usercopy in {func}", _trace, r"usercopy|__check"),
    _r(r"kernel BUG at lib/list_debug.c", "BUG: corrupted list in {func}", _trace),
    _r(r"kernel BUG at ", "kernel BUG in {func}", _rip, r"^skb_"),
    _r(r"Kernel BUG (.*)", "kernel BUG {0}"),
    _r(r"BUG kmalloc-.*: Object already free", "BUG: Object already free"),
    _r(r"(?:divide error|divide_error): ", "divide error in {func}", _rip),
    _r(r"invalid opcode: ", "invalid opcode in {func}", _rip),
    _r(r"double fault: ", "double fault in {func}", _rip),
    _r(r"int3: ", "int3 in {func}", _rip),
    _r(r"UBSAN: Undefined behaviour in", "UBSAN: undefined-behaviour in {func}", _trace, r"ubsan|overflow"),
    _r(r"UBSAN: array-index-out-of-bounds in", "UBSAN: array-index-out-of-bounds in {func}", _trace,
       r"ubsan|overflow"),
    _r(r"UBSAN: (.*?) in", "UBSAN: {0} in {func}", _trace, r"ubsan|overflow"),
    _r(r"unregister_netdevice: waiting for .* to become free", "unregister_netdevice: waiting for DEV to become free"),
    _r(r"VFS: Close: file count is 0", "VFS: Close: file count is zero (use-after-free)"),
    _r(r"VFS: Busy inodes after unmount", "VFS: Busy inodes after unmount (use-after-free)"),
    _r(r"Internal error:", "Internal error in {func}", _rip),
    _r(r"Unhandled fault:", "Unhandled fault in {func}", _rip),
    _r(r"Alignment trap:", "Alignment trap in {func}", _rip),
    _r(r" invoked oom-killer:", "out of memory in {func}", _trace,
       r"oom|out_of_memory|alloc|mem_cgroup|try_charge|charge_memcg|show_mem|dump_header|pagefault"),
    _r(r"(?:Machine Check Exception|Machine check events logged|\[Hardware Error\])", "machine check exception"),
)


def sanitize(text: str) -> str:
    """syzbot's title normalisation: variable addresses and numbers are replaced."""
    text = re.sub(r"\b(?:0x)?[0-9a-f]{8,}\b", "ADDR", text)
    text = re.sub(r"\b\d+\b", "NUM", text)
    return text.rstrip(" .")


def _access(lines: Sequence[str]) -> str:
    for text in lines[:20]:
        m = re.search(r"(Read|Write) (?:of size|at addr)", text)
        if m:
            return m.group(1)
    return ""


def _titled(lines: list[str], rip: str | None = None) -> str | None:
    for rule in RULES:
        m = rule.header.search(lines[0])
        if not m:
            continue
        groups = [g for g in m.groups() if g is not None]
        func = ""
        if "{func}" in rule.fmt:
            names = [n for n in (rule.candidates(lines, m) if rule.candidates else [])
                     if n and (rule.noskip or _usable(n, rule.skip))]
            names = [_strip_prefix(n) for n in names]
            if not names and rip and rule.candidates in (_rip, _warn):
                names = [_strip_prefix(rip)] if _usable(rip, rule.skip) else []
            # A stall picker that finds no dispatch point still has a better
            # name for a human than syzbot's "corrupted": the top usable frame.
            func = (rule.pick(names) if rule.pick else None) or (names[0] if names else "corrupted")
        if rule.sanitize:
            groups = [sanitize(g) for g in groups]
        return rule.fmt.format(*groups, func=func, access=_access(lines))
    return None


def make_title(crash: Crash) -> str:
    """The syzbot-style title of ``crash``; its first line when no rule knows the header."""
    lines = [line.text.strip() if i == 0 else line.text for i, line in enumerate(_from_trigger(crash.lines, crash))]
    if crash.kind.value == "panic" and crash.panic_message is not None and crash.first_line.lstrip().startswith(
            "Kernel panic"):
        lines[0] = crash.first_line.strip()
    # The header is searched by every rule below, some of them ".*X.*Y" patterns: one printk
    # record's worth of it is enough and keeps that search cheap (see .limits).
    lines[0] = lines[0][:MAX_HEADER]
    lines[0] = re.sub(r"^(?:Oops: |watchdog: |NMI watchdog: |rcu: |mce: |CPU \d+: |\[ (?=BUG: ))", "", lines[0])
    rip = crash.rip.function.split(".", 1)[0] if crash.rip and crash.rip.function else None
    title = _titled(lines, rip) or crash.first_line.strip()
    return re.sub(r"\s+", " ", title).strip()


def _from_trigger(lines: list[LogLine], crash: Crash) -> list[LogLine]:
    """The crash's lines starting at its trigger (skipping a ``cut here`` prelude)."""
    for i, line in enumerate(lines):
        if line.text.lstrip(" ") == crash.first_line:
            return lines[i:]
    return lines
