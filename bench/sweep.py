#!/usr/bin/env python3
"""Benchmark: a sweep over 500 simulated VMs, concurrent vs. a serial loop, in one run.

The Proxmox API is the test suite's fake PVE (HTTPS, schema-validated), served
from a child process so that it does not share the sweep's interpreter.  Guests
are pvepstore's own guest test double (``pvepstore.guest.testing.FakeTransport``)
answering in the real wire format with 20 ms per command; opening a connection
costs two more simulated round trips (TCP + SSH handshake).  The mix:

* 60 % running, nothing to collect;
* 15 % running with a real Oops record (from the ``oops-nocompress`` fixture);
* 15 % powered off, their pstore volume holding a real-kernel image (read on the host);
* 10 % unreachable (connection refused).

Prints the wall time of the concurrent sweep and of a serial loop, their ratio,
and the SSH round trips per VM by class.  Targets (issue 6): >= 10x faster than
serial; <= 2 round trips for a VM with nothing to collect.

    python3 bench/sweep.py [--vms 500] [--latency 0.02] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pvepstore.config import parse_config  # noqa: E402
from pvepstore.errors import GuestError  # noqa: E402
from pvepstore.guest.testing import FakeTransport, Recorded, reply  # noqa: E402
from pvepstore.pipeline.archive import Archive  # noqa: E402
from pvepstore.pipeline.collect import Collector, VmState  # noqa: E402
from pvepstore.pipeline.handles import open_vm  # noqa: E402
from pvepstore.pipeline.outbox import Outbox  # noqa: E402
from pvepstore.pipeline.sweep import run_sweep  # noqa: E402
from pvepstore.pve.api import connect  # noqa: E402
from pvepstore.pve.inventory import in_scope, list_vms  # noqa: E402
from pvepstore.pve.state import update as record_provision  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
BOOT_ID = "2f1e6b8a-0000-4000-8000-000000000001"


def classify(i: int) -> str:
    slot = i % 20
    return "idle" if slot < 12 else "records" if slot < 15 else "stopped" if slot < 18 else "unreachable"


def serve(root: str, n: int, queue: mp.Queue, stop: mp.Event) -> None:
    """Child process: the fake PVE node with ``n`` VMs."""
    sys.path.insert(0, str(REPO))
    from pvepstore.pstore.source import unpack_xz_sparse
    from tests.fakepve.server import FakePve

    fake = FakePve(Path(root) / "host")
    image = Path(root) / "oops.img"
    unpack_xz_sparse(FIXTURES / "oops-deflate" / "image.xz", image)
    for i in range(n):
        vmid = 1000 + i
        kind = classify(i)
        fake.add_vm(vmid, config={"tags": "pvepstore"}, running=kind != "stopped", qemu=False,
                    disk_storage="local")
        if kind == "stopped":
            vol = fake.allocate("local", vmid, 1 << 20)
            fake.place_image(vol.volid, image)
            fake.set_config(vmid, virtio1=f"{vol.volid},backup=0,discard=on,replicate=0,serial=pvepstore,size=1M")
    fake.start()
    queue.put((fake.port, fake.user, fake.token_name, fake.token_value))
    stop.wait()
    fake.stop()


class Guests:
    """Simulated guests: a FakeTransport per connection, by address."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        oops = (FIXTURES / "oops-nocompress" / "kernel" / "dmesg-pstore_blk-0").read_bytes()
        self.record = reply(("pstorefs", "pstore"), ("rec", "dmesg-pstore_blk-0", str(len(oops)), "1764130000", oops))
        self.empty = reply(("pstorefs", "pstore"))
        self.history = reply(("boot_id", BOOT_ID), ("uptime", "3600.5"),
                             ("uname", "6.1.0-56-amd64"), ("now", "1764133600"), ("persistent", "yes"))
        self.cleared = reply(("cleared", "dmesg-pstore_blk-0", "ok"))
        self.transports: dict[int, FakeTransport] = {}
        self.connects = 0

    def connect(self, target) -> FakeTransport:
        vmid = int(target.host.rsplit(".", 1)[1]) + 1000 - 10  # 10.0.<x>.<y> -> vmid (see address())
        time.sleep(2 * self.latency)  # TCP + SSH handshake
        self.connects += 1
        kind = classify(vmid - 1000)
        if kind == "unreachable":
            raise GuestError(f"{target.where}: connection refused", hint="is sshd running?")
        replies = [Recorded("records", 0, self.record if kind == "records" else self.empty),
                   Recorded("history", 0, self.history), Recorded("clear", 0, self.cleared)]
        t = FakeTransport(replies, latency=self.latency, repeat=True)
        self.transports[vmid] = t
        return t


