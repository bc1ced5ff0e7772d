"""PRINTFLOW: one iptables-LOG-like line per flow event, in ``print`` (ends with ``\\n``).

``[DESTROY] ORIG: SRC=.. DST=.. PROTO=TCP SPT=.. DPT=.. PKTS=.. BYTES=.. , REPLY: ...``:
ulogd 2.0.8's grammar (``util/printflow.c``) byte for byte, each item only when its key
is valid and followed by one space. Differences, both fixes:

* ICMP prints ``TYPE=<icmp.type> CODE=<icmp.code>``; ulogd swapped them;
* ICMPv6 flows print ``PROTO=ICMPv6 TYPE=.. CODE=..`` from ``icmpv6.type``/``icmpv6.code``
  (optional inputs, set by NFCT as in ulogd 2.0.9; ``--info`` shows ulogd's inputs
  only); ulogd printed ``PROTO=58``.

As in ulogd, the flow has one ICMP type and code (the original direction's), printed in
both halves, and SCTP, DCCP and UDP-Lite print only ``PROTO=<number>``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import ERROR, BatchPlugin, DataType, Plugin, without
from nfkit.logd.registry import register
from nfkit.packet import (
    IPPROTO_AH,
    IPPROTO_ESP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
)

T = KeyType

_EVENT_TAGS = {1: "[NEW] ", 2: "[UPDATE] ", 4: "[DESTROY] "}
_WITH_PORTS = {IPPROTO_TCP: "PROTO=TCP ", IPPROTO_UDP: "PROTO=UDP "}
# protocol -> (name, type key, code key)
_WITH_TYPE = {
    IPPROTO_ICMP: ("PROTO=ICMP ", "icmp.type", "icmp.code"),
    IPPROTO_ICMPV6: ("PROTO=ICMPv6 ", "icmpv6.type", "icmpv6.code"),
}
_NAMED = {IPPROTO_ESP: "PROTO=ESP ", IPPROTO_AH: "PROTO=AH "}


class Direction(NamedTuple):
    """The key names of one direction of a flow."""

    saddr: str
    daddr: str
    protocol: str
    sport: str
    dport: str
    pktcount: str
    pktlen: str

    @classmethod
    def named(cls, prefix: str) -> Direction:
        return cls(
            f"{prefix}.ip.saddr.str", f"{prefix}.ip.daddr.str", f"{prefix}.ip.protocol",
            f"{prefix}.l4.sport", f"{prefix}.l4.dport", f"{prefix}.raw.pktcount",
            f"{prefix}.raw.pktlen",
        )


#: Optional inputs beyond ulogd's: the type and code of ICMPv6 flows.
ICMPV6_INPUTS = keys(("icmpv6.type", T.UINT8, "optional"), ("icmpv6.code", T.UINT8, "optional"))

ORIG = Direction.named("orig")
REPLY = Direction.named("reply")


def _item(label: str, value: Any) -> str:
    return "" if value is None else f"{label}={value} "


def _protocol(get: Callable[[str], Any], protocol: int, keys: Direction) -> str:
    name = _WITH_PORTS.get(protocol)
    if name is not None:
        return name + _item("SPT", get(keys.sport)) + _item("DPT", get(keys.dport))
    typed = _WITH_TYPE.get(protocol)
    if typed is not None:
        name, type_key, code_key = typed
        return name + _item("TYPE", get(type_key)) + _item("CODE", get(code_key))
    return _NAMED.get(protocol) or f"PROTO={protocol} "


def direction(get: Callable[[str], Any], keys: Direction) -> str:
    """One half of the line: addresses, protocol, counters."""
    protocol = get(keys.protocol)
    return (
        _item("SRC", get(keys.saddr))
        + _item("DST", get(keys.daddr))
        + ("" if protocol is None else _protocol(get, protocol, keys))
        + _item("PKTS", get(keys.pktcount))
        + _item("BYTES", get(keys.pktlen))
    )


def flow_line(event: Event) -> str:
    """The ``print`` text of a flow event."""
    get = event.get
    tag = _EVENT_TAGS.get(get("ct.event", 0), "")
    return f"{tag}ORIG: {direction(get, ORIG)}, REPLY: {direction(get, REPLY)}\n"


# Most flows are TCP or UDP with every key set: their line is one formatting.
_PORTED_FLOW = operator.itemgetter("ct.event", *ORIG, *REPLY)


def ported_flow_line(event: Event) -> str:
    """:func:`flow_line`, faster for complete TCP/UDP flows."""
    if "reply.l4.dport" not in event:  # ICMP and others: no ports, no fast path
        return flow_line(event)
    try:
        tag, s1, d1, p1, sp1, dp1, c1, b1, s2, d2, p2, sp2, dp2, c2, b2 = _PORTED_FLOW(event)
    except KeyError:
        return flow_line(event)
    name1 = _WITH_PORTS.get(p1)
    name2 = _WITH_PORTS.get(p2)
    if name1 is None or name2 is None:  # SCTP, DCCP, UDP-Lite: ports not printed
        return flow_line(event)
    return (
        f"{_EVENT_TAGS.get(tag, '')}ORIG: SRC={s1} DST={d1} {name1}SPT={sp1} DPT={dp1} "
        f"PKTS={c1} BYTES={b1} , REPLY: SRC={s2} DST={d2} {name2}SPT={sp2} DPT={dp2} "
        f"PKTS={c2} BYTES={b2} \n"
    )


@register
class PRINTFLOW(BatchPlugin):
    name = "PRINTFLOW"
    summary = "format conntrack flows as LOG-like text lines (the 'print' key)"
    input_type = DataType.FLOW
    output_type = DataType.FLOW
    # ulogd declares the address strings as IP addresses; --info shows them so.
    input_keys = keys(
        ("orig.ip.saddr.str", T.IPADDR),
        ("orig.ip.daddr.str", T.IPADDR),
        ("orig.ip.protocol", T.UINT8),
        ("orig.l4.sport", T.UINT16),
        ("orig.l4.dport", T.UINT16),
        ("orig.raw.pktlen", T.UINT64),
        ("orig.raw.pktcount", T.UINT64),
        ("reply.ip.saddr.str", T.IPADDR),
        ("reply.ip.daddr.str", T.IPADDR),
        ("reply.ip.protocol", T.UINT8),
        ("reply.l4.sport", T.UINT16),
        ("reply.l4.dport", T.UINT16),
        ("reply.raw.pktlen", T.UINT64),
        ("reply.raw.pktcount", T.UINT64),
        ("icmp.code", T.UINT8),
        ("icmp.type", T.UINT8),
        ("ct.event", T.UINT32),
    )
    output_keys = keys(("print", T.STRING))

    def configure(self, upstream: Sequence[Plugin]) -> None:
        # Read by the instance (so NFCT sets them), kept out of the class table so that
        # --info lists exactly ulogd's inputs.
        self.inputs = (*self.input_keys, *ICMPV6_INPUTS)

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        line = ported_flow_line
        dropped: list[Event] = []
        for event in events:
            try:
                event["print"] = line(event)
            except TypeError as exc:  # an unhashable ct.event or protocol: not from NFCT
                self.log.debug("%s: cannot format event: %s", self.id, exc)
                finish(ERROR)
                dropped.append(event)
        return without(events, dropped)
