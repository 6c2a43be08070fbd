"""Fixtures of the real-guest tier (marker ``vm``): the cached Debian image and a booted guest."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "vm: boots a debootstrapped Debian guest under QEMU and "
                                       "configures it over SSH (slow; needs root, debootstrap, QEMU)")
    config.addinivalue_line("markers", "suites(*names): run the test once per Debian guest suite "
                                       "(bookworm, trixie); unmarked tests run on bookworm only")


def pytest_generate_tests(metafunc):
    # one boot chain per backend on each further suite: only marked tests take the trixie guest
    mark = metafunc.definition.get_closest_marker("suites")
    if mark and "guest_image" in metafunc.fixturenames:
        metafunc.parametrize("guest_image", list(mark.args), indirect=True, scope="session")


def missing() -> str | None:
    for tool in ("qemu-system-x86_64", "qemu-img", "debootstrap", "mke2fs", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if os.geteuid() != 0:
        return "building the guest image needs root (debootstrap, chroot)"
    if os.environ.get("PVEPSTORE_SKIP_VM"):
        return "PVEPSTORE_SKIP_VM is set"
    return None


@pytest.fixture(scope="session")
def guest_image(request):
    why = missing()
    if why:
        pytest.skip(why)
    from tests.vm.image import ensure_image

    t0 = time.monotonic()
    img = ensure_image(getattr(request, "param", "bookworm"), log=lambda m: None)
    print(f"\nguest image {img.name} ready after {time.monotonic() - t0:.0f} s")
    return img


@pytest.fixture
def vm(guest_image, tmp_path):
    from tests.vm.harness import GuestVM

    machine = GuestVM(guest_image, tmp_path / "vm")
    yield machine
    machine.kill()
