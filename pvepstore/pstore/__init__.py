"""Pure readers of pstore on-disk formats (no network, no subprocess).

``read_image()`` is the entry point: give it a path (or a ByteSource) and get a
:class:`ParseResult` with the records exactly as the guest kernel lists them in
/sys/fs/pstore, plus findings about anything malformed.
"""

from __future__ import annotations

import os

from .blk import ReadOptions, read_blk
from .efi import EFI_PSTORE_GUID, EfiStore, looks_like_efi, read_efi
from .layout import BlkLayout, BlkParams, compute_layout, kib_param_to_bytes
from .model import Finding, Kind, ParseResult, Record, Severity
from .ramoops import RamoopsParams, looks_like_ramoops, read_ramoops
from .source import ByteSource, BytesSource, FileSource

FORMATS = ("auto", "pstore_blk", "ramoops", "efi")

__all__ = [
    "BlkLayout", "BlkParams", "ByteSource", "BytesSource", "EFI_PSTORE_GUID", "EfiStore", "FileSource",
    "Finding", "Kind", "looks_like_efi", "read_efi",
    "ParseResult", "RamoopsParams", "ReadOptions", "Record", "Severity", "compute_layout",
    "kib_param_to_bytes", "read_blk", "read_image", "read_ramoops", "read_source",
]


def read_source(src: ByteSource, params: BlkParams | RamoopsParams | None = None, *,
                fmt: str = "auto", offset: int = 0,
                options: ReadOptions = ReadOptions()) -> ParseResult:
    """Parse a source as pstore_blk, ramoops or an OVMF vars file with efi_pstore records
    (``auto``: from the parameters, the firmware volume signature or the first zone)."""
    if fmt == "auto":
        if isinstance(params, RamoopsParams):
            fmt = "ramoops"
        elif isinstance(params, BlkParams):
            fmt = "pstore_blk"
        elif looks_like_efi(src):
            fmt = "efi"
        else:
            fmt = "ramoops" if looks_like_ramoops(src) else "pstore_blk"
    if fmt == "efi":
        result = read_efi(src, forensic=options.include_erased, options=options)
        result.offset = offset
        return result
    if fmt == "ramoops":
        return read_ramoops(src, params if isinstance(params, RamoopsParams) else None,
                            max_record_bytes=options.max_record_bytes, image_offset=offset,
                            max_image_bytes=options.max_image_bytes)
    return read_blk(src, params if isinstance(params, BlkParams) else None, options=options,
                    image_offset=offset)


def read_image(path: str | os.PathLike[str], params: BlkParams | RamoopsParams | None = None, *,
               offset: int = 0, fmt: str = "auto", options: ReadOptions = ReadOptions()) -> ParseResult:
    """Read a pstore image file or block device (``offset``: partition start)."""
    with FileSource(path, offset) as src:
        return read_source(src, params, fmt=fmt, offset=offset, options=options)
