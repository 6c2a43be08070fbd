"""The CLI over hostile inputs, as a separate process under hard resource limits.

Each case runs ``python -m pvepstore ...`` with ``RLIMIT_AS`` = 1 GiB (address space:
a run that tries to materialise an image or an alias bomb dies instead of swapping) and
``RLIMIT_FSIZE`` = 256 MiB (no file the run writes, temporary ones included, may grow
past that), and a generous hang guard.  What must hold for every case: the process
ends by itself, with one of the documented exit statuses (never 1, the internal error),
without a traceback, and within the limits (a limit hit shows as MemoryError, SIGXFSZ
or a signal, all of which fail the test).

The inputs are built by ``tests/hostile.py`` (shared with the unit tests of each class).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import hostile

AS_LIMIT = 1 << 30
FSIZE_LIMIT = 256 << 20
HANG_GUARD_S = 300  # not a speed target: only a hang fails here


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))
    # Die from SIGXFSZ rather than see EFBIG, so that hitting the file limit cannot pass.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)


def run_limited(args: list[str], tmp: Path, *, stdin: bytes = b"",
                env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp),
           "TMPDIR": str(tmp / "tmp"), "LC_ALL": "C.UTF-8",
           "PVEPSTORE_CONFIG": str(tmp / "no-config.yaml")}
    (tmp / "tmp").mkdir(exist_ok=True)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "pvepstore", *args], input=stdin,
                          capture_output=True, timeout=HANG_GUARD_S, env=env, cwd=tmp,
                          preexec_fn=_limits)


def _check(proc: subprocess.CompletedProcess, allowed: set[int]) -> None:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {err[-2000:]}"
    assert "Traceback" not in err and "internal error" not in err, err[-4000:]
    assert proc.returncode in allowed, (proc.returncode, err[-2000:])
    if proc.returncode:
        # one line plus a hint, as the README promises
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines and lines[0].startswith("pvepstore: error: "), err[-2000:]


def _tmp_usage(tmp: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(tmp / "tmp"):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


IMAGE_CASES = [name for name in hostile.IMAGE_BUILDERS]
OUTPUT_MODES = {"human": [], "json": ["--json"], "report": ["--report"], "extract": ["--extract", "out"]}


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.mark.parametrize("mode", sorted(OUTPUT_MODES))
@pytest.mark.parametrize("case", IMAGE_CASES)
def test_parse_hostile_image_within_limits(case, mode, hostile_dir, tmp_path):
    path, extra = hostile.IMAGE_BUILDERS[case](hostile_dir)
    args = ["parse", str(path), *extra, *OUTPUT_MODES[mode]]
    proc = run_limited(args, tmp_path)
    _check(proc, {0, 2, 3})
    assert _tmp_usage(tmp_path) < FSIZE_LIMIT


def test_parse_option_values_cannot_allocate(hostile_dir, tmp_path):
    path, _ = hostile.IMAGE_BUILDERS["sparse_ramoops_1g"](hostile_dir)
    proc = run_limited(["parse", str(path), "--format", "ramoops", "--nr-cpus", "1000000",
                        "--ftrace-size", "100"], tmp_path)
    _check(proc, {0, 2})


def test_parse_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)
    proc = run_limited(["parse", str(fifo)], tmp_path)
    _check(proc, {3})


def test_explain_backtracking_text_within_limits(tmp_path):
    text = tmp_path / "dmesg.txt"
    text.write_text(hostile.backtracking_text(64 << 10))
    for extra in ([], ["--json"]):
        proc = run_limited(["explain", str(text), *extra], tmp_path)
        _check(proc, {0})


def test_explain_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "text.fifo"
    os.mkfifo(fifo)
    proc = run_limited(["explain", str(fifo)], tmp_path)
    _check(proc, {3})


def test_config_alias_bomb_within_limits(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(hostile.yaml_alias_bomb())
    proc = run_limited(["--config", str(cfg), "status"], tmp_path)
    _check(proc, {4})
    assert len(proc.stderr) < 4096  # the message does not echo the expanded value


def test_config_deep_nesting_within_limits(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("vms: " + "[" * 5000 + "]" * 5000 + "\n")
    proc = run_limited(["--config", str(cfg), "status"], tmp_path)
    _check(proc, {4})


def test_corrupt_archive_is_listed_within_limits(tmp_path):
    state = tmp_path / "state"
    hostile.corrupt_archive(state / "archive")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"state_dir: {state}\n")
    for args in (["incidents", "list"], ["incidents", "list", "--json"],
                 ["incidents", "list", "--since", "7d"]):
        proc = run_limited(["--config", str(cfg), *args], tmp_path)
        _check(proc, {0})
