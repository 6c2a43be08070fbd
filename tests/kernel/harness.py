"""Real-kernel harness: boot Linux guests under QEMU with a pstore_blk disk.

Stdlib only. The building blocks are:

* :class:`Kernel`       -- a bootable kernel + its module tree + a build dir for
                           the out-of-tree ``pvepstore_oops`` module.
* :func:`build_initramfs` -- busybox-static + the needed modules + /init.
* :func:`run_boot`      -- one bounded QEMU run; returns the console log and the
                           parsed "kernel view" sent over the second serial port.

Scenarios (what to boot, with which parameters, which events) live in
``scenarios.py``; the CLI that writes ``tests/fixtures/<name>/`` is
``generate.py``.
"""

from __future__ import annotations

import base64
import fcntl
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("PVEPSTORE_CACHE", "/var/cache/pvepstore"))
HERE = Path(__file__).resolve().parent
OOPSMOD_SRC = HERE / "oopsmod"
QEMU = os.environ.get("PVEPSTORE_QEMU", "qemu-system-x86_64")
BUSYBOX = os.environ.get("PVEPSTORE_BUSYBOX", "/bin/busybox")

# Modules needed in the guest (by module name). Missing names are fine if the
# module is built in (custom kernel) -- see Kernel.resolve_modules().
BASE_MODULES = [
    "virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
    "virtio_pci", "virtio_blk",
    "scsi_common", "scsi_mod",
    # sd_mod -> t10-pi -> crc64-rocksoft / crc-t10dif want these crypto algos
    "crc64", "crc64_rocksoft_generic", "crct10dif_common", "crct10dif_generic",
    "sd_mod", "virtio_scsi",
]
PSTORE_MODULES = ["pstore_zone", "pstore_blk"]


# ----------------------------------------------------------------------------
# accelerator probe
# ----------------------------------------------------------------------------
_ACCEL: str | None = None


def probe_accel() -> str:
    """Return "kvm" if /dev/kvm can create a VM, else "tcg". Probed once.

    Override with PVEPSTORE_ACCEL=kvm|tcg.
    """
    global _ACCEL
    if _ACCEL is not None:
        return _ACCEL
    forced = os.environ.get("PVEPSTORE_ACCEL")
    if forced:
        _ACCEL = forced
        return _ACCEL
    accel = "tcg"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        try:
            KVM_GET_API_VERSION, KVM_CREATE_VM = 0xAE00, 0xAE01
            if fcntl.ioctl(fd, KVM_GET_API_VERSION, 0) == 12:
                vmfd = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
                if vmfd >= 0:
                    os.close(vmfd)
                    accel = "kvm"
        finally:
            os.close(fd)
    except OSError:
        accel = "tcg"
    if accel == "kvm":
        # ioctl-level success is not enough on some hosts: try a real start.
        try:
            r = subprocess.run(
                [QEMU, "-accel", "kvm", "-machine", "pc", "-nodefaults",
                 "-display", "none", "-S", "-no-reboot", "-monitor", "none",
                 "-qmp", "none"],
                timeout=5, capture_output=True)
            # with -S it would run forever; a timeout means it started fine
            accel = "tcg" if r.returncode != 0 else "kvm"
        except subprocess.TimeoutExpired:
            accel = "kvm"
        except OSError:
            accel = "tcg"
    _ACCEL = accel
    return accel


