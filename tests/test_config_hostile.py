"""Issue 11 item 11/22: configuration files that are broken, hostile or merely careless.

Every one must end in ConfigError (exit 4) naming the key, with a bounded,
terminal-safe message; nothing else may escape (no RecursionError, TypeError,
OverflowError, UnicodeDecodeError), and loading stays bounded in memory.
"""

from __future__ import annotations

import math
import tracemalloc
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvepstore.cli import ExitStatus
from pvepstore.config import Config, load_config, parse_config, _SECTIONS
from pvepstore.configcheck import SHOWN_MAX
from pvepstore.configload import MAX_BYTES, MAX_NODES
from pvepstore.configsinks import NOT_FIELDS, REQUIRED, SINK_KEYS
from pvepstore.errors import ConfigError
from pvepstore.hostpaths import HostPaths
from pvepstore.pipeline.sinks import SINK_TYPES
from tests.conftest import REPO, run_cli


def load_bytes(tmp_path: Path, raw: bytes):
    path = tmp_path / "config.yaml"
    path.write_bytes(raw)
    path.chmod(0o600)
    return load_config(path, environ={})


def refused(tmp_path: Path, raw: bytes | str) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load_bytes(tmp_path, raw.encode() if isinstance(raw, str) else raw)
    message = str(exc.value)
    assert "\x1b" not in message and len(message) < 600, message
    return exc.value


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append(f"vms: {{101: {{ssh: {{host: *a{levels}}}}}}}")
    return "\n".join(lines) + "\n"


# -- crashes of the loader (item 11, first half) ---------------------------------------

