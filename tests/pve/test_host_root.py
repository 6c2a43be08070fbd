"""Issue 8: every Proxmox host path under one root — a full run against a simulated node, and a grep."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pvepstore.cli import ExitStatus
from pvepstore.pipeline import provision as prov
from pvepstore.pve import offline
from tests.conftest import REPO, load_fixtures, run_cli
from tests.pipeline.pveguest import FakeGuests
from tests.pipeline.test_provision import IPCONFIG, Target

PVE_PATHS = re.compile(r"/etc/pve\b|/var/lock/qemu-server|/var/run/qemu-server|/dev/shm/pve-shm")
# Config defaults documented as "taken under host_root" (config.example.yaml says so too).
WHITELIST = {("pvepstore/config.py", "/etc/pve/pve-root-ca.pem")}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_no_hard_coded_proxmox_host_path_outside_hostpaths():
    """String constants in code (docstrings and comments only document) must not spell a PVE host path."""
    offenders = []
    for path in sorted((REPO / "pvepstore").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "pvepstore/hostpaths.py":
            continue
        tree = ast.parse(path.read_text(), rel)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                for m in PVE_PATHS.finditer(node.value):
                    if (rel, node.value) not in WHITELIST:
                        offenders.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not offenders, "Proxmox host paths belong in pvepstore/hostpaths.py:\n" + "\n".join(offenders)


def test_full_run_against_a_simulated_node(fakepve, monkeypatch, unpack_dir):
    """provision → power off → offline read (lock + pidfile checks) with every host path under host_root."""
    real_lock = Path("/var/lock/qemu-server/lock-100.conf")
    real_lock_existed = real_lock.exists()
    guests = FakeGuests(fakepve)
    monkeypatch.setattr(prov, "default_guest_connect", guests.connect)
    monkeypatch.setattr(prov, "guest_target", lambda ssh, host, vmid: Target(host, f"VM {vmid}"))
    runner = fakepve.lvm_runner()
    monkeypatch.setattr(offline, "SubprocessRunner", lambda: runner)  # lvs/lvchange answered by the fake
    fakepve.add_vm(100, {**IPCONFIG, "tags": "pvepstore"}, running=True)
    conf = str(fakepve.config_file())  # host_root + API endpoint + token + state_dir; nothing else

    r = run_cli("--config", conf, "provision", "100")
    assert r.status == ExitStatus.SUCCESS, r.stdout + r.stderr
    volid = fakepve.vms[100].config["virtio0"].split(",")[0]
    # the guest writes two Oopses, then the VM is powered off (its thin LV is deactivated)
    fx = {f.name: f for f in load_fixtures()}["oops-deflate"]
    fakepve.place_image(volid, fx.unpack(unpack_dir))
    fakepve.stop_qemu(100)
    fakepve.set_active(volid, False)

    r = run_cli("--config", conf, "read", "100", "--offline", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert {x["name"] for x in r.json["records"]} == set(fx.kernel_view)
    assert r.json["layout_source"] == "recorded"  # the layout provision recorded in state_dir
    assert (fakepve.host_root / "var/lock/qemu-server/lock-100.conf").exists()
    assert Path(r.json["volume"]["path"]).is_relative_to(fakepve.host_root)
    assert real_lock.exists() == real_lock_existed
    assert [t[0][1] for t in runner.transcript if t[0][0] == "lvchange"] == ["-ay", "-an"]

    fakepve.start_qemu(100)  # pidfile under host_root naming a live process with -pidfile <it>
    r = run_cli("--config", conf, "read", "100", "--offline", "--clear")
    assert r.status == ExitStatus.BUSY and "running" in r.stderr
    fakepve.stop_qemu(100)
    fakepve.set_config(100, lock="backup")
    r = run_cli("--config", conf, "read", "100", "--offline")
    assert r.status == ExitStatus.BUSY and "locked (backup)" in r.stderr


def test_host_root_from_the_environment(fakepve, tmp_path):
    """PVEPSTORE_HOST_ROOT wins over the config file (for staging hosts and dry runs)."""
    from pvepstore.config import load_config
    from pvepstore.pve.inventory import local_node
    conf = fakepve.config_file(host_root="/")
    cfg = load_config(conf, environ={"PVEPSTORE_HOST_ROOT": str(fakepve.host_root)})
    assert cfg.paths.vm_lock(100).is_relative_to(fakepve.host_root)
    assert local_node(cfg) == "pve1"
