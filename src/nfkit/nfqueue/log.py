"""The queue's logger, throttled: a bad handler at 100k packets/s must not flood the log."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("nfkit.nfqueue")


class Throttle:
    """Logs at most ``burst`` lines of one kind per ``period`` seconds.

    The first line after a quiet spell says how many were left out.
    """

    def __init__(self, burst: int = 5, period: float = 10.0) -> None:
        self.burst = burst
        self.period = period
        self._windows: dict[str, list[float]] = {}  # kind -> [window start, lines, suppressed]

    def __call__(
        self, kind: str, level: int, message: str, *, exc_info: bool | BaseException = False
    ) -> None:
        now = time.monotonic()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= self.period:
            suppressed = int(window[2]) if window else 0
            if suppressed:
                message += f" ({suppressed} more like it in the last {self.period:g} s not logged)"
            window = self._windows[kind] = [now, 0, 0]
        if window[1] >= self.burst:
            window[2] += 1
            return
        window[1] += 1
        log.log(level, message, exc_info=exc_info)
