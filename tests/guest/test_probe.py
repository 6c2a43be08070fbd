"""The capability report: the truth table of pstore-blk-format §6 and the problems with their fixes."""

from __future__ import annotations

from pvepstore.guest.testing import Recorded, reply

from .conftest import assessed, fake_guest, file_item, probe_items, probe_reply


def probe(*extra, **kw):
    g, t = fake_guest(probe_reply(*extra, **kw))
    r = assessed(g, serial="pvepstore", disk_bytes=512 << 20)
    assert t.round_trips == 1
    return r


def codes(r):
    return {p.code: p.severity for p in r.problems}


def test_stock_debian_captures_oopses_only():
    r = probe()
    assert {k: c.status for k, c in r.capabilities.items()} == {
        "oops": "yes", "panic": "no", "shutdown": "no", "emergency_restart": "no", "console": "no", "pmsg": "no"}
    assert codes(r) == {"not-configured": "fix", "systemd-pstore-unlinks": "fix"}
    assert r.distro == "Debian GNU/Linux 12 (bookworm)" and r.pstore_blk == "module"
    assert r.to_json()["capabilities"]["oops"]["status"] == "yes"


def test_frontends_where_the_kernel_has_them():
    r = probe(kconfig="CONFIG_PSTORE_BLK=m\nCONFIG_PSTORE_PMSG=y\nCONFIG_PSTORE_CONSOLE=y\n")
    assert r.capabilities["pmsg"].status == "yes" and r.capabilities["console"].status == "yes"
    assert r.capabilities["panic"].status == "no"


def test_no_pstore_blk_blocks():
    g, _ = fake_guest(Recorded("probe", 0, reply(*[i for i in probe_items(kconfig="# CONFIG_PSTORE_BLK is not set\n")
                                                   if not (i[0] == "modfile" and i[1] == "pstore_blk")])))
    r = assessed(g)
    assert codes(r)["no-pstore-blk"] == "blocker"
    assert all(c.status == "no" for c in r.capabilities.values())


def test_panic_on_oops_means_no_oops_either():
    items = [i if i[0] != "sysctl" else ("sysctl", "1", "0", "N", "0") for i in probe_items()]
    g, _ = fake_guest(Recorded("probe", 0, reply(*items)))
    r = assessed(g)
    assert r.capabilities["oops"].status == "no" and "panic-on-oops" in codes(r)


def test_disk_checks():
    assert codes(probe(disk=False))["disk-missing"] == "blocker"
    r = probe(("disk_blkid", "PTTYPE=dos\n"))
    assert codes(r)["disk-signature"] == "blocker"
    assert codes(probe(zero="no"))["disk-stale"] == "fix"


def test_disk_size_mismatch():
    g, _ = fake_guest(probe_reply())
    assert "disk-size" in codes(assessed(g, disk_bytes=1 << 30))


def test_efi_guest_competition():
    assert codes(probe(efi=True))["efi-pstore-competes"] == "fix"
    assert codes(probe(backend="efi", efi=True))["backend-efi"] == "fix"
    assert codes(probe(backend="erst"))["backend-erst"] == "blocker"
    blacklisted = probe(("modprobe_c", "blacklist efi_pstore\n"), efi=True)
    assert "efi-pstore-competes" not in codes(blacklisted)


def test_legacy_ramoops_setup_is_found():
    r = probe(file_item("/etc/modules-load.d/ramoops.conf", b"ramoops\n"),
              file_item("/etc/default/grub.d/pstore.cfg",
                        b'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT memmap=1M\\$0x7f000000 quiet"\n'),
              ("cmdline", "root=/dev/vda memmap=1M$0x7f000000 ramoops.mem_size=1048576"))
    assert codes(r)["legacy-config"] == "consent"
    assert {x["path"] for x in r.legacy} == {"/etc/modules-load.d/ramoops.conf", "/etc/default/grub.d/pstore.cfg"}
    assert r.cmdline_legacy == ["memmap=1M$0x7f000000", "ramoops.mem_size=1048576"]


def test_unlink_no_already_set():
    assert "systemd-pstore-unlinks" not in codes(probe(unlink="no"))


