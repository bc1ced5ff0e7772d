"""The asyncio API: AsyncConntrack runs the sync client's operations, AsyncEventListener."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from ctlab import fill_table
from nfkit.conntrack import (
    Event,
    EventType,
    Expectation,
    Flow,
    Overrun,
    Status,
    TCPInfo,
    TCPState,
    Tuple,
)
from nfkit.conntrack.aio import AsyncConntrack, AsyncEventListener
from nfkit.conntrack.events import ALL_EVENTS
from nfkit.conntrack.filters import Filter
from nfkit.lab import Lab
from nfkit.netlink import NetlinkExists, NetlinkNotFound
from nfkit.netlink.codec import NLM_F_CREATE, NLM_F_DUMP, NLM_F_MULTI, Message, attr_be32
from nfkit.netlink.testing import FakeTransport, done, error

T = TypeVar("T")

CT_NEW, CT_GET, CT_DELETE, CT_GET_STATS = 0x100, 0x101, 0x102, 0x105
# The payload (nfgenmsg and attributes) of a real CT_NEW message: TCP
# 192.0.2.1:35034 -> 192.0.2.2:21, helper ftp.
TCP_FLOW = bytes.fromhex(
    "02000000340001801400018008000100c000020108000200c00002021c00028005000100060000000600"
    "020088da00000600030000150000340002801400018008000100c000020208000200c00002011c000280"
    "050001000600000006000200001500000600030088da000008000c003dbf712608000300000020080800"
    "070000000078300004802c0001800500010001000000050002000a000000050003000000000006000400"
    "0300000006000500000000000c00058008000100667470000c001b0018ea0e475364732e"
)


def run(coroutine: Awaitable[T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


class FakeKernel:
    """Answers like ctnetlink: a table of original tuples, dumps of TCP_FLOW."""

    def __init__(self, finish_dumps: bool = True) -> None:
        self.finish_dumps = finish_dumps
        self.tuples: set[bytes] = set()
        self.transports: list[FakeTransport] = []

    def transport(self) -> FakeTransport:
        transport = FakeTransport(self.handle)
        self.transports.append(transport)
        return transport

    def handle(self, request: Message) -> list[Message]:
        # The first attribute, CTA_TUPLE_ORIG, after the nfgenmsg header.
        key = request.payload[4 : 4 + int.from_bytes(request.payload[4:6], "little")]
        if request.type == CT_NEW and request.flags & NLM_F_CREATE:
            if key in self.tuples:
                return [error(request, 17)]
            self.tuples.add(key)
        elif request.type == CT_DELETE:
            if key not in self.tuples:
                return [error(request, 2)]
            self.tuples.discard(key)
        elif request.type == CT_GET and request.flags & NLM_F_DUMP == NLM_F_DUMP:
            entry = Message(CT_NEW, NLM_F_MULTI, payload=TCP_FLOW)
            return [entry, entry, done(request)] if self.finish_dumps else [entry]
        elif request.type == CT_GET_STATS:
            return [Message(CT_GET_STATS, payload=bytes(4) + attr_be32(1, len(self.tuples)))]
        return []


def udp(sport: int, src: str = "198.51.100.1") -> Tuple:
    return Tuple(socket.AF_INET, src, "192.0.2.100", socket.IPPROTO_UDP, sport, 53)


# -- without a kernel -----------------------------------------------------------------


def test_operations_and_errors_through_a_fake_kernel() -> None:
    kernel = FakeKernel()

    async def scenario() -> None:
        async with AsyncConntrack(transport_factory=kernel.transport) as ct:
            await ct.create(Flow(udp(1), timeout=30))
            with pytest.raises(NetlinkExists, match="update it instead"):
                await ct.create(Flow(udp(1), timeout=30))
            await ct.create(Flow(udp(2), timeout=30))
            assert await ct.count() == 2
            await ct.delete(udp(1))
            with pytest.raises(NetlinkNotFound, match="no such flow"):
                await ct.delete(udp(1))
            flows = [flow async for flow in ct.dump()]
            assert len(flows) == 2 and flows[0].helper == "ftp"
            assert flows[0].orig == Tuple(socket.AF_INET, "192.0.2.1", "192.0.2.2", 6, 0x88DA, 21)

    run(scenario())
    assert len(kernel.tuples) == 1
    assert len(kernel.transports) == 1  # one channel served every request


def test_waiting_for_a_reply_leaves_the_loop_running() -> None:
    transport = FakeTransport(lambda request: [])  # the kernel answers later

    async def scenario() -> tuple[Flow, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        def answer() -> None:
            (request,) = transport.sent
            reply = Message(CT_NEW, 0, request.seq, transport.portid, TCP_FLOW)
            transport.inject(reply.encode())

        ticking = asyncio.create_task(ticker())
        asyncio.get_running_loop().call_later(0.1, answer)
        async with AsyncConntrack(transport_factory=lambda: transport) as ct:
            flow = await ct.get(Tuple(socket.AF_INET, "192.0.2.1", "192.0.2.2", 6, 0x88DA, 21))
        ticking.cancel()
        return flow, ticks

    flow, ticks = run(scenario())
    assert flow.helper == "ftp"
    assert ticks >= 5


def test_an_abandoned_dump_closes_its_channel() -> None:
    kernel = FakeKernel(finish_dumps=False)

    async def scenario() -> None:
        async with AsyncConntrack(transport_factory=kernel.transport) as ct:
            dump = ct.dump()
            assert isinstance(await anext(dump), Flow)
            await dump.aclose()
            assert kernel.transports[0]._closed
            await ct.create(Flow(udp(3), timeout=30))  # on a new channel

    run(scenario())
    assert len(kernel.transports) == 2


# -- in a lab namespace -------------------------------------------------------------


async def take(events: AsyncEventListener, count: int) -> list[Event]:
    """The next ``count`` events (an Overrun fails the test)."""
    taken: list[Event] = []
    async for item in events:
        assert isinstance(item, Event), item
        taken.append(item)
        if len(taken) == count:
            break
    return taken


@pytest.mark.lab
def test_flows_end_to_end(lab: Lab) -> None:
    n = 40

    async def scenario() -> None:
        async with (
            AsyncEventListener(reliable=True, receive_buffer=1 << 22) as events,
            AsyncConntrack() as ct,
        ):
            for sport in range(1000, 1000 + n):
                await ct.create(Flow(udp(sport), timeout=120, mark=sport % 2))
            created = await take(events, n)
            assert {(e.type, e.portid) for e in created} == {(EventType.NEW, ct.portid)}
            assert await ct.count() == n
            assert (await ct.stats()).max_entries
            assert len(await ct.stats_per_cpu()) >= 1

            flow = await ct.get(udp(1001))
            assert (flow.mark, flow.timeout is not None) == (1, True)
            await ct.update(Flow(udp(1001), mark=7))
            (updated,) = await take(events, 1)
            assert updated.type is EventType.UPDATE and updated.flow is not None
            assert updated.flow.mark == 7

            # Deleting while the dump streams: the requests take a second channel.
            seen = 0
            async for flow in ct.dump(Filter(proto=socket.IPPROTO_UDP, mark=0)):
                seen += 1
                assert flow.orig is not None
                await ct.delete(flow.orig)
            assert seen == n // 2
            destroyed = await take(events, n // 2)
            assert {e.type for e in destroyed} == {EventType.DESTROY}
            assert {e.flow.orig.sport % 2 for e in destroyed if e.flow and e.flow.orig} == {0}

            assert await ct.delete_many(lambda f: f.mark == 7) == 1
            await ct.flush()
            assert await ct.count() == 0
            assert len(await take(events, n // 2)) == n // 2

    with lab.entered(lab.b):
        run(scenario())


@pytest.mark.lab
def test_expectations_end_to_end(lab: Lab) -> None:
    control = Tuple(socket.AF_INET, "198.51.100.2", "192.0.2.100", socket.IPPROTO_TCP, 40000, 21)
    data = Tuple(socket.AF_INET, "198.51.100.2", "192.0.2.100", socket.IPPROTO_TCP, 0, 5000)
    mask = Tuple(socket.AF_INET, "255.255.255.255", "255.255.255.255", socket.IPPROTO_TCP,
                 0, 0xFFFF)  # fmt: skip
    established = TCPInfo(state=TCPState.ESTABLISHED)

    async def scenario() -> None:
        async with (
            AsyncEventListener(expectations=ALL_EVENTS) as events,
            AsyncConntrack() as ct,
        ):
            await ct.create(Flow(control, timeout=120, helper="ftp", protoinfo=established,
                                 status=Status.SEEN_REPLY | Status.ASSURED))  # fmt: skip
            await ct.create_expectation(Expectation(master=control, tuple=data, mask=mask,
                                                    timeout=60))  # fmt: skip
            listed = [exp async for exp in ct.expectations()]
            assert len(listed) == 1 and listed[0].helper == "ftp"
            got = await ct.get_expectation(data)
            assert got.master == control and got.tuple is not None and got.tuple.dport == 5000
            assert len(await ct.expectation_stats_per_cpu()) >= 1
            await ct.delete_expectation(got)
            with pytest.raises(NetlinkNotFound):
                await ct.get_expectation(data)
            await ct.create_expectation(Expectation(master=control, tuple=data, mask=mask,
                                                    timeout=60))  # fmt: skip
            await ct.flush_expectations()
            assert [exp async for exp in ct.expectations()] == []
            received = await take(events, 5)
            kinds = [(e.type, e.flow is None) for e in received]
            assert kinds == [
                (EventType.NEW, False),  # the control flow
                (EventType.NEW, True),
                (EventType.DESTROY, True),
                (EventType.NEW, True),
                (EventType.DESTROY, True),
            ]
            assert {e.portid for e in received} == {ct.portid}

    with lab.entered(lab.b):
        run(scenario())


@pytest.mark.lab
def test_async_listener_reports_overruns(lab: Lab) -> None:
    async def scenario() -> None:
        async with AsyncEventListener(EventType.NEW, receive_buffer=1) as events:
            fill_table(lab, lab.b, 200)  # the loop is not reading meanwhile
            first = await anext(events)
            assert isinstance(first, Overrun)
            fill_table(lab, lab.b, 1, src_net="203.0.113.0/24")
            async for item in events:
                assert isinstance(item, Event) and item.flow and item.flow.orig
                if item.flow.orig.src == "203.0.113.1":
                    break

    with lab.entered(lab.b):
        run(scenario())
