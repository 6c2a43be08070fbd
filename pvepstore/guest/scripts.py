"""The fixed POSIX ``sh`` scripts pvepstore runs in a guest (sent on stdin, see transport).

Arguments arrive only as positional parameters and are always used
double-quoted.  Output uses one line per item, ``KEY FIELD...`` with every
field base64-encoded (``e KEY VALUE...``), so nothing the guest prints can be
confused with framing; :mod:`pvepstore.guest.wire` parses it with bounds.

The scripts need only coreutils, util-linux, kmod and (for apply/undo)
systemd -- what a Debian or Fedora server has.  They must run as root.
"""

from __future__ import annotations

STATE_DIR = "/var/lib/pvepstore"
MANIFEST = f"{STATE_DIR}/manifest.json"
BACKUP_DIR = f"{STATE_DIR}/backup"
PSTORE_DIR = "/sys/fs/pstore"

PRELUDE = r"""set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C
export PATH LC_ALL
umask 022
e() { k=$1; shift; printf '%s' "$k"; for v in "$@"; do printf ' %s' "$(printf '%s' "$v" | base64 -w0)"; done; printf '\n'; }
sha() { if [ -L "$1" ]; then printf 'link:%s' "$(readlink -- "$1")"; elif [ -f "$1" ]; then sha256sum < "$1" | cut -c1-64; elif [ -e "$1" ]; then printf 'other'; else printf -- '-'; fi; }
[ "$(id -u)" = 0 ] || { echo "pvepstore: not root in the guest" >&2; exit 77; }
"""