# ----------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------
@dataclass
class Kernel:
    label: str            # "stock" / "custom"
    release: str          # uname -r
    image: Path           # bzImage / vmlinuz
    modroot: Path         # directory that contains lib/modules/<release>
    builddir: Path        # kernel build dir for out-of-tree modules (inside ``chroot`` when set)
    chroot: Path | None = None  # a root whose compiler matches the kernel's (Debian 13: gcc-14)

    @property
    def moddir(self) -> Path:
        return self.modroot / "lib" / "modules" / self.release

    def available(self) -> bool:
        return self.image.is_file() and self.moddir.is_dir()

    # --- modules ---------------------------------------------------------
    def _dep_table(self) -> dict[str, tuple[str, list[str]]]:
        """module name -> (relative path, [relative paths of deps])"""
        table = {}
        for line in (self.moddir / "modules.dep").read_text().splitlines():
            if ":" not in line:
                continue
            path, deps = line.split(":", 1)
            name = Path(path).name
            for suf in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
                if name.endswith(suf):
                    name = name[: -len(suf)]
                    break
            table[name.replace("-", "_")] = (path, deps.split())
        return table

    def _builtin(self) -> set[str]:
        p = self.moddir / "modules.builtin"
        if not p.exists():
            return set()
        return {Path(l).name.rsplit(".ko", 1)[0].replace("-", "_")
                for l in p.read_text().split()}

    def resolve_modules(self, names: list[str], required: bool = True) -> list[str]:
        """Relative module paths in load order (deps first); built-ins skipped.

        With required=False, names that are neither modules nor built in
        (e.g. not configured at all in the custom kernel) are skipped.
        """
        table = self._dep_table()
        builtin = self._builtin()
        by_path = {v[0]: v for v in table.values()}
        order: list[str] = []

        def visit(path: str):
            if path in order:
                return
            for d in reversed(by_path[path][1]):  # modules.dep lists deps deepest-last
                visit(d)
            order.append(path)

        for n in names:
            key = n.replace("-", "_")
            if key in table:
                visit(table[key][0])
            elif key not in builtin and required:
                raise RuntimeError(f"{self.label}: module {n} neither in modules.dep nor built in")
        return order


def stock_kernel(release: str | None = None) -> Kernel:
    """The Debian kernel (default: newest /boot/vmlinuz-* with modules + headers)."""
    if release is None:
        release = os.environ.get("PVEPSTORE_KERNEL_RELEASE")
    if release is None:
        cands = []
        for img in glob.glob("/boot/vmlinuz-*"):
            rel = img.split("vmlinuz-", 1)[1]
            if Path(f"/lib/modules/{rel}/modules.dep").exists():
                cands.append(rel)
        # prefer ones with headers
        with_hdr = [r for r in cands if Path(f"/lib/modules/{r}/build/Makefile").exists()]
        cands = sorted(with_hdr or cands)
        release = cands[-1] if cands else "6.1.0-56-amd64"
    return Kernel("stock", release, Path(f"/boot/vmlinuz-{release}"), Path("/"),
                  Path(f"/lib/modules/{release}/build"))


KBUILD = CACHE / "kbuild"


def custom_kernel() -> Kernel:
    """The kernel built by build-kernel.sh (PSTORE_CONSOLE + PSTORE_PMSG)."""
    src = KBUILD / "linux-source-6.1"
    rel_file = KBUILD / "release"
    release = rel_file.read_text().strip() if rel_file.exists() else "6.1-pvepstore-unbuilt"
    return Kernel("custom", release, src / "arch/x86/boot/bzImage", KBUILD / "modroot", src)


def debian13_kernel() -> Kernel:
    """Debian 13's stock kernel (trixie's linux-image-amd64), unpacked by ``tests/kernel/debian13.py``."""
    from .debian13 import KERNEL_DIR, BUILD_ROOT, release

    rel = release()
    return Kernel("debian13", rel, KERNEL_DIR / "boot" / f"vmlinuz-{rel}", KERNEL_DIR / "usr",
                  Path(f"/usr/src/linux-headers-{rel}"), chroot=BUILD_ROOT)


KERNELS = {"stock": lambda: stock_kernel(), "custom": lambda: custom_kernel(), "debian13": lambda: debian13_kernel()}


