"""efi_pstore records in an OVMF variable store, exactly as the guest kernel lists them.

The kernel side (drivers/firmware/efi/efi-pstore.c, 6.1 and 6.19; fs/pstore/platform.c and
inode.c; docs/efi-pstore-format.md): every dump part is one non-volatile variable of vendor
``LINUX_EFI_CRASH_GUID`` named ``dump-type<type>-<part>-<count>-<sec>-<C|D>``, at most
``record_size`` (1024) bytes of data, raw deflate when ``C``.  At mount pstore enumerates with
GetNextVariableName, so the firmware decides what is listed (live variables, an
IN_DELETED_TRANSITION copy only when no ADDED one exists, runtime-visible ones only), and
pstore stops at the first read that fails.  The file is ``<type>-efi-<id>``,
``id = (sec * 100 + part) * 1000 + count``; a duplicate id is dropped (-EEXIST).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .dump import decode_payload, part_header, reason_code
from .efivars import MAX_STORE_BYTES, EfiVariable, VarState, VarStore, looks_like_varstore, parse_varstore
from .model import MAX_IMAGE_BYTES, MAX_RECORD_BYTES, Finding, ImageBudget, Kind, ParseResult, Record, Severity
from .source import ByteSource

EFI_PSTORE_GUID = "cfc8fc79-be2e-4ddc-97f0-9f98bfe298a0"
BACKEND = "efi"
# efi_pstore_info.name: "efi" up to 6.1, KBUILD_MODNAME "efi_pstore" from 6.2 (commit 893c5f1de620,
# "efi: pstore: Follow convention for the efi-pstore backend name"): the file names change.
NAME_UNTIL_6_1 = "efi"
NAME_FROM_6_2 = "efi_pstore"
# "CPU: 0 PID: 76 Comm: sh Tainted: G OE 6.1.0-57-amd64 #1" / "Not tainted 6.12.9+bpo-amd64"
_RELEASE = re.compile(rb"(?:Not tainted|Tainted: [A-Z ]{1,40}?|Linux version) (\d{1,3})\.(\d{1,3})[.\-+ ]")
RECORD_SIZE = 1024           # efi_pstore's EFIVARS_DATA_SIZE_MAX (6.1) / record_size default (6.2+)
STOP_LOOP = 65536            # pstore_get_backend_records(): reads per mount at most
EFI_VARIABLE_RUNTIME_ACCESS = 0x4
# pstore_type_to_name() (fs/pstore/platform.c), enum pstore_type_id order
TYPE_NAMES = ("dmesg", "mce", "console", "ftrace", "rtas", "powerpc-ofw", "powerpc-common",
              "pmsg", "powerpc-opal")
KINDS = {0: Kind.DMESG, 2: Kind.CONSOLE, 3: Kind.FTRACE, 7: Kind.PMSG}
_WS = r"[\t\n\v\f\r \xa0]*"
_U = _WS + r"(\d+)"
_D = _WS + r"(-?\d+)"
_FMT5 = re.compile("dump-type" + _U + "-" + _U + "-" + _D + "-" + _U + "-(.)", re.S)
_FMT4 = re.compile("dump-type" + _U + "-" + _U + "-" + _D + "-" + _U)
_FMT3 = re.compile("dump-type" + _U + "-" + _U + "-" + _U)
DUMP_NAME_LEN = 66


@dataclass(frozen=True)
class EfiStore:
    """The store's fill level, for ``status`` ("efidisk0 store 37 % used, 15 KB pstore")."""

    store_size: int
    used_bytes: int
    live_bytes: int
    pstore_bytes: int
    pstore_variables: int

    @property
    def used_percent(self) -> float:
        return 100.0 * self.used_bytes / self.store_size if self.store_size else 0.0


