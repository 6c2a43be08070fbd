"""One version: pyproject reads it from the package, ``--version`` prints it, reports name it."""

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pvepstore
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_takes_the_version_from_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pvepstore.__version__"}
    # the installed metadata (what pip, pipx and a Debian package's dist-info say) agrees
    assert importlib.metadata.version("pvepstore") == pvepstore.__version__


def test_version_option_and_the_report_generator_agree():
    r = run_cli("--version")
    assert (r.status, r.stdout) == (0, f"pvepstore {pvepstore.__version__}\n")
    r = run_cli("parse", "--sample", "--report")
    assert r.status == 0
    import json

    doc = json.loads(r.stdout)
    assert doc["data"]["generator"] == f"pvepstore/{pvepstore.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+([.+~-][0-9A-Za-z.+~-]+)?", pvepstore.__version__)


def test_the_installed_command_prints_it():
    out = subprocess.run([sys.executable, "-m", "pvepstore", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out == f"pvepstore {pvepstore.__version__}\n"


def test_a_reader_that_leaves_early_gets_no_traceback():
    # `pvepstore parse --sample | head -1`: the pipe closes before pvepstore has written (`true`
    # reads nothing and has exited long before pvepstore's first write)
    res = subprocess.run(f"{sys.executable} -m pvepstore parse --sample | true; echo \"${{PIPESTATUS[0]}}\"",
                         shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60)
    assert res.stdout == "0\n" and res.stderr == "", res.stderr
