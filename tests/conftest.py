"""Shared test helpers: the real-kernel fixtures and an in-process CLI runner."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvepstore.cli import Environment, ExitStatus, main
from pvepstore.pstore import BlkParams, RamoopsParams
from pvepstore.pstore.source import unpack_xz_sparse
from tests.fakepve.plugin import fakepve  # noqa: E402,F401  (fake Proxmox API fixture)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED = Path(os.environ.get("PVEPSTORE_SHARED", REPO.parent / "shared"))


@dataclass
class Fixture:
    """An image written by a real kernel (a pstore_blk disk or ramoops ivshmem memory)
    and the kernel's own /sys/fs/pstore view of it."""

    name: str
    path: Path
    meta: dict

    @property
    def kernel_view(self) -> dict[str, bytes]:
        kdir = self.path / "kernel"
        if not kdir.is_dir():
            return {}
        return {p.name: p.read_bytes() for p in sorted(kdir.iterdir()) if p.is_file()}

    @property
    def format(self) -> str:
        return self.meta.get("format", "pstore_blk")

    @property
    def params(self) -> BlkParams | RamoopsParams:
        if self.format == "ramoops":
            rp = self.meta["ramoops_params"]  # bytes, as the kernel used them
            return RamoopsParams(mem_size=int(rp["mem_size"]), record_size=int(rp["record_size"]),
                                 console_size=int(rp["console_size"]),
                                 ftrace_size=int(rp["ftrace_size"]), pmsg_size=int(rp["pmsg_size"]),
                                 nr_cpus=int(self.meta.get("nr_cpus") or 1))
        eff = self.meta["effective_params"]
        return BlkParams(kmsg_size=int(eff.get("kmsg_size") or 0),
                         pmsg_size=int(eff.get("pmsg_size") or 0),
                         console_size=int(eff.get("console_size") or 0),
                         ftrace_size=int(eff.get("ftrace_size") or 0),
                         nr_cpus=int(self.meta.get("nr_cpus") or 1),
                         cap_128m=bool(self.meta.get("cap_128m", True)))

    def unpack(self, dest_dir: Path) -> Path:
        raw = dest_dir / f"{self.name}.img"
        if not raw.exists():
            unpack_xz_sparse(self.path / "image.xz", raw)
        return raw


def load_fixtures() -> list[Fixture]:
    out = []
    for meta_path in sorted(FIXTURES.glob("*/meta.json")):
        if (meta_path.parent / "image.xz").exists():
            out.append(Fixture(meta_path.parent.name, meta_path.parent, json.loads(meta_path.read_text())))
    return out


@pytest.fixture(scope="session")
def unpack_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("images")


@dataclass
class CliResult:
    status: ExitStatus
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout)


def run_cli(*args: str) -> CliResult:
    """Run pvepstore in-process with captured output (httpie's ``http()`` helper)."""
    env = Environment(stdout=io.StringIO(), stderr=io.StringIO(), environ={})
    status = main(list(args), env)
    return CliResult(status, env.stdout.getvalue(), env.stderr.getvalue())