def build_oopsmod(kernel: Kernel) -> Path:
    """Build tests/kernel/oopsmod against the kernel; cached per release+source."""
    src_files = sorted(OOPSMOD_SRC.glob("*.c")) + [OOPSMOD_SRC / "Makefile"]
    stamp = "".join(f"{p.name}:{p.stat().st_mtime_ns}:{p.stat().st_size};" for p in src_files)
    out = CACHE / "oopsmod" / kernel.release
    ko = out / "pvepstore_oops.ko"
    if ko.exists() and (out / ".stamp").exists() and (out / ".stamp").read_text() == stamp:
        return ko
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for p in src_files:
        shutil.copy2(p, out / p.name)
    if kernel.chroot is not None:  # built where the kernel's own compiler is, copied out
        inside = kernel.chroot / "build" / f"oopsmod-{kernel.release}"
        if inside.exists():
            shutil.rmtree(inside)
        shutil.copytree(out, inside)
        subprocess.run(["chroot", str(kernel.chroot), "make", "-C", str(kernel.builddir),
                        f"M=/build/{inside.name}", "modules"], check=True, capture_output=True, timeout=600)
        shutil.copy2(inside / "pvepstore_oops.ko", ko)
    else:
        subprocess.run(["make", "-C", str(kernel.builddir), f"M={out}", "modules"],
                       check=True, capture_output=True, timeout=600)
    (out / ".stamp").write_text(stamp)
    return ko


# ----------------------------------------------------------------------------
# initramfs
# ----------------------------------------------------------------------------
INIT_TEMPLATE = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
O=/dev/ttyS1
log() { echo "PVEPSTORE: $*" > /dev/ttyS0; }
out() { echo "$*" > $O; }
for m in $(cat /etc/modlist); do
    insmod /lib/modules/$m || log "insmod $m failed"
done
insmod /lib/modules/pvepstore_oops.ko || log "insmod pvepstore_oops failed"

