"""PRINTPKT: one iptables-LOG-like line per packet, in ``print`` (ends with ``\\n``).

The grammar is ulogd 2.0.8's (``util/printpkt.c``), byte for byte: a space after the
prefix, ``IN=``/``OUT=`` only when both are known, ``MAC=`` always, ``TOS=`` without ``0x``,
``SEQ=``/``ACK=`` always, no ``RES=``/``CWR``/``ECE``, ``MARK=0x..`` whenever valid; every
item ends with one space. Fixed ulogd bugs:

* ICMP extras are chosen by the ICMP *type*, as the kernel does (ulogd switched on the
  code): echo -> ``ID= SEQ=``, redirect -> ``GATEWAY=``, parameter problem ->
  ``PARAMETER=``, fragmentation needed -> ``MTU=``;
* ``SPI=0x..`` is printed for AH/ESP (BASE now decodes it), and IPv6 ESP/AH are named from
  the IPv6 next header (ulogd used ``ip.protocol`` and called IPv6 ESP "AH");
* a non-first fragment prints only ``PROTO=<name> `` as the kernel does, not
  ``INCOMPLETE``; ``INCOMPLETE``/``TRUNCATED`` are followed by a space (ulogd glued the next
  item to them, e.g. ``INCOMPLETEMARK=0x0``);
* a ``raw.mac`` of length 0 prints ``MAC= `` (ulogd printed ``MAC=`` with no space).

Like ulogd, IPv4 numbers BASE could not decode print as 0 (``LEN=0 ... PROTO=0``).

Hot path: BASE sets all the keys of a header together, so one key per header is tested
(as ulogd tests ``tcp.sport``) and the others are read directly; an event whose keys break
that rule is dropped with ERROR rather than printed wrong.
"""

from __future__ import annotations

from collections.abc import Callable

from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import ERROR, BatchPlugin, Context, DataType, Settings, without
from nfkit.logd.plugins._addr import CACHE_LIMIT, address_text
from nfkit.logd.registry import register
from nfkit.packet import (
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    ICMP_DEST_UNREACH,
    ICMP_ECHO,
    ICMP_ECHOREPLY,
    ICMP_FRAG_NEEDED,
    ICMP_PARAMETERPROB,
    ICMP_REDIRECT,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    IPPROTO_AH,
    IPPROTO_ESP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    NFPROTO_ARP,
    NFPROTO_BRIDGE,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
)

ARPOP_REQUEST = 1
ARPOP_REPLY = 2
ARPOP_NAK = 10
IPV6_HEADER_LENGTH = 40

# "TOS=%02X PREC=0x%02X " of every TOS byte (IPTOS_TOS_MASK 0x1E, IPTOS_PREC_MASK 0xE0).
_TOS = tuple(f"TOS={tos & 0x1E:02X} PREC=0x{tos & 0xE0:02X} " for tos in range(256))
# The flag words of ip.fragoff >> 13 (CE = reserved bit, DF, MF).
_IP_FLAGS = tuple(
    ("CE " if bits & 4 else "") + ("DF " if bits & 2 else "") + ("MF " if bits & 1 else "")
    for bits in range(8)
)
# The TCP flag words of URG<<5 | ACK<<4 | PSH<<3 | RST<<2 | SYN<<1 | FIN, in ulogd's order.
_TCP_FLAG_WORDS = ((32, "URG "), (16, "ACK "), (8, "PSH "), (4, "RST "), (2, "SYN "), (1, "FIN "))
_TCP_FLAGS = tuple(
    "".join(word for bit, word in _TCP_FLAG_WORDS if bits & bit) for bits in range(64)
)
# ulogd prints the IPv4 numbers it reads from unset keys as 0.
_NO_IPV4_HEADER = "LEN=0 TOS=00 PREC=0x00 TTL=0 ID=0 PROTO=0 "
# Decimal text of every 16-bit value: ports, lengths, IDs print without int formatting.
_DECIMAL = tuple(map(str, range(0x10000)))
# The usual marks' text.
_MARKS = {mark: f"MARK=0x{mark:x} " for mark in range(256)}
_ARP_OPERATIONS = {ARPOP_REQUEST: "REQUEST ", ARPOP_REPLY: "REPLY ", ARPOP_NAK: "NAK "}