class EfiLayout:
    def __init__(self, vs: VarStore, store: EfiStore, device_size: int = 0) -> None:
        self.varstore = vs
        self.store = store
        self.device_size = device_size  # the whole vars file (the FV may be followed by more)
        # the records are found from the variable headers, as the firmware finds them
        self.discovery = {"confidence": "high" if vs.store_size else "none", "from": "variable headers"}

    def to_json(self) -> dict:
        doc = self.varstore.to_json()
        doc.update(pstore_bytes=self.store.pstore_bytes, pstore_variables=self.store.pstore_variables,
                   used_percent=round(self.store.used_percent, 1))
        # The keys every layout has (cli/render.describe_layout reads them): one "zone" per
        # efi_pstore variable of at most record_size bytes, found from the variable headers.
        doc.update(dmesg={"count": self.store.pstore_variables, "zone_size": RECORD_SIZE,
                          "base": self.varstore.area_offset},
                   zones=[], discovery=self.discovery)
        return doc


class EfiResult(ParseResult):
    """A ParseResult with the store's fill level as ``.store``."""

    @property
    def store(self) -> EfiStore:
        return self.layout.store


def looks_like_efi(src: ByteSource) -> bool:
    return looks_like_varstore(src)


def _num(digits: str, bits: int, signed: bool = False) -> int:
    # vsscanf's simple_strtoull wraps past 2**64; only the last 64 digits matter for that.
    neg = digits.startswith("-")
    v = int(digits.lstrip("-")[-64:] or "0") % (1 << 64)
    v = (-v if neg else v) % (1 << bits)
    if signed and v >= 1 << (bits - 1):
        v -= 1 << bits
    return v


def parse_dump_name(name: str) -> tuple[int, int, int, int, bool] | None:
    """(type, part, count, sec, compressed) as efi_pstore_read_func()'s three sscanf()s read it."""
    kname = name.encode("utf-8", "replace")[:DUMP_NAME_LEN - 1].decode("utf-8", "ignore")
    m = _FMT5.match(kname)
    if m:
        return (_num(m[1], 32), _num(m[2], 32), _num(m[3], 32, True), _num(m[4], 64), m[5] == "C")
    m = _FMT4.match(kname)
    if m:
        return (_num(m[1], 32), _num(m[2], 32), _num(m[3], 32, True), _num(m[4], 64), False)
    m = _FMT3.match(kname)
    if m:
        return (_num(m[1], 32), _num(m[2], 32), 0, _num(m[3], 64), False)
    return None


def generic_id(sec: int, part: int, count: int) -> int:
    return ((sec * 100 + part) * 1000 + count) % (1 << 64)


def firmware_enumeration(variables: list[EfiVariable]) -> tuple[list[EfiVariable], str | None]:
    """The variables GetNextVariableName returns at runtime, in order (edk2 Variable.c
    VariableServiceGetNextVariableInternal + FindVariableEx), and why it ended early if it did.

    The next call starts after the *first* live copy of the name just returned, so duplicate
    live names make the firmware loop; that is detected (each position is returned once) and
    reported instead of followed.
    """
    vis = [v for v in variables if v.live and v.attributes & EFI_VARIABLE_RUNTIME_ACCESS]
    first_added: dict[tuple, int] = {}
    last_trans: dict[tuple, int] = {}
    for i, v in enumerate(vis):
        key = (v.name_bytes, v.guid)
        if v.status is VarState.ADDED:
            first_added.setdefault(key, i)
        else:
            last_trans[key] = i
    out: list[EfiVariable] = []
    # The empty name: FindVariableEx() gives the first ADDED variable (else the last in transition).
    pos = next((i for i, v in enumerate(vis) if v.status is VarState.ADDED), None)
    if pos is None:
        pos = max(last_trans.values()) if last_trans else None
    if pos is None:
        return out, None
    returned: set[int] = set()
    while True:
        while pos < len(vis):
            v = vis[pos]
            if v.status is VarState.IN_DELETED_TRANSITION and (v.name_bytes, v.guid) in first_added:
                pos += 1
                continue
            break
        if pos >= len(vis):
            return out, None
        if pos in returned:
            return out, "the firmware's variable enumeration loops (duplicate live variable names)"
        returned.add(pos)
        out.append(vis[pos])
        key = (vis[pos].name_bytes, vis[pos].guid)
        pos = first_added.get(key, last_trans.get(key, pos)) + 1


