"""pvepstore(1) and the bash completion: generated from the CLI, committed, current, rendered by man."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pvepstore.cli.app import COMMANDS
from pvepstore.cli.manpage import bash_completion, page

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_page_and_completion_are_current():
    assert (ROOT / "docs" / "pvepstore.1").read_text() == page(), "run tools/gendocs.py"
    assert (ROOT / "contrib" / "pvepstore.bash-completion").read_text() == bash_completion(), "run tools/gendocs.py"


def test_man_renders_the_page_without_warnings_and_it_names_every_command():
    if shutil.which("man") is None:
        pytest.skip("man-db not installed")
    res = subprocess.run(["man", "--warnings", "-l", str(ROOT / "docs" / "pvepstore.1")], capture_output=True,
                         text=True, env={**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0"}, timeout=60)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    import re

    text = re.sub(r".\x08", "", res.stdout)  # grotty's overstrike bold and underline
    for name, _, options in COMMANDS:
        if not options.get("hidden"):
            assert f"pvepstore {name} [OPTIONS]" in text, name
    for sub in ("incidents list", "incidents show", "guest apply"):
        assert f"pvepstore {sub} [OPTIONS]" in text
    assert "EXIT STATUS" in text and "notify-test: some sinks failed" in text


@pytest.mark.parametrize("words,cword,want", [("pvepstore inc", 1, ["incidents"]),
                                              ("pvepstore incidents ", 2, ["list", "show"]),
                                              ("pvepstore notify", 1, ["notify-test"])])
def test_bash_asks_pvepstore_for_completions(words, cword, want):
    env = {**os.environ, "COMP_WORDS": words, "COMP_CWORD": str(cword), "_PVEPSTORE_COMPLETE": "complete_bash"}
    res = subprocess.run([sys.executable, "-m", "pvepstore"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and res.stdout.split() == want, res.stderr
