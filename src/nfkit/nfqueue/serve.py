"""Handlers: a function per packet, called by a blocking loop or by worker threads.

A handler takes a :class:`QueuedPacket` and returns its verdict: a
:class:`Verdict`, ``True``/``False`` for ACCEPT/DROP, or
``packet.defer()`` to decide later with ``packet.decide()`` (from any
thread; the NuFW pattern). A handler that raises or returns anything else
gets the queue's default verdict for the packet and a log line naming it.
"""

from __future__ import annotations

import logging
import select
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from nfkit.nfqueue.log import Throttle
from nfkit.nfqueue.packet import Deferred, QueuedPacket
from nfkit.nfqueue.queue import TICK, Queue
from nfkit.nfqueue.verdict import ACCEPT, DROP, Verdict

Result = Verdict | bool | Deferred
Handler = Callable[[QueuedPacket], Result]


def handler_name(handler: Callable[..., object]) -> str:
    """``module:qualname`` of a handler, for log lines."""
    module = getattr(handler, "__module__", None) or "?"
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return f"{module}:{name}"


class Server:
    """Runs ``handler`` on every packet of ``queues`` until :meth:`stop`.

    Parameters:
        queues: one queue or several (served by one thread, one poll).
        handler: see the module docstring; the default accepts everything.
        workers: call the handler in this many threads (0: in the loop
            thread). For handlers that wait (on I/O, a user...); with the
            GIL they do not add CPU.
    """

    def __init__(
        self, queues: Queue | Sequence[Queue], handler: Handler | None = None, *, workers: int = 0
    ) -> None:
        self.queues = [queues] if isinstance(queues, Queue) else list(queues)
        if not self.queues:
            raise ValueError("a server needs at least one queue")
        self.handler: Handler = handler or _accept_all
        self.name = handler_name(self.handler)
        self.workers = workers
        self._stopping = threading.Event()
        self._throttle = Throttle(f"handler {self.name}")

    def handle(self, packet: QueuedPacket) -> None:
        """Run the handler on ``packet`` and give (or defer) its verdict."""
        try:
            result = self.handler(packet)
        except Exception:
            self.failed(packet)
        else:
            self.resolve(packet, result)

    def resolve(self, packet: QueuedPacket, result: object) -> None:
        """Give ``packet`` the verdict a handler returned for it."""
        queue = packet.queue
        if isinstance(result, Verdict):
            queue.decide(packet, result)
        elif result is True:
            queue.decide(packet, ACCEPT)
        elif result is False:
            queue.decide(packet, DROP)
        elif isinstance(result, Deferred):
            queue.defer(packet, result.timeout)
        else:
            queue.stats.invalid_results += 1
            self._throttle(
                "invalid",
                logging.ERROR,
                f"handler {self.name} returned {result!r} for packet {packet.id} of queue "
                f"{queue.number}, not a verdict (Verdict, True/False or packet.defer()); "
                f"gave it the default verdict ({queue.default})",
            )
            queue.decide(packet, queue.default)

    def failed(self, packet: QueuedPacket, error: BaseException | None = None) -> None:
        """The handler raised ``error`` (default: the one being handled): default verdict, log."""
        queue = packet.queue
        queue.stats.handler_errors += 1
        self._throttle(
            "raised",
            logging.ERROR,
            f"handler {self.name} raised on packet {packet.id} of queue {queue.number}; "
            f"gave it the default verdict ({queue.default})",
            error=error or sys.exc_info()[1],
        )
        queue.decide(packet, queue.default)

    def run(self) -> None:
        """Serve until :meth:`stop` (the queues stay open: close them to answer what waits).

        A server stopped before it runs (a signal came early) returns at once.
        """
        if self.workers:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="nfqueue") as pool:
                try:
                    self._loop(lambda packet: pool.submit(self.handle, packet))
                finally:
                    pool.shutdown(cancel_futures=True)
        elif len(self.queues) == 1:
            self._serve_alone(self.queues[0])
        else:
            self._loop(self.handle)

    def _loop(self, dispatch: Callable[[QueuedPacket], object]) -> None:
        stopping = self._stopping.is_set
        if len(self.queues) == 1:
            receive = self.queues[0].receive
            while not stopping():
                for packet in receive():
                    dispatch(packet)
            return
        poller = select.poll()
        for queue in self.queues:
            poller.register(queue.fileno(), select.POLLIN)
            poller.register(queue.wake_fileno(), select.POLLIN)
        while not stopping():
            for queue in self.queues:
                queue.flush()
            poller.poll(int(self._next_wait() * 1000) + 1)
            for queue in self.queues:
                for packet in queue.receive(0):
                    dispatch(packet)

    def _serve_alone(self, queue: Queue) -> None:
        """:meth:`handle` for one queue served in its loop thread (the hot path): the
        verdicts the handler returned for a burst are applied together."""
        stopping, receive, handler = self._stopping.is_set, queue.receive, self.handler
        while not stopping():
            packets = receive()
            if not packets:
                continue
            if handler is _accept_all:
                queue._apply_all(packets, [ACCEPT] * len(packets))
                continue
            results = self._results(packets)
            if set(map(type, results)) == {Verdict}:
                queue._apply_all(packets, results)  # type: ignore[arg-type]
                continue
            for packet, result in zip(packets, results, strict=True):
                if result is not _FAILED:
                    self.resolve(packet, result)

    def _results(self, packets: list[QueuedPacket]) -> list[object]:
        """The handler's result for each packet; :data:`_FAILED` where it raised (that
        packet got the default verdict)."""
        results: list[object] = []
        append, handler = results.append, self.handler
        for packet in packets:
            try:
                append(handler(packet))
            except Exception:
                self.failed(packet)
                append(_FAILED)
        return results

    def _next_wait(self) -> float:
        """Seconds until the earliest deadline of any queue (at most a tick)."""
        due = [queue.next_due for queue in self.queues if queue.next_due is not None]
        return max(0.0, min(TICK, min(due) - time.monotonic())) if due else TICK

    def stop(self) -> None:
        """Make :meth:`run` return soon (from any thread or a signal handler)."""
        self._stopping.set()
        for queue in self.queues:
            queue.wake()


#: A handler's result when it raised (it got the default verdict at once).
_FAILED = object()


def _accept_all(packet: QueuedPacket) -> Verdict:
    return ACCEPT
