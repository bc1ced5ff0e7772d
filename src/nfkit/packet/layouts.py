"""Precompiled ``struct.Struct`` of each header, for hot loops that want plain tuples.

These are the very objects the header classes expose as ``STRUCT``::

    from nfkit.packet import layouts

    version_ihl, tos, total_length, *_ = layouts.IPV4.unpack_from(buf, offset)

The comment above each constant gives the order of the tuple it unpacks to. Fields are in
network byte order; unpacking never validates anything, and raises ``struct.error`` when the
buffer is too short, so check ``.size`` first.
"""

from nfkit.packet import headers

# (dst, src, ethertype)
ETHERNET = headers.Ethernet.STRUCT
# (tci, ethertype)
VLAN = headers.VLAN.STRUCT
# (hwtype, ptype, hlen, plen, op, sha, spa, tha, tpa)
ARP = headers.ARP.STRUCT
# (version_ihl, tos, total_length, ident, flags_frag, ttl, protocol, checksum, src, dst)
IPV4 = headers.IPv4.STRUCT
# (version_class_flow, payload_length, next_header, hop_limit, src, dst)
IPV6 = headers.IPv6.STRUCT
# (next_header, length): hop-by-hop and destination options
IPV6_OPTIONS = headers.IPv6Options.STRUCT
# (next_header, length, routing_type, segments_left)
IPV6_ROUTING = headers.IPv6Routing.STRUCT
# (next_header, reserved, offset_flags, ident)
IPV6_FRAGMENT = headers.IPv6Fragment.STRUCT
# (next_header, length, reserved, spi, seq)
AH = headers.AH.STRUCT
# (spi, seq)
ESP = headers.ESP.STRUCT
# (sport, dport, seq, ack, offset_reserved, flags, window, checksum, urgent_pointer)
TCP = headers.TCP.STRUCT
# (sport, dport, length, checksum): UDP and UDP-Lite
UDP = headers.UDP.STRUCT
# (type, code, checksum, rest): ICMP and ICMPv6
ICMP = headers.ICMP.STRUCT
ICMPV6 = headers.ICMPv6.STRUCT
# (sport, dport, vtag, checksum)
SCTP = headers.SCTP.STRUCT
