"""The asyncio API: :class:`AsyncConntrack` and :class:`AsyncEventListener`.

Both run the code of the synchronous API; only the waiting differs. The
client executes the operations of :class:`~nfkit.conntrack.client.ClientCore`
(the generators :class:`~nfkit.conntrack.client.Conntrack` runs too), reading
its non-blocking sockets when ``loop.add_reader`` says they are readable: the
event loop's datagram endpoints cannot carry SOCK_RAW netlink sockets. The
listener wraps an :class:`~nfkit.conntrack.events.EventListener`::

    async with AsyncConntrack() as ct:
        async for flow in ct.dump(Filter(proto=6, dport=22)):
            print(flow)
            await ct.delete(flow)

    async with AsyncEventListener(EventType.NEW | EventType.DESTROY) as events:
        async for event in events:
            ...

Like their synchronous counterparts they belong to the network namespace
of the thread that created them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import TypeVar

from nfkit.conntrack import const as C
from nfkit.conntrack.client import Call, ClientCore, Exchange, Stream, open_socket
from nfkit.conntrack.events import ALL_EVENTS, DEFAULT_BATCH, NO_EVENTS, EventListener
from nfkit.conntrack.filters import Filter, KernelFilter
from nfkit.conntrack.model import (
    CPUStats,
    Event,
    EventType,
    Expectation,
    Flow,
    GlobalStats,
    Overrun,
    Tuple,
)
from nfkit.netlink.codec import NLM_F_CREATE, NLM_F_EXCL
from nfkit.netlink.conn import Transport

T = TypeVar("T")


async def readable(fd: int) -> None:
    """Wait until ``fd`` is readable (or has an error pending)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    # Registered only while waiting: a reader left registered would fire on
    # every loop iteration while its data waits for a slow consumer.
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _nonblocking_socket() -> Transport:
    sock = open_socket()
    sock.set_blocking(False)
    return sock


