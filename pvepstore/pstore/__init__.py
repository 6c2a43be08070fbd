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
from .source import ByteSource, BytesSource, FileSource

__all__ = [
    "BlkLayout", "BlkParams", "ByteSource", "BytesSource", "FileSource", "Finding", "Kind",
    "ParseResult", "ReadOptions", "Record", "Severity", "compute_layout", "kib_param_to_bytes",
    "read_blk", "read_image",
]


def read_image(path: str | os.PathLike[str], params: BlkParams | None = None, *,
               offset: int = 0, options: ReadOptions = ReadOptions()) -> ParseResult:
    """Read a pstore_blk image file or block device (``offset``: partition start)."""
    with FileSource(path, offset) as src:
        return read_blk(src, params, options=options, image_offset=offset)
