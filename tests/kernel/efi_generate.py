"""efi_pstore fixtures: the guest kernel's efi_pstore writing into OVMF's variable store.

The vars file is a fresh copy of Debian's ``OVMF_VARS_4M.fd`` (what Proxmox's efidisk0 holds,
raw).  Each boot is its own QEMU process on that file (as a Proxmox VM start is); the reading
boot runs on a *copy* so the fixture's ``image.xz`` is exactly the store the kernel read, and the
copy afterwards tells whether OVMF changed the store at boot (reclaim).

    python3 -m tests.kernel.efi_generate --list
    python3 -m tests.kernel.efi_generate efi-oops efi-panic ...
    python3 -m tests.kernel.efi_generate --all
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.kernel import harness as H

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
RUNS = H.CACHE / "runs"
OVMF_DIR = H.OVMF_CODE.parent
README_BEGIN = "<!-- efi-fixtures-begin -->"
README_END = "<!-- efi-fixtures-end -->"

AKD = ("sh", "echo Y > /sys/module/printk/parameters/always_kmsg_dump", "always_kmsg_dump=Y")
SYSRQ_B = ("sh", 'echo b > /proc/sysrq-trigger; sleep 30', "sysrq-b")
RM_FIRST = ("sh", 'f=$(ls /sys/fs/pstore | grep dmesg-efi | head -1); '
                  'rm -v /sys/fs/pstore/$f > /dev/ttyS0 2>&1; out "==RM-RC $f $?=="', "rm first record")
VARCOUNT = ("sh", 'out "==EFIVARS $(ls /sys/firmware/efi/efivars | grep -c cfc8fc79-be2e-4ddc-97f0-9f98bfe298a0)=="',
            "count efi_pstore variables")


@dataclass
class EfiScenario:
    name: str
    description: str
    boots: list                       # events per writing boot (one QEMU process each)
    machine: str = "pc"
    code: str = "OVMF_CODE_4M.fd"
    secure: bool = False
    cmdline: str = ""
    expect_records: bool = True
    extra_boots_after: int = 0        # fill: boots after the reading copy (does it still boot?)
    meta: dict = field(default_factory=dict)
    kernel: str = "stock"             # harness.KERNELS: "stock" (Debian 12) | "debian13"


def _oopses(n: int, gap: float = 0.5) -> list:
    evs = []
    for _ in range(n):
        evs += ["oops", ("sleep", gap)]
    return evs


SCENARIOS = [
    EfiScenario("efi-oops", "pc + OVMF_CODE_4M.fd: two Oopses 1 s apart, then poweroff -f "
                "(always_kmsg_dump off: no Shutdown dump).",
                [["oops", ("sleep", 1), "oops", ("sleep", 1), VARCOUNT]]),
    EfiScenario("efi-panic", "sysrq-c with panic=-1: the panic dump is written by efi_pstore "
                "(non-blocking SetVariable) before the reset.", [["panic"]]),
    EfiScenario("efi-reboot", "always_kmsg_dump=Y at runtime, then reboot -f: the Shutdown dump.",
                [[AKD, ("sleep", 0.5), "reboot"]]),
    EfiScenario("efi-poweroff", "always_kmsg_dump=Y at runtime, then poweroff -f: the Shutdown dump.",
                [[AKD, ("sleep", 0.5), "poweroff"]]),
    EfiScenario("efi-sysrq-b", "always_kmsg_dump=Y, then sysrq-b (emergency_restart): the "
                "Emergency dump.", [[AKD, ("sleep", 0.5), SYSRQ_B]]),
    EfiScenario("efi-erase", "Boot 1: two Oopses. Boot 2: rm of one pstorefs file (efi_pstore "
                "deletes that variable; the firmware marks it deleted, the bytes stay).",
                [["oops", ("sleep", 1), "oops", ("sleep", 1)], [RM_FIRST, ("sleep", 0.5), VARCOUNT]]),
    EfiScenario("efi-q35-secboot", "q35,smm=on + OVMF_CODE_4M.secboot.fd (SMM variable service, "
                "pflash secure=on as qemu-server sets it); one Oops, then a panic.",
                [["oops", ("sleep", 1), "panic"]],
                machine="q35,smm=on", code="OVMF_CODE_4M.secboot.fd", secure=True),
    EfiScenario("efi-fill", "Store fill: boot 1 writes 40 Oops dumps (10 KiB kmsg each, ~15 "
                "variables) until efi_pstore fails; boot 2 (new process) is the next start: does it "
                "boot, does OVMF reclaim, does a new Oops still fit; the reading boot is a copy of "
                "the store after boot 2.",
                [_oopses(40) + [VARCOUNT], ["oops", ("sleep", 1), VARCOUNT]]),
]
# Debian 13's stock kernel (6.12, tests/kernel/debian13.py): the same measurements (issue 18)
SCENARIOS += [replace(sc, name=f"d13-{sc.name}", kernel="debian13",
                      description=f"Debian 13 stock kernel (6.12), as {sc.name}: {sc.description}")
              for sc in SCENARIOS if sc.name in ("efi-oops", "efi-panic", "efi-reboot", "efi-poweroff", "efi-sysrq-b",
                                                  "efi-erase")]
BY_NAME = {s.name: s for s in SCENARIOS}


def _store_numbers(path: Path) -> dict:
    """Fill level of a vars file by pvepstore's own reader (sanity; the tests check it)."""
    try:
        from pvepstore.pstore.efi import read_efi
        from pvepstore.pstore.efivars import parse_varstore
        from pvepstore.pstore.source import BytesSource
    except ImportError:
        return {}
    data = path.read_bytes()
    vs = parse_varstore(BytesSource(data), include_deleted=True)
    res = read_efi(BytesSource(data))
    crash = [v for v in vs.variables if v.guid == "cfc8fc79-be2e-4ddc-97f0-9f98bfe298a0"]
    return {"store_size": vs.store_size, "used_bytes": vs.used_bytes, "live_bytes": vs.live_bytes,
            "pstore_bytes": res.store.pstore_bytes if getattr(res, "store", None) else None,
            "variables": len(vs.variables), "live_variables": sum(v.live for v in vs.variables),
            "pstore_variables": len(crash), "pstore_live": sum(v.live for v in crash),
            "records_listed": len(res.records)}