# wait for the block device (pstore_blk: the pstore disk; ramoops: the boot-counter disk)
if [ -n "$BLKDEV" ]; then
    i=0
    while [ ! -b "$BLKDEV" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
    [ -b "$BLKDEV" ] || log "block device $BLKDEV did not appear"
fi
# In-process reboots (QEMU without -no-reboot) run the same initramfs again:
# the first byte of the counter disk tells this boot's number in the process.
BOOTNO=1
if [ -n "$COUNTER" ] && [ -b "$COUNTER" ]; then
    BOOTNO=$(( $(dd if=$COUNTER bs=1 count=1 2>/dev/null | od -An -tu1) + 1 ))
    printf "\\$(printf %03o $BOOTNO)" | dd of=$COUNTER bs=1 count=1 conv=notrunc 2>/dev/null
    sync
fi

dump_view() {   # $1 = tag (boot n > 1 of the same QEMU process: tag@n)
    tag=$1; [ $BOOTNO -gt 1 ] && tag="$1@$BOOTNO"
    out "==PVEPSTORE-VIEW-BEGIN $tag=="
    out "==UNAME $(uname -r)=="
    out "==CPU-POSSIBLE $(cat /sys/devices/system/cpu/possible)=="
    out "==MODULES $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')=="
    for p in /sys/module/pstore_blk/parameters/* /sys/module/ramoops/parameters/* \
             /sys/module/pstore/parameters/* /sys/module/efi_pstore/parameters/*; do
        [ -f "$p" ] || continue
        out "==PARAM ${p#/sys/module/} $(cat $p 2>/dev/null)=="
    done
    for f in /sys/fs/pstore/*; do
        [ -f "$f" ] || continue
        out "==FILE $(basename $f) $(stat -c '%s %Y' $f)=="
        base64 "$f" > $O
        out "==END-FILE=="
    done
    out "==DMESG-BEGIN=="
    dmesg | base64 > $O
    out "==DMESG-END=="
    out "==PVEPSTORE-VIEW-END $tag=="
}

do_oops() { log "event oops"; sh -c 'echo oops > /proc/pvepstore_oops'; }
do_warn() { log "event warn"; sh -c 'echo warn > /proc/pvepstore_oops'; }

out "==PVEPSTORE-BOOT-BEGIN $BOOTNO=="
[ -f /etc/pre.sh ] && . /etc/pre.sh
. /etc/backend.sh
mount -t pstore pstore /sys/fs/pstore || log "mount pstore failed"
sleep 0.5
dump_view mount
. /etc/events.sh
out "==EVENTS-DONE=="
sync
log "powering off"
poweroff -f
sleep 30
"""

# How each backend is loaded (sourced by /init after the modules and the block device).
BACKEND_SH = {
    "pstore_blk": r"""log "loading pstore: $PSTORE_PARAMS"
insmod /lib/modules/$PSTORE_ZONE
insmod /lib/modules/$PSTORE_BLK $PSTORE_PARAMS
out "==INSMOD-RC $?=="
""",
    # ramoops on the BAR2 of Proxmox's ivshmem-plain device (PCI 1af4:1110), as
    # ../shared/reference/panic-capable-backends.md "Recipes that work" 1. Before the
    # probe the host gets PRE_PROBE_WAIT seconds to copy the memory the kernel will read.
    "ramoops": r"""for m in $PSTORE_DEPS; do insmod /lib/modules/$m || log "insmod $m failed"; done
found=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1110 ] || continue
    set -- $(sed -n 3p $d/resource)          # BAR2 = the shared memory: start end flags
    found=1
    size=$(printf 0x%x $(( $2 - $1 + 1 )))
    out "==IVSHMEM ${d##*/} $1 $size=="
    out "==PRE-PROBE $BOOTNO=="
    sleep $PRE_PROBE_WAIT
    log "loading ramoops: mem_address=$1 mem_size=$size $PSTORE_PARAMS"
    insmod /lib/modules/$PSTORE_MAIN mem_address=$1 mem_size=$size $PSTORE_PARAMS
    out "==INSMOD-RC $?=="
    break
done
[ -n "$found" ] || log "no ivshmem device (PCI 1af4:1110)"
""",
    # efi_pstore on OVMF (efi-* fixtures): the real kmod modprobe resolves its dependencies;
    # efivarfs is mounted so the variables can be inspected as Linux sees them.
    "efi": r"""log "loading efi_pstore"
modprobe efi_pstore
out "==INSMOD-RC $?=="
modprobe efivarfs 2>/dev/null
mount -t efivarfs efivarfs /sys/firmware/efi/efivars || log "mount efivarfs failed"
""",
}
BACKEND_MODULES = {"pstore_blk": ["pstore_zone", "pstore_blk"], "ramoops": ["ramoops"], "efi": []}
KMOD = "/bin/kmod"


def _unpack_module(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.name.endswith(".xz"):
        dst.write_bytes(subprocess.run(["xz", "-dc", str(src)], check=True,
                                       capture_output=True).stdout)
    elif src.name.endswith(".zst"):
        dst.write_bytes(subprocess.run(["zstd", "-dc", str(src)], check=True,
                                       capture_output=True).stdout)
    else:
        shutil.copy2(src, dst)


def _strip_ext(rel: str) -> str:
    return rel[:-3] if rel.endswith(".xz") else rel[:-4] if rel.endswith(".zst") else rel


def _install_kmod(kernel: Kernel, root: Path, modules: list[str], modprobe_d: str | None) -> None:
    """The real kmod modprobe (blacklist/options/cmdline semantics as on Debian) with
    its libraries, a module tree holding ``modules`` and a depmod index for it."""
    libs = re.findall(r"(/\S+\.so[.\d]*)", subprocess.run(["ldd", KMOD], check=True,
                                                           capture_output=True, text=True).stdout)
    for f in [KMOD] + libs:
        dst = root / f.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(f), dst)
    for tool in ("modprobe", "lsmod"):
        (root / "sbin" / tool).symlink_to(KMOD)   # busybox --install -s keeps existing links
    mtree = root / "lib/modules" / kernel.release
    for rel in kernel.resolve_modules(modules):
        _unpack_module(kernel.moddir / rel, mtree / _strip_ext(rel))
    for f in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (kernel.moddir / f).exists():
            shutil.copy2(kernel.moddir / f, mtree / f)
    subprocess.run(["depmod", "-b", str(root), kernel.release], check=True, capture_output=True)
    if modprobe_d:
        (root / "etc/modprobe.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/modprobe.d/pvepstore.conf").write_text(modprobe_d)


def build_initramfs(kernel: Kernel, dest: Path, blkdev: str, pstore_params: str,
                    events_sh: str, *, backend: str = "pstore_blk", counter: str = "",
                    pre_sh: str = "", kmod_modules: list[str] | None = None,
                    modprobe_d: str | None = None, pre_probe_wait: float = 1) -> Path:
    """Create an uncompressed newc cpio at dest.

    ``backend``: "pstore_blk" (pstore_zone + pstore_blk on ``blkdev``) or "ramoops"
    (reed_solomon + ramoops on the ivshmem BAR2; ``blkdev``/``counter`` is then the
    boot-counter disk). ``pre_sh`` runs before the backend loads; ``kmod_modules``
    installs kmod's modprobe with those modules (+ ``/etc/modprobe.d/pvepstore.conf``).
    """
    ko = build_oopsmod(kernel)
    mods = kernel.resolve_modules(BASE_MODULES, required=False)
    pmods = kernel.resolve_modules(BACKEND_MODULES[backend])
    if backend == "pstore_blk":
        pzone = [m for m in pmods if Path(m).name.startswith("pstore_zone")]
        pblk = [m for m in pmods if Path(m).name.startswith("pstore_blk")]
        if not (pzone and pblk):
            raise RuntimeError("pstore_zone/pstore_blk must be modules")
        names = {"PSTORE_ZONE": _strip_ext(pzone[0]), "PSTORE_BLK": _strip_ext(pblk[0])}
    elif backend == "efi":
        names = {}
    else:
        if not pmods or not Path(pmods[-1]).name.startswith(backend):
            raise RuntimeError(f"{kernel.label}: {backend} must be a module")
        names = {"PSTORE_DEPS": " ".join(_strip_ext(m) for m in pmods[:-1]),
                 "PSTORE_MAIN": _strip_ext(pmods[-1])}
    with tempfile.TemporaryDirectory(prefix="pvepstore-initrd-") as td:
        root = Path(td)
        for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "lib/modules"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, root / "bin/busybox")
        (root / "bin/sh").symlink_to("busybox")
        loadlist = []
        for rel in mods + pmods:
            _unpack_module(kernel.moddir / rel, root / "lib/modules" / _strip_ext(rel))
            if rel in mods:
                loadlist.append(_strip_ext(rel))
        if kmod_modules is not None:
            _install_kmod(kernel, root, kmod_modules, modprobe_d)
        shutil.copy2(ko, root / "lib/modules/pvepstore_oops.ko")
        (root / "etc/modlist").write_text("\n".join(loadlist) + "\n")
        head = (f"BLKDEV='{blkdev}'\nCOUNTER='{counter}'\nPSTORE_PARAMS='{pstore_params}'\n"
                f"PRE_PROBE_WAIT={pre_probe_wait}\n"
                + "".join(f"{k}='{v}'\n" for k, v in names.items()))
        init = INIT_TEMPLATE.replace("#!/bin/busybox sh\n", "#!/bin/busybox sh\n" + head, 1)
        (root / "init").write_text(init)
        os.chmod(root / "init", 0o755)
        (root / "etc/backend.sh").write_text(BACKEND_SH[backend])
        if pre_sh:
            (root / "etc/pre.sh").write_text(pre_sh)
        (root / "etc/events.sh").write_text(events_sh)
        files = subprocess.run(["find", ".", "-print0"], cwd=root, check=True,
                               capture_output=True).stdout
        with open(dest, "wb") as f:
            subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
                           cwd=root, input=files, stdout=f, check=True)
    return dest


# ----------------------------------------------------------------------------
# events -> shell
# ----------------------------------------------------------------------------
def events_to_sh(events: list) -> str:
    """Translate scenario events to guest shell.

    Event forms (tuples or strings):
      "oops" | "warn"                   trigger via /proc/pvepstore_oops
      ("sleep", secs)
      ("rm", "dmesg-pstore_blk-0")      unlink a pstorefs file (erase)
      ("pmsg", "text\n")                one write(2) of text to /dev/pmsg0
      ("pmsg_lines", n, prefix)         n separate writes "prefix NNNN ....\n" (64 bytes each)
      ("kmsg_lines", n, prefix)         n lines written to /dev/kmsg (printk)
      "panic"                           echo c > /proc/sysrq-trigger
      "reboot" | "poweroff"             reboot -f / poweroff -f right now
      ("view", tag)                     dump the pstorefs view now
      "remount"                         umount + mount pstorefs again
      ("sysctl", key, value)            e.g. ("sysctl", "kernel.panic", 0)
      ("sh", "command", "label")        any shell command (logged with its label)
    """
    lines = []
    for ev in events:
        kind = ev if isinstance(ev, str) else ev[0]
        if kind == "oops":
            lines.append("do_oops")
        elif kind == "warn":
            lines.append("do_warn")
        elif kind == "sleep":
            lines.append(f"sleep {ev[1]}")
        elif kind == "rm":
            lines.append(f'log "event rm {ev[1]}"; rm -v /sys/fs/pstore/{ev[1]} > /dev/ttyS0 2>&1; out "==RM-RC {ev[1]} $?=="')
        elif kind == "pmsg":
            txt = ev[1].replace("'", "'\\''")
            lines.append(f"printf '%s' '{txt}' > /dev/pmsg0 || log 'pmsg write failed'")
        elif kind == "pmsg_lines":
            n, prefix = ev[1], ev[2]
            lines.append(
                f"i=1; while [ $i -le {n} ]; do "
                f"printf '%s %04d %s\\n' '{prefix}' $i 'the quick brown fox jumps over the lazy dog.' "
                f"> /dev/pmsg0; i=$((i+1)); done")
        elif kind == "kmsg_lines":
            n, prefix = ev[1], ev[2]
            lines.append(
                f"i=1; while [ $i -le {n} ]; do "
                f"echo \"{prefix} $i pack my box with five dozen liquor jugs\" > /dev/kmsg; "
                f"i=$((i+1)); done")
        elif kind == "panic":
            lines.append('log "event panic"; sh -c "echo c > /proc/sysrq-trigger"; sleep 30')
        elif kind == "reboot":
            lines.append('log "event reboot"; reboot -f; sleep 30')
        elif kind == "poweroff":
            lines.append('log "event poweroff"; poweroff -f; sleep 30')
        elif kind == "view":
            lines.append(f"dump_view {ev[1]}")
        elif kind == "remount":
            lines.append("umount /sys/fs/pstore; mount -t pstore pstore /sys/fs/pstore")
        elif kind == "sysctl":
            lines.append(f'log "event sysctl {ev[1]}={ev[2]}"; '
                         f'echo {ev[2]} > /proc/sys/{ev[1].replace(".", "/")}')
        elif kind == "sh":
            lines.append(f'log "event sh {ev[2] if len(ev) > 2 else ""}"; {ev[1]}')
        else:
            raise ValueError(f"unknown event {ev!r}")
        lines.append(f'out "==EVENT-DONE {kind}=="')
    return "\n".join(lines) + "\n"


def boots_to_sh(boots: list) -> str:
    """Events of the in-process boots of one QEMU process, chosen by $BOOTNO."""
    if len(boots) == 1:
        return events_to_sh(boots[0])
    arms = [f"{i})\n{events_to_sh(evs)};;" for i, evs in enumerate(boots, 1)]
    return "case $BOOTNO in\n" + "\n".join(arms) + "\nesac\n"


# ----------------------------------------------------------------------------
# QEMU
# ----------------------------------------------------------------------------
@dataclass
class Disk:
    path: Path
    bus: str = "virtio"       # "virtio" -> /dev/vda, "scsi" -> /dev/sda
    snapshot: bool = False


@dataclass
class BootResult:
    rc: int | None
    timed_out: bool
    seconds: float
    console: str
    views: dict = field(default_factory=dict)   # tag -> View
    markers: list = field(default_factory=list)  # raw "==...==" marker lines
    killed: bool = False                         # ended by on_poll (e.g. a hung guest)


@dataclass
class View:
    uname: str = ""
    cpu_possible: str = ""
    params: dict = field(default_factory=dict)        # "pstore_blk/parameters/kmsg_size" -> str
    files: dict = field(default_factory=dict)         # name -> bytes
    file_stat: dict = field(default_factory=dict)     # name -> (size, mtime)
    dmesg: str = ""
    modules: list = field(default_factory=list)       # loaded modules (/proc/modules)


def parse_channel(text: str) -> tuple[dict, list]:
    views: dict[str, View] = {}
    markers = []
    cur: View | None = None
    mode = None
    buf: list[str] = []
    fname = None
    for line in text.splitlines():
        line = line.rstrip("\r")
        m = re.fullmatch(r"==(.*)==", line)
        if m and mode is None or (m and m.group(1) in ("END-FILE", "DMESG-END")):
            body = m.group(1)
            markers.append(body)
            if body.startswith("PVEPSTORE-VIEW-BEGIN "):
                cur = View()
                views[body.split(" ", 1)[1]] = cur
            elif body.startswith("PVEPSTORE-VIEW-END"):
                cur = None
            elif cur is not None and body.startswith("UNAME "):
                cur.uname = body[6:]
            elif cur is not None and body.startswith("CPU-POSSIBLE "):
                cur.cpu_possible = body[13:]
            elif cur is not None and body.startswith("MODULES"):
                cur.modules = body[8:].split()
            elif cur is not None and body.startswith("PARAM "):
                parts = body[6:].split(" ", 1)
                cur.params[parts[0]] = parts[1] if len(parts) > 1 else ""
            elif cur is not None and body.startswith("FILE "):
                _, name, size, mtime = body.split(" ")
                fname = name
                cur.file_stat[name] = (int(size), int(mtime))
                mode, buf = "file", []
            elif body == "END-FILE" and cur is not None and mode == "file":
                cur.files[fname] = base64.b64decode("".join(buf))
                mode = None
            elif body == "DMESG-BEGIN" and cur is not None:
                mode, buf = "dmesg", []
            elif body == "DMESG-END" and cur is not None and mode == "dmesg":
                cur.dmesg = base64.b64decode("".join(buf)).decode("utf-8", "replace")
                mode = None
        elif mode is not None:
            buf.append(line.strip())
    return views, markers


def _kill_group(proc: subprocess.Popen):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def ivshmem_args(mem_path: Path, size_mib: int = 1) -> list[str]:
    """Exactly the ivshmem arguments qemu-server generates for ``ivshmem: size=N,name=...``
    (without its bus/addr, which only pins the PCI slot)."""
    return ["-object", f"memory-backend-file,id=ivshmem,share=on,mem-path={mem_path},size={size_mib}M",
            "-device", "ivshmem-plain,memdev=ivshmem"]


OVMF_CODE = Path(os.environ.get("PVEPSTORE_OVMF_CODE", "/usr/share/OVMF/OVMF_CODE_4M.fd"))
OVMF_VARS = Path(os.environ.get("PVEPSTORE_OVMF_VARS", "/usr/share/OVMF/OVMF_VARS_4M.fd"))


def ovmf_args(vars_copy: Path, code: Path | None = None, secure: bool = False) -> list[str]:
    """OVMF as pflash: the read-only code and the VM's own copy of the variable store
    (``secure``: the SMM build, whose pflash only SMM code may write, as qemu-server sets
    for q35 + a secboot/ms code image)."""
    code = code or OVMF_CODE
    sec = ["-global", "driver=cfi.pflash01,property=secure,value=on"] if secure else []
    return sec + ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]


def run_boot(kernel: Kernel, disk: Disk | None, initrd: Path, workdir: Path, tag: str,
             cmdline_extra: str = "", timeout: float = 240, smp: int = 1,
             mem: int = 512, *, extra_args: list[str] = (), no_reboot: bool = True,
             on_poll=None, poll: float = 0.1, machine: str = "pc") -> BootResult:
    """One QEMU process (one boot, or several when ``no_reboot`` is False).

    ``on_poll(channel_text, console_text)`` is called every ``poll`` seconds while
    QEMU runs (e.g. to copy live ivshmem memory); a true return kills QEMU.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    con = workdir / f"{tag}.console.log"
    chan = workdir / f"{tag}.channel.log"
    for p in (con, chan):
        if p.exists():
            p.unlink()
    accel = probe_accel()
    cmdline = ("console=ttyS0,115200 panic=-1 rdinit=/init printk.time=1 "
               "nokaslr no_timer_check " + cmdline_extra).strip()
    dev: list[str] = []
    if disk is not None:
        drive = f"file={disk.path},format=raw,cache=writeback"
        if disk.snapshot:
            drive += ",snapshot=on"
        if disk.bus == "virtio":
            dev = ["-drive", drive + ",if=virtio"]
        elif disk.bus == "scsi":
            dev = ["-device", "virtio-scsi-pci,id=scsi0",
                   "-drive", drive + ",if=none,id=pdisk",
                   "-device", "scsi-hd,drive=pdisk,bus=scsi0.0"]
        else:
            raise ValueError(disk.bus)
    argv = [QEMU, "-accel", accel, "-machine", machine, "-m", str(mem), "-smp", str(smp),
            "-nographic"] + (["-no-reboot"] if no_reboot else []) + [
            "-monitor", "none", "-nic", "none",
            "-serial", f"file:{con}", "-serial", f"file:{chan}",
            "-kernel", str(kernel.image), "-initrd", str(initrd),
            "-append", cmdline] + dev + list(extra_args)
    (workdir / f"{tag}.argv").write_text(" ".join(argv) + "\n")
    t0 = time.monotonic()
    qout = workdir / f"{tag}.qemu.out"
    with open(qout, "wb") as qf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    killed = False
    if on_poll is None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
    else:
        read = lambda p: p.read_text(errors="replace") if p.exists() else ""
        while True:
            try:
                proc.wait(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                pass
            if on_poll(read(chan), read(con)):
                killed = True
                _kill_group(proc)
                break
            if time.monotonic() - t0 > timeout:
                timed_out = True
                _kill_group(proc)
                break
    dt = time.monotonic() - t0
    if qout.stat().st_size == 0:
        qout.unlink()
    console = con.read_text(errors="replace") if con.exists() else ""
    channel = chan.read_text(errors="replace") if chan.exists() else ""
    views, markers = parse_channel(channel)
    return BootResult(proc.returncode, timed_out, dt, console, views, markers, killed)


# ----------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------
def make_blank_image(path: Path, size: int):
    with open(path, "wb") as f:
        f.truncate(size)


def write_mbr(path: Path, start_sector: int, nsectors: int, ptype: int = 0x83):
    """Write a minimal msdos partition table with one primary partition."""
    import struct
    with open(path, "r+b") as f:
        mbr = bytearray(512)
        struct.pack_into("<I", mbr, 440, 0x50564550)  # disk signature "PEVP"
        entry = struct.pack("<B3sB3sII", 0x00, b"\xfe\xff\xff", ptype, b"\xfe\xff\xff",
                            start_sector, nsectors)
        mbr[446:462] = entry
        mbr[510:512] = b"\x55\xaa"
        f.seek(0)
        f.write(mbr)


def copy_sparse(src: Path, dst: Path):
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


def xz_file(src: Path, dst: Path):
    with open(dst, "wb") as f:
        subprocess.run(["xz", "-T1", "-6", "-c", str(src)], stdout=f, check=True)


PSZ_SIGS = {0x43474244: "dmesg", 0x43474246: "console", 0x43474247: "ftrace",
            0x43474243: "pmsg"}


_SIG_RE = re.compile(b"|".join(re.escape(k.to_bytes(4, "little")) for k in PSZ_SIGS))


def scan_signatures(path: Path, offset: int = 0, limit: int = 128 << 20,
                    step: int = 4096) -> list[dict]:
    """Raw scan of psz_buffer headers (sig/datalen/start) at step-aligned offsets."""
    import struct
    hits = []
    with open(path, "rb") as f:
        f.seek(0, 2)
        end = min(f.tell(), offset + limit)
        pos = offset
        # read in chunks, skipping holes cheaply
        chunk = 1 << 20
        while pos < end:
            f.seek(pos)
            data = f.read(min(chunk, end - pos))
            if not data:
                break
            if data.count(0) != len(data):
                for mt in _SIG_RE.finditer(data):
                    o = mt.start()
                    if o % step or o + 12 > len(data):
                        continue
                    sig, datalen, start = struct.unpack_from("<Iii", data, o)
                    hits.append({"off": pos + o - offset, "type": PSZ_SIGS[sig],
                                 "datalen": datalen, "start": start})
            pos += len(data)
    return hits