class AsyncConntrack(ClientCore):
    """The asyncio twin of :class:`~nfkit.conntrack.client.Conntrack`.

    Same operations, same parameters and errors; dumps are async iterators.
    Use ``async with`` (or :meth:`close`). A transport from
    ``transport_factory`` must not block in ``recv`` (raise
    BlockingIOError instead) and have a pollable ``fileno()``.
    """

    def __init__(
        self,
        *,
        transport_factory: Callable[[], Transport] | None = None,
        kernel_filters: KernelFilter = KernelFilter.all(),  # noqa: B008 (an immutable flag)
        compiled: bool = True,
    ) -> None:
        super().__init__(
            transport_factory=transport_factory or _nonblocking_socket,
            kernel_filters=kernel_filters,
            compiled=compiled,
        )

    async def __aenter__(self) -> AsyncConntrack:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- running the shared operations from the event loop ------------------------------

    @staticmethod
    async def _receive(channel: Exchange) -> bytes:
        transport = channel.transport
        while True:
            try:
                return transport.recv()
            except BlockingIOError:
                await readable(transport.fileno())

    async def _call(self, call: Call[T]) -> T:
        try:
            channel = next(call)
            while True:
                channel = call.send(await self._receive(channel))
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            call.close()

    async def _stream(self, stream: Stream[T]) -> AsyncGenerator[T, None]:
        try:
            step = next(stream)
            while True:
                if isinstance(step, Exchange):
                    step = stream.send(await self._receive(step))
                else:
                    for item in step:
                        yield item
                    step = stream.send(b"")
        except StopIteration:
            return
        finally:
            stream.close()

    # -- flows ----------------------------------------------------------------------------

    def dump(
        self,
        criteria: Filter | int = 0,
        *,
        mark: int | None = None,
        mark_mask: int | None = None,
        status: int | None = None,
        status_mask: int | None = None,
        zone: int | None = None,
        orig: Tuple | None = None,
        reply: Tuple | None = None,
        table: str = "conntrack",
        reset_counters: bool = False,
    ) -> AsyncGenerator[Flow, None]:
        """The flows that match, as an async iterator (see ``Conntrack.dump``).

        Leaving the ``async for`` early closes the dump's socket once the
        iterator is closed (``contextlib.aclosing`` makes that immediate).
        """
        return self._stream(self._op_dump(criteria, orig, reply, table, reset_counters,
                                          mark=mark, mark_mask=mark_mask, status=status,
                                          status_mask=status_mask, zone=zone))  # fmt: skip

    async def get(self, key: Flow | Tuple, zone: int | None = None) -> Flow:
        """The flow with this tuple (see ``Conntrack.get``)."""
        return await self._call(self._op_get(key, zone))

    async def create(self, flow: Flow) -> None:
        """Create ``flow`` (see ``Conntrack.create``)."""
        await self._call(self._op_new(flow, NLM_F_CREATE | NLM_F_EXCL, "conntrack create"))

    async def update(self, flow: Flow) -> None:
        """Change an existing flow (see ``Conntrack.update``)."""
        await self._call(self._op_new(flow, 0, "conntrack update"))

    async def create_or_update(self, flow: Flow) -> None:
        """Create ``flow``, or update the flow that has its tuple."""
        await self._call(self._op_new(flow, NLM_F_CREATE, "conntrack create-or-update"))

    async def delete(self, key: Flow | Tuple) -> None:
        """Delete one flow (see ``Conntrack.delete``)."""
        await self._call(self._op_delete(key))

    async def delete_many(
        self,
        criteria: Filter | Callable[[Flow], bool] | None = None,
        *,
        also: Callable[[Flow], bool] | None = None,
        collect: list[Flow] | None = None,
    ) -> int:
        """Delete every flow that matches; return how many (see ``Conntrack.delete_many``)."""
        return await self._call(self._op_delete_many(criteria, also, collect))

    async def delete_flows(self, flows: Iterable[Flow]) -> int:
        """See :meth:`Conntrack.delete_flows`."""
        return await self._call(self._delete_flows(list(flows)))

    async def flush(
        self,
        family: int | None = None,
        mark: int | None = None,
        mark_mask: int | None = None,
        zone: int | None = None,
        status: int | None = None,
        status_mask: int | None = None,
    ) -> None:
        """Delete every flow, or those of a family, mark, zone or status.

        See ``Conntrack.flush``.
        """
        await self._call(self._op_flush(family, mark, mark_mask, zone, status, status_mask))

    async def count(self) -> int:
        """The number of flows in the table."""
        return (await self.stats()).entries

    async def stats(self) -> GlobalStats:
        """Flows in the table and the table's maximum."""
        return await self._call(self._op_stats())

    async def stats_per_cpu(self) -> list[CPUStats]:
        """Per-CPU conntrack counters."""
        return await self._call(self._op_cpu_stats(C.CT_GET_STATS_CPU, C.STATS_CPU_NAMES))

    # -- expectations ------------------------------------------------------------------------

    def expectations(self, family: int = 0) -> AsyncGenerator[Expectation, None]:
        """The expectation table (of one family, 0: all), as an async iterator."""
        return self._stream(self._op_expectations(family))

    async def get_expectation(
        self, key: Expectation | Tuple, zone: int | None = None
    ) -> Expectation:
        """The expectation with this (expected) tuple."""
        return await self._call(self._op_get_expectation(key, zone))

    async def create_expectation(self, expectation: Expectation) -> None:
        """Create an expectation (see ``Conntrack.create_expectation``)."""
        await self._call(self._op_create_expectation(expectation))

    async def delete_expectation(self, key: Expectation | Tuple) -> None:
        """Delete one expectation by its tuple (and id when known)."""
        await self._call(self._op_delete_expectation(key))

    async def flush_expectations(self) -> None:
        """Delete every expectation."""
        await self._call(self._op_flush_expectations())

    async def expectation_stats_per_cpu(self) -> list[CPUStats]:
        """Per-CPU expectation counters."""
        return await self._call(self._op_cpu_stats(C.EXP_GET_STATS_CPU, C.STATS_EXP_NAMES))


class AsyncEventListener:
    """``async for event in AsyncEventListener(...)``: events without blocking the loop.

    Parameters are those of :class:`~nfkit.conntrack.events.EventListener`
    (the same warnings apply: create it before the flows it should see).
    Iteration yields :class:`Event` objects and an :class:`Overrun` where
    the kernel dropped events.
    """

    def __init__(
        self,
        events: EventType = ALL_EVENTS,
        *,
        expectations: EventType = NO_EVENTS,
        receive_buffer: int = 0,
        reliable: bool = False,
        filter: Filter | None = None,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self.listener = EventListener(events, expectations=expectations,
                                      receive_buffer=receive_buffer, reliable=reliable,
                                      filter=filter, batch=batch)  # fmt: skip
        self._pending: deque[Event | Overrun] = deque()

    @property
    def portid(self) -> int:
        return self.listener.portid

    async def receive(self) -> list[Event | Overrun]:
        """The events of the next datagrams, waiting for one (see ``EventListener.receive``)."""
        if self._pending:
            batch = list(self._pending)
            self._pending.clear()
            return batch
        while True:
            batch = self.listener.receive(timeout=0)
            if batch:
                return batch
            await readable(self.listener.fileno())

    def __aiter__(self) -> AsyncEventListener:
        return self

    async def __anext__(self) -> Event | Overrun:
        if not self._pending:
            self._pending.extend(await self.receive())
        return self._pending.popleft()

    def fileno(self) -> int:
        return self.listener.fileno()

    def close(self) -> None:
        self.listener.close()

    async def __aenter__(self) -> AsyncEventListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
