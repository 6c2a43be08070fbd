"""End to end on a real Debian guest, 12 (6.1) and 13 (6.12, systemd 257): probe -> apply -> reboot ->
verify -> Oops -> read through the guest -> host-side read of the powered-off disk -> clear -> undo.

One test, because every step needs the state the previous one left (each boot
costs ~30 s under TCG).  Run alone with ``pytest -m vm tests/vm -s``.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from pvepstore.guest import SshTransport
from pvepstore.guest import connect as _connect
from pvepstore.guest.testing import RecordingTransport, save_cassette
from pvepstore.guest.blk_wishes import UNIT
from pvepstore.guest.layout import PSTORE_DROPIN
from pvepstore.pstore import read_image
from tests.guest.conftest import assessed, managed_paths, plan_for, verify_for

from .harness import oops_module

pytestmark = pytest.mark.vm

# The seed's old ramoops setup (../shared/seed/original-notes.md), planted before apply.
LEGACY = {
    "/etc/modules-load.d/ramoops.conf": b"ramoops\n",
    "/etc/modprobe.d/ramoops.conf": b"# old crash logging\noptions ramoops mem_address=0x7f000000 "
                                    b"mem_size=0x100000 record_size=0x10000\n",
    "/etc/default/grub.d/pstore.cfg": b'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT '
                                      b'memmap=1M\\$0x7f000000 ramoops.mem_address=0x7f000000 quiet"\n',
    "/etc/modules": b"# /etc/modules: kernel modules to load at boot time.\nloop\nramoops\n",
}
OOPSMOD_GUEST = "/root/pvepstore_oops.ko"
# PVEPSTORE_RECORD=DIR saves every connection as a cassette (tests/guest/cassettes/ came from this)
RECORD = os.environ.get("PVEPSTORE_RECORD")
_seq = [0]


@contextmanager
def connect(target):
    if not RECORD:
        with _connect(target) as g:
            yield g
        return
    rec = RecordingTransport(SshTransport.connect(target))
    try:
        with _connect(target, transport=rec) as g:
            yield g
    finally:
        _seq[0] += 1
        Path(RECORD).mkdir(parents=True, exist_ok=True)
        save_cassette(Path(RECORD) / f"conn{_seq[0]:02d}.json", rec.recorded,
                      {"source": "tests/vm/test_e2e.py", "user": target.user})


def _sha_of(guest, paths) -> dict[str, str | None]:
    """sha256 of each path on the guest (None: absent) -- via a throwaway script."""
    script = ('for p in "$@"; do if [ -f "$p" ] || [ -L "$p" ]; then '
              'printf "%s %s\\n" "$(sha256sum < "$p" | cut -c1-64)" "$p"; else echo "- $p"; fi; done\n')
    res = guest.transport.run("sha", script, list(paths))
    out = {}
    for line in res.stdout.decode().splitlines():
        sha, path = line.split(" ", 1)
        out[path] = None if sha == "-" else sha
    return out


def _reboot(vm, guest) -> float:
    old = guest.reboot()
    guest.close()
    time.sleep(3)
    t0 = time.monotonic()
    vm.wait_ssh()
    with connect(vm.target()) as g:
        assert g.boot_history().boot_id != old
    return time.monotonic() - t0




def _host_keys_are_checked(vm):
    from dataclasses import replace

    from pvepstore.errors import GuestError

    empty = vm.workdir / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(GuestError, match="unknown host key"):
        with _connect(replace(vm.target(), known_hosts=str(empty))):
            pass
    wrong = vm.workdir / "wrong_known_hosts"
    other = vm.workdir / "other_key"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    alg, key = (other.with_suffix(".pub")).read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{vm.port} {alg} {key}\n")
    with pytest.raises(GuestError, match="does NOT match"):
        with _connect(replace(vm.target(), known_hosts=str(wrong))):
            pass
    assert empty.read_text() == ""  # nothing was auto-added


@pytest.mark.suites("bookworm", "trixie")
def test_guest_lifecycle(vm, capsys):
    timings = {}
    t_all = time.monotonic()
    vm.start()
    timings["boot"] = vm.wait_ssh()
    _host_keys_are_checked(vm)

    # -- probe: the truth about a stock Debian kernel (12: 6.1, 13: 6.12) ------------------
    with connect(vm.target()) as g:
        report = assessed(g, serial="pvepstore", disk_bytes=512 << 20)
        assert g.transport.round_trips == 1
        caps = {k: c.status for k, c in report.capabilities.items()}
        assert caps == {"oops": "yes", "panic": "no", "shutdown": "no", "emergency_restart": "no",
                        "console": "no", "pmsg": "no"}
        assert report.pstore_blk == "module" and report.backend is None
        assert report.disk.present and report.disk.size == 512 << 20 and report.disk.zero
        assert {p.code for p in report.problems} == {"not-configured", "systemd-pstore-unlinks"}
        release = report.kernel
        for path, data in LEGACY.items():
            if path != "/etc/modules":
                vm.put(path, data)
        # /etc/modules exists in Debian: keep its bytes, append the seed's line
        before_modules = g.transport.run("cat", "cat /etc/modules\n", []).stdout
        vm.put("/etc/modules", before_modules + b"ramoops\n")
        touched = list(managed_paths()) + list(LEGACY) + ["/var/lib/pvepstore/manifest.json"]
        before = _sha_of(g, touched)

        report = assessed(g)
        assert {x["path"] for x in report.legacy} == set(LEGACY)
        plan = plan_for(g, report, kmsg_size=64, max_reason=2)
        assert not any(c.path in LEGACY for c in plan.changes)  # no consent, no removal
        plan = plan_for(g, report, kmsg_size=64, max_reason=2, remove_legacy=True)
        assert {c.path for c in plan.changes if c.op in ("write", "remove")} >= set(LEGACY) | {UNIT}
        result = g.apply(plan)
        assert result.ok, result.failures
        # idempotence: the same plan again is empty
        again = plan_for(g, assessed(g), kmsg_size=64, max_reason=2, remove_legacy=True)
        assert again.empty, again.describe()
        assert g.apply(again).done == again.describe()
        assert verify_for(g).ok

    # -- reboot: the boot-time unit attaches pstore_blk before systemd-pstore ------------
    with connect(vm.target()) as g:
        timings["reboot1"] = _reboot(vm, g)
    with connect(vm.target(user="pvep")) as g:  # the sudo path
        v = verify_for(g)
        assert v.ok, v.problems
        hist = g.boot_history()
        assert hist.previous_orderly is True and len(hist.boots) >= 2
        assert hist.previous_kernel == release

        # -- a non-fatal Oops, written by the kernel ~0.5 s later ----------------------
        ko = oops_module(release)
        vm.put(OOPSMOD_GUEST, ko.read_bytes())
        g.transport.run("oops", "insmod /root/pvepstore_oops.ko && "
                        "(sh -c 'echo oops > /proc/pvepstore_oops' 2>/dev/null; true)\n", [])
        time.sleep(3)
        assert g.read_records() == []  # pstorefs shows new records from the next boot on
        timings["reboot2"] = _reboot(vm, g)
    with connect(vm.target()) as g:
        recs = g.read_records(max_bytes=4 << 20)
        assert [r.name for r in recs] == ["dmesg-pstore_blk-0"]
        text = recs[0].data.decode("utf-8", "replace")
        assert text.startswith("Oops#1 Part1") and "pvepstore_oops" in text
        # systemd-pstore ran and kept them (Unlink=no); a second read sees the same
        assert [r.data for r in g.read_records()] == [r.data for r in recs]
        g.transport.run("poweroff", "nohup sh -c 'sleep 1; systemctl poweroff' >/dev/null 2>&1 &\n", [])
    vm.wait_exit(timeout=120)

    # -- the product's promise: the host reads the same records from the disk image ------
    host = read_image(vm.pstore_img)
    assert [(r.name, r.data) for r in host.records] == [(r.name, r.data) for r in recs]

    vm.start()
    timings["boot3"] = vm.wait_ssh()
    with connect(vm.target()) as g:
        recs = g.read_records()
        assert g.clear(["dmesg-pstore_blk-7"]).not_cleared == {"dmesg-pstore_blk-7": "not read"}
        cleared = g.clear([r.name for r in recs])
        assert cleared.ok and cleared.cleared == ["dmesg-pstore_blk-0"]
        assert g.read_records() == []

        # -- undo: every touched file back, byte for byte ---------------------------------
        res = g.undo()
        assert res.ok, res.failures
        after = _sha_of(g, touched)
        assert after == before
        report = assessed(g)
        assert report.manifest is None and {x["path"] for x in report.legacy} == set(LEGACY)
        assert g.undo().done == ["nothing to undo: pvepstore has not changed this guest"]
    timings["total"] = time.monotonic() - t_all
    with capsys.disabled():
        print(f"\nguest e2e ({vm.image.name}) timings (s): " + ", ".join(f"{k}={v:.0f}" for k, v in timings.items()))
