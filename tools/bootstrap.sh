#!/usr/bin/env bash
# Set up pvepstore on a fresh Debian 12 machine: system packages, then a venv in .venv.
#   tools/bootstrap.sh          runtime only
#   tools/bootstrap.sh --test   also what the test suite needs (QEMU, Debian kernel, compilers)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

pkgs=(python3 python3-venv python3-pip)
if [ "$want_test" = 1 ]; then
    # The real-kernel smoke test boots Debian's own kernel under QEMU and builds a
    # tiny oops module against its headers; the guest tests use openssh.
    pkgs+=(qemu-system-x86 qemu-utils busybox-static linux-image-amd64 linux-headers-amd64
           build-essential kmod cpio xz-utils openssh-client openssh-server
           debootstrap e2fsprogs  # tests/vm: the debootstrapped Debian guest image
           perl  # the pve-notify sink's tests run its Perl side against a stand-in PVE::Notify
           debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian man-db
           # ^ tests/packaging: the .deb is built, linted and installed into clean Debian 12/13 roots
           ovmf)  # the efi_pstore tests: a real OVMF vars file (and tests/kernel efi fixtures)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}" >&2
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "$want_test" = 1 ]; then
    .venv/bin/python -m pip install -q -e ".[test]"
else
    .venv/bin/python -m pip install -q -e .
fi
