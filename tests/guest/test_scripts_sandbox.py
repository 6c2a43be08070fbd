"""The real probe and change scripts, run by ``sh`` in a private mount namespace.

The namespace puts tmpfs over the sysfs parameter directories the scripts read, over
``/var/lib`` (the change script's state) and over ``/usr/local/sbin`` (first in the scripts'
PATH) with stand-ins for ``systemctl`` and ``modprobe`` that model efi_pstore: it registers at
load only, not when ``pstore_disable=Y`` or the slot is taken, and a loaded, unregistered copy
stays until it is unloaded.  Nothing outside the namespace is touched (the host's /sys and
/var/lib stay as they are).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import pytest

from pvepstore.guest import Guest
from pvepstore.guest.changes import Plan, run
from pvepstore.guest.transport import MAX_OUT, CommandResult

PARAMS = "/sys/module/pstore/parameters"
PRINTK = "/sys/module/printk/parameters"


def _sandbox_ok() -> bool:
    if not shutil.which("unshare") or not os.path.isdir(PARAMS) or not os.path.isdir(PRINTK):
        return False
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs none {PARAMS}"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not _sandbox_ok(), reason="needs unshare -rm and tmpfs mounts (a mount namespace)")

# $W: the world directory (state of the stand-ins), $W/calls: what was run
SYSTEMCTL = r"""#!/bin/sh
echo "systemctl $*" >> "$W/calls"
case $1 in
    is-enabled) cat "$W/enabled" 2>/dev/null || echo disabled;;
    is-active) cat "$W/active" 2>/dev/null || echo inactive;;
    restart) [ "$2" = pvepstore-efi.service ] && modprobe efi_pstore; echo active > "$W/active";;
esac
exit 0
"""
MODPROBE = r"""#!/bin/sh
echo "modprobe $*" >> "$W/calls"
B=/sys/module/pstore/parameters/backend
if [ "$1" = -r ]; then
    [ "$2" = efi_pstore ] && [ -e "$W/efi_loaded" ] || exit 1
    [ "$(cat $B)" = efi ] && exit 1  # registered: in use
    rm -f "$W/efi_loaded"; exit 0
fi
[ "$1" = efi_pstore ] || exit 0
[ -e "$W/efi_loaded" ] && exit 0  # already loaded: init does not run again
: > "$W/efi_loaded"
[ -e "$W/disabled" ] && exit 0
[ "$(cat $B)" = "(null)" ] && echo efi > $B
exit 0
"""


class SandboxTransport:
    """Runs the script with ``sh -s`` like the ssh transport, inside the namespace."""

    def __init__(self, world: Path):
        self.world = world
        self.round_trips = 0

    def run(self, name: str, script: str, args: Sequence[str], *, timeout: float | None = None,
            max_out: int = MAX_OUT) -> CommandResult:
        self.round_trips += 1
        w = self.world
        setup = (f"mount -t tmpfs none {PARAMS} && cp -a {w}/params/. {PARAMS}/ && "
                 f"mount -t tmpfs none {PRINTK} && cp -a {w}/printk/. {PRINTK}/ && "
                 f"mount --bind {w}/bin /usr/local/sbin && mount -t tmpfs none /var/lib && "
                 f'sh -s -- "$@"; rc=$?; cp -a {PARAMS}/. {w}/params/; exit $rc')
        res = subprocess.run(["unshare", "-rm", "sh", "-c", setup, "sandbox", *args], input=script.encode(),
                             capture_output=True, timeout=timeout or 60, env={**os.environ, "W": str(w)})
        return CommandResult(res.returncode, res.stdout[:max_out], res.stderr, len(res.stdout) > max_out)

    def close(self) -> None:
        pass


def world(tmp_path: Path, *, backend="(null)", efi_loaded=False, disabled=False, unit=("enabled", "active"),
          kmsg_bytes="10240", always="N") -> Path:
    w = tmp_path / "world"
    for d in ("params", "printk", "bin"):
        (w / d).mkdir(parents=True)
    (w / "params" / "backend").write_text(backend + "\n")
    (w / "params" / "kmsg_bytes").write_text(kmsg_bytes + "\n")
    (w / "printk" / "always_kmsg_dump").write_text(always + "\n")
    for name, body in (("systemctl", SYSTEMCTL), ("modprobe", MODPROBE)):
        (w / "bin" / name).write_text(body)
        (w / "bin" / name).chmod(0o755)
    if efi_loaded:
        (w / "efi_loaded").touch()
    if disabled:
        (w / "disabled").touch()
    (w / "enabled").write_text(unit[0] + "\n")
    (w / "active").write_text(unit[1] + "\n")
    return w


def load_efi(w: Path):
    g = Guest(SandboxTransport(w), "sandbox")
    res = g.apply(Plan("apply", changes=[run("load-efi", "test")]))
    calls = (w / "calls").read_text().splitlines() if (w / "calls").exists() else []
    return res, (w / "params" / "backend").read_text().strip(), calls


def test_load_efi_registers_when_the_slot_is_free(tmp_path):
    res, backend, calls = load_efi(world(tmp_path))
    assert res.ok and res.done == ["ran load-efi"] and backend == "efi", res
    assert "systemctl restart pvepstore-efi.service" in calls


def test_load_efi_reloads_a_copy_loaded_while_disabled(tmp_path):
    # efi_pstore loaded earlier with pstore_disable=Y (pvepstore_blk's option, removed by the plan):
    # restarting the unit alone would leave it unregistered
    res, backend, calls = load_efi(world(tmp_path, efi_loaded=True))
    assert res.ok and backend == "efi", res
    assert calls.index("modprobe -r efi_pstore") < calls.index("systemctl restart pvepstore-efi.service")


def test_load_efi_says_when_efi_pstore_does_not_register(tmp_path):
    res, backend, _ = load_efi(world(tmp_path, disabled=True))
    assert not res.ok and res.failures == ["load-efi efi_pstore did not register"] and backend == "(null)"


def test_load_efi_leaves_a_registered_efi_pstore_loaded(tmp_path):
    res, backend, calls = load_efi(world(tmp_path, backend="efi", efi_loaded=True))
    assert res.ok and backend == "efi" and not any(c.startswith("modprobe -r") for c in calls)


def test_probe_reports_the_efi_unit_and_dump_parameters(tmp_path):
    w = world(tmp_path, backend="efi", unit=("enabled", "active"), kmsg_bytes="8192", always="Y")
    r = Guest(SandboxTransport(w), "sandbox").probe(serial="pvepstore", disk_bytes=None)
    assert not r.incomplete
    assert r.backend == "efi" and r.kmsg_bytes == 8192 and r.always_kmsg_dump is True
    assert r.units["pvepstore-efi.service"] == {"enabled": "enabled", "active": "active"}
    w2 = world(tmp_path / "2", unit=("disabled", "inactive"), kmsg_bytes="10240", always="N")
    r = Guest(SandboxTransport(w2), "sandbox").probe(serial="pvepstore", disk_bytes=None)
    assert r.kmsg_bytes == 10240 and r.always_kmsg_dump is False and r.backend is None
    assert r.units["pvepstore-efi.service"] == {"enabled": "disabled", "active": "inactive"}