@pytest.mark.parametrize("raw,needle", [
    (b"state_dir: /x\xff\xfe\n", "not UTF-8"),
    ("state_dir: /x\n".encode("utf-16"), "UTF-16"),
    ("vms: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("vms: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested"),
    ("api: {port: " + "9" * 5000 + "}\n", "digits"),
    ("a: &a [*a]\n", "recursive"),
    ("when: 2026-02-30\n", "not valid YAML"),  # PyYAML's date constructor raises ValueError
    ("x: !!python/object:os.system {}\n", "not valid YAML"),
    ("api: [unclosed\n", "not valid YAML"),
    ("- 1\n- 2\n", "top level"),
])
def test_unloadable_files_are_one_config_error(tmp_path, raw, needle):
    assert needle in str(refused(tmp_path, raw))


def test_a_file_beyond_the_size_bound_is_refused_before_parsing(tmp_path):
    assert "larger than" in str(refused(tmp_path, "#" * (MAX_BYTES + 1)))
    load_bytes(tmp_path, b"# " + b"x" * (MAX_BYTES - 10) + b"\n")  # just below: fine


def test_alias_bomb_is_refused_in_bounded_memory_with_a_bounded_message(tmp_path):
    tracemalloc.start()
    try:
        err = refused(tmp_path, billion_laughs(9))  # 10^9 strings once expanded
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "aliases" in str(err)
    assert peak < 20 << 20, peak
    # Aliases as a convenience stay allowed: one shared ssh block for many VMs.
    text = "vms:\n  101: {ssh: &s {port: 2222}}\n" + "".join(f"  {v}: {{ssh: *s}}\n" for v in range(102, 200))
    assert load_bytes(tmp_path, text.encode()).for_vm(150).ssh.port == 2222


def test_expansion_budget_is_counted_after_expansion_not_on_the_text(tmp_path):
    # Tiny as text, just above the budget once expanded: refused; one level less is accepted.
    levels = math.ceil(math.log10(MAX_NODES)) + 1
    assert "aliases" in str(refused(tmp_path, billion_laughs(levels)))
    with pytest.raises(ConfigError, match="^a0: unknown key"):  # past the loader, to the key checks
        load_bytes(tmp_path, billion_laughs(levels - 2).encode())


@pytest.mark.parametrize("text,key", [
    ("sinks: [{type: [1]}]", "sinks.0.type"),
    ("sinks: [7]", "sinks.0"),
    ("sinks: {type: webhook}", "sinks"),
    ("sinks: [{type: webhook, url: [1]}]", "sinks.0.url"),
    ("sinks: [{type: webhook, url: 'ftp://x'}]", "sinks.0.url"),
    ("sinks: [{type: webhook, url: 'http://x', timeout: abc}]", "sinks.0.timeout"),
    ("sinks: [{type: webhook, url: 'http://x', timeout: .nan}]", "sinks.0.timeout"),
    ("sinks: [{type: webhook, url: 'http://x', name: ../../etc/x}]", "sinks.0.name"),
    ("sinks: [{type: webhook, url: 'http://x', headers: {a: [1]}}]", "sinks.0.headers"),
    ("sinks: [{type: textfile, path: relative.prom}]", "sinks.0.path"),
    ("sinks: [{type: textfile}]", "sinks.0.path"),
    ("sinks: [{type: journald, 7: x}]", "sinks.0.7"),
    ("vms: {101: {ssh: [1]}}", "vms.101.ssh"),
    ("vms: {101: {ssh: str}}", "vms.101.ssh"),
    ("vms: {101: {disk: 7}}", "vms.101.disk"),
    ("vms: {101: {backend: [1]}}", "vms.101.backend"),
    ("vms: {.inf: {}}", "vms.inf"),
    ("vms: {.nan: {}}", "vms.nan"),
    ("vms: {101.5: {}}", "vms.101.5"),
    ("vms: {true: {}}", "vms.True"),
    ("vms: [101]", "vms"),
    ("ssh: {connect_timeout: .nan}", "ssh.connect_timeout"),
    ("ssh: {command_timeout: -.inf}", "ssh.command_timeout"),
    ("ssh: {connect_timeout: 1e308}", "ssh.connect_timeout"),
    ("ssh: {port: 22.0}", "ssh.port"),
    ("ssh: {key_file: id_ed25519}", "ssh.key_file"),
    ("ssh: {trust_on_first_use: yes please}", "ssh.trust_on_first_use"),
    ("api: {timeout: .inf}", "api.timeout"),
    ("api: {timeout: abc}", "api.timeout"),
    ("api: {verify_ssl: relative/ca.pem}", "api.verify_ssl"),
    ("api: {verify_ssl: 1}", "api.verify_ssl"),
    ("api: {host: [1]}", "api.host"),
    ("api: {token_value_file: secret}", "api.token_value_file"),
    ("state_dir: var/lib/pvepstore", "state_dir"),
    ("state_dir: [1]", "state_dir"),
    ("host_root: 7", "host_root"),
    ("node: {a: 1}", "node"),
    ("scope: {vms: [101, x]}", "scope.vms"),
    ("collect: {max_record_bytes: 99999999999999999999999}", "collect.max_record_bytes"),
    ("retention: {max_age_days: 99999999999}", "retention.max_age_days"),
    ("disk: {size_mib: 6}", "disk.size_mib"),
    ("api: 7", "api"),
    ("7: x", "7"),
])
def test_wrong_values_name_the_key(tmp_path, text, key):
    err = refused(tmp_path, text + "\n")
    assert str(err).startswith(key + ":"), str(err)


def test_echoed_values_are_bounded_and_terminal_safe(tmp_path):
    evil = "\x1b]52;c;" + "A" * 100_000 + "\x07\x1b[2J"
    err = refused(tmp_path, yaml.safe_dump({"node": evil}))
    assert str(err).startswith("node:") and len(str(err)) < 200
    err = refused(tmp_path, yaml.safe_dump({"vms": {evil: {}}}))
    assert len(str(err)) < 200 and "\x07" not in str(err)
    r = run_cli("--config", str(tmp_path / "config.yaml"), "incidents", "list")
    assert r.status == ExitStatus.CONFIG and "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert len(r.stderr) < 2 * SHOWN_MAX + 200


def test_the_cli_exits_4_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("vms: {101: {ssh: [1]}}\n")
    r = run_cli("--config", str(path), "incidents", "list")
    assert r.status == ExitStatus.CONFIG and "error: vms.101.ssh:" in r.stderr, r.stderr


# -- one typed check for every key: property tests ---------------------------------------

def _hashable(x) -> bool:
    try:
        hash(x)
        return True
    except TypeError:
        return False


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10 ** 80), max_value=10 ** 80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), st.binary(max_size=10),
    st.sampled_from(["", "/", "/abs/path", "rel/path", "http://x", "proxmox", "pvepstore", "22", "root",
                     "\x1b[31m", ".inf", "webhook", "textfile", "journald", "alertmanager", "ivshmem"]),
)
KEYS = sorted({f.name for f in fields(Config)} | {f.name for c in _SECTIONS.values() for f in fields(c)}
              | {k for keys in SINK_KEYS.values() for k in keys} | {"type", "101", "backend"})
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), SCALARS.filter(_hashable)), inner,
                                            max_size=4)),
    max_leaves=25,
)


def _section_data():
    """A config shaped like the schema (so values reach every key), with arbitrary values."""
    per_section = {name: st.dictionaries(st.sampled_from([f.name for f in fields(cls)] + ["bogus"]), VALUES,
                                         max_size=4) | VALUES
                   for name, cls in _SECTIONS.items()}
    sink = st.fixed_dictionaries({"type": st.sampled_from(sorted(SINK_KEYS)) | VALUES},
                                 optional={k: VALUES for k in ("url", "path", "timeout", "name", "headers",
                                                               "verify_ssl", "resolve_after", "socket_path")})
    vm = st.dictionaries(st.sampled_from(["ssh", "disk", "backend", "bogus"]),
                         per_section["ssh"] | per_section["disk"] | VALUES, max_size=3)
    top = {"host_root": VALUES, "state_dir": VALUES, "node": VALUES, "backend": VALUES,
           "sinks": st.lists(sink | VALUES, max_size=3) | VALUES,
           "vms": st.dictionaries(st.integers(0, 10 ** 12) | SCALARS.filter(_hashable), vm | VALUES, max_size=3)
           | VALUES,
           **per_section}
    return st.fixed_dictionaries({}, optional=top)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_section_data())