def _pstore_dmesg(dmesg: str) -> list[str]:
    return [l for l in dmesg.splitlines()
            if re.search(r"pstore|efi|EFI|Oops#|variable", l) and "Call Trace" not in l][:60]


def run(sc: EfiScenario, log=print) -> dict:
    kernel = H.KERNELS[sc.kernel]()
    work = RUNS / sc.name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    vars_fd = work / "vars.fd"
    shutil.copy2(H.OVMF_VARS, vars_fd)
    code = OVMF_DIR / sc.code

    def qemu(tag: str, events: list, fw_vars: Path) -> H.BootResult:
        initrd = H.build_initramfs(kernel, work / f"{tag}.cpio", "", "", H.events_to_sh(events),
                                   backend="efi", kmod_modules=["efi_pstore", "efivarfs"])
        res = H.run_boot(kernel, None, initrd, work, tag, sc.cmdline, timeout=300,
                         extra_args=H.ovmf_args(fw_vars, code, sc.secure), machine=sc.machine)
        log(f"  [{sc.name}] {tag}: {res.seconds:.1f}s rc={res.rc}"
            f"{' TIMEOUT' if res.timed_out else ''} views={list(res.views)}")
        return res

    boots_meta = []
    for i, evs in enumerate(sc.boots, 1):
        res = qemu(f"boot{i}", evs, vars_fd)
        shutil.copy2(vars_fd, work / f"vars-after-boot{i}.fd")
        views = {t: {"files": sorted(v.files), "pstore_dmesg": _pstore_dmesg(v.dmesg)}
                 for t, v in res.views.items()}
        boots_meta.append({"boot": i, "events": [e if isinstance(e, str) else list(e[:1]) + [e[-1]]
                                                  for e in evs],
                           "seconds": round(res.seconds, 1), "rc": res.rc, "timed_out": res.timed_out,
                           "booted": "mount" in res.views, "views": views,
                           "markers": [m for m in res.markers if m.startswith(("EFIVARS", "RM-RC",
                                                                                "INSMOD-RC"))],
                           "console_tail": [l for l in res.console.splitlines()
                                            if re.search(r"efi|EFI|pstore|variable", l)][-20:],
                           "store_after": _store_numbers(work / f"vars-after-boot{i}.fd")})
    image = work / "image.fd"
    shutil.copy2(vars_fd, image)
    read_copy = work / "read-copy.fd"
    shutil.copy2(vars_fd, read_copy)
    res = qemu("read", [], read_copy)
    view = res.views.get("mount")
    if view is None:
        raise RuntimeError(f"{sc.name}: the reading boot sent no view (see {work})")
    meta = {
        "format": "efi", "name": sc.name, "description": sc.description, "kernel": view.uname,
        "machine": sc.machine, "firmware_code": sc.code, "pflash_secure": sc.secure,
        "vars_template": str(H.OVMF_VARS), "vars_size": image.stat().st_size,
        "cmdline_extra": sc.cmdline, "boots": boots_meta,
        "expected_records": sorted(view.files),
        "kernel_files": {n: {"size": s, "mtime": m} for n, (s, m) in sorted(view.file_stat.items())},
        "efi_pstore_params": {k.split("/parameters/")[1]: v for k, v in view.params.items()
                              if k.startswith("efi_pstore/")},
        # the module parameters as the kernel shows them (tests.conftest reads this key for
        # every fixture; efi_pstore has no layout parameters, only pstore_disable/record_size)
        "effective_params": {k.split("/parameters/")[1]: v for k, v in view.params.items()
                             if k.startswith("efi_pstore/")},
        "pstore_params": {k.split("/parameters/")[1]: v for k, v in view.params.items()
                          if k.startswith("pstore/")},
        "read_dmesg": _pstore_dmesg(view.dmesg),
        "store": _store_numbers(image),
        "store_after_reading_boot": _store_numbers(read_copy),
    }
    from tests.kernel.generate import write_fixture  # the one fixture layout (generate imports us lazily)

    write_fixture(sc, meta, view, image)
    if sc.expect_records and not view.files:
        log(f"WARNING {sc.name}: the kernel lists no records")
    log(f"  [{sc.name}] records: {len(view.files)}  store: {meta['store']}")
    return meta


