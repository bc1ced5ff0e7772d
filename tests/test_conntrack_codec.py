"""ctnetlink codec: flows, tuples, expectations, statistics; compiled vs generic decoding.

Messages the kernel would send are built here with the plain netlink
attribute helpers (not with the codec under test), including the pad
attributes and 32-bit counters the kernel can emit.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctlab import fill_table, varied_table
from nfkit.cli.ctformat import FlowText, LabelMap
from nfkit.conntrack import const as C
from nfkit.conntrack.client import open_socket
from nfkit.conntrack.codec import (
    FLOW_SCHEMA,
    Decoder,
    FlowTarget,
    FlowValues,
    decode_cpu_stats,
    decode_expectation,
    decode_flow,
    decode_global_stats,
    decode_message,
    encode_expectation,
    encode_flow,
    encode_tuple,
    lookup_attributes,
)
from nfkit.conntrack.model import (
    AF_INET,
    AF_INET6,
    Counters,
    DCCPInfo,
    DCCPState,
    Event,
    EventType,
    Expectation,
    ExpectFlag,
    Flow,
    NatRange,
    SCTPInfo,
    SCTPState,
    SeqAdj,
    Status,
    Synproxy,
    TCPFlag,
    TCPInfo,
    TCPState,
    Tuple,
)
from nfkit.lab import Lab, Node
from nfkit.netlink import DecodeError, EncodeError
from nfkit.netlink.codec import (
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    Message,
    attr,
    attr_be16,
    attr_be32,
    attr_be64,
    attr_nested,
    attr_u8,
    iter_message_spans,
    nfgenmsg,
)
from nfkit.netlink.layout import BYTES, Leaf, Nest, analyse, compile_parser, walk

# -- building kernel-like messages ---------------------------------------------------------


def kernel_tuple(nest: int, family: int, src: str, dst: str, proto: int, l4: list[bytes]) -> bytes:
    v4 = family == AF_INET
    ip = [
        attr(C.CTA_IP_V4_SRC if v4 else C.CTA_IP_V6_SRC, socket.inet_pton(family, src)),
        attr(C.CTA_IP_V4_DST if v4 else C.CTA_IP_V6_DST, socket.inet_pton(family, dst)),
    ]
    return attr_nested(
        nest,
        [
            attr_nested(C.CTA_TUPLE_IP, ip),
            attr_nested(C.CTA_TUPLE_PROTO, [attr_u8(C.CTA_PROTO_NUM, proto), *l4]),
        ],
    )


def ports(sport: int, dport: int) -> list[bytes]:
    return [attr_be16(C.CTA_PROTO_SRC_PORT, sport), attr_be16(C.CTA_PROTO_DST_PORT, dport)]


def pad(atype: int) -> bytes:
    """The empty pad attribute the kernel puts before a 64-bit value."""
    return attr(atype, b"")


def counters(nest: int, packets: int, nbytes: int, bits: int = 64) -> bytes:
    if bits == 32:
        return attr_nested(
            nest,
            [
                attr_be32(C.CTA_COUNTERS32_PACKETS, packets),
                attr_be32(C.CTA_COUNTERS32_BYTES, nbytes),
            ],
        )
    return attr_nested(
        nest,
        [
            pad(C.CTA_COUNTERS_PAD),
            attr_be64(C.CTA_COUNTERS_PACKETS, packets),
            pad(C.CTA_COUNTERS_PAD),
            attr_be64(C.CTA_COUNTERS_BYTES, nbytes),
        ],
    )


def message(attributes: list[bytes], family: int = AF_INET, mtype: int = C.CT_NEW,
            flags: int = NLM_F_MULTI, seq: int = 9, pid: int = 1234) -> bytes:  # fmt: skip
    return Message(mtype, flags, seq, pid, nfgenmsg(family) + b"".join(attributes)).encode()


def tcp_message(sport: int = 40000, packets: int = 5, counter_bits: int = 64) -> bytes:
    """A dump entry of an established, accounted, timestamped TCP flow."""
    tcp = attr_nested(
        C.CTA_PROTOINFO_TCP,
        [
            attr_u8(C.CTA_PROTOINFO_TCP_STATE, TCPState.ESTABLISHED),
            attr_u8(C.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, 7),
            attr_u8(C.CTA_PROTOINFO_TCP_WSCALE_REPLY, 9),
            attr(C.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, bytes((0x0A, 0))),
            attr(C.CTA_PROTOINFO_TCP_FLAGS_REPLY, bytes((0x02, 0))),
        ],
    )
    return message(
        [
            kernel_tuple(C.CTA_TUPLE_ORIG, AF_INET, "192.0.2.1", "192.0.2.2", 6, ports(sport, 22)),
            kernel_tuple(C.CTA_TUPLE_REPLY, AF_INET, "192.0.2.2", "192.0.2.1", 6, ports(22, sport)),
            attr_be32(C.CTA_STATUS, 0x18E),
            attr_be32(C.CTA_MARK, 7),
            attr_be32(C.CTA_ID, 0xDEADBEEF),
            attr_be32(C.CTA_USE, 1),
            attr_be32(C.CTA_TIMEOUT, 431999),
            attr_nested(C.CTA_PROTOINFO, [tcp]),
            counters(C.CTA_COUNTERS_ORIG, packets, 300, counter_bits),
            counters(C.CTA_COUNTERS_REPLY, 4, 200, counter_bits),
            attr_nested(
                C.CTA_TIMESTAMP,
                [pad(C.CTA_TIMESTAMP_PAD), attr_be64(C.CTA_TIMESTAMP_START, 1_700_000_000_123)],
            ),
        ]
    )


TCP_FLOW = Flow(
    Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 6, 40000, 22),
    Tuple(AF_INET, "192.0.2.2", "192.0.2.1", 6, 22, 40000),
    status=Status(0x18E),
    timeout=431999,
    mark=7,
    use=1,
    id=0xDEADBEEF,
    counters_orig=Counters(5, 300),
    counters_reply=Counters(4, 200),
    start=1_700_000_000_123,
    protoinfo=TCPInfo(
        TCPState.ESTABLISHED, 7, 9, TCPFlag(0x0A), TCPFlag(2), TCPFlag(0), TCPFlag(0)
    ),
)


def everything_message() -> bytes:
    """A flow message with every attribute the decoder knows (IPv6)."""
    icmp = [
        attr_be16(C.CTA_PROTO_ICMPV6_ID, 77),
        attr_u8(C.CTA_PROTO_ICMPV6_TYPE, 128),
        attr_u8(C.CTA_PROTO_ICMPV6_CODE, 0),
    ]
    orig = kernel_tuple(C.CTA_TUPLE_ORIG, AF_INET6, "2001:db8::1", "2001:db8::2", 58, icmp)
    reply_l4 = [attr_be16(C.CTA_PROTO_ICMPV6_ID, 77), attr_u8(C.CTA_PROTO_ICMPV6_TYPE, 129),
                attr_u8(C.CTA_PROTO_ICMPV6_CODE, 0)]  # fmt: skip
    reply = kernel_tuple(C.CTA_TUPLE_REPLY, AF_INET6, "2001:db8::2", "2001:db8::1", 58, reply_l4)
    # Directional zones live inside the tuples.
    orig = orig[:4] + orig[4:] + attr_be16(C.CTA_TUPLE_ZONE, 3)
    orig = struct.pack("=HH", len(orig), C.CTA_TUPLE_ORIG | 0x8000) + orig[4:]
    master = kernel_tuple(C.CTA_TUPLE_MASTER, AF_INET6, "2001:db8::1", "2001:db8::2", 6,
                          ports(1000, 21))  # fmt: skip
    seqadj = [attr_be32(1, 100), attr_be32(2, 5), attr_be32(3, 6)]
    return message(
        [
            orig,
            reply,
            attr_be32(C.CTA_STATUS, 0x2009),
            attr_be32(C.CTA_MARK, 0xFFFFFFFF),
            attr_nested(C.CTA_SECCTX, [attr(C.CTA_SECCTX_NAME, b"system_u:object_r:x\0")]),
            attr_be32(C.CTA_ID, 1),
            attr_be32(C.CTA_USE, 2),
            master,
            attr_be32(C.CTA_TIMEOUT, 30),
            counters(C.CTA_COUNTERS_ORIG, 1, 104, bits=32),
            counters(C.CTA_COUNTERS_REPLY, 0, 0, bits=32),
            attr_nested(
                C.CTA_TIMESTAMP,
                [
                    pad(C.CTA_TIMESTAMP_PAD),
                    attr_be64(C.CTA_TIMESTAMP_START, 10),
                    pad(C.CTA_TIMESTAMP_PAD),
                    attr_be64(C.CTA_TIMESTAMP_STOP, 20),
                ],
            ),
            attr_nested(C.CTA_HELP, [attr(C.CTA_HELP_NAME, b"ftp\0")]),
            attr(C.CTA_LABELS, (1 << 127 | 2).to_bytes(16, "little")),
            attr_nested(C.CTA_SEQ_ADJ_ORIG, seqadj),
            attr_nested(C.CTA_SEQ_ADJ_REPLY, seqadj),
            attr_nested(C.CTA_SYNPROXY, [attr_be32(1, 11), attr_be32(2, 12), attr_be32(3, 13)]),
            attr_be64(C.CTA_TIMESTAMP_EVENT, 99),
            attr(63, b"an attribute of a future kernel"),
        ],
        family=AF_INET6,
    )


EVERYTHING = Flow(
    Tuple(AF_INET6, "2001:db8::1", "2001:db8::2", 58, None, None, 128, 0, 77, 3),
    Tuple(AF_INET6, "2001:db8::2", "2001:db8::1", 58, None, None, 129, 0, 77),
    status=Status(0x2009),
    timeout=30,
    mark=0xFFFFFFFF,
    secctx="system_u:object_r:x",
    use=2,
    id=1,
    counters_orig=Counters(1, 104),
    counters_reply=Counters(0, 0),
    start=10,
    stop=20,
    helper="ftp",
    labels=(1 << 127 | 2).to_bytes(16, "little"),
    master=Tuple(AF_INET6, "2001:db8::1", "2001:db8::2", 6, 1000, 21),
    seqadj_orig=SeqAdj(100, 5, 6),
    seqadj_reply=SeqAdj(100, 5, 6),
    synproxy=Synproxy(11, 12, 13),
    event_time=99,
)

# A dump entry captured from Linux 6.18 (ctlab's TCP flow: mark 1, BE_LIBERAL|SACK_PERM).
REAL_TCP = bytes.fromhex(
    "3801000000010200070000001b0f000002000000340001801400018008000100c633640108000200cb007101"
    "1c0002800500010006000000060002009c4100000600030000160000340002801400018008000100cb007101"
    "08000200c63364011c00028005000100060000000600020000160000060003009c410000080003000000000e"
    "080008000000000108000c00610ed4a108000b00000000010800070000000e10300004802c00018005000100"
    "0300000005000200000000000500030000000000060004000a000000060005000a0000001c0009800c000100"
    "00000000000000000c00020000000000000000001c000a800c00010000000000000000000c00020000000000"
    "00000000100014800c00010018ea0e8e7cc079781c0018800800010000000000080002000000000008000300"
    "00000000"
)


def decode_all(data: bytes, compiled: bool) -> list[object]:
    items, _others = Decoder(compiled=compiled).decode(data)
    return items


# -- decoding ------------------------------------------------------------------------------


def test_tcp_dump_entry_with_pads_counters_and_timestamp() -> None:
    assert decode_all(tcp_message(), compiled=False) == [TCP_FLOW]


def test_every_attribute() -> None:
    assert decode_all(everything_message(), compiled=False) == [EVERYTHING]


def test_32_bit_counters() -> None:
    (flow,) = decode_all(tcp_message(counter_bits=32), compiled=False)
    assert flow.counters_orig == Counters(5, 300)


def test_absent_attributes_stay_none() -> None:
    """An offloaded flow has no timeout and no protoinfo; an event no counters."""
    data = message([
        kernel_tuple(C.CTA_TUPLE_ORIG, AF_INET, "192.0.2.1", "192.0.2.2", 17, ports(1, 2)),
        attr_be32(C.CTA_STATUS, Status.OFFLOAD | Status.CONFIRMED),
    ])  # fmt: skip
    (flow,) = decode_all(data, compiled=False)
    assert flow.timeout is None and flow.protoinfo is None and flow.mark is None
    assert flow.reply is None and flow.counters_orig is None and flow.status & Status.OFFLOAD


def test_sctp_dccp_and_gre() -> None:
    sctp = attr_nested(
        C.CTA_PROTOINFO,
        [
            attr_nested(
                C.CTA_PROTOINFO_SCTP,
                [
                    attr_u8(1, SCTPState.ESTABLISHED),
                    attr_be32(2, 0x11223344),
                    attr_be32(3, 0x55667788),
                ],
            )
        ],
    )
    dccp = attr_nested(C.CTA_PROTOINFO, [attr_nested(C.CTA_PROTOINFO_DCCP, [
        attr_u8(1, DCCPState.OPEN), attr_u8(2, 1), pad(C.CTA_PROTOINFO_DCCP_PAD),
        attr_be64(3, 1 << 40)])])  # fmt: skip
    tuple_of = lambda proto: kernel_tuple(  # noqa: E731
        C.CTA_TUPLE_ORIG, AF_INET, "192.0.2.1", "192.0.2.2", proto, ports(0x1234, 0x5678)
    )
    flows = decode_all(
        message([tuple_of(132), sctp]) + message([tuple_of(33), dccp]) + message([tuple_of(47)]),
        compiled=False,
    )
    assert flows[0].protoinfo == SCTPInfo(SCTPState.ESTABLISHED, 0x11223344, 0x55667788)
    assert flows[1].protoinfo == DCCPInfo(DCCPState.OPEN, 1, 1 << 40)
    assert flows[2].orig.sport == 0x1234 and flows[2].orig.dport == 0x5678  # GRE keys


def test_unknown_enum_values_stay_numbers() -> None:
    info = attr_nested(C.CTA_PROTOINFO, [attr_nested(C.CTA_PROTOINFO_TCP, [attr_u8(1, 12)])])
    data = message([kernel_tuple(1, AF_INET, "192.0.2.1", "192.0.2.2", 6, ports(1, 2)), info])
    (flow,) = decode_all(data, compiled=False)
    assert flow.protoinfo.state == 12 and not isinstance(flow.protoinfo.state, TCPState)


def test_real_dump_entry() -> None:
    for compiled in (False, True):
        (flow,) = decode_all(REAL_TCP + REAL_TCP, compiled=compiled)[:1]
        assert flow.orig == Tuple(AF_INET, "198.51.100.1", "203.0.113.1", 6, 40001, 22)
        assert flow.reply == flow.orig.inverted()
        assert flow.status == Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED
        assert flow.mark == 1 and flow.timeout == 3600 and flow.use == 1
        assert flow.protoinfo.flags_orig == TCPFlag.BE_LIBERAL | TCPFlag.SACK_PERM
        assert flow.counters_orig == Counters(0, 0) and flow.start is not None
        assert flow.synproxy == Synproxy(0, 0, 0)


def test_events_carry_type_and_portid() -> None:
    new = message([kernel_tuple(1, AF_INET, "192.0.2.1", "192.0.2.2", 17, ports(1, 2))],
                  flags=NLM_F_CREATE | NLM_F_EXCL, seq=0, pid=77)  # fmt: skip
    update = message([kernel_tuple(1, AF_INET, "192.0.2.1", "192.0.2.2", 17, ports(1, 2))],
                     flags=0, seq=0, pid=0)  # fmt: skip
    destroy = message([kernel_tuple(1, AF_INET, "192.0.2.1", "192.0.2.2", 17, ports(1, 2))],
                      mtype=C.CT_DELETE, flags=0, seq=0, pid=0)  # fmt: skip
    for compiled in (False, True):
        decoder = Decoder(events=True, compiled=compiled)
        for _ in range(2):  # the second round runs the compiled layouts
            events, _ = decoder.decode(new + update + destroy)
            assert [e.type for e in events] == [EventType.NEW, EventType.UPDATE, EventType.DESTROY]
            assert [e.portid for e in events] == [77, 0, 0]
            assert all(isinstance(e, Event) and e.flow.orig.dport == 2 for e in events)


def test_other_messages_are_passed_on() -> None:
    done = Message(3, NLM_F_MULTI, 9, 0, struct.pack("=i", 0)).encode()
    items, others = Decoder().decode(tcp_message() + done)
    assert items == [TCP_FLOW] and [m.type for m in others] == [3]


def test_dump_interrupted_flag_is_reported() -> None:
    data = tcp_message()
    flags = struct.unpack_from("=H", data, 6)[0] | 0x10
    data = data[:6] + struct.pack("=H", flags) + data[8:]
    items, others = Decoder().decode(data)
    assert items == [TCP_FLOW] and others[0].flags & 0x10


# -- compiled layouts ------------------------------------------------------------------------


def test_compiled_layouts_equal_the_generic_walk() -> None:
    batch = b"".join(tcp_message(sport=40000 + i, packets=i) for i in range(50))
    batch += everything_message() * 3 + REAL_TCP * 3
    decoder = Decoder()
    first, _ = decoder.decode(batch)
    assert decoder.layouts.count == 3
    again, _ = decoder.decode(batch)  # now every message takes a compiled parser
    assert again == first == decode_all(batch, compiled=False)
    assert [f.orig.sport for f in again[:50]] == list(range(40000, 40050))


def test_a_layout_match_is_proved_by_every_header() -> None:
    """Same length, type and flags but another attribute: not the compiled layout."""
    decoder = Decoder()
    decoder.decode(tcp_message())
    other = bytearray(tcp_message())
    mark_at = bytes(other).index(attr_be32(C.CTA_MARK, 7))
    struct.pack_into("=H", other, mark_at + 2, C.CTA_SECMARK)  # same size, other meaning
    (flow,) = decoder.decode(bytes(other))[0]
    assert flow.mark is None and flow == decode_all(bytes(other), compiled=False)[0]


def test_repeated_attributes_last_wins_in_both_paths() -> None:
    data = message([
        kernel_tuple(1, AF_INET, "192.0.2.1", "192.0.2.2", 17, ports(1, 2)),
        attr_be32(C.CTA_MARK, 1),
        attr_be32(C.CTA_MARK, 2),
    ])  # fmt: skip
    decoder = Decoder()
    assert decoder.decode(data * 2)[0] == decode_all(data * 2, compiled=False)
    assert [flow.mark for flow in decoder.decode(data)[0]] == [2]


def test_layout_module_is_generic() -> None:
    schema = {1: Leaf("a", "H"), 2: Nest("n", {1: Leaf("b", "BB"), 2: Leaf("s", BYTES)})}
    data = attr_be16(1, 513) + attr_nested(2, [attr(1, b"\x01\x02"), attr(2, b"xyz")])
    assert walk(data, 0, len(data), schema) == {"a": 513, "n": True, "n.b": (1, 2), "n.s": b"xyz"}
    layout = analyse(data, 0, len(data), schema, 0, ())
    assert layout is not None and layout.nests == {"n"}
    names = ", ".join(name for values in layout.fields.values() for name in values)
    parse = compile_parser(layout, [f"    return ({names})"], {})
    assert parse(data, 0) == (513, 1, 2, b"xyz")
    assert parse(attr_be16(1, 1) + data[8:], 0) == (1, 1, 2, b"xyz")  # another value
    assert parse(attr_be16(3, 513) + data[8:], 0) is None  # another header
    b0, b1 = layout.fields["n.b"]
    pick = compile_parser(layout, [f"    return {b1}, {b0}"], {})  # reads only n.b
    assert pick(data, 0) == (2, 1)
    with pytest.raises(DecodeError):
        walk(attr(1, b"\x01"), 0, 5, schema)  # a be16 of one byte


# -- flow targets ----------------------------------------------------------------------------


def l4_of(proto: int, family: int, reply: bool) -> list[bytes]:
    if proto in (1, 58):
        types = (C.CTA_PROTO_ICMP_ID, C.CTA_PROTO_ICMP_TYPE, C.CTA_PROTO_ICMP_CODE)
        if family == AF_INET6:
            types = (C.CTA_PROTO_ICMPV6_ID, C.CTA_PROTO_ICMPV6_TYPE, C.CTA_PROTO_ICMPV6_CODE)
        kind = (0 if reply else 8) if proto == 1 else (129 if reply else 128)
        return [attr_be16(types[0], 77), attr_u8(types[1], kind), attr_u8(types[2], 0)]
    if proto == 253:
        return []
    return ports(53, 40000) if reply else ports(40000, 53)


INFOS = {
    6: [C.CTA_PROTOINFO_TCP, attr_u8(C.CTA_PROTOINFO_TCP_STATE, 3),
        attr(C.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, bytes((0x0A, 0)))],
    132: [C.CTA_PROTOINFO_SCTP, attr_u8(1, 4), attr_be32(2, 5), attr_be32(3, 6)],
    33: [C.CTA_PROTOINFO_DCCP, attr_u8(1, 42), attr_u8(2, 1)],  # state 42: past the names
}  # fmt: skip
RARE = {
    "zone": attr_be16(C.CTA_ZONE, 3),
    "helper": attr_nested(C.CTA_HELP, [attr(C.CTA_HELP_NAME, b"ftp\0")]),
    "secctx": attr_nested(C.CTA_SECCTX, [attr(C.CTA_SECCTX_NAME, b"system_u\0")]),
    "labels": attr(C.CTA_LABELS, (1 << 3).to_bytes(16, "little")),
    "stop": attr_nested(C.CTA_TIMESTAMP, [attr_be64(C.CTA_TIMESTAMP_START, 10 << 30),
                                          attr_be64(C.CTA_TIMESTAMP_STOP, 20 << 30)]),
    "orig zone": b"",
    "no reply": b"",
    "no status": b"",
    "no mark": b"",
    "no state": b"",
}  # fmt: skip


def shaped_message(proto: int, family: int, extras: tuple[str, ...], status: int = 0x18A) -> bytes:
    """A flow message with the attributes named in ``extras`` (see RARE) and a few common ones."""
    v4 = family == AF_INET
    a, b = ("192.0.2.1", "192.0.2.2") if v4 else ("2001:db8::1", "2001:db8::2")
    orig = kernel_tuple(C.CTA_TUPLE_ORIG, family, a, b, proto, l4_of(proto, family, False))
    if "orig zone" in extras:
        orig = attr_nested(C.CTA_TUPLE_ORIG, [orig[4:], attr_be16(C.CTA_TUPLE_ZONE, 4)])
    parts = [orig]
    if "no reply" not in extras:
        parts.append(kernel_tuple(C.CTA_TUPLE_REPLY, family, b, a, proto,
                                  l4_of(proto, family, True)))  # fmt: skip
    if "no status" not in extras:
        parts.append(attr_be32(C.CTA_STATUS, status))
    if "no mark" not in extras:
        parts.append(attr_be32(C.CTA_MARK, 7))
    parts += [attr_be32(C.CTA_USE, 1), attr_be32(C.CTA_ID, 99)]
    if "timeout" in extras:
        parts.append(attr_be32(C.CTA_TIMEOUT, 120))
    if proto in INFOS:
        nest, *children = INFOS[proto]
        if "no state" in extras:
            children = children[1:]
        parts.append(attr_nested(C.CTA_PROTOINFO, [attr_nested(nest, children)]))
    if "counters" in extras:
        parts += [counters(C.CTA_COUNTERS_ORIG, 5, 300), counters(C.CTA_COUNTERS_REPLY, 4, 200)]
    if "start" in extras:
        parts.append(attr_nested(C.CTA_TIMESTAMP, [attr_be64(C.CTA_TIMESTAMP_START, 10 << 30)]))
    parts += [RARE[name] for name in extras if name in RARE]
    return message(parts, family=family)


def shaped_messages() -> list[bytes]:
    """Flow messages of many layouts: every protocol the lines know, with and without
    each optional part, each rare one, and statuses that print differently."""
    protos = [(6, AF_INET), (17, AF_INET), (17, AF_INET6), (136, AF_INET), (132, AF_INET),
              (33, AF_INET), (47, AF_INET), (1, AF_INET), (58, AF_INET6),
              (253, AF_INET)]  # fmt: skip
    common = [(), ("timeout",), ("timeout", "counters"), ("timeout", "start"),
              ("timeout", "counters", "start")]  # fmt: skip
    messages = []
    for proto, family in protos:
        for extras in common + [("timeout", rare) for rare in RARE]:
            messages.append(shaped_message(proto, family, extras))
        for status in (0x8, 0x4008, 0x800E, 0x400E):  # unreplied, offloaded, assured
            messages.append(shaped_message(proto, family, ("timeout",), status))
    return messages


def test_flow_targets_make_of_every_layout_what_they_make_of_its_flows() -> None:
    def compile_ports(values: FlowValues) -> tuple[str, dict[str, object]] | None:
        if values.constant("orig.proto") != 6:
            return None  # the other flows are converted
        sport, status = (values.get(name) or "None" for name in ("orig.sport", "status"))
        return f"(PORT_BASE + ({sport} or 0), {status} or 0)", {"PORT_BASE": 100000}

    target = FlowTarget(
        lambda flow: (100000 + (flow.orig.sport or 0), int(flow.status or 0)), compile_ports
    )
    batch = b"".join(shaped_messages())
    decoder = Decoder(target=target)
    first, _ = decoder.decode(batch)
    again, _ = decoder.decode(batch)  # compiled now
    flows = decode_all(batch, compiled=False)
    assert first == again == [target.convert(flow) for flow in flows]
    with pytest.raises(ValueError, match="redefines"):
        Decoder(target=FlowTarget(repr, lambda values: ("Flow", {"Flow": 1}))).decode(
            batch[: len(shaped_message(6, AF_INET, ()))]
        )



def test_flow_targets_of_events_learn_the_event_of_each_layout() -> None:
    def compile_event(values: FlowValues) -> tuple[str, dict[str, object]] | None:
        if values.constant("orig.proto") != 6:
            return None  # converted from the Event
        return f"({int(values.event or 0)}, {values.get('id') or 'None'})", {}

    target = FlowTarget(lambda event: (int(event.type), event.flow.id), compile_event)
    batch = b"".join(shaped_messages())
    decoder = Decoder(events=True, target=target)
    first, _ = decoder.decode(batch)
    again, _ = decoder.decode(batch)  # compiled now
    events, _ = Decoder(events=True, compiled=False).decode(batch)
    assert first == again == [target.convert(event) for event in events]


def test_flow_values_name_model_fields_with_plain_numbers() -> None:
    layout = analyse(REAL_TCP, 0, len(REAL_TCP), FLOW_SCHEMA, 20, ())
    assert layout is not None
    values = FlowValues(layout.fields, layout.nests, AF_INET)
    assert values.constant("orig.proto") == values.constant("reply.proto") == 6  # pinned
    assert values.constant("orig.sport") is None and values.get("orig.sport") is not None
    assert values.protoinfo is TCPInfo and values.get("helper") is None
    assert values.get("status") == layout.fields["status"][0]  # an int, not a Status
    assert values.get("orig.src") == f"ADDRESSES[{layout.fields['orig.ip.v4_src'][0]}]"
    assert values.get("counters_orig") is not None and values.get("counters_orig.packets")


LINE_OPTIONS = [{}, {"layer3": True}, {"show_id": True}, {"ktimestamp": True},
                {"labels": LabelMap({3: "three"})},
                {"layer3": True, "ktimestamp": True, "show_id": True}]  # fmt: skip


def assert_lines_match(datagrams: list[bytes], options: dict[str, Any]) -> None:
    """FlowText's target gives the lines FlowText gives the decoded flows, first (generic
    path) and once compiled."""
    text = FlowText(**options)
    assert text.target == text.target != FlowText(**options).target  # a client reuses its decoder
    converted: list[Flow] = []
    target = FlowTarget(lambda flow: converted.append(flow) or text.line(flow), text.target.compile)
    decoder = Decoder(target=target)
    flows = [flow for data in datagrams for flow in Decoder(compiled=False).decode(data)[0]]
    for _round in range(2):
        converted.clear()
        before = [text.generic_line(flow) for flow in flows]
        lines = [line for data in datagrams for line in decoder.decode(data)[0]]
        after = [text.generic_line(flow) for flow in flows]
        # a second may pass between the lines (delta-time): either side's text will do
        pairs = zip(before, after, strict=True)
        assert all(line in pair for line, pair in zip(lines, pairs, strict=True))
    assert 0 < len(converted) < len(flows) / 2  # most lines came straight from the messages


@pytest.mark.parametrize("options", LINE_OPTIONS)
def test_line_target_gives_the_flows_lines(options: dict[str, Any]) -> None:
    messages = shaped_messages()
    assert_lines_match(messages + messages[::-1], options)


# -- malformed input -------------------------------------------------------------------------


BASES = [tcp_message(), everything_message(), REAL_TCP, tcp_message(counter_bits=32)]


def outcome(data: bytes, compiled: bool, decoder: Decoder | None = None) -> object:
    try:
        return (decoder or Decoder(compiled=compiled)).decode(data)[0]
    except DecodeError as exc:
        return type(exc)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "length"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "length" and at + 2 <= len(data):
            struct.pack_into("=H", data, at - at % 4, draw(st.integers(0, 0xFFFF)))
    return bytes(data)


WARM = Decoder()
WARM.decode(b"".join(BASES))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_malformed_messages_raise_decode_error_and_compiled_agrees(data: bytes) -> None:
    generic = outcome(data, compiled=False)
    assert generic == outcome(data, compiled=True, decoder=WARM)
    if isinstance(generic, list):
        assert all(isinstance(item, Flow) for item in generic)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    for mtype in (C.CT_NEW, C.EXP_NEW):
        framed = NLMSGHDR.pack(16 + len(data), mtype, 0, 0, 0) + data
        with contextlib.suppress(DecodeError):
            decode_message(mtype, 0, framed, 0, len(framed))


def test_wrong_family_addresses_are_refused() -> None:
    data = message([kernel_tuple(1, AF_INET, "192.0.2.1", "192.0.2.2", 6, ports(1, 2))],
                   family=AF_INET6)  # fmt: skip
    with pytest.raises(DecodeError, match="wrong family"):
        Decoder().decode(data)


# -- encoding --------------------------------------------------------------------------------


def payload(flow: Flow, create: bool) -> bytes:
    return nfgenmsg(flow.family) + encode_flow(flow, create=create)


def test_create_round_trip_and_status_rules() -> None:
    flow = Flow(
        Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 6, 1000, 22),
        status=Status.ASSURED | Status.SEEN_REPLY | Status.EXPECTED,
        timeout=100,
        mark=5,
        mark_mask=0xFF,
        zone=4,
        protoinfo=TCPInfo(TCPState.ESTABLISHED, 7, 7, TCPFlag.BE_LIBERAL, TCPFlag.SACK_PERM),
        helper="ftp",
        labels=bytes(16),
        labels_mask=b"\xff" * 16,
        seqadj_orig=SeqAdj(1, 2, 3),
        synproxy=Synproxy(4, 5, 6),
        nat_src=NatRange("198.51.100.1", None, 1024, 2048),
        master=Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 6, 999, 21),
    )
    decoded = decode_flow(payload(flow, create=True))
    # CONFIRMED is added and EXPECTED removed; the reply tuple is derived.
    assert decoded.status == Status.ASSURED | Status.SEEN_REPLY | Status.CONFIRMED
    assert decoded.reply == flow.orig.inverted()
    assert decoded.nat_src == NatRange("198.51.100.1", "198.51.100.1", 1024, 2048)
    assert decoded.protoinfo.mask_orig == TCPFlag.BE_LIBERAL  # no mask: set the flags given
    for name in ("orig", "timeout", "mark", "mark_mask", "zone", "helper", "labels",
                 "labels_mask", "seqadj_orig", "synproxy", "master"):  # fmt: skip
        assert getattr(decoded, name) == getattr(flow, name), name


def test_update_sends_only_what_is_set() -> None:
    flow = Flow(Tuple(AF_INET6, "2001:db8::1", "2001:db8::2", 17, 5, 53), mark=1)
    decoded = decode_flow(payload(flow, create=False))
    assert decoded == Flow(flow.orig, mark=1)


@pytest.mark.parametrize(
    "tup",
    [
        Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 1, icmp_type=8, icmp_code=0, icmp_id=7),
        Tuple(AF_INET6, "2001:db8::1", "2001:db8::2", 58, icmp_type=128, icmp_code=0, icmp_id=7),
        Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 132, 1, 2, zone=9),
        Tuple(AF_INET6, "2001:db8::1", "2001:db8::2", 47, 0xFFFF, 0),
        Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 253),
        Tuple(AF_INET, "192.0.2.1"),
    ],
)
def test_tuple_round_trip(tup: Tuple) -> None:
    data = nfgenmsg(tup.family) + encode_tuple(tup, C.CTA_TUPLE_ORIG)
    assert decode_flow(data).orig == tup


def test_encoding_errors() -> None:
    with pytest.raises(EncodeError, match="timeout"):
        encode_flow(Flow(Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 17, 1, 2)), create=True)
    with pytest.raises(EncodeError, match="same length"):
        encode_flow(Flow(Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 17, 1, 2), labels=bytes(16),
                         labels_mask=bytes(4)), create=False)  # fmt: skip
    with pytest.raises(EncodeError, match="not an address"):
        encode_tuple(Tuple(AF_INET, "2001:db8::1", "192.0.2.2", 17), C.CTA_TUPLE_ORIG)
    with pytest.raises(EncodeError):
        encode_tuple(Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 17, 70000, 1), C.CTA_TUPLE_ORIG)
    with pytest.raises(EncodeError):
        encode_tuple(Tuple(0, "192.0.2.1"), C.CTA_TUPLE_ORIG)


def test_lookup_uses_id_and_zone() -> None:
    flow = Flow(Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 17, 1, 2), zone=3, id=42)
    decoded = decode_flow(nfgenmsg(AF_INET) + lookup_attributes(flow))
    assert (decoded.orig, decoded.zone, decoded.id) == (flow.orig, 3, 42)
    decoded = decode_flow(nfgenmsg(AF_INET) + lookup_attributes(flow, with_id=False))
    assert decoded.id is None


# -- expectations and statistics ---------------------------------------------------------------


def test_expectation_round_trip() -> None:
    exp = Expectation(
        master=Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 6, 40000, 21),
        tuple=Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 6, 0, 5000),
        mask=Tuple(AF_INET, "255.255.255.255", "255.255.255.255", 6, 0, 0xFFFF),
        timeout=300,
        helper="ftp",
        zone=2,
        flags=ExpectFlag.PERMANENT | ExpectFlag.INACTIVE,
        klass=0,
        nat_dir=1,
        nat_tuple=Tuple(AF_INET, "198.51.100.1", None, 6, 0, 6000),
        fn="nat-follow-master",
    )
    assert decode_expectation(nfgenmsg(AF_INET) + encode_expectation(exp)) == exp
    with pytest.raises(EncodeError):
        encode_expectation(Expectation(master=exp.master))


def test_statistics() -> None:
    cpu = Message(C.CT_GET_STATS_CPU, NLM_F_MULTI, payload=nfgenmsg(0, res_id=3) + b"".join(
        attr_be32(n, n * 10) for n in (2, 4, 8, 15, 16)))  # fmt: skip
    stats = decode_cpu_stats(cpu)
    assert stats.cpu == 3
    assert stats.values == {"found": 20, "invalid": 40, "insert": 80, "chaintoolong": 150,
                            "attr16": 160}  # fmt: skip
    exp = Message(C.EXP_STATS_CPU_REPLY, payload=nfgenmsg(0) + attr_be32(1, 5))
    assert decode_cpu_stats(exp, C.STATS_EXP_NAMES).values == {"expect_new": 5}
    glob = Message(C.CT_GET_STATS, payload=nfgenmsg(0) + attr_be32(1, 12) + attr_be32(2, 99))
    assert (decode_global_stats(glob).entries, decode_global_stats(glob).max_entries) == (12, 99)
    with pytest.raises(DecodeError):
        decode_cpu_stats(Message(C.CT_GET_STATS_CPU, payload=nfgenmsg(0) + attr(2, b"\0")))
    with pytest.raises(DecodeError):
        decode_global_stats(Message(C.CT_GET_STATS, payload=nfgenmsg(0)))


# -- real dumps --------------------------------------------------------------------------------


def capture_dump(lab: Lab, ns: Node) -> list[bytes]:
    """The raw datagrams of a full dump of ``ns``'s table."""
    with lab.entered(ns):
        sock = open_socket()
    with sock:
        sock.send(Message(C.CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 1, 0, nfgenmsg(0)).encode())
        datagrams = []
        while True:
            datagrams.append(sock.recv())
            types = {span[0] for span in iter_message_spans(datagrams[-1])}
            assert NLMSG_ERROR not in types
            if NLMSG_DONE in types:
                return datagrams


