"""The unit tiers against Debian 12's own library versions (python3-proxmoxer 1.2, python3-paramiko
2.12, python3-typer 0.7 with click 8.1.3, requests 2.28, PyYAML 6.0, cryptography 38), the floors
pyproject.toml declares: a virtualenv with exactly those (cached), this source tree on its path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("PVEPSTORE_CACHE", "/var/cache/pvepstore")) / "compat-bookworm-r1"
BOOKWORM = ["proxmoxer==1.2.0", "paramiko==2.12.0", "typer==0.7.0", "click==8.1.3", "PyYAML==6.0",
            "requests==2.28.1", "cryptography==38.0.4", "rich==13.3.1"]
TEST_TOOLS = ["pytest", "hypothesis", "jsonschema", "pybars3", "prometheus-client"]
TIERS = ["tests/pve", "tests/pipeline", "tests/cli", "tests/guest", "tests/backends", "tests/test_config.py",
         "tests/test_config_hostile.py"]


def _venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        res = subprocess.run([str(python), "-m", "pip", "install", "-q", *BOOKWORM, *TEST_TOOLS],
                             capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            import shutil

            shutil.rmtree(VENV, ignore_errors=True)
            pytest.fail(f"cannot build the bookworm-versions venv: {res.stderr[-2000:]}")
    return python


def test_the_unit_tiers_pass_with_debian_12s_libraries():
    python = _venv()
    versions = subprocess.run([str(python), "-c", "import proxmoxer, paramiko, typer; "
                               "print(proxmoxer.__version__, paramiko.__version__, typer.__version__)"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert versions == ["1.2.0", "2.12.0", "0.7.0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not kernel and not vm",
                          # the installed-metadata check needs pvepstore pip-installed; the tree is on the path
                          "--deselect", "tests/cli/test_version.py::test_pyproject_takes_the_version_from_the_package",
                          *TIERS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    tail = res.stdout[-3000:]
    assert res.returncode == 0, tail + res.stderr[-2000:]
    assert " passed" in tail and "failed" not in tail