# $1 serial  $2 per-file cap (bytes)
PROBE = PRELUDE + r"""
SERIAL=$1; CAP=$2
case $SERIAL in *[!A-Za-z0-9_-]*|'') echo "bad serial" >&2; exit 2;; esac
f() {  # a file: path, sha, "mode uid gid size", first CAP bytes
    if [ -L "$1" ]; then e link "$1" "$(readlink -- "$1")"; return 0; fi
    [ -f "$1" ] || return 0
    printf 'file %s %s %s %s\n' "$(printf '%s' "$1" | base64 -w0)" \
        "$(sha "$1" | base64 -w0)" "$(stat -c '%a %u %g %s' -- "$1" | base64 -w0)" \
        "$(head -c "$CAP" -- "$1" | base64 -w0)"
}
rel=$(uname -r)
e uname "$rel" "$(uname -m)"
e osrelease "$(head -c 4096 /etc/os-release 2>/dev/null)"
e cmdline "$(head -c 4096 /proc/cmdline)"
e boot_id "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
for m in pstore_blk pstore_zone efi_pstore ramoops; do
    e modfile "$m" "$(modinfo -F filename "$m" 2>/dev/null | head -n 1)"
    [ -d "/sys/module/$m" ] && e loaded "$m" "$( [ -e "/sys/module/$m/initstate" ] && cat "/sys/module/$m/initstate" || echo builtin)"
done
e builtin "$(grep -E '/(pstore|pstore_zone|pstore_blk|ramoops|efi-pstore|efi_pstore)\.ko' "/lib/modules/$rel/modules.builtin" 2>/dev/null | head -c 2048)"
if [ -r "/boot/config-$rel" ]; then
    e kconfig "$(grep -E '^(# )?CONFIG_(PSTORE[A-Z0-9_]*|EFI_VARS_PSTORE[A-Z_]*|ACPI_APEI[A-Z_]*|VIRTIO_BLK)[ =]' "/boot/config-$rel" | head -c 8192)"
elif [ -r /proc/config.gz ]; then
    e kconfig "$(zcat /proc/config.gz | grep -E '^(# )?CONFIG_(PSTORE[A-Z0-9_]*|EFI_VARS_PSTORE[A-Z_]*|ACPI_APEI[A-Z_]*|VIRTIO_BLK)[ =]' | head -c 8192)"
fi
e backend "$(cat /sys/module/pstore/parameters/backend 2>/dev/null)"
# pstore.kmsg_bytes and printk.always_kmsg_dump: what efi_pstore's loader sets (read at dump time)
for p in /sys/module/pstore_blk/parameters/* /sys/module/ramoops/parameters/* /sys/module/efi_pstore/parameters/pstore_disable \
         /sys/module/pstore/parameters/kmsg_bytes /sys/module/printk/parameters/always_kmsg_dump; do
    [ -f "$p" ] && e param "${p#/sys/module/}" "$(head -c 256 "$p" 2>/dev/null)"
done
[ -d /sys/firmware/efi ] && e efi yes
[ -e /sys/firmware/acpi/tables/ERST ] && e erst yes
# Proxmox's ivshmem device (PCI 1af4:1110): BAR2 (line 3 of resource) is the shared memory
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor" 2>/dev/null)" = 0x1af4 ] && [ "$(cat "$d/device" 2>/dev/null)" = 0x1110 ] || continue
    drv=; [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    e ivshmem "${d##*/}" "$(sed -n 3p "$d/resource" 2>/dev/null)" "$drv"
done
e modprobe_c "$(modprobe -c 2>/dev/null | grep -E '^(blacklist|options|install|softdep) +(pstore|pstore_blk|pstore_zone|efi_pstore|ramoops)( |$)' | head -c 8192)"
# the mount options carry kmsg_bytes= when it is not the kconfig default (6.1 has no kmsg_bytes parameter)
e pstorefs "$(awk '$2=="/sys/fs/pstore"{print $3}' /proc/mounts | head -n 1)" "$(awk '$2=="/sys/fs/pstore"{print $4}' /proc/mounts | head -n 1 | head -c 512)"
e pstore_files "$(ls -1A /sys/fs/pstore 2>/dev/null | wc -l)"
e sysctl "$(cat /proc/sys/kernel/panic_on_oops 2>/dev/null)" "$(cat /sys/kernel/kexec_crash_loaded 2>/dev/null)" \
    "$(cat /sys/module/kernel/parameters/crash_kexec_post_notifiers 2>/dev/null)" "$(cat /proc/sys/kernel/panic 2>/dev/null)"
if command -v systemctl >/dev/null 2>&1; then
    for u in systemd-pstore.service pvepstore-blk.service pvepstore-ramoops.service pvepstore-efi.service; do
        # Result says why a failed unit failed (timeout, exit-code) without reading the journal
        e unit "$u" "$(systemctl is-enabled "$u" 2>/dev/null)" "$(systemctl is-active "$u" 2>/dev/null)" \
            "$(systemctl show -p Result --value "$u" 2>/dev/null)"
    done
    e pstore_conf "$(systemd-analyze cat-config systemd/pstore.conf 2>/dev/null | head -c 16384)"
fi
for t in update-grub update-initramfs blkdiscard blkid systemd-analyze journalctl; do
    command -v "$t" >/dev/null 2>&1 && e tool "$t"
done
for d in /etc/modprobe.d /etc/systemd/system /etc/systemd/system/sysinit.target.wants /etc/systemd/pstore.conf.d /etc/pvepstore /var/lib/pvepstore; do
    [ -d "$d" ] && e dir "$d"
done
# managed files, the manifest, and configuration that mentions ramoops/memmap/pstore
for p in /etc/modprobe.d/pvepstore.conf /etc/systemd/system/pvepstore-blk.service \
         /etc/systemd/system/sysinit.target.wants/pvepstore-blk.service \
         /etc/systemd/pstore.conf.d/99-pvepstore.conf /var/lib/pvepstore/manifest.json /var/lib/pvepstore/paths \
         /etc/systemd/system/pvepstore-ramoops.service /etc/systemd/system/sysinit.target.wants/pvepstore-ramoops.service \
         /etc/pvepstore/ramoops-load.sh /etc/systemd/system/systemd-pstore.service \
         /etc/systemd/system/pvepstore-efi.service /etc/systemd/system/sysinit.target.wants/pvepstore-efi.service \
         /etc/pvepstore/efi-load.sh; do
    f "$p"
done
if [ -f /var/lib/pvepstore/paths ]; then  # every file in the manifest, one per line
    head -n 200 /var/lib/pvepstore/paths | while IFS= read -r p; do
        case $p in /etc/*) f "$p";; esac
    done
fi
for p in /etc/default/grub /etc/default/grub.d/*.cfg /etc/modules /etc/modules-load.d/*.conf \
         /etc/modprobe.d/*.conf /etc/initramfs-tools/modules /etc/kernel/cmdline \
         /etc/systemd/pstore.conf /etc/systemd/pstore.conf.d/*.conf; do
    case $p in /etc/modprobe.d/pvepstore.conf|/etc/systemd/pstore.conf.d/99-pvepstore.conf) continue;; esac
    [ -f "$p" ] && grep -qsE 'ramoops|memmap=|pstore|always_kmsg_dump' -- "$p" && f "$p"
done
# the pstore disk
dev="/dev/disk/by-id/virtio-$SERIAL"
if [ -e "$dev" ]; then
    real=$(readlink -f -- "$dev"); name=${real##*/}
    e disk "$dev" "$real" "$(blockdev --getsize64 "$real" 2>/dev/null)" \
        "$(cat "/sys/class/block/$name/serial" 2>/dev/null)" "$(cat "/sys/class/block/$name/ro" 2>/dev/null)"
    e disk_holders "$(ls -1 "/sys/class/block/$name/holders" 2>/dev/null | head -c 1024)"
    e disk_parts "$(cd "/sys/class/block/$name" 2>/dev/null && ls -1d "$name"* 2>/dev/null | head -c 1024)"
    e disk_mounts "$(awk -v d="$real" '$1==d{print $2}' /proc/mounts | head -c 1024)" "$(awk -v d="$real" '$1==d' /proc/swaps | head -c 256)"
    e disk_blkid "$(blkid -p -o export -- "$real" 2>/dev/null | head -c 2048)"
    printf 'disk_head %s\n' "$(head -c 16 -- "$real" 2>/dev/null | base64 -w0)"
    if [ ! -e "/var/lib/pvepstore/initialized-$SERIAL" ]; then
        n=$(blockdev --getsize64 "$real" 2>/dev/null || echo 0)
        [ "$n" -gt 134217728 ] && n=134217728
        if cmp -s -n "$n" -- "$real" /dev/zero; then e disk_zero yes; else e disk_zero no; fi
    else
        e disk_initialized yes
    fi
fi
e dmesg "$(dmesg 2>/dev/null | grep -E 'pstore|ramoops|efi_pstore|ERST' | tail -n 40 | head -c 8192)"
e end
"""

