"""pstore_blk on the pstore disk: what it wants in the guest, what it captures there, how it is verified.

``SERIAL`` is the pstore disk's virtio serial:

* ``/etc/modprobe.d/pvepstore.conf``: ``options pstore_blk blkdev=/dev/disk/by-id/virtio-SERIAL
  best_effort=y kmsg_size=.. max_reason=.. pmsg_size=.. console_size=.. ftrace_size=0``
  (pmsg/console only where the kernel has the frontend) and ``options efi_pstore pstore_disable=Y``;
* ``/etc/systemd/system/pvepstore-blk.service`` (+ its ``sysinit.target.wants`` link):
  after udev coldplug, waits (bounded) for the by-id link, then ``modprobe pstore_blk``;
  ordered before ``systemd-pstore.service`` and ``sysinit.target``.  A missing disk
  costs at most the udev settle time and never fails the boot;
* ``/etc/systemd/pstore.conf.d/99-pvepstore.conf``: ``Unlink=no``.

On a virtual disk pstore_blk keeps non-fatal Oopses only (panics, shutdown and
emergency-restart dumps are never written; ``pstore-blk-format.md`` §6/§10).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import rules
from .changes import VerifyResult, run
from .layout import DROPIN, DROPIN_REASON, EFI_PSTORE_OFF, HEADER, MODPROBE_CONF, PSTORE_DROPIN
from .plan import GuestWishes, WantedFile
from .probe import BY_ID, KMOD_BLK, KMOD_RAMOOPS, Capability, Problem, ProbeReport

TARGET = "pstore_blk"
MODULE = KMOD_BLK
UNIT = "/etc/systemd/system/pvepstore-blk.service"
UNIT_LINK = "/etc/systemd/system/sysinit.target.wants/pvepstore-blk.service"
SERVICE = "pvepstore-blk.service"


@dataclass(frozen=True)
class Settings:
    serial: str
    kmsg_size: int = 64
    max_reason: int = 2
    pmsg_size: int = 0
    console_size: int = 0

    @property
    def blkdev(self) -> str:
        return BY_ID.format(serial=self.serial)

    def to_json(self) -> dict:
        return {"serial": self.serial, "blkdev": self.blkdev, "kmsg_size": self.kmsg_size,
                "max_reason": self.max_reason, "pmsg_size": self.pmsg_size,
                "console_size": self.console_size, "ftrace_size": 0}


def settings(r: ProbeReport, *, kmsg_size: int = 64, max_reason: int | None = None) -> Settings:
    """The settings for this guest (pmsg/console where its kernel has them); ValueError on bad options."""
    max_reason = 2 if max_reason is None else max_reason
    if kmsg_size < 4 or kmsg_size % 4 or not 1 <= max_reason <= 4:
        raise ValueError("kmsg_size must be a multiple of 4 KiB and max_reason 1..4")
    return Settings(serial=r.serial, kmsg_size=kmsg_size, max_reason=max_reason,
                    pmsg_size=64 if r.frontends.get("pmsg") else 0,
                    console_size=64 if r.frontends.get("console") else 0)


def files(s: Settings) -> tuple[WantedFile, ...]:
    modprobe = (HEADER +
                f"options pstore_blk blkdev={s.blkdev} best_effort=y kmsg_size={s.kmsg_size} "
                f"max_reason={s.max_reason} pmsg_size={s.pmsg_size} console_size={s.console_size} "
                "ftrace_size=0\n" + EFI_PSTORE_OFF)
    dev = s.blkdev
    unit = (HEADER +
            "[Unit]\n"
            f"Description=pvepstore: pstore_blk on {dev}\n"
            "DefaultDependencies=no\n"
            "Wants=systemd-udev-trigger.service\n"
            "After=systemd-udev-trigger.service systemd-udevd.service systemd-modules-load.service\n"
            "Before=systemd-pstore.service sysinit.target shutdown.target\n"
            "Conflicts=shutdown.target\n\n"
            "[Service]\n"
            "Type=oneshot\n"
            "RemainAfterExit=yes\n"
            # a slow host (overcommitted, or TCG in CI: 3x slower boots) must not fail the unit:
            # CI once saw this unit fail under a 60 s limit
            "TimeoutStartSec=300\n"
            f"ExecStart=-udevadm settle --timeout=60 --exit-if-exists={dev}\n"
            # pstore_blk opens the disk O_EXCL: a udev probe of the fresh link can hold it for
            # a moment (one e2e run saw the first load fail and a later one succeed).
            f"ExecStart=/bin/sh -c 'if [ -b {dev} ]; then for t in $(seq 30); do "
            f"modprobe pstore_blk && exit 0; sleep 1; done; exit 1; "
            f"else echo \"{dev} missing: pstore_blk not loaded\"; fi'\n\n"
            "[Install]\n"
            "WantedBy=sysinit.target\n")
    return (WantedFile(MODPROBE_CONF, modprobe.encode(),
                       reason="pstore_blk options, efi_pstore kept out of the backend slot"),
            WantedFile(UNIT, unit.encode(), reason="load pstore_blk once the disk's by-id link exists"),
            WantedFile(UNIT_LINK, link=UNIT),
            WantedFile(PSTORE_DROPIN, DROPIN.encode(), reason=DROPIN_REASON))


def configured(r: ProbeReport) -> bool:
    """pstore_blk is registered right now, on this guest's pstore disk."""
    return r.backend == MODULE and r.blk_params.get("blkdev") == r.by_id


