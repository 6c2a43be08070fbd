"""Validate requests against Proxmox VE's own API schema (pve-docs ``apidata.js``).

Implements the parts of ``PVE::JSONSchema::validate``/``parse_property_string``
that a client can trip over: the path and method must exist; parameters not in
the schema are refused when ``additionalProperties`` is 0; required parameters;
types (``boolean`` only ``0``/``1`` outside property strings, integers, numbers);
``enum``, ``pattern`` (anchored, Perl ``(?^:...)`` syntax), ``minLength``/
``maxLength``, ``minimum``/``maximum``, ``requires``; indexed names such as
``virtio[n]`` with PVE's slot ranges; property strings (a ``format`` given as a
dict: ``default_key``, ``alias``, ``keyAlias``, unknown/duplicate keys, nested
checks); and these named formats: pve-node, pve-vmid, pve-storage-id,
pve-configid, pve-configid-list, urlencoded, pve-volume-id,
pve-volume-id-or-qm-path, pve-volume-id-or-absolute-path, disk-size, mac-addr,
pve-bridge-id, pve-tag-list, pve-qm-ipconfig, pve-hotplug-features. Other named
formats are accepted unchecked (``UNCHECKED_FORMATS`` collects the ones met).
Error texts follow PVE's (``PVE::JSONSchema``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

APIDATA = Path(os.environ.get("PVEPSTORE_SHARED", Path(__file__).resolve().parents[3] / "shared")) \
    / "pve-apidoc" / "apidata.js"

# PVE's slot ranges for indexed keys (qemu-server Drive.pm / Network.pm / Cloudinit).
INDEX_MAX = {"ide": 3, "sata": 5, "scsi": 30, "virtio": 15, "unused": 255, "net": 31,
             "ipconfig": 31, "hostpci": 15, "usb": 14, "serial": 3, "parallel": 2, "numa": 7,
             "virtiofs": 9, "mp": 255}

UNCHECKED_FORMATS: set[str] = set()

_CONFIGID = re.compile(r"^[a-z][a-z0-9_-]+$", re.I)
_STORAGE_ID = re.compile(r"^[a-z][a-z0-9\-_.]*[a-z0-9]$", re.I)
_VOLUME_ID = re.compile(r"^([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)$", re.I)
_NEW_DISK = re.compile(r"^(([^/:\s]+):)?(\d+(\.\d+)?)$")
_NODE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")
_TAG = re.compile(r"^[a-z0-9_][a-z0-9_\-+.]*$", re.I)
_HOTPLUG = {"network", "disk", "cpu", "memory", "usb", "cloudinit"}


class SchemaError(Exception):
    """A request PVE would refuse: ``errors`` maps parameter → message (HTTP 400)."""

    def __init__(self, errors: dict[str, str]):
        super().__init__(json.dumps(errors))
        self.errors = errors


class NoSuchMethod(Exception):
    """Path/method not in the schema (PVE answers 501 ``Method '...' not implemented``)."""


@lru_cache(maxsize=1)
def load_schema(path: str = str(APIDATA)) -> dict[str, dict]:
    text = Path(path).read_text(encoding="utf-8")
    tree = json.loads(text[text.index("["): text.rindex("]") + 1])
    index: dict[str, dict] = {}

    def walk(nodes):
        for n in nodes:
            index[n["path"]] = n.get("info", {})
            walk(n.get("children", []))
    walk(tree)
    return index


def match_path(concrete: str | list[str]) -> tuple[str, dict[str, str]]:
    """``/nodes/pve1/qemu/100/config`` → (template, {node: pve1, vmid: 100}).

    A list gives the already split (and unquoted) segments, so that a segment
    may hold a '/' (the volume ID of a dir storage, sent as %2F).
    """
    parts = concrete if isinstance(concrete, list) else concrete.strip("/").split("/")
    best = None
    for tmpl in load_schema():
        t = tmpl.strip("/").split("/")
        if len(t) != len(parts):
            continue
        if all(a == b or (a.startswith("{") and b) for a, b in zip(t, parts)):
            literal = sum(1 for a in t if not a.startswith("{"))
            if best is None or literal > best[0]:
                best = (literal, tmpl, {a[1:-1]: b for a, b in zip(t, parts) if a.startswith("{")})
    if best is None:
        raise NoSuchMethod(concrete)
    return best[1], best[2]


def method_info(template: str, method: str) -> dict:
    info = load_schema()[template].get(method)
    if info is None:
        raise NoSuchMethod(f"{method} {template}")
    return info


def validate_request(method: str, concrete: str | list[str], params: Mapping[str, Any]) -> tuple[str, dict]:
    """Validate one request; returns (template, all parameters incl. path ones)."""
    template, path_params = match_path(concrete)
    info = method_info(template, method)
    schema = info.get("parameters", {})
    merged = {**params, **path_params}
    validate_params(schema, merged)
    return template, merged


def validate_params(schema: Mapping, params: Mapping[str, Any]) -> None:
    props = schema.get("properties", {}) or {}
    errors: dict[str, str] = {}
    for name, value in params.items():
        prop = lookup_property(props, name)
        if prop is None:
            if not schema.get("additionalProperties", 0):
                errors[name] = "property is not defined in schema and the schema does not allow additional properties"
            continue
        msg = check_value(prop, value, name, in_property_string=False)
        if msg:
            errors[name] = msg
        req = prop.get("requires")
        if req and req not in params:
            errors[name] = f"missing property - '{name}' requires this property"  # noqa: E501
            errors.setdefault(req, f"missing property - '{name}' requires this property")
    for name, prop in props.items():
        if "[n]" in name or prop.get("optional") or name in params or "default" in prop:
            continue
        errors[name] = "property is missing and it is not optional"
    if errors:
        raise SchemaError(errors)


def lookup_property(props: Mapping[str, dict], name: str) -> dict | None:
    if name in props:
        return props[name]
    m = re.fullmatch(r"([a-z]+)(\d+)", name)
    if m and f"{m.group(1)}[n]" in props:
        n = int(m.group(2))
        if str(n) != m.group(2) or n > INDEX_MAX.get(m.group(1), 255):
            return None
        return props[f"{m.group(1)}[n]"]
    return None


def perl_regex(pattern: str) -> re.Pattern:
    flags = 0
    m = re.fullmatch(r"\(\?\^([a-z]*):(.*)\)", pattern, re.S)
    if m:
        if "i" in m.group(1):
            flags |= re.I
        pattern = m.group(2)
    return re.compile(r"^(?:" + pattern + r")$", flags)


def check_value(prop: Mapping, value: Any, name: str, *, in_property_string: bool) -> str | None:
    """PVE's message for an invalid value, or None."""
    typ = prop.get("type", "string")
    text = value if isinstance(value, str) else str(value)
    if isinstance(value, list):
        if typ != "array":
            return f"type check ('{typ}') failed - got ARRAY"
        items = prop.get("items", {})
        for v in value:
            msg = check_value(items, v, name, in_property_string=in_property_string)
            if msg:
                return msg
        return None
    if typ == "boolean":
        ok = {"0", "1"} if not in_property_string else \
            {"0", "1", "on", "off", "yes", "no", "true", "false"}
        if (text.lower() if in_property_string else text) not in ok:
            return f"type check ('boolean') failed - got '{text}'"
        return None
    if typ == "integer":
        if not re.fullmatch(r"[+-]?\d+", text):
            return f"type check ('integer') failed - got '{text}'"
        return _range(prop, int(text))
    if typ == "number":
        if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
            return f"type check ('number') failed - got '{text}'"
        return _range(prop, float(text))
    if typ == "array":
        return None  # a single value for an array parameter is accepted by PVE
    if typ not in ("string", "object"):
        return None
    if "enum" in prop and text not in prop["enum"]:
        return f"value '{text}' does not have a value in the enumeration '{', '.join(prop['enum'])}'"
    if "maxLength" in prop and len(text) > int(prop["maxLength"]):
        return f"value may only be {prop['maxLength']} characters long"
    if "minLength" in prop and len(text) < int(prop["minLength"]):
        return f"value must be at least {prop['minLength']} characters long"
    if "pattern" in prop and not perl_regex(prop["pattern"]).match(text):
        return "value does not match the regex pattern"
    fmt = prop.get("format")
    if isinstance(fmt, dict):
        return check_property_string(fmt, text, name)
    if isinstance(fmt, str):
        return check_format(fmt, text, name)
    return None


