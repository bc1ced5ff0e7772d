"""Tests of nfkit.packet: headers, decode, checksums and builders."""

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfkit.packet import (
    AH,
    ARP,
    ESP,
    ICMP,
    NFPROTO_ARP,
    NFPROTO_BRIDGE,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
    SCTP,
    TCP,
    UDP,
    VLAN,
    Ethernet,
    Header,
    ICMPv6,
    IPv4,
    IPv6,
    IPv6DestOptions,
    IPv6Fragment,
    IPv6HopByHop,
    IPv6Options,
    IPv6Routing,
    TCPFlag,
    UDPLite,
    build_icmp_echo,
    build_icmpv6_echo,
    build_ipv4,
    build_ipv6,
    build_tcp,
    build_udp,
    decode,
    fix_checksums,
    icmp_checksum,
    icmpv6_checksum,
    internet_checksum,
    ipv4_header_checksum,
    layouts,
    tcp_checksum,
    udp_checksum,
    udplite_checksum,
)
from nfkit.packet.header import HeaderMeta

A4, B4 = "192.0.2.1", "198.51.100.7"
A4_PACKED, B4_PACKED = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])
A6, B6 = "2001:db8::1", "2001:db8:ffff::abcd"
A6_PACKED = bytes.fromhex("20010db8000000000000000000000001")
B6_PACKED = bytes.fromhex("20010db8ffff0000000000000000abcd")

BuildIP = Callable[[str, str, int, bytes], bytes]
IP_VERSIONS: list[tuple[int, BuildIP, str, str]] = [
    (NFPROTO_IPV4, build_ipv4, A4, B4),
    (NFPROTO_IPV6, build_ipv6, A6, B6),
]

ALL_HEADERS: list[type[Header]] = [
    Ethernet,
    VLAN,
    ARP,
    IPv4,
    IPv6,
    IPv6Options,
    IPv6HopByHop,
    IPv6DestOptions,
    IPv6Routing,
    IPv6Fragment,
    AH,
    ESP,
    TCP,
    UDP,
    UDPLite,
    ICMP,
    ICMPv6,
    SCTP,
]


# --- independent references ------------------------------------------------------------------


