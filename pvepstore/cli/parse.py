"""``pvepstore parse``: read a pstore image (file, block device or .xz) like the guest kernel would."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional

import typer

from ..errors import InputError, UsageError
from ..pstore import (FORMATS, BlkParams, FileSource, Finding, ParseResult, RamoopsParams, ReadOptions,
                      Severity, read_source)
from ..pstore.layout import NR_CPUS_MAX, SZ_128M
from ..pstore.model import select_for_analysis
from ..pstore.source import unpack_xz_sparse
from .environment import env_of
from .render import render_summary, write_json

SAMPLE = "sample-oops.img.xz"


# What an .xz image is unpacked to at most (after --offset): the kernel never uses
# more than the 128 MiB cap of pstore/zone (6.1+) or of any ramoops memory pvepstore
# provisions; with --no-cap (a 5.10 kernel) up to MAX_XZ_UNCAPPED.  Beyond it an .xz
# is an xz bomb or a whole disk, and parsing what lies past the limit cannot change
# what the kernel shows.
MAX_XZ_CAPPED = SZ_128M
ANALYSIS_BYTES = 8 << 20  # record text analysed for --report, per image
MAX_XZ_UNCAPPED = 1 << 30


@contextmanager
def _opened(image: Optional[Path], sample: bool, offset: int,
            no_cap: bool = False) -> Iterator[tuple[FileSource, str, list[Finding]]]:
    """Yield a byte source for the image; .xz images are unpacked to a sparse temp file."""
    if sample:
        packed = resources.files("pvepstore.data").joinpath(SAMPLE)
        label = f"<bundled sample: {SAMPLE}>"
    elif image is None:
        raise UsageError("no IMAGE given", hint="pass a pstore disk image, or --sample for the bundled one")
    else:
        packed, label = image, str(image)
    if sample or str(image).endswith(".xz"):
        limit = offset + (MAX_XZ_UNCAPPED if no_cap else MAX_XZ_CAPPED)
        with tempfile.TemporaryDirectory(prefix="pvepstore-") as tmp:
            raw = os.path.join(tmp, "image.raw")
            with resources.as_file(packed) as packed_path:
                unpacked = unpack_xz_sparse(packed_path, raw, limit=limit)
            notes = []
            if unpacked.truncated:
                notes.append(Finding(Severity.WARNING, (
                    f"the .xz image is larger than {limit} bytes: only the first {limit} were "
                    "unpacked and parsed") + (
                    "" if no_cap else " (the kernel uses no more than 128 MiB; --no-cap reads "
                    f"up to {MAX_XZ_UNCAPPED >> 20} MiB)")))
            with FileSource(raw, offset) as src:
                src.name = label
                yield src, label, notes
    else:
        with FileSource(image, offset) as src:
            yield src, label, []


def _params(fmt: str, kmsg: Optional[int], pmsg: Optional[int], console: Optional[int],
            ftrace: Optional[int], nr_cpus: Optional[int], no_cap: bool,
            record: Optional[int], mem: Optional[int]) -> BlkParams | RamoopsParams | None:
    given = (kmsg, pmsg, console, ftrace, nr_cpus)
    if fmt == "efi":
        if any(v is not None for v in given + (record, mem)) or no_cap:
            raise UsageError("size options are pstore_blk/ramoops options",
                             hint="an OVMF vars file (efidisk0) needs none: its variable headers say it all")
        return None
    if nr_cpus is not None and nr_cpus > NR_CPUS_MAX:
        # a bound, not pedantry: the ftrace zones are per CPU, and so is the memory for them
        raise UsageError(f"--nr-cpus {nr_cpus} is more than any kernel supports ({NR_CPUS_MAX})",
                         hint="give the guest's possible CPUs (/sys/devices/system/cpu/possible)")
    if fmt == "ramoops" or record is not None or mem is not None:
        if kmsg is not None or no_cap:
            raise UsageError("--kmsg-size/--no-cap are pstore_blk options",
                             hint="ramoops takes --record-size and byte sizes")
        if record is None and all(v is None for v in given) and mem is None:
            return None  # discover the ramoops zone sizes
        kib = 1024  # the shared size options are KiB for both formats, ramoops wants bytes
        return RamoopsParams(mem_size=mem, record_size=(record if record is not None else 4) * kib,
                             console_size=(console if console is not None else 4) * kib,
                             ftrace_size=(ftrace if ftrace is not None else 4) * kib,
                             pmsg_size=(pmsg if pmsg is not None else 4) * kib,
                             nr_cpus=nr_cpus or 1, ftrace_per_cpu=bool(nr_cpus and nr_cpus > 1))
    if record is not None:
        raise UsageError("--record-size is a ramoops option", hint="add --format ramoops")
    if all(v is None for v in given) and not no_cap:
        return None  # discover the layout
    return BlkParams(kmsg_size=64 if kmsg is None else kmsg, pmsg_size=pmsg or 0,
                     console_size=console or 0, ftrace_size=ftrace or 0,
                     nr_cpus=nr_cpus or 1, cap_128m=not no_cap)


def extract(result: ParseResult, directory: Path) -> list[Path]:
    """Write each record under its kernel file name with the kernel's exact bytes.

    Erased (forensic) records go to ``erased/`` so they can never be mistaken
    for what the kernel shows.  Names are generated by the reader from zone
    indexes, never taken from the image.  No link is followed (safefs): a
    symlinked DIR or ``erased/`` is refused; each file is written to a fresh
    ``O_EXCL`` temporary name and renamed over the record's name, so an entry
    already there (a file from an earlier run, a planted symlink, hard link or
    FIFO) is replaced as a name and never opened; a directory there is refused.
    """
    from ..safefs import Dir

    written = []
    with Dir.open(directory, create=True, mode=0o755) as top:
        erased = None
        try:
            for rec in result.records:
                if rec.erased and erased is None:
                    erased = top.sub("erased", mode=0o755)
                (erased if rec.erased else top).replace_file(rec.name, rec.data, 0o640, durable=False)
                written.append(directory / "erased" / rec.name if rec.erased else directory / rec.name)
        finally:
            if erased is not None:
                erased.close()
    return written


def parse_command(
    ctx: typer.Context,
    # readable=False: pvepstore opens the image itself (exit 3 with a hint, not click's exit 2)
    image: Optional[Path] = typer.Argument(None, help="Raw pstore disk image, block device, or .xz image "
                                           "(unpacked up to 128 MiB past --offset; 1 GiB with --no-cap).",
                                           show_default=False, readable=False),
    offset: int = typer.Option(0, "--offset", min=0, help="Byte offset of the pstore partition in the image."),
    kmsg_size: Optional[int] = typer.Option(None, "--kmsg-size", min=0, help="pstore_blk kmsg_size (KiB)."),
    pmsg_size: Optional[int] = typer.Option(None, "--pmsg-size", min=0, help="pstore_blk pmsg_size (KiB)."),
    console_size: Optional[int] = typer.Option(None, "--console-size", min=0,
                                               help="pstore_blk console_size (KiB)."),
    ftrace_size: Optional[int] = typer.Option(None, "--ftrace-size", min=0, help="pstore_blk ftrace_size (KiB)."),
    nr_cpus: Optional[int] = typer.Option(None, "--nr-cpus", min=1, help="Guest's possible CPUs (ftrace layout)."),
    no_cap: bool = typer.Option(False, "--no-cap", help="Kernel without the 128 MiB cap (5.10)."),
    fmt: str = typer.Option("auto", "--format", help="pstore_blk, ramoops, efi (OVMF vars file / efidisk0), or auto (from the first zone or the _FVH signature)."),
    record_size: Optional[int] = typer.Option(None, "--record-size", min=1,
                                              help="ramoops record_size (KiB)."),
    mem_size: Optional[int] = typer.Option(None, "--mem-size", min=1,
                                           help="ramoops mem_size in bytes [default: the whole image]."),
    report: bool = typer.Option(False, "--report", help="Print the incident report (CloudEvent JSON)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    extract_dir: Optional[Path] = typer.Option(None, "--extract", help="Write each record to DIR/<kernel name>."),
    include_erased: bool = typer.Option(False, "--include-erased",
                                        help="Also recover erased records (forensic, flagged)."),
    sample: bool = typer.Option(False, "--sample", help="Parse the real pstore image bundled with pvepstore."),
    kernel: Optional[str] = typer.Option(None, "--kernel", help="The writing guest kernel's release (uname -r): "
                                         "efi_pstore names its files dmesg-efi-* up to 6.1, dmesg-efi_pstore-* "
                                         "from 6.2, and a store of Shutdown dumps does not say which."),
) -> None:
    """Read a pstore disk image (pstore_blk), ramoops memory or an OVMF vars file (efi_pstore) the way
    the guest kernel reads it.

    Without size options the layout is discovered from the zone signatures.
    Sizes are KiB for both formats (ramoops module parameters are bytes).
    """
    env = env_of(ctx)
    if sample and image is not None:
        raise UsageError("give either IMAGE or --sample, not both")
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    params = _params(fmt, kmsg_size, pmsg_size, console_size, ftrace_size, nr_cpus, no_cap,
                     record_size, mem_size)
    options = ReadOptions(include_erased=include_erased, kernel_release=kernel)
    with _opened(image, sample, offset, no_cap) as (src, _label, notes):
        result = read_source(src, params, fmt=fmt, offset=offset, options=options)
    result.findings[:0] = notes
    if extract_dir is not None:
        try:
            extract(result, extract_dir)
        except OSError as exc:
            raise InputError(f"cannot write to {extract_dir}: {exc.strerror}",
                             hint="choose a writable directory") from None
    if report:
        from ..analysis.report import build_event

        # Crash analysis reads a bounded amount of text per image (a guest that fills
        # every zone must not stall a sweep); the records left out are counted.
        analysed, left_out = select_for_analysis(result.records, ANALYSIS_BYTES)
        image = {"path": result.source, "offset": result.offset}
        if left_out:
            image["records_not_analysed"] = left_out
        env.out(json.dumps(build_event(analysed, image=image), indent=2, ensure_ascii=True))
        return
    if as_json:
        # ensure_ascii: guest bytes reach the terminal only as \\u escapes; streamed record
        # by record, so the output never exists twice in memory
        write_json(result.to_json(lazy=True), env.stdout.write)
        return
    for line in render_summary(result):
        env.out(line)
