"""A VM in scope that was never provisioned is a state the sweep reports, not a failure (issue 11 #21);
what provision recorded is enough to pick a VM's backend, and the config overrides it, saying so."""

from __future__ import annotations

import pytest

from pvepstore.cli import ExitStatus
from pvepstore.pipeline.handles import vm_backend
from pvepstore.pve import ivshmem, state
from tests.conftest import run_cli
from tests.pipeline.test_sweep_fakepve import stopped_vm_with_oopses  # noqa: F401 (fixture)
from tests.pstore.test_ramoops import PANIC_LONG, REBOOT
from tests.pve.test_ivshmem import guest_memory

IVSHMEM_RECORD = {"backend": "ivshmem", "node": "pve1", "shm_name": ivshmem.shm_name(100),
                  "ramoops_params": None, "at": 1}


def sweep(config, *extra):
    return run_cli("--config", str(config), "sweep", *extra)


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_ivshmem_in_the_config_but_never_provisioned_is_reported_not_failed(fakepve, running):
    fakepve.add_vm(100, config={"tags": "pvepstore"})
    if running:
        fakepve.start_qemu(100)
    config = fakepve.config_file(vms={100: {"backend": "ivshmem"}})
    r = sweep(config, "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    (vm,) = r.json["vms"]
    assert vm["status"] == "not_provisioned"
    assert "not provisioned: run `pvepstore provision 100 --backend ivshmem`" == vm["message"]
    assert r.json["counts"] == {"not_provisioned": 1}
    human = sweep(config)
    assert human.status == ExitStatus.SUCCESS
    assert "vm=100 status=not_provisioned" in human.stdout and "pvepstore provision 100 --backend ivshmem" \
        in human.stdout
    assert "1 not_provisioned" in human.stdout


def test_a_stopped_pstore_blk_vm_never_provisioned_is_reported_and_others_still_count(stopped_vm_with_oopses):
    fake, vol, fx = stopped_vm_with_oopses  # VM 101: a pstore disk, real Oopses
    fake.add_vm(103, config={"tags": "pvepstore"}, disk_storage="local")  # in scope, nothing set up
    r = sweep(fake.config_file(), "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    by = {v["vmid"]: v for v in r.json["vms"]}
    assert by[101]["status"] == "collected"
    assert by[103]["status"] == "not_provisioned" and "pvepstore provision 103`" in by[103]["message"]
    # ... while a real failure next to it still makes the sweep partial
    fake.add_vm(104, config={"tags": "pvepstore"}, disk_storage="local")  # its disk's storage is gone
    fake.set_config(104, virtio1="gone:104/vm-104-disk-1.raw,serial=pvepstore,size=1M")
    r = sweep(fake.config_file(), "--json")
    by = {v["vmid"]: v for v in r.json["vms"]}
    assert by[103]["status"] == "not_provisioned" and by[104]["status"] == "failed"
    assert r.status == ExitStatus.PARTIAL and r.json["counts"]["failed"] == 1


def test_provision_alone_is_enough_for_collect(fakepve):
    """No vms.<id>.backend in the config: the backend provision recorded is used."""
    fakepve.add_vm(100, config={"tags": "pvepstore", "ivshmem": ivshmem.ivshmem_option(100)})
    config = fakepve.config_file()
    cfg = fakepve.load_config()
    state.update(cfg, 100, provision=IVSHMEM_RECORD)
    live = cfg.paths.ivshmem_file(ivshmem.shm_name(100))
    live.parent.mkdir(parents=True, exist_ok=True)
    live.write_bytes(bytes(guest_memory((0, PANIC_LONG, True), (1, REBOOT, False)).mem))
    assert vm_backend(cfg, 100).backend == "ivshmem" and vm_backend(cfg, 100).source == "provision"
    r = run_cli("--config", str(config), "collect", "100", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert (r.json["status"], r.json["verdict"], r.json["records"]) == ("collected", "kernel_panic", 2)
    assert r.json["notes"] == []


def test_config_overrides_the_provisioned_backend_and_the_mismatch_is_reported(fakepve):
    fakepve.add_vm(100, config={"tags": "pvepstore"})
    cfg = fakepve.load_config(vms={100: {"backend": "ivshmem"}})
    state.update(cfg, 100, provision={"volid": "local:100/vm-100-disk-1.raw", "key": "virtio1",
                                      "serial": "pvepstore", "node": "pve1"})  # provision set up pstore_blk
    choice = vm_backend(cfg, 100)
    assert (choice.backend, choice.source, choice.provisioned) == ("ivshmem", "config", False)
    assert "vms.100.backend is ivshmem but provision set up pstore_blk" in choice.mismatch
    r = sweep(fakepve.config_file(vms={100: {"backend": "ivshmem"}}), "--json")
    (vm,) = r.json["vms"]
    assert r.status == ExitStatus.SUCCESS
    assert vm["status"] == "not_provisioned" and "provision set up pstore_blk" in vm["notes"][0]


def test_backend_choice_matrix(fakepve):
    base = fakepve.load_config()
    assert vm_backend(base, 100) == vm_backend(base, 100).__class__("pstore_blk", "default", False)
    state.update(base, 100, provision=IVSHMEM_RECORD)
    assert (vm_backend(base, 100).backend, vm_backend(base, 100).provisioned) == ("ivshmem", True)
    explicit = fakepve.load_config(vms={100: {"backend": "pstore_blk"}})
    got = vm_backend(explicit, 100)
    assert (got.backend, got.source) == ("pstore_blk", "config") and "provision set up ivshmem" in got.mismatch
    agree = fakepve.load_config(vms={100: {"backend": "ivshmem"}})
    assert vm_backend(agree, 100).mismatch == "" and vm_backend(agree, 100).provisioned
    glob = fakepve.load_config(backend="ivshmem")
    assert vm_backend(glob, 100).source == "config"
    state.update(base, 100, provision={**IVSHMEM_RECORD, "removed": 2})  # unprovisioned since
    assert vm_backend(base, 100).source == "default"
    assert vm_backend(agree, 100).provisioned is False


@pytest.mark.parametrize("offline", [False, True], ids=["read", "read-offline"])
def test_read_follows_the_provisioned_backend_too(fakepve, offline):
    fakepve.add_vm(100, config={"tags": "pvepstore", "ivshmem": ivshmem.ivshmem_option(100)})
    config = fakepve.config_file()
    flags = ["--offline"] if offline else []
    r = run_cli("--config", str(config), "read", "100", *flags)
    assert r.status not in (0, 1), r.stderr  # pstore_blk (the default), no disk: a clear error, not a bug
    cfg = fakepve.load_config()
    state.update(cfg, 100, provision=IVSHMEM_RECORD)
    live = cfg.paths.ivshmem_file(ivshmem.shm_name(100))
    live.parent.mkdir(parents=True, exist_ok=True)
    live.write_bytes(bytes(guest_memory((0, PANIC_LONG, True)).mem))
    r = run_cli("--config", str(config), "read", "100", "--json", *flags)
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert r.json["source"] == "ivshmem-live" and [x["reason"] for x in r.json["records"]] == ["Panic"]
    human = run_cli("--config", str(config), "read", "100", *flags)
    assert "read from its ivshmem memory on the host (ivshmem-live)" in human.stdout


def test_read_of_a_running_ivshmem_vm_is_from_the_host(fakepve):
    """issue 12: `read` has one path for every backend; ivshmem memory is the host's in any VM state."""
    fakepve.add_vm(100, config={"tags": "pvepstore", "ivshmem": ivshmem.ivshmem_option(100)})
    fakepve.start_qemu(100)
    cfg = fakepve.load_config()
    state.update(cfg, 100, provision=IVSHMEM_RECORD)
    live = cfg.paths.ivshmem_file(ivshmem.shm_name(100))
    live.parent.mkdir(parents=True, exist_ok=True)
    live.write_bytes(bytes(guest_memory((0, PANIC_LONG, True)).mem))
    r = run_cli("--config", str(fakepve.config_file()), "read", "100", "--json")
    assert r.status == ExitStatus.SUCCESS, r.stderr
    assert r.json["source"] == "ivshmem-live" and [x["reason"] for x in r.json["records"]] == ["Panic"]


def test_read_of_an_ivshmem_vm_never_provisioned_says_what_to_run(fakepve):
    fakepve.add_vm(100, config={"tags": "pvepstore"})
    r = run_cli("--config", str(fakepve.config_file(vms={100: {"backend": "ivshmem"}})), "read", "100", "--offline")
    assert r.status == ExitStatus.CONFIG
    assert "not provisioned for ivshmem" in r.stderr and "pvepstore provision 100 --backend ivshmem" in r.stderr
