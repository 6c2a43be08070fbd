"""Helpers for the guest unit tests: synthetic probe output and recorded cassettes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pvepstore.backends import registry
from pvepstore.guest import Guest
from pvepstore.guest.testing import FakeTransport, Recorded, load_cassette, reply

CASSETTES = Path(__file__).parent / "cassettes"


def cassette(name: str, *names: str) -> list[Recorded]:
    return load_cassette(CASSETTES / name, names or None)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def file_item(path: str, content: bytes, mode: str = "644"):
    return ("file", path, sha(content), f"{mode} 0 0 {len(content)}", content)


def probe_items(*extra, backend="(null)", efi=False, zero="yes", loaded=(), params=(), kconfig=None,
                unlink=None, disk=True):
    """What PROBE prints on a fresh stock Debian 12 guest (plus ``extra`` items)."""
    conf = "# /etc/systemd/pstore.conf\n[PStore]\n#Storage=external\n#Unlink=yes\n"
    if unlink is not None:
        conf += f"# /etc/systemd/pstore.conf.d/x.conf\n[PStore]\nUnlink={unlink}\n"
    items = [
        ("uname", "6.1.0-56-amd64", "x86_64"),
        ("osrelease", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'),
        ("cmdline", "root=/dev/vda rw console=ttyS0"),
        ("boot_id", "d3fa1785-61e1-4020-9ce0-1889eb198849"),
        ("modfile", "pstore_blk", "/lib/modules/6.1.0-56-amd64/kernel/fs/pstore/pstore_blk.ko"),
        ("modfile", "pstore_zone", "/lib/modules/6.1.0-56-amd64/kernel/fs/pstore/pstore_zone.ko"),
        ("modfile", "efi_pstore", "/lib/modules/6.1.0-56-amd64/kernel/drivers/firmware/efi/efi-pstore.ko"),
        ("modfile", "ramoops", "/lib/modules/6.1.0-56-amd64/kernel/fs/pstore/ramoops.ko"),
        ("builtin", ""),
        ("kconfig", kconfig if kconfig is not None else
         "CONFIG_PSTORE=y\nCONFIG_PSTORE_BLK=m\n# CONFIG_PSTORE_PMSG is not set\n"
         "# CONFIG_PSTORE_CONSOLE is not set\n# CONFIG_PSTORE_FTRACE is not set\nCONFIG_EFI_VARS_PSTORE=m\n"
         "CONFIG_PSTORE_DEFAULT_KMSG_BYTES=10240\n"),
        ("backend", backend),
        ("pstorefs", "pstore", "rw,nosuid,nodev,noexec,relatime"), ("pstore_files", "0"), ("sysctl", "0", "0", "N", "0"),
        ("unit", "systemd-pstore.service", "enabled", "inactive"),
        ("unit", "pvepstore-blk.service", "", "inactive"),
        ("pstore_conf", conf),
        ("tool", "blkid"), ("tool", "systemd-analyze"), ("tool", "journalctl"), ("tool", "update-initramfs"),
        ("dir", "/etc/modprobe.d"), ("dir", "/etc/systemd/system"),
        ("dir", "/etc/systemd/system/sysinit.target.wants"),
    ]
    for m in loaded:
        items.append(("loaded", m, "live"))
    for k, v in params:
        items.append(("param", f"pstore_blk/parameters/{k}", v))
    if efi:
        items.append(("efi", "yes"))
    if disk:
        items += [("disk", "/dev/disk/by-id/virtio-pvepstore", "/dev/vdb", str(512 << 20), "pvepstore", "0"),
                  ("disk_holders", ""), ("disk_parts", ""), ("disk_mounts", "", ""), ("disk_blkid", ""),
                  ("disk_head", b"\0" * 16), ("disk_zero", zero)]
    multi = {"modfile", "loaded", "param", "unit", "tool", "dir", "file", "link"}
    for item in extra:  # a single-valued key in ``extra`` replaces the default
        if item[0] not in multi:
            items = [i for i in items if i[0] != item[0]]
        items.append(item)
    return items


def fake_guest(*recorded: Recorded, **kw) -> tuple[Guest, FakeTransport]:
    t = FakeTransport(list(recorded), **kw)
    return Guest(t, "test-guest"), t


def probe_reply(*extra, **kw) -> Recorded:
    return Recorded("probe", 0, reply(*probe_items(*extra, **kw)))


# The guest layer takes a backend's functions; these pick them from the registry by name
# (what the backends' own probe/plan/verify do with the configuration).
def assessed(g: Guest, backend: str = "pstore_blk", **kw):
    """A probe assessed for ``backend``."""
    return g.probe(assess=registry.get(backend).guest_rules.assess, **kw)


def plan_for(g: Guest, report, *, remove_legacy: bool = False, **settings):
    """The plan for the backend the report was assessed for, with these guest settings."""
    rules = registry.get(report.target).guest_rules
    return g.plan(report, wishes=rules.wishes(report, rules.settings(report, **settings)),
                  remove_legacy=remove_legacy)


def verify_for(g: Guest, backend: str = "pstore_blk", serial: str = "pvepstore"):
    return registry.get(backend).verify(g, serial)


def managed_paths() -> tuple[str, ...]:
    """Every file a backend's guest rules may write (for byte-for-byte undo checks)."""
    from pvepstore.guest.probe import ProbeReport

    out: dict[str, None] = {}
    for backend in registry.all_backends():
        rules = backend.guest_rules
        for w in rules.files(rules.settings(ProbeReport(serial="pvepstore", disk_bytes=None))):
            out[w.path] = None
    return tuple(out)


def items_after(plans, pre=()) -> list[tuple]:
    """The probe's file, link and dir items of a guest on which ``plans`` were applied in order
    (files as the last left them; ``pre``: file items there before)."""
    import base64

    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    for item in pre:
        if item[0] == "file":
            files[item[1]] = item[4]
    for plan in plans:
        for c in plan.changes:
            if c.op == "write":
                files[c.path] = base64.b64decode(c.arg.split(":", 1)[1])
            elif c.op == "link":
                links[c.path] = c.arg
            elif c.op in ("restore", "remove"):
                files.pop(c.path, None)
                links.pop(c.path, None)
    items = [file_item(p, b, "600" if p.startswith("/var/lib/") else "644") for p, b in files.items()]
    items += [("link", p, t) for p, t in links.items()]
    dirs = {"/var/lib/pvepstore"} | {c.path for plan in plans for c in plan.changes if c.op == "mkdir"}
    return items + [("dir", d) for d in sorted(dirs)]
