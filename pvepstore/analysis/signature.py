"""Crash signatures: ABRT's duphash (via satyr) and a ChromeOS-style short signature.

The duphash lets a pvepstore incident be matched with the same oops seen by
ABRT/FAF: ABRT hashes with satyr's ``sr_thread_get_duphash(thread, 6, NULL,
SR_DUPHASH_NONORMALIZE | SR_DUPHASH_KOOPS_COMPAT)`` (abrt ``src/lib/kernel.c``
``abrt_koops_hash_str``), i.e. SHA-1 over the names of the first six
*reliable* frames, one per line.  The other satyr modes are kept because
satyr's own tests pin their values.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable, Sequence

from .frame import Frame

# satyr sr_normalize_koops_stacktrace(): frames that carry no identity.
SATYR_BLACKLIST = frozenset({
    "do_softirq", "do_vfs_ioctl", "dump_stack", "flush_kthread_worker", "gs_change", "irq_exit",
    "kernel_thread_helper", "kthread", "process_one_work", "system_call_fastpath",
    "warn_slowpath_common", "warn_slowpath_fmt", "warn_slowpath_fmt_taint", "warn_slowpath_null",
    "worker_thread",
})

ABRT_FRAMES = 6


def normalize_frames(frames: Iterable[Frame]) -> list[Frame]:
    """satyr's normalisation: drop ``.isra.0``-style suffixes, then blacklisted core frames.

    Frames that belong to a module are never dropped.
    """
    out = []
    for f in frames:
        name = f.function.split(".", 1)[0] if f.function else f.function
        if not f.module and name in SATYR_BLACKLIST:
            continue
        out.append(Frame(name, f.offset, f.length, f.module, f.address, f.reliable, f.special_stack))
    return out


def duphash_text(frames: Sequence[Frame], *, nframes: int = ABRT_FRAMES, compat: bool = True,
                 normalize: bool = False) -> str:
    """The text satyr hashes; ``nframes`` 0 means all frames."""
    if normalize:
        frames = normalize_frames(frames)
    parts = [] if compat else ["Thread\n"]
    remaining = nframes or len(frames)
    for f in frames:
        if remaining <= 0:
            break
        if compat and not f.reliable:
            continue  # ABRT's koops hashing skipped unreliable frames entirely
        parts.append(f"{f.function}\n" if f.function else f"0x{f.address or 0:x}\n")
        remaining -= 1
    return "".join(parts)


def duphash(frames: Sequence[Frame], *, nframes: int = ABRT_FRAMES, compat: bool = True,
            normalize: bool = False) -> str | None:
    """SHA-1 hex of :func:`duphash_text`; None when compat mode finds no usable frame (ABRT drops those)."""
    text = duphash_text(frames, nframes=nframes, compat=compat, normalize=normalize)
    if compat and not text:
        return None
    return hashlib.sha1(text.encode()).hexdigest()


# ChromeOS crash-reporter kernel_util.cc: frames that say nothing about the bug.
_BORING = re.compile(
    r"^(?:schedule|schedule_timeout|io_schedule|mutex_lock|_?_?mutex_lock_slowpath|panic|vpanic|"
    r"dump_stack|dump_stack_lvl|show_stack|dump_backtrace|warn_slowpath_\w+|__warn|report_bug|"
    r"handle_bug|exc_invalid_op|asm_exc_invalid_op|do_error_trap|do_trap|do_invalid_op|invalid_op|"
    r"__schedule|kthread|ret_from_fork|ret_from_fork_asm|worker_thread|process_one_work|"
    r"watchdog|check_hung_uninterruptible_tasks|check_hung_task|ubsan_epilogue|__ubsan_\w+)$")


def signature_function(frames: Sequence[Frame], rip: Frame | None = None) -> str | None:
    """The function that names a crash: the RIP function, else the first interesting reliable frame."""
    if rip is not None and rip.function:
        return rip.function.split(".", 1)[0]
    for candidates in ([f for f in frames if f.reliable], list(frames)):
        for f in candidates:
            if f.function and not _BORING.match(f.function.split(".", 1)[0]):
                return f.function.split(".", 1)[0]
    return None


def short_signature(frames: Sequence[Frame], *, rip: Frame | None = None, tag: str = "",
                    fallback: str | None = None) -> str:
    """``kernel-[tag-]<function>-<8 hex>`` (ChromeOS ``ComputeKernelStackSignature``).

    The hash covers the ``|``-joined reliable frame names (all frames when none
    is reliable), so the same function reached by a different path gets a
    different signature.  ``tag`` marks hangs (``(HANG)``) as ChromeOS does.
    """
    names = [f.function for f in frames if f.reliable and f.function] or \
        [f.function for f in frames if f.function]
    if not names and rip is None:
        return "kernel-UnspecifiedStackSignature"
    digest = hashlib.sha1("|".join(names).encode()).hexdigest()[:8].upper()
    human = signature_function(frames, rip) or fallback or ""
    human = re.sub(r"[^A-Za-z0-9_.:-]+", "_", human)[:40]
    prefix = f"{tag}-" if tag else ""
    return f"kernel-{prefix}{human}-{digest}"
