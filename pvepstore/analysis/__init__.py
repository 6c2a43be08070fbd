"""Pure analysis of kernel crash text: crash extraction, titles, signatures, verdicts, incident reports.

Nothing here does I/O; callers hand in text (or parsed pstore records) and get
data back.
"""

from .crash import Crash, extract_crashes
from .frame import Frame
from .report import build_report
from .trigger import CrashKind

__all__ = ["Crash", "CrashKind", "Frame", "build_report", "extract_crashes"]
