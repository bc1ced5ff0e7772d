"""The queue's logger, throttled: a bad handler at 100k packets/s must not flood the log."""

from __future__ import annotations

import logging
import traceback

from nfkit.ratelimit import LogLimiter

log = logging.getLogger("nfkit.nfqueue")


class Throttle:
    """A :class:`LogLimiter` (five lines a minute, then a count) per kind of message.

    Parameters:
        what: names the source in the summaries of suppressed lines.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._limiters: dict[str, LogLimiter] = {}

    def __call__(
        self, kind: str, level: int, message: str, *, error: BaseException | None = None
    ) -> None:
        limiter = self._limiters.get(kind)
        if limiter is None:
            limiter = self._limiters[kind] = LogLimiter(log, f"{self.what} ({kind})")
        if error is not None:
            message += "\n" + "".join(traceback.format_exception(error)).rstrip()
        limiter(level, "%s", message)
