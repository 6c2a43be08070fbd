"""ramoops on Proxmox's ivshmem device: what it wants in the guest, captures there, how it is verified.

ramoops sits on the BAR2 of the ``ivshmem`` device (PCI 1af4:1110, 1 MiB):

* ``/etc/modprobe.d/pvepstore.conf``: ``options efi_pstore pstore_disable=Y``;
* ``/etc/pvepstore/ramoops-load.sh``: finds the 1 MiB device, reads BAR2 from sysfs
  ``resource`` and runs ``modprobe ramoops mem_address=<BAR2> mem_size=<size> record_size=0x10000
  console_size=.. pmsg_size=.. ftrace_size=0 max_reason=4 ecc=0`` (console/pmsg 64 KiB only where
  the kernel has the frontend).  No device (the VM was not cold-started since provision): a
  message, never a failed boot;
* ``/etc/systemd/system/pvepstore-ramoops.service`` (+ link): runs it early at every boot,
  before ``systemd-pstore.service`` and ``sysinit.target``;
* the same ``Unlink=no`` drop-in.

Every dump (oops, panic, shutdown, emergency restart) is written synchronously into memory
the host maps (``panic-capable-backends.md``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import rules
from .changes import VerifyResult, run
from .layout import DROPIN, DROPIN_REASON, EFI_PSTORE_OFF, HEADER, MODPROBE_CONF, PSTORE_DROPIN
from .plan import GuestWishes, WantedFile
from .probe import IVSHMEM_BYTES, KMOD_BLK, KMOD_RAMOOPS, Capability, Problem, ProbeReport, _int

TARGET = "ivshmem"
MODULE = KMOD_RAMOOPS
UNIT = "/etc/systemd/system/pvepstore-ramoops.service"
UNIT_LINK = "/etc/systemd/system/sysinit.target.wants/pvepstore-ramoops.service"
LOADER = "/etc/pvepstore/ramoops-load.sh"
SERVICE = "pvepstore-ramoops.service"
COLD_START = ("the ivshmem device is not in this boot: Proxmox adds it at the VM's next cold start "
              "(stop + start; a reboot inside the guest is not enough), and the unit loads ramoops then")


@dataclass(frozen=True)
class RamoopsSettings:
    """ramoops on the ivshmem device; sizes in bytes (``ramoops_params`` is what the host reader needs)."""

    mem_size: int = IVSHMEM_BYTES
    record_size: int = 0x10000
    console_size: int = 0
    pmsg_size: int = 0
    max_reason: int = 4

    def ramoops_params(self) -> dict:
        return {"mem_size": self.mem_size, "record_size": self.record_size, "console_size": self.console_size,
                "ftrace_size": 0, "pmsg_size": self.pmsg_size}

    def module_args(self) -> str:
        """modprobe arguments after ``mem_address=``/``mem_size=`` (which come from the device)."""
        return (f"record_size=0x{self.record_size:x} console_size=0x{self.console_size:x} "
                f"pmsg_size=0x{self.pmsg_size:x} ftrace_size=0 max_reason={self.max_reason} ecc=0")

    def to_json(self) -> dict:
        return {"backend": TARGET, **self.ramoops_params(), "max_reason": self.max_reason, "ecc": 0}


def settings(r: ProbeReport, *, kmsg_size: int = 64, max_reason: int | None = None) -> RamoopsSettings:
    """The settings for this guest (``kmsg_size`` does not apply: records are 64 KiB); ValueError on bad options."""
    if max_reason not in (None, 4):
        raise ValueError("the ivshmem backend always uses max_reason=4 (it keeps shutdown dumps)")
    return RamoopsSettings(console_size=0x10000 if r.frontends.get("console") else 0,
                           pmsg_size=0x10000 if r.frontends.get("pmsg") else 0)


def files(s: RamoopsSettings) -> tuple[WantedFile, ...]:
    loader = ("#!/bin/sh\n" + HEADER +
              "# Loads ramoops on the BAR2 of Proxmox's ivshmem device (PCI 1af4:1110, the 1 MiB one).\n"
              "# Never fails the boot: without the device (the VM was not cold-started since\n"
              "# `ivshmem:` was set) it only says so.\n"
              "PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"
              "[ \"$(cat /sys/module/pstore/parameters/backend 2>/dev/null)\" = ramoops ] && exit 0\n"
              "for d in /sys/bus/pci/devices/*; do\n"
              "    [ \"$(cat \"$d/vendor\" 2>/dev/null)\" = 0x1af4 ] && [ \"$(cat \"$d/device\" 2>/dev/null)\" = 0x1110 ] || continue\n"
              "    set -- $(sed -n 3p \"$d/resource\")\n"
              "    [ $# -ge 2 ] && [ $(($2 - $1 + 1)) -eq " + str(s.mem_size) + " ] || continue\n"
              "    if [ -e \"$d/driver\" ]; then\n"
              "        echo \"pvepstore: ${d##*/} is claimed by $(basename \"$(readlink \"$d/driver\")\"): ramoops not loaded\"\n"
              "        exit 0\n"
              "    fi\n"
              f"    modprobe ramoops mem_address=$1 mem_size={s.mem_size} {s.module_args()} || exit 0\n"
              "    echo \"pvepstore: ramoops on ${d##*/} BAR2 $1: backend $(cat /sys/module/pstore/parameters/backend 2>/dev/null)\"\n"
              "    exit 0\n"
              "done\n"
              "echo \"pvepstore: no 1 MiB ivshmem device (PCI 1af4:1110): ramoops not loaded; Proxmox adds it at the\"\n"
              "echo \"pvepstore: VM's next cold start (stop + start), a reboot inside the guest is not enough\"\n")
    unit = (HEADER +
            "[Unit]\n"
            "Description=pvepstore: ramoops on the ivshmem device\n"
            "DefaultDependencies=no\n"
            "After=systemd-modules-load.service\n"
            "Before=systemd-pstore.service sysinit.target shutdown.target\n"
            "Conflicts=shutdown.target\n\n"
            "[Service]\n"
            "Type=oneshot\n"
            "RemainAfterExit=yes\n"
            "TimeoutStartSec=300\n"  # a slow host must not fail the unit
            f"ExecStart=/bin/sh {LOADER}\n\n"
            "[Install]\n"
            "WantedBy=sysinit.target\n")
    return (WantedFile(MODPROBE_CONF, (HEADER + EFI_PSTORE_OFF).encode(),
                       reason="keep efi_pstore out of pstore's backend slot"),
            WantedFile(LOADER, loader.encode(), mode="755",
                       reason="find the ivshmem device and load ramoops on its BAR2"),
            WantedFile(UNIT, unit.encode(), reason="load ramoops early at every boot, before systemd-pstore"),
            WantedFile(UNIT_LINK, link=UNIT),
            WantedFile(PSTORE_DROPIN, DROPIN.encode(), reason=DROPIN_REASON))


def configured(r: ProbeReport) -> bool:
    """ramoops is registered right now, on the ivshmem BAR."""
    return r.ramoops_on_ivshmem


def params_match(r: ProbeReport, s: RamoopsSettings) -> bool:
    p = r.ramoops_params
    want = {"mem_size": s.mem_size, "record_size": s.record_size, "console_size": s.console_size,
            "pmsg_size": s.pmsg_size, "ftrace_size": 0, "max_reason": s.max_reason, "ecc": 0}
    return r.ramoops_on_ivshmem and all(_int(p.get(k)) == v for k, v in want.items())


def _legacy_loaders(r: ProbeReport) -> list[Problem]:
    """An older ramoops setup would load ramoops first, with its own parameters."""
    loads = [x["path"] for x in r.legacy if any(re.search(r"ramoops|memmap=", ln) for ln in x["lines"])]
    if not loads:
        return []
    return [Problem("legacy-ramoops", "blocker", "an older ramoops setup would load ramoops with its own "
                    f"parameters ({', '.join(loads[:3])})", "remove it with --remove-legacy (backed up; undo "
                    "restores it)")]


def wishes(r: ProbeReport, s: RamoopsSettings) -> GuestWishes:
    w = GuestWishes(backend=TARGET, settings=s.to_json(), files=files(s), module=MODULE,
                    cold_start_note=COLD_START, legacy_blockers=_legacy_loaders(r))
    # load ramoops on the device now when pstore's slot can be had; else say when it will be
    if r.ivshmem is None:
        w.cold_start_required = True
    elif r.backend is None:
        w.actions.append(run("load-ramoops", "load ramoops on the ivshmem device now"))
    elif r.backend == MODULE:
        if not params_match(r, s):
            w.actions.append(run("reload-ramoops", "ramoops runs with other parameters"))
    elif r.backend == KMOD_BLK:
        w.actions.append(run("unload-module", "switching from pstore_blk"))
        w.actions.append(run("load-ramoops", "load ramoops on the ivshmem device now"))
    else:
        w.reboot_required = True
    return w


def costs(r: ProbeReport) -> list[str]:
    return ["the ivshmem device is a local resource: Proxmox refuses live migration of the VM",
            "/dev/shm is lost when the host reboots: pvepstore's hookscript keeps a durable copy at "
            "every VM stop (records of a VM still running when the host crashes are lost)",
            "each guest boot writes its first dump into zone 0 again: collect promptly (the sweep; "
            "systemd-pstore also copies records to /var/lib/systemd/pstore at boot)"]


def capabilities(r: ProbeReport) -> dict[str, Capability]:
    """Every dump is written synchronously into memory the host maps."""
    if r.ramoops == "missing":
        return rules.none_captured("this kernel has no ramoops (CONFIG_PSTORE_RAM)")
    caps = {
        "oops": Capability("yes", "written at once into the ivshmem memory (panic_on_oops=1: as a panic)"),
        "panic": Capability("yes", "written at panic time; the host reads a hung guest's record from the "
                                   "live shm file"),
        "shutdown": Capability("yes", "clean reboot/poweroff leaves a Shutdown record (max_reason=4)"),
        "emergency_restart": Capability("yes", "sysrq-b and kernel.panic=N reboots leave an Emergency record"),
    }
    rules.frontend_caps(r, caps, "synchronous in memory")
    return caps


def problems(r: ProbeReport) -> list[Problem]:
    return rules.problems_with(r, _problems)


def _problems(r: ProbeReport, add: rules.Add) -> None:
    if r.ramoops == "missing":
        add("no-ramoops", "blocker", f"kernel {r.kernel or '?'} has no ramoops",
            "boot a kernel with CONFIG_PSTORE_RAM (Debian 12's 6.1 has it as a module)")
    d = r.ivshmem
    if d is None:
        other = ", ".join(f"{x.pci} ({x.size} bytes)" for x in r.ivshmem_all)
        add("ivshmem-missing", "warning", "no 1 MiB ivshmem device (PCI 1af4:1110) in this boot"
            + (f"; found {other}" if other else ""),
            "Proxmox adds the device at the VM's next cold start (stop + start, or `pvepstore provision "
            "--restart`); a reboot inside the guest is not enough. The unit loads ramoops from then on")
    elif d.driver:
        add("ivshmem-claimed", "blocker", f"the ivshmem device {d.pci} is claimed by the driver {d.driver}",
            "ramoops needs the memory region for itself: unbind or remove that driver")
    if r.backend == KMOD_BLK:
        add("backend-blk", "fix", "pstore_blk holds pstore's single slot (switching backends)",
            "unload pstore_blk, then load ramoops on the ivshmem device")
    else:
        rules.slot_problems(r, MODULE, add, erst_hint="remove the acpi-erst device from the VM")
    rules.registration_problems(
        r, add, module_present=r.ramoops != "missing", ours=MODULE,
        other_params=("ramoops-params", "ramoops runs with other parameters (mem_address="
                      f"{r.ramoops_params.get('mem_address', '?')})", "reload ramoops on the ivshmem device"),
        unregistered=("not-configured", "ramoops is not loaded on the ivshmem device",
                      "a boot-time unit that loads ramoops on the device's BAR2"))


def assess(r: ProbeReport) -> ProbeReport:
    return rules.assess(r, target=TARGET, configured=configured, capabilities=capabilities, problems=problems,
                        costs=costs)


def _checks(r: ProbeReport, s: dict, add: rules.CheckAdd) -> None:
    d = r.ivshmem
    add("ivshmem device", d is not None and not d.driver,
        f"{d.pci} BAR2 0x{d.start:x} ({d.size} bytes)" + (f", claimed by {d.driver}" if d.driver else "")
        if d else "not in this boot: Proxmox adds it at the VM's next cold start (stop + start)")
    add("backend", r.backend == MODULE, f"backend is {r.backend or 'none'}")
    p = r.ramoops_params
    want = {"mem_address": d.start if d else None, "mem_size": s.get("mem_size"),
            "record_size": s.get("record_size"), "console_size": s.get("console_size"),
            "pmsg_size": s.get("pmsg_size"), "ftrace_size": 0, "max_reason": s.get("max_reason", 4), "ecc": 0}
    for k, v in want.items():
        add(f"param {k}", v is not None and _int(p.get(k)) == v, f"{p.get(k, 'unset')} (want {v})")


def verify(r: ProbeReport) -> VerifyResult:
    """ramoops registered on the ivshmem BAR with the manifest's parameters, its unit enabled."""
    return rules.verify_with(r, _checks, boot_link=UNIT_LINK, service=r.units.get(SERVICE, {}), service_name=SERVICE)