def _range(prop: Mapping, number: float) -> str | None:
    if "minimum" in prop and number < float(prop["minimum"]):
        return f"value must have a minimum value of {prop['minimum']}"
    if "maximum" in prop and number > float(prop["maximum"]):
        return f"value must have a maximum value of {prop['maximum']}"
    return None


def parse_property_string(fmt: Mapping[str, dict], text: str) -> dict[str, str]:
    """Split ``key=value,...`` as PVE does; raises ValueError with PVE's message."""
    result: dict[str, str] = {}
    default_key = next((k for k, v in fmt.items() if v.get("default_key")), None)
    for part in text.split(","):
        if part == "":
            continue
        if "=" in part:
            key, value = part.split("=", 1)
            schema = fmt.get(key)
            if schema is None:
                raise ValueError(f"invalid format - unknown key '{key}' in comma-separated list property")
            if "alias" in schema:
                if "keyAlias" in schema:  # net: virtio=AA:.. → model=virtio, macaddr=AA:..
                    result[_dup(result, schema["keyAlias"])] = key
                key = schema["alias"]
        else:
            if default_key is None:
                raise ValueError(f"invalid format - value without key, but schema does not define a default key")
            key, value = default_key, part
        result[_dup(result, key)] = value
    for key, schema in fmt.items():
        if "alias" in schema or schema.get("optional") or key in result:
            continue
        raise ValueError(f"invalid format - property '{key}' is missing and it is not optional")
    return result


