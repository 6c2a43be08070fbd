"""One-line crash titles in syzbot's convention (``WARNING in tcp_recvmsg``).

syzbot names a crash by its header and the "guilty" function: the first frame
of the relevant stack that is not generic plumbing (allocators, locking,
printk, string helpers, the warning/panic machinery).  The table below maps
headers to title formats and says which stack holds the guilty frame; it was
written from the titles in syzkaller's test corpus (``pkg/report/testdata``),
not copied from its code, and covers the common report types only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from .crash import Crash
from .limits import MAX_HEADER
from .logline import LogLine

# Frame names that never identify a bug (syzbot convention): searched, not anchored.
_SKIP = re.compile("|".join([
    r"__sanitizer", r"__asan", r"kasan", r"hwasan", r"__msan", r"kmsan", r"kcsan_setup_watchpoint",
    r"check_memory_region", r"check_heap_object", r"check_object", r"read_word_at_a_time",
    r"print_address_description", r"panic", r"invalid_op", r"report_bug", r"fixup_bug", r"print_report",
    r"print_usage_bug", r"do_error", r"_trap$|do_trap", r"show_stack", r"dump_stack", r"walk_stack",
    r"dump_backtrace", r"warn_slowpath", r"warn_alloc", r"warn_bogus", r"__warn", r"alloc_page",
    r"k?v?(?:m|z|c)alloc", r"krealloc", r"kmem_cache", r"allocate_slab", r"folio_(?:alloc|unlock)",
    r"filemap_alloc_folio", r"__filemap_get_folio", r"find_or_create_page", r"read_cache_page",
    r"pagecache_get_page", r"grab_cache_page_write_begin", r"slab_", r"debug_object", r"__might_fault",
    r"print_unlock", r"imbalance_bug", r"lockdep", r"bh_enable", r"bh_disable", r"perf_trace",
    r"lock_acquire", r"lock_release", r"lock_class", r"mark_lock", r"(?:reacquire|mark)_held_locks",
    r"raw_spin_rq", r"spin_lock", r"spin_trylock", r"spin_unlock", r"read_lock", r"read_trylock",
    r"write_lock", r"write_trylock", r"read_unlock", r"write_unlock", r"^down$", r"down_read",
    r"down_write", r"down_trylock", r"up_read", r"up_write", r"^mutex_", r"^__mutex_", r"^rt_mutex_",
    r"osq_lock", r"osq_unlock", r"atomic(?:64)?_(?:dec|inc|read|set|or|xor|and|add|sub|fetch|xchg|cmpxchg|try)",
    r"(?:set|clear|change|test)_bit", r"__wake_up", r"^refcount_", r"^kref_", r"ref_tracker",
    r"memcpy", r"memcmp", r"memset", r"memchr", r"memmove", r"memdup", r"strcmp", r"strncmp", r"strcpy",
    r"strlcpy", r"strncpy", r"strscpy", r"strlen", r"strstr", r"strnstr", r"strnlen", r"strchr", r"strdup",
    r"strndup", r"copy_to_user", r"copy_from_user", r"copy_to_iter", r"copy_from_iter",
    r"copy_page_to_iter", r"copy_page_from_iter", r"put_user", r"get_user", r"might_fault", r"might_sleep",
    r"list_add", r"list_del", r"list_replace", r"list_move", r"list_splice", r"^rb_", r"^__rb_",
    r"_indirect_thunk_", r"string", r"pointer", r"snprintf", r"scnprintf", r"kasprintf", r"kvasprintf",
    r"printk", r"va_format", r"dev_info", r"dev_notice", r"dev_warn", r"dev_err", r"dev_alert",
    r"dev_crit", r"dev_emerg", r"del_timer", r"flush_work", r"__cancel_work_timer", r"cancel_work_sync",
    r"try_to_grab_pending", r"flush_workqueue", r"drain_workqueue", r"destroy_workqueue", r"queue_work",
    r"finish_wait", r"kthread_stop", r"kobject_", r"add_uevent_var", r"get_device_parent", r"device_add",
    r"device_del", r"device_unregister", r"device_destroy", r"device_release", r"devres_release_all",
    r"sysfs_remove", r"device_remove_file", r"usb_kill_urb", r"usb_control_msg", r"usb_submit_urb",
    r"^complete$", r"wait_for_completion", r"^kv?free$", r"kfree_skb", r"^crc\d+", r"__might_resched",
    r"^iput$", r"^iput_final$", r"^ihold$", r"hex_dump_to_buffer", r"print_hex_dump", r"^klist_",
    r"(?:trace|lockdep)_(?:hard|soft)irq", r"^(?:un)?lock_page", r"stack_trace_consume_entry",
    r"arch_stack_walk", r"stack_trace_save", r"insert_work", r"__queue_delayed_work",
    r"queue_delayed_work_on", r"do_(?:kernel|translation)_fault", r"do_mem_abort", r"el1_abort",
    r"el1h_64_sync", r"print_tainted", r"xas_(?:start|load|find)", r"__phys_addr", r"__fortify_report",
    r"rhashtable_lookup", r"^get_taint$", r"^put_device$", r"lock_timer_base", r"__timer_delete_sync",
    r"__mod_timer", r"fast_dput", r"dput", r"mark_buffer_dirty",
]))
_SYSCALL_PREFIXES = ("SYSC_", "SyS_", "sys_", "__x64_", "__ia32_", "__arm64_", "____sys_", "___sys_",
                     "__sys_", "__se_", "__se_sys_", "__do_sys_", "compat_SYSC_", "compat_SyS_", "ksys_")

_PC = r"\[<?(?:0x)?[0-9a-f]+>?\]"
_FUNC = r"([a-zA-Z0-9_]+)(?:\.|\+)"
_FRAME_LINE = re.compile(rf"^ *(?:{_PC} ){{0,2}}{_FUNC}")
_ARM_FRAME = re.compile(rf"^ *{_PC} \(([a-zA-Z0-9_.]+)\) from {_PC} \({_FUNC}")
# The crash IP; a bare address ("IP: 0x286", a jump to nowhere) names no function but still is the IP line.
_RIP_LINE = re.compile(rf"(?:IP|NIP|pc |PC is at):? (?:(?:[0-9]+:)?(?:{_PC} +){{0,2}}{_FUNC}|(?:[0-9]+:)?0x[0-9a-f]+)")
_INTERRUPT = re.compile(rf"--- interrupt: [0-9]+ at {_FUNC}")
_CALL_TRACE = re.compile(r"Call [Tt]race:|Backtrace:")
_STACK_START = re.compile(r"Call [Tt]race|Allocated:|Allocated by task \d+:|Freed:|Freed by task \d+:|"
                          r"[^k] backtrace(?: \(crc [0-9a-f]*\))?:|Backtrace:|Uninit was stored to memory at")
_AT_LINE = re.compile(rf"at: (?:{_PC} +)?{_FUNC}")


def _strip_prefix(name: str) -> str:
    best = name
    for prefix in _SYSCALL_PREFIXES:
        if name.startswith(prefix) and len(name) - len(prefix) < len(best):
            best = name[len(prefix):]
    return best


def _usable(name: str, extra: re.Pattern | None) -> bool:
    return not _SKIP.search(name) and not (extra and extra.search(name))


def _frames_after(lines: Sequence[str], start: int) -> list[str]:
    """Frame names of the stack that starts after ``start``, up to the next stack header."""
    out = []
    for text in lines[start:]:
        if _STACK_START.search(text):
            break
        m = _ARM_FRAME.match(text)
        if m:
            out.extend([m.group(1), m.group(2)])
            continue
        m = _FRAME_LINE.match(text)
        if m:
            out.append(m.group(1))
    return out


def _find(lines: Sequence[str], pattern: re.Pattern, start: int = 0) -> tuple[int, re.Match] | None:
    for i in range(start, len(lines)):
        m = pattern.search(lines[i])
        if m:
            return i, m
    return None


def _call_trace(lines: Sequence[str]) -> list[str]:
    found = _find(lines, _CALL_TRACE)
    return _frames_after(lines, found[0] + 1) if found else []


def candidates_rip_trace(lines: Sequence[str]) -> list[str]:
    """The RIP function, then the call trace (oopses, GPFs, soft lockups)."""
    found = _find(lines, _RIP_LINE)
    if not found:
        return _call_trace(lines)
    i, m = found
    after = _find(lines, _CALL_TRACE, i)
    return [n for n in [m.group(1)] if n] + (_frames_after(lines, after[0] + 1) if after else [])


def candidates_warning(lines: Sequence[str]) -> list[str]:
    """A WARN's own IP and the frames printed right after it (newer kernels trap first and print the
    stack after the registers); failing those, the ``Call Trace``."""
    found = _find(lines, _RIP_LINE) or _find(lines, _INTERRUPT)
    if found:
        i, m = found
        return [n for n in [m.group(1)] if n] + _frames_after(lines, i + 1) + _call_trace(lines)
    return _call_trace(lines)


def candidates_header(lines: Sequence[str], header: re.Pattern) -> list[str]:
    """The function named in the header line, then the call trace (KASAN, KFENCE)."""
    m = header.search(lines[0]) if lines else None
    return ([m.group(1)] if m else []) + _call_trace(lines)


def candidates_at(lines: Sequence[str]) -> list[str]:
    """Lock sites (``at: func+0x..``) of a lockdep report, then its stack."""
    names = [m.group(1) for text in lines if (m := _AT_LINE.search(text))]
    return names + _call_trace(lines)


def candidates_stack_after(lines: Sequence[str], marker: re.Pattern) -> list[str]:
    found = _find(lines, marker)
    return _frames_after(lines, found[0] + 1) if found else []


def candidates_stall(lines: Sequence[str]) -> list[str]:
    """RCU stalls: the interrupted context (RIP after the timer interrupt) and its stack."""
    found = _find(lines, re.compile(r"apic_timer_interrupt"))
    if found:
        rip = _find(lines, _RIP_LINE, found[0] + 1)
        if rip:
            return [rip[1].group(1)] + _frames_after(lines, rip[0] + 1)
    found = _find(lines, re.compile(r"apic_timer_interrupt|Exception stack|el1h_64_irq"))
    return _frames_after(lines, found[0] + 1) if found else candidates_rip_trace(lines)


def first_after(lines: Sequence[str], anchor: re.Pattern, func: re.Pattern) -> list[str]:
    """The first function matched by ``func`` after the ``anchor`` line (no skipping, as syzbot)."""
    found = _find(lines, anchor)
    if not found:
        return []
    hit = _find(lines, func, found[0] + 1)
    return [hit[1].group(1)] if hit else []


# Stall/lockup reports: the loop can be anywhere, so take the frame just
# above a dispatch point (syscall entry, workqueue, timer, softirq) instead.
_STALL_ANCHORS = re.compile(
    r"process_one_work|do_syscall_|do_fast_syscall_|sysenter_dispatch|el0_svc_handler|invoke_syscall|"
    r"ret_fast_syscall|netif_receive_skb|do_softirq|call_timer_fn|_run_timers|run_timer_softirq|"
    r"hrtimer_run|run_ksoftirqd|smpboot_thread_fn|^kthread$|start_secondary|cpu_startup_entry|"
    r"ret_from_fork|vfs_write|vfs_read|vfs_iter_read|vfs_iter_write|do_iter_read|do_iter_write|"
    r"call_read_iter|call_write_iter|new_sync_read|new_sync_write|vfs_ioctl|ksys_ioctl|compat_ioctl|"
    r"blkdev_ioctl|do_iter_readv_writev|^call_mmap|mmap_region|do_mmap|do_dentry_open|vfs_open|"
    r"^sock_sendmsg|^sock_recvmsg|^sock_release|^__sock_release|^setsockopt$|sock_common_setsockopt|"
    r"^sock_do_ioctl|^sock_ioctl|^nfnetlink_rcv_msg|^rtnetlink_rcv_msg|^netlink_dump|"
    r"^(?:sys_)?(?:socketpair|connect|ioctl)|__do_fault|do_page_fault|^page_fault$|__fput|task_work_run|"
    r"exit_to_usermode|smp_call_function|tasklet_action|tasklet_hi_action")


def pick_stall(names: list[str]) -> str | None:
    prev = names[0] if names else None
    for name in names:
        if _STALL_ANCHORS.search(name):
            return "smp_call_function" if "smp_call_function" in name else prev
        prev = name
    return None


_HANG_SKIP = ("sched", "_lock", "_slowlock", "down", "rwsem", "completion", "kthread", "wait",
              "synchronize", "context_switch", "__switch_to", "cancel_delayed_work", "rcu_barrier")


def pick_hung(names: list[str]) -> str | None:
    """Hung tasks wait in random victims; group the two common root causes, then skip wait plumbing."""
    for name in names:
        if "rtnl_lock" in name:
            return name
        if any(a in name for a in ("synchronize_rcu", "synchronize_srcu", "synchronize_net",
                                   "synchronize_sched")):
            return "synchronize_rcu"
    for name in names:
        if not any(s in name for s in _HANG_SKIP):
            return name
    return None


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
