"""Regenerate the real-kernel pstore_blk fixtures in tests/fixtures/.

    python3 -m tests.kernel.generate --all            # every scenario whose kernel exists
    python3 -m tests.kernel.generate oops-deflate     # one (or several) by name
    python3 -m tests.kernel.generate --list
    python3 -m tests.kernel.generate --smoke          # one boot, one Oops, names only

Scratch files (disk images, console logs, initramfs) go to
/var/cache/pvepstore/runs/<name>/. Slow (each boot ~10-30 s under TCG);
not part of the default test suite.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "tests.kernel"

from . import harness as H  # noqa: E402
from .scenarios import BY_NAME, SCENARIOS, SMOKE, Scenario  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
RUNS = H.CACHE / "runs"

END_EVENTS = {"panic", "reboot", "poweroff"}


def kernel_for(sc: Scenario) -> H.Kernel:
    return H.stock_kernel() if sc.kernel == "stock" else H.custom_kernel()


def pstore_lines(dmesg: str) -> list[str]:
    """dmesg lines about pstore (not the pvepstore_oops helper module's own lines)."""
    return [l for l in dmesg.splitlines()
            if re.search(r"(?<!pve)pstore", l, re.I) and "pvepstore_oops" not in l]


def _intify(v: str):
    v = v.strip()
    return int(v) if re.fullmatch(r"-?\d+", v) else v


def effective_params(view: H.View) -> tuple[dict, dict]:
    blk, core = {}, {}
    for k, v in view.params.items():
        mod, _, name = k.partition("/parameters/")
        (blk if mod == "pstore_blk" else core)[name] = _intify(v)
    return blk, core


def nr_cpus(possible: str) -> int:
    n = 0
    for part in possible.split(","):
        if not part:
            continue
        hi = part.split("-")[-1]
        n = max(n, int(hi) + 1)
    return n


def run_scenario(sc: Scenario, log=print, keep_fixture=True) -> dict:
    kernel = kernel_for(sc)
    if not kernel.available():
        raise RuntimeError(f"{sc.name}: kernel {kernel.label} not available ({kernel.image})")
    work = RUNS / sc.name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    img = work / "disk.img"
    H.make_blank_image(img, sc.disk_size)
    if sc.partition:
        start, size = sc.partition
        H.write_mbr(img, start // 512, size // 512)
    params = sc.insmod_params()
    boots_meta = []
    t_all = time.monotonic()

    def one_boot(tag, events, snapshot, bparams):
        ev_sh = H.events_to_sh(events)
        initrd = H.build_initramfs(kernel, work / f"{tag}.cpio", sc.blkdev, bparams, ev_sh)
        res = H.run_boot(kernel, H.Disk(boot_img if snapshot else img, sc.bus, snapshot),
                         initrd, work, tag, sc.cmdline, smp=sc.smp)
        log(f"  [{sc.name}] {tag}: {res.seconds:.1f}s rc={res.rc}"
            f"{' TIMEOUT' if res.timed_out else ''} views={list(res.views)}")
        if res.timed_out:
            raise RuntimeError(f"{sc.name} {tag}: QEMU timed out (see {work})")
        if "mount" not in res.views:
            raise RuntimeError(f"{sc.name} {tag}: no kernel view received (see {work}/{tag}.console.log)")
        ends = any((e if isinstance(e, str) else e[0]) in END_EVENTS for e in events)
        if not ends and "EVENTS-DONE" not in res.markers:
            raise RuntimeError(f"{sc.name} {tag}: events did not complete (see {work})")
        return res

    boot_img = img
    for i, events in enumerate(sc.boots, 1):
        bparams = sc.insmod_params(sc.params_for_boot(i))
        res = one_boot(f"boot{i}", events, snapshot=False, bparams=bparams)
        v = res.views["mount"]
        boots_meta.append({
            "boot": i,
            "insmod": f"insmod pstore_blk.ko {bparams}",
            "events": [e if isinstance(e, str) else list(e) for e in events],
            "seen_at_mount": sorted(v.files),
            "dmesg_pstore_lines": pstore_lines(v.dmesg),
            "markers": [m for m in res.markers if m.startswith(("RM-RC", "INSMOD-RC"))],
        })
        extra = {t: sorted(x.files) for t, x in res.views.items() if t != "mount"}
        if extra:
            boots_meta[-1]["seen_later"] = extra
        # dmesg of the writing boot *after* the events is not available (the
        # view is taken at mount); keep its console log in the run dir.

    fixture_img = work / "fixture.img"
    H.copy_sparse(img, fixture_img)
    boot_img = work / "read.img"
    H.copy_sparse(fixture_img, boot_img)
    res = one_boot("read", [], snapshot=True, bparams=params)
    view = res.views["mount"]
    blk, core = effective_params(view)
    names = sorted(view.files)
    meta = {
        "name": sc.name,
        "description": sc.description,
        "kernel": view.uname,
        "kernel_flavour": sc.kernel,
        "image_size": sc.disk_size,
        "blkdev": sc.blkdev,
        "bus": sc.bus,
        "offset": sc.offset,
        "partition": ({"table": "msdos", "number": 1, "start": sc.partition[0],
                       "size": sc.partition[1]} if sc.partition else None),
        "insmod": f"insmod pstore_blk.ko {params}",
        "cmdline_extra": sc.cmdline,
        "params": {
            "kmsg_size": sc.params.get("kmsg_size"),
            "pmsg_size": sc.params.get("pmsg_size"),
            "console_size": sc.params.get("console_size"),
            "ftrace_size": sc.params.get("ftrace_size"),
            "max_reason": sc.params.get("max_reason"),
            "compress": (re.search(r"pstore\.compress=(\S+)", sc.cmdline).group(1)
                         if "pstore.compress=" in sc.cmdline else None),
        },
        "effective_params": blk,
        "pstore_params": core,
        "cpu_possible": view.cpu_possible,
        "nr_cpus": nr_cpus(view.cpu_possible),
        "cap_128m": True,
        "events": boots_meta,
        "expected_records": names,
        "kernel_files": {n: {"size": view.file_stat[n][0], "mtime": view.file_stat[n][1]}
                         for n in names},
        "dmesg_pstore_lines": pstore_lines(view.dmesg),
        "disk_signatures": H.scan_signatures(fixture_img, sc.offset,
                                             step=1 if "ftrace_size" in sc.params else 4096),
    }
    problems = check(sc, meta, view)
    meta["generated_problems"] = problems
    for p in problems:
        log(f"  [{sc.name}] WARNING: {p}")
    if keep_fixture:
        write_fixture(sc, meta, view, fixture_img)
    log(f"  [{sc.name}] done in {time.monotonic() - t_all:.0f}s: records={names}")
    return meta


def check(sc: Scenario, meta: dict, view: H.View) -> list[str]:
    probs = []
    if sc.expected is not None and sorted(sc.expected) != meta["expected_records"]:
        probs.append(f"expected records {sorted(sc.expected)}, kernel shows {meta['expected_records']}")
    joined = "\n".join(meta["dmesg_pstore_lines"])
    for s in sc.expect_dmesg:
        if s not in joined:
            probs.append(f"dmesg lacks {s!r}")
    for n, data in view.files.items():
        if n.startswith("dmesg-"):
            has_total = data.startswith(b"Oops: Total ") or data.startswith(b"Panic: Total ")
            if "compress=none" in sc.cmdline and not has_total:
                probs.append(f"{n}: uncompressed record without 'Total N times' line")
            if "compress=none" not in sc.cmdline and has_total:
                probs.append(f"{n}: unexpected 'Total N times' line (record not compressed?)")
    return probs


def write_fixture(sc: Scenario, meta: dict, view: H.View, image: Path):
    dest = FIXTURES / sc.name
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "kernel").mkdir(parents=True)
    H.xz_file(image, dest / "image.xz")
    for n, data in view.files.items():
        (dest / "kernel" / n).write_bytes(data)
    (dest / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")


README_HEAD = """# Real-kernel pstore_blk fixtures

Generated by `tests/kernel/` (QEMU + busybox initramfs + the kernel's own
`pstore_zone.ko`/`pstore_blk.ko`). **Do not edit by hand**; this file is
rewritten by the generator.

Regenerate everything (stock + custom kernel; ~10 min under TCG):

    tests/kernel/build-kernel.sh              # once, 20-40 min: custom kernel with PSTORE_CONSOLE+PMSG
    python3 -m tests.kernel.generate --all

One fixture: `python3 -m tests.kernel.generate <name>`; list: `--list`;
stock only: `--stock`; quick check without touching fixtures: `--smoke`
(or `pytest -m kernel tests/kernel`).

## How a fixture is made

1. A blank sparse raw image of `image_size` bytes (plus an msdos partition
   table for `partition`) is attached to a QEMU guest (`-accel tcg`
   unless KVM works, `-smp 1`, `-m 512`, `-no-reboot`), on virtio-blk
   (`/dev/vda`) or virtio-scsi (`/dev/sda`).
2. Writing boot(s): `insmod pstore_zone.ko; insmod pstore_blk.ko <insmod params>`,
   `mount -t pstore pstore /sys/fs/pstore`, then the events: `oops` = write
   `oops` to `/proc/pvepstore_oops` (NULL dereference in a process-context
   write handler of `tests/kernel/oopsmod`; the kernel keeps running),
   `sleep N`, `rm` = unlink a pstorefs file, `pmsg` = write(2) to
   `/dev/pmsg0`, `kmsg_lines` = lines written to `/dev/kmsg`, `panic` =
   `echo c > /proc/sysrq-trigger` (`panic=-1`), `reboot` = `reboot -f`. Each
   boot ends with `poweroff -f` unless an event ended it.
3. The image after the last writing boot is `image.xz` (xz of the raw image).
4. Reading boot: the same image with `snapshot=on` (nothing can change it; the
   console zone would otherwise be overwritten), same insmod params, pstorefs
   mounted, and every file of `/sys/fs/pstore` is sent base64 over a second
   serial port **before anything is erased**: `kernel/<file name>` holds the
   kernel's exact bytes. `meta.json` has the parameters as given (`params`,
   null = not given) and as the kernel normalised them (`effective_params`,
   from `/sys/module/pstore_blk/parameters`), `pstore_params`
   (`/sys/module/pstore/parameters`), `nr_cpus` (from
   `/sys/devices/system/cpu/possible`), `offset` (byte offset of the pstore
   block device in the image), per-boot events with the records seen at mount
   and the pstore dmesg lines, `expected_records` (= files in `kernel/`),
   `kernel_files` (size and mtime of each file as pstorefs showed them), and
   `disk_signatures` (a raw host-side scan of psz_buffer headers every 4 KiB,
   relative to `offset`, for sanity only).

All timestamps are the guest's CLOCK_REALTIME at generation time (QEMU's RTC
follows the host clock), so they change on every regeneration.

## Fixtures

| name | kernel | image | insmod params | cmdline | events per boot | records seen by the kernel |
|---|---|---|---|---|---|---|
"""


def _fmt_events(evs) -> str:
    out = []
    for e in evs:
        if isinstance(e, str):
            out.append(e)
        elif e[0] == "sleep":
            out.append(f"sleep {e[1]}")
        elif e[0] in ("rm", "view"):
            out.append(f"{e[0]} {e[1]}")
        elif e[0] == "pmsg":
            out.append(f"pmsg({len(e[1])} B)")
        else:
            out.append(f"{e[0]}({e[1]})")
    return ", ".join(out)


def write_readme():
    rows, details = [], []
    for sc in SCENARIOS:
        mp = FIXTURES / sc.name / "meta.json"
        if not mp.exists():
            rows.append(f"| {sc.name} | {sc.kernel} | – | – | – | – | *not generated* |")
            continue
        m = json.loads(mp.read_text())
        boots = "<br>".join(
            f"{b['boot']}: "
            + (f"[`{b['insmod'].replace('insmod pstore_blk.ko ', '')}`] "
               if b.get("insmod", m["insmod"]) != m["insmod"] else "")
            + _fmt_events(b["events"]) for b in m["events"])
        size = m["image_size"]
        size_s = f"{size >> 20} MiB" if size >= 1 << 20 and size % (1 << 20) == 0 else f"{size >> 10} KiB"
        if m.get("partition"):
            size_s += f", part 1 @ {m['offset']}"
        params = m["insmod"].replace("insmod pstore_blk.ko ", "")
        recs = ", ".join(m["expected_records"]) or "(none)"
        rows.append(f"| {sc.name} | {m['kernel']} | {size_s} ({m['bus']}) | `{params}` | "
                    f"`{m['cmdline_extra']}` | {boots} | {recs} |")
        details.append(f"### {sc.name}\n\n{m['description']}\n\n" + "\n".join(
            f"    {l}" for l in m["dmesg_pstore_lines"] if "ommand line" not in l) + "\n")
    text = README_HEAD + "\n".join(rows) + "\n\n## Descriptions and pstore dmesg lines of the reading boot\n\n" + "\n".join(details)
    (FIXTURES / "README.md").write_text(text)


def smoke(log=print) -> dict:
    """One boot, one Oops, remount pstorefs; compare names and the zone-0 header.

    Returns {"ok": bool, "names": [...], "problems": [...], "seconds": float}.
    """
    sc = SMOKE
    kernel = kernel_for(sc)
    work = RUNS / "smoke"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    img = work / "disk.img"
    H.make_blank_image(img, sc.disk_size)
    ev_sh = H.events_to_sh(sc.boots[0])
    initrd = H.build_initramfs(kernel, work / "boot1.cpio", sc.blkdev, sc.insmod_params(), ev_sh)
    res = H.run_boot(kernel, H.Disk(img, sc.bus), initrd, work, "boot1", timeout=120)
    probs = []
    if res.timed_out:
        probs.append("timeout")
    after = res.views.get("after")
    names = sorted(after.files) if after else []
    if names != sorted(sc.expected):
        probs.append(f"names {names} != {sc.expected}")
    hits = H.scan_signatures(img)
    if not hits or hits[0]["off"] != 0 or hits[0]["type"] != "dmesg" or hits[0]["datalen"] <= 40:
        probs.append(f"zone 0 header not written: {hits[:2]}")
    log(f"smoke: {res.seconds:.1f}s names={names} sigs={hits[:2]} problems={probs}")
    return {"ok": not probs, "names": names, "problems": probs, "seconds": res.seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="scenario names")
    ap.add_argument("--all", action="store_true", help="all scenarios (custom-kernel ones only if built)")
    ap.add_argument("--stock", action="store_true", help="all stock-kernel scenarios")
    ap.add_argument("--custom", action="store_true", help="all custom-kernel scenarios")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--readme", action="store_true", help="only rewrite tests/fixtures/README.md")
    ap.add_argument("--dry-run", action="store_true", help="boot but do not write tests/fixtures")
    a = ap.parse_args(argv)
    if a.list:
        for s in SCENARIOS:
            print(f"{s.name:26s} [{s.kernel}] {s.description}")
        return 0
    if a.readme:
        write_readme()
        return 0
    if a.smoke:
        return 0 if smoke()["ok"] else 1
    todo = []
    if a.all or a.stock:
        todo += [s for s in SCENARIOS if s.kernel == "stock"]
    if a.all or a.custom:
        cust = [s for s in SCENARIOS if s.kernel == "custom"]
        if H.custom_kernel().available():
            todo += cust
        elif a.custom:
            print("custom kernel not built: run tests/kernel/build-kernel.sh", file=sys.stderr)
            return 2
        else:
            print("NOTE: custom kernel not built, skipping", [s.name for s in cust])
    for n in a.names:
        if n not in BY_NAME:
            print(f"unknown scenario {n}; --list shows them", file=sys.stderr)
            return 2
        todo.append(BY_NAME[n])
    if not todo:
        ap.print_help()
        return 2
    print(f"accel={H.probe_accel()}")
    failed = []
    for sc in todo:
        try:
            meta = run_scenario(sc, keep_fixture=not a.dry_run)
            if meta["generated_problems"]:
                failed.append(sc.name)
        except Exception as e:  # keep going with the other scenarios
            print(f"  [{sc.name}] FAILED: {e}")
            failed.append(sc.name)
    if not a.dry_run:
        write_readme()
    if failed:
        print("problems in:", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
