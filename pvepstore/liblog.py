"""Keep the libraries' own logging off the user's terminal.

paramiko's transport thread logs every failed handshake at ERROR, one record per
traceback line ("Exception (client): Error reading SSH protocol banner", then the
frames); urllib3 logs retries and proxmoxer its requests.  With no handler
configured, Python's last-resort handler prints WARNING and above to stderr -- a
traceback per connection attempt while provision waits for a rebooting guest.
pvepstore reports failures itself (one line, a hint, an exit code), so these
loggers do not propagate; what they say goes, one line per event and traceback
frames dropped, to the ``pvepstore.lib`` logger at DEBUG, for whoever enables it.
"""

from __future__ import annotations

import logging

LIBRARIES = ("paramiko", "proxmoxer", "urllib3", "requests")
MAX_LINE = 200
_TRACEBACK_PREFIXES = ("Traceback (most recent call last)", " ", "\t")


class _OneLine(logging.Handler):
    """Forwards a library record as one bounded line at DEBUG (traceback lines are dropped)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.target = logging.getLogger("pvepstore.lib")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a library's malformed format string must not break us
            return
        first = text.splitlines()[0] if text else ""
        if not first or first.startswith(_TRACEBACK_PREFIXES):
            return
        from .text import terminal_safe

        self.target.debug("%s: %s", record.name, terminal_safe(first[:MAX_LINE]))


_HANDLER = _OneLine()


def quiet_library_logs() -> None:
    """Idempotent; called where pvepstore first uses a library (SSH connect, API connect)."""
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        logger.propagate = False
        if _HANDLER not in logger.handlers:
            logger.addHandler(_HANDLER)
