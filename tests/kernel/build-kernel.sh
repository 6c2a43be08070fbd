#!/bin/sh
# Build a 6.1 kernel with PSTORE_CONSOLE + PSTORE_PMSG for the console/pmsg ring
# fixtures (pstore_blk and ramoops, both as modules). Uses only Debian's linux-source-6.1 package (/usr/src/linux-source-6.1.tar.xz).
#
#   tests/kernel/build-kernel.sh            # build into /var/cache/pvepstore/kbuild
#   KBUILD_ROOT=/some/dir tests/kernel/build-kernel.sh
#
# Result:
#   $KBUILD_ROOT/linux-source-6.1/arch/x86/boot/bzImage
#   $KBUILD_ROOT/modroot/lib/modules/<release>/...      (modules_install)
#   $KBUILD_ROOT/release                                  (kernel release string)
# The tree itself is used as the "headers" to build tests/kernel/oopsmod against.
set -eu
KBUILD_ROOT=${KBUILD_ROOT:-/var/cache/pvepstore/kbuild}
TARBALL=${TARBALL:-/usr/src/linux-source-6.1.tar.xz}
JOBS=${JOBS:-$(nproc)}
SRC=$KBUILD_ROOT/linux-source-6.1

mkdir -p "$KBUILD_ROOT"
if [ ! -f "$SRC/Makefile" ]; then
    echo ">>> extracting $TARBALL"
    tar -C "$KBUILD_ROOT" -xf "$TARBALL"
fi
cd "$SRC"
if [ ! -f .config ] || [ ! -f .pvepstore-configured ]; then
    echo ">>> configuring"
    make x86_64_defconfig
    make kvm_guest.config
    ./scripts/config \
        --set-str LOCALVERSION "-pvepstore" \
        --disable LOCALVERSION_AUTO \
        --enable MODULES --enable MODULE_UNLOAD \
        --enable PSTORE \
        --enable PSTORE_CONSOLE \
        --enable PSTORE_PMSG \
        --disable PSTORE_FTRACE \
        --module PSTORE_ZONE \
        --module PSTORE_BLK \
        --set-val PSTORE_BLK_KMSG_SIZE 64 \
        --set-val PSTORE_BLK_MAX_REASON 2 \
        --set-val PSTORE_BLK_PMSG_SIZE 64 \
        --set-val PSTORE_BLK_CONSOLE_SIZE 64 \
        --module PSTORE_RAM \
        --enable PSTORE_COMPRESS \
        --enable PSTORE_DEFLATE_COMPRESS \
        --enable PSTORE_DEFLATE_COMPRESS_DEFAULT \
        --enable VIRTIO --enable VIRTIO_PCI --enable VIRTIO_BLK \
        --enable SCSI --enable SCSI_VIRTIO --enable BLK_DEV_SD \
        --enable MAGIC_SYSRQ --enable DEVTMPFS --enable PROC_FS \
        --enable BLK_DEV_INITRD --enable RD_GZIP \
        --enable SERIAL_8250 --enable SERIAL_8250_CONSOLE \
        --disable DEBUG_INFO \
        --enable DEBUG_INFO_NONE \
        --disable DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT \
        --disable DEBUG_INFO_DWARF4 --disable DEBUG_INFO_DWARF5 \
        --disable DEBUG_INFO_BTF \
        --disable MODULE_SIG \
        --disable SYSTEM_TRUSTED_KEYRING
    make olddefconfig
    touch .pvepstore-configured
fi
# Trees configured before ramoops was wanted: add it as a module (incremental:
# nothing in vmlinux depends on CONFIG_PSTORE_RAM / CONFIG_REED_SOLOMON).
if ! grep -q '^CONFIG_PSTORE_RAM=m' .config; then
    echo ">>> adding PSTORE_RAM=m"
    ./scripts/config --module PSTORE_RAM
    make olddefconfig
fi
echo ">>> config check"
grep -E '^CONFIG_(PSTORE[A-Z_]*|REED_SOLOMON|VIRTIO_BLK|SCSI_VIRTIO|BLK_DEV_SD|MODULES|DEBUG_INFO_NONE)=' .config
echo ">>> building (-j$JOBS)"
make -j"$JOBS" bzImage modules
rm -rf "$KBUILD_ROOT/modroot"
make modules_install INSTALL_MOD_PATH="$KBUILD_ROOT/modroot" INSTALL_MOD_STRIP=1
make -s kernelrelease > "$KBUILD_ROOT/release"
echo ">>> done: $(cat "$KBUILD_ROOT/release")"
ls -l arch/x86/boot/bzImage