def test_any_structure_is_a_config_or_a_config_error(data):
    try:
        cfg = parse_config(data)
    except ConfigError as exc:
        assert len(exc.message) < 600 and "\x1b" not in exc.message
        return
    # What was accepted is what the specs promise: finite positive timeouts, absolute paths.
    for t in (cfg.api.timeout, cfg.ssh.connect_timeout, cfg.ssh.command_timeout, cfg.collect.vm_timeout):
        assert isinstance(t, float) and math.isfinite(t) and t > 0
    for p in (cfg.host_root, cfg.state_dir, cfg.ssh.key_file, cfg.ssh.known_hosts):
        assert isinstance(p, str) and p.startswith("/")
    for vmid in cfg.vms:
        cfg.for_vm(vmid)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=VALUES, depth=st.integers(0, 300))
def test_any_yaml_file_is_a_config_or_a_config_error(tmp_path_factory, data, depth):
    doc = data
    for _ in range(depth):
        doc = [doc]
    if depth:
        doc = {"vms": doc}
    text = yaml.safe_dump(doc, allow_unicode=False)
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(text)
    path.chmod(0o600)
    try:
        load_config(path, environ={})
    except ConfigError as exc:
        assert len(exc.message) < 600 and "\x1b" not in exc.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200) | st.text(alphabet="{}[]&*!|>:-,'\" \n\tab1.#%@`", max_size=200)
       .map(str.encode))
def test_any_bytes_are_a_config_or_a_config_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(raw)
    path.chmod(0o600)
    try:
        load_config(path, environ={})
    except ConfigError:
        pass


def test_every_sink_table_matches_its_sink_class():
    assert set(SINK_KEYS) == set(SINK_TYPES)
    for kind, cls in SINK_TYPES.items():
        injected = getattr(cls, "INJECTED", frozenset())  # filled from the top level (host_root)
        assert set(SINK_KEYS[kind]) - NOT_FIELDS == {f.name for f in fields(cls)} - injected, kind
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        assert set(REQUIRED[kind]) == required, kind


def test_valid_sinks_are_still_accepted():
    cfg = parse_config({"sinks": [{"type": "webhook", "url": "https://m.example/hook", "timeout": 5,
                                   "verify_ssl": "/etc/ssl/ca.pem", "headers": {"X-Token": "abc"}},
                                  {"type": "alertmanager", "url": "http://am:9093", "resolve_after": 60},
                                  {"type": "journald"}, {"type": "textfile", "path": "/var/lib/x.prom"}]})
    assert len(cfg.sinks) == 4


# -- item 22: which paths are re-rooted --------------------------------------------------

def test_only_pvepstores_own_ca_default_is_re_rooted(tmp_path):
    paths = HostPaths(tmp_path)
    assert paths.ca_file("proxmox") == tmp_path / "etc/pve/pve-root-ca.pem" == paths.pve_root_ca
    assert paths.ca_file(str(tmp_path / "my-ca.pem")) == tmp_path / "my-ca.pem"  # as given, not <root>/<root>/...
    assert paths.ca_file("/etc/pve/pve-root-ca.pem") == Path("/etc/pve/pve-root-ca.pem")
    assert parse_config({}).api.verify_ssl == "proxmox"


def test_an_explicit_ca_path_is_used_as_given_under_host_root(fakepve):
    from pvepstore.pve.api import connect

    staged = fakepve.host_root / "etc/pve/pve-root-ca.pem"
    assert staged == fakepve.ca_path and staged.is_file()
    # The operator staging with host_root writes the full path: it must be used, not re-rooted.
    explicit = connect(fakepve.load_config(api={"verify_ssl": str(staged)}))
    assert explicit.get("version")
    default = connect(fakepve.load_config(api={"verify_ssl": "proxmox"}))
    assert default.get("version")
    # The host path itself, written explicitly, is not under host_root: a clear error naming it.
    with pytest.raises(ConfigError, match=r"^api.verify_ssl: CA file /etc/pve/pve-root-ca.pem does not exist"):
        connect(fakepve.load_config(api={"verify_ssl": "/etc/pve/pve-root-ca.pem"}))


def test_example_config_and_readme_agree_on_ivshmem_permissions():
    example = (REPO / "config.example.yaml").read_text()
    readme = (REPO / "README.md").read_text()
    assert "VM.Config.Options" not in example  # no grant lets a token set ivshmem/hookscript
    assert "only root@pam" in example.replace("\n  # ", " ") and "check_vm_modify_config_perm" in example
    assert "root@pam set `hookscript`" in readme and "check_vm_modify_config_perm" in readme
    assert "verify_ssl: proxmox" in example and "NEVER" in example