def params_match(r: ProbeReport, s: Settings) -> bool:
    p = r.blk_params
    return (p.get("blkdev") == s.blkdev and p.get("best_effort") == "Y"
            and p.get("kmsg_size") == str(s.kmsg_size) and p.get("max_reason") == str(s.max_reason))


def wishes(r: ProbeReport, s: Settings) -> GuestWishes:
    w = GuestWishes(backend=TARGET, settings=s.to_json(), files=files(s), module=MODULE)
    d = r.disk
    w.first_use = d is not None and d.present and not d.initialized
    # the disk: first use only, after re-checks in the guest
    if w.first_use:
        if configured(r) or d.zero or d.head_is_pstore:
            w.actions.append(run("mark-disk", "the disk is clean, or holds pstore records (kept)", arg=r.serial))
        else:
            w.actions.append(run("wipe-disk", "zero stale bytes of an earlier owner (first use; serial, size, "
                                 "signature and mounts re-checked)", arg=r.serial, arg2=str(d.size)))
    # activate now when the slot is free; otherwise at the next boot
    if r.backend is None and (d is None or not d.present):
        w.reboot_required = True  # the disk comes at the next start: the boot unit attaches it then
    elif r.backend is None:
        w.actions.append(run("load-module", "attach pstore_blk now"))
    elif r.backend == MODULE and not params_match(r, s):
        w.actions.append(run("reload-module", "pstore_blk runs with other parameters"))
    elif r.backend == KMOD_RAMOOPS and r.ramoops_on_ivshmem:
        w.actions.append(run("unload-ramoops", "switching from the ivshmem backend"))
        w.actions.append(run("load-module", "attach pstore_blk now"))
    elif r.backend != MODULE:
        w.reboot_required = True
    return w


def costs(r: ProbeReport) -> list[str]:
    return ["a 512 MiB virtual disk per VM; only non-fatal Oopses are kept"]


def capabilities(r: ProbeReport) -> dict[str, Capability]:
    if r.pstore_blk == "missing":
        return rules.none_captured("this kernel has no pstore_blk (not built, or marked BROKEN as in late 5.10.y)")
    caps: dict[str, Capability] = {}
    if r.panic_on_oops:
        caps["oops"] = Capability("no", "panic_on_oops=1: every Oops becomes a panic, which a block "
                                        "device cannot record")
    else:
        caps["oops"] = Capability("yes", "non-fatal Oops, written ~0.5 s after the event; lost if the "
                                         "guest resets or powers off within that time")
    caps["panic"] = Capability("no", "pstore_blk on a virtual disk has no panic-time write path")
    caps["shutdown"] = Capability("no", "the shutdown/reboot dump is deferred and the machine resets first")
    caps["emergency_restart"] = Capability("no", "sysrq-b and panic=N reboots leave no record")
    rules.frontend_caps(r, caps, "lags ~0.5-1 s behind the console")
    return caps


def problems(r: ProbeReport) -> list[Problem]:
    return rules.problems_with(r, _problems, oops_must_not_panic=True)