def _tcp(event: Event) -> str:
    sport = event.get("tcp.sport")
    if sport is None:
        return "PROTO=TCP INCOMPLETE "
    flags = _TCP_FLAGS[
        event["tcp.urg"] << 5
        | event["tcp.ack"] << 4
        | event["tcp.psh"] << 3
        | event["tcp.rst"] << 2
        | event["tcp.syn"] << 1
        | event["tcp.fin"]
    ]
    return (
        f"PROTO=TCP SPT={_DECIMAL[sport]} DPT={_DECIMAL[event['tcp.dport']]} "
        f"SEQ={event['tcp.seq']} ACK={event['tcp.ackseq']} "
        f"WINDOW={_DECIMAL[event['tcp.window']]} {flags}URGP={event.get('tcp.urgp', 0)} "
    )


def _udp(event: Event) -> str:
    sport = event.get("udp.sport")
    if sport is None:
        return "PROTO=UDP INCOMPLETE "
    return (
        f"PROTO=UDP SPT={_DECIMAL[sport]} DPT={_DECIMAL[event['udp.dport']]} "
        f"LEN={_DECIMAL[event['udp.len']]} "
    )


def _sctp(event: Event) -> str:
    if "sctp.sport" not in event:
        return "PROTO=SCTP INCOMPLETE "
    return f"PROTO=SCTP SPT={event['sctp.sport']} DPT={event['sctp.dport']} "


def _ipsec(name: str) -> Callable[[Event], str]:
    def text(event: Event) -> str:
        spi = event.get("ahesp.spi")
        if spi is None:
            return f"PROTO={name} INCOMPLETE "
        return f"PROTO={name} SPI=0x{spi:x} "

    return text


def _icmp(event: Event) -> str:
    if "icmp.type" not in event:
        return "PROTO=ICMP INCOMPLETE "
    icmp_type = event["icmp.type"]
    code = event["icmp.code"]
    text = f"PROTO=ICMP TYPE={icmp_type} CODE={code} "
    if icmp_type in (ICMP_ECHO, ICMP_ECHOREPLY):
        return f"{text}ID={event['icmp.echoid']} SEQ={event['icmp.echoseq']} "
    if icmp_type == ICMP_REDIRECT:
        return f"{text}GATEWAY={address_text(event['icmp.gateway'])} "
    if icmp_type == ICMP_PARAMETERPROB:
        return f"{text}PARAMETER={event['icmp.gateway'][0]} "
    if icmp_type == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED:
        return f"{text}MTU={event['icmp.fragmtu']} "
    return text


def _icmpv6(event: Event) -> str:
    if "icmpv6.type" not in event:
        return "PROTO=ICMPv6 INCOMPLETE "
    if "icmpv6.code" not in event:
        return "PROTO=ICMPv6 TRUNCATED "
    icmp_type = event["icmpv6.type"]
    text = f"PROTO=ICMPv6 TYPE={icmp_type} CODE={event['icmpv6.code']} "
    if icmp_type in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY):
        return f"{text}ID={event['icmpv6.echoid']} SEQ={event['icmpv6.echoseq']} "
    return text


_COMMON_L4 = {
    IPPROTO_TCP: _tcp,
    IPPROTO_UDP: _udp,
    IPPROTO_SCTP: _sctp,
    IPPROTO_ESP: _ipsec("ESP"),
    IPPROTO_AH: _ipsec("AH"),
}
_IPV4_L4 = {**_COMMON_L4, IPPROTO_ICMP: _icmp}
_IPV6_L4 = {**_COMMON_L4, IPPROTO_ICMPV6: _icmpv6}
# What a non-first fragment prints: the kernel names the protocol and stops there.
_FRAGMENT_L4 = {
    IPPROTO_TCP: "PROTO=TCP ",
    IPPROTO_UDP: "PROTO=UDP ",
    IPPROTO_SCTP: "PROTO=SCTP ",
    IPPROTO_ESP: "PROTO=ESP ",
    IPPROTO_AH: "PROTO=AH ",
    IPPROTO_ICMP: "PROTO=ICMP ",
    IPPROTO_ICMPV6: "PROTO=ICMPv6 ",
}


