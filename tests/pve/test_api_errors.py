"""API error messages (issue 11 #20): text from the server, decoded, bounded, terminal-safe, and
a hint that follows from the status and from what the server said -- for every shape proxmoxer
hands over (PVE's {param: message} object, ``{"errors": <raw body bytes>}`` when the body is not
JSON, as pveproxy's 401 is, plain text from pvesh, nothing at all)."""

from __future__ import annotations

import re

import pytest

from hypothesis import given, settings, strategies as st
from proxmoxer.core import ResourceException

from pvepstore.pve.api import ApiError, _translate

HOSTILE = st.text(alphabet=st.characters(codec="utf-8"), max_size=3000)
VALUES = st.one_of(HOSTILE, st.binary(max_size=3000), st.none(), st.lists(HOSTILE, max_size=5))
ERRORS = st.one_of(st.none(), st.dictionaries(st.text(max_size=40), VALUES, max_size=20),
                   st.builds(lambda b: {"errors": b}, st.binary(max_size=3000)), HOSTILE, st.binary(max_size=300))
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@settings(max_examples=300, deadline=None)
@given(status=st.sampled_from([400, 401, 403, 500, 501, 595, 0]), reason=HOSTILE,
       errors=ERRORS)
def test_every_error_shape_is_one_bounded_safe_line_with_a_status_hint(status, reason, errors):
    err = _translate(ResourceException(status, "x", reason, errors=errors), "POST", "nodes/pve1/qemu/100/config")
    assert isinstance(err, ApiError) and err.status == status
    assert not UNSAFE.search(err.message) and len(err.message) < 1400
    for value in (errors or {}).values() if isinstance(errors, dict) else [errors]:
        if isinstance(value, bytes) and value:
            assert repr(value) not in err.message  # never a Python bytes repr
    assert err.hint
    if status == 401:
        assert "token secret" in err.hint and "privilege" not in err.hint
    if status == 403:
        assert "privilege" in err.hint.lower() or "lacks" in err.hint


def test_pveproxys_401_shape():
    err = _translate(ResourceException(401, "Unauthorized", "Authentication failed!", errors={"errors": b""}),
                     "GET", "cluster/resources")
    assert err.message == "GET /cluster/resources: 401 Authentication failed!"


def test_hints_follow_from_what_was_said():
    perm = _translate(ResourceException(403, "Forbidden", "Permission check failed (/storage/local-lvm, "
                                        "Datastore.AllocateSpace)"), "POST", "nodes/pve1/qemu/100/config")
    assert "lacks Datastore.AllocateSpace on /storage/local-lvm" in perm.hint
    param = _translate(ResourceException(400, "Bad Request", "Parameter verification failed.",
                                         errors={"hookscript": "script 'local:snippets/x.sh' does not exist\n"}),
                       "POST", "nodes/pve1/qemu/100/config")
    assert param.message.endswith("hookscript: script 'local:snippets/x.sh' does not exist")
    assert "parameter hookscript" in param.hint and "root" not in param.hint and "token" not in param.hint
    assert param.errors == {"hookscript": "script 'local:snippets/x.sh' does not exist"}


def test_the_session_calls_go_through_is_the_tuned_one(fakepve):
    from pvepstore.pve.api import connect

    api = connect(fakepve.load_config(collect={"concurrency": 32}))
    session = api.prox._store["session"]  # the one proxmoxer sends every request through
    assert session.trust_env is False and session.get_adapter("https://x").poolmanager.connection_pool_kw[
        "maxsize"] == 32
    assert api.get("version")["version"]


def test_local_backend_on_an_old_proxmoxer_is_a_config_error(monkeypatch):
    import proxmoxer

    from pvepstore.config import parse_config
    from pvepstore.errors import ConfigError
    from pvepstore.pve.api import connect

    def old(*args, **kwargs):  # proxmoxer 1.2: "local" is not among PVE's supported backends
        raise NotImplementedError("local backend not supported for PVE service")

    monkeypatch.setattr(proxmoxer, "ProxmoxAPI", old)
    with pytest.raises(ConfigError, match=r"api.backend: local needs proxmoxer >= 2.0") as exc:
        connect(parse_config({"api": {"backend": "local"}}))
    assert "api.backend: https" in exc.value.hint