# $1 per-record cap  $2 total cap
RECORDS = PRELUDE + r"""
CAP=$1; TOTAL=$2; used=0
e pstorefs "$(awk '$2=="/sys/fs/pstore"{print $3}' /proc/mounts | head -n 1)"
for f in /sys/fs/pstore/* /sys/fs/pstore/.[!.]*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    n=${f##*/}
    if [ -L "$f" ] || [ ! -f "$f" ]; then e skip "$n" notfile; continue; fi
    size=$(stat -c %s -- "$f"); mtime=$(stat -c %Y -- "$f")
    want=$size; [ "$want" -gt "$CAP" ] && want=$CAP
    if [ $((used + want)) -gt "$TOTAL" ]; then e skip "$n" total "$size"; continue; fi
    used=$((used + want))
    printf 'rec %s %s %s %s\n' "$(printf '%s' "$n" | base64 -w0)" "$(printf '%s' "$size" | base64 -w0)" \
        "$(printf '%s' "$mtime" | base64 -w0)" "$(head -c "$want" -- "$f" | base64 -w0)"
done
e end
"""

# ($1 $2 $3)... = name size mtime: unlink each only while it is still that record
CLEAR = PRELUDE + r"""
while [ $# -ge 3 ]; do
    n=$1; size=$2; mtime=$3; shift 3
    case $n in */*|.|..|'') e cleared "$n" refused; continue;; esac
    f="/sys/fs/pstore/$n"
    if [ ! -f "$f" ] || [ -L "$f" ]; then e cleared "$n" gone; continue; fi
    if [ "$(stat -c '%s %Y' -- "$f")" != "$size $mtime" ]; then e cleared "$n" changed; continue; fi
    if rm -f -- "$f"; then e cleared "$n" ok; else e cleared "$n" failed; fi
done
e end
"""

# $1 journal tail lines
HISTORY = PRELUDE + r"""
N=$1
e boot_id "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
e uptime "$(cut -d' ' -f1 /proc/uptime)"
e uname "$(uname -r)"
e now "$(date +%s)"
if command -v journalctl >/dev/null 2>&1; then
    e persistent "$( [ -d /var/log/journal ] && echo yes || echo no)"
    e boots "$(journalctl --list-boots --no-pager -q 2>/dev/null | tail -n 20 | head -c 4096)"
    e prev_tail "$(journalctl -b -1 -n "$N" -o short-unix --no-pager -q 2>/dev/null | head -c 16384)"
    e prev_kernel "$(journalctl -b -1 -k -o cat --no-pager -q 2>/dev/null | head -n 3 | grep -m1 '^Linux version' | head -c 512)"
fi
e wtmp "$(last -x -F -n 12 2>/dev/null | grep -E '^(reboot|shutdown|runlevel)' | head -c 4096)"
# each watchdog device's bootstatus (WDIOF_CARDRESET 32: it reset the boot before this one) and identity
e watchdogs "$(for d in /sys/class/watchdog/watchdog*; do
    [ -r "$d/bootstatus" ] || continue
    printf '%s %s %s\n' "${d##*/}" "$(head -c 16 "$d/bootstatus")" "$(head -c 64 "$d/identity" 2>/dev/null)"
done 2>/dev/null | head -n 8 | head -c 1024)"
e end
"""

