"""``pvepstore hook VMID PHASE``: what pvepstore's Proxmox hookscript runs (ivshmem backend)."""

from __future__ import annotations

import typer

from .environment import env_of

PHASES = ("pre-start", "post-start", "pre-stop", "post-stop")


def hook_command(ctx: typer.Context, vmid: int = typer.Argument(...), phase: str = typer.Argument(...)) -> int:
    """Called by Proxmox through pvepstore's hookscript; keeps ivshmem records across stop/start."""
    from ..pve.ivshmem import run_hook

    env = env_of(ctx)
    if phase not in PHASES:
        return 0  # PVE may add phases: never fail a VM operation over one we do not know
    for action in run_hook(env.load_config(), vmid, phase):
        env.out(f"pvepstore: VM {vmid} {phase}: {action}")
    return 0
