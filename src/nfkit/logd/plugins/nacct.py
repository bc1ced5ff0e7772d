"""NACCT: nacct-style flow accounting, one tab-separated line per flow event.

``flow.end.sec  proto  saddr  sport  daddr  dport  packets  bytes``: the original
direction's addresses and ports (ICMP type and code instead of the ports), and the
*reply* direction's counters ("we're more interested in download"), exactly as ulogd2.
Like ulogd2 nothing is checked: a key the flow does not have prints as 0 (the ports of
an ICMPv6 or GRE flow, ``flow.end.sec`` of a NEW event).
"""

from __future__ import annotations

from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import DataType, Option
from nfkit.logd.plugins._text_output import TextFileOutput
from nfkit.logd.registry import register
from nfkit.packet import IPPROTO_ICMP

T = KeyType
# glibc's printf of a NULL string, what ulogd prints for an address IP2STR did not set.
MISSING_TEXT = "(null)"


@register
class NACCT(TextFileOutput):
    name = "NACCT"
    summary = "write nacct-compatible flow accounting lines (reply direction counters)"
    input_type = DataType.PACKET | DataType.FLOW
    options = (
        Option("file", str, "/var/log/ulogd_nacct.log"),
        Option("sync", int, 0),
    )
    input_keys = keys(
        ("orig.ip.saddr.str", T.STRING),
        ("orig.ip.daddr.str", T.STRING),
        ("orig.ip.protocol", T.UINT8),
        ("orig.l4.sport", T.UINT16),
        ("orig.l4.dport", T.UINT16),
        ("reply.raw.pktlen", T.UINT64),
        ("reply.raw.pktcount", T.UINT64),
        ("icmp.code", T.UINT8),
        ("icmp.type", T.UINT8),
        ("flow.start.sec", T.UINT32),
        ("flow.end.sec", T.UINT32),
    )

    def record(self, event: Event) -> str:
        get = event.get
        protocol = get("orig.ip.protocol", 0)
        if protocol == IPPROTO_ICMP:
            source, destination = get("icmp.type", 0), get("icmp.code", 0)
        else:
            source, destination = get("orig.l4.sport", 0), get("orig.l4.dport", 0)
        return (
            f"{get('flow.end.sec', 0)}\t{protocol}\t{get('orig.ip.saddr.str', MISSING_TEXT)}\t"
            f"{source}\t{get('orig.ip.daddr.str', MISSING_TEXT)}\t{destination}\t"
            f"{get('reply.raw.pktcount', 0)}\t{get('reply.raw.pktlen', 0)}\n"
        )