def _dup(result: dict, key: str) -> str:
    if key in result:
        raise ValueError(f"invalid format - duplicate key in comma-separated list property: {key}")
    return key


def check_property_string(fmt: Mapping[str, dict], text: str, name: str) -> str | None:
    try:
        parsed = parse_property_string(fmt, text)
    except ValueError as exc:
        return str(exc)
    problems = []
    for key, value in parsed.items():
        msg = check_value(fmt[key], value, f"{name}.{key}", in_property_string=True)
        if msg:
            problems.append(f"{name}.{key}: {msg}")
    if problems:
        return "invalid format - format error\n" + "\n".join(problems)
    return None


def check_format(fmt: str, text: str, name: str) -> str | None:
    bad = f"invalid format - value '{text}' does not match format '{fmt}'"
    if fmt == "pve-node":
        return None if _NODE.match(text) else f"invalid format - value does not look like a valid node name"
    if fmt == "pve-vmid":
        return None if re.fullmatch(r"\d+", text) else "invalid format - value does not look like a valid VM ID"
    if fmt == "pve-storage-id":
        return None if _STORAGE_ID.match(text) else f"invalid format - storage ID '{text}' contains illegal characters"
    if fmt == "pve-configid":
        return None if _CONFIGID.match(text) else f"invalid format - invalid configuration ID '{text}'"
    if fmt == "pve-configid-list":
        for item in re.split(r"[,;\s]+", text.strip()):
            if item and not _CONFIGID.match(item):
                return f"invalid format - invalid configuration ID '{item}'"
        return None
    if fmt == "urlencoded":
        return None if re.fullmatch(r"[-%a-zA-Z0-9_.!~*'()]*", text) else \
            f"invalid format - {text} is not in url encoded format"
    if fmt == "pve-volume-id":
        return None if _VOLUME_ID.match(text) else f"invalid format - unable to parse volume ID '{text}'"
    if fmt in ("pve-volume-id-or-qm-path", "pve-volume-id-or-absolute-path"):
        if text in ("none", "cdrom") or text.startswith("/") or _VOLUME_ID.match(text) \
                or (fmt.endswith("qm-path") and _NEW_DISK.match(text)):
            return None
        return f"invalid format - unable to parse volume ID '{text}'"
    if fmt == "disk-size":
        return None if re.fullmatch(r"\d+(\.\d+)?([KMGT](iB)?)?", text) else \
            f"invalid format - disk size '{text}' is not valid"
    if fmt == "mac-addr":
        if not re.fullmatch(r"[a-f0-9]{2}(:[a-f0-9]{2}){5}", text, re.I):
            return f"invalid format - value does not look like a valid MAC address"
        if int(text[:2], 16) & 1:
            return "invalid format - MAC address has the I/G (Individual/Group) bit set"
        return None
    if fmt == "pve-bridge-id":
        return None if re.fullmatch(r"[-_.\w\d]+", text) else bad
    if fmt == "pve-tag-list":
        for tag in re.split(r"[;, ]+", text.strip()):
            if tag and not _TAG.match(tag):
                return f"invalid format - invalid tag '{tag}'"
        return None
    if fmt == "pve-hotplug-features":
        if text.strip() in ("0", "1"):
            return None
        for item in text.split(","):
            if item not in _HOTPLUG:
                return f"invalid format - invalid hotplug feature '{item}'"
        return None
    if fmt == "pve-qm-ipconfig":
        ipfmt = {"ip": {"optional": 1}, "gw": {"optional": 1}, "ip6": {"optional": 1}, "gw6": {"optional": 1}}
        try:
            parsed = parse_property_string(ipfmt, text)
        except ValueError as exc:
            return str(exc)
        for key, value in parsed.items():
            try:
                if key == "ip" and value != "dhcp":
                    ipaddress.IPv4Interface(value) if "/" in value else _fail()
                elif key == "ip6" and value not in ("dhcp", "auto"):
                    ipaddress.IPv6Interface(value) if "/" in value else _fail()
                elif key == "gw":
                    ipaddress.IPv4Address(value)
                elif key == "gw6":
                    ipaddress.IPv6Address(value)
            except ValueError:
                return f"invalid format - format error\n{name}.{key}: invalid format - value does not look like a valid IP address"
        return None
    UNCHECKED_FORMATS.add(fmt)
    return None


def _fail():
    raise ValueError("CIDR required")
