"""BASE: dissect ``raw.pkt`` into ``ip.*``, ``ip6.*``, ``tcp.*``, ``udp.*``... keys.

It follows ulogd2 2.0.8's ``ulogd_raw2packet_BASE`` (dispatch on ``oob.family``, then on the
ethertype for bridged packets; which keys each header sets) with its bugs fixed:

* ``tcp.offset`` / ``tcp.reserved`` carry the real data offset and reserved bits (2.0.8:
  always 0);
* a non-first IPv4 fragment is not parsed as if it began with an L4 header;
* an IPv4 header without payload still sets its ``ip.*`` keys (2.0.8 sets nothing);
* SCTP is parsed over IPv6 too, and ``ahesp.spi`` is set for AH and ESP (2.0.8 never sets it);
* IPv6 ESP sets ``ip.protocol`` = 50, and a truncated extension header still sets
  ``ip6.nexthdr`` to the header where parsing stopped;
* ``arp.saddr`` / ``arp.daddr`` are 4-byte addresses (2.0.8: pointers), ``icmp.gateway`` is
  the address in network order (2.0.8: host order), family 3 (ARP, as in ulogd git HEAD)
  is dissected as ARP.

ulogd's semantics are kept elsewhere: ``ip.fragoff`` is the whole flags + offset field,
``ip6.fragoff`` the offset in bytes, ``icmp.csum`` / ``icmpv6.csum`` the checksum bytes read
as a little-endian integer. Truncated packets leave keys unset; nothing here raises.

Hot path: the fixed-size headers are described by tables (:class:`Header`) from which
:func:`decoders` generates Python source: one ``unpack_from`` per header, direct dict
stores of only the keys some plugin downstream reads, the L4 header decoded inline after
IPv4. Every instance starts with the decoders of all keys; start() narrows them to the
keys its stack reads (:attr:`Plugin.wanted`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import BatchPlugin, Context, DataType, Settings
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
    IPPROTO_DSTOPTS,
    IPPROTO_ESP,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_ROUTING,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    NFPROTO_ARP,
    NFPROTO_BRIDGE,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
    layouts,
)

T = KeyType


#: A decoder of the header at ``at``: ``decode(event, pkt, at)``; it sets keys, returns None.
Decoder = Callable[[Event, bytes, int], None]


class Header(NamedTuple):
    """A fixed-size header: its struct, its fields' names, the keys it sets.

    ``keys`` are ``(key, expression over the fields)``; ``cases`` are
    ``(condition, keys)`` whose keys are set only when the condition holds,
    checked in order as ``if``/``elif`` (the conditions exclude each other).
    """

    name: str
    layout: str  # the name of its struct in nfkit.packet.layouts
    fields: str
    keys: tuple[tuple[str, str], ...]
    cases: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def sets_any(self, wanted: set[str] | None) -> bool:
        names = {key for key, _ in self.keys} | {key for _, ks in self.cases for key, _ in ks}
        return wanted is None or not names.isdisjoint(wanted)

    def source(self, wanted: set[str] | None, indent: str) -> list[str]:
        """Lines that decode the header at ``at`` into ``event`` (None: every key)."""
        size = getattr(layouts, self.layout).size
        lines = [
            f"if len(pkt) - at < {size}:",
            "    return",
            f"{', '.join(self.fields.split())} = unpack_{self.name}(pkt, at)",
        ]
        lines += [f'event["{key}"] = {value}' for key, value in self.keys if _reads(wanted, key)]
        branch = "if"
        for condition, case_keys in self.cases:
            stores = [f'    event["{k}"] = {v}' for k, v in case_keys if _reads(wanted, k)]
            if stores:
                lines += [f"{branch} {condition}:", *stores]
                branch = "elif"
        return [indent + line for line in lines]


def _reads(wanted: set[str] | None, key: str) -> bool:
    return wanted is None or key in wanted


IPV4_HEADER = Header(
    "ipv4",
    "IPV4",
    "version_ihl tos totlen ident fragoff ttl protocol csum src dst",
    (
        ("ip.saddr", "src"),
        ("ip.daddr", "dst"),
        ("ip.protocol", "protocol"),
        ("ip.tos", "tos"),
        ("ip.ttl", "ttl"),
        ("ip.totlen", "totlen"),
        ("ip.ihl", "version_ihl & 0x0F"),
        ("ip.csum", "csum"),
        ("ip.id", "ident"),
        ("ip.fragoff", "fragoff"),
    ),
)
TCP_HEADER = Header(
    "tcp",
    "TCP",
    "sport dport seq ack offset_reserved flags window csum urgp",
    (
        ("tcp.sport", "sport"),
        ("tcp.dport", "dport"),
        ("tcp.seq", "seq"),
        ("tcp.ackseq", "ack"),
        ("tcp.offset", "offset_reserved >> 4"),
        ("tcp.reserved", "offset_reserved & 0x0F"),
        ("tcp.window", "window"),
        ("tcp.urg", "flags >> 5 & 1"),
        ("tcp.ack", "flags >> 4 & 1"),
        ("tcp.psh", "flags >> 3 & 1"),
        ("tcp.rst", "flags >> 2 & 1"),
        ("tcp.syn", "flags >> 1 & 1"),
        ("tcp.fin", "flags & 1"),
        # glibc's tcphdr bit-fields: res1 = the 4 reserved bits, res2 = ECE and CWR;
        # ulogd stores the raw field values in its BOOL keys (res2 = 3 for ECE+CWR).
        ("tcp.res1", "offset_reserved & 0x0F"),
        ("tcp.res2", "flags >> 6"),
        ("tcp.csum", "csum"),
    ),
    (("flags & 0x20", (("tcp.urgp", "urgp"),)),),
)
UDP_HEADER = Header(
    "udp",
    "UDP",
    "sport dport length csum",
    (
        ("udp.sport", "sport"),
        ("udp.dport", "dport"),
        ("udp.len", "length"),
        ("udp.csum", "csum"),
    ),
)
SCTP_HEADER = Header(
    "sctp",
    "SCTP",
    "sport dport _vtag csum",
    (("sctp.sport", "sport"), ("sctp.dport", "dport"), ("sctp.csum", "csum")),
)
# ulogd stores ICMP checksums without ntohs(): their bytes as a little-endian integer.
ICMP_HEADER = Header(
    "icmp",
    "ICMP",
    "icmp_type code csum rest",
    (
        ("icmp.type", "icmp_type"),
        ("icmp.code", "code"),
        ("icmp.csum", "(csum & 0xFF) << 8 | csum >> 8"),
    ),
    (
        (
            f"icmp_type == {ICMP_ECHO} or icmp_type == {ICMP_ECHOREPLY}",
            (("icmp.echoid", "rest >> 16"), ("icmp.echoseq", "rest & 0xFFFF")),
        ),
        (
            f"icmp_type == {ICMP_REDIRECT} or icmp_type == {ICMP_PARAMETERPROB}",
            (("icmp.gateway", 'rest.to_bytes(4, "big")'),),
        ),
        (
            f"icmp_type == {ICMP_DEST_UNREACH} and code == {ICMP_FRAG_NEEDED}",
            (("icmp.fragmtu", "rest & 0xFFFF"),),
        ),
    ),
)
ICMPV6_HEADER = Header(
    "icmpv6",
    "ICMP",
    "icmp_type code csum rest",
    (
        ("icmpv6.type", "icmp_type"),
        ("icmpv6.code", "code"),
        ("icmpv6.csum", "(csum & 0xFF) << 8 | csum >> 8"),
    ),
    (
        (
            f"icmp_type == {ICMPV6_ECHO_REQUEST} or icmp_type == {ICMPV6_ECHO_REPLY}",
            (("icmpv6.echoid", "rest >> 16"), ("icmpv6.echoseq", "rest & 0xFFFF")),
        ),
    ),
)
AH_HEADER = Header("ah", "AH", "_next _length _reserved spi _seq", (("ahesp.spi", "spi"),))
ESP_HEADER = Header("esp", "ESP", "spi _seq", (("ahesp.spi", "spi"),))
ARP_HEADER = Header(
    "arp",
    "ARP",
    "hwtype ptype _hlen _plen operation sha spa tha tpa",
    (
        ("arp.hwtype", "hwtype"),
        ("arp.protocoltype", "ptype"),
        ("arp.operation", "operation"),
        ("arp.shwaddr", "sha"),
        ("arp.saddr", "spa"),
        ("arp.dhwaddr", "tha"),
        ("arp.daddr", "tpa"),
    ),
)
#: What follows IPv4 (decoded inline) and IPv6 (after its extension headers).
IPV4_PAYLOADS = {
    IPPROTO_TCP: TCP_HEADER,
    IPPROTO_UDP: UDP_HEADER,
    IPPROTO_ICMP: ICMP_HEADER,
    IPPROTO_SCTP: SCTP_HEADER,
    IPPROTO_AH: AH_HEADER,
    IPPROTO_ESP: ESP_HEADER,
}
IPV6_PAYLOADS = {
    IPPROTO_TCP: TCP_HEADER,
    IPPROTO_UDP: UDP_HEADER,
    IPPROTO_ICMPV6: ICMPV6_HEADER,
    IPPROTO_SCTP: SCTP_HEADER,
    IPPROTO_AH: AH_HEADER,
    IPPROTO_ESP: ESP_HEADER,
}
#: The headers with a decoder of their own; the others are decoded inline after IPv4.
STANDALONE = (*IPV6_PAYLOADS.values(), ARP_HEADER)
HEADERS = (IPV4_HEADER, ICMP_HEADER, *STANDALONE)


def _source(wanted: set[str] | None) -> str:
    """Python source of every decoder for the keys in ``wanted`` (None: all keys)."""
    lines = []
    for header in STANDALONE:
        body = header.source(wanted, "    ") if header.sets_any(wanted) else ["    pass"]
        lines += [f"def decode_{header.name}(event, pkt, at):", *body]
    lines += ["def decode_ipv4(event, pkt, at):", *IPV4_HEADER.source(wanted, "    ")]
    lines += [
        "    ihl = version_ihl & 0x0F",
        "    # A non-first fragment carries the middle of a datagram, not an L4 header.",
        "    if fragoff & 0x1FFF or ihl < 5:",
        "        return",
        "    at = ihl * 4",
    ]
    branch = "if"
    for protocol, header in IPV4_PAYLOADS.items():
        if header.sets_any(wanted):
            lines += [f"    {branch} protocol == {protocol}:", *header.source(wanted, "        ")]
            branch = "elif"
    return "\n".join(lines) + "\n"


class Decoders(NamedTuple):
    """The decoders of one set of wanted keys."""

    ipv4: Decoder
    ipv6: Decoder
    arp: Decoder
    by_ethertype: dict[int, Decoder]


@functools.cache
def decoders(wanted: frozenset[str] | None = None) -> Decoders:
    """Decoders setting only the keys in ``wanted`` (None: every key), compiled once."""
    names = None if wanted is None else set(wanted)
    namespace = {f"unpack_{h.name}": getattr(layouts, h.layout).unpack_from for h in HEADERS}
    exec(compile(_source(names), "<BASE decoders>", "exec"), namespace)
    after_ipv6 = {protocol: namespace[f"decode_{h.name}"] for protocol, h in IPV6_PAYLOADS.items()}
    ipv4 = namespace["decode_ipv4"]
    ipv6 = functools.partial(_ipv6, payloads=after_ipv6)
    arp = namespace["decode_arp"]
    return Decoders(ipv4, ipv6, arp, {ETH_P_IP: ipv4, ETH_P_IPV6: ipv6, ETH_P_ARP: arp})


_IPV6 = layouts.IPV6.unpack_from
_IPV6_FRAGMENT = layouts.IPV6_FRAGMENT.unpack_from
_IPV6_SIZE = layouts.IPV6.size
_IPV6_FRAGMENT_SIZE = layouts.IPV6_FRAGMENT.size
_IPV6_EXTENSIONS = frozenset(
    {IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_AH, IPPROTO_ESP}
)


def _ipv6(event: Event, pkt: bytes, at: int, payloads: dict[int, Decoder]) -> None:
    """The IPv6 header at ``at`` (0), its extension headers, then ``payloads[next header]``."""
    size = len(pkt)
    if size - at < _IPV6_SIZE:
        return
    version_class_flow, payload_len, header, hoplimit, src, dst = _IPV6(pkt, at)
    event["ip.saddr"] = src
    event["ip.daddr"] = dst
    event["ip6.payloadlen"] = payload_len
    event["ip6.priority"] = version_class_flow >> 20 & 0xFF
    event["ip6.flowlabel"] = version_class_flow & 0xFFFFF
    event["ip6.hoplimit"] = hoplimit
    at += _IPV6_SIZE
    while header in _IPV6_EXTENSIONS:
        if header == IPPROTO_FRAGMENT:
            if size - at < _IPV6_FRAGMENT_SIZE:
                break
            following, _reserved, offset_flags, ident = _IPV6_FRAGMENT(pkt, at)
            event["ip6.fragoff"] = offset_flags & 0xFFF8
            event["ip6.fragid"] = ident
            if offset_flags & 0xFFF8:
                # Non-first fragment: what follows is not a header.
                event["ip6.nexthdr"] = following
                return
            header = following
            at += _IPV6_FRAGMENT_SIZE
            continue
        if header == IPPROTO_ESP:
            payloads[IPPROTO_ESP](event, pkt, at)
            break  # the rest is encrypted
        if size - at < 2:
            break
        following, units = pkt[at], pkt[at + 1]
        length = (units + 2) * 4 if header == IPPROTO_AH else (units + 1) * 8
        if size - at < length:
            break
        if header == IPPROTO_AH:
            payloads[IPPROTO_AH](event, pkt, at)
        header = following
        at += length
    else:
        event["ip.protocol"] = header
        event["ip6.nexthdr"] = header
        decode = payloads.get(header)
        if decode is not None:
            decode(event, pkt, at)
        return
    # Stopped on an extension header (ESP, or one cut short).
    event["ip6.nexthdr"] = header
    if header == IPPROTO_ESP:
        event["ip.protocol"] = header


@register
class BASE(BatchPlugin):
    name = "BASE"
    summary = "decode the raw packet into ip/ip6/tcp/udp/icmp/sctp/arp keys"
    input_type = DataType.RAW
    output_type = DataType.PACKET
    input_keys = keys(
        ("raw.pkt", T.RAW),
        ("raw.pktlen", T.UINT32),
        ("oob.family", T.UINT8),
        ("oob.protocol", T.UINT16),
    )
    output_keys = keys(
        ("ip.saddr", T.IPADDR),
        ("ip.daddr", T.IPADDR),
        ("ip.protocol", T.UINT8),
        ("ip.tos", T.UINT8),
        ("ip.ttl", T.UINT8),
        ("ip.totlen", T.UINT16),
        ("ip.ihl", T.UINT8),
        ("ip.csum", T.UINT16),
        ("ip.id", T.UINT16),
        ("ip.fragoff", T.UINT16),
        ("ip6.payloadlen", T.UINT16),
        ("ip6.priority", T.UINT8),
        ("ip6.flowlabel", T.UINT32),
        ("ip6.hoplimit", T.UINT8),
        ("ip6.nexthdr", T.UINT8),
        ("ip6.fragoff", T.UINT16),
        ("ip6.fragid", T.UINT32),
        ("tcp.sport", T.UINT16, "cim:src_port"),
        ("tcp.dport", T.UINT16, "cim:dest_port"),
        ("tcp.seq", T.UINT32),
        ("tcp.ackseq", T.UINT32),
        ("tcp.window", T.UINT16),
        ("tcp.offset", T.UINT8),
        ("tcp.reserved", T.UINT8),
        ("tcp.urg", T.BOOL),
        ("tcp.urgp", T.UINT16),
        ("tcp.ack", T.BOOL),
        ("tcp.psh", T.BOOL),
        ("tcp.rst", T.BOOL),
        ("tcp.syn", T.BOOL),
        ("tcp.fin", T.BOOL),
        ("tcp.res1", T.BOOL),
        ("tcp.res2", T.BOOL),
        ("tcp.csum", T.UINT16),
        ("udp.sport", T.UINT16, "cim:src_port"),
        ("udp.dport", T.UINT16, "cim:dest_port"),
        ("udp.len", T.UINT16),
        ("udp.csum", T.UINT16),
        ("icmp.type", T.UINT8),
        ("icmp.code", T.UINT8),
        ("icmp.echoid", T.UINT16),
        ("icmp.echoseq", T.UINT16),
        ("icmp.gateway", T.IPADDR),
        ("icmp.fragmtu", T.UINT16),
        ("icmp.csum", T.UINT16),
        ("icmpv6.type", T.UINT8),
        ("icmpv6.code", T.UINT8),
        ("icmpv6.echoid", T.UINT16),
        ("icmpv6.echoseq", T.UINT16),
        ("icmpv6.csum", T.UINT16),
        ("ahesp.spi", T.UINT32),
        ("oob.protocol", T.UINT16),
        ("arp.hwtype", T.UINT16),
        ("arp.protocoltype", T.UINT16),
        ("arp.operation", T.UINT16),
        ("arp.shwaddr", T.RAW),
        ("arp.saddr", T.IPADDR),
        ("arp.dhwaddr", T.RAW),
        ("arp.daddr", T.IPADDR),
        ("sctp.sport", T.UINT16, "cim:src_port"),
        ("sctp.dport", T.UINT16, "cim:dest_port"),
        ("sctp.csum", T.UINT32),
    )

    def __init__(self, instance_id: str, settings: Settings, context: Context) -> None:
        super().__init__(instance_id, settings, context)
        self.decoders = decoders()

    def start(self) -> None:
        # Leave out the keys no plugin downstream reads (checksums, header lengths...).
        if self.wanted is not None:
            self.decoders = decoders(frozenset(self.wanted))

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        ipv4, ipv6, arp, by_ethertype = self.decoders
        for event in events:
            # ulogd always outputs its copy of oob.protocol, 0 when the input had none.
            protocol = event.setdefault("oob.protocol", 0)
            pkt = event.get("raw.pkt")
            if pkt is None:
                continue
            family = event.get("oob.family")
            if family == NFPROTO_IPV4:
                ipv4(event, pkt, 0)
            elif family == NFPROTO_IPV6:
                ipv6(event, pkt, 0)
            elif family == NFPROTO_BRIDGE:
                decode = by_ethertype.get(protocol)
                if decode is not None:
                    decode(event, pkt, 0)
            elif family == NFPROTO_ARP:
                arp(event, pkt, 0)
        return events
