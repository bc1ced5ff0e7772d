"""Connection tracking over ctnetlink: a typed model, operations and events.

All TCP flows to port 22: print them, then delete them::

    from nfkit.conntrack import Conntrack, Filter

    with Conntrack() as ct:
        ssh = list(ct.dump(Filter(proto=6, dport=22)))
        for flow in ssh:
            print(flow)
        ct.delete_many(Filter(proto=6, dport=22))

:class:`Conntrack` lists, gets, creates, updates and deletes flows and
expectations and reads the statistics; a :class:`Filter` is pushed into the
kernel as far as it supports it and checked again in Python. Everything
needs CAP_NET_ADMIN in the network namespace.

:class:`EventListener` receives NEW/UPDATE/DESTROY and expectation events
(create it before the flows it should see); :class:`AsyncConntrack` and
:class:`AsyncEventListener` are the asyncio versions of both.
"""

from typing import TYPE_CHECKING

from nfkit.conntrack.client import Conntrack
from nfkit.conntrack.events import EventListener
from nfkit.conntrack.filters import Filter, KernelFilter, NatMatch
from nfkit.conntrack.model import (
    Counters,
    CPUStats,
    DCCPInfo,
    DCCPState,
    Event,
    EventType,
    Expectation,
    ExpectFlag,
    Flow,
    GlobalStats,
    NatRange,
    Overrun,
    SCTPInfo,
    SCTPState,
    SeqAdj,
    Status,
    Synproxy,
    TCPFlag,
    TCPInfo,
    TCPState,
    Tuple,
)

if TYPE_CHECKING:
    from nfkit.conntrack.aio import AsyncConntrack, AsyncEventListener


def __getattr__(name: str) -> object:
    # The asyncio classes load on first use: importing asyncio costs ~30 ms,
    # which the CLI and synchronous scripts need not pay.
    if name in ("AsyncConntrack", "AsyncEventListener"):
        from nfkit.conntrack import aio

        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncConntrack",
    "AsyncEventListener",
    "CPUStats",
    "Conntrack",
    "Counters",
    "DCCPInfo",
    "DCCPState",
    "Event",
    "EventListener",
    "EventType",
    "ExpectFlag",
    "Expectation",
    "Filter",
    "Flow",
    "GlobalStats",
    "KernelFilter",
    "NatMatch",
    "NatRange",
    "Overrun",
    "SCTPInfo",
    "SCTPState",
    "SeqAdj",
    "Status",
    "Synproxy",
    "TCPFlag",
    "TCPInfo",
    "TCPState",
    "Tuple",
]