def backend_name_for(records: list[Record]) -> str | None:
    """The pstore backend name of the kernel that wrote these records, from the release in an
    Oops/panic text ("... Tainted: G OE 6.1.0-57-amd64"); None when no text says it."""
    for rec in records:
        m = _RELEASE.search(rec.data[:1 << 16])
        if m:
            return _name_of(int(m[1]), int(m[2]))
    return None


def name_for_release(release: str | None) -> str | None:
    """The backend name of kernel ``release`` ("6.12.117+deb13-amd64"); None if it is not one."""
    m = re.match(r"(\d{1,3})\.(\d{1,3})(?:[.\-+]|$)", release or "")
    return _name_of(int(m[1]), int(m[2])) if m else None


def _name_of(major: int, minor: int) -> str:
    return NAME_FROM_6_2 if (major, minor) >= (6, 2) else NAME_UNTIL_6_1


def read_efi(src: ByteSource, *, forensic: bool = False, options=None,
             record_size: int = RECORD_SIZE, backend_name: str | None = None) -> EfiResult:
    """Parse an OVMF vars file (efidisk0) into the kernel's efi_pstore records.

    ``forensic``: also the deleted / shadowed crash variables, flagged ``erased`` (never part of
    the kernel's view).  ``options``: a ReadOptions (max_record_bytes, max_image_bytes).
    ``backend_name``: "efi" (kernels <= 6.1) or "efi_pstore" (>= 6.2) in the file names; None:
    from the kernel release the records' texts name, else ``options.kernel_release``, else "efi".
    """
    max_record = getattr(options, "max_record_bytes", MAX_RECORD_BYTES)
    budget = ImageBudget(getattr(options, "max_image_bytes", MAX_IMAGE_BYTES))
    vs = parse_varstore(src, include_deleted=True, max_store_bytes=MAX_STORE_BYTES)
    findings: list[Finding] = list(vs.findings)
    crash = [v for v in vs.variables if v.guid == EFI_PSTORE_GUID]
    live_crash = [v for v in crash if v.live]
    store = EfiStore(vs.store_size, vs.used_bytes, vs.live_bytes,
                     sum(_aligned(v) for v in live_crash), len(live_crash))
    result = EfiResult(src.name, 0, EfiLayout(vs, store, src.size), findings=findings)
    listed, why = firmware_enumeration(vs.variables)
    if why:
        findings.append(Finding(Severity.ERROR, why + ": the kernel's listing stops there", kind="efi"))
    shown: set[int] = set()
    seen_ids: set[tuple[int, int]] = set()
    reads = 0
    for v in listed:
        if v.guid != EFI_PSTORE_GUID:
            continue
        if len(v.name_bytes) > record_size:
            findings.append(Finding(Severity.ERROR, f"crash variable name of {len(v.name_bytes)} bytes "
                                    f"(> {record_size}): GetNextVariableName fails and the kernel's "
                                    "listing ends here", kind="efi", offset=v.offset))
            break
        reads += 1
        if reads > STOP_LOOP:
            findings.append(Finding(Severity.WARNING, f"more than {STOP_LOOP} crash variables: pstore "
                                    "reads no more per mount", kind="efi"))
            break
        parsed = parse_dump_name(v.name)
        if parsed is None:
            findings.append(Finding(Severity.WARNING, f"crash variable {v.name[:80]!r} is not a dump "
                                    "name: efi_pstore's read returns 0 and the kernel's listing ends "
                                    "here", kind="efi", offset=v.offset))
            break
        if not v.data or len(v.data) > record_size:
            why = "empty" if not v.data else f"{len(v.data)} bytes (> {record_size}: GetVariable fails)"
            findings.append(Finding(Severity.WARNING, f"crash variable {v.name[:80]!r} is {why}: "
                                    "the kernel's listing ends here", kind="efi", offset=v.offset))
            break
        rec = _record(v, parsed, max_record, findings, budget, erased=False, seen_ids=seen_ids)
        shown.add(v.offset)
        if rec is not None:
            result.records.append(rec)
    if forensic:
        for v in crash:
            if v.offset in shown:
                continue
            parsed = parse_dump_name(v.name)
            if parsed is None or not v.data:
                continue
            rec = _record(v, parsed, max_record, findings, budget, erased=True, seen_ids=None)
            if rec is not None:
                result.records.append(rec)
    findings.extend(budget.findings())
    name = (backend_name or backend_name_for(result.records)
            or name_for_release(getattr(options, "kernel_release", None)) or NAME_UNTIL_6_1)
    if name != NAME_UNTIL_6_1:
        result.records = [_renamed(r, name) for r in result.records]
    result.bytes_read = src.bytes_read
    return result


