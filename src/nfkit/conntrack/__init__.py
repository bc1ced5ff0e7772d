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
"""

from nfkit.conntrack.client import Conntrack
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

__all__ = [
    "CPUStats",
    "Conntrack",
    "Counters",
    "DCCPInfo",
    "DCCPState",
    "Event",
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