@pytest.mark.lab
def test_lab_compiled_and_generic_agree_on_every_captured_message(lab: Lab) -> None:
    flows = varied_table(lab)  # acct, timestamps, labels, zones, every protocol
    fill_table(lab, lab.a, 2000, family=4, proto="tcp", mark=3)
    fill_table(lab, lab.a, 2000, family=6, proto="udp")
    lab.iptables(lab.a, "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
    lab.ip6tables(lab.a, "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
    lab.ping(lab.a, lab.b.ip4)
    lab.ping(lab.a, lab.b.ip6)
    lab.tcp_exchange(lab.a, lab.b.ip4, 8080)
    datagrams = capture_dump(lab, lab.a)
    compiled = Decoder()
    generic = Decoder(compiled=False)
    decoded: list[Flow] = []
    for _round in range(2):  # the first round compiles, the second uses the layouts
        decoded = []
        for datagram in datagrams:
            items, _ = compiled.decode(datagram)
            assert items == generic.decode(datagram)[0]
            decoded += items
    assert len(decoded) == len(flows) + 4003
    assert compiled.layouts.count < 20
    for want in flows:
        (got,) = [flow for flow in decoded if flow.orig == want.orig]
        assert (got.reply, got.mark or None, got.zone, got.labels) == (
            want.reply, want.mark or None, want.zone, want.labels)  # fmt: skip


@pytest.mark.lab
def test_lab_line_target_gives_the_flows_lines(lab: Lab) -> None:
    """On every layout of a real table: -L's lines straight from the messages."""
    varied_table(lab)  # acct, timestamps, labels, zones, every protocol
    fill_table(lab, lab.a, 500, family=4, proto="tcp", mark=3)
    fill_table(lab, lab.a, 500, family=6, proto="udp")
    lab.ping(lab.a, lab.b.ip4)
    datagrams = capture_dump(lab, lab.a)
    for options in LINE_OPTIONS:
        assert_lines_match(datagrams, options)


def test_status_keeps_expected_in_updates_only() -> None:
    import struct

    from nfkit.conntrack import const as C
    from nfkit.conntrack.codec import encode_flow
    from nfkit.conntrack.model import Flow, Status, Tuple
    from nfkit.netlink.codec import attr_spans

    flow = Flow(
        orig=Tuple(src="192.0.2.1", dst="192.0.2.2", proto=6, sport=20, dport=40000),
        status=Status.EXPECTED | Status.SEEN_REPLY,
        timeout=60,
    )

    def sent_status(create: bool) -> Status:
        data = encode_flow(flow, create=create)
        start, _end = attr_spans(data, 0, len(data))[C.CTA_STATUS]
        return Status(struct.unpack_from("!I", data, start)[0])

    assert sent_status(create=False) == Status.EXPECTED | Status.SEEN_REPLY | Status.CONFIRMED
    assert sent_status(create=True) == Status.SEEN_REPLY | Status.CONFIRMED
