"""The sweep: collect every in-scope VM with bounded concurrency, then deliver the outbox.

One VM's failure never stops the others (per-VM results, fabric-style); a
second sweep started while one runs exits cleanly; each VM gets a deadline.
"""

from __future__ import annotations

import fcntl
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import PvepstoreError, VmBusyError
from .collect import Collector, VmHandle, VmResult, VmStatus
from .handles import NotProvisioned
from .outbox import DeliveryReport, Sink


class SweepBusy(Exception):
    """Another sweep holds the lock (not an error: the CLI exits 0)."""


@dataclass
class SweepResult:
    results: list[VmResult] = field(default_factory=list)
    delivery: DeliveryReport | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[VmResult]:
        return [r for r in self.results if r.status == VmStatus.FAILED]

    def to_json(self) -> dict:
        counts: dict[str, int] = {}
        for r in self.results:
            key = VmStatus(r.status).value
            counts[key] = counts.get(key, 0) + 1
        doc = {"vms": [r.to_json() for r in self.results], "counts": counts, "seconds": round(self.seconds, 3)}
        if self.delivery is not None:
            doc["delivery"] = {"delivered": len(self.delivery.delivered), "failed": self.delivery.failed,
                               "deferred": self.delivery.deferred, "pending": self.delivery.pending}
        return doc


@contextmanager
def sweep_lock(state_dir: Path) -> Iterator[None]:
    from ..safefs import Dir

    # The state dir must be private (not a link, not writable by others); the lock is
    # opened O_NOFOLLOW|O_NONBLOCK relative to it: a planted link or FIFO is refused.
    with Dir.open(state_dir, create=True, private=True) as d:
        fd = d.lock_file("sweep.lock")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepBusy("another pvepstore sweep is running") from None
        yield
    finally:
        os.close(fd)


# A VM to visit: its id and how to open it (opening may fail: unreachable, locked, gone).
Target = tuple[int, Callable[[], VmHandle]]


def run_sweep(targets: Sequence[Target], collector: Collector, sinks: Sequence[Sink], *,
              concurrency: int = 8, vm_timeout: float = 300.0,
              progress: Callable[[int, int, VmResult], None] | None = None,
              clock: Callable[[], float] = time.monotonic) -> SweepResult:
    started = clock()
    result = SweepResult()

    def visit(vmid: int, opener: Callable[[], VmHandle]) -> VmResult:
        t0 = clock()
        handle = None
        try:
            handle = opener()
            res = collector.collect(handle)
        except VmBusyError as exc:
            res = VmResult(vmid, VmStatus.SKIPPED, exc.message)
        except NotProvisioned as exc:  # a state to report (with what to run), not a failure
            res = VmResult(vmid, VmStatus.NOT_PROVISIONED, f"not provisioned: {exc.hint}" if exc.hint else
                           exc.message, notes=[exc.message])
        except PvepstoreError as exc:
            res = VmResult(vmid, VmStatus.FAILED, exc.message + (f" ({exc.hint})" if exc.hint else ""))
        except Exception as exc:  # one VM's bug must not end the sweep of the others
            res = VmResult(vmid, VmStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            close = getattr(handle, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # closing a dead connection must not hide the result
                    pass
        res.seconds = clock() - t0
        return res

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="pvepstore-vm")
    try:
        pending: dict[Future, tuple[int, float]] = {}
        queue = list(targets)
        done_count = 0
        while queue or pending:
            while queue and len(pending) < max(1, concurrency):
                vmid, opener = queue.pop(0)
                pending[pool.submit(visit, vmid, opener)] = (vmid, clock())
            finished, _ = wait(list(pending), timeout=1.0, return_when=FIRST_COMPLETED)
            now = clock()
            for fut in list(pending):
                vmid, t0 = pending[fut]
                if fut in finished:
                    res = fut.result()
                elif now - t0 > vm_timeout:
                    # The worker keeps running until its transport times out; its result is dropped.
                    res = VmResult(vmid, VmStatus.FAILED, f"timed out after {vm_timeout:.0f} s", seconds=now - t0)
                else:
                    continue
                del pending[fut]
                result.results.append(res)
                done_count += 1
                if progress:
                    progress(done_count, len(targets), res)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    result.results.sort(key=lambda r: r.vmid)
    result.delivery = collector.outbox.deliver(sinks)
    result.seconds = clock() - started
    return result