def _addresses(src: str | None, dst: str | None) -> str:
    if src is not None and dst is not None:
        return f"SRC={src} DST={dst} "
    return (f"SRC={src} " if src is not None else "") + (f"DST={dst} " if dst is not None else "")


def _ipv4(event: Event) -> str:
    get = event.get
    addresses = _addresses(get("ip.saddr.str"), get("ip.daddr.str"))
    totlen = get("ip.totlen")
    if totlen is None:
        return f"{addresses}{_NO_IPV4_HEADER}"
    fragoff = event["ip.fragoff"]
    protocol = event["ip.protocol"]
    if fragoff & 0x1FFF:
        l4 = f"FRAG:{fragoff & 0x1FFF} {_FRAGMENT_L4.get(protocol) or f'PROTO={protocol} '}"
    else:
        describe = _IPV4_L4.get(protocol)
        l4 = describe(event) if describe else f"PROTO={protocol} "
    return (
        f"{addresses}LEN={_DECIMAL[totlen]} {_TOS[event['ip.tos']]}"
        f"TTL={_DECIMAL[event['ip.ttl']]} ID={_DECIMAL[event['ip.id']]} "
        f"{_IP_FLAGS[fragoff >> 13]}{l4}"
    )


def _ipv6(event: Event) -> str:
    get = event.get
    parts = [_addresses(get("ip.saddr.str"), get("ip.daddr.str"))]
    payload_len = get("ip6.payloadlen")
    if payload_len is not None:
        parts.append(f"LEN={payload_len + IPV6_HEADER_LENGTH} ")
    for key, label in (
        ("ip6.priority", "TC"),
        ("ip6.hoplimit", "HOPLIMIT"),
        ("ip6.flowlabel", "FLOWLBL"),
    ):
        value = get(key)
        if value is not None:
            parts.append(f"{label}={value} ")
    fragoff = get("ip6.fragoff")
    fragid = get("ip6.fragid")
    if fragoff is not None and fragid is not None:
        parts.append(f"FRAG: {fragoff} ID: {fragid:08x} ")
    nexthdr = get("ip6.nexthdr", 0)
    if fragoff:
        parts.append(_FRAGMENT_L4.get(nexthdr) or f"PROTO={nexthdr} ")
    else:
        describe = _IPV6_L4.get(nexthdr)
        parts.append(describe(event) if describe else f"PROTO={nexthdr} ")
    return "".join(parts)


def _arp(event: Event) -> str:
    text = f"{_addresses(event.get('arp.saddr.str'), event.get('arp.daddr.str'))}PROTO=ARP "
    operation = event.get("arp.operation")
    if operation is None:
        return text
    text += _ARP_OPERATIONS.get(operation) or f"CODE={operation} "
    sender = event.get("arp.shwaddr")
    if operation == ARPOP_REPLY and sender is not None:
        text += f"REPLY_MAC={sender[:6].hex(':')} "
    return text


def _bridge(event: Event) -> str:
    protocol = event.get("oob.protocol", 0)
    if protocol == ETH_P_IP:
        return _ipv4(event)
    if protocol == ETH_P_IPV6:
        return _ipv6(event)
    if protocol == ETH_P_ARP:
        return _arp(event)
    return f"PROTO={protocol} "


_BY_FAMILY = {NFPROTO_IPV4: _ipv4, NFPROTO_IPV6: _ipv6, NFPROTO_BRIDGE: _bridge, NFPROTO_ARP: _arp}