# $1 text: written to /dev/pmsg0 (the pstore pmsg frontend) where the kernel has one
PMSG = PRELUDE + r"""
if [ ! -c /dev/pmsg0 ]; then e pmsg absent
elif { printf '%s\n' "$1" > /dev/pmsg0; } 2>/dev/null; then e pmsg written
else e pmsg failed
fi
e end
"""

REBOOT = PRELUDE + r"""
e boot_id "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
nohup sh -c 'sleep 1; systemctl reboot || reboot' >/dev/null 2>&1 &
e end
"""

# Apply and undo: a list of operations, 4 positional parameters each:
#   mkdir   PATH  -      -
#   write   PATH  SHA0   MODE:B64CONTENT     (SHA0: sha the file must have now, '-' = absent)
#   link    PATH  SHA0   TARGET
#   remove  PATH  SHA0   -
#   restore PATH  -      BACKUP              (undo: copy BACKUP back over PATH, or remove if BACKUP is '-')
#   rmdir   PATH  -      -                   (only if empty)
#   run     NAME  ARG    ARG2                (a fixed action, see below)
# Pass 1 checks every SHA0 (nothing is changed if one differs: the guest moved on
# since the plan); pass 2 backs up (once) and changes, in order.
CHANGE = PRELUDE + r"""
STATE=/var/lib/pvepstore; BK=$STATE/backup
bkname() { printf '%s' "$1" | sha256sum | cut -c1-24; }
check() {
    while [ $# -ge 4 ]; do
        case $1 in write|link|remove)
            now=$(sha "$2")
            if [ "$now" != "$3" ]; then e mismatch "$2" "$3" "$now"; return 1; fi;;
        esac
        shift 4
    done
}
backup() {  # keep the first original only
    _bk="$BK/$(bkname "$1")"
    if [ ! -e "$_bk" ] && [ ! -L "$_bk" ] && { [ -e "$1" ] || [ -L "$1" ]; }; then
        cp -a -- "$1" "$_bk.tmp" && mv -f -- "$_bk.tmp" "$_bk" || return 1
        e backup "$1" "$_bk"
    fi
}
wipe() {  # $1 serial $2 expected size: only an unused, signature-free disk of ours
    # (shell functions share variables: wipe uses only dev/real/name/n)
    dev="/dev/disk/by-id/virtio-$1"; real=$(readlink -f -- "$dev"); name=${real##*/}
    [ -b "$real" ] || { e fail wipe "no block device $dev"; return 1; }
    [ "$(blockdev --getsize64 "$real")" = "$2" ] || { e fail wipe "size differs"; return 1; }
    if awk -v d="$real" '$1==d{f=1} END{exit !f}' /proc/mounts /proc/swaps; then e fail wipe "mounted"; return 1; fi
    if [ -n "$(ls -A "/sys/class/block/$name/holders" 2>/dev/null)" ]; then e fail wipe "held"; return 1; fi
    if blkid -p -- "$real" >/dev/null 2>&1; then e fail wipe "has a signature"; return 1; fi
    if [ "$(cat /sys/module/pstore/parameters/backend 2>/dev/null)" = pstore_blk ]; then
        e fail wipe "pstore_blk is attached"; return 1; fi
    n=$2; [ "$n" -gt 134217728 ] && n=134217728
    if cmp -s -n "$n" -- "$real" /dev/zero; then e ran wipe "already zero"
    elif blkdiscard -z -l "$n" -- "$real" 2>/dev/null || dd if=/dev/zero of="$real" bs=1M count=$((n / 1048576)) oflag=direct status=none; then
        sync; e ran wipe "zeroed $n"
    else e fail wipe "write failed"; return 1; fi
    : > "$STATE/initialized-$1"
}
action() {
    case $1 in
        daemon-reload) systemctl daemon-reload && e ran "$1" || e fail "$1" "";;
        load-module) systemctl start pvepstore-blk.service 2>/dev/null || modprobe pstore_blk 2>/dev/null
            [ "$(cat /sys/module/pstore/parameters/backend 2>/dev/null)" = pstore_blk ] && e ran "$1" || e fail "$1" "pstore_blk did not register";;
        reload-module) modprobe -r pstore_blk 2>/dev/null; systemctl restart pvepstore-blk.service 2>/dev/null || modprobe pstore_blk 2>/dev/null
            [ "$(cat /sys/module/pstore/parameters/backend 2>/dev/null)" = pstore_blk ] && e ran "$1" || e fail "$1" "pstore_blk did not register";;
        unload-module) if modprobe -r pstore_blk 2>/dev/null; then e ran "$1"; else e fail "$1" "still in use"; fi;;
        load-ramoops) systemctl restart pvepstore-ramoops.service 2>/dev/null
            [ "$(cat /sys/module/pstore/parameters/backend 2>/dev/null)" = ramoops ] && e ran "$1" || e fail "$1" "ramoops did not register";;
        reload-ramoops) modprobe -r ramoops 2>/dev/null; systemctl restart pvepstore-ramoops.service 2>/dev/null
            [ "$(cat /sys/module/pstore/parameters/backend 2>/dev/null)" = ramoops ] && e ran "$1" || e fail "$1" "ramoops did not register";;
        unload-ramoops) if modprobe -r ramoops 2>/dev/null; then e ran "$1"; else e fail "$1" "still in use"; fi;;
        # efi_pstore registers at module load only, and a copy loaded while pstore_disable=Y was set
        # or the slot was taken stays loaded unregistered: unload that one (never a registered one)
        # and let the unit load it with the current modprobe.d (the plan's files are written by now)
        load-efi) [ "$(cat /sys/module/pstore/parameters/backend 2>/dev/null)" = efi ] || modprobe -r efi_pstore 2>/dev/null
            systemctl restart pvepstore-efi.service 2>/dev/null
            [ "$(cat /sys/module/pstore/parameters/backend 2>/dev/null)" = efi ] && e ran "$1" || e fail "$1" "efi_pstore did not register";;
        mark-disk) : > "$STATE/initialized-$2"; e ran "$1";;
        wipe-disk) wipe "$2" "$3" || return 1;;
        update-grub) if command -v update-grub >/dev/null; then update-grub >/dev/null 2>&1 && e ran "$1" || e fail "$1" ""; else e fail "$1" "update-grub not found"; fi;;
        update-initramfs) update-initramfs -u >/dev/null 2>&1 && e ran "$1" || e fail "$1" "";;
        drop-state) rm -rf -- "$STATE"; e ran "$1";;
        *) e fail "$1" "unknown action"; return 1;;
    esac
}
perform() {
    while [ $# -ge 4 ]; do
        op=$1; p=$2; a=$3; b=$4; shift 4
        case $op in
            mkdir) mkdir -p -- "$p" || return 1;;
            write) backup "$p" || return 1
                   mode=${b%%:*}; printf '%s' "${b#*:}" | base64 -d > "$p.pvepstore-tmp" || return 1
                   chmod "$mode" -- "$p.pvepstore-tmp" && mv -f -- "$p.pvepstore-tmp" "$p" || return 1;;
            link)  backup "$p" || return 1; rm -f -- "$p"; ln -s -- "$b" "$p" || return 1;;
            remove) backup "$p" || return 1; rm -f -- "$p" || return 1;;
            restore) rm -f -- "$p"
                   if [ "$b" != - ]; then
                       if [ -e "$b" ] || [ -L "$b" ]; then cp -a -- "$b" "$p" || return 1
                       else e fail restore "$p"; fi
                   fi;;
            rmdir) rmdir -- "$p" 2>/dev/null || true;;
            run)   action "$p" "$a" "$b" || return 1;;
            *) e fail "$op" "unknown operation"; return 1;;
        esac
        e done "$op" "$p"
    done
}
mkdir -p -- "$BK" && chmod 700 -- "$STATE"
exec 9> "$STATE/lock"
flock -w 30 9 || { e fail lock "another pvepstore is working on this guest"; exit 75; }
check "$@" || { e end; exit 3; }
perform "$@" || { e end; exit 4; }
e end
"""
