"""Regenerate the real-kernel pstore_blk and ramoops-on-ivshmem fixtures in tests/fixtures/.

    python3 -m tests.kernel.generate --all            # every scenario whose kernel exists
    python3 -m tests.kernel.generate oops-deflate     # one (or several) by name
    python3 -m tests.kernel.generate --ivshmem        # the ramoops-on-ivshmem scenarios
    python3 -m tests.kernel.generate --list
    python3 -m tests.kernel.generate --smoke          # one boot, one Oops, names only
    python3 -m tests.kernel.generate --smoke-ivshmem  # the same with ramoops on ivshmem

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

from pvepstore.config import Config  # noqa: E402
from pvepstore.pstore import BytesSource, RamoopsParams, read_source  # noqa: E402
from pvepstore.pve import ivshmem as pve_ivshmem  # noqa: E402

from . import harness as H  # noqa: E402
from .scenarios import (BY_NAME, ROUTE_BY_NAME, SCENARIOS, SMOKE, SMOKE_IVSHMEM,  # noqa: E402
                        QemuRun, Route, Scenario)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
RUNS = H.CACHE / "runs"

END_EVENTS = {"panic", "reboot", "poweroff"}


def kernel_for(sc: Scenario) -> H.Kernel:
    return H.KERNELS[sc.kernel]()


def pstore_lines(dmesg: str) -> list[str]:
    """dmesg lines about pstore (not the pvepstore_oops helper module's own lines)."""
    return [l for l in dmesg.splitlines()
            if re.search(r"(?<!pve)pstore|ramoops", l, re.I) and "pvepstore_oops" not in l]


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
    if sc.backend == "ramoops":
        return run_ramoops_scenario(sc, log, keep_fixture)
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
    for n, head in sc.expect_heads.items():
        first = view.files.get(n, b"").split(b"\n", 1)[0].decode("utf-8", "replace")
        if first != head:
            probs.append(f"{n}: first line {first!r}, expected {head!r}")
    for n, data in view.files.items():
        if n.startswith("dmesg-"):
            has_total = data.startswith(b"Oops: Total ") or data.startswith(b"Panic: Total ")
            if "compress=none" in sc.cmdline and not has_total:
                probs.append(f"{n}: uncompressed record without 'Total N times' line")
            if "compress=none" not in sc.cmdline and has_total:
                probs.append(f"{n}: unexpected 'Total N times' line (record not compressed?)")
    return probs


# ----------------------------------------------------------------------------
# ramoops on Proxmox's ivshmem device
# ----------------------------------------------------------------------------
VMID = 100                 # the VM id of the simulated PVE host (host_root under the run dir)
PANIC_END = "end Kernel panic"


def consistent_copy(path: Path, attempts: int = 20) -> bytes:
    """Read the live file until two reads agree (the guest may be writing)."""
    prev = None
    for _ in range(attempts):
        data = path.read_bytes()
        if data == prev:
            return data
        prev = data
        time.sleep(0.05)
    raise RuntimeError(f"{path} kept changing")


class IvshmemWatch:
    """on_poll of one QEMU process on the ivshmem file: copies of the live memory at
    each boot's PRE-PROBE marker and at each complete view, PVE's post-start hook
    once QEMU has the file, and the hung-panic copy (then QEMU is killed)."""

    def __init__(self, shm: Path, run: QemuRun, cfg: Config):
        self.shm, self.run, self.cfg = shm, run, cfg
        self.pre_probe: dict[int, bytes] = {}
        self.view_end: dict[str, bytes] = {}
        self.hang: bytes | None = None
        self.post_start: list[str] | None = None

    def __call__(self, chan: str, con: str) -> bool:
        for n in re.findall(r"^==PRE-PROBE (\d+)==", chan, re.M):
            if int(n) not in self.pre_probe:
                self.pre_probe[int(n)] = consistent_copy(self.shm)
        for tag in re.findall(r"^==PVEPSTORE-VIEW-END (\S+)==", chan, re.M):
            if tag not in self.view_end:
                self.view_end[tag] = consistent_copy(self.shm)
        if self.run.pve and self.post_start is None and self.shm.exists():
            self.post_start = pve_ivshmem.run_hook(self.cfg, VMID, "post-start")
        if self.run.hang and PANIC_END in con:
            time.sleep(0.5)
            self.hang = consistent_copy(self.shm)
            return True
        return False


def ramoops_view_params(view: H.View) -> dict:
    """/sys/module/ramoops/parameters after the probe (ramoops_probe() writes back what it used)."""
    return {k.split("/parameters/", 1)[1]: _intify(v) for k, v in view.params.items()
            if k.startswith("ramoops/")}


def ramoops_params_of(eff: dict, nr: int) -> RamoopsParams:
    return RamoopsParams(mem_size=int(eff["mem_size"]), record_size=int(eff["record_size"]),
                         console_size=int(eff["console_size"]), ftrace_size=int(eff["ftrace_size"]),
                         pmsg_size=int(eff["pmsg_size"]), nr_cpus=nr)


def host_read(image: bytes, params: RamoopsParams | None, view: H.View | None = None) -> dict:
    """What pvepstore's reader makes of the memory (and whether it equals the kernel's view)."""
    res = read_source(BytesSource(image, name="ivshmem"), params, fmt="ramoops")
    doc = {"params": "known" if params else "discovered",
           "records": [r.name for r in res.records],
           "reasons": [r.reason for r in res.records]}
    if view is not None:
        doc["identical_to_kernel"] = {r.name: r.data for r in res.records} == view.files
    return doc


def ramoops_headers(image: bytes, step: int = 512) -> list[dict]:
    """Raw host-side scan of persistent_ram_buffer headers {sig, start, size} (sanity only)."""
    import struct
    hits = []
    for off in range(0, len(image) - 12, step):
        sig, start, size = struct.unpack_from("<Iii", image, off)
        if sig == 0x43474244:
            hits.append({"off": off, "start": start, "size": size})
    return hits


def _ivshmem_argv_text() -> str:
    return " ".join(H.ivshmem_args(Path("<file>")))


def run_ramoops_scenario(sc: Scenario, log=print, keep_fixture=True) -> dict:
    kernel = kernel_for(sc)
    if not kernel.available():
        raise RuntimeError(f"{sc.name}: kernel {kernel.label} not available ({kernel.image})")
    work = RUNS / sc.name
    if work.exists():
        shutil.rmtree(work)
    (work / "host" / "dev" / "shm").mkdir(parents=True)
    # a temporary "Proxmox host": /dev/shm under host_root, pvepstore state next to it
    cfg = Config(host_root=str(work / "host"), state_dir=str(work / "state"))
    shm = cfg.paths.ivshmem_file(pve_ivshmem.shm_name(VMID))
    route = ROUTE_BY_NAME[sc.route] if sc.route else None
    vars_fd = None
    if sc.firmware == "ovmf":
        vars_fd = work / "OVMF_VARS.fd"
        shutil.copy2(H.OVMF_VARS, vars_fd)
    insmod = sc.ramoops_insmod()
    timeout = 420 if sc.firmware == "ovmf" else 240
    t_all = time.monotonic()

    def qemu(tag: str, mem_path: Path, boots: list, *, reboot=False, watch=None,
             rt: Route | None = route, fw_vars: Path | None = vars_fd) -> H.BootResult:
        counter = work / f"{tag}.counter.img"
        H.make_blank_image(counter, 512)
        if rt is not None:
            boots = [rt.events() + list(evs) for evs in boots]
        initrd = H.build_initramfs(
            kernel, work / f"{tag}.cpio", "/dev/vda", insmod, H.boots_to_sh(boots),
            backend="ramoops", counter="/dev/vda", pre_sh=rt.pre_sh() if rt else "",
            kmod_modules=["efi_pstore"] if sc.firmware == "ovmf" else None,
            modprobe_d=rt.modprobe_d if rt else None)
        extra = H.ivshmem_args(mem_path) + (H.ovmf_args(fw_vars) if fw_vars else [])
        res = H.run_boot(kernel, H.Disk(counter), initrd, work, tag,
                         " ".join(x for x in (sc.cmdline, rt.cmdline if rt else "") if x),
                         timeout=timeout, smp=sc.smp, extra_args=extra, no_reboot=not reboot,
                         on_poll=watch)
        log(f"  [{sc.name}] {tag}: {res.seconds:.1f}s rc={res.rc}"
            f"{' TIMEOUT' if res.timed_out else ''}{' killed' if res.killed else ''} "
            f"views={list(res.views)}")
        if res.timed_out:
            raise RuntimeError(f"{sc.name} {tag}: QEMU timed out (see {work})")
        return res

    # ---- OVMF: which route keeps efi_pstore out of ramoops' way ----
    routes_meta = []
    for rt in sc.routes:
        pvars = work / f"probe-{rt.name}.vars.fd"
        shutil.copy2(H.OVMF_VARS, pvars)
        res = qemu(f"probe-{rt.name}", work / f"probe-{rt.name}.shm", [[("view", "after")]],
                   rt=rt, fw_vars=pvars)
        v = res.views.get("after") or res.views.get("mount") or H.View()
        backend = v.params.get("pstore/parameters/backend", "")
        routes_meta.append({
            "route": rt.name, "description": rt.description, "modprobe_d": rt.modprobe_d,
            "cmdline": rt.cmdline, "ramoops_first": rt.ramoops_first,
            "pstore_backend": backend, "ramoops_wins": backend == "ramoops",
            "efi_pstore_loaded": "efi_pstore" in v.modules,
            "efi_pstore_params": {k.split("/parameters/")[1]: val for k, val in v.params.items()
                                  if k.startswith("efi_pstore/")},
            "markers": [m for m in res.markers
                        if m.startswith(("INSMOD-RC", "UDEV-MODPROBE", "MODPROBE-EFI", "IVSHMEM"))],
            "dmesg_lines": [l for l in pstore_lines(v.dmesg) if "ommand line" not in l],
        })
        log(f"  [{sc.name}] route {rt.name}: backend={backend!r} efi_pstore loaded="
            f"{'efi_pstore' in v.modules}")

    # ---- the writing run(s) ----
    runs_meta = []
    watch = res = None
    for ri, run in enumerate(sc.runs, 1):
        hooks = {}
        if run.pve:
            hooks["pre-start"] = pve_ivshmem.run_hook(cfg, VMID, "pre-start")
        watch = IvshmemWatch(shm, run, cfg)
        boots = list(run.boots)
        if sc.read == "in-process" and ri == len(sc.runs):
            # the reading boot holds still after its view, so the host copies the memory
            # again before the boot's own poweroff writes a new Shutdown dump
            boots[-1] = list(boots[-1]) + [("sleep", 2)]
        res = qemu(f"run{ri}", shm, boots, reboot=run.reboot, watch=watch)
        for n, data in watch.pre_probe.items():      # kept in the run dir for inspection
            (work / f"run{ri}.boot{n}.pre-probe.shm").write_bytes(data)
        for tag, data in watch.view_end.items():
            (work / f"run{ri}.{tag}.view-end.shm").write_bytes(data)
        if run.pve:
            hooks["post-start"] = watch.post_start
            shm.unlink()                                   # vm_stop_cleanup()
            hooks["unlink"] = [f"unlinked {shm.name}"]
            hooks["post-stop"] = pve_ivshmem.run_hook(cfg, VMID, "post-stop")
            hooks = {k: [a.replace(str(work), "<run dir>") for a in v or []] for k, v in hooks.items()}
        rmeta = {"run": ri, "in_process_reboot": run.reboot, "hang": run.hang, "boots": []}
        for n, evs in enumerate(run.boots, 1):
            tag = "mount" if n == 1 else f"mount@{n}"
            v = res.views.get(tag)
            if v is None:
                raise RuntimeError(f"{sc.name} run{ri}: no kernel view of boot {n} (see {work})")
            rmeta["boots"].append({
                "boot": n, "events": [e if isinstance(e, str) else list(e) for e in evs],
                "seen_at_mount": sorted(v.files),
                "dmesg_pstore_lines": pstore_lines(v.dmesg)})
        if hooks:
            rmeta["pve_hooks"] = hooks
        if run.hang:
            if watch.hang is None:
                raise RuntimeError(f"{sc.name} run{ri}: the guest never reached '{PANIC_END}'")
            rmeta["live_copy_equals_file_after_kill"] = watch.hang == shm.read_bytes()
        runs_meta.append(rmeta)

    # ---- the kernel's view ----
    last = sc.runs[-1]
    if sc.read == "in-process":
        n = len(last.boots)
        tag = "mount" if n == 1 else f"mount@{n}"
        view = res.views[tag]
        image = watch.pre_probe[n]
        read_meta = {"how": "in-process" if n > 1 else "new QEMU process on the relinked file",
                     "run": len(sc.runs), "boot": n,
                     "image": "live file copied before that boot's ramoops probe",
                     "unchanged_by_probe_and_mount": watch.view_end.get(tag) == image}
    else:
        image = watch.hang if last.hang else shm.read_bytes()
        read_img = work / "read.shm"
        read_img.write_bytes(image)
        rvars = None
        if vars_fd:
            rvars = work / "read.vars.fd"
            shutil.copy2(vars_fd, rvars)
        rres = qemu("read", read_img, [[]], fw_vars=rvars)
        view = rres.views["mount"]
        read_meta = {"how": "new QEMU process on a copy of the file",
                     "image": "live copy while the hung guest still ran" if last.hang
                     else "the file after the last QEMU process exited"}
    fixture_img = work / "fixture.img"
    fixture_img.write_bytes(image)
    eff = ramoops_view_params(view)
    nr = nr_cpus(view.cpu_possible)
    params = ramoops_params_of(eff, nr)
    names = sorted(view.files)
    bar = next((m.split() for m in (res.markers if sc.read == "in-process" else rres.markers)
                if m.startswith("IVSHMEM ")), None)
    meta = {
        "name": sc.name,
        "description": sc.description,
        "format": "ramoops",
        "kernel": view.uname,
        "kernel_flavour": sc.kernel,
        "firmware": sc.firmware,
        "image_size": len(image),
        "offset": 0,
        "qemu_ivshmem": _ivshmem_argv_text(),
        "ivshmem_bar2": {"pci": bar[1], "address": bar[2], "size": bar[3]} if bar else None,
        "insmod": f"insmod ramoops.ko mem_address=<BAR2> mem_size=<BAR2 size> {insmod}",
        "cmdline_extra": " ".join(x for x in (sc.cmdline, route.cmdline if route else "") if x),
        "route": ({"name": route.name, "description": route.description,
                   "modprobe_d": route.modprobe_d} if route else None),
        "ramoops_params": {k: getattr(params, k) for k in
                           ("record_size", "console_size", "ftrace_size", "pmsg_size", "mem_size")},
        "effective_params": eff,
        "pstore_params": {k.split("/parameters/")[1]: _intify(v) for k, v in view.params.items()
                          if k.startswith("pstore/")},
        "cpu_possible": view.cpu_possible,
        "nr_cpus": nr,
        "runs": runs_meta,
        "read": read_meta,
        "expected_records": names,
        "kernel_files": {n_: {"size": view.file_stat[n_][0], "mtime": view.file_stat[n_][1]}
                         for n_ in names},
        "dmesg_pstore_lines": pstore_lines(view.dmesg),
        "host_read": host_read(image, params, view),
        "host_read_discovered": host_read(image, None, view),
        "zone_headers": ramoops_headers(image),
    }
    if routes_meta:
        meta["routes"] = routes_meta
    problems = check(sc, meta, view)
    if not meta["host_read"]["identical_to_kernel"]:
        problems.append("pvepstore's reader (known parameters) differs from the kernel's view")
    if not meta["host_read_discovered"]["identical_to_kernel"]:
        problems.append("pvepstore's reader (discovered parameters) differs from the kernel's view")
    if last.hang and "Panic" not in meta["host_read"]["reasons"]:
        problems.append("the host reader found no Panic record in the live copy")
    if sc.read == "in-process" and not read_meta["unchanged_by_probe_and_mount"]:
        problems.append("the reading boot changed the memory between its probe and its view")
    for r in routes_meta:
        if r["route"] == sc.route and not r["ramoops_wins"]:
            problems.append(f"route {r['route']}: ramoops did not win the backend slot")
    if view.params.get("pstore/parameters/backend") != "ramoops":
        problems.append(f"pstore backend is {view.params.get('pstore/parameters/backend')!r}")
    meta["generated_problems"] = problems
    for p in problems:
        log(f"  [{sc.name}] WARNING: {p}")
    if keep_fixture:
        write_fixture(sc, meta, view, fixture_img)
    log(f"  [{sc.name}] done in {time.monotonic() - t_all:.0f}s: records={names}")
    return meta


def write_fixture(sc: Scenario, meta: dict, view: H.View, image: Path):
    dest = FIXTURES / sc.name
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "kernel").mkdir(parents=True)
    H.xz_file(image, dest / "image.xz")
    for n, data in view.files.items():
        (dest / "kernel" / n).write_bytes(data)
    (dest / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")


README_HEAD = """# Real-kernel pstore fixtures (pstore_blk, and ramoops on Proxmox's ivshmem device)

Generated by `tests/kernel/` (QEMU + busybox initramfs + the kernel's own
`pstore_zone.ko`/`pstore_blk.ko` or `ramoops.ko`). **Do not edit by hand**; this file is
rewritten by the generator.

Regenerate everything (stock + custom kernel; ~15 min under TCG):

    tests/kernel/build-kernel.sh              # once, 20-40 min: custom kernel with PSTORE_CONSOLE+PMSG
    python3 -m tests.kernel.generate --all

One fixture: `python3 -m tests.kernel.generate <name>`; list: `--list`;
stock only: `--stock`; quick check without touching fixtures: `--smoke`
(or `pytest -m kernel tests/kernel`; `--smoke-ivshmem` for ramoops).

## How a pstore_blk fixture is made

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

## How a ramoops-on-ivshmem fixture is made (`"format": "ramoops"`)

1. QEMU gets exactly Proxmox's arguments for `ivshmem: size=1,name=...`:
   `-object memory-backend-file,id=ivshmem,share=on,mem-path=<file>,size=1M -device ivshmem-plain,memdev=ivshmem`,
   with `<file>` = `<run dir>/host/dev/shm/pve-shm-pvepstore-100` (a temporary
   PVE host_root), and no `-no-reboot` where a reboot must stay in the process
   (Proxmox adds it only for `reboot: 0`). A 512-byte counter disk (`/dev/vda`)
   tells the initramfs which in-process boot it is running.
2. Every boot finds PCI 1af4:1110, takes BAR2 from line 3 of
   `/sys/bus/pci/devices/*/resource` and runs `insmod reed_solomon.ko; insmod
   ramoops.ko mem_address=<BAR2> mem_size=<BAR2 size> <params>` (params in the
   table; no console/pmsg zones on the stock kernel, which has neither frontend),
   then mounts pstorefs. Just before the probe the guest waits 1 s and the host
   copies the live file (`==PRE-PROBE n==`).
3. The kernel's view (`kernel/`) and `image.xz` (the 1 MiB memory):
   * read "new QEMU process": `image.xz` is the file after the writing process
     exited (or, for a hung guest, the host's copy of the LIVE file, taken while
     QEMU still ran; QEMU is killed afterwards); a new QEMU process maps a copy
     of it and sends its pstorefs view;
   * read "in-process" / "on the relinked file": the view is the last boot of the
     last process, `image.xz` the live file copied before that boot's ramoops
     probe (`read.unchanged_by_probe_and_mount` checks that the probe and mount
     changed nothing; that boot waits 2 s after its view before powering off).
4. `meta.json`: `ramoops_params` (bytes, from `/sys/module/ramoops/parameters`
   after the probe, which writes back what it used), `effective_params`,
   `pstore_params`, `ivshmem_bar2`, per run and boot the events, the records seen
   at mount and the pstore dmesg lines, `pve_hooks` (what `pvepstore.pve.ivshmem.run_hook`
   did in each phase around PVE's unlink), `host_read`/`host_read_discovered`
   (pvepstore's reader on `image.xz`, known and discovered parameters, and whether it
   equals the kernel's view), `zone_headers` (raw scan), and for OVMF `routes`: one
   probe boot per way of keeping efi_pstore out of the single backend slot, with
   `/sys/module/pstore/parameters/backend` and the dmesg lines.

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
        elif e[0] == "sysctl":
            out.append(f"{e[1]}={e[2]}")
        elif e[0] == "sh":
            out.append(f"sh({e[2] if len(e) > 2 else e[1]})")
        else:
            out.append(f"{e[0]}({e[1]})")
    return ", ".join(out)


def _ramoops_row(sc: Scenario, m: dict) -> tuple[str, str]:
    runs = "<br>".join(
        f"run {r['run']}{' (reboot in process)' if r['in_process_reboot'] else ''}"
        f"{' (hang: live copy, kill)' if r['hang'] else ''}"
        f"{' (PVE hooks + unlink)' if r.get('pve_hooks') else ''}: "
        + "; ".join(f"boot {b['boot']}: {_fmt_events(b['events']) or '-'}" for b in r["boots"])
        for r in m["runs"])
    runs += f"<br>read: {m['read']['how']}"
    params = m["insmod"].replace("insmod ramoops.ko ", "")
    recs = ", ".join(m["expected_records"]) or "(none)"
    fw = " OVMF" if m.get("firmware") == "ovmf" else ""
    row = (f"| {sc.name} | {m['kernel']} | {m['image_size'] >> 20} MiB (ivshmem{fw}) | `{params}` | "
           f"`{m['cmdline_extra']}` | {runs} | {recs} |")
    detail = f"### {sc.name}\n\n{m['description']}\n\n"
    if m.get("route"):
        detail += f"Route: {m['route']['description']}.\n\n"
    detail += "\n".join(f"    {l}" for l in m["dmesg_pstore_lines"] if "ommand line" not in l) + "\n"
    for r in m.get("routes", []):
        detail += (f"\nRoute **{r['route']}** ({r['description']}): pstore backend "
                   f"`{r['pstore_backend'] or '(none)'}`, efi_pstore loaded: {r['efi_pstore_loaded']}"
                   f"{', ramoops wins' if r['ramoops_wins'] else ', ramoops LOSES'}\n\n"
                   + "\n".join(f"    {l}" for l in r["dmesg_lines"]) + "\n")
    return row, detail


def write_readme():
    rows, details = [], []
    for sc in SCENARIOS:
        mp = FIXTURES / sc.name / "meta.json"
        if not mp.exists():
            rows.append(f"| {sc.name} | {sc.kernel} | – | – | – | – | *not generated* |")
            continue
        m = json.loads(mp.read_text())
        if m.get("format") == "ramoops":
            row, detail = _ramoops_row(sc, m)
            rows.append(row)
            details.append(detail)
            continue
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
    from tests.kernel.efi_generate import update_readme   # the efi_pstore section (own generator)
    update_readme()


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


def smoke_ivshmem(log=print) -> dict:
    """One boot with ramoops on ivshmem: one Oops, remount pstorefs, and the host reads the
    LIVE file meanwhile; pvepstore's records must equal the kernel's files byte for byte.

    Returns {"ok": bool, "names": [...], "problems": [...], "seconds": float}.
    """
    sc = SMOKE_IVSHMEM
    kernel = kernel_for(sc)
    work = RUNS / sc.name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shm = work / "pve-shm-smoke"
    counter = work / "counter.img"
    H.make_blank_image(counter, 512)
    run = sc.runs[0]
    initrd = H.build_initramfs(kernel, work / "boot1.cpio", "/dev/vda", sc.ramoops_insmod(),
                               H.boots_to_sh(run.boots), backend="ramoops", counter="/dev/vda",
                               pre_probe_wait=0)
    watch = IvshmemWatch(shm, run, Config(host_root=str(work), state_dir=str(work)))
    res = H.run_boot(kernel, H.Disk(counter), initrd, work, "boot1", timeout=120,
                     extra_args=H.ivshmem_args(shm), on_poll=watch)
    probs = []
    if res.timed_out:
        probs.append("timeout")
    after = res.views.get("after")
    names = sorted(after.files) if after else []
    if names != sorted(sc.expected):
        probs.append(f"names {names} != {sc.expected}")
    live = watch.view_end.get("after")
    if live is None:
        probs.append("no live copy of the ivshmem file")
    elif after is not None:
        eff = ramoops_view_params(after)
        got = host_read(live, ramoops_params_of(eff, nr_cpus(after.cpu_possible)), after)
        if not got["identical_to_kernel"]:
            probs.append(f"host reader {got['records']} differs from the kernel's view")
    log(f"smoke-ivshmem: {res.seconds:.1f}s names={names} problems={probs}")
    return {"ok": not probs, "names": names, "problems": probs, "seconds": res.seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="scenario names")
    ap.add_argument("--all", action="store_true", help="all scenarios (custom-kernel ones only if built)")
    ap.add_argument("--stock", action="store_true", help="all stock-kernel scenarios")
    ap.add_argument("--custom", action="store_true", help="all custom-kernel scenarios")
    ap.add_argument("--ivshmem", action="store_true", help="all ramoops-on-ivshmem scenarios")
    ap.add_argument("--debian13", action="store_true",
                    help="all Debian 13 (6.12) scenarios (run python3 -m tests.kernel.debian13 first)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--smoke-ivshmem", action="store_true",
                    help="one boot, ramoops on ivshmem, one Oops; host reads the live file")
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
    if a.smoke_ivshmem:
        return 0 if smoke_ivshmem()["ok"] else 1
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
    if a.ivshmem:
        todo += [s for s in SCENARIOS if s.backend == "ramoops" and s not in todo]
    if a.debian13:
        todo += [s for s in SCENARIOS if s.kernel == "debian13" and s not in todo]
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