def address(vmid: int) -> str:
    i = vmid - 1000 + 10
    return f"10.0.{i // 256}.{i}"


def one_run(root: Path, port: int, creds, n: int, concurrency: int, latency: float, tag: str):
    user, token_name, token_value = creds
    state = root / f"state-{tag}"
    data = {"host_root": str(root / "host"), "state_dir": str(state), "collect": {"concurrency": concurrency},
            "api": {"host": "127.0.0.1", "port": port, "user": user, "token_name": token_name,
                    "token_value": token_value, "verify_ssl": "/etc/pve/pve-root-ca.pem", "timeout": 30},
            "vms": {1000 + i: {"ssh": {"host": address(1000 + i)}} for i in range(n)}}
    cfg = parse_config(data)
    for i in range(n):
        # Steady state, as left by earlier sweeps: provision recorded the layout, the
        # running guests' current boot is known (so a guest with nothing new costs no write).
        if classify(i) == "stopped":
            record_provision(cfg, 1000 + i, provision={"blk_params": {"kmsg_size": 64}})
        else:
            record_provision(cfg, 1000 + i, boot_id=BOOT_ID)
    guests = Guests(latency)
    api = connect(cfg)
    collector = Collector(Archive(state / "archive"), Outbox(state / "outbox"), VmState(state / "vms"), [])
    started, cpu = time.perf_counter(), time.process_time()
    refs = in_scope(cfg, list_vms(api))
    targets = [(r.vmid, (lambda r=r: open_vm(cfg, api, r, "pve1", connect_guest=guests.connect))) for r in refs]
    result = run_sweep(targets, collector, [], concurrency=concurrency, vm_timeout=600)
    wall = time.perf_counter() - started
    result.cpu = time.process_time() - cpu
    return wall, result, guests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=500)
    ap.add_argument("--latency", type=float, default=0.02, help="seconds per simulated SSH round trip")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="pvepstore-sweep-") as tmp:
        root = Path(tmp)
        queue, stop = ctx.Queue(), ctx.Event()
        server = ctx.Process(target=serve, args=(str(root), args.vms, queue, stop), daemon=True)
        server.start()
        try:
            port, *creds = queue.get(timeout=600)
            runs = {}
            for tag, conc in (("concurrent", args.concurrency), ("serial", 1)):
                if tag == "serial":  # the same starting state: restore the stopped VMs' records
                    stop.set()
                    server.join(30)
                    queue, stop = ctx.Queue(), ctx.Event()
                    root2 = root / "again"
                    root2.mkdir()
                    server = ctx.Process(target=serve, args=(str(root2), args.vms, queue, stop), daemon=True)
                    server.start()
                    port, *creds = queue.get(timeout=600)
                    runs[tag] = one_run(root2, port, creds, args.vms, conc, args.latency, tag)
                else:
                    runs[tag] = one_run(root, port, creds, args.vms, conc, args.latency, tag)
        finally:
            stop.set()
            server.join(30)
    ok = True
    print(f"{args.vms} simulated VMs (60 % idle, 15 % with a record, 15 % powered off, 10 % unreachable), "
          f"{args.latency * 1000:.0f} ms per SSH round trip")
    for tag, (wall, result, guests) in runs.items():
        counts = result.to_json()["counts"]
        print(f"  {tag:<10} concurrency {args.concurrency if tag == 'concurrent' else 1:>3}: {wall:7.2f} s "
              f"(sweeper CPU {result.cpu:5.2f} s)  {counts}")
    speedup = runs["serial"][0] / runs["concurrent"][0]
    print(f"  speedup: {speedup:.1f}x (target >= 10x)")
    ok &= speedup >= 10
    wall, result, guests = runs["concurrent"]
    statuses = {r.vmid: r.status for r in result.results}
    by_class: dict[str, list[int]] = {}
    for vmid, t in guests.transports.items():
        by_class.setdefault(classify(vmid - 1000), []).append(t.round_trips)
    for kind, trips in sorted(by_class.items()):
        print(f"  SSH round trips per VM, {kind:<8}: max {max(trips)}, mean {sum(trips) / len(trips):.2f} "
              f"(+2 for the connection)")
    idle_max = max(by_class.get("idle", [0]))
    print(f"  nothing-to-collect VM: {idle_max} round trips (target <= 2)")
    ok &= idle_max <= 2
    expected = {"idle": "nothing", "records": "collected", "stopped": "collected", "unreachable": "failed"}
    wrong = [v for v, s in statuses.items() if s != expected[classify(v - 1000)]]
    if wrong:
        print(f"  unexpected results for {len(wrong)} VMs, e.g. {[(v, statuses[v]) for v in wrong[:5]]}")
        ok = False
    print("targets:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
