from __future__ import annotations

import os
from pathlib import Path

import pytest

from pvepstore.config import load_config, parse_config
from pvepstore.errors import ConfigError
from pvepstore.hostpaths import HostPaths
from tests.conftest import REPO


def test_example_config_is_valid_and_documents_every_key():
    cfg = load_config(REPO / "config.example.yaml", environ={})
    assert cfg.disk.size_mib == 512 and cfg.api.timeout >= 30
    text = (REPO / "config.example.yaml").read_text()
    from dataclasses import fields
    for section in ("api", "ssh", "disk", "pstore_blk", "scope"):
        for f in fields(getattr(cfg, section)):
            assert f"  {f.name}:" in text, f"{section}.{f.name} is not documented"


def test_missing_default_file_means_defaults(tmp_path):
    cfg = load_config(None, environ={"PVEPSTORE_CONFIG": ""})
    assert cfg.host_root == "/"


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize("data,key", [
    ({"api": {"port": "x"}}, "api.port"),
    ({"api": {"timeout": 5}}, "api.timeout"),
    ({"ssh": {"port": 70000}}, "ssh.port"),
    ({"disk": {"serial": "way-too-long-serial-number"}}, "disk.serial"),
    ({"disk": {"serial": "bad serial"}}, "disk.serial"),
    ({"pstore_blk": {"kmsg_size": 6}}, "pstore_blk.kmsg_size"),
    ({"bogus": 1}, "bogus"),
    ({"ssh": {"bogus": 1}}, "ssh.bogus"),
    ({"vms": {"101": {"ssh": {"port": 0}}}}, "vms.101.ssh.port"),
    ({"vms": {"abc": {}}}, "vms.abc"),
    ({"vms": {"101": {"backend": "efi"}}}, "vms.101.backend"),
    ({"host_root": "relative/dir"}, "host_root"),
    ({"backend": "ramoops"}, "backend"),
])
def test_invalid_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert str(exc.value).startswith(key + ":")


def test_per_vm_overrides_merge_with_defaults():
    cfg = parse_config({"ssh": {"user": "admin"}, "vms": {101: {"ssh": {"port": 2222}}}})
    vm = cfg.for_vm(101)
    assert (vm.ssh.user, vm.ssh.port) == ("admin", 2222)
    assert cfg.for_vm(102).ssh.port == 22


def test_secret_in_world_readable_file_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("api:\n  token_value: 0b5e7c1e-aaaa-bbbb-cccc-000000000000\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="world-readable") as exc:
        load_config(path, environ={})
    assert exc.value.hint == f"chmod 600 {path}"
    os.chmod(path, 0o600)
    assert load_config(path, environ={}).api.secret().startswith("0b5e7c1e")


def test_bad_yaml_is_one_clear_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("api: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, environ={})


def test_host_root_from_environment_prefixes_every_proxmox_path(tmp_path):
    cfg = load_config(None, environ={"PVEPSTORE_HOST_ROOT": str(tmp_path), "PVEPSTORE_CONFIG": ""})
    paths = cfg.paths
    assert paths == HostPaths(Path(tmp_path))
    for p in (paths.members, paths.pve_root_ca, paths.vm_config("pve1", 101), paths.vm_lock(101),
              paths.vm_pidfile(101), paths.ivshmem_file("pvepstore-101"), paths.storage_cfg):
        assert str(p).startswith(str(tmp_path) + "/")
    assert paths.vm_lock(101) == tmp_path / "var/lock/qemu-server/lock-101.conf"
