"""The ``pve-notify`` sink: each incident through the node's own notification system.

Proxmox VE's jobs notify through ``PVE::Notify`` (pve-cluster's libpve-notify-perl): replication
calls ``PVE::Notify::error("replication", $template_data, $metadata_fields)``, vzdump and the APT
update check do the same with their own template names.  The node's notification config then
routes the event -- by severity and by the metadata fields (``type``, ``hostname``) its matchers
test -- to the targets the admin set up (mail to root@pam by default, smtp, gotify, webhooks).
This sink does exactly that, as root on the node, with pvepstore's template ``pvepstore-incident``.

Versions (read in pve-cluster, pve-manager and proxmox-notify):

* ``PVE::Notify`` exists from PVE 8.1; named templates (``notify($severity, $template_name,
  $data, $fields)``, files ``<name>-subject.txt.hbs`` / ``<name>-body.txt.hbs``) from PVE 8.2.3
  (pve-cluster 25715cc, pve-manager fede7e87, June 2024).  Before that the title and body were
  template *strings*: guest text would have been template source, so pvepstore does not use that
  form and mails root instead.
* Templates are read from ``/etc/pve/notification-templates/default/`` (an admin's override, cluster
  wide) before ``/usr/share/pve-manager/templates/default/`` (the vendor's) from proxmox-notify 0.5.4
  (PVE 8.4).  pvepstore's Debian package ships its templates into the vendor directory (read by every
  PVE >= 8.2.3); run from source, pvepstore writes them into the override directory when neither
  holds them, and never overwrites a copy that exists (an admin's edits win).  PVE 8.2.3-8.3 read
  only the vendor directory: there, without the package, they must be copied there (the error says so).
* ``common_template_data`` (hostname, fqdn, cluster name) from PVE 8.4; before, pvepstore passes the
  hostname and fqdn itself.

Fallback, without ``PVE::Notify`` or without named templates: a plain mail to root through
``sendmail``; on PVE >= 8.1 proxmox-mail-forward hands root's mail to the notification system as
``type=system-mail`` (severity unknown), before that it is delivered as root's mail always was.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from enum import Enum
from importlib import resources
from pathlib import Path

from ..text import terminal_safe

TEMPLATE = "pvepstore-incident"
# The metadata field 'type' a notification matcher tests (PVE's own: vzdump, replication, ...).
TYPE = "pvepstore"
NOTIFY_PM = "usr/share/perl5/PVE/Notify.pm"
VENDOR_TEMPLATES = "usr/share/pve-manager/templates/default"
OVERRIDE_TEMPLATES = "etc/pve/notification-templates/default"
SENDMAIL = "usr/sbin/sendmail"
PERL = "/usr/bin/perl"
TEMPLATE_FILES = (f"{TEMPLATE}-subject.txt.hbs", f"{TEMPLATE}-body.txt.hbs")
MAX_EVIDENCE = 12  # evidence lines in the body (the archive keeps all)

# One fixed program; the event arrives as JSON on stdin, so nothing from it is ever Perl source.
NOTIFY_SCRIPT = r"""
use strict;
use warnings;
use JSON::PP;
my $in = JSON::PP->new->utf8->decode(do { local $/; <STDIN> });
require PVE::Notify;
my $data = PVE::Notify->can('common_template_data') ? PVE::Notify::common_template_data() : {};
for my $k (keys %{ $in->{common} }) { $data->{$k} //= $in->{common}{$k}; }
for my $k (keys %{ $in->{data} }) { $data->{$k} = $in->{data}{$k}; }
PVE::Notify::notify($in->{severity}, $in->{template}, $data, $in->{fields});
print "sent\n";
"""

# The verdict's severity -> proxmox-notify's (info, notice, warning, error, unknown).
SEVERITY = {"critical": "error", "error": "error", "warning": "warning", "info": "info"}
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}


class Route(str, Enum):
    """How this node would take an incident."""

    NOTIFY = "pve-notify"  # PVE::Notify with pvepstore's named template
    MAIL = "mail-root"  # sendmail root (the system-mail path on PVE >= 8.1)
    NONE = "none"  # neither: not a Proxmox VE node


# A template pve-manager itself ships since named templates exist (8.2.3): the sign the node's
# PVE::Notify takes template names (pvepstore's package puts its own copies beside it, so the
# directory alone says nothing).
VENDOR_SIGN = "vzdump-subject.txt.hbs"


def route(host_root: str | os.PathLike[str] = "/") -> Route:
    root = Path(host_root)
    if (root / NOTIFY_PM).is_file() and (root / VENDOR_TEMPLATES / VENDOR_SIGN).is_file():
        return Route.NOTIFY
    if (root / SENDMAIL).is_file():
        return Route.MAIL
    return Route.NONE


def template_text(name: str) -> str:
    return resources.files("pvepstore.data").joinpath("notification-templates", name).read_text()


def _line(value: object, limit: int = 300) -> str:
    """One line of guest-derived text: control, escape and bidi characters out, bounded."""
    return " ".join(terminal_safe(str(value if value is not None else "")).split())[:limit]


def template_data(event: dict) -> dict:
    """What the templates see: kebab-case keys as PVE's own templates use, every value a plain
    string (or a list of them) made safe for a mail, a gotify message or a webhook body."""
    data = event.get("data") or {}
    vm = data.get("vm") or {}
    verdict = data.get("verdict") or {}
    crashes = data.get("crashes") or []
    evidence = [f"{_line(e.get('source'), 40)}: {_line(e.get('summary'))}" for e in data.get("evidence") or []]
    out = {
        "vmid": _line(vm.get("vmid", ""), 20),
        "vm-name": _line(vm.get("name") or "", 80),
        "node": _line(vm.get("node") or "", 80),
        "verdict": _line(verdict.get("kind", "unknown"), 40),
        "severity": _line(verdict.get("severity", "warning"), 20),
        "confidence": _line(verdict.get("confidence", ""), 20),
        "summary": _line(verdict.get("summary", ""), 500),
        "reason-code": _line(verdict.get("reason_code", ""), 80),
        "incident-id": _line(event.get("id", ""), 100),
        "time": _line(event.get("time", ""), 40),
        "crash": _line(crashes[0].get("title", ""), 300) if crashes else "",
        "evidence": evidence[:MAX_EVIDENCE],
        "more-evidence": max(0, len(evidence) - MAX_EVIDENCE),
    }
    return out


@dataclass
class PveNotifySink:
    """Send through ``PVE::Notify`` (see the module docstring); mail root where it cannot."""

    name: str = "pve-notify"
    timeout: float = 30.0
    # Incidents below this verdict severity are archived, not sent: an orderly reboot or a host stop
    # of every VM would otherwise reach root's mailbox through PVE's default matcher (mode all).
    min_severity: str = "warning"
    # The host root of the configuration (``host_root``), not a key of the sink: the node's files
    # are read under it, so a test can stand a PVE::Notify module and a sendmail in.
    host_root: str = field(default="/", repr=False)
    INJECTED = frozenset({"host_root"})  # fields build_sinks fills from the top-level configuration

    def wants(self, event: dict) -> bool:
        severity = ((event.get("data") or {}).get("verdict") or {}).get("severity", "warning")
        return SEVERITY_RANK.get(severity, 1) >= SEVERITY_RANK[self.min_severity]

    def send(self, event: dict) -> None:
        """The outbox's call: an incident below ``min_severity`` counts as delivered, unsent."""
        if self.wants(event):
            self.deliver(event)

    def deliver(self, event: dict) -> None:
        """Send whatever the severity (``notify-test`` calls this)."""
        how = route(self.host_root)
        if how is Route.NOTIFY:
            self.ensure_templates()
            self._notify(event)
        elif how is Route.MAIL:
            self._mail(event)
        else:
            raise RuntimeError("this host has neither PVE::Notify nor sendmail (not a Proxmox VE node?)")

    def describe(self) -> str:
        how = route(self.host_root)
        if how is Route.NOTIFY:
            return f"PVE::Notify, template {TEMPLATE}, type={TYPE}: the node's matchers route it"
        if how is Route.MAIL:
            return "sendmail root: this node's PVE::Notify takes no named templates (or is missing)"
        return "neither PVE::Notify nor sendmail on this host"

    def ensure_templates(self) -> list[Path]:
        """Write pvepstore's templates into the override directory where no copy exists."""
        root = Path(self.host_root)
        written = []
        for name in TEMPLATE_FILES:
            if (root / OVERRIDE_TEMPLATES / name).exists() or (root / VENDOR_TEMPLATES / name).exists():
                continue
            from ..durable import write_atomic

            target = root / OVERRIDE_TEMPLATES / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, template_text(name).encode(), mode=0o640)
            written.append(target)
        return written

    def request(self, event: dict) -> dict:
        """The JSON the Perl side reads: one notify() call's arguments."""
        data = template_data(event)
        severity = SEVERITY.get(data["severity"], "unknown")
        host = socket.gethostname().split(".")[0]
        return {"severity": severity, "template": TEMPLATE, "data": data,
                "common": {"hostname": host, "fqdn": socket.getfqdn()},
                "fields": {"type": TYPE, "hostname": host, "vmid": data["vmid"], "verdict": data["verdict"]}}

    def _notify(self, event: dict) -> None:
        argv = [PERL]
        if Path(self.host_root) != Path("/"):
            argv.append(f"-I{Path(self.host_root) / 'usr/share/perl5'}")
        argv += ["-e", NOTIFY_SCRIPT]
        res = self._run(argv, json.dumps(self.request(event)).encode())
        if res.returncode != 0 or not res.stdout.startswith(b"sent"):
            err = _line(res.stderr.decode("utf-8", "replace"), 400) or f"exit status {res.returncode}"
            if "render" in err and "template" in err:
                err += (f" (PVE before 8.4 reads templates only from /{VENDOR_TEMPLATES}: copy "
                        f"/{OVERRIDE_TEMPLATES}/{TEMPLATE}-*.hbs there)")
            raise RuntimeError(f"PVE::Notify failed: {err}")

    def message(self, event: dict) -> bytes:
        """The fallback mail: the same text as the templates, rendered here."""
        data = template_data(event)
        msg = EmailMessage(policy=SMTP.clone(max_line_length=998))  # RFC 5322's limit; no folding of the id
        msg["To"] = "root"
        msg["Subject"] = subject_line(data)
        msg["X-Pvepstore-Incident"] = data["incident-id"]
        msg.set_content(body_text(data))
        return msg.as_bytes()

    def _mail(self, event: dict) -> None:
        res = self._run([str(Path(self.host_root) / SENDMAIL), "-i", "--", "root"], self.message(event))
        if res.returncode != 0:
            raise RuntimeError(f"sendmail root failed: {_line(res.stderr.decode('utf-8', 'replace'), 400)}"
                               or f"sendmail root failed: exit status {res.returncode}")

    def _run(self, argv: list[str], data: bytes) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
        try:
            return subprocess.run(argv, input=data, capture_output=True, timeout=self.timeout, env=env)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{Path(argv[0]).name} did not answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise RuntimeError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def subject_line(data: dict) -> str:
    """The subject as pvepstore-incident-subject.txt.hbs renders it (a test keeps them equal)."""
    name = f" ({data['vm-name']})" if data["vm-name"] else ""
    return f"VM {data['vmid']}{name} on {data['node']}: {data['verdict']}: {data['summary']}"


def body_text(data: dict) -> str:
    """The plaintext body as pvepstore-incident-body.txt.hbs renders it (a test keeps them equal)."""
    name = f" {data['vm-name']}" if data["vm-name"] else ""
    lines = [data["summary"], "", f"VM:         {data['vmid']}{name}", f"Node:       {data['node']}",
             f"Verdict:    {data['verdict']} ({data['severity']}, confidence {data['confidence']})",
             f"Time:       {data['time']}", f"Incident:   {data['incident-id']}"]
    if data["crash"]:
        lines.append(f"Crash:      {data['crash']}")
    lines += ["", "Evidence:"] + [f"  - {e}" for e in data["evidence"]]
    if data["more-evidence"]:
        lines.append(f"  ... and {data['more-evidence']} more")
    lines += ["", f"Details: pvepstore incidents show {data['incident-id']}", ""]
    return "\n".join(lines)
