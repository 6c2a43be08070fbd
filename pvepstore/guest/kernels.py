"""The guest kernels pvepstore's capture claims were measured on, and how to tell a guest runs one.

Every "captures X" statement of the backends was measured under QEMU on these kernels (the real-kernel
fixtures in tests/fixtures/, the real-guest tier in tests/vm/).  On any other kernel (Ubuntu, a
RHEL-family kernel, Arch, a self-built one) the probe still reads the facts from the guest --
its kernel config, its modules -- but says that the behaviour behind them was not measured there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class MeasuredKernel:
    label: str  # as the README's capture table names the column
    distro_id: str  # /etc/os-release ID
    version_id: str  # /etc/os-release VERSION_ID
    release: re.Pattern  # uname -r of the distribution's stock kernel package


MEASURED = (
    MeasuredKernel("Debian 12 (6.1)", "debian", "12", re.compile(r"6\.1\.\d+-\d+-amd64")),
    MeasuredKernel("Debian 13 (6.12)", "debian", "13", re.compile(r"6\.12\.\d+\+deb13-amd64")),
)


def measured_kernel(distro_id: str, version_id: str, release: str) -> MeasuredKernel | None:
    """The measured kernel this guest runs, or None (another distribution, version or kernel build)."""
    return next((m for m in MEASURED if m.distro_id == distro_id and m.version_id == version_id
                 and m.release.fullmatch(release)), None)


def measured_labels() -> str:
    return ", ".join(m.label for m in MEASURED)
