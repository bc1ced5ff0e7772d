"""Build valid packets, checksums included, for tests and traffic tools.

Addresses are text (``"192.0.2.1"``, ``"2001:db8::1"``) or packed bytes. L4 builders return
the L4 segment; wrap it with :func:`build_ipv4` or :func:`build_ipv6` using the same
addresses, since TCP, UDP and ICMPv6 checksums cover them::

    segment = build_udp(1234, 53, b"query", "192.0.2.1", "192.0.2.2")
    packet = build_ipv4("192.0.2.1", "192.0.2.2", IPPROTO_UDP, segment)
"""

import ipaddress

from nfkit.packet import layouts
from nfkit.packet.checksum import (
    icmp_checksum,
    icmpv6_checksum,
    ipv4_header_checksum,
    tcp_checksum,
    udp_checksum,
)
from nfkit.packet.headers import (
    ICMP_ECHO,
    ICMP_ECHOREPLY,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
)

Address = str | bytes



def _packed(address: Address, size: int | None = None) -> bytes:
    """``address`` as 4 or 16 bytes; ``size`` demands one of them."""
    packed = address if isinstance(address, bytes) else ipaddress.ip_address(address).packed
    if len(packed) not in (4, 16) or size not in (None, len(packed)):
        expected = {4: "an IPv4", 16: "an IPv6"}.get(size or 0, "an IPv4 or IPv6")
        raise ValueError(f"{address!r} is not {expected} address")
    return packed


def _packed_pair(src: Address, dst: Address) -> tuple[bytes, bytes]:
    """Both addresses packed, of the same family."""
    src_packed = _packed(src)
    return src_packed, _packed(dst, len(src_packed))


def build_ipv4(
    src: Address,
    dst: Address,
    proto: int,
    payload: bytes,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    flags_frag: int = 0,
) -> bytes:
    """An IPv4 packet without options carrying ``payload`` as protocol ``proto``."""
    fields = [0x45, tos, 20 + len(payload), ident, flags_frag, ttl, proto, 0]
    addresses = (_packed(src, 4), _packed(dst, 4))
    checksum = ipv4_header_checksum(layouts.IPV4.pack(*fields, *addresses))
    fields[-1] = checksum
    return layouts.IPV4.pack(*fields, *addresses) + payload


def build_ipv6(
    src: Address,
    dst: Address,
    next_header: int,
    payload: bytes,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """An IPv6 packet carrying ``payload`` (extension headers included) as ``next_header``."""
    version_class_flow = 6 << 28 | traffic_class << 20 | flow_label
    header = layouts.IPV6.pack(
        version_class_flow,
        len(payload),
        next_header,
        hop_limit,
        _packed(src, 16),
        _packed(dst, 16),
    )
    return header + payload


def build_tcp(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes,
    src: Address,
    dst: Address,
    *,
    options: bytes = b"",
    urgent_pointer: int = 0,
) -> bytes:
    """A TCP segment; ``options`` are padded with zeros (end of options) to 4 bytes."""
    options += bytes(-len(options) % 4)
    data_offset = (20 + len(options)) // 4
    fields = (sport, dport, seq, ack, data_offset << 4, flags, window)
    segment = layouts.TCP.pack(*fields, 0, urgent_pointer) + options + payload
    checksum = tcp_checksum(*_packed_pair(src, dst), segment)
    return layouts.TCP.pack(*fields, checksum, urgent_pointer) + options + payload


def build_udp(sport: int, dport: int, payload: bytes, src: Address, dst: Address) -> bytes:
    """A UDP datagram."""
    length = 8 + len(payload)
    datagram = layouts.UDP.pack(sport, dport, length, 0) + payload
    checksum = udp_checksum(*_packed_pair(src, dst), datagram)
    return layouts.UDP.pack(sport, dport, length, checksum) + payload


def build_icmp_echo(ident: int, seq: int, payload: bytes = b"", *, reply: bool = False) -> bytes:
    """An ICMP echo request, or reply."""
    icmp_type = ICMP_ECHOREPLY if reply else ICMP_ECHO
    rest = ident << 16 | seq
    checksum = icmp_checksum(layouts.ICMP.pack(icmp_type, 0, 0, rest) + payload)
    return layouts.ICMP.pack(icmp_type, 0, checksum, rest) + payload


def build_icmpv6_echo(
    ident: int, seq: int, payload: bytes, src: Address, dst: Address, *, reply: bool = False
) -> bytes:
    """An ICMPv6 echo request, or reply."""
    icmp_type = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
    rest = ident << 16 | seq
    message = layouts.ICMPV6.pack(icmp_type, 0, 0, rest) + payload
    checksum = icmpv6_checksum(_packed(src, 16), _packed(dst, 16), message)
    return layouts.ICMPV6.pack(icmp_type, 0, checksum, rest) + payload