def readme_section() -> str:
    rows = []
    for sc in SCENARIOS:
        mp = FIXTURES / sc.name / "meta.json"
        if not mp.exists():
            rows.append(f"| {sc.name} | – | {sc.machine} | – | *not generated* |")
            continue
        m = json.loads(mp.read_text())
        st = m.get("store") or {}
        fill = (f"{st.get('used_bytes')} / {st.get('store_size')} B used, "
                f"{st.get('pstore_live')} live pstore vars") if st else "–"
        rows.append(f"| {sc.name} | {m['kernel']} | {m['machine']} ({m['firmware_code']}) | "
                    f"{len(m['expected_records'])} | {fill} |")
    fill = _fill_text()
    return (f"{README_BEGIN}\n## efi_pstore fixtures (`\"format\": \"efi\"`, `tests/kernel/efi_generate.py`)\n\n"
            "Each writing boot is a QEMU process on the VM's own copy of `OVMF_VARS_4M.fd` (= Proxmox's "
            "efidisk0, raw); the guest runs `modprobe efi_pstore`, mounts efivarfs and pstorefs. "
            "`image.xz` is the vars file after the last writing boot; `kernel/` is the pstorefs view of a "
            "reading boot on a copy of it; `meta.json` has per-boot events, markers, dmesg lines and the "
            "store fill level (pvepstore's reader) after each boot and after the reading boot.\n\n"
            "| name | kernel | machine (code) | records | store (image.xz) |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n" + "\n".join(
                f"* **{sc.name}**: {sc.description}" for sc in SCENARIOS) + "\n\n" + fill + f"\n{README_END}\n")