def reference_checksum(data: bytes) -> int:
    """RFC 1071 the slow way: 16-bit words, end-around carry after every addition."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def reference_pseudo_header(src: bytes, dst: bytes, protocol: int, length: int) -> bytes:
    """The pseudo-header itself, laid out as the RFCs draw it."""
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, protocol, length)
    return src + dst + struct.pack("!I3xB", length, protocol)


def zero_field(data: bytes, offset: int) -> bytes:
    return data[:offset] + b"\0\0" + data[offset + 2 :]


def reference_l4_checksum(src: bytes, dst: bytes, protocol: int, segment: bytes) -> int:
    field = {6: 16, 17: 6, 58: 2}[protocol]
    pseudo = reference_pseudo_header(src, dst, protocol, len(segment))
    return reference_checksum(pseudo + zero_field(segment, field))


# --- test packets ----------------------------------------------------------------------------


def hop_by_hop(next_header: int) -> bytes:
    return bytes([next_header, 0, 1, 4, 0, 0, 0, 0])  # one PadN option: 8 bytes


def routing(next_header: int) -> bytes:
    return bytes([next_header, 2, 4, 1]) + bytes(20)  # (2 + 1) * 8 bytes


def dest_options(next_header: int) -> bytes:
    return bytes([next_header, 1, 1, 12]) + bytes(12)  # (1 + 1) * 8 bytes


def fragment(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    return IPv6Fragment(next_header, 0, offset | more, ident).pack()


def auth_header(next_header: int, spi: int) -> bytes:
    return AH(next_header, 4, 0, spi, 1).pack() + bytes(12)  # (4 + 2) * 4 bytes, ICV included


def ipv4_tcp() -> bytes:
    segment = build_tcp(
        40000,
        80,
        1000,
        2000,
        TCPFlag.SYN | TCPFlag.ACK,
        65535,
        b"hello",
        A4,
        B4,
        options=b"\x02\x04\x05\xb4",
    )
    return build_ipv4(A4, B4, 6, segment)


def ipv4_options_udp() -> bytes:
    """IPv4 with 4 bytes of options (router alert) and a UDP datagram."""
    udp = build_udp(5353, 53, b"query", A4, B4)
    header = IPv4(0x46, 0, 24 + len(udp), 1, 0, 64, 17, 0, A4_PACKED, B4_PACKED).pack()
    return fix_checksums(header + b"\x94\x04\x00\x00" + udp, NFPROTO_IPV4)


def ipv6_chain_tcp() -> bytes:
    tcp = build_tcp(1, 2, 3, 4, TCPFlag.PSH | TCPFlag.ACK, 100, b"data", A6, B6)
    chain = hop_by_hop(43) + routing(60) + dest_options(6)
    return build_ipv6(A6, B6, 0, chain + tcp)


def ipv6_ah_udp() -> bytes:
    udp = build_udp(500, 4500, b"ike", A6, B6)
    return build_ipv6(A6, B6, 51, auth_header(17, 0x1234) + udp)


def ipv6_first_fragment_udp() -> bytes:
    udp = build_udp(1000, 2000, b"first part", A6, B6)
    return build_ipv6(A6, B6, 44, fragment(17, 0, True, 0xCAFE) + udp)


def sctp_packet(build_ip: BuildIP, src: str, dst: str) -> bytes:
    return build_ip(src, dst, 132, SCTP(5000, 5001, 0xDEADBEEF, 0x12345678).pack() + b"chunk")


def arp_request() -> bytes:
    return ARP(1, 0x0800, 6, 4, 1, b"\x02" * 6, A4_PACKED, bytes(6), B4_PACKED).pack()


VALID_PACKETS: list[tuple[str, bytes, int]] = [
    ("ipv4-tcp", ipv4_tcp(), NFPROTO_IPV4),
    ("ipv4-options-udp", ipv4_options_udp(), NFPROTO_IPV4),
    ("ipv4-icmp", build_ipv4(A4, B4, 1, build_icmp_echo(1, 2, b"ping")), NFPROTO_IPV4),
    ("ipv4-sctp", sctp_packet(build_ipv4, A4, B4), NFPROTO_IPV4),
    ("ipv4-ah", build_ipv4(A4, B4, 51, auth_header(6, 99) + b"inner"), NFPROTO_IPV4),
    ("ipv4-esp", build_ipv4(A4, B4, 50, ESP(7, 8).pack() + b"secret"), NFPROTO_IPV4),
    ("ipv4-gre", build_ipv4(A4, B4, 47, b"\0\0\x08\0"), NFPROTO_IPV4),
    ("ipv6-chain-tcp", ipv6_chain_tcp(), NFPROTO_IPV6),
    ("ipv6-ah-udp", ipv6_ah_udp(), NFPROTO_IPV6),
    ("ipv6-fragment-udp", ipv6_first_fragment_udp(), NFPROTO_IPV6),
    ("ipv6-icmpv6", build_ipv6(A6, B6, 58, build_icmpv6_echo(1, 2, b"", A6, B6)), NFPROTO_IPV6),
    ("ipv6-sctp", sctp_packet(build_ipv6, A6, B6), NFPROTO_IPV6),
    ("ipv6-esp", build_ipv6(A6, B6, 50, ESP(7, 8).pack() + b"secret"), NFPROTO_IPV6),
    ("arp", arp_request(), NFPROTO_ARP),
]

# Checked with `tshark -V -o ip.check_checksum:TRUE -o tcp.check_checksum:TRUE
# -o udp.check_checksum:TRUE` (raw IP pcap): every checksum "[correct]".
TSHARK_VERIFIED: list[tuple[str, int]] = [
    (  # IPv4 TCP SYN/ACK, MSS + NOP options, "hello world"
        "4500003b0000000040068e81c0000201c63364079c400050000003e8000007d07012ffff60b40000020405"
        "b40100000068656c6c6f20776f726c64",
        NFPROTO_IPV4,
    ),
    ("4510001f004d000040118e35c0000201c633640714e90035000b2b196f6464", NFPROTO_IPV4),  # UDP
    (  # ICMP echo request, odd length
        "450000250000000040018e9cc0000201c633640708000d311234000770696e676461746121",
        NFPROTO_IPV4,
    ),
    (  # IPv6 TCP PSH/ACK
        "600000000035064020010db800000000000000000000000120010db8ffff0000000000000000abcd0001"
        "0002000000030000000450180064a8750000787878787878787878787878787878787878787878787878"
        "787878787878787878",
        NFPROTO_IPV6,
    ),
    (  # IPv6 UDP with traffic class and flow label
        "6b812345000d114020010db800000000000000000000000120010db8ffff0000000000000000abcd03e8"
        "07d0000dc3146162636465",
        NFPROTO_IPV6,
    ),
    (  # ICMPv6 echo request
        "60000000000d3a4020010db800000000000000000000000120010db8ffff0000000000000000abcd8000"
        "63930009000a70696e6736",
        NFPROTO_IPV6,
    ),
    (  # UDP-Lite over IPv4, coverage 8 (checked with -o udplite.check_checksum:TRUE)
        "450000270000000040888e13c0000201c63364071b581b590008dc6e686561646572206f6e6c79",
        NFPROTO_IPV4,
    ),
    (  # UDP-Lite over IPv6, coverage 12
        "600000000013884020010db800000000000000000000000120010db8ffff0000000000000000abcd1b58"
        "1b59000cde907061727469616c20636f76",
        NFPROTO_IPV6,
    ),
]


# --- the Header machinery --------------------------------------------------------------------


def test_class_creation_precomputes_layout() -> None:
    assert IPv4.STRUCT.format == "!BBHHHBBH4s4s"
    assert IPv4.SIZE == 20
    assert IPv4.__dict__["__slots__"] == IPv4.FIELDS
    assert IPv4.FIELDS[:3] == ("version_ihl", "tos", "total_length")
    expected_sizes: dict[type[Header], int] = {Ethernet: 14, VLAN: 4, ARP: 28, IPv6: 40}
    expected_sizes |= {
        IPv6Fragment: 8,
        AH: 12,
        ESP: 8,
        TCP: 20,
        UDP: 8,
        ICMP: 8,
        ICMPv6: 8,
        SCTP: 12,
        IPv6Routing: 4,
    }
    for header_class, size in expected_sizes.items():
        assert header_class.SIZE == size == header_class.STRUCT.size


def test_layouts_are_the_header_structs() -> None:
    assert layouts.IPV4 is IPv4.STRUCT
    assert layouts.IPV6 is IPv6.STRUCT
    assert layouts.TCP is TCP.STRUCT
    assert layouts.UDP is UDP.STRUCT is UDPLite.STRUCT
    assert layouts.ICMP is ICMP.STRUCT
    assert layouts.IPV4.unpack_from(bytes.fromhex(TSHARK_VERIFIED[1][0]))[6] == 17


def test_subclass_without_hdr_keeps_parent_layout() -> None:
    assert UDPLite.FIELDS == UDP.FIELDS
    assert UDPLite.__dict__["__slots__"] == ()
    assert UDPLite(1, 2, 8, 0).checksum_coverage == 8


def test_headers_have_no_instance_dict() -> None:
    header = UDP(1, 2, 8, 0)
    with pytest.raises(AttributeError):
        header.bogus = 1  # type: ignore[attr-defined]


def test_metaclass_rejects_annotations_that_disagree_with_hdr() -> None:
    with pytest.raises(TypeError, match="annotations"):

        class Swapped(Header):
            __hdr__ = (("a", "B"), ("b", "B"))
            b: int
            a: int

    with pytest.raises(TypeError, match="annotations"):

        class Unannotated(Header):
            __hdr__ = (("a", "B"),)


@pytest.mark.parametrize("names", [("class",), ("_private",), ("not valid",), ("a", "a")])
def test_metaclass_rejects_bad_field_names(names: tuple[str, ...]) -> None:
    namespace: dict[str, Any] = {"__hdr__": tuple((name, "B") for name in names)}
    with pytest.raises(TypeError, match="field name"):
        HeaderMeta("Bad", (Header,), namespace)


def test_keyword_construction_and_equality() -> None:
    by_keyword = UDP(sport=1, dport=2, length=8, checksum=3)
    assert by_keyword == UDP(1, 2, 8, 3)
    assert by_keyword != UDP(1, 2, 8, 4)
    assert by_keyword != UDPLite(1, 2, 8, 3)
    assert by_keyword.values() == (1, 2, 8, 3)
    with pytest.raises(TypeError):
        UDP(1, 2, 8)  # type: ignore[call-arg]


@pytest.mark.parametrize("header_class", ALL_HEADERS, ids=lambda cls: cls.__name__)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_header_round_trip(header_class: type[Header], data: st.DataObject) -> None:
    wire = data.draw(st.binary(min_size=header_class.SIZE, max_size=header_class.SIZE))
    prefix = data.draw(st.binary(max_size=5))
    header = header_class.unpack_from(prefix + wire + b"trailer", len(prefix))
    assert header is not None
    assert header.pack() == wire
    assert header_class(*header.values()) == header
    assert header_class.unpack_from(memoryview(wire)) == header
    assert header_class.unpack_from(bytearray(wire)) == header
    assert repr(header).startswith(header_class.__name__ + "(")


@pytest.mark.parametrize("header_class", ALL_HEADERS, ids=lambda cls: cls.__name__)
def test_unpack_from_short_buffer_returns_none(header_class: type[Header]) -> None:
    wire = bytes(header_class.SIZE)
    for cut in range(header_class.SIZE):
        assert header_class.unpack_from(wire[:cut]) is None
    assert header_class.unpack_from(wire, 1) is None
    assert header_class.unpack_from(wire, -1) is None
    assert header_class.unpack_from(wire, len(wire) + 10) is None


def test_ipv4_sub_byte_fields() -> None:
    ip = IPv4(0x46, 0xB8, 100, 7, 0x2000 | 185, 3, 6, 0, A4_PACKED, B4_PACKED)
    assert (ip.version, ip.ihl, ip.header_length, ip.options_length) == (4, 6, 24, 4)
    assert ip.more_fragments and not ip.dont_fragment
    assert ip.fragment_offset == 185 * 8
    assert IPv4(0x45, 0, 20, 0, 0x4000, 64, 6, 0, A4_PACKED, B4_PACKED).dont_fragment


def test_ipv6_sub_byte_fields() -> None:
    ip = IPv6(6 << 28 | 0xB8 << 20 | 0xABCDE, 0, 59, 64, A6_PACKED, B6_PACKED)
    assert (ip.version, ip.traffic_class, ip.flow_label) == (6, 0xB8, 0xABCDE)


def test_tcp_sub_byte_fields() -> None:
    tcp = TCP(1, 2, 3, 4, 0x8F, TCPFlag.SYN | TCPFlag.ECE | TCPFlag.CWR, 5, 6, 7)
    assert (tcp.data_offset, tcp.header_length, tcp.reserved) == (8, 32, 0xF)
    assert tcp.flags & TCPFlag.SYN
    assert not tcp.flags & TCPFlag.ACK
    assert tcp.flag_names == "SYN|ECE|CWR"
    assert TCP(1, 2, 3, 4, 0x50, 0, 5, 6, 7).flag_names == ""
    assert [flag.value for flag in TCPFlag] == [1, 2, 4, 8, 16, 32, 64, 128]


def test_other_accessors() -> None:
    vlan = VLAN(5 << 13 | 0x1000 | 42, 0x0800)
    assert (vlan.priority, vlan.dei, vlan.vid) == (5, True, 42)
    frag = IPv6Fragment(17, 0, 1448 | 1, 0xCAFE)
    assert (frag.fragment_offset, frag.more_fragments) == (1448, True)
    assert IPv6Options(6, 1).header_length == IPv6Routing(6, 1, 4, 0).header_length == 16
    assert AH(6, 4, 0, 1, 2).header_length == 24
    echo = ICMP(8, 0, 0, 0x1234_0007)
    assert (echo.echo_id, echo.echo_seq) == (0x1234, 7)
    assert ICMP(5, 1, 0, 0xC0000201).gateway == A4_PACKED
    assert ICMP(3, 4, 0, 1400).next_hop_mtu == 1400
    echo6 = ICMPv6(128, 0, 0, 0x0009_000A)
    assert (echo6.echo_id, echo6.echo_seq) == (9, 10)


def test_repr_is_readable() -> None:
    ip = IPv4.unpack_from(bytes.fromhex(TSHARK_VERIFIED[0][0]))
    assert repr(ip) == (
        "IPv4(version=4, ihl=5, tos=0, total_length=59, ident=0, dont_fragment=False, "
        "more_fragments=False, fragment_offset=0, ttl=64, protocol=6, checksum=36481, "
        "src=192.0.2.1, dst=198.51.100.7)"
    )
    assert "src=2001:db8::1" in repr(IPv6(6 << 28, 0, 59, 1, A6_PACKED, B6_PACKED))
    assert "dst=ff:ff:ff:ff:ff:ff" in repr(Ethernet(b"\xff" * 6, b"\x02" * 6, 0x0800))
    assert "flag_names=SYN|ACK" in repr(TCP(1, 2, 3, 4, 0x50, 0x12, 5, 6, 7))


# --- decode ----------------------------------------------------------------------------------


def test_decode_ipv4_tcp() -> None:
    data = ipv4_tcp()
    packet = decode(data, NFPROTO_IPV4)
    assert isinstance(packet.ip, IPv4)
    assert packet.ip.src == A4_PACKED and packet.ip.dst == B4_PACKED
    assert isinstance(packet.l4, TCP)
    tcp = packet.l4
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack) == (40000, 80, 1000, 2000)
    assert tcp.header_length == 24
    assert (packet.l4_protocol, packet.l4_offset, packet.payload_offset) == (6, 20, 44)
    assert packet.payload == b"hello"
    assert not packet.truncated
    assert packet.fragment_id is None and packet.fragment_offset == 0
    assert not packet.more_fragments
    assert "payload=<5 bytes>" in repr(packet)


def test_decode_ipv4_options_udp() -> None:
    packet = decode(ipv4_options_udp(), NFPROTO_IPV4)
    assert isinstance(packet.ip, IPv4) and packet.ip.options_length == 4
    assert isinstance(packet.l4, UDP) and not isinstance(packet.l4, UDPLite)
    assert (packet.l4_offset, packet.l4.dport, packet.payload) == (24, 53, b"query")


def test_decode_ipv4_icmp() -> None:
    packet = decode(build_ipv4(A4, B4, 1, build_icmp_echo(0x1234, 7, b"ping")), NFPROTO_IPV4)
    assert isinstance(packet.l4, ICMP)
    assert (packet.l4.type, packet.l4.echo_id, packet.l4.echo_seq) == (8, 0x1234, 7)
    assert packet.payload == b"ping"


@pytest.mark.parametrize(("family", "build_ip", "src", "dst"), IP_VERSIONS)
def test_decode_sctp(family: int, build_ip: BuildIP, src: str, dst: str) -> None:
    packet = decode(sctp_packet(build_ip, src, dst), family)
    assert packet.l4 == SCTP(5000, 5001, 0xDEADBEEF, 0x12345678)
    assert (packet.l4_protocol, packet.payload) == (132, b"chunk")


@pytest.mark.parametrize(("family", "build_ip", "src", "dst"), IP_VERSIONS)
def test_decode_udplite(family: int, build_ip: BuildIP, src: str, dst: str) -> None:
    segment = UDP(1, 2, 8, 0).pack() + b"lite"
    packet = decode(build_ip(src, dst, 136, segment), family)
    assert isinstance(packet.l4, UDPLite)
    assert (packet.l4.checksum_coverage, packet.l4_protocol, packet.payload) == (8, 136, b"lite")


def test_decode_ipv4_ah_ends_at_ah() -> None:
    packet = decode(build_ipv4(A4, B4, 51, auth_header(6, 99) + b"inner"), NFPROTO_IPV4)
    assert isinstance(packet.l4, AH)
    assert (packet.l4.spi, packet.l4.next_header, packet.l4_protocol) == (99, 6, 51)
    assert (packet.payload_offset, packet.payload) == (44, b"inner")


@pytest.mark.parametrize(("family", "build_ip", "src", "dst"), IP_VERSIONS)
def test_decode_esp(family: int, build_ip: BuildIP, src: str, dst: str) -> None:
    packet = decode(build_ip(src, dst, 50, ESP(7, 8).pack() + b"secret"), family)
    assert packet.l4 == ESP(7, 8)
    assert (packet.l4_protocol, packet.payload) == (50, b"secret")


def test_decode_unknown_l4_protocol() -> None:
    packet = decode(build_ipv4(A4, B4, 47, b"\0\0\x08\0"), NFPROTO_IPV4)
    assert packet.l4 is None
    assert (packet.l4_protocol, packet.l4_offset, packet.payload_offset) == (47, 20, None)
    assert (packet.payload, packet.truncated) == (b"", False)


def test_decode_ipv6_udp_and_icmpv6() -> None:
    udp = decode(build_ipv6(A6, B6, 17, build_udp(1, 2, b"six", A6, B6)), NFPROTO_IPV6)
    assert isinstance(udp.ip, IPv6) and udp.ip.src == A6_PACKED
    assert isinstance(udp.l4, UDP) and udp.payload == b"six"
    assert (udp.l4_offset, udp.ext_headers) == (40, ())
    echo = decode(build_ipv6(A6, B6, 58, build_icmpv6_echo(9, 10, b"p", A6, B6)), NFPROTO_IPV6)
    assert isinstance(echo.l4, ICMPv6)
    assert (echo.l4.type, echo.l4.echo_id, echo.l4.echo_seq, echo.payload) == (128, 9, 10, b"p")


def test_decode_ipv6_extension_chain() -> None:
    packet = decode(ipv6_chain_tcp(), NFPROTO_IPV6)
    assert [type(ext) for ext in packet.ext_headers] == [
        IPv6HopByHop,
        IPv6Routing,
        IPv6DestOptions,
    ]
    routing_header = packet.ext_headers[1]
    assert isinstance(routing_header, IPv6Routing)
    assert (routing_header.routing_type, routing_header.segments_left) == (4, 1)
    assert (packet.l4_protocol, packet.l4_offset) == (6, 40 + 8 + 24 + 16)
    assert isinstance(packet.l4, TCP) and packet.payload == b"data"
    assert packet.fragment_id is None


def test_decode_ipv6_ah_is_skipped_as_extension() -> None:
    packet = decode(ipv6_ah_udp(), NFPROTO_IPV6)
    assert [type(ext) for ext in packet.ext_headers] == [AH]
    assert isinstance(packet.l4, UDP)
    assert (packet.l4_protocol, packet.l4_offset, packet.payload) == (17, 64, b"ike")


def test_decode_ipv6_no_next_header() -> None:
    packet = decode(build_ipv6(A6, B6, 0, hop_by_hop(59) + b"junk"), NFPROTO_IPV6)
    assert (packet.l4_protocol, packet.l4, packet.l4_offset, packet.payload) == (59, None, 48, b"")


def test_decode_ipv6_first_fragment() -> None:
    packet = decode(ipv6_first_fragment_udp(), NFPROTO_IPV6)
    assert (packet.fragment_offset, packet.more_fragments, packet.fragment_id) == (0, True, 0xCAFE)
    assert isinstance(packet.l4, UDP) and packet.payload == b"first part"


def test_decode_ipv6_later_fragment_is_not_l4() -> None:
    data = build_ipv6(A6, B6, 0, hop_by_hop(44) + fragment(6, 1448, False, 7) + b"middle")
    packet = decode(data, NFPROTO_IPV6)
    assert [type(ext) for ext in packet.ext_headers] == [IPv6HopByHop, IPv6Fragment]
    assert (packet.fragment_offset, packet.more_fragments, packet.fragment_id) == (1448, False, 7)
    assert (packet.l4_protocol, packet.l4_offset) == (6, 56)
    assert (packet.l4, packet.payload, packet.truncated) == (None, b"", False)


def test_decode_ipv4_fragments() -> None:
    tcp = build_tcp(1, 2, 3, 4, TCPFlag.ACK, 5, b"x" * 16, A4, B4)
    first = decode(build_ipv4(A4, B4, 6, tcp, ident=42, flags_frag=0x2000), NFPROTO_IPV4)
    assert (first.fragment_offset, first.more_fragments, first.fragment_id) == (0, True, 42)
    assert isinstance(first.l4, TCP)
    # Later fragment whose bytes happen to look like a TCP header: must not be decoded as one.
    later = decode(build_ipv4(A4, B4, 6, tcp, ident=42, flags_frag=5), NFPROTO_IPV4)
    assert (later.fragment_offset, later.more_fragments, later.fragment_id) == (40, False, 42)
    assert (later.l4, later.l4_protocol, later.l4_offset, later.payload) == (None, 6, 20, b"")
    whole = decode(build_ipv4(A4, B4, 6, tcp, ident=42, flags_frag=0x4000), NFPROTO_IPV4)
    assert (whole.fragment_id, whole.more_fragments) == (None, False)


def test_decode_arp_and_bridge() -> None:
    arp = decode(arp_request(), NFPROTO_ARP).arp
    assert isinstance(arp, ARP)
    assert (arp.op, arp.spa, arp.tpa, arp.sha) == (1, A4_PACKED, B4_PACKED, b"\x02" * 6)
    assert decode(arp_request(), NFPROTO_BRIDGE, 0x0806).arp == arp
    assert isinstance(decode(ipv4_tcp(), NFPROTO_BRIDGE, 0x0800).l4, TCP)
    assert isinstance(decode(ipv6_chain_tcp(), NFPROTO_BRIDGE, 0x86DD).l4, TCP)
    assert decode(ipv4_tcp(), NFPROTO_BRIDGE, 0x88CC).ip is None
    assert decode(ipv4_tcp(), NFPROTO_BRIDGE).ip is None


def test_decode_non_ethernet_arp_is_left_alone() -> None:
    packet = decode(ARP(6, 0x0800, 2, 4, 1, bytes(6), bytes(4), bytes(6), bytes(4)).pack(), 3)
    assert (packet.arp, packet.truncated) == (None, False)


def test_decode_unknown_family() -> None:
    for family in (0, 1, 5, 12, 255):
        packet = decode(ipv4_tcp(), family)
        assert (packet.ip, packet.arp, packet.l4, packet.truncated) == (None, None, None, False)


def test_decode_stops_at_ip_length() -> None:
    """Link-layer padding after the IP packet is not payload."""
    packet = decode(build_ipv4(A4, B4, 17, build_udp(1, 2, b"ab", A4, B4)) + bytes(16), 2)
    assert packet.payload == b"ab"
    packet6 = decode(build_ipv6(A6, B6, 17, build_udp(1, 2, b"ab", A6, B6)) + bytes(16), 10)
    assert packet6.payload == b"ab"


def test_decode_bogus_lengths() -> None:
    udp = build_udp(1, 2, b"payload", A4, B4)
    ip = bytearray(build_ipv4(A4, B4, 17, udp))
    ip[2:4] = (0).to_bytes(2, "big")  # total length below the header: use the capture
    assert decode(bytes(ip), 2).payload == b"payload"
    ip[0] = 0x44  # IHL below 5: the header is decoded, nothing after it
    packet = decode(bytes(ip), 2)
    assert (packet.l4, packet.l4_offset, packet.truncated) == (None, None, False)
    ip[0] = 0x4F  # IHL past the end of the data
    assert decode(bytes(ip), 2).truncated
    tcp = bytearray(build_tcp(1, 2, 3, 4, 0, 5, b"abc", A4, B4))
    tcp[12] = 0x20  # data offset 2: the fixed 20 bytes are still the header
    assert decode(build_ipv4(A4, B4, 6, bytes(tcp)), 2).payload == b"abc"
    tcp[12] = 0xF0  # data offset 15: options would run past the end
    packet = decode(build_ipv4(A4, B4, 6, bytes(tcp)), 2)
    assert isinstance(packet.l4, TCP) and packet.truncated and packet.payload_offset is None


def test_decode_accepts_memoryview_and_bytearray() -> None:
    data = ipv6_chain_tcp()
    expected = decode(data, NFPROTO_IPV6)
    for view in (memoryview(data), bytearray(data)):
        packet = decode(view, NFPROTO_IPV6)
        assert packet.l4 == expected.l4 and packet.payload == b"data"
        assert type(packet.payload) is bytes


@pytest.mark.parametrize(
    ("data", "family"), [p[1:] for p in VALID_PACKETS], ids=[p[0] for p in VALID_PACKETS]
)
def test_decode_every_prefix(data: bytes, family: int) -> None:
    full = decode(data, family)
    assert not full.truncated
    # Where the last header the full packet decodes ends.
    if full.arp is not None:
        headers_end = ARP.SIZE
    elif full.payload_offset is not None:
        headers_end = full.payload_offset
    else:
        assert full.l4_offset is not None
        headers_end = full.l4_offset
    for cut in range(len(data)):
        packet = decode(data[:cut], family)
        assert packet.truncated == (cut < headers_end), cut
        if not packet.truncated:
            assert packet.l4 == full.l4
            assert packet.ext_headers == full.ext_headers
            expected_payload = data[headers_end:cut] if full.l4 else b""
            assert packet.payload == expected_payload
        elif packet.l4 is not None:
            assert packet.l4 == full.l4  # fixed part there, options cut


@settings(max_examples=3000, deadline=None)
@given(
    data=st.binary(max_size=200),
    family=st.sampled_from([0, 2, 3, 7, 10]) | st.integers(-1, 300),
    hw_protocol=st.sampled_from([0, 0x0800, 0x0806, 0x86DD]) | st.integers(0, 0xFFFF),
)
def test_decode_never_raises_on_random_bytes(data: bytes, family: int, hw_protocol: int) -> None:
    check_decode_invariants(data, family, hw_protocol)


IPV6_NEXT_HEADERS = st.sampled_from([0, 6, 17, 43, 44, 50, 51, 58, 59, 60, 132, 136])


@settings(max_examples=2000, deadline=None)
@given(
    next_header=IPV6_NEXT_HEADERS,
    payload_length=st.integers(0, 0xFFFF) | st.integers(0, 80),
    rest=st.lists(st.tuples(IPV6_NEXT_HEADERS, st.binary(max_size=30)), max_size=5),
)
def test_decode_never_raises_on_random_ipv6_chains(
    next_header: int, payload_length: int, rest: list[tuple[int, bytes]]
) -> None:
    """Random chains of plausible next-header values reach deep into the IPv6 decoder."""
    body = b"".join(bytes([nh, len(blob) % 4]) + blob for nh, blob in rest)
    header = IPv6(6 << 28, payload_length, next_header, 64, A6_PACKED, B6_PACKED).pack()
    check_decode_invariants(header + body, NFPROTO_IPV6, 0)


@settings(max_examples=2000, deadline=None)
@given(
    version_ihl=st.sampled_from([0x45, 0x46, 0x4F, 0x40]) | st.integers(0, 255),
    total_length=st.integers(0, 0xFFFF) | st.integers(0, 80),
    flags_frag=st.sampled_from([0, 0x2000, 0x4000, 1, 0x2001]),
    protocol=st.sampled_from([1, 6, 17, 50, 51, 58, 132, 136]),
    rest=st.binary(max_size=80),
)
def test_decode_never_raises_on_random_ipv4(
    version_ihl: int, total_length: int, flags_frag: int, protocol: int, rest: bytes
) -> None:
    fields = (version_ihl, 0, total_length, 1, flags_frag, 64, protocol, 0, A4_PACKED, B4_PACKED)
    check_decode_invariants(IPv4(*fields).pack() + rest, NFPROTO_IPV4, 0)


def check_decode_invariants(data: bytes, family: int, hw_protocol: int) -> None:
    packet = decode(data, family, hw_protocol)
    repr(packet)
    if packet.payload_offset is None:
        assert packet.payload == b""
    else:
        assert packet.l4 is not None and not packet.truncated
        end = packet.payload_offset + len(packet.payload)
        assert packet.payload == data[packet.payload_offset : end]
    if packet.l4 is not None:
        assert packet.l4_offset is not None and packet.l4_protocol is not None
        assert packet.l4.pack() == data[packet.l4_offset : packet.l4_offset + packet.l4.SIZE]
    if packet.fragment_offset:
        assert packet.l4 is None


# --- checksums -------------------------------------------------------------------------------


def test_rfc1071_example() -> None:
    data = bytes.fromhex("0001f203f4f5f6f7")  # RFC 1071 section 3: the sum is 0xddf2
    assert internet_checksum(data) == reference_checksum(data) == 0xFFFF - 0xDDF2


def test_known_ipv4_header() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ipv4_header_checksum(header) == 0xB861
    assert ipv4_header_checksum(header[:10] + b"\xff\xff" + header[12:]) == 0xB861


def test_checksum_edge_cases() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(bytes(7)) == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0  # sums to 0xFFFF, not 0
    assert internet_checksum(b"\xff") == reference_checksum(b"\xff") == 0x00FF
    assert internet_checksum(b"\x12\x34", initial=0x0001) == 0xFFFF - 0x1235


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300) | st.binary(max_size=64).map(lambda b: b"\xff" * len(b)))
def test_internet_checksum_matches_reference(data: bytes) -> None:
    checksum = internet_checksum(data)
    assert checksum == reference_checksum(data)
    if len(data) % 2 == 0 and any(data):
        # Appending the checksum makes the whole verify to 0.
        assert internet_checksum(data + checksum.to_bytes(2, "big")) == 0


@settings(deadline=None)
@given(st.binary(max_size=20))
def test_checksums_of_messages_too_short_for_their_field(message: bytes) -> None:
    # Zeroing bytes past the end changes nothing: the sum pads with zeros anyway.
    assert icmp_checksum(message) == reference_checksum(zero_field(message, 2))
    assert ipv4_header_checksum(message) == reference_checksum(zero_field(message, 10))
    pseudo = reference_pseudo_header(A4_PACKED, B4_PACKED, 6, len(message))
    assert tcp_checksum(A4_PACKED, B4_PACKED, message) == reference_checksum(
        pseudo + zero_field(message, 16)
    )


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=100),
    v6=st.booleans(),
    stale=st.integers(0, 0xFFFF),
)
def test_l4_checksums_match_reference(payload: bytes, v6: bool, stale: int) -> None:
    src, dst = (A6_PACKED, B6_PACKED) if v6 else (A4_PACKED, B4_PACKED)
    stale_bytes = stale.to_bytes(2, "big")  # whatever the field holds must not matter
    tcp = TCP(1, 2, 3, 4, 0x50, 0x18, 5, stale, 0).pack() + payload
    assert tcp_checksum(src, dst, tcp) == reference_l4_checksum(src, dst, 6, tcp)
    udp = UDP(1, 2, 8 + len(payload), stale).pack() + payload
    assert udp_checksum(src, dst, udp) == (reference_l4_checksum(src, dst, 17, udp) or 0xFFFF)
    icmpv6 = bytes([128, 0]) + stale_bytes + payload
    assert icmpv6_checksum(src, dst, icmpv6) == reference_l4_checksum(src, dst, 58, icmpv6)
    icmp = bytes([8, 0]) + stale_bytes + payload
    assert icmp_checksum(icmp) == reference_checksum(zero_field(icmp, 2))


def test_udp_checksum_zero_is_sent_as_ffff() -> None:
    datagram = UDP(1, 2, 10, 0).pack()
    pseudo = reference_pseudo_header(A4_PACKED, B4_PACKED, 17, 10)
    # A last word equal to the checksum so far makes the words sum to 0xFFFF: checksum 0.
    datagram += reference_checksum(pseudo + datagram).to_bytes(2, "big")
    assert reference_checksum(pseudo + datagram) == 0
    assert udp_checksum(A4_PACKED, B4_PACKED, datagram) == 0xFFFF


def test_udplite_checksum_coverage() -> None:
    header = UDP(1, 2, 8, 0).pack()
    covered = udplite_checksum(A4_PACKED, B4_PACKED, header + b"uncovered")
    assert covered == udplite_checksum(A4_PACKED, B4_PACKED, header + b"different")
    full = udplite_checksum(A4_PACKED, B4_PACKED, UDP(1, 2, 0, 0).pack() + b"abc")
    assert full != udplite_checksum(A4_PACKED, B4_PACKED, UDP(1, 2, 0, 0).pack() + b"abd")


@pytest.mark.parametrize(("hex_packet", "family"), TSHARK_VERIFIED)
def test_tshark_verified_packets(hex_packet: str, family: int) -> None:
    data = bytes.fromhex(hex_packet)
    assert fix_checksums(data, family) == data
    packet = decode(data, family)
    ip, l4 = packet.ip, packet.l4
    assert ip is not None and l4 is not None and packet.l4_offset is not None
    segment = data[packet.l4_offset :]
    if isinstance(ip, IPv4):
        assert ipv4_header_checksum(data[: ip.header_length]) == ip.checksum
    if isinstance(l4, UDPLite):
        assert udplite_checksum(ip.src, ip.dst, segment) == l4.checksum
    elif isinstance(l4, TCP):
        assert tcp_checksum(ip.src, ip.dst, segment) == l4.checksum
    elif isinstance(l4, UDP):
        assert udp_checksum(ip.src, ip.dst, segment) == l4.checksum
    elif isinstance(l4, ICMPv6):
        assert icmpv6_checksum(ip.src, ip.dst, segment) == l4.checksum
    else:
        assert isinstance(l4, ICMP)
        assert icmp_checksum(segment) == l4.checksum


CHECKSUM_FIELDS: dict[type[Header], int] = {TCP: 16, UDP: 6, UDPLite: 6, ICMP: 2, ICMPv6: 2}


@pytest.mark.parametrize(("hex_packet", "family"), TSHARK_VERIFIED)
def test_fix_checksums_repairs_clobbered_checksums(hex_packet: str, family: int) -> None:
    good = bytes.fromhex(hex_packet)
    packet = decode(good, family)
    assert packet.l4 is not None and packet.l4_offset is not None
    field = packet.l4_offset + CHECKSUM_FIELDS[type(packet.l4)]
    broken = bytearray(good)
    broken[field : field + 2] = b"\xa5\x5a"
    if family == NFPROTO_IPV4:
        broken[10:12] = b"\0\0"
    assert fix_checksums(bytes(broken), family) == good
    ethertype = 0x0800 if family == NFPROTO_IPV4 else 0x86DD
    assert fix_checksums(bytes(broken), NFPROTO_BRIDGE, ethertype) == good


def test_fix_checksums_after_payload_rewrite() -> None:
    original = ipv4_tcp()
    rewritten = original.replace(b"hello", b"HELLO")
    fixed = fix_checksums(rewritten, NFPROTO_IPV4)
    assert fixed != rewritten
    expected_tcp = build_tcp(
        40000,
        80,
        1000,
        2000,
        TCPFlag.SYN | TCPFlag.ACK,
        65535,
        b"HELLO",
        A4,
        B4,
        options=b"\x02\x04\x05\xb4",
    )
    assert fixed == build_ipv4(A4, B4, 6, expected_tcp)


def test_fix_checksums_ipv6_with_extension_headers() -> None:
    data = bytearray(ipv6_chain_tcp())
    packet = decode(bytes(data), NFPROTO_IPV6)
    assert packet.l4_offset is not None and isinstance(packet.l4, TCP)
    field = packet.l4_offset + 16
    good = bytes(data[field : field + 2])
    data[field : field + 2] = b"\0\0"
    fixed = fix_checksums(bytes(data), NFPROTO_IPV6)
    assert fixed[field : field + 2] == good
    segment = bytes(data[packet.l4_offset :])
    assert int.from_bytes(good, "big") == reference_l4_checksum(A6_PACKED, B6_PACKED, 6, segment)


def test_fix_checksums_leaves_what_it_cannot_compute() -> None:
    no_checksum = bytearray(build_ipv4(A4, B4, 17, build_udp(1, 2, b"x", A4, B4)))
    no_checksum[26:28] = b"\0\0"  # UDP over IPv4 without checksum stays so
    assert fix_checksums(bytes(no_checksum), 2)[26:28] == b"\0\0"
    tcp = build_tcp(1, 2, 3, 4, 0, 5, b"abc", A4, B4)
    bogus = tcp[:16] + b"\x12\x34" + tcp[18:]
    for flags_frag in (0x2000, 1):  # first and later fragments: the segment is not all here
        data = build_ipv4(A4, B4, 6, bogus, flags_frag=flags_frag)
        assert fix_checksums(data, 2)[36:38] == b"\x12\x34"
    sctp = sctp_packet(build_ipv4, A4, B4)
    assert fix_checksums(sctp, 2) == sctp
    assert fix_checksums(b"\x45\x00", 2) == b"\x45\x00"
    assert fix_checksums(arp_request(), NFPROTO_ARP) == arp_request()
    truncated = build_ipv4(A4, B4, 6, bogus)[:30]
    assert fix_checksums(truncated, 2)[20:] == truncated[20:]


# --- builders --------------------------------------------------------------------------------


def test_build_ipv4_fields() -> None:
    data = build_ipv4(A4_PACKED, B4, 99, b"xyz", ttl=5, tos=0x10, ident=7, flags_frag=0x4000)
    assert reference_checksum(data[:20]) == 0
    checksum = int.from_bytes(data[10:12], "big")
    fields = (0x45, 0x10, 23, 7, 0x4000, 5, 99, checksum, A4_PACKED, B4_PACKED)
    assert IPv4.unpack_from(data) == IPv4(*fields)
    assert data[20:] == b"xyz"


def test_build_ipv6_fields() -> None:
    data = build_ipv6(A6, B6_PACKED, 59, b"", hop_limit=3, traffic_class=0xB8, flow_label=0x12345)
    assert IPv6.unpack_from(data) == IPv6(0x6B812345, 0, 59, 3, A6_PACKED, B6_PACKED)


def test_build_l4_round_trips_through_decode() -> None:
    tcp = decode(build_ipv6(A6, B6, 6, build_tcp(1, 2, 3, 4, 0x12, 5, b"p", A6, B6)), 10).l4
    assert isinstance(tcp, TCP)
    assert tcp == TCP(1, 2, 3, 4, 0x50, 0x12, 5, tcp.checksum, 0)
    udp = decode(build_ipv4(A4, B4, 17, build_udp(7, 8, b"12345", A4, B4)), 2).l4
    assert isinstance(udp, UDP) and (udp.sport, udp.dport, udp.length) == (7, 8, 13)
    reply = decode(build_ipv4(A4, B4, 1, build_icmp_echo(3, 4, reply=True)), 2).l4
    assert isinstance(reply, ICMP) and (reply.type, reply.echo_id, reply.echo_seq) == (0, 3, 4)
    reply6 = decode(build_ipv6(A6, B6, 58, build_icmpv6_echo(3, 4, b"", A6, B6, reply=True)), 10)
    assert isinstance(reply6.l4, ICMPv6) and reply6.l4.type == 129


def test_build_tcp_pads_options() -> None:
    segment = build_tcp(1, 2, 3, 4, TCPFlag.SYN, 5, b"", A4, B4, options=b"\x01\x01\x01\x01\x01")
    tcp = TCP.unpack_from(segment)
    assert tcp is not None and tcp.header_length == 28 == len(segment)
    assert segment[20:] == b"\x01" * 5 + bytes(3)


BAD_ADDRESS_PAIRS = [(A4, B6), (A6_PACKED, B4_PACKED), (b"\x01\x02\x03", B4), ("bogus", B4)]


@pytest.mark.parametrize(("src", "dst"), BAD_ADDRESS_PAIRS)
def test_builders_reject_bad_addresses(src: str | bytes, dst: str | bytes) -> None:
    with pytest.raises(ValueError):
        build_udp(1, 2, b"", src, dst)


def test_ip_builders_reject_other_family() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        build_ipv4(A6, B4, 6, b"")
    with pytest.raises(ValueError, match="IPv6"):
        build_ipv6(A6, B4, 6, b"")
