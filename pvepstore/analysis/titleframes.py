"""The guilty-frame candidates of a crash title (syzbot's convention, :mod:`.title`): the frames
that never identify a bug, the stack each report type names its culprit in, and the picks for
stalls and hung tasks."""

from __future__ import annotations

import re
from typing import Sequence


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
