"""efi_pstore: what it wants in a UEFI guest, what it captures there, how it is verified.

efi_pstore writes each dump as UEFI variables through the firmware's runtime services; OVMF
keeps them in the VM's ``efidisk0`` (panic-capable-backends.md, efi-pstore).  In the guest:

* no ``options efi_pstore pstore_disable=Y`` (the shared modprobe file of the other backends is
  not wanted: the plan engine removes or restores it) and no pstore_blk/ramoops units (idem);
* ``/etc/pvepstore/efi-load.sh`` + ``pvepstore-efi.service``: early at every boot, caps the dump
  size (``pstore.kmsg_bytes``, read at dump time; set through pstorefs' ``kmsg_bytes=`` mount
  option, the module parameter is read-only), sets ``printk.always_kmsg_dump`` as configured
  and loads efi_pstore before systemd-pstore (Debian 12's systemd-pstore.service also pulls
  ``modprobe@efi_pstore``; the unit makes it independent of that);
* the same ``Unlink=no`` drop-in: records stay until the host has archived them and clears them.

The kernel names the backend ``efi`` in ``/sys/module/pstore/parameters/backend``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import rules
from .changes import VerifyResult, run
from .layout import DROPIN, DROPIN_REASON, HEADER, MODPROBE_CONF, PSTORE_DROPIN
from .plan import GuestWishes, WantedFile
from ..pstore.efi import NAME_FROM_6_2, NAME_UNTIL_6_1, name_for_release
from .probe import (KMOD_BLK, KMOD_EFI, KMOD_RAMOOPS, Capability, ProbeReport, cmdline_disables_efi_pstore,
                    disables_efi_pstore)

TARGET = KMOD_EFI
MODULE = KMOD_EFI
# psinfo->name of efi_pstore (drivers/firmware/efi/efi-pstore.c), as /sys/module/pstore/parameters/backend
# shows it: "efi" up to 6.1, "efi_pstore" from 6.2 (measured: Debian 12's 6.1, Debian 13's 6.12) --
# the same name as in its files (dmesg-<name>-<id>)
PSTORE_NAMES = (NAME_UNTIL_6_1, NAME_FROM_6_2)
UNIT = "/etc/systemd/system/pvepstore-efi.service"
UNIT_LINK = "/etc/systemd/system/sysinit.target.wants/pvepstore-efi.service"
LOADER = "/etc/pvepstore/efi-load.sh"
SERVICE = "pvepstore-efi.service"
STORE_NOTE = "each dump is ~14 variables / ~15 KB of OVMF's ~256 KiB variable store"


@dataclass(frozen=True)
class EfiSettings:
    kmsg_bytes: int = 10240
    always_kmsg_dump: bool = False

    def to_json(self) -> dict:
        return {"backend": TARGET, "kmsg_bytes": self.kmsg_bytes, "always_kmsg_dump": self.always_kmsg_dump}


def settings(r: ProbeReport, *, kmsg_bytes: int = 10240, always_kmsg_dump: bool = False, **_ignored) -> EfiSettings:
    if not 1024 <= kmsg_bytes <= 65536:
        raise ValueError("efi_pstore.kmsg_bytes must be 1024..65536")
    return EfiSettings(kmsg_bytes, bool(always_kmsg_dump))


def files(s: EfiSettings) -> tuple[WantedFile, ...]:
    loader = ("#!/bin/sh\n" + HEADER +
              "# Caps efi_pstore's dumps and loads it before systemd-pstore; never fails the boot.\n"
              "PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"
              "[ -d /sys/firmware/efi ] || { echo \"pvepstore: not booted through UEFI: no efi_pstore\"; exit 0; }\n"
              # the kmsg_bytes module parameter is read-only (0444); pstorefs' mount option sets it
              "if grep -qs ' /sys/fs/pstore pstore ' /proc/mounts; then\n"
              f"    mount -o remount,kmsg_bytes={s.kmsg_bytes} /sys/fs/pstore\n"
              f"else mount -t pstore -o kmsg_bytes={s.kmsg_bytes} pstore /sys/fs/pstore\n"
              "fi\n"
              f"echo {'Y' if s.always_kmsg_dump else 'N'} > /sys/module/printk/parameters/always_kmsg_dump 2>/dev/null\n"
              "modprobe efi_pstore 2>/dev/null\n"
              "echo \"pvepstore: pstore backend $(cat /sys/module/pstore/parameters/backend 2>/dev/null)\"\n")
    unit = (HEADER +
            "[Unit]\n"
            "Description=pvepstore: efi_pstore (dumps into the UEFI variable store)\n"
            "DefaultDependencies=no\n"
            "ConditionPathExists=/sys/firmware/efi\n"
            "After=systemd-modules-load.service\n"
            "Before=systemd-pstore.service sysinit.target shutdown.target\n"
            "Conflicts=shutdown.target\n\n"
            "[Service]\n"
            "Type=oneshot\n"
            "RemainAfterExit=yes\n"
            f"ExecStart=/bin/sh {LOADER}\n\n"
            "[Install]\n"
            "WantedBy=sysinit.target\n")
    return (WantedFile(LOADER, loader.encode(), mode="755", reason="cap the dump size and load efi_pstore"),
            WantedFile(UNIT, unit.encode(), reason="load efi_pstore early at every boot, before systemd-pstore"),
            WantedFile(UNIT_LINK, link=UNIT),
            WantedFile(PSTORE_DROPIN, DROPIN.encode(), reason=DROPIN_REASON))


def configured(r: ProbeReport) -> bool:
    return r.backend in PSTORE_NAMES


def pstore_name(r: ProbeReport) -> str:
    """The name efi_pstore registers under on this guest's kernel."""
    return name_for_release(r.kernel) or NAME_UNTIL_6_1


