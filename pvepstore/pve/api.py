"""The Proxmox API client: proxmoxer underneath, every failure a :class:`PveError` with a hint.

Two transports (``api.backend``): ``https`` (default; a token, the cluster CA
under ``host_root``) and ``local`` (``pvesh`` on this node as root). The local
backend's quirks are absorbed here: tasks run synchronously and a *failed*
task still comes back as a UPID, so every task's ``exitstatus`` is checked;
output that is not pure JSON arrives as ``{"errors": ...}`` and is either
mined for a UPID or turned into an error.

Writes go through :meth:`PveApi.write`; with ``dry_run`` they are recorded
(``planned``) and not sent, so ``provision --dry-run`` can show every call.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import Config
from ..errors import ConfigError, PveError
from ..hostpaths import HostPaths

UPID_RE = re.compile(r"UPID:[\w.-]+:[0-9A-Fa-f]{8}:[0-9A-Fa-f]{8,9}:[0-9A-Fa-f]{8}:[\w-]+:[^:\s]*:[^:\s]+:")
TASK_OK_RE = re.compile(r"^(OK|WARNINGS: \d+)$")


@dataclass(frozen=True)
class ApiCall:
    """One API write as it would be sent (for --dry-run and the summary)."""

    method: str
    path: str
    params: dict
    why: str = ""

    def describe(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.method} /{self.path}" + (f" {args}" if args else "") + (f"   # {self.why}" if self.why else "")

    def to_json(self) -> dict:
        return {"method": self.method, "path": "/" + self.path, "params": self.params, "why": self.why}


def quote(segment: Any) -> str:
    """A path segment (volume IDs of dir storages contain '/')."""
    return urllib.parse.quote(str(segment), safe=":@!")


@dataclass
class PveApi:
    prox: Any  # a proxmoxer.ProxmoxAPI (or anything with the same call shape)
    backend: str = "https"
    endpoint: str = "pvesh"
    dry_run: bool = False
    task_timeout: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    planned: list[ApiCall] = field(default_factory=list)
    done: list[ApiCall] = field(default_factory=list)

    # -- plain calls ------------------------------------------------------------------
    def get(self, path: str, /, **params: Any) -> Any:  # positional: PVE has a "path" parameter
        result = self._call("GET", path, params)
        if isinstance(result, dict) and set(result) == {"errors"}:
            raise PveError(f"GET /{path}: pvesh printed output that is not JSON: {_first_line(result['errors'])}",
                           hint="run the same `pvesh get` by hand; a PVE warning on stdout breaks parsing")
        return result

    def write(self, method: str, path: str, *, why: str = "", **params: Any) -> Any:
        """POST/PUT/DELETE; in dry-run mode only recorded (returns None)."""
        call = ApiCall(method, path, _wire(params), why)
        if self.dry_run:
            self.planned.append(call)
            return None
        result = self._call(method, path, dict(call.params))
        self.done.append(call)
        return result

    def run_task(self, method: str, path: str, *, why: str = "", **params: Any) -> dict | None:
        """A write that starts a task: wait for it and require a successful exit status."""
        result = self.write(method, path, why=why, **params)
        if self.dry_run:
            return None
        upid = self._upid(result, f"{method} /{path}")
        if upid is None:  # finished within background_delay (or a synchronous PUT)
            return {"status": "stopped", "exitstatus": "OK"}
        return self.wait_task(upid)

    def wait_task(self, upid: str, timeout: float | None = None) -> dict:
        node = upid.split(":")[1]
        deadline = time.monotonic() + (self.task_timeout if timeout is None else timeout)
        delay = 0.05
        while True:
            status = self.get(f"nodes/{node}/tasks/{quote(upid)}/status")
            if status.get("status") == "stopped":
                break
            if time.monotonic() >= deadline:
                raise PveError(f"task {upid} still running after {timeout or self.task_timeout:.0f} s",
                               hint=f"watch it in the task log: pvenode task log {upid}")
            self.sleep(delay)
            delay = min(delay * 2, 1.0)
        exitstatus = str(status.get("exitstatus", ""))
        if not TASK_OK_RE.match(exitstatus):
            tail = self._task_log_tail(node, upid)
            raise PveError(f"task {server_text(status.get('type', ''), 40)} for {server_text(status.get('id', ''), 40)} "
                           f"failed: {server_text(exitstatus, 300)}",
                           hint=f"task log: {tail}" if tail else f"pvenode task log {upid}")
        return status

    # -- internals ------------------------------------------------------------------------
    def _task_log_tail(self, node: str, upid: str) -> str:
        try:
            lines = self.get(f"nodes/{node}/tasks/{quote(upid)}/log", limit=50)
        except PveError:
            return ""
        return " | ".join(server_text(e.get("t", "")) for e in lines[-3:] if isinstance(e, dict))

    def _upid(self, result: Any, what: str) -> str | None:
        if result is None:
            return None
        if isinstance(result, str) and UPID_RE.fullmatch(result.strip()):
            return result.strip()
        text = result.get("errors") if isinstance(result, dict) else result
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        match = UPID_RE.search(str(text))
        if match:  # pvesh printed the (synchronous) task log before the UPID
            return match.group(0)
        if isinstance(result, dict) and set(result) == {"errors"}:
            # pvesh's synchronous PUT prints "update VM ..." and nothing else on success
            if re.match(r"^\s*update VM \d+", str(text)):
                return None
            raise PveError(f"{what}: unexpected pvesh output: {_first_line(text)}")
        raise PveError(f"{what}: expected a task id, got {server_text(result, 200)!r}")

    def _call(self, method: str, path: str, params: dict) -> Any:
        from proxmoxer import ResourceException  # imported lazily: CLI start-up stays fast
        import requests

        resource = self.prox(path)
        try:
            if method == "GET":
                return resource.get(**params)
            if method == "POST":
                return resource.post(**params)
            if method == "PUT":
                return resource.put(**params)
            if method == "DELETE":
                return resource.delete(**params)
            raise ValueError(method)
        except ResourceException as exc:
            raise _translate(exc, method, path) from None
        except requests.exceptions.SSLError as exc:
            raise PveError(f"TLS verification of {self.endpoint} failed: {_reason(exc)}",
                           hint="api.verify_ssl must name the CA that signed pveproxy's certificate "
                                f"({HostPaths().pve_root_ca} under host_root), or the certificate "
                                "was replaced (ACME): then use true or that CA") from None
        except requests.exceptions.Timeout:
            raise PveError(f"{method} /{path}: no answer from {self.endpoint} in time",
                           hint="raise api.timeout, or check pveproxy (systemctl status pveproxy)") from None
        except requests.exceptions.ConnectionError as exc:
            raise PveError(f"cannot connect to {self.endpoint}: {_reason(exc)}",
                           hint="is pveproxy running? check api.host/api.port") from None
        except Exception as exc:
            import subprocess
            if isinstance(exc, subprocess.TimeoutExpired):
                raise PveError(f"pvesh {method} /{path} did not finish within {exc.timeout} s",
                               hint="raise api.timeout") from None
            if isinstance(exc, (FileNotFoundError, PermissionError)):
                raise PveError(f"cannot run pvesh: {exc}",
                               hint="api.backend local only works as root on a Proxmox VE node") from None
            raise


def _wire(params: dict) -> dict:
    """PVE wants 0/1 for booleans at the top level; None means "not sent"."""
    out = {}
    for k, v in params.items():
        if v is None:
            continue
        out[k] = int(v) if isinstance(v, bool) else v
    return out


def _first_line(text: Any) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [ln for ln in str(text)[:64 << 10].splitlines() if ln.strip()]
    return server_text(lines[0] if lines else "", 200)


def _reason(exc: Exception) -> str:
    text = str(exc)
    m = re.search(r"\[SSL: [^\]]+\] ([^(]+)|(Connection refused|Name or service not known|timed out)", text)
    return server_text((m.group(1) or m.group(2)).strip() if m else text, 200)


MAX_DETAIL = 160  # characters of one server-supplied text in a message
MAX_PARAMS = 6  # parameter errors named in one message
PERM_RE = re.compile(r"\((/[^,()]*), ([A-Za-z.|, ]+)\)")  # "Permission check failed (/vms/100, VM.Config.Disk)"


class ApiError(PveError):
    """The API (or pvesh) refused a request: the HTTP status, the server's reason and its
    per-parameter errors, decoded and terminal-safe -- callers map errors to hints by these."""

    def __init__(self, message: str, *, hint: str | None = None, status: int = 0, reason: str = "",
                 errors: dict[str, str] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status, self.reason, self.errors = status, reason, dict(errors or {})

    @property
    def text(self) -> str:
        """Everything the server said (reason and parameter errors), for matching."""
        return " ".join([self.reason, *(f"{k}: {v}" for k, v in self.errors.items())])


def server_text(value: Any, limit: int = MAX_DETAIL) -> str:
    """A server-supplied value as one bounded, terminal-safe line (bytes decoded, never a repr)."""
    from ..text import terminal_safe

    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:4 * limit]).decode("utf-8", "replace")
    elif isinstance(value, (list, tuple)):
        value = "; ".join(server_text(v, limit) for v in value[:MAX_PARAMS])
    elif value is None:
        value = ""
    text = " ".join(str(value)[:4 * limit].split())  # newlines and runs of blanks: one space
    text = terminal_safe(text)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _server_errors(errors: Any) -> dict[str, str]:
    """proxmoxer's ``errors``: PVE's {param: message} object, or ``{"errors": <raw body>}`` when the
    body was not JSON (pveproxy's 401), or text from pvesh."""
    if isinstance(errors, dict):
        items = list(errors.items())
    elif errors:
        items = [("", errors)]
    else:
        items = []
    out: dict[str, str] = {}
    for key, value in items[:MAX_PARAMS]:
        text = server_text(value)
        if text:
            out[server_text(key, 40) if key != "errors" else ""] = text
    return out


def _translate(exc: Any, method: str, path: str) -> ApiError:
    status = getattr(exc, "status_code", 0) or 0
    raw_errors = _errors_of(exc)
    content = getattr(exc, "content", "") or ""
    suffix = f" - {raw_errors}"  # proxmoxer appends the repr of ``errors`` to ``content``
    if raw_errors is not None and isinstance(content, str) and content.endswith(suffix):
        content = content[:-len(suffix)]
    reason = server_text(content or getattr(exc, "status_message", ""))
    errors = _server_errors(raw_errors)
    params = {k: v for k, v in errors.items() if k}
    detail = "; ".join(f"{k}: {v}" if k else v for k, v in errors.items() if v != reason)
    message = f"{method} /{path}: {status} {reason}".strip() + (f": {detail}" if detail else "")
    return ApiError(message, hint=hint_for(status, reason, params, path), status=status, reason=reason,
                    errors=errors)


def hint_for(status: int, reason: str, params: dict[str, str], path: str = "") -> str:
    """The hint that follows from what the server said (status, reason, the parameters it named)."""
    said = " ".join([reason, *params.values()])
    if status == 401:
        return ("authentication failed: check api.user and api.token_name (the token id is USER@REALM!NAME) "
                "and the token secret (api.token_value / api.token_value_file)")
    if status == 403:
        m = PERM_RE.search(reason)
        if m:
            return (f"the API token lacks {m.group(2).strip()} on {m.group(1)}: grant it, e.g. `pveum acl modify "
                    f"{m.group(1)} --tokens <USER@REALM!NAME> --roles <a role with it>` (README: 'API token, "
                    "minimal privileges'; a privilege-separated token needs its own ACL entries)")
        return ("the API token lacks a privilege for this call; see README 'API token, minimal privileges' "
                "(a privilege-separated token needs its own ACL entries)")
    if status == 400 and params:
        names = ", ".join(sorted(params))
        return (f"Proxmox refused the parameter{'s' if len(params) > 1 else ''} {names} (its reason is above); "
                "if pvepstore chose the value, this is a bug (or an unsupported PVE version)")
    if status == 400:
        return "Proxmox refused a parameter; if pvepstore sent it, this is a bug (or an unsupported PVE version)"
    if status == 595 or "no such cluster node" in said:
        return "the node is offline or not in the cluster"
    if "does not exist" in said and "qemu-server" in said:
        return "the VM is not on that node (migrated?); `pvepstore status` shows where it is"
    if status == 501:
        return "this Proxmox VE version lacks the API call; pvepstore needs PVE 8 or 9"
    return "see the task log or journalctl -u pvedaemon -u pveproxy on the node"


def connect(cfg: Config, *, dry_run: bool = False) -> PveApi:
    """A PveApi for the configured transport (nothing is contacted yet)."""
    from ..liblog import quiet_library_logs

    quiet_library_logs()
    api = cfg.api
    if api.backend == "local":
        from proxmoxer import ProxmoxAPI
        try:
            prox = ProxmoxAPI(backend="local", timeout=api.timeout)
        except (NotImplementedError, ImportError):  # proxmoxer < 2.0 (Debian 12's python3-proxmoxer 1.2)
            import proxmoxer

            raise ConfigError(f"api.backend: local needs proxmoxer >= 2.0 (this is {proxmoxer.__version__}: "
                              "Debian 12 ships 1.2, without a pvesh backend)",
                              hint="use api.backend: https with an API token, or install proxmoxer 2 "
                                   "(Debian 13's python3-proxmoxer, or pipx)") from None
        return PveApi(prox, backend="local", endpoint="pvesh (local)", dry_run=dry_run)
    secret = api.secret()
    if not secret:
        raise ConfigError("api.token_value: an API token secret is needed for the https backend",
                          hint="create one with `pveum user token add root@pam pvepstore --privsep 1` "
                               "and put the secret in api.token_value_file (chmod 600)")
    verify: bool | str = api.verify_ssl
    if isinstance(verify, str):
        ca = cfg.paths.ca_file(verify)
        if not ca.is_file():
            raise ConfigError(f"api.verify_ssl: CA file {ca} does not exist",
                              hint=f"on a PVE node it is {HostPaths().pve_root_ca}; "
                                   "set api.verify_ssl to true to use the system CAs")
        verify = str(ca)
    from proxmoxer import ProxmoxAPI
    prox = ProxmoxAPI(api.host, port=api.port, user=api.user, token_name=api.token_name,
                      token_value=secret, verify_ssl=verify, timeout=api.timeout)
    _size_connection_pool(prox, cfg.collect.concurrency)
    return PveApi(prox, backend="https", endpoint=f"https://{api.host}:{api.port}", dry_run=dry_run)


def _size_connection_pool(prox: Any, workers: int) -> None:
    """Keep one kept-alive connection per sweep worker.

    requests pools 10 connections per host; more concurrent workers would each
    open (and throw away) a new TLS connection per call, which costs pveproxy and
    us a handshake every time.
    """
    from requests.adapters import HTTPAdapter

    # The session every call goes through (``_backend.get_session()`` would make a new, unused one:
    # proxmoxer 1.2 and 2.x build a fresh session on each call of it).
    session = prox._store["session"]
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(10, workers))
    session.mount("https://", adapter)
    # The endpoint and its CA are configured explicitly; do not consult proxy and CA
    # environment variables on every call (requests does, and it is a large share of a call).
    session.trust_env = False
    # proxmoxer < 2 drops the body's "errors" of a refused call (its serializer returns "data" only):
    # keep it per thread, so the message can still name the parameter Proxmox refused.
    session.hooks.setdefault("response", []).append(_keep_error_body)


_LAST_ERROR = threading.local()


def _keep_error_body(resp, *args, **kwargs):
    if resp.status_code >= 400:
        try:
            errors = resp.json().get("errors") if len(resp.content) <= 64 << 10 else None
        except (ValueError, AttributeError):
            errors = None
        _LAST_ERROR.value = (resp.status_code, errors)
    return resp


def _errors_of(exc: Any) -> Any:
    """The exception's ``errors``, or (proxmoxer < 2) those the response hook kept for its status."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        kept = getattr(_LAST_ERROR, "value", None)
        _LAST_ERROR.value = None
        if kept is not None and kept[0] == getattr(exc, "status_code", None) and isinstance(kept[1], dict):
            return kept[1]
    return errors
