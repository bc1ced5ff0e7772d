"""Rewriting packets for a verdict's ``payload``.

The kernel copies a new payload into the packet as it is and fixes no
checksum (the packet is then CHECKSUM_NONE), so the IPv4 header checksum,
the IP and UDP lengths and the L4 checksum must be right::

    data = with_l4_payload(packet.payload, packet.family, b"new bytes")
    return Verdict.accept(payload=data)

or, after changing bytes in place, ``fix_checksums(data, packet.family)``.

Changing the length of a TCP segment desynchronises the connection: the
kernel shifts sequence numbers only for NATed connections and only with the
conntrack glue. A packet that arrived truncated (``packet.truncated``)
cannot be given a new payload (the queue refuses it).
"""

from __future__ import annotations

from nfkit.packet import IPPROTO_UDP, IPv4, IPv6, decode, fix_checksums
from nfkit.packet.header import Buffer

__all__ = ["fix_checksums", "with_l4_payload"]


def with_l4_payload(data: Buffer, family: int, payload: bytes, hw_protocol: int = 0) -> bytes:
    """The packet ``data`` with the bytes after its L4 header replaced by ``payload``.

    The IPv4 total length or IPv6 payload length, the UDP length, the IPv4
    header checksum and the TCP/UDP/UDP-Lite/ICMP/ICMPv6 checksum are
    recomputed. ``family`` and ``hw_protocol`` are the queued packet's.

    Raises:
        ValueError: no complete L4 header (not IP, a later fragment, a
            truncated packet), or the result would exceed 65535 bytes.
    """
    decoded = decode(data, family, hw_protocol)
    ip, start = decoded.ip, decoded.payload_offset
    if ip is None or start is None or decoded.truncated or decoded.fragment_offset:
        raise ValueError("the packet has no complete L4 header whose payload could be replaced")
    packet = bytearray(data[:start])
    packet += payload
    if len(packet) > 0xFFFF:
        raise ValueError(f"a packet of {len(packet)} bytes is too long for IP")
    if isinstance(ip, IPv4):
        packet[2:4] = len(packet).to_bytes(2, "big")
    elif isinstance(ip, IPv6):
        packet[4:6] = (len(packet) - 40).to_bytes(2, "big")
    l4_offset = decoded.l4_offset
    if decoded.l4_protocol == IPPROTO_UDP and l4_offset is not None:
        packet[l4_offset + 4 : l4_offset + 6] = (len(packet) - l4_offset).to_bytes(2, "big")
    return fix_checksums(packet, family, hw_protocol)
