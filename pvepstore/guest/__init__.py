"""Everything pvepstore does inside a guest, over one SSH connection.

::

    from pvepstore.backends import registry
    from pvepstore.guest import GuestTarget, connect
    backend = registry.get("pstore_blk")
    target = GuestTarget.from_config(vm_cfg.ssh, host="192.0.2.10")
    with connect(target) as guest:
        report = backend.probe(guest, "pvepstore", 512 << 20)   # guest.probe(assess=...)
        plan = backend.plan(guest, report, cfg)                 # guest.plan(report, wishes=...)
        guest.apply(plan, dry_run=False)
        result = backend.verify(guest, "pvepstore")             # guest.verify(assess=..., check=...)
        recs = guest.read_records(max_bytes=4 << 20)
        guest.clear([r.name for r in recs])   # only after they are archived
        guest.undo(dry_run=False)

Every method is one remote command (one round trip on the open connection),
except ``undo`` (probe + change).

Layout: ``probe`` (the facts) -> a backend's guest rules (``blk_wishes``, ``ramoops_wishes``,
shared ``rules``: capabilities, problems, costs, the :class:`~.plan.GuestWishes` it wants,
verify) -> ``plan`` (the generic engine: files, units, manifest, undo) -> ``session``
(``Guest``: one command each).  This package knows no backend names: a backend's functions
are passed in, and :mod:`pvepstore.backends` (the registry) is the one place that maps a name
to them.
"""

from __future__ import annotations

from .probe import Capability, DiskState, Problem, ProbeReport
from .records import BootHistory, ClearResult, GuestRecord
from .session import Guest, connect
from .changes import ApplyResult, Change, Plan, VerifyResult
from .transport import CommandResult, GuestTarget, SshTransport, Transport

__all__ = [
    "ApplyResult", "BootHistory", "Capability", "Change", "ClearResult", "CommandResult", "DiskState",
    "Guest", "GuestRecord", "GuestTarget", "Plan", "Problem", "ProbeReport", "SshTransport",
    "Transport", "VerifyResult", "connect",
]
