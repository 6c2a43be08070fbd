"""Where the shared oops corpus lives: ../shared next to the repository, or $PVEPSTORE_SHARED."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("PVEPSTORE_SHARED") or Path(__file__).resolve().parents[2].parent / "shared")
CORPUS = SHARED / "oops-corpus"

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"oops corpus not found at {CORPUS}")


def read(relpath: str) -> str:
    return (CORPUS / relpath).read_text(encoding="utf-8", errors="replace")


def expected(corpus: str) -> dict:
    path = CORPUS / corpus / ("labels.json" if corpus == "syzkaller" else "expected.json")
    return json.loads(path.read_text()) if path.exists() else {}
