"""Pure readers of pstore on-disk formats (no network, no subprocess).

``read_image()`` is the entry point: give it a path (or a ByteSource) and get a
:class:`ParseResult` with the records exactly as the guest kernel lists them in
/sys/fs/pstore, plus findings about anything malformed.
"""

from __future__ import annotations

import os

from .blk import ReadOptions, read_blk
from .layout import BlkLayout, BlkParams, compute_layout, kib_param_to_bytes
from .model import Finding, Kind, ParseResult, Record, Severity
from .ramoops import RamoopsParams, looks_like_ramoops, read_ramoops
from .source import ByteSource, BytesSource, FileSource

FORMATS = ("auto", "pstore_blk", "ramoops")

__all__ = [
    "BlkLayout", "BlkParams", "ByteSource", "BytesSource", "FileSource", "Finding", "Kind",
    "ParseResult", "RamoopsParams", "ReadOptions", "Record", "Severity", "compute_layout",
    "kib_param_to_bytes", "read_blk", "read_image", "read_ramoops", "read_source",
]


def read_source(src: ByteSource, params: BlkParams | RamoopsParams | None = None, *,
                fmt: str = "auto", offset: int = 0,
                options: ReadOptions = ReadOptions()) -> ParseResult:
    """Parse a source as pstore_blk or ramoops (``auto``: from the parameters or the first zone)."""
    if fmt == "auto":
        if isinstance(params, RamoopsParams):
            fmt = "ramoops"
        elif isinstance(params, BlkParams):
            fmt = "pstore_blk"
        else:
            fmt = "ramoops" if looks_like_ramoops(src) else "pstore_blk"
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