_INPUTS = (
    "oob.family", "oob.prefix", "oob.in", "oob.out", "oob.uid", "oob.gid", "oob.mark",
    "raw.mac", "raw.mac_len", "ip.saddr.str", "ip.daddr.str", "ip.totlen", "ip.tos", "ip.ttl",
    "ip.id", "ip.fragoff", "ip.protocol", "ip6.payloadlen", "ip6.priority", "ip6.hoplimit",
    "ip6.flowlabel", "ip6.nexthdr", "ip6.fragoff", "ip6.fragid", "tcp.sport", "tcp.dport",
    "tcp.seq", "tcp.ackseq", "tcp.window", "tcp.syn", "tcp.ack", "tcp.psh", "tcp.rst",
    "tcp.fin", "tcp.urg", "tcp.urgp", "udp.sport", "udp.dport", "udp.len", "icmp.type",
    "icmp.code", "icmp.echoid", "icmp.echoseq", "icmp.gateway", "icmp.fragmtu", "icmpv6.type",
    "icmpv6.code", "icmpv6.echoid", "icmpv6.echoseq", "ahesp.spi", "oob.protocol",
    "arp.hwtype", "arp.protocoltype", "arp.operation", "arp.shwaddr", "arp.saddr.str",
    "arp.dhwaddr", "arp.daddr.str", "sctp.sport", "sctp.dport",
)  # fmt: skip
_OPTIONAL = ("oob.uid", "oob.gid")


@register
class PRINTPKT(BatchPlugin):
    name = "PRINTPKT"
    summary = "format packets as iptables-LOG-like text lines (the 'print' key)"
    input_type = DataType.PACKET
    output_type = DataType.PACKET
    # ulogd declares them without types; every one is mandatory except uid/gid.
    input_keys = keys(
        *((name, KeyType.NONE, "optional" if name in _OPTIONAL else "") for name in _INPUTS)
    )
    output_keys = keys(("print", KeyType.STRING))

    def __init__(self, instance_id: str, settings: Settings, context: Context) -> None:
        super().__init__(instance_id, settings, context)
        # Prefixes, interfaces and link-layer headers repeat (same rules, same hosts, same
        # router): the line's head is formatted once per combination.
        self._heads: dict[tuple[str | None, str | None, str | None, bytes | None], str] = {}

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        heads = self._heads
        by_family = _BY_FAMILY
        marks = _MARKS
        dropped: list[Event] = []
        for event in events:
            get = event.get
            try:
                mac = get("raw.mac")
                if mac:
                    mac = mac[: get("raw.mac_len", 0)]  # the same object when nothing is cut
                key = (get("oob.prefix"), get("oob.in"), get("oob.out"), mac)
                head = heads.get(key) or self._head(key)
                describe = by_family.get(get("oob.family", 0))
                uid = get("oob.uid")
                gid = get("oob.gid")
                mark = get("oob.mark")
                event["print"] = (
                    f"{head}{describe(event) if describe else ''}"
                    f"{'' if uid is None else f'UID={uid} '}"
                    f"{'' if gid is None else f'GID={gid} '}"
                    f"{'' if mark is None else marks.get(mark) or f'MARK=0x{mark:x} '}\n"
                )
            except (LookupError, TypeError, ValueError, AttributeError) as exc:
                # Keys missing or of unexpected types (not from BASE): drop, never crash.
                self.log.debug("%s: cannot format event: %s", self.id, exc)
                finish(ERROR)
                dropped.append(event)
        return without(events, dropped)

    def _head(self, key: tuple[str | None, str | None, str | None, bytes | None]) -> str:
        """``prefix IN=.. OUT=.. MAC=.. `` (each part when known), remembered."""
        prefix, in_name, out_name, mac = key
        head = (
            f"{'' if prefix is None else prefix + ' '}"
            f"{'' if in_name is None or out_name is None else f'IN={in_name} OUT={out_name} '}"
            f"MAC={bytes(mac).hex(':') if mac else ''} "
        )
        if len(self._heads) >= CACHE_LIMIT:
            self._heads.clear()  # cheaper than LRU bookkeeping; refills at once
        self._heads[key] = head
        return head