def disabled_elsewhere(r: ProbeReport) -> bool:
    """pstore_disable=Y set by something other than pvepstore's shared modprobe file (which the plan
    takes away): another modprobe.d line or the kernel command line.  That one must go by hand."""
    own = r.files.get(MODPROBE_CONF)
    ours = sum(map(disables_efi_pstore, (own.content or b"").decode("utf-8", "replace").splitlines())) if own else 0
    if sum(map(disables_efi_pstore, r.modprobe_config)) > ours:
        return True
    return cmdline_disables_efi_pstore(r.cmdline)


def loads_now(r: ProbeReport) -> bool:
    """efi_pstore can register during apply (the change script's ``load-efi``): pstore's slot is free or
    freed by the plan (pstore_blk, ramoops unloaded), efi_pstore is a module (a built-in one ran its
    init at boot, once) and nothing but pvepstore's own modprobe option, which the plan removes,
    disables it."""
    return (r.efi and r.efi_pstore_available and r.backend in (None, KMOD_BLK, KMOD_RAMOOPS)
            and KMOD_EFI not in r.builtin_modules and r.loaded.get(KMOD_EFI) != "builtin"
            and not disabled_elsewhere(r))


def wishes(r: ProbeReport, s: EfiSettings) -> GuestWishes:
    w = GuestWishes(backend=TARGET, settings=s.to_json(), files=files(s), module=MODULE)
    if r.backend == KMOD_BLK:
        w.actions.append(run("unload-module", "switching from pstore_blk"))
    elif r.backend == KMOD_RAMOOPS:
        w.actions.append(run("unload-ramoops", "switching from the ivshmem backend"))
    # efi_pstore registers at module load only: load-efi (re)loads it through the unit once the
    # plan's files are in place; where it cannot (built in, disabled by another option, the slot
    # held by something pvepstore does not unload) the guest's next boot is the activation
    if not configured(r):
        if loads_now(r):
            w.actions.append(run("load-efi", "register efi_pstore now (pstore's slot is free)"))
        else:
            w.reboot_required = True
    elif not in_effect(r, s):
        # registered already (Debian's systemd-pstore loads it on every UEFI guest): the loader only
        # sets the dump size and always_kmsg_dump, which pstore reads at dump time -- run it now
        w.actions.append(run("load-efi", "apply kmsg_bytes and always_kmsg_dump now (efi_pstore is registered)"))
    return w


def in_effect(r: ProbeReport, s: EfiSettings) -> bool:
    return r.kmsg_bytes == s.kmsg_bytes and r.always_kmsg_dump is s.always_kmsg_dump


def costs(r: ProbeReport) -> list[str]:
    return [f"space in the VM's UEFI variable store ({STORE_NOTE}); a full store refuses new dumps "
            "(and new boot entries) until the host has archived and the guest cleared the records",
            "no migration cost: the records live on efidisk0 and move with the VM"]


