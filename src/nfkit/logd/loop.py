"""The daemon's event loop: file descriptors, timers and signals in one thread.

Signals are turned into bytes on a socketpair (``signal.set_wakeup_fd``) and
handled synchronously by the loop, so handlers never run in the middle of a
plugin's work.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType


class Timer:
    __slots__ = ("callback", "cancelled", "interval", "when")

    def __init__(self, when: float, callback: Callable[[], None], interval: float | None) -> None:
        self.when = when
        self.callback = callback
        self.interval = interval
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._running = False
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._wakeup_r: socket.socket | None = None
        self._wakeup_w: socket.socket | None = None

    # -- file descriptors ------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    # -- timers ----------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self._schedule(Timer(time.monotonic() + delay, callback, None))

    def call_every(self, interval: float, callback: Callable[[], None]) -> Timer:
        return self._schedule(Timer(time.monotonic() + interval, callback, interval))

    def _schedule(self, timer: Timer) -> Timer:
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def _run_timers(self) -> float | None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            if timer.interval is not None:
                timer.when = now + timer.interval
                self._schedule(timer)
            timer.callback()
        if not self._timers:
            return None
        # From the time after the callbacks: they may have run for a while.
        return max(0.0, self._timers[0][0] - time.monotonic())

    # -- signals ---------------------------------------------------------------

    def add_signal_handler(self, signo: int, handler: Callable[[int], None]) -> None:
        if self._wakeup_r is None:
            self._wakeup_r, self._wakeup_w = socket.socketpair()
            self._wakeup_r.setblocking(False)
            self._wakeup_w.setblocking(False)
            signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
            self.add_reader(self._wakeup_r.fileno(), self._read_signals)
        self._signal_handlers[signo] = handler
        signal.signal(signo, _note_signal)

    def _read_signals(self) -> None:
        assert self._wakeup_r is not None
        try:
            data = self._wakeup_r.recv(256)
        except BlockingIOError:
            return
        for signo in data:
            handler = self._signal_handlers.get(signo)
            if handler is not None:
                handler(signo)

    # -- running ---------------------------------------------------------------

    def run(self) -> None:
        """Run until stop() is called."""
        self._running = True
        select = self._selector.select
        while self._running:
            timeout = self._run_timers()
            if not self._running:  # a timer stopped the loop: do not wait for the next one
                break
            for key, _ in select(timeout):
                key.data()
                if not self._running:
                    break

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        if self._wakeup_r is not None:
            signal.set_wakeup_fd(-1)
            for signo in self._signal_handlers:
                signal.signal(signo, signal.SIG_DFL)
            self._wakeup_r.close()
            if self._wakeup_w is not None:
                self._wakeup_w.close()
            self._wakeup_r = self._wakeup_w = None
        self._selector.close()


def _note_signal(signo: int, frame: FrameType | None) -> None:
    """Python-level no-op: the wakeup fd already carries the signal number."""
