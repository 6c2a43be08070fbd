"""Kernel taint flags: the letters of ``Tainted:`` decoded (kernel/panic.c ``taint_flags``)."""

from __future__ import annotations

import re

# Letter -> (satyr's name where satyr knows the flag, description).  satyr
# (abrt/satyr lib/koops_stacktrace.c) models only the first sixteen; the rest
# are newer kernel flags.  "G" is the absence of P, not a flag.
TAINT_FLAGS: dict[str, tuple[str | None, str]] = {
    "P": ("module_proprietary", "proprietary module was loaded"),
    "F": ("forced_module", "module was force loaded"),
    "S": ("smp_unsafe", "kernel running on an out of specification system"),
    "R": ("forced_removal", "module was force unloaded"),
    "M": ("mce", "processor reported a Machine Check Exception"),
    "B": ("page_release", "bad page referenced or unexpected page flags"),
    "U": ("userspace", "taint requested by userspace"),
    "D": ("died_recently", "kernel died recently (OOPS or BUG)"),
    "A": ("acpi_overridden", "ACPI table overridden by user"),
    "W": ("warning", "kernel issued a warning"),
    "C": ("staging_driver", "staging driver was loaded"),
    "I": ("firmware_workaround", "workaround for platform firmware bug applied"),
    "O": ("module_out_of_tree", "externally-built (out-of-tree) module was loaded"),
    "E": ("unsigned_module", "unsigned module was loaded"),
    "L": ("soft_lockup", "soft lockup occurred"),
    "K": ("live_patched", "kernel has been live patched"),
    "X": (None, "auxiliary taint (distribution-defined)"),
    "T": (None, "kernel built with the struct randomization plugin"),
    "N": (None, "in-kernel test has been run"),
    "J": (None, "userspace used a mutating debug operation in fwctl"),
}

_TAINTED = re.compile(r"Tainted: ([A-Z ]*)")


def taint_letters(text: str) -> str | None:
    """The flags of the first ``Tainted:`` field, spaces removed ("GW", "PO").

    None when there is no such field or it holds no letter (ABRT's
    ``kernel_tainted_short``: ``Tainted:`` followed directly by the version).
    """
    m = _TAINTED.search(text)
    if not m:
        return None
    letters = m.group(1).replace(" ", "")
    return letters or None


def decode_taint(letters: str | None) -> list[dict]:
    """One entry per set flag: letter, satyr name (if any) and description."""
    out = []
    for letter in letters or "":
        if letter == "G":
            continue
        name, description = TAINT_FLAGS.get(letter, (None, "unknown taint flag"))
        out.append({"flag": letter, "name": name, "description": description})
    return out


def satyr_taint_names(letters: str | None) -> set[str]:
    """The taint flags satyr would set (its sixteen-flag model)."""
    return {TAINT_FLAGS[c][0] for c in letters or "" if c in TAINT_FLAGS and TAINT_FLAGS[c][0]}
