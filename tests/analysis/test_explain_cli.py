"""``pvepstore explain`` through main(args, env), on real corpus files."""

from __future__ import annotations

import io
import json


from pvepstore.cli import Environment, ExitStatus, main

from .corpus import CORPUS, needs_corpus


def run(*args: str):
    env = Environment(stdout=io.StringIO(), stderr=io.StringIO(), environ={})
    status = main(list(args), env)
    return status, env.stdout.getvalue(), env.stderr.getvalue()


@needs_corpus
def test_explain_json_one_file_is_one_object():
    path = CORPUS / "abrt/examples/oops-32bit-graphics.test"
    status, out, err = run("explain", str(path), "--json")
    assert status == ExitStatus.SUCCESS, err
    doc = json.loads(out)
    assert doc["file"] == str(path) and doc["verdict"]["kind"] == "kernel_oops"
    assert [c["kind"] for c in doc["crashes"]] == ["oops", "warning"]
    assert set(doc["crashes"][0]) >= {"kind", "title", "panic_message", "rip", "comm", "pid", "cpu", "kernel",
                                      "taint", "frames", "duphash", "signature"}
    assert doc["crashes"][0]["rip"] == "radeon_audio_detect+0x54/0x140 [radeon]"
    assert doc["crashes"][1]["taint"] == "GD"


@needs_corpus
def test_explain_json_several_files_is_a_list():
    a = CORPUS / "clearlinux/oops_test_files/warning.txt"
    b = CORPUS / "abrt/examples/not_oops1.test"
    status, out, _ = run("explain", "--json", str(a), str(b))
    docs = json.loads(out)
    assert status == ExitStatus.SUCCESS and [d["file"] for d in docs] == [str(a), str(b)]
    assert docs[1]["crashes"] == [] and docs[1]["verdict"]["kind"] == "unknown"


@needs_corpus
def test_explain_human_output():
    status, out, _ = run("explain", str(CORPUS / "abrt/examples/oops-kernel-panic-hung-tasks-arm.test"))
    assert status == ExitStatus.SUCCESS
    assert "kernel_panic (critical, confidence medium)" in out
    assert "kernel panic: hung_task: blocked tasks" in out and "tainted:   PO" in out


def test_explain_escapes_guest_control_characters(tmp_path):
    log = tmp_path / "evil.log"
    log.write_bytes(b"[    1.000000] Kernel panic - not syncing: \x1b[2J\x1b]0;owned\x07boom\r\n")
    status, out, _ = run("explain", str(log))
    assert status == ExitStatus.SUCCESS
    assert "\x1b" not in out and "\x07" not in out and "boom" in out
    status, out, _ = run("explain", "--json", str(log))
    assert "\x1b" not in out and json.loads(out)["crashes"][0]["kind"] == "panic"


def test_explain_unreadable_file_is_an_input_error(tmp_path):
    status, out, err = run("explain", str(tmp_path / "missing.log"))
    assert status == ExitStatus.INPUT and "Traceback" not in err
    assert "cannot read" in err and "hint:" in err
    status, _, err = run("explain", str(tmp_path))
    assert status == ExitStatus.INPUT and "is a directory" in err


def _corpus_files():
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".json" and p.name != "README.md")


@needs_corpus
def test_explain_runs_on_every_corpus_file():
    files = _corpus_files()
    assert len(files) > 1000
    for start in range(0, len(files), 200):
        chunk = [str(p) for p in files[start:start + 200]]
        status, out, err = run("explain", "--json", *chunk)
        assert status == ExitStatus.SUCCESS, err[-2000:]
        docs = json.loads(out)
        assert [d["file"] for d in docs] == chunk


@needs_corpus
def test_explain_of_a_text_past_the_analysis_limit_says_only_the_tail_was_analysed(tmp_path):
    # A crash at the end of a 5 MiB log is still found (the tail is analysed), and the
    # output says that the head was not looked at instead of dropping it silently.
    crash = (CORPUS / "abrt/examples/oops-32bit-graphics.test").read_text(errors="replace")
    path = tmp_path / "big.log"
    path.write_text(("[    1.000000] filler line of an ordinary boot log\n" * 100_000) + crash)
    status, out, err = run("explain", str(path), "--json")
    assert status == ExitStatus.SUCCESS, err
    doc = json.loads(out)
    assert doc["analysed_tail_chars"] == 4 << 20
    assert doc["verdict"]["kind"] == "kernel_oops"
    status, out, err = run("explain", str(path))
    assert "only the last 4 Mi characters" in out
    small = tmp_path / "small.log"
    small.write_text(crash)
    assert "analysed_tail_chars" not in json.loads(run("explain", str(small), "--json")[1])