def _disk_problems(r: ProbeReport, add: rules.Add) -> None:
    d = r.disk
    if d is None or not d.present:
        add("disk-missing", "blocker", f"{r.by_id} does not exist",
            f"attach the pstore disk with serial={r.serial} (virtio-blk)")
        return
    if r.disk_bytes is not None and d.size != r.disk_bytes:
        add("disk-size", "blocker", f"{r.by_id} is {d.size} bytes, expected {r.disk_bytes}",
            "check that this is the disk pvepstore attached")
    if d.serial and d.serial != r.serial:
        add("disk-serial", "blocker", f"{d.device} reports serial {d.serial!r}, expected {r.serial!r}", "")
    if d.signature or d.partitions:
        what = d.signature.replace("\n", " ")[:120] or "partitions " + " ".join(d.partitions)
        add("disk-signature", "blocker", f"{r.by_id} is not empty: {what}",
            "pvepstore never overwrites a disk with a filesystem or partition table; "
            "check the disk, wipe it yourself if it is really unused")
    if d.mounts or d.holders:
        add("disk-in-use", "blocker", f"{r.by_id} is in use ({' '.join(d.mounts + d.holders)})", "")
    if d.read_only:
        add("disk-read-only", "blocker", f"{r.by_id} is read-only", "")
    if not d.initialized and d.zero is False and not r.configured:
        if d.head_is_pstore:
            add("disk-has-records", "warning", f"{r.by_id} already holds pstore_blk zones (this guest's "
                "from before an undo, or an earlier owner's)", "kept: read them on the host first; "
                "zero the disk yourself if they are not this guest's")
        else:
            add("disk-stale", "fix", f"{r.by_id} holds stale bytes from an earlier owner", "apply zeroes "
                "the first 128 MiB once, after re-checking serial, size, signature and mounts")


def _problems(r: ProbeReport, add: rules.Add) -> None:
    if r.pstore_blk == "missing":
        add("no-pstore-blk", "blocker", f"kernel {r.kernel or '?'} has no pstore_blk",
            "boot a kernel with CONFIG_PSTORE_BLK (Debian 12's 6.1 has it as a module)")
    _disk_problems(r, add)
    if r.backend == KMOD_RAMOOPS and r.ramoops_on_ivshmem:
        add("backend-ramoops-ivshmem", "fix", "ramoops on the ivshmem device holds pstore's single slot "
            "(switching backends)", "unload ramoops, then attach pstore_blk")
    elif r.backend == KMOD_RAMOOPS:
        add("backend-ramoops", "consent", "ramoops (the old setup) holds pstore's single slot",
            "remove the old ramoops configuration (--remove-legacy), then reboot")
    else:
        rules.slot_problems(r, MODULE, add, erst_hint="remove the acpi-erst device from the VM (ERST "
                            "itself keeps panics; pvepstore does not read it yet)")
    rules.registration_problems(
        r, add, module_present=r.pstore_blk != "missing", ours=MODULE,
        other_params=("blk-params", "pstore_blk is loaded with other parameters "
                      f"(blkdev={r.blk_params.get('blkdev', '?')})", "reload pstore_blk with pvepstore's options"),
        unregistered=("not-configured", "pstore_blk is not attached to the pstore disk",
                      "configure and load pstore_blk (modprobe.d options + a boot-time unit)"))


def assess(r: ProbeReport) -> ProbeReport:
    return rules.assess(r, target=TARGET, configured=configured, capabilities=capabilities, problems=problems,
                        costs=costs)


def assess_for_attach(r: ProbeReport) -> ProbeReport:
    """:func:`assess` for a guest whose pstore disk provision attaches (or has attached, pending the
    VM's next start): its absence is what provision fixes, not a reason to refuse the guest."""
    r = assess(r)
    if r.disk is None or not r.disk.present:
        r.problems = [Problem("disk-coming", "fix", f"{r.by_id} does not exist yet",
                              "provision attaches the disk (hot-plug, or at the VM's next start); the boot "
                              "unit loads pstore_blk once it is there") if p.code == "disk-missing" else p
                      for p in r.problems]
    return r


def _checks(r: ProbeReport, s: dict, add: rules.CheckAdd) -> None:
    add("disk", r.disk is not None and r.disk.present, r.by_id)
    add("backend", r.backend == MODULE, f"backend is {r.backend or 'none'}")
    p = r.blk_params
    want = {"blkdev": r.by_id, "best_effort": "Y", "kmsg_size": str(s.get("kmsg_size", "?")),
            "max_reason": str(s.get("max_reason", "?"))}
    for k, v in want.items():
        add(f"param {k}", p.get(k) == v, f"{p.get(k, 'unset')} (want {v})")


def verify(r: ProbeReport) -> VerifyResult:
    """pstore_blk registered on the pstore disk with the manifest's parameters, its unit enabled."""
    return rules.verify_with(r, _checks, boot_link=UNIT_LINK, service=r.units.get(SERVICE, {}), service_name=SERVICE)