def test_incomplete_output_blocks():
    g, _ = fake_guest(Recorded("probe", 0, reply(*probe_items(), end=False)))
    assert codes(assessed(g))["probe-incomplete"] == "blocker"


def test_hostile_text_stays_data():
    r = probe(("osrelease", 'PRETTY_NAME="\x1b]0;pwned\x07Debian"\n'))
    assert r.to_json()  # serialisable; the CLI shows it through terminal_safe


def test_efi_unit_and_dump_parameters_are_facts():
    r = probe(("unit", "pvepstore-efi.service", "enabled", "active"),
              ("param", "pstore/parameters/kmsg_bytes", "8192\n"), ("param", "printk/parameters/always_kmsg_dump", "Y"))
    assert r.units["pvepstore-efi.service"] == {"enabled": "enabled", "active": "active"}
    assert (r.kmsg_bytes, r.always_kmsg_dump) == (8192, True)
    assert r.to_json()["kmsg_bytes"] == 8192 and r.to_json()["always_kmsg_dump"] is True
    assert not r.blk_params and not r.ramoops_params  # not mistaken for a backend's parameters
    # absent (pstore not loaded) or garbled: unknown, never a guess
    r = probe(("param", "pstore/parameters/kmsg_bytes", "lots"), ("param", "printk/parameters/always_kmsg_dump", "?"))
    assert (r.kmsg_bytes, r.always_kmsg_dump) == (None, None) and probe().always_kmsg_dump is None
    # no parameter (6.1): pstorefs' kmsg_bytes= option, else CONFIG_PSTORE_DEFAULT_KMSG_BYTES
    assert probe().kmsg_bytes == 10240


def test_a_measured_kernel_is_named_and_needs_no_caveat():
    r = probe()
    assert r.measured == "Debian 12 (6.1)" and r.to_json()["measured_kernel"] == "Debian 12 (6.1)"
    d13 = probe(("uname", "6.12.117+deb13-amd64", "x86_64"),
                ("osrelease", 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n'))
    assert d13.measured == "Debian 13 (6.12)" and "kernel-not-measured" not in codes(d13)


def test_another_kernel_family_is_said_plainly_and_read_from_the_guest():
    ubuntu = ('PRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n')
    kconf = ("CONFIG_PSTORE=y\nCONFIG_PSTORE_BLK=m\nCONFIG_PSTORE_PMSG=y\nCONFIG_PSTORE_CONSOLE=y\n"
             "CONFIG_EFI_VARS_PSTORE=y\n")
    r = probe(("uname", "6.8.0-45-generic", "x86_64"), ("osrelease", ubuntu), kconfig=kconf)
    assert r.measured == "" and codes(r)["kernel-not-measured"] == "info"
    (p,) = [p for p in r.problems if p.code == "kernel-not-measured"]
    assert "Ubuntu 24.04.1 LTS, kernel 6.8.0-45-generic" in p.message
    assert "Debian 12 (6.1), Debian 13 (6.12)" in p.message and "not tested" in p.message
    # the facts are this kernel's own, never assumed from Debian's: Ubuntu builds pmsg and console in
    assert r.capabilities["pmsg"].status == "yes" and r.capabilities["console"].status == "yes"
    # a Debian 12 userland on another kernel build (a backports or self-built kernel) is not measured either
    assert "kernel-not-measured" in codes(probe(("uname", "6.10.11+bpo-amd64", "x86_64")))


def test_an_unmeasured_kernel_without_a_readable_config_is_a_warning_and_capabilities_unknown():
    rhel = 'PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n'
    r = probe(("uname", "5.14.0-427.13.1.el9_4.x86_64", "x86_64"), ("osrelease", rhel), kconfig="")
    assert codes(r)["kernel-not-measured"] == "warning" and r.kconfig_read is False
    (p,) = [p for p in r.problems if p.code == "kernel-not-measured"]
    assert "config is not readable" in p.message and "/boot/config-5.14.0-427.13.1.el9_4.x86_64" in p.fix
    assert r.capabilities["pmsg"].status == "unknown" and r.capabilities["console"].status == "unknown"
