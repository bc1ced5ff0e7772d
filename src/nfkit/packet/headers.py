"""The L2-L4 headers nfkit decodes, plus the protocol numbers that select them.

Each class's ``STRUCT`` is also exported by :mod:`nfkit.packet.layouts` for hot loops.
"""

import enum

from nfkit.packet.header import Header

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IPV6 = 0x86DD

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136

# ICMP types and codes with a meaning of their own in the header's ``rest``.
ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4  # a code of ICMP_DEST_UNREACH
ICMP_REDIRECT = 5
ICMP_ECHO = 8
ICMP_PARAMETERPROB = 12
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129


class TCPFlag(enum.IntFlag):
    """Bits of :attr:`TCP.flags`."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


class Ethernet(Header):
    """Ethernet II header."""

    __hdr__ = (("dst", "6s"), ("src", "6s"), ("ethertype", "H"))
    dst: bytes
    src: bytes
    ethertype: int


class VLAN(Header):
    """802.1Q tag: the 4 bytes that follow an ethertype of 0x8100 (or 0x88A8)."""

    __hdr__ = (("tci", "H"), ("ethertype", "H"))
    tci: int
    ethertype: int
    REPR_FIELDS = ("priority", "dei", "vid", "ethertype")

    @property
    def priority(self) -> int:
        """Priority code point (PCP), 0-7."""
        return self.tci >> 13

    @property
    def dei(self) -> bool:
        """Drop eligible indicator."""
        return bool(self.tci & 0x1000)

    @property
    def vid(self) -> int:
        """VLAN identifier, 0-4095."""
        return self.tci & 0x0FFF


class ARP(Header):
    """ARP packet in its Ethernet/IPv4 form (hlen 6, plen 4)."""

    __hdr__ = (
        ("hwtype", "H"),
        ("ptype", "H"),
        ("hlen", "B"),
        ("plen", "B"),
        ("op", "H"),
        ("sha", "6s"),
        ("spa", "4s"),
        ("tha", "6s"),
        ("tpa", "4s"),
    )
    hwtype: int
    ptype: int
    hlen: int
    plen: int
    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes


class IPv4(Header):
    """IPv4 header without options; ``header_length`` tells where they end."""

    __hdr__ = (
        ("version_ihl", "B"),
        ("tos", "B"),
        ("total_length", "H"),
        ("ident", "H"),
        ("flags_frag", "H"),
        ("ttl", "B"),
        ("protocol", "B"),
        ("checksum", "H"),
        ("src", "4s"),
        ("dst", "4s"),
    )
    version_ihl: int
    tos: int
    total_length: int
    ident: int
    flags_frag: int
    ttl: int
    protocol: int
    checksum: int
    src: bytes
    dst: bytes
    REPR_FIELDS = (
        "version",
        "ihl",
        "tos",
        "total_length",
        "ident",
        "dont_fragment",
        "more_fragments",
        "fragment_offset",
        "ttl",
        "protocol",
        "checksum",
        "src",
        "dst",
    )

    @property
    def version(self) -> int:
        return self.version_ihl >> 4

    @property
    def ihl(self) -> int:
        """Header length in 32-bit words."""
        return self.version_ihl & 0x0F

    @property
    def header_length(self) -> int:
        """Header length in bytes, options included."""
        return (self.version_ihl & 0x0F) * 4

    @property
    def options_length(self) -> int:
        """Bytes of options after the fixed header (negative if ``ihl`` is malformed)."""
        return (self.version_ihl & 0x0F) * 4 - 20

    @property
    def dont_fragment(self) -> bool:
        return bool(self.flags_frag & 0x4000)

    @property
    def more_fragments(self) -> bool:
        return bool(self.flags_frag & 0x2000)

    @property
    def fragment_offset(self) -> int:
        """Fragment offset in bytes."""
        return (self.flags_frag & 0x1FFF) * 8


class IPv6(Header):
    """IPv6 fixed header."""

    __hdr__ = (
        ("version_class_flow", "I"),
        ("payload_length", "H"),
        ("next_header", "B"),
        ("hop_limit", "B"),
        ("src", "16s"),
        ("dst", "16s"),
    )
    version_class_flow: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes
    REPR_FIELDS = (
        "version",
        "traffic_class",
        "flow_label",
        "payload_length",
        "next_header",
        "hop_limit",
        "src",
        "dst",
    )

    @property
    def version(self) -> int:
        return self.version_class_flow >> 28

    @property
    def traffic_class(self) -> int:
        return (self.version_class_flow >> 20) & 0xFF

    @property
    def flow_label(self) -> int:
        return self.version_class_flow & 0xFFFFF


class IPv6Options(Header):
    """Options extension header: the layout hop-by-hop and destination options share."""

    __hdr__ = (("next_header", "B"), ("length", "B"))
    next_header: int
    length: int

    @property
    def header_length(self) -> int:
        """Header length in bytes: ``length`` counts 8-byte units after the first."""
        return (self.length + 1) * 8


class IPv6HopByHop(IPv6Options):
    """Hop-by-hop options header (next header 0)."""


class IPv6DestOptions(IPv6Options):
    """Destination options header (next header 60)."""


class IPv6Routing(Header):
    """Routing header (next header 43), without its type-specific data."""

    __hdr__ = (
        ("next_header", "B"),
        ("length", "B"),
        ("routing_type", "B"),
        ("segments_left", "B"),
    )
    next_header: int
    length: int
    routing_type: int
    segments_left: int

    @property
    def header_length(self) -> int:
        """Header length in bytes: ``length`` counts 8-byte units after the first."""
        return (self.length + 1) * 8


class IPv6Fragment(Header):
    """Fragment header (next header 44)."""

    __hdr__ = (
        ("next_header", "B"),
        ("reserved", "B"),
        ("offset_flags", "H"),
        ("ident", "I"),
    )
    next_header: int
    reserved: int
    offset_flags: int
    ident: int
    REPR_FIELDS = ("next_header", "fragment_offset", "more_fragments", "ident")

    @property
    def fragment_offset(self) -> int:
        """Fragment offset in bytes."""
        return self.offset_flags & 0xFFF8

    @property
    def more_fragments(self) -> bool:
        return bool(self.offset_flags & 1)


class AH(Header):
    """IPsec authentication header, without its integrity check value."""

    __hdr__ = (
        ("next_header", "B"),
        ("length", "B"),
        ("reserved", "H"),
        ("spi", "I"),
        ("seq", "I"),
    )
    next_header: int
    length: int
    reserved: int
    spi: int
    seq: int

    @property
    def header_length(self) -> int:
        """Header length in bytes, ICV included: ``length`` counts 4-byte units minus 2."""
        return (self.length + 2) * 4


class ESP(Header):
    """IPsec encapsulating security payload header; what follows is encrypted."""

    __hdr__ = (("spi", "I"), ("seq", "I"))
    spi: int
    seq: int


class TCP(Header):
    """TCP header without options; ``header_length`` tells where they end."""

    __hdr__ = (
        ("sport", "H"),
        ("dport", "H"),
        ("seq", "I"),
        ("ack", "I"),
        ("offset_reserved", "B"),
        ("flags", "B"),
        ("window", "H"),
        ("checksum", "H"),
        ("urgent_pointer", "H"),
    )
    sport: int
    dport: int
    seq: int
    ack: int
    offset_reserved: int
    flags: int
    window: int
    checksum: int
    urgent_pointer: int
    REPR_FIELDS = (
        "sport",
        "dport",
        "seq",
        "ack",
        "data_offset",
        "reserved",
        "flag_names",
        "window",
        "checksum",
        "urgent_pointer",
    )

    @property
    def data_offset(self) -> int:
        """Header length in 32-bit words."""
        return self.offset_reserved >> 4

    @property
    def header_length(self) -> int:
        """Header length in bytes, options included."""
        return (self.offset_reserved >> 4) * 4

    @property
    def reserved(self) -> int:
        """The 4 bits between data offset and flags (the last one is AccECN's AE, ex-NS)."""
        return self.offset_reserved & 0x0F

    @property
    def flag_names(self) -> str:
        """The set flags as ``"SYN|ACK"``, or ``""``."""
        return TCPFlag(self.flags).name or ""


class UDP(Header):
    """UDP header."""

    __hdr__ = (("sport", "H"), ("dport", "H"), ("length", "H"), ("checksum", "H"))
    sport: int
    dport: int
    length: int
    checksum: int


class UDPLite(UDP):
    """UDP-Lite header (IP protocol 136): UDP's layout, ``length`` holds the checksum coverage."""

    @property
    def checksum_coverage(self) -> int:
        """Bytes the checksum covers; 0 means the whole datagram."""
        return self.length


class _ICMPHeader(Header):
    """The layout ICMP and ICMPv6 share; the 4-byte ``rest`` depends on the type."""

    __hdr__ = (("type", "B"), ("code", "B"), ("checksum", "H"), ("rest", "I"))
    type: int
    code: int
    checksum: int
    rest: int

    @property
    def echo_id(self) -> int:
        """Identifier of an echo request or reply (ICMP 8/0, ICMPv6 128/129)."""
        return self.rest >> 16

    @property
    def echo_seq(self) -> int:
        """Sequence number of an echo request or reply."""
        return self.rest & 0xFFFF


class ICMP(_ICMPHeader):
    """ICMP header."""

    @property
    def gateway(self) -> bytes:
        """Gateway address of a redirect (5)."""
        return self.rest.to_bytes(4, "big")

    @property
    def next_hop_mtu(self) -> int:
        """Next-hop MTU of a destination unreachable, fragmentation needed (3/4)."""
        return self.rest & 0xFFFF


class ICMPv6(_ICMPHeader):
    """ICMPv6 header."""


class SCTP(Header):
    """SCTP common header; the checksum is a CRC32c."""

    __hdr__ = (("sport", "H"), ("dport", "H"), ("vtag", "I"), ("checksum", "I"))
    sport: int
    dport: int
    vtag: int
    checksum: int
