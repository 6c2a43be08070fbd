"""Real-kernel smoke tests: one QEMU boot, one Oops, compare pstorefs names
(pstore_blk) and the host reader's bytes (ramoops on ivshmem).

Marked ``kernel``; deselect with ``-m 'not kernel'``. Skipped when
qemu-system-x86_64, the target kernel image or busybox is missing. Takes
~10-20 s under TCG. Full fixture regeneration is ``python3 -m tests.kernel.generate --all``.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.kernel import harness as H  # noqa: E402

pytestmark = pytest.mark.kernel


def _missing():
    if shutil.which(H.QEMU) is None:
        return f"{H.QEMU} not installed"
    k = H.stock_kernel()
    if not k.available():
        return f"kernel {k.image} / {k.moddir} missing"
    if not (k.builddir / "Makefile").exists():
        return f"kernel headers {k.builddir} missing"
    if not os.path.exists(H.BUSYBOX):
        return f"{H.BUSYBOX} missing"
    if os.geteuid() != 0 and not os.access(H.CACHE.parent, os.W_OK) and not H.CACHE.exists():
        return f"cannot create {H.CACHE}"
    return None


@pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
def test_oops_lands_in_zone0():
    from tests.kernel.generate import smoke

    r = smoke(log=print)
    assert r["ok"], r["problems"]
    assert r["names"] == ["dmesg-pstore_blk-0"]
    assert r["seconds"] < 60


@pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
def test_ivshmem_oops_read_live_by_the_host_equals_the_kernel():
    # ramoops on Proxmox's ivshmem device: the host's copy of the live file, read by
    # pvepstore, must equal what the guest kernel lists in /sys/fs/pstore
    from tests.kernel.generate import smoke_ivshmem

    r = smoke_ivshmem(log=print)
    assert r["ok"], r["problems"]
    assert r["names"] == ["dmesg-ramoops-0"]
    assert r["seconds"] < 60
