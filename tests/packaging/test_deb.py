"""The Debian package: built from this tree with dpkg-buildpackage (pybuild), lintian-clean, and
installed with apt into clean Debian 12 and Debian 13 roots (debootstrap minbase + systemd and
man-db; pvepstore's dependencies come from each suite's own archive: bookworm's python3-proxmoxer
1.2 / paramiko 2.12 / typer 0.7, trixie's 2.2 / 3.5 / 0.15), where the shipped command, man page,
completion, units, conffile and state dir are checked as an admin would meet them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import pvepstore

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PVEPSTORE_CACHE", "/var/cache/pvepstore")) / "pkgroot"
MIRROR = os.environ.get("PVEPSTORE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Debian's own tools, not a virtualenv's or pyenv's python (pybuild must use /usr/bin/python3).
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
RECIPE = 1  # bump when the base roots below change

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds chroots: needs root")


def _run(argv, *, timeout=900, **kw) -> subprocess.CompletedProcess:
    env = {"PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **kw)


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    for tool in ("dpkg-buildpackage", "dh", "lintian"):
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            pytest.fail(f"{tool} missing: tools/bootstrap.sh --test installs the packaging tools")
    work = tmp_path_factory.mktemp("deb")
    src = work / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    res = _run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    [built] = work.glob("pvepstore_*_all.deb")
    return built


def test_the_package_version_is_the_program_version(deb):
    changelog = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"pvepstore ({pvepstore.__version__})")
    assert deb.name == f"pvepstore_{pvepstore.__version__}_all.deb"


def test_lintian_reports_no_error_or_warning(deb):
    res = _run(["lintian", "--tag-display-limit", "0", str(deb)])
    tags = [ln for ln in res.stdout.splitlines() if re.match(r"^[EW]: ", ln)]
    assert tags == [], "\n".join(tags)


def _base_root(suite: str) -> Path:
    """A cached tarball of a clean minbase root of ``suite`` with systemd and man-db."""
    tar = CACHE / f"{suite}-r{RECIPE}.tar"
    if not tar.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        build = CACHE / f"{suite}-build"
        shutil.rmtree(build, ignore_errors=True)
        res = _run(["debootstrap", "--variant=minbase", "--include=systemd,man-db", suite, str(build), MIRROR],
                   timeout=1800)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        (build / "etc/apt/sources.list").write_text(f"deb {MIRROR} {suite} main\n")
        _run(["tar", "-C", str(build), "-cf", str(tar) + ".tmp", "."], timeout=900).check_returncode()
        os.replace(str(tar) + ".tmp", tar)
        shutil.rmtree(build, ignore_errors=True)
    return tar


class Chroot:
    def __init__(self, path: Path):
        self.path = path

    def run(self, *argv: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        res = _run(["chroot", str(self.path), *argv], timeout=timeout)
        if check:
            assert res.returncode == 0, f"{argv}: {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        return res


@pytest.fixture(params=["bookworm", "trixie"], scope="module")
def installed(request, deb, tmp_path_factory) -> Chroot:
    suite = request.param
    root = tmp_path_factory.mktemp(f"root-{suite}")
    with tarfile.open(_base_root(suite)) as t:
        t.extractall(root)  # our own debootstrap output (device nodes included: we are root)
    shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
    (root / "proc").mkdir(exist_ok=True)
    _run(["mount", "-t", "proc", "proc", str(root / "proc")]).check_returncode()
    try:
        shutil.copy2(deb, root / "tmp" / deb.name)
        c = Chroot(root)
        c.run("apt-get", "update", "-q")
        c.run("apt-get", "install", "-y", "-q", "--no-install-recommends", f"/tmp/{deb.name}", timeout=1800)
        yield c
    finally:
        _run(["umount", "-l", str(root / "proc")])
        shutil.rmtree(root, ignore_errors=True)


def test_installed_it_works_as_an_admin_meets_it(installed):
    c = installed
    assert c.run("pvepstore", "--version").stdout == f"pvepstore {pvepstore.__version__}\n"
    parsed = c.run("pvepstore", "parse", "--sample")
    assert "pvepstore_oops_write" in parsed.stdout
    assert c.run("man", "-w", "pvepstore").stdout.strip() == "/usr/share/man/man1/pvepstore.1.gz"
    # the shipped config is a conffile, private, valid: without a token the first command says so
    assert "/etc/pvepstore/config.yaml" in c.run("dpkg-query", "-W", "-f=${Conffiles}", "pvepstore").stdout
    assert c.run("stat", "-c", "%a", "/etc/pvepstore/config.yaml", "/var/lib/pvepstore").stdout.split() == \
        ["600", "700"]
    status = c.run("pvepstore", "status", check=False)
    assert status.returncode == 4 and "token" in status.stderr, status.stderr
    # the units verify, and nothing was enabled behind the admin's back
    units = c.run("dpkg", "-L", "pvepstore").stdout.split()
    service = next(u for u in units if u.endswith("systemd/system/pvepstore-sweep.service"))
    timer = service.replace(".service", ".timer")
    verify = c.run("systemd-analyze", "verify", service, timer, check=False)
    assert verify.returncode == 0 and "pvepstore" not in verify.stderr, verify.stderr
    assert "ExecStart=/usr/bin/pvepstore sweep --quiet" in c.run("cat", service).stdout
    assert c.run("systemctl", "is-enabled", "pvepstore-sweep.timer", check=False).stdout.strip() == "disabled"
    # bash completion asks the installed program
    assert "_PVEPSTORE_COMPLETE=complete_bash" in c.run("cat", "/usr/share/bash-completion/completions/pvepstore").stdout
    done = c.run("env", "COMP_WORDS=pvepstore inc", "COMP_CWORD=1", "_PVEPSTORE_COMPLETE=complete_bash", "pvepstore")
    assert done.stdout.split() == ["incidents"]
    # the examples and the notification templates are where the README says
    for path in ("/usr/share/doc/pvepstore/examples/config.example.yaml",
                 "/usr/share/doc/pvepstore/examples/pvepstore.cron",
                 "/usr/share/doc/pvepstore/examples/pvepstore.rules.yml",
                 "/usr/share/pve-manager/templates/default/pvepstore-incident-body.txt.hbs"):
        c.run("test", "-f", path)
    # purge takes the conffile with it
    c.run("apt-get", "purge", "-y", "-q", "pvepstore")
    assert c.run("test", "-e", "/etc/pvepstore/config.yaml", check=False).returncode != 0
