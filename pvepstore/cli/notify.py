"""``notify-test``: a test event to every sink in use, and what each answered."""

from __future__ import annotations

import json
import socket

import typer

from ..errors import ConfigError
from ..text import terminal_safe
from .environment import env_of
from .status import ExitStatus


def notify_test_command(ctx: typer.Context,
                        as_json: bool = typer.Option(False, "--json", help="Print the answers as JSON.")) -> int:
    """Send a test event to every sink in use (the configured ones, or pve-notify by default) and say
    what each answered. Nothing is archived or spooled."""
    from ..pipeline.sinks import SinkOrigin, configured_sinks
    from ..pipeline.sinktest import test_event, test_sinks
    from ..pve.inventory import local_node

    env = env_of(ctx)
    cfg = env.load_config()
    sinks, origin = configured_sinks(cfg.sinks, cfg.host_root)
    if not sinks:
        why = "sinks: [] in the config" if origin is SinkOrigin.CONFIGURED else \
            "no sinks: in the config and no PVE notification system on this host"
        raise ConfigError(f"no sinks to test ({why})", hint="add sinks: to the config (see config.example.yaml)")
    try:
        node = local_node(cfg)
    except ConfigError:  # a test must not need the cluster: the host name will do
        node = socket.gethostname().split(".")[0]
    answers = test_sinks(sinks, test_event(node))
    if as_json:
        env.out(json.dumps({"origin": origin.value, "sinks": [a.__dict__ for a in answers]}, indent=2,
                           ensure_ascii=True))
    else:
        for a in answers:
            env.out(f"{a.name}: {'ok' if a.ok else 'FAILED'}: {terminal_safe(a.answer)}")
    return ExitStatus.SUCCESS if all(a.ok for a in answers) else ExitStatus.PARTIAL
