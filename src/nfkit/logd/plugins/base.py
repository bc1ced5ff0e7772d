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

Hot path: one ``unpack_from`` per header and direct dict stores, no objects.
"""

from __future__ import annotations

from collections.abc import Callable

from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import BatchPlugin, DataType
from nfkit.logd.registry import register
from nfkit.packet import (
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
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

ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_REDIRECT = 5
ICMP_ECHO = 8
ICMP_PARAMETERPROB = 12
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

_IPV4 = layouts.IPV4.unpack_from
_IPV6 = layouts.IPV6.unpack_from
_IPV6_FRAGMENT = layouts.IPV6_FRAGMENT.unpack_from
_TCP = layouts.TCP.unpack_from
_UDP = layouts.UDP.unpack_from
_ICMP = layouts.ICMP.unpack_from
_SCTP = layouts.SCTP.unpack_from
_AH = layouts.AH.unpack_from
_ESP = layouts.ESP.unpack_from
_ARP = layouts.ARP.unpack_from
_TCP_SIZE = layouts.TCP.size
_UDP_SIZE = layouts.UDP.size
_ICMP_SIZE = layouts.ICMP.size
_SCTP_SIZE = layouts.SCTP.size
_AH_SIZE = layouts.AH.size
_ESP_SIZE = layouts.ESP.size
_ARP_SIZE = layouts.ARP.size
_IPV4_SIZE = layouts.IPV4.size
_IPV6_SIZE = layouts.IPV6.size
_IPV6_FRAGMENT_SIZE = layouts.IPV6_FRAGMENT.size


def _tcp(event: Event, pkt: bytes, at: int) -> None:
    if len(pkt) - at < _TCP_SIZE:
        return
    sport, dport, seq, ack, offset_reserved, flags, window, csum, urgp = _TCP(pkt, at)
    event["tcp.sport"] = sport
    event["tcp.dport"] = dport
    event["tcp.seq"] = seq
    event["tcp.ackseq"] = ack
    event["tcp.offset"] = offset_reserved >> 4
    event["tcp.reserved"] = offset_reserved & 0x0F
    event["tcp.window"] = window
    event["tcp.urg"] = flags >> 5 & 1
    if flags & 0x20:
        event["tcp.urgp"] = urgp
    event["tcp.ack"] = flags >> 4 & 1
    event["tcp.psh"] = flags >> 3 & 1
    event["tcp.rst"] = flags >> 2 & 1
    event["tcp.syn"] = flags >> 1 & 1
    event["tcp.fin"] = flags & 1
    # glibc's tcphdr bit-fields: res1 = the 4 reserved bits, res2 = ECE and CWR;
    # ulogd stores the raw field values in its BOOL keys (res2 = 3 for ECE+CWR).
    event["tcp.res1"] = offset_reserved & 0x0F
    event["tcp.res2"] = flags >> 6
    event["tcp.csum"] = csum


def _udp(event: Event, pkt: bytes, at: int) -> None:
    if len(pkt) - at < _UDP_SIZE:
        return
    sport, dport, length, csum = _UDP(pkt, at)
    event["udp.sport"] = sport
    event["udp.dport"] = dport
    event["udp.len"] = length
    event["udp.csum"] = csum


def _sctp(event: Event, pkt: bytes, at: int) -> None:
    if len(pkt) - at < _SCTP_SIZE:
        return
    sport, dport, _vtag, csum = _SCTP(pkt, at)
    event["sctp.sport"] = sport
    event["sctp.dport"] = dport
    event["sctp.csum"] = csum


def _icmp(event: Event, pkt: bytes, at: int) -> None:
    if len(pkt) - at < _ICMP_SIZE:
        return
    icmp_type, code, csum, rest = _ICMP(pkt, at)
    event["icmp.type"] = icmp_type
    event["icmp.code"] = code
    if icmp_type in (ICMP_ECHO, ICMP_ECHOREPLY):
        event["icmp.echoid"] = rest >> 16
        event["icmp.echoseq"] = rest & 0xFFFF
    elif icmp_type in (ICMP_REDIRECT, ICMP_PARAMETERPROB):
        event["icmp.gateway"] = rest.to_bytes(4, "big")
    elif icmp_type == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED:
        event["icmp.fragmtu"] = rest & 0xFFFF
    # ulogd stores the checksum without ntohs(): its bytes as a little-endian integer.
    event["icmp.csum"] = (csum & 0xFF) << 8 | csum >> 8


def _icmpv6(event: Event, pkt: bytes, at: int) -> None:
    if len(pkt) - at < _ICMP_SIZE:
        return
    icmp_type, code, csum, rest = _ICMP(pkt, at)
    event["icmpv6.type"] = icmp_type
    event["icmpv6.code"] = code
    if icmp_type in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY):
        event["icmpv6.echoid"] = rest >> 16
        event["icmpv6.echoseq"] = rest & 0xFFFF
    event["icmpv6.csum"] = (csum & 0xFF) << 8 | csum >> 8


def _ah(event: Event, pkt: bytes, at: int) -> None:
    if len(pkt) - at >= _AH_SIZE:
        event["ahesp.spi"] = _AH(pkt, at)[3]


def _esp(event: Event, pkt: bytes, at: int) -> None:
    if len(pkt) - at >= _ESP_SIZE:
        event["ahesp.spi"] = _ESP(pkt, at)[0]


_IPV4_L4 = {
    IPPROTO_TCP: _tcp,
    IPPROTO_UDP: _udp,
    IPPROTO_ICMP: _icmp,
    IPPROTO_SCTP: _sctp,
    IPPROTO_AH: _ah,
    IPPROTO_ESP: _esp,
}
_IPV6_L4 = {
    IPPROTO_TCP: _tcp,
    IPPROTO_UDP: _udp,
    IPPROTO_ICMPV6: _icmpv6,
    IPPROTO_SCTP: _sctp,
}
_IPV6_EXTENSIONS = frozenset(
    {IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_AH, IPPROTO_ESP}
)


def _ipv4(event: Event, pkt: bytes) -> None:
    if len(pkt) < _IPV4_SIZE:
        return
    version_ihl, tos, totlen, ident, fragoff, ttl, proto, csum, src, dst = _IPV4(pkt)
    ihl = version_ihl & 0x0F
    event["ip.saddr"] = src
    event["ip.daddr"] = dst
    event["ip.protocol"] = proto
    event["ip.tos"] = tos
    event["ip.ttl"] = ttl
    event["ip.totlen"] = totlen
    event["ip.ihl"] = ihl
    event["ip.csum"] = csum
    event["ip.id"] = ident
    event["ip.fragoff"] = fragoff
    # A non-first fragment carries the middle of a datagram, not an L4 header.
    if fragoff & 0x1FFF or ihl < 5:
        return
    decode_l4 = _IPV4_L4.get(proto)
    if decode_l4 is not None:
        decode_l4(event, pkt, ihl * 4)


def _ipv6(event: Event, pkt: bytes) -> None:
    size = len(pkt)
    if size < _IPV6_SIZE:
        return
    version_class_flow, payload_len, header, hoplimit, src, dst = _IPV6(pkt)
    event["ip.saddr"] = src
    event["ip.daddr"] = dst
    event["ip6.payloadlen"] = payload_len
    event["ip6.priority"] = version_class_flow >> 20 & 0xFF
    event["ip6.flowlabel"] = version_class_flow & 0xFFFFF
    event["ip6.hoplimit"] = hoplimit
    at = _IPV6_SIZE
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
            _esp(event, pkt, at)
            break  # the rest is encrypted
        if size - at < 2:
            break
        following, units = pkt[at], pkt[at + 1]
        length = (units + 2) * 4 if header == IPPROTO_AH else (units + 1) * 8
        if size - at < length:
            break
        if header == IPPROTO_AH:
            _ah(event, pkt, at)
        header = following
        at += length
    else:
        event["ip.protocol"] = header
        event["ip6.nexthdr"] = header
        decode_l4 = _IPV6_L4.get(header)
        if decode_l4 is not None:
            decode_l4(event, pkt, at)
        return
    # Stopped on an extension header (ESP, or one cut short).
    event["ip6.nexthdr"] = header
    if header == IPPROTO_ESP:
        event["ip.protocol"] = header


def _arp(event: Event, pkt: bytes) -> None:
    if len(pkt) < _ARP_SIZE:
        return
    hwtype, ptype, _hlen, _plen, operation, sha, spa, tha, tpa = _ARP(pkt)
    event["arp.hwtype"] = hwtype
    event["arp.protocoltype"] = ptype
    event["arp.operation"] = operation
    event["arp.shwaddr"] = sha
    event["arp.saddr"] = spa
    event["arp.dhwaddr"] = tha
    event["arp.daddr"] = tpa


_BY_ETHERTYPE = {ETH_P_IP: _ipv4, ETH_P_IPV6: _ipv6, ETH_P_ARP: _arp}


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

    def interp_batch(self, events: list[Event], finish: Callable[[int], None]) -> list[Event]:
        for event in events:
            # ulogd always outputs its copy of oob.protocol, 0 when the input had none.
            protocol = event.setdefault("oob.protocol", 0)
            pkt = event.get("raw.pkt")
            if pkt is None:
                continue
            family = event.get("oob.family")
            if family == NFPROTO_IPV4:
                _ipv4(event, pkt)
            elif family == NFPROTO_IPV6:
                _ipv6(event, pkt)
            elif family == NFPROTO_BRIDGE:
                decode = _BY_ETHERTYPE.get(protocol)
                if decode is not None:
                    decode(event, pkt)
            elif family == NFPROTO_ARP:
                _arp(event, pkt)
        return events
