"""How much guest text the analysis looks at: bounds that keep it linear and small.

A guest writes the records we analyse, so every bound here is about what a
real kernel can produce, with room to spare, and nothing more:

* :data:`MAX_LINE` -- each line is cut to 4 KiB before any pattern sees it.  A
  printk record holds at most ``PRINTK_MESSAGE_MAX`` (1024) bytes; syslog and
  console prefixes add a few dozen, and old kernels' ``Modules linked in:``
  lines (printed piecewise) reach ~2 KiB in the corpora.  The bound makes the
  cost of matching one line a constant, so analysis is linear in the number
  of lines even for a pattern that is not linear in a line's length.
* :data:`MAX_HEADER` -- a crash header (the line its title rules search) is cut
  to 1 KiB, one printk record.
* :data:`RECORD_TEXT_LIMIT` -- of one text (a record, or a file given to
  ``explain``) the last 4 MiB are analysed.  A dmesg dump is at most
  ``kmsg_size``/``record_size`` (pstore_blk's default 64 KiB; 4 MiB is beyond any
  configured one) and holds the *tail* of the kernel log, where the crash is.
* :data:`IMAGE_TEXT_LIMIT` -- of all records of one image, 8 MiB are analysed
  in total (:func:`image_budget`); records past the budget are analysed as
  empty.  A 128 MiB device full of valid 64 KiB dmesg zones (2048 records)
  therefore costs 8 MiB of analysis (a few seconds), not 128 MiB; a real guest leaves a few
  records per boot.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

MAX_LINE = 4096
MAX_HEADER = 1024
RECORD_TEXT_LIMIT = 4 << 20
IMAGE_TEXT_LIMIT = 8 << 20


class Budget:
    """Characters of text that may still be analysed in the current image."""

    def __init__(self, chars: int) -> None:
        self.left = chars

    def take(self, wanted: int) -> int:
        granted = max(0, min(wanted, self.left))
        self.left -= granted
        return granted


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("pvepstore_analysis_budget", default=None)


@contextlib.contextmanager
def image_budget(chars: int | None = None) -> Iterator[Budget]:
    """Within this block, all texts analysed together get at most ``chars`` characters
    (:data:`IMAGE_TEXT_LIMIT` by default)."""
    token = _BUDGET.set(Budget(IMAGE_TEXT_LIMIT if chars is None else chars))
    try:
        yield _BUDGET.get()
    finally:
        _BUDGET.reset(token)


def bounded(text: str, limit: int | None = None) -> tuple[str, int]:
    """The part of ``text`` to analyse, and how many lines were dropped before it.

    The tail is kept (the crash is at the end of a dump), cut at a line start so
    no line is analysed half; the line count keeps reported line numbers right.
    """
    budget = _BUDGET.get()
    keep = min(len(text), RECORD_TEXT_LIMIT if limit is None else limit)
    if budget is not None:
        keep = budget.take(keep)
    if keep >= len(text):
        return text, 0
    if keep <= 0:
        return "", text.count("\n")
    start = len(text) - keep
    if text[start - 1] != "\n":
        nl = text.find("\n", start)
        start = len(text) if nl < 0 else nl + 1
    return text[start:], text.count("\n", 0, start)
