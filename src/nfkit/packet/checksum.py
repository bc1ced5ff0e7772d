"""Internet checksums (RFC 1071) of IPv4, TCP, UDP, UDP-Lite, ICMP and ICMPv6.

The sum runs in C: read as one big-endian integer, a buffer is congruent modulo 0xFFFF to
the sum of its 16-bit words (2**16 == 1 mod 0xFFFF), and the ones' complement sum is exactly
that residue, except that only all-zero input sums to 0 (otherwise a multiple of 0xFFFF
sums to 0xFFFF).

The per-protocol functions return the value the checksum field must hold, whatever it holds
now, so comparing the result with the field verifies a packet. SCTP's CRC32c is not covered.
"""

from nfkit.packet.decoder import Packet, decode
from nfkit.packet.header import Buffer
from nfkit.packet.headers import (
    ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    TCP,
    UDP,
    ICMPv6,
    IPv4,
    UDPLite,
)


def _words_value(data: Buffer) -> int:
    """``data`` as an integer whose residue mod 0xFFFF is the sum of its 16-bit words."""
    value = int.from_bytes(data, "big")
    # An odd last byte is the high half of a word padded with zero.
    return value << 8 if len(data) & 1 else value


def _without_field(data: Buffer, offset: int) -> int:
    """:func:`_words_value` of ``data`` with the 16-bit field at even ``offset`` zeroed."""
    value = _words_value(data)
    if offset >= len(data):
        return value
    # Of a field cut by the end of data, the byte present is the high half of a padded word.
    field = int.from_bytes(bytes(data[offset : offset + 2]).ljust(2, b"\0"), "big")
    padded_length = len(data) + (len(data) & 1)
    return value - (field << 8 * (padded_length - offset - 2))


def _finish(total: int) -> int:
    """The checksum of words whose sum is congruent to ``total`` (0 only if all are zero)."""
    if total == 0:
        return 0xFFFF
    return 0xFFFF - (total % 0xFFFF or 0xFFFF)


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """RFC 1071 checksum of ``data``, adding ``initial`` (e.g. a :func:`pseudo_header_sum`).

    Zero the checksum field first, or get 0 back from data whose checksum is right.
    """
    return _finish(initial + _words_value(data))


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Partial sum of the IPv4 or IPv6 pseudo-header (RFC 793, RFC 8200 section 8.1).

    The two layouts differ but sum alike: the 32-bit IPv6 length and next header sum to
    ``length + protocol`` modulo 0xFFFF, just like IPv4's 16-bit fields.
    """
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + protocol + length


def ipv4_header_checksum(header: Buffer) -> int:
    """Checksum of an IPv4 header, options included (pass exactly ``header_length`` bytes)."""
    return _finish(_without_field(header, 10))


def icmp_checksum(message: Buffer) -> int:
    """Checksum of an ICMP (IPv4) message: header and data, no pseudo-header."""
    return _finish(_without_field(message, 2))


def tcp_checksum(src: bytes, dst: bytes, segment: Buffer) -> int:
    """Checksum of a TCP segment between IPv4 or IPv6 addresses ``src`` and ``dst``."""
    pseudo = pseudo_header_sum(src, dst, IPPROTO_TCP, len(segment))
    return _finish(pseudo + _without_field(segment, 16))


def udp_checksum(src: bytes, dst: bytes, datagram: Buffer) -> int:
    """Checksum of a UDP datagram; a computed 0 is sent as 0xFFFF (0 means "none")."""
    pseudo = pseudo_header_sum(src, dst, IPPROTO_UDP, len(datagram))
    return _finish(pseudo + _without_field(datagram, 6)) or 0xFFFF


def udplite_checksum(src: bytes, dst: bytes, datagram: Buffer) -> int:
    """Checksum of a UDP-Lite datagram over its coverage (RFC 3828); never 0."""
    coverage = int.from_bytes(datagram[4:6], "big")
    if coverage == 0 or coverage > len(datagram):  # 0 covers it all; too large is invalid
        coverage = len(datagram)
    pseudo = pseudo_header_sum(src, dst, IPPROTO_UDPLITE, len(datagram))
    return _finish(pseudo + _without_field(datagram[:coverage], 6)) or 0xFFFF


def icmpv6_checksum(src: bytes, dst: bytes, message: Buffer) -> int:
    """Checksum of an ICMPv6 message, pseudo-header included."""
    pseudo = pseudo_header_sum(src, dst, IPPROTO_ICMPV6, len(message))
    return _finish(pseudo + _without_field(message, 2))


def fix_checksums(data: Buffer, family: int, hw_protocol: int = 0) -> bytes:
    """The whole packet ``data`` with its IPv4 header and L4 checksums recomputed.

    ``family`` and ``hw_protocol`` are as for :func:`~nfkit.packet.decoder.decode`. The L4
    checksum is left alone when it cannot be computed (a fragment, a truncated packet, a
    protocol other than TCP, UDP, UDP-Lite, ICMP and ICMPv6) and for UDP over IPv4 sent
    without checksum (0). With an IPv6 routing header the pseudo-header should hold the
    final destination; this uses the IPv6 header's.
    """
    packet = decode(data, family, hw_protocol)
    fixed = bytearray(data)
    ip = packet.ip
    if isinstance(ip, IPv4) and 20 <= ip.header_length <= len(fixed):
        fixed[10:12] = ipv4_header_checksum(fixed[: ip.header_length]).to_bytes(2, "big")
    l4_checksum = _l4_checksum(packet, fixed)
    if l4_checksum is not None:
        offset, value = l4_checksum
        fixed[offset : offset + 2] = value.to_bytes(2, "big")
    return bytes(fixed)


def _l4_checksum(packet: Packet, data: bytearray) -> tuple[int, int] | None:
    """Offset in ``data`` of the L4 checksum and its right value; None to leave it alone."""
    ip, l4, start = packet.ip, packet.l4, packet.l4_offset
    if ip is None or l4 is None or start is None or packet.payload_offset is None:
        return None
    if packet.more_fragments or packet.truncated:
        return None
    segment = data[start : packet.payload_offset + len(packet.payload)]
    if isinstance(l4, TCP):
        return start + 16, tcp_checksum(ip.src, ip.dst, segment)
    if isinstance(l4, UDPLite):
        return start + 6, udplite_checksum(ip.src, ip.dst, segment)
    if isinstance(l4, UDP):
        if l4.checksum == 0 and isinstance(ip, IPv4):
            return None
        return start + 6, udp_checksum(ip.src, ip.dst, segment)
    if isinstance(l4, ICMPv6):
        return start + 2, icmpv6_checksum(ip.src, ip.dst, segment)
    if isinstance(l4, ICMP):
        return start + 2, icmp_checksum(segment)
    return None