def _renamed(rec: Record, name: str) -> Record:
    kind, _, rest = rec.name.partition(f"-{NAME_UNTIL_6_1}-")
    return replace(rec, name=f"{kind}-{name}-{rest}")


def same_record(file_name: str) -> str:
    """A pstorefs file name of an efi_pstore record with the kernel-dependent backend part made one:
    ``dmesg-efi_pstore-<id>`` (>= 6.2) and ``dmesg-efi-<id>`` (<= 6.1) are the same variable."""
    kind, sep, rest = file_name.partition(f"-{NAME_FROM_6_2}-")
    return f"{kind}-{NAME_UNTIL_6_1}-{rest}" if sep else file_name


def _aligned(v: EfiVariable) -> int:
    return (v.total_size + 3) & ~3


def _record(v: EfiVariable, parsed, max_record: int, findings: list[Finding], budget: ImageBudget,
            *, erased: bool, seen_ids: set | None) -> Record | None:
    ptype, part, count, sec, compressed = parsed
    kind = KINDS.get(ptype)
    type_name = TYPE_NAMES[ptype] if ptype < len(TYPE_NAMES) else "unknown"
    rid = generic_id(sec, part, count)
    if seen_ids is not None:
        if (ptype, rid) in seen_ids:
            findings.append(Finding(Severity.WARNING, f"{v.name[:80]!r}: id {rid} already listed "
                                    "(the kernel drops the duplicate)", kind="efi", offset=v.offset))
            return None
        seen_ids.add((ptype, rid))
    if kind is None:
        findings.append(Finding(Severity.INFO, f"{type_name}-efi-{rid}: pstore type {ptype} is "
                                "listed by the kernel but not by pvepstore", kind="efi", offset=v.offset))
        return None
    suffix, data = "", v.data
    if compressed and kind is Kind.DMESG:
        dec = decode_payload(v.data, True, min(3 * RECORD_SIZE, max_record))
        data, suffix = dec.data, dec.suffix
        if dec.error:
            findings.append(Finding(Severity.WARNING, f"{v.name[:80]!r}: {dec.error}; the kernel "
                                    "keeps the compressed bytes (.enc.z)", kind="efi", offset=v.offset))
    elif compressed:
        suffix = ".enc.z"     # decompress_record() only decompresses dmesg
    if not budget.take(len(data), lambda m: findings.append(
            Finding(Severity.WARNING, m, kind="efi", offset=v.offset))):
        return None
    hdr = part_header(data) if kind is Kind.DMESG and not suffix else None
    reason = hdr[0] if hdr else None
    return Record(name=f"{type_name}-efi-{rid}{suffix}", kind=kind, backend=BACKEND, zone=part,
                  offset=v.offset, data=data, reason=reason,
                  reason_code=reason_code(reason) if reason else None,
                  counter=count, time_sec=sec, time_nsec=0, compressed=compressed, erased=erased)
