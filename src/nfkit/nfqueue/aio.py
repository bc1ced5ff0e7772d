"""Queues in an asyncio event loop.

::

    async with AsyncQueue(Queue(0)) as queue:
        async for packet in queue:
            packet.decide(ACCEPT)

or let :func:`serve` call a handler, which may be a coroutine function (the
packet waits while it awaits, up to the queue's deadline)::

    async def handler(packet):
        user = await directory.lookup(packet.headers.ip.src)
        return Verdict.accept(mark=user.mark) if user else DROP

    await serve([Queue(0)], handler)

Create and use the queues in the event loop's thread; other threads may
still ``decide`` packets.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Sequence

from nfkit.nfqueue.packet import QueuedPacket
from nfkit.nfqueue.queue import Queue
from nfkit.nfqueue.serve import Handler, Server


class AsyncQueue:
    """Reads a :class:`Queue` when the event loop sees its socket readable.

    Verdicts given in the loop's thread are sent once the current callbacks
    are done (one ``send`` for all of them).
    """

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._flush_scheduled = False
        self._buffer: list[QueuedPacket] = []
        queue.on_pending = self._schedule_flush
        for fd in (queue.fileno(), queue.wake_fileno()):
            self._loop.add_reader(fd, self._ready.set)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self.queue.closed:
            self.queue.flush()

    async def receive(self) -> list[QueuedPacket]:
        """The next packets (an empty list once the queue is closed)."""
        queue = self.queue
        while not queue.closed:
            self._ready.clear()
            packets = queue.receive(0)
            if packets:
                return packets
            due = queue.next_due
            try:
                async with asyncio.timeout(None if due is None else due - time.monotonic()):
                    await self._ready.wait()
            except TimeoutError:
                pass  # a deadline: the next receive gives the default verdicts
        return []

    def __aiter__(self) -> AsyncQueue:
        return self

    async def __anext__(self) -> QueuedPacket:
        if not self._buffer:
            self._buffer = await self.receive()
            if not self._buffer:
                raise StopAsyncIteration
            self._buffer.reverse()
        return self._buffer.pop()

    def close(self) -> None:
        """Stop watching the socket and close the queue (answering what waits)."""
        if not self.queue.closed:
            for fd in (self.queue.fileno(), self.queue.wake_fileno()):
                self._loop.remove_reader(fd)
            self.queue.on_pending = None
            self.queue.close()

    async def __aenter__(self) -> AsyncQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def serve(queues: Queue | Sequence[Queue], handler: Handler, *, close: bool = True) -> None:
    """Run ``handler`` (a function or coroutine function) on every packet until cancelled.

    Results and failures are handled as by :class:`~nfkit.nfqueue.serve.Server`.
    With ``close`` the queues are closed at the end, answering every packet
    that still waits (those whose handler was cancelled too).
    """
    server = Server(queues, handler)
    readers = [AsyncQueue(queue) for queue in server.queues]
    running: set[asyncio.Future[object]] = set()

    def finished(packet: QueuedPacket, task: asyncio.Future[object]) -> None:
        running.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            server.failed(packet, error)
        else:
            server.resolve(packet, task.result())

    async def pump(reader: AsyncQueue) -> None:
        async for packet in reader:
            try:
                result = handler(packet)
            except Exception:
                server.failed(packet)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                running.add(task)
                task.add_done_callback(functools.partial(finished, packet))
            else:
                server.resolve(packet, result)

    try:
        await asyncio.gather(*(pump(reader) for reader in readers))
    finally:
        for task in list(running):
            task.cancel()
        if close:
            for reader in readers:
                reader.close()