def _fill_text() -> str:
    """The measured store-fill behaviour, from efi-fill's meta.json."""
    mp = FIXTURES / "efi-fill" / "meta.json"
    if not mp.exists():
        return ""
    m = json.loads(mp.read_text())
    b1, b2 = (b["store_after"] for b in m["boots"][:2])
    return ("**Store fill (efi-fill), measured**: a fresh `OVMF_VARS_4M.fd` has a "
            f"{b1['store_size']}-byte variable area. Boot 1's 40 Oopses (14 variables of <= 1 KiB "
            f"per 10 KiB dump) left {b1['pstore_live']} efi_pstore variables: 19 complete dumps and "
            f"11 parts of the 20th; Oopses 21-40 wrote nothing and the kernel logged nothing about it "
            f"(pstore ignores the write error). Store after boot 1: {b1['used_bytes']} bytes used, "
            f"{b1['live_bytes']} live. The next start (boot 2, a new QEMU process) booted normally but "
            f"the firmware spent ~30 s more (TCG) before the kernel: it reclaimed the store (used "
            f"{b2['used_bytes']} = live {b2['live_bytes']}, deleted bytes 0); boot 2's one Oops got "
            f"only Part1-Part4 (the newest text; parts are written newest first) into the freed space "
            f"({b2['pstore_live']} variables). Every OVMF boot rewrites MTC, ConIn, ConOut, ErrOut "
            "(~2.4 KB); a full store is compacted again at each boot (the reading boot too, ~24 s "
            "extra). Deleted efi_pstore variables survive only until such a reclaim.\n")


def update_readme() -> None:
    path = FIXTURES / "README.md"
    text = path.read_text() if path.exists() else ""
    if README_BEGIN in text:
        text = text[:text.index(README_BEGIN)] + text[text.index(README_END) + len(README_END) + 1:]
    path.write_text(text.rstrip("\n") + "\n\n" + readme_section())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--debian13", action="store_true", help="the Debian 13 (6.12) scenarios")
    ap.add_argument("--restat", action="store_true",
                    help="recompute the store numbers in meta.json from the kept run files")
    a = ap.parse_args(argv)
    if a.restat:
        for sc in SCENARIOS:
            mp, work = FIXTURES / sc.name / "meta.json", RUNS / sc.name
            if not mp.exists() or not (work / "image.fd").exists():
                continue
            m = json.loads(mp.read_text())
            m["store"] = _store_numbers(work / "image.fd")
            m["store_after_reading_boot"] = _store_numbers(work / "read-copy.fd")
            for b in m["boots"]:
                b["store_after"] = _store_numbers(work / f"vars-after-boot{b['boot']}.fd")
            m.setdefault("effective_params", dict(m.get("efi_pstore_params", {})))
            mp.write_text(json.dumps(m, indent=2) + "\n")
        update_readme()
        return 0
    if a.list:
        for s in SCENARIOS:
            print(f"{s.name}: {s.description}")
        return 0
    todo = SCENARIOS if a.all else [BY_NAME[n] for n in a.names]
    if a.debian13:
        todo = [s for s in SCENARIOS if s.kernel == "debian13"]
    for sc in todo:
        t0 = time.monotonic()
        run(sc)
        print(f"{sc.name}: {time.monotonic() - t0:.0f}s", flush=True)
    update_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
