#!/usr/bin/env python3
"""Evaluate pvepstore's crash classifier against the shared oops corpora.

Prints one table per corpus: crashes detected/expected, kind accuracy,
exact-title accuracy (syzkaller's labels) and duphash agreement (satyr's
pinned values and ABRT's same-duphash pairs).  Run from the repository root:

    python3 tools/evaluate_classifier.py [--corpus DIR] [--misses N]

The corpus defaults to $PVEPSTORE_SHARED/oops-corpus or ../shared/oops-corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pvepstore.analysis import extract_crashes  # noqa: E402
from pvepstore.analysis.frame import parse_trace  # noqa: E402
from pvepstore.analysis.logline import split_lines  # noqa: E402
from pvepstore.analysis.signature import duphash  # noqa: E402
from pvepstore.analysis.taint import satyr_taint_names, taint_letters  # noqa: E402

# syzkaller crash TYPE -> our kind.  DoS is split by title: syzkaller files panics and GPFs alike under it.
SYZ_KIND = {
    "HANG": "hang", "WARNING": "warning", "LOCKDEP": "lockdep", "LEAK": "leak", "ATOMIC_SLEEP": "warning",
    "REFCOUNT_WARNING": "warning", "BUG": "oops", "NULL-POINTER-DEREFERENCE": "oops",
    "MEMORY_SAFETY_BUG": "oops", "UBSAN": "memory-safety", "MEMORY_SAFETY_UBSAN": "memory-safety",
}


def syz_expected_kind(label: dict) -> str | None:
    t, title = label.get("type"), label.get("title") or ""
    if t is None or t in ("SYZ_FAILURE", "REBOOT"):
        return None
    if t.startswith(("KASAN", "KMSAN", "KCSAN", "KFENCE")):
        return "memory-safety"
    if t == "DoS":
        return "panic" if title.startswith("kernel panic") else "oops"
    return SYZ_KIND.get(t)


def pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100.0 * a / b:.1f}%)" if b else "n/a"


def table(title: str, rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in rows)
    out = [f"### {title}", "", f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    out += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return out + [""]


def eval_abrt(corpus: Path) -> list[str]:
    exp = json.loads((corpus / "abrt" / "expected.json").read_text())
    files = det = want = exact_count = first_ok = first_total = 0
    for case, e in sorted(exp.items()):
        if "expected_oops_count" not in e:
            continue
        inputs = [f for f in e["files"] if not f.endswith(".right")]
        if not inputs:
            continue
        path = corpus / "abrt" / (inputs[0] if "/" in inputs[0] else f"examples/{inputs[0]}")
        crashes = extract_crashes(path.read_text(errors="replace"))
        files += 1
        det += len(crashes)
        want += e["expected_oops_count"]
        exact_count += len(crashes) == e["expected_oops_count"]
        for got, line in zip(crashes, e.get("first_lines", [])):
            first_total += 1
            first_ok += got.first_line == line
        first_total += max(0, len(e.get("first_lines", [])) - len(crashes))
    pairs = [("oops4.right", "oops-same-as-oops4.right"), ("hash-gen-oops6.right", "hash-gen-same-as-oops6.right"),
             ("nmi_oops_hash.test", "nmi_oops_hash.right")]
    same = 0
    for a, b in pairs:
        ha = [c.duphash for c in extract_crashes((corpus / "abrt/examples" / a).read_text(errors="replace"))]
        hb = [c.duphash for c in extract_crashes((corpus / "abrt/examples" / b).read_text(errors="replace"))]
        same += bool(ha) and ha == hb and None not in ha
    return table("abrt (abrt-dump-oops expectations)", [
        ("files with an expected oops count", str(files)),
        ("crashes detected / expected", f"{det} / {want}"),
        ("files with the exact crash count", pct(exact_count, files)),
        ("first line (ABRT reason) agreement", pct(first_ok, first_total)),
        ("same-duphash pairs reproduced", pct(same, len(pairs))),
    ])


def eval_satyr(corpus: Path) -> list[str]:
    exp = json.loads((corpus / "satyr" / "expected.json").read_text())
    detected = parse_ok = parse_total = 0
    names = sorted(p.name for p in (corpus / "satyr" / "kerneloopses").iterdir())
    for name in names:
        text = (corpus / "satyr" / "kerneloopses" / name).read_text(errors="replace")
        detected += bool(extract_crashes(text))
        want = exp.get(name, {}).get("koops_stacktrace_parse")
        if isinstance(want, dict):
            parse_total += 1
            t = parse_trace(split_lines(text)[0])
            f, last = (t.frames[0] if t.frames else None), (t.frames[-1] if t.frames else None)
            got = {"first_function_name": f and f.function, "last_function_name": last and last.function,
                   "frame_count": len(t.frames), "taint_count": len(satyr_taint_names(taint_letters(text))),
                   "module_count": len(t.modules or []), "first_frame_special_stack": f and f.special_stack,
                   "last_frame_special_stack": last and last.special_stack}
            parse_ok += got == want
    py = exp["rhbz-827868"]["python_koops"]
    frames = parse_trace(split_lines((corpus / "satyr/kerneloopses/rhbz-827868").read_text())[0]).frames
    hashes = [duphash(frames, nframes=0, compat=False, normalize=True) == py["duphash"],
              duphash(frames, nframes=6, compat=True, normalize=True) == py["duphash_koops_compat_6_frames"]]
    return table("satyr (single-oops texts)", [
        ("crashes detected / expected", f"{detected} / {len(names)}"),
        ("stack-trace parse matches (7 fields each)", pct(parse_ok, parse_total)),
        ("pinned duphash values matched", pct(sum(hashes), len(hashes))),
    ])


def eval_clearlinux(corpus: Path) -> list[str]:
    exp = json.loads((corpus / "clearlinux" / "expected.json").read_text())
    files = sorted((corpus / "clearlinux" / "oops_test_files").iterdir())
    detected = sum(bool(extract_crashes(p.read_text(errors="replace"))) for p in files)
    cases = {k: v for k, v in exp.items() if "reason" in v}
    ok = 0
    for name, e in cases.items():
        crashes = extract_crashes((corpus / "clearlinux/oops_test_files" / name).read_text(errors="replace"))
        ok += bool(crashes) and crashes[0].first_line == e["reason"]
    return table("clearlinux (telemetrics oops probe)", [
        ("files with >= 1 crash detected", f"{detected} / {len(files)}"),
        ("classification line (reason) agreement", pct(ok, len(cases))),
    ])


def eval_syzkaller(corpus: Path, misses: int) -> list[str]:
    root = corpus / "syzkaller"
    labels = json.loads((root / "labels.json").read_text())
    tp = fn = fp = tn = title_ok = title_total = kind_ok = kind_total = 0
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    wrong: list[str] = []
    for name, label in sorted(labels.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
        crashes = extract_crashes((root / "input" / name).read_text(errors="replace"))
        if not label["title"]:
            fp += bool(crashes)
            tn += not crashes
            continue
        tp += bool(crashes)
        fn += not crashes
        title_total += 1
        got = crashes[0].title if crashes else None
        hit = got == label["title"]
        title_ok += hit
        per_type[label.get("type") or "(unknown type)"][0] += hit
        per_type[label.get("type") or "(unknown type)"][1] += 1
        if not hit and len(wrong) < misses:
            wrong.append(f"    {name}: got {got!r}, want {label['title']!r}")
        want_kind = syz_expected_kind(label)
        if want_kind is not None:
            kind_total += 1
            kind_ok += bool(crashes) and crashes[0].kind.value == want_kind
    rows = [
        ("logs with a crash: detected / expected", f"{tp} / {tp + fn}"),
        ("logs without a crash: false alarms", f"{fp} / {fp + tn}"),
        ("kind accuracy (TYPE mapped to our kinds)", pct(kind_ok, kind_total)),
        ("exact-title accuracy", pct(title_ok, title_total)),
    ]
    top = sorted(per_type.items(), key=lambda kv: -kv[1][1])[:12]
    rows += [(f"  titles, TYPE {t}", pct(ok, n)) for t, (ok, n) in top]
    out = table("syzkaller (syzbot titles, labels.json)", rows)
    if wrong:
        out += ["First title misses:", "", *wrong, ""]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("PVEPSTORE_SHARED") or REPO.parent / "shared") / "oops-corpus"
    ap.add_argument("--corpus", type=Path, default=default)
    ap.add_argument("--misses", type=int, default=0, help="also list the first N syzkaller title misses")
    args = ap.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"corpus not found: {args.corpus}", file=sys.stderr)
        return 2
    lines = eval_abrt(args.corpus) + eval_satyr(args.corpus) + eval_clearlinux(args.corpus) + \
        eval_syzkaller(args.corpus, args.misses)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