def capabilities(r: ProbeReport) -> dict[str, Capability]:
    if not r.efi:
        return rules.none_captured("not booted through UEFI (bios: seabios?)")
    if not r.efi_pstore_available:
        return rules.none_captured("this kernel has no efi_pstore (CONFIG_EFI_VARS_PSTORE)")
    via = "written at once through the firmware's SetVariable into efidisk0"
    if r.always_kmsg_dump:  # what the guest does right now (apply sets it as configured)
        shutdown = Capability("yes", "clean reboot/poweroff leave a Shutdown dump (printk.always_kmsg_dump=Y)")
        emergency = Capability("yes", "sysrq-b / panic=N reboots leave an Emergency dump "
                                      "(printk.always_kmsg_dump=Y)")
    else:
        opt_in = ("printk.always_kmsg_dump is N: efi_pstore.always_kmsg_dump: true turns it on (off by "
                  "default: " + STORE_NOTE + ")")
        shutdown = Capability("no", "no clean reboot/poweroff dump: " + opt_in)
        emergency = Capability("no", "no sysrq-b / panic=N reboot dump: " + opt_in)
    caps = {"oops": Capability("yes", via),
            "panic": Capability("yes", via + " (panic time)"),
            "shutdown": shutdown,
            "emergency_restart": emergency,
            "console": Capability("no", "efi_pstore stores dmesg dumps only"),
            "pmsg": Capability("no", "efi_pstore stores dmesg dumps only")}
    return caps


def problems(r: ProbeReport):
    return rules.problems_with(r, _problems)


def _problems(r: ProbeReport, add: rules.Add) -> None:
    if not r.efi:
        add("not-uefi", "blocker", "the guest did not boot through UEFI (/sys/firmware/efi is missing)",
            "efi_pstore needs bios: ovmf and a UEFI-installed guest")
    elif not r.efi_pstore_available:
        add("no-efi-pstore", "blocker", f"kernel {r.kernel or '?'} has no efi_pstore",
            "boot a kernel with CONFIG_EFI_VARS_PSTORE (Debian 12's 6.1 has it as a module)")
    if r.efi_pstore_blacklisted:
        add("efi-pstore-blacklisted", "warning", "efi_pstore is blacklisted in modprobe.d",
            "remove the blacklist line (pvepstore's unit loads it by name, which a blacklist does not stop)")
    if r.efi_pstore_disabled:
        add("efi-pstore-disabled", "fix", "efi_pstore is disabled (pstore_disable=Y)",
            "another modprobe option or efi_pstore.pstore_disable= on the kernel command line must go by "
            "hand; reboot" if disabled_elsewhere(r) else "the plan removes pvepstore's own modprobe option "
            "and reloads efi_pstore")
    if r.backend == "erst":
        add("backend-erst", "blocker", "the built-in ACPI ERST backend holds pstore's single slot",
            "remove the acpi-erst device from the VM")
    elif r.backend and not configured(r) and r.backend not in (KMOD_BLK, KMOD_RAMOOPS):
        add("backend-other", "warning", f"backend {r.backend} holds pstore's single slot", "")
    elif r.backend in (KMOD_BLK, KMOD_RAMOOPS):
        add("backend-switch", "fix", f"{r.backend} holds pstore's single slot (switching backends)",
            "unload it; efi_pstore registers " + ("then" if loads_now(r) else "at the next boot"))
    if r.efi and r.efi_pstore_available and not configured(r) and not r.efi_pstore_disabled:
        add("not-configured", "fix", "efi_pstore is not registered", "a boot-time unit that loads it")


def assess(r: ProbeReport) -> ProbeReport:
    return rules.assess(r, target=TARGET, configured=configured, capabilities=capabilities, problems=problems,
                        costs=costs)


def _checks(r: ProbeReport, s: dict, add: rules.CheckAdd) -> None:
    add("uefi", r.efi, "/sys/firmware/efi present" if r.efi else "not booted through UEFI")
    add("backend", configured(r), f"backend is {r.backend or 'none'} (want {pstore_name(r)})")
    add("efi_pstore enabled", not r.efi_pstore_disabled,
        "pstore_disable=Y is set" if r.efi_pstore_disabled else "not disabled")
    # the loader sets both at every boot; pstore reads them at dump time, so they must hold now
    want = s.get("kmsg_bytes")
    if isinstance(want, int):
        add("kmsg_bytes", r.kmsg_bytes == want, f"pstore.kmsg_bytes is {r.kmsg_bytes} (want {want})")
    if s.get("always_kmsg_dump"):
        add("always_kmsg_dump", r.always_kmsg_dump is True,
            "printk.always_kmsg_dump is " + {True: "Y", False: "N", None: "unknown"}[r.always_kmsg_dump] + " (want Y)")


def verify(r: ProbeReport) -> VerifyResult:
    """efi_pstore registered with the configured dump settings, its unit enabled and active; the shared
    checks but "efi_pstore kept out" (asked of the backends efi_pstore competes with)."""
    return rules.verify_with(r, _checks, boot_link=UNIT_LINK, service=r.units.get(SERVICE, {}),
                             service_name=SERVICE, efi_kept_out=False)
