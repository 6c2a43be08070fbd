"""The OVMF/edk2 variable store (Proxmox's efidisk0, raw): a pure, bounded reader.

Layout (edk2 MdePkg/Include/Pi/PiFirmwareVolume.h, MdeModulePkg/Include/Guid/VariableFormat.h,
MdeModulePkg/Universal/Variable/RuntimeDxe/Variable.c; OVMF 2022.11 as Debian ships it):

* EFI_FIRMWARE_VOLUME_HEADER at 0: ``_FVH`` at 40, FvLength u64 at 32, HeaderLength u16 at 48;
* VARIABLE_STORE_HEADER at HeaderLength (28 bytes): signature GUID (gEfiAuthenticatedVariableGuid
  for OVMF; gEfiVariableGuid = 32-byte headers), Size u32 (incl. this header), Format 0x5A,
  State 0xFE (healthy);
* variables from HEADER_ALIGN(store + 28): AUTHENTICATED_VARIABLE_HEADER, 60 bytes:
  StartId u16 0x55AA, State u8, Reserved u8, Attributes u32, MonotonicCount u64, TimeStamp
  EFI_TIME (16), PubKeyIndex u32, NameSize u32, DataSize u32, VendorGuid (16); then the UCS-2
  name (NameSize bytes incl. its NUL) and the data, packed (GET_PAD_SIZE is 0 on x86: ALIGNMENT
  1); the next header at HEADER_ALIGN (4) of the data's end.  The scan ends at the first
  header without StartId 0x55AA (IsValidVariableHeader), i.e. at the free 0xFF space.
* State bits are cleared one by one on flash: VAR_ADDED 0x3F, VAR_IN_DELETED_TRANSITION 0xFE,
  VAR_DELETED 0xFD, VAR_HEADER_VALID_ONLY 0x7F.  Live = ``0x3F`` or ``0x3F & 0xFE``; deleted
  bytes stay until the firmware reclaims the store.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from enum import Enum

from .model import Finding, Severity
from .source import ByteSource

FV_SIGNATURE = b"_FVH"
FV_SIGNATURE_AT = 40
AUTH_VARIABLE_GUID = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
VARIABLE_GUID = uuid.UUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")
STORE_HEADER = struct.Struct("<16sIBBHI")          # VARIABLE_STORE_HEADER, 28 bytes
AUTH_HEADER = struct.Struct("<HBBIQ16sIII16s")      # AUTHENTICATED_VARIABLE_HEADER, 60 bytes
PLAIN_HEADER = struct.Struct("<HBBIII16s")          # VARIABLE_HEADER, 32 bytes
START_ID = 0x55AA
VAR_ADDED = 0x3F
VAR_IN_DELETED_TRANSITION = 0xFE
VAR_DELETED = 0xFD
VAR_HEADER_VALID_ONLY = 0x7F
FORMATTED = 0x5A
HEALTHY = 0xFE
# A vars file is 128 KiB (2M build) or 528 KiB (4M build); efidisk0 volumes round up to a few
# MiB (LVM/RBD extents).  Anything claiming more is not an OVMF store, and would only cost memory.
MAX_STORE_BYTES = 16 << 20


class VarState(str, Enum):
    ADDED = "added"
    IN_DELETED_TRANSITION = "in_deleted_transition"
    DELETED = "deleted"
    HEADER_VALID_ONLY = "header_valid_only"


def var_state(state: int) -> VarState:
    """The edk2 reading of the State byte (Variable.c compares exactly these two live values)."""
    if state == VAR_ADDED:
        return VarState.ADDED
    if state == VAR_ADDED & VAR_IN_DELETED_TRANSITION:
        return VarState.IN_DELETED_TRANSITION
    if state == VAR_HEADER_VALID_ONLY:
        return VarState.HEADER_VALID_ONLY
    return VarState.DELETED


def _align4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True)
class EfiVariable:
    name: str                 # up to the first UCS-2 NUL
    guid: str                 # lowercase 8-4-4-4-12
    attributes: int
    state: int
    live: bool                # State is VAR_ADDED or IN_DELETED_TRANSITION (firmware view below)
    offset: int               # of the header in the file
    data_offset: int
    data: bytes
    name_bytes: bytes         # NameSize raw bytes (what GetNextVariableName compares)
    terminated: bool          # the name has its UCS-2 NUL within NameSize
    timestamp: tuple | None = None   # EFI_TIME (year, month, day, hour, minute, second, nanosecond)
    monotonic_count: int = 0

    @property
    def status(self) -> VarState:
        return var_state(self.state)

    @property
    def total_size(self) -> int:
        return self.data_offset + len(self.data) - self.offset


@dataclass
class VarStore:
    variables: list[EfiVariable] = field(default_factory=list)
    store_size: int = 0       # bytes of the variable area (VARIABLE_STORE_HEADER.Size - 28)
    used_bytes: int = 0       # from the area's start to the end of the last header (deleted incl.)
    live_bytes: int = 0       # headers + names + data of the live variables, 4-aligned
    deleted_bytes: int = 0
    authenticated: bool = True
    fv_length: int = 0
    area_offset: int = 0      # file offset of the first variable header
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": "efi", "store_size": self.store_size, "used_bytes": self.used_bytes,
                "live_bytes": self.live_bytes, "deleted_bytes": self.deleted_bytes,
                "variables": len(self.variables), "authenticated": self.authenticated,
                "fv_length": self.fv_length, "area_offset": self.area_offset}


def looks_like_varstore(src: ByteSource) -> bool:
    """The firmware volume signature where EFI_FIRMWARE_VOLUME_HEADER has it."""
    return src.read_at(FV_SIGNATURE_AT, 4) == FV_SIGNATURE


def _decode_name(raw: bytes) -> tuple[str, bool]:
    end = -1
    for i in range(0, len(raw) - 1, 2):
        if raw[i] == 0 and raw[i + 1] == 0:
            end = i
            break
    body = raw[:end] if end >= 0 else raw[:len(raw) & ~1]
    return body.decode("utf-16-le", errors="replace"), end >= 0


def _efi_time(raw: bytes) -> tuple | None:
    year, month, day, hour, minute, second, _, nsec = struct.unpack_from("<HBBBBBBI", raw)
    return None if not any(raw) else (year, month, day, hour, minute, second, nsec)


def parse_varstore(src: ByteSource, *, include_deleted: bool = False,
                   max_store_bytes: int = MAX_STORE_BYTES) -> VarStore:
    """Every variable of the store in flash order (``include_deleted``: the dead ones too).

    One read of the variable area, one linear pass; a malformed store stops the scan where the
    firmware's own scan would stop, with a finding.
    """
    vs = VarStore()

    def note(sev: Severity, msg: str, off: int | None = None) -> None:
        vs.findings.append(Finding(sev, msg, kind="efi", offset=off))

    head = src.read_at(0, 56)
    if len(head) < 56 or head[FV_SIGNATURE_AT:FV_SIGNATURE_AT + 4] != FV_SIGNATURE:
        note(Severity.ERROR, "no firmware volume signature _FVH at offset 40: not an OVMF variable store", 40)
        return vs
    vs.fv_length = struct.unpack_from("<Q", head, 32)[0]
    hdr_len = struct.unpack_from("<H", head, 48)[0]
    if hdr_len < 56 or hdr_len + STORE_HEADER.size > src.size:
        note(Severity.ERROR, f"firmware volume HeaderLength {hdr_len} does not fit the "
                             f"{src.size}-byte file", 48)
        return vs
    sh = src.read_at(hdr_len, STORE_HEADER.size)
    if len(sh) < STORE_HEADER.size:
        note(Severity.ERROR, "the variable store header is cut off", hdr_len)
        return vs
    sig, size, fmt, state, _, _ = STORE_HEADER.unpack(sh)
    sig_guid = uuid.UUID(bytes_le=sig)
    if sig_guid == AUTH_VARIABLE_GUID:
        header = AUTH_HEADER
    elif sig_guid == VARIABLE_GUID:
        header, vs.authenticated = PLAIN_HEADER, False
    else:
        note(Severity.ERROR, f"variable store signature {sig_guid} is neither the authenticated "
                             "nor the plain variable GUID", hdr_len)
        return vs
    if fmt != FORMATTED or state != HEALTHY:
        note(Severity.WARNING, f"variable store Format 0x{fmt:02x} / State 0x{state:02x} "
                               "(expected 0x5a / 0xfe: formatted, healthy)", hdr_len)
    start = _align4(hdr_len + STORE_HEADER.size)
    end = hdr_len + size
    if size < STORE_HEADER.size or end > src.size:
        note(Severity.WARNING, f"variable store Size {size} runs past the {src.size}-byte file: "
                               "read up to the end of the file", hdr_len + 16)
        end = src.size
    if end - start > max_store_bytes:
        note(Severity.WARNING, f"variable store of {end - start} bytes: only the first "
                               f"{max_store_bytes} bytes read", hdr_len + 16)
        end = start + max_store_bytes
    vs.area_offset = start
    vs.store_size = max(0, end - start)
    area = src.read_at(start, vs.store_size)
    pos = 0
    hsize = header.size
    while pos + hsize <= len(area):
        fields = header.unpack_from(area, pos)
        if fields[0] != START_ID:
            break
        if header is AUTH_HEADER:
            _, st, _, attrs, mono, ts, _, name_size, data_size, guid = fields
        else:
            _, st, _, attrs, name_size, data_size, guid = fields
            mono, ts = 0, bytes(16)
        name_at = pos + hsize
        data_at = name_at + name_size
        next_at = _align4(data_at + data_size)
        if data_at + data_size > len(area):
            note(Severity.ERROR, f"variable header claims NameSize {name_size} + DataSize "
                                 f"{data_size} past the end of the store: scan stopped", start + pos)
            vs.used_bytes = len(area)
            break
        status = var_state(st)
        live = status in (VarState.ADDED, VarState.IN_DELETED_TRANSITION)
        if live:
            vs.live_bytes += next_at - pos
        else:
            vs.deleted_bytes += next_at - pos
        if live or include_deleted:
            name_raw = bytes(area[name_at:data_at])
            name, terminated = _decode_name(name_raw)
            if not terminated and live:
                note(Severity.WARNING, f"variable name without its UCS-2 NUL ({name_size} bytes)",
                     start + pos)
            vs.variables.append(EfiVariable(
                name=name, guid=str(uuid.UUID(bytes_le=guid)), attributes=attrs, state=st,
                live=live, offset=start + pos, data_offset=start + data_at,
                data=bytes(area[data_at:data_at + data_size]), name_bytes=name_raw,
                terminated=terminated, timestamp=_efi_time(ts), monotonic_count=mono))
        vs.used_bytes = min(next_at, len(area))
        pos = next_at
    return vs
