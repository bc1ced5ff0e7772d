"""Rate-limited logging for messages that bad input can repeat without end.

A client that sends garbage, or a kernel that refuses every poll, must not
flood the daemon's log: a few messages per interval get through, the rest
are counted and summed up in one line when the next interval begins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

INTERVAL = 60.0
BURST = 5


class LogLimiter:
    """At most ``burst`` messages per ``interval`` seconds to ``log``.

    Parameters:
        what: names the source in the suppression summary (``UNIXSOCK u1``).
        clock: monotonic seconds (replaceable in tests).
    """

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        interval: float = INTERVAL,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.what = what
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self._window = float("-inf")
        self._sent = 0
        self._suppressed = 0
        self._level = logging.WARNING

    def __call__(self, level: int, message: str, *args: object) -> None:
        now = self.clock()
        if now - self._window >= self.interval:
            self.flush()
            self._window, self._sent = now, 0
        self._level = level
        if self._sent < self.burst:
            self._sent += 1
            self.log.log(level, message, *args, stacklevel=2)
        else:
            self._suppressed += 1

    def flush(self) -> None:
        """Log how many messages were held back since the last summary."""
        if self._suppressed:
            self.log.log(
                self._level, "%s: %d similar messages suppressed", self.what, self._suppressed
            )
            self._suppressed = 0
