"""The NFQUEUE library against a fake netlink transport: messages both ways, bookkeeping.

The kernel side is faked at the message level (nfkit.netlink.testing): what
the queue sends is decoded from the fake's log, what the kernel would send is
injected as datagrams built here.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfkit.cli import queue as cli
from nfkit.conntrack import const as ct
from nfkit.conntrack.codec import encode_tuple
from nfkit.conntrack.model import Flow, Tuple
from nfkit.netlink import EncodeError, NetlinkNotSupported, NetlinkPermissionError
from nfkit.netlink.codec import (
    Message,
    attr,
    attr_be32,
    attr_nested,
    attr_spans,
    encode_error,
    nfgenmsg,
)
from nfkit.netlink.errors import BufferOverrun
from nfkit.netlink.socket import NETLINK_NETFILTER, NetlinkSocket
from nfkit.netlink.testing import FakeTransport, error
from nfkit.nfqueue import (
    ACCEPT,
    DROP,
    Action,
    CtInfo,
    Flag,
    Queue,
    QueuedPacket,
    QueueInUse,
    RepeatMode,
    RouteMode,
    Server,
    SkbInfo,
    Verdict,
    aio,
    burst,
    const,
    open_queues,
    parse_range,
    with_l4_payload,
)
from nfkit.nfqueue import queue as queue_module
from nfkit.nfqueue import sender as sender_module
from nfkit.nfqueue.ctupdate import flow_tuple
from nfkit.nfqueue.layouts import AttributeLayouts
from nfkit.nfqueue.stats import KernelCounters, read_kernel_counters
from nfkit.packet import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    build_icmp_echo,
    build_ipv4,
    build_ipv6,
    build_tcp,
    build_udp,
    decode,
    icmp_checksum,
    ipv4_header_checksum,
    tcp_checksum,
    udp_checksum,
)

SRC, DST = "192.0.2.1", "192.0.2.2"
SRC6, DST6 = "2001:db8::1", "2001:db8::2"
UDP4 = build_ipv4(SRC, DST, IPPROTO_UDP, build_udp(4000, 53, b"question", SRC, DST))
_PACKET_HDR = struct.Struct("!IHB")


# -- the fake kernel ---------------------------------------------------------------


def packet_message(
    packet_id: int,
    payload: bytes | None = UDP4,
    *,
    queue: int = 0,
    family: int = socket.AF_INET,
    hook: int = 1,
    hw_protocol: int = 0x0800,
    attrs: Iterable[bytes] = (),
    pad: bool = False,
) -> bytes:
    """A packet message as the kernel sends it: PACKET_HDR first, an unpadded PAYLOAD last."""
    body = nfgenmsg(family, queue) + attr(
        const.ATTR_PACKET_HDR, _PACKET_HDR.pack(packet_id, hw_protocol, hook)
    )
    body += b"".join(attrs)
    if payload is not None:
        # The kernel does not pad the last attribute; nla_len never counts padding.
        body += attr(const.ATTR_PAYLOAD, payload)[: 4 + len(payload) + (3 if pad else 0)]
    header = struct.pack("=IHHII", 16 + len(body), const.MSG_PACKET, 0, 0, 0)
    return header + body


class Kernel:
    """A FakeTransport whose handler acks configs and refuses what a test asks it to."""

    def __init__(self, glue: bool = True) -> None:
        self.glue = glue
        self.refuse_bind: int | None = None
        self.transport = FakeTransport(self.handle)

    def handle(self, request: Message) -> list[Message] | None:
        if request.type != const.MSG_CONFIG:
            return None
        spans = attr_spans(request.payload, 4, len(request.payload))
        if const.CFG_CMD in spans and self.refuse_bind:
            return [error(request, self.refuse_bind)]
        flags_span = spans.get(const.CFG_FLAGS)
        if flags_span is not None and not self.glue:
            (flags,) = struct.unpack_from("!I", request.payload, flags_span[0])
            if flags & Flag.CONNTRACK:
                return [error(request, errno.EOPNOTSUPP)]
        return None

    def inject(self, *datagrams: bytes) -> None:
        for datagram in datagrams:
            self.transport.inject(datagram)

    def verdict_messages(self) -> list[Message]:
        return [
            m for m in self.transport.sent if m.type in (const.MSG_VERDICT, const.MSG_VERDICT_BATCH)
        ]


def decoded_verdict(message: Message) -> dict[str, Any]:
    """The parts of a VERDICT or VERDICT_BATCH message."""
    spans = attr_spans(message.payload, 4, len(message.payload))
    start, _end = spans[const.ATTR_VERDICT_HDR]
    code, packet_id = struct.unpack_from("!II", message.payload, start)
    out: dict[str, Any] = {
        "batch": message.type == const.MSG_VERDICT_BATCH,
        "code": code,
        "id": packet_id,
        "seq": message.seq,
    }
    for name, atype in (("mark", const.ATTR_MARK), ("priority", const.ATTR_PRIORITY)):
        if atype in spans:
            out[name] = struct.unpack_from("!I", message.payload, spans[atype][0])[0]
    if const.ATTR_PAYLOAD in spans:
        start, end = spans[const.ATTR_PAYLOAD]
        out["payload"] = message.payload[start:end]
    if const.ATTR_CT in spans:
        start, end = spans[const.ATTR_CT]
        inner = attr_spans(message.payload, start, end)
        out["ct"] = {t: message.payload[s:e] for t, (s, e) in inner.items()}
    return out


def sent_verdicts(kernel: Kernel) -> list[dict[str, Any]]:
    return [decoded_verdict(m) for m in kernel.verdict_messages()]


def open_queue(kernel: Kernel | None = None, **options: Any) -> tuple[Queue, Kernel]:
    kernel = kernel or Kernel()
    return Queue(0, transport=kernel.transport, **options), kernel


def received(queue: Queue, kernel: Kernel, *datagrams: bytes) -> list[QueuedPacket]:
    kernel.inject(*datagrams)
    return queue.receive()


# -- binding -----------------------------------------------------------------------


def test_bind_sends_bind_params_maxlen_and_flags_in_one_message() -> None:
    # BIND alone leaves the queue in COPY_NONE: the kernel would drop every packet.
    queue, kernel = open_queue(maxlen=77, copy_range=128, flags=Flag.FAIL_OPEN | Flag.GSO)
    bind = kernel.transport.sent[0]
    assert bind.type == const.MSG_CONFIG and bind.payload[:4] == nfgenmsg(0, 0)
    spans = attr_spans(bind.payload, 4, len(bind.payload))
    value = {t: bind.payload[s:e] for t, (s, e) in spans.items()}
    assert value[const.CFG_CMD] == bytes([const.Command.BIND, 0, 0, 0])
    assert value[const.CFG_PARAMS] == struct.pack("!IB", 128, const.CopyMode.PACKET)
    assert value[const.CFG_QUEUE_MAXLEN] == struct.pack("!I", 77)
    assert value[const.CFG_MASK] == struct.pack("!I", const.ALL_FLAGS)
    assert value[const.CFG_FLAGS] == struct.pack("!I", Flag.FAIL_OPEN | Flag.GSO)
    assert queue.portid == kernel.transport.portid
    queue.close()


def test_copy_range_is_capped_to_what_the_kernel_copies() -> None:
    queue, kernel = open_queue(copy_range=1 << 20)
    bind = kernel.transport.sent[0]
    spans = attr_spans(bind.payload, 4, len(bind.payload))
    start, _end = spans[const.CFG_PARAMS]
    assert struct.unpack_from("!I", bind.payload, start)[0] == const.MAX_COPY_RANGE
    queue.close()


def test_a_kernel_without_the_conntrack_glue_is_detected() -> None:
    queue, _kernel = open_queue(Kernel(glue=False))
    assert queue._sender.ct_updater is not None  # connection changes go over ctnetlink
    queue.close()
    queue, _kernel = open_queue(Kernel(glue=True))
    assert queue._sender.ct_updater is None
    queue.close()


def test_the_conntrack_flag_on_a_kernel_without_the_glue_says_why() -> None:
    with pytest.raises(NetlinkNotSupported, match=r"NETLINK_GLUE_CT.*bind without them"):
        open_queue(Kernel(glue=False), flags=Flag.CONNTRACK)


def test_not_root_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "read_kernel_counters", lambda *_: {})
    kernel = Kernel()
    kernel.refuse_bind = errno.EPERM
    with pytest.raises(NetlinkPermissionError, match=r"queue 0.*CAP_NET_ADMIN.*root") as info:
        open_queue(kernel)
    assert not isinstance(info.value, QueueInUse)


def test_a_queue_bound_by_another_program_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    owner = KernelCounters(0, 999, 0, 2, 65531, 0, 0, 0)
    monkeypatch.setattr(queue_module, "read_kernel_counters", lambda *_: {0: owner})
    kernel = Kernel()
    kernel.refuse_bind = errno.EPERM
    with pytest.raises(QueueInUse, match="queue 0 is already bound by another program") as info:
        open_queue(kernel)
    assert (info.value.queue, info.value.owner) == (0, 999)


def test_kernel_counters_are_read_from_proc(tmp_path: Any) -> None:
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text(
        "    0   1234     3 2 65531     5     7       42  1\n    9 77 0 2 10 0 0 1  1\n"
    )
    counters = read_kernel_counters(str(proc))
    assert counters[0] == KernelCounters(0, 1234, 3, 2, 65531, 5, 7, 42)
    assert counters[9].portid == 77
    assert read_kernel_counters(str(tmp_path / "missing")) == {}


def test_ranges_and_open_queues() -> None:
    assert parse_range("3") == range(3, 4)
    assert parse_range("0:3") == range(0, 4)
    for bad in ("x", "3:1", "0:70000", "-1"):
        with pytest.raises(ValueError, match="queue"):
            parse_range(bad)
    with pytest.raises(ValueError, match="not within"):
        Queue(70000)
    with pytest.raises(ValueError, match="queue range"):
        open_queues("5:4")


# -- packets -----------------------------------------------------------------------


def full_packet_attrs() -> list[bytes]:
    orig = Tuple(socket.AF_INET, SRC, DST, IPPROTO_UDP, 4000, 53)
    nest = [
        encode_tuple(orig, ct.CTA_TUPLE_ORIG),
        encode_tuple(orig.inverted(), ct.CTA_TUPLE_REPLY),
    ]
    nest.append(attr_be32(ct.CTA_MARK, 0x42))
    vlan = [attr(const.VLAN_PROTO, b"\x81\x00"), attr(const.VLAN_TCI, b"\x00\x07")]
    return [
        attr_be32(const.ATTR_IFINDEX_INDEV, 3),
        attr_be32(const.ATTR_IFINDEX_OUTDEV, 4),
        attr_be32(const.ATTR_IFINDEX_PHYSINDEV, 5),
        attr_be32(const.ATTR_IFINDEX_PHYSOUTDEV, 6),
        attr_be32(const.ATTR_MARK, 0x10),
        attr_be32(const.ATTR_PRIORITY, 6),
        attr(const.ATTR_HWADDR, struct.pack("!H2x", 6) + bytes.fromhex("020000000001") + b"\0\0"),
        attr(const.ATTR_TIMESTAMP, struct.pack("!QQ", 1700000000, 250000)),
        attr_be32(const.ATTR_UID, 1000),
        attr_be32(const.ATTR_GID, 100),
        attr(const.ATTR_SECCTX, b"system_u:object_r:x:s0\0"),
        attr_be32(const.ATTR_CGROUP_CLASSID, 0x10001),
        attr_nested(const.ATTR_CT, nest),
        attr_be32(const.ATTR_CT_INFO, CtInfo.NEW),
        attr_be32(const.ATTR_CAP_LEN, 1400),
        attr_be32(const.ATTR_SKB_INFO, SkbInfo.CSUMNOTREADY | SkbInfo.GSO),
        attr_nested(const.ATTR_VLAN, vlan),
        attr(const.ATTR_L2HDR, bytes(14)),
    ]


def test_every_attribute_is_on_the_packet() -> None:
    queue, kernel = open_queue()
    (packet,) = received(queue, kernel, packet_message(7, attrs=full_packet_attrs()))
    assert (packet.id, packet.hook, packet.hw_protocol, packet.family) == (7, 1, 0x0800, 2)
    assert (packet.indev, packet.outdev, packet.physindev, packet.physoutdev) == (3, 4, 5, 6)
    assert (packet.mark, packet.priority) == (0x10, 6)
    assert packet.hwaddr == bytes.fromhex("020000000001")
    assert packet.timestamp == pytest.approx(1700000000.25)
    assert (packet.uid, packet.gid) == (1000, 100)
    assert packet.secctx == "system_u:object_r:x:s0"
    assert packet.cgroup_classid == 0x10001
    assert packet.ct_info is CtInfo.NEW
    flow = packet.conntrack
    assert isinstance(flow, Flow) and flow.mark == 0x42
    assert flow.orig == Tuple(socket.AF_INET, SRC, DST, IPPROTO_UDP, 4000, 53)
    assert packet.cap_len == 1400 and packet.truncated
    assert packet.skb_info == SkbInfo.CSUMNOTREADY | SkbInfo.GSO
    assert packet.vlan == (0x8100, 7)
    assert packet.l2header == bytes(14)
    assert packet.payload == UDP4
    udp = packet.headers.l4
    assert udp is not None and (udp.sport, udp.dport) == (4000, 53)
    assert packet.attributes()["uid"] == 1000
    queue.close()


def some_packets() -> list[tuple[int, bytes]]:
    """(family, packet) of every kind ``QueuedPacket.ports`` tells apart."""
    v4, v6 = socket.AF_INET, socket.AF_INET6

    def tcp(src: str, dst: str) -> bytes:
        return build_tcp(1000, 22, 1, 0, 2, 100, b"x", src, dst)

    def udp(src: str, dst: str) -> bytes:
        return build_udp(53, 5353, b"q", src, dst)

    hop_by_hop = bytes([17, 0]) + bytes(6)
    return [
        (v4, build_ipv4(SRC, DST, 6, tcp(SRC, DST))),
        (v4, build_ipv4(SRC, DST, 17, udp(SRC, DST))),
        (v4, build_ipv4(SRC, DST, 1, build_icmp_echo(1, 2))),
        (v6, build_ipv6(SRC6, DST6, 6, tcp(SRC6, DST6))),
        (v6, build_ipv6(SRC6, DST6, 17, udp(SRC6, DST6))),
        (v6, build_ipv6(SRC6, DST6, 0, hop_by_hop + udp(SRC6, DST6))),
        (v4, build_ipv4(SRC, DST, 132, bytes(range(12)))),
        (v4, build_ipv4(SRC, DST, 17, udp(SRC, DST), flags_frag=0x2000)),  # a first fragment
        (v4, build_ipv4(SRC, DST, 17, udp(SRC, DST), flags_frag=0x0010)),  # a later one
    ]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(some_packets()),
    st.integers(0, 80),
    st.lists(st.tuples(st.integers(0, 79), st.integers(0, 255)), max_size=3),
    st.sampled_from([socket.AF_INET, socket.AF_INET6, 7]),
)
def test_ports_say_what_the_headers_say(
    sample: tuple[int, bytes], cut: int, changes: list[tuple[int, int]], family: int
) -> None:
    own_family, data = sample
    data = bytearray(data[: max(cut, 1)])
    for at, value in changes:
        if at < len(data):
            data[at] = value
    queue, kernel = open_queue()
    for fam in (own_family, family):
        (packet,) = received(queue, kernel, packet_message(1, bytes(data), family=fam))
        assert packet.ports == packet._ports_from_headers()
        packet.decide(ACCEPT)
    queue.close()


def test_ports_of_common_packets() -> None:
    queue, kernel = open_queue()
    messages = [packet_message(i, data, family=fam) for i, (fam, data) in enumerate(some_packets())]
    packets = received(queue, kernel, *messages)
    assert [p.ports for p in packets] == [
        (6, 1000, 22), (17, 53, 5353), None, (6, 1000, 22), (17, 53, 5353), (17, 53, 5353),
        (132, 1, 515), (17, 53, 5353), None,
    ]  # fmt: skip
    queue.close()


def test_absent_attributes_are_none_and_mark_priority_zero() -> None:
    queue, kernel = open_queue()
    (packet,) = received(queue, kernel, packet_message(1, payload=None, pad=True))
    assert (packet.mark, packet.priority) == (0, 0)
    for name in ("timestamp", "indev", "hwaddr", "uid", "secctx", "cap_len", "vlan", "conntrack",
                 "ct_info", "payload", "indev_name"):  # fmt: skip
        assert getattr(packet, name) is None, name
    assert packet.skb_info == SkbInfo(0) and not packet.truncated
    assert packet.headers.ip is None
    assert packet.attributes() == {"id": 1, "hook": 1, "hw_protocol": 0x0800}
    queue.close()


def test_an_odd_length_payload_and_a_padded_one_decode_alike() -> None:
    odd = UDP4 + b"x"
    queue, kernel = open_queue()
    first, second = received(
        queue, kernel, packet_message(1, odd), packet_message(2, odd, pad=True)
    )
    assert first.payload == second.payload == odd
    queue.close()


def test_id_gaps_count_packets_the_socket_could_not_take() -> None:
    queue, kernel = open_queue()
    received(queue, kernel, *(packet_message(i) for i in (1, 2, 5, 6, 10)))
    assert queue.stats.id_gaps == 2 + 3
    assert queue.stats.received == 5
    queue.close()


def test_malformed_messages_and_verdict_errors_are_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue, kernel = open_queue()
    refused = encode_error(Message(const.MSG_VERDICT, 1, seq=12), -errno.ENOENT)
    refused.seq = 12
    garbage = struct.pack("=IHHII", 400, const.MSG_PACKET, 0, 0, 0) + bytes(20)
    unknown = Message(0x0399, 0, payload=bytes(8)).encode()
    with caplog.at_level(logging.WARNING, "nfkit.nfqueue"):
        packets = received(
            queue, kernel, refused.encode(), garbage, unknown, packet_message(1), b"\x01\x02"
        )
    assert [p.id for p in packets] == [1]
    assert queue.stats.verdict_errors == {errno.ENOENT: 1}
    assert queue.stats.malformed == 3
    assert "refused the verdict for packet 12: unknown packet id" in caplog.text
    assert "unexpected message type 0x0399" in caplog.text
    queue.close()


# -- receiving in bursts -------------------------------------------------------------


@pytest.fixture
def datagram_pair() -> Iterable[tuple[socket.socket, socket.socket]]:
    """A unix datagram pair: what is sent on the first comes out of the second."""
    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with kernel, ours:
        yield kernel, ours


@pytest.mark.skipif(burst._recvmmsg is None, reason="no recvmmsg in this libc")
def test_a_burst_is_read_in_one_call_up_to_its_size(
    datagram_pair: tuple[socket.socket, socket.socket],
) -> None:
    kernel, ours = datagram_pair
    reader = burst.BurstReceiver(ours.fileno(), 100, count=2)
    sent = [b"one", bytes(range(256)) * 16, b""]
    for datagram in sent:
        kernel.send(datagram)
    assert reader.receive(False) == sent[:2]  # a slot holds 4096 bytes: 100 rounded up
    assert reader.receive(True) == sent[2:]
    with pytest.raises(BlockingIOError):
        reader.receive(False)
    kernel.send(bytes(5000))
    assert reader.receive(False) == [bytes(4096)]  # cut: the netlink header then says more
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 10_000))
    with pytest.raises(BlockingIOError):
        reader.receive(True)  # nothing came within the socket's receive timeout


def test_one_by_one_raises_an_error_after_what_came_before_it() -> None:
    arrivals: list[bytes | Exception] = [b"a", b"b", BufferOverrun(), b"c"]

    def recv() -> bytes:
        if not arrivals:
            raise BlockingIOError
        item = arrivals.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    reader = burst.OneByOne(recv, recv, count=8)
    assert reader.receive(True) == [b"a", b"b"]
    with pytest.raises(BufferOverrun):
        reader.receive(False)
    assert reader.receive(False) == [b"c"]
    with pytest.raises(BlockingIOError):
        reader.receive(False)


def test_how_bursts_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTransport(lambda request: None)
    assert isinstance(burst.burst_reader(fake, 4096), burst.OneByOne)
    fake.close()
    with NetlinkSocket(NETLINK_NETFILTER) as sock:
        if burst._recvmmsg is not None:
            assert isinstance(burst.burst_reader(sock, 4096), burst.BurstReceiver)
        monkeypatch.setattr(burst, "_recvmmsg", None)
        reader = burst.burst_reader(sock, 4096)
        assert isinstance(reader, burst.OneByOne)
        with pytest.raises(BlockingIOError):
            reader.receive(False)  # MSG_DONTWAIT: an empty socket does not block


@pytest.mark.parametrize("kind", ["recvmmsg", "recv"])
def test_readers_tell_lengths_and_words_of_the_last_burst(
    kind: str, datagram_pair: tuple[socket.socket, socket.socket]
) -> None:
    kernel, ours = datagram_pair
    if kind == "recvmmsg" and burst._recvmmsg is None:
        pytest.skip("no recvmmsg in this libc")
    recv = functools.partial(ours.recv, 65536)
    reader: burst.Reader = (
        burst.BurstReceiver(ours.fileno(), 100)
        if kind == "recvmmsg"
        else burst.OneByOne(recv, functools.partial(recv, socket.MSG_DONTWAIT))
    )
    sent = [struct.pack("=III", 1, 2, 3), struct.pack("=III", 4, 5, 6) + b"tail"]
    for datagram in sent:
        kernel.send(datagram)
    assert reader.receive(True) == sent
    assert reader.lengths() == [12, 16]
    assert reader.words(0) == [1, 4] and reader.words(8) == [3, 6]


def test_packets_of_a_burst_are_taken_at_once_or_one_by_one_alike() -> None:
    # What the whole-burst path accepts, and what it leaves to the careful one.
    queue, kernel = open_queue()
    odd = packet_message(7)
    odd = odd[:6] + b"\x01\x00" + odd[8:]  # a flag the kernel never sets: careful path
    kernel.inject(packet_message(5), packet_message(6), odd, packet_message(9))
    assert [p.id for p in queue.receive()] == [5, 6, 7, 9]
    assert queue.stats.id_gaps == 1 and queue.stats.malformed == 0
    kernel.inject(packet_message(10), packet_message(11, pad=True))
    assert [p.id for p in queue.receive()] == [10, 11]
    assert len(queue._outstanding) == 6
    queue.close()


#: Messages as lists of (attribute type, payload size); PAYLOAD usually last.
layouts = st.lists(
    st.tuples(st.sampled_from([3, 4, 5, 6, 9, 10, 11, 13, 14, 16, 21]), st.integers(0, 24)),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(layouts, st.integers(0, 40), st.booleans()), min_size=1, max_size=8))
def test_learned_layouts_give_what_the_walk_gives(
    messages: list[tuple[list[tuple[int, int]], int, bool]],
) -> None:
    known = AttributeLayouts()
    for attrs, payload_size, pad in messages:
        encoded = [attr(atype, bytes([atype]) * size) for atype, size in attrs]
        data = packet_message(1, bytes(range(payload_size)), attrs=encoded, pad=pad)
        data = data if payload_size % 4 or not pad else data + bytes(2)  # a stray tail
        expected = attr_spans(data, 32, len(data))
        assert known.spans(data) == expected
        assert known.spans(data) == expected  # from the learned layout this time


def test_a_burst_of_the_learned_layout_knows_its_payloads_at_once() -> None:
    queue, kernel = open_queue()
    indev = attr_be32(const.ATTR_IFINDEX_INDEV, 2)
    (first,) = received(queue, kernel, packet_message(1, attrs=[indev]))
    assert first.payload == UDP4  # learns the layout
    payloads = [UDP4, UDP4 + b"longer", UDP4[:21]]
    same = received(queue, kernel, *(packet_message(i, p, attrs=[indev])
                                     for i, p in enumerate(payloads, 2)))  # fmt: skip
    assert [p._payload_at for p in same] == [44, 44, 44]  # 32 + INDEV (8) + a header
    assert [p.payload for p in same] == payloads
    marked = packet_message(6, attrs=[indev, attr_be32(const.ATTR_MARK, 7)])
    padded = packet_message(6, b"odd", attrs=[indev], pad=True)
    for odd, payload in ((marked, UDP4), (padded, b"odd")):
        mixed = received(queue, kernel, packet_message(5, attrs=[indev]), odd)
        assert [p._payload_at for p in mixed] == [0, 0]  # one of them differs: each on its own
        assert [p.payload for p in mixed] == [UDP4, payload]
        for packet in mixed:
            packet.decide(ACCEPT)
    queue.close()


def test_a_learned_layout_is_not_taken_for_a_message_with_more_after_its_payload() -> None:
    known = AttributeLayouts()
    indev = attr_be32(const.ATTR_IFINDEX_INDEV, 3)
    first = packet_message(1, b"abcd", attrs=[indev])
    tricky = packet_message(2, b"real", attrs=[indev, attr(const.ATTR_PAYLOAD, b"fake"),
                                                attr_be32(const.ATTR_MARK, 7)])  # fmt: skip
    for data in (first, tricky):
        assert known.spans(data) == attr_spans(data, 32, len(data))


# -- verdicts ----------------------------------------------------------------------


def count_sends(queue: Queue, kernel: Kernel) -> list[bytes]:
    """The datagrams of verdicts the queue sends from now on."""
    sends: list[bytes] = []
    real_send = kernel.transport.send

    def counting_send(data: bytes) -> None:
        sends.append(data)
        real_send(data)

    queue._sender._send = counting_send
    return sends


def test_equal_verdicts_go_out_as_one_verdict_batch() -> None:
    queue, kernel = open_queue()
    for packet in received(queue, kernel, *(packet_message(i) for i in range(1, 5))):
        packet.decide(Verdict.accept(mark=9))
    queue.flush()
    for packet in received(queue, kernel, *(packet_message(i) for i in range(5, 8))):
        packet.decide(Verdict.drop(priority=3))  # equal, not the same object
    queue.flush()
    assert sent_verdicts(kernel) == [
        {"batch": True, "code": Action.ACCEPT, "id": 4, "seq": 4, "mark": 9},
        {"batch": True, "code": Action.DROP, "id": 7, "seq": 7, "priority": 3},
    ]
    assert queue.stats.count(Action.ACCEPT) == 4 and queue.stats.count(Action.DROP) == 3
    assert (queue.stats.sends, queue.stats.batches) == (2, 2)
    queue.close()


def test_different_verdicts_go_out_together_in_one_datagram() -> None:
    queue, kernel = open_queue()
    sends = count_sends(queue, kernel)
    verdicts = [ACCEPT, DROP, Verdict.to_queue(3, bypass=True), Verdict.stop(priority=2)]
    packets = received(queue, kernel, *(packet_message(i) for i in range(1, 5)))
    for packet, verdict in zip(packets, verdicts, strict=True):
        queue.decide(packet, verdict)
    queue.receive()  # flushes before it waits
    assert len(sends) == 1
    assert sent_verdicts(kernel) == [
        {"batch": False, "code": 1, "id": 1, "seq": 1},
        {"batch": False, "code": 0, "id": 2, "seq": 2},
        {"batch": False, "code": 3 << 16 | 0x8000 | 3, "id": 3, "seq": 3},
        {"batch": False, "code": 5, "id": 4, "seq": 4, "priority": 2},
    ]
    assert queue.stats.count(Action.QUEUE) == 1 and queue.stats.batches == 0
    queue.close()


def test_plain_verdicts_go_out_in_one_datagram_whatever_their_mix() -> None:
    queue, kernel = open_queue(batch_verdicts=False)
    sends = count_sends(queue, kernel)
    codes = [Action.ACCEPT, Action.DROP, Action.ACCEPT, Action.REPEAT, Action.STOP]
    packets = received(queue, kernel, *(packet_message(i) for i in range(1, 6)))
    for packet, code in zip(packets, codes, strict=True):
        packet.decide(Verdict(code))
    queue.flush()
    for packet in received(queue, kernel, packet_message(6), packet_message(7)):
        packet.decide(DROP)  # after a mix: the same code for all again
    queue.flush()
    assert [(v["id"], v["seq"], v["code"]) for v in sent_verdicts(kernel)] == [
        (i, i, code) for i, code in enumerate([*codes, Action.DROP, Action.DROP], 1)
    ]
    assert [v["batch"] for v in sent_verdicts(kernel)] == [False] * 7
    assert len(sends) == 2
    assert queue.stats.count(Action.ACCEPT) == 2 and queue.stats.count(Action.DROP) == 3


def test_more_plain_verdicts_than_one_datagram_holds() -> None:
    queue, kernel = open_queue(batch_verdicts=False)
    sends = count_sends(queue, kernel)
    total = sender_module.PLAIN_SLOTS + 10
    for first in range(1, total + 1, queue_module.BATCH):
        last = min(total, first + queue_module.BATCH - 1)
        kernel.inject(*(packet_message(i) for i in range(first, last + 1)))
        for packet in queue.receive(0):
            queue.defer(packet)  # held back: their verdicts go out together below
    for packet in list(queue._outstanding.values()):
        packet.decide(ACCEPT)
    queue.flush()
    assert [v["id"] for v in sent_verdicts(kernel)] == list(range(1, total + 1))
    assert len(sends) == 2 and queue.stats.sends == 2


def test_no_batch_while_an_older_packet_waits() -> None:
    # VERDICT_BATCH would answer every queued id up to the highest: the held one too.
    queue, kernel = open_queue()
    held, *rest = received(queue, kernel, *(packet_message(i) for i in range(1, 5)))
    queue.defer(held)
    for packet in rest:
        packet.decide(ACCEPT)
    queue.flush()
    assert [(v["batch"], v["id"]) for v in sent_verdicts(kernel)] == [(False, 2), (False, 3),
                                                                       (False, 4)]  # fmt: skip
    held.decide(ACCEPT)
    queue.flush()
    assert sent_verdicts(kernel)[-1]["id"] == 1
    queue.close()


def test_batching_can_be_turned_off_and_ids_wrap() -> None:
    queue, kernel = open_queue(batch_verdicts=False)
    for packet in received(queue, kernel, packet_message(1), packet_message(2)):
        packet.decide(ACCEPT)
    queue.flush()
    assert [v["batch"] for v in sent_verdicts(kernel)] == [False, False]
    queue.close()
    queue, kernel = open_queue()
    for packet in received(queue, kernel, packet_message(0xFFFFFFFF), packet_message(0)):
        packet.decide(DROP)
    queue.flush()
    assert sent_verdicts(kernel) == [{"batch": True, "code": 0, "id": 0, "seq": 0}]
    queue.close()


def test_a_masked_mark_keeps_the_packet_s_other_bits() -> None:
    queue, kernel = open_queue()
    (packet,) = received(
        queue, kernel, packet_message(1, attrs=[attr_be32(const.ATTR_MARK, 0xF0F)])
    )
    packet.decide(Verdict.accept(mark=0x1, mark_mask=0xFF))
    queue.flush()
    assert sent_verdicts(kernel)[0]["mark"] == 0xF01
    queue.close()


def test_connection_changes_go_in_the_verdict_when_the_kernel_has_the_glue() -> None:
    queue, kernel = open_queue()
    (packet,) = received(queue, kernel, packet_message(1))
    labels = bytes(range(16))
    packet.decide(Verdict.accept(ct_mark=0x1234, ct_mark_mask=0xFF00, labels=labels,
                                 labels_mask=b"\xff" * 16))  # fmt: skip
    queue.flush()
    (sent,) = sent_verdicts(kernel)
    assert sent["ct"] == {
        ct.CTA_MARK: struct.pack("!I", 0x1200),  # the kernel XORs: the mark goes out masked
        ct.CTA_MARK_MASK: struct.pack("!I", 0xFF00),
        ct.CTA_LABELS: labels,
        ct.CTA_LABELS_MASK: b"\xff" * 16,
    }
    queue.close()


class RecordingUpdater:
    def __init__(self, fail: bool = False) -> None:
        self.applied: list[tuple[int, Verdict]] = []
        self.fail = fail

    def apply(self, packet: QueuedPacket, verdict: Verdict) -> None:
        if self.fail:
            raise ValueError("no such connection")
        self.applied.append((packet.id, verdict))

    def close(self) -> None:
        pass


def test_without_the_glue_connection_changes_follow_the_verdict_over_ctnetlink() -> None:
    queue, kernel = open_queue(Kernel(glue=False))
    updater = RecordingUpdater()
    queue._sender.ct_updater = updater  # type: ignore[assignment]
    first, second = received(queue, kernel, packet_message(1), packet_message(2))
    marked = Verdict.accept(ct_mark=5)
    first.decide(marked)
    second.decide(ACCEPT)
    queue.flush()
    assert "ct" not in sent_verdicts(kernel)[0]
    assert updater.applied == [(1, marked)]
    assert queue.stats.ct_updates == 1
    updater.fail = True
    (third,) = received(queue, kernel, packet_message(3))
    third.decide(marked)
    queue.flush()
    assert queue.stats.ct_update_errors == 1
    queue.close()


def test_flow_tuples_for_the_ctnetlink_update() -> None:
    queue, kernel = open_queue()
    tcp = build_ipv6(SRC6, DST6, IPPROTO_TCP, build_tcp(1, 2, 0, 0, 2, 100, b"", SRC6, DST6))
    echo = build_ipv4(SRC, DST, 1, build_icmp_echo(77, 1))
    packets = received(
        queue,
        kernel,
        packet_message(1, tcp, family=socket.AF_INET6, hw_protocol=0x86DD),
        packet_message(2, echo),
        packet_message(3, build_ipv4(SRC, DST, 47, b"gre!")),
    )
    assert flow_tuple(packets[0]) == Tuple(socket.AF_INET6, SRC6, DST6, IPPROTO_TCP, 1, 2)
    assert flow_tuple(packets[1]) == Tuple(socket.AF_INET, SRC, DST, 1, icmp_type=8, icmp_code=0,
                                           icmp_id=77)  # fmt: skip
    assert flow_tuple(packets[2]) == Tuple(socket.AF_INET, SRC, DST, 47)
    queue.close()


def test_a_new_payload_goes_in_the_verdict_but_never_for_a_truncated_packet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue, kernel = open_queue()
    new = with_l4_payload(UDP4, socket.AF_INET, b"answer")
    whole, cut = received(
        queue,
        kernel,
        packet_message(1),
        packet_message(2, attrs=[attr_be32(const.ATTR_CAP_LEN, 3000)]),
    )
    whole.decide(Verdict.accept(payload=new))
    with caplog.at_level(logging.ERROR, "nfkit.nfqueue"):
        cut.decide(Verdict.accept(payload=new))
    queue.flush()
    first, second = sent_verdicts(kernel)
    assert first["payload"] == new
    assert second == {"batch": False, "code": Action.DROP, "id": 2, "seq": 2}
    assert "packet 2 was truncated" in caplog.text
    queue.close()


def test_a_late_decision_is_counted_and_ignored() -> None:
    queue, kernel = open_queue()
    (packet,) = received(queue, kernel, packet_message(1))
    packet.decide(DROP)
    packet.decide(ACCEPT)
    queue.flush()
    assert [v["code"] for v in sent_verdicts(kernel)] == [Action.DROP]
    assert queue.stats.late == 1
    queue.close()


def test_decisions_from_other_threads_wake_the_loop() -> None:
    queue, kernel = open_queue()
    (packet,) = received(queue, kernel, packet_message(1))
    worker = threading.Thread(target=packet.decide, args=(Verdict.accept(mark=3),))
    worker.start()
    worker.join()
    assert not sent_verdicts(kernel)  # handed over, not sent by the other thread
    assert queue.receive(timeout=5) == []
    queue.flush()
    assert sent_verdicts(kernel)[0]["mark"] == 3
    queue.close()


def test_deadlines_give_the_default_verdict() -> None:
    queue, kernel = open_queue(deadline=0.0, default=Verdict.accept(mark=1))
    first, second = received(queue, kernel, packet_message(1), packet_message(2))
    second.decide(DROP)
    queue.receive()  # the deadline has passed: first gets the default verdict
    queue.flush()
    assert {v["id"]: v["code"] for v in sent_verdicts(kernel)} == {2: Action.DROP, 1: Action.ACCEPT}
    assert queue.stats.expired == 1
    first.decide(DROP)
    assert queue.stats.late == 1
    queue.close()


def test_a_deferred_packet_has_its_own_deadline() -> None:
    queue, kernel = open_queue(deadline=3600.0)
    _waiting, held = received(queue, kernel, packet_message(1), packet_message(2))
    queue.defer(held, timeout=0.0)
    queue.receive()
    queue.flush()
    assert [(v["id"], v["code"]) for v in sent_verdicts(kernel)] == [(2, Action.DROP)]
    assert (queue.stats.deferred, queue.stats.expired, queue.waiting) == (1, 1, 1)
    assert queue.next_due is not None  # the first packet's hour
    queue.close()


def test_close_answers_waiting_and_unread_packets() -> None:
    queue, kernel = open_queue(default=ACCEPT)
    received(queue, kernel, packet_message(1), packet_message(2))
    kernel.inject(packet_message(3))  # queued by the kernel, not read yet
    queue.close()
    assert sent_verdicts(kernel) == [{"batch": True, "code": Action.ACCEPT, "id": 3, "seq": 3}]
    assert queue.stats.answered_at_close == 3
    assert queue.closed and queue.kernel_counters() is None
    queue.close()  # twice is fine


def test_the_iterator_sends_verdicts_before_it_waits() -> None:
    queue, kernel = open_queue()
    kernel.inject(packet_message(1), packet_message(2))
    seen = []
    for packet in queue:
        seen.append(packet.id)
        packet.decide(ACCEPT)
        if len(seen) == 2:
            queue.close()
    assert seen == [1, 2] and queue.stats.count(Action.ACCEPT) == 2


# -- modes -------------------------------------------------------------------------


def test_repeat_mode_marks_accepted_packets_and_passes_marked_ones_at_once() -> None:
    queue, kernel = open_queue(mode=RepeatMode(0x1, 0x1))
    handed = received(
        queue,
        kernel,
        packet_message(1, attrs=[attr_be32(const.ATTR_MARK, 0x100)]),
        packet_message(2, attrs=[attr_be32(const.ATTR_MARK, 0x101)]),
    )
    assert [p.id for p in handed] == [1]  # 2 carries the bit: accepted without asking
    handed[0].decide(ACCEPT)
    queue.flush()
    assert sorted((v["id"], v["code"], v.get("mark")) for v in sent_verdicts(kernel)) == [
        (1, Action.REPEAT, 0x101),
        (2, Action.ACCEPT, None),
    ]
    queue.close()


def test_a_default_accept_is_the_mode_s_accept_too() -> None:
    # An IPS must not let a packet skip the rest of its chain because a handler failed.
    queue, kernel = open_queue(mode=RepeatMode(0x1, 0x1), default=ACCEPT, deadline=0.0)
    first, _second = received(queue, kernel, packet_message(1), packet_message(2))
    queue.receive()  # both expire
    queue.close()
    assert {(v["code"], v.get("mark")) for v in sent_verdicts(kernel)} == {(Action.REPEAT, 1)}
    assert queue.stats.expired == 2 and first.id == 1


def test_route_mode_sends_accepted_packets_to_another_queue_and_drops_stay_drops() -> None:
    queue, kernel = open_queue(mode=RouteMode(7))
    first, second = received(queue, kernel, packet_message(1), packet_message(2))
    first.decide(Verdict.accept(mark=4))
    second.decide(DROP)
    queue.flush()
    assert [(v["code"], v.get("mark")) for v in sent_verdicts(kernel)] == [
        (7 << 16 | Action.QUEUE, 4),
        (Action.DROP, None),
    ]
    queue.close()


# -- the Verdict type ----------------------------------------------------------------


def test_verdict_options_are_checked() -> None:
    for bad in (
        lambda: Verdict.accept(mark=-1),
        lambda: Verdict.accept(mark=1 << 32),
        lambda: Verdict.to_queue(70000),
        lambda: Verdict.accept(queue_num=3),
        lambda: Verdict.accept(labels=b"abc"),
        lambda: Verdict.accept(labels=bytes(16), labels_mask=bytes(8)),
        lambda: Verdict.accept(payload=b""),
        lambda: Verdict(2),  # NF_STOLEN: the kernel refuses it
    ):
        with pytest.raises((EncodeError, ValueError)):
            bad()


def test_verdict_marks_compose() -> None:
    verdict = Verdict.accept(mark=0x10, mark_mask=0xF0).with_mark(0x1, 0x1)
    assert (verdict.mark, verdict.mark_mask) == (0x11, 0xF1)
    assert verdict.mark_for(0xF00) == 0xF11
    assert ACCEPT.mark_for(5) is None
    assert Verdict.accept(mark=3).mark_for(0xFF) == 3
    assert ACCEPT.with_mark(0xFF, 0x0F) == Verdict.accept(mark=0xF, mark_mask=0xF)
    assert str(Verdict.to_queue(2, bypass=True)) == "queue 2 bypass" and str(DROP) == "drop"
    assert Verdict.repeat().code == 4 and Verdict.stop().code == 5
    assert {ACCEPT, Verdict.accept()} == {ACCEPT}


# -- payload helpers -----------------------------------------------------------------


def checksums_ok(data: bytes, family: int) -> bool:
    decoded = decode(data, family)
    ip, start = decoded.ip, decoded.l4_offset
    assert ip is not None and start is not None
    segment = data[start:]
    if family == socket.AF_INET and ipv4_header_checksum(data[:20]) != ip.checksum:
        return False
    l4 = decoded.l4
    assert l4 is not None
    expected = {
        IPPROTO_UDP: lambda: udp_checksum(ip.src, ip.dst, segment),
        IPPROTO_TCP: lambda: tcp_checksum(ip.src, ip.dst, segment),
        1: lambda: icmp_checksum(segment),
    }[decoded.l4_protocol or 0]()
    return bool(expected == l4.checksum)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_with_l4_payload_fixes_lengths_and_checksums(family: int) -> None:
    src, dst = (SRC, DST) if family == socket.AF_INET else (SRC6, DST6)
    build = build_ipv4 if family == socket.AF_INET else build_ipv6
    udp = build(src, dst, IPPROTO_UDP, build_udp(1, 2, b"short", src, dst))
    longer = with_l4_payload(udp, family, b"a much longer payload")
    decoded = decode(longer, family)
    assert decoded.payload == b"a much longer payload"
    assert decoded.l4 is not None and decoded.l4.length == 8 + 21  # type: ignore[union-attr]
    assert checksums_ok(longer, family)
    tcp = build(src, dst, IPPROTO_TCP, build_tcp(1, 2, 3, 4, 0x18, 100, b"GET", src, dst))
    changed = with_l4_payload(tcp, family, b"PUT")
    assert decode(changed, family).payload == b"PUT" and checksums_ok(changed, family)
    with pytest.raises(ValueError, match="no complete L4 header"):
        with_l4_payload(udp[: 24 if family == socket.AF_INET else 44], family, b"x")


# -- handlers ------------------------------------------------------------------------


def serve_once(
    queue: Queue, handler: Callable[[QueuedPacket], Any] | None, **options: Any
) -> Server:
    server = Server(queue, handler, **options)
    expected = queue.stats.received + len(queue._transport._pending)  # type: ignore[attr-defined]

    def stop_when_done() -> None:
        if queue.stats.received >= expected and not queue.waiting:
            server.stop()

    original = queue.flush

    def flush() -> None:
        original()
        stop_when_done()

    queue.flush = flush  # type: ignore[method-assign]
    server.run()
    queue.flush = original  # type: ignore[method-assign]
    queue.flush()
    return server


def test_handler_results_bools_verdicts_and_failures(caplog: pytest.LogCaptureFixture) -> None:
    queue, kernel = open_queue(default=Verdict.drop())
    kernel.inject(*(packet_message(i) for i in range(1, 6)))
    results: dict[int, Any] = {1: True, 2: False, 3: Verdict.accept(mark=8), 4: None}

    def handler(packet: QueuedPacket) -> Any:
        if packet.id == 5:
            raise RuntimeError("boom")
        return results[packet.id]

    with caplog.at_level(logging.ERROR, "nfkit.nfqueue"):
        serve_once(queue, handler)
    codes = {v["id"]: (v["code"], v.get("mark")) for v in sent_verdicts(kernel)}
    assert codes == {1: (1, None), 2: (0, None), 3: (1, 8), 4: (0, None), 5: (0, None)}
    assert (queue.stats.invalid_results, queue.stats.handler_errors) == (1, 1)
    name = f"{__name__}:test_handler_results_bools_verdicts_and_failures.<locals>.handler"
    assert f"handler {name} returned None for packet 4 of queue 0, not a verdict" in caplog.text
    assert (
        f"handler {name} raised on packet 5" in caplog.text and "RuntimeError: boom" in caplog.text
    )
    queue.close()


def test_without_a_handler_every_packet_is_accepted() -> None:
    queue, kernel = open_queue(batch_verdicts=False)
    kernel.inject(*(packet_message(i) for i in range(1, 4)))
    serve_once(queue, None)
    assert [(v["id"], v["code"]) for v in sent_verdicts(kernel)] == [
        (1, Action.ACCEPT), (2, Action.ACCEPT), (3, Action.ACCEPT)
    ]  # fmt: skip
    queue.close()


def test_worker_threads_and_deferred_decisions() -> None:
    queue, kernel = open_queue(batch_verdicts=False)  # one verdict per id, to compare
    kernel.inject(*(packet_message(i) for i in range(1, 5)))
    later: list[QueuedPacket] = []
    threads = set()

    def handler(packet: QueuedPacket) -> Any:
        threads.add(threading.get_ident())
        if packet.id % 2:
            return ACCEPT
        later.append(packet)
        if len(later) == 2:
            for waiting in later:  # decided from a thread that is not the loop
                threading.Thread(target=waiting.decide, args=(DROP,)).start()
        return packet.defer()

    serve_once(queue, handler, workers=2)
    assert threading.get_ident() not in threads
    assert {v["id"]: v["code"] for v in sent_verdicts(kernel)} == {1: 1, 2: 0, 3: 1, 4: 0}
    # A decision may overtake its own defer(): that defer is then ignored.
    assert queue.stats.deferred <= 2 and queue.stats.late == 0
    queue.close()


def test_one_server_serves_several_queues() -> None:
    kernels = [Kernel(), Kernel()]
    queues = [Queue(n, transport=k.transport) for n, k in enumerate(kernels)]
    for kernel in kernels:
        kernel.inject(packet_message(1), packet_message(2))
    seen: list[tuple[int, int]] = []

    def handler(packet: QueuedPacket) -> bool:
        seen.append((packet.queue.number, packet.id))
        if len(seen) == 4:
            server.stop()
        return True

    server = Server(queues, handler)
    server.run()
    for queue in queues:
        queue.close()
    assert sorted(seen) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(v["code"] == Action.ACCEPT for k in kernels for v in sent_verdicts(k))


def test_asyncio_serve_with_a_coroutine_handler() -> None:
    queue, kernel = open_queue()
    kernel.inject(*(packet_message(i) for i in range(1, 4)))

    async def handler(packet: QueuedPacket) -> Verdict:
        await asyncio.sleep(0)
        if packet.id == 2:
            raise ValueError("no user")
        return Verdict.accept(mark=packet.id)

    async def main() -> None:
        task = asyncio.ensure_future(aio.serve(queue, handler))
        while len(sent_verdicts(kernel)) < 3:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert {v["id"]: (v["code"], v.get("mark")) for v in sent_verdicts(kernel)} == {
        1: (1, 1), 2: (0, None), 3: (1, 3),
    }  # fmt: skip
    assert queue.closed and queue.stats.handler_errors == 1


def test_asyncio_iteration() -> None:
    queue, kernel = open_queue()
    kernel.inject(packet_message(1), packet_message(2))

    async def main() -> list[int]:
        ids = []
        async with aio.AsyncQueue(queue) as packets:
            async for packet in packets:
                ids.append(packet.id)
                packet.decide(ACCEPT)
                if len(ids) == 2:
                    await asyncio.sleep(0)  # the scheduled flush runs
                    break
        return ids

    assert asyncio.run(main()) == [1, 2]
    assert {v["id"] for v in sent_verdicts(kernel)} in ({1, 2}, {2})
    assert queue.closed


# -- the runner's option handling ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mode", "repeat"], "--mode repeat needs --repeat-mark MARK/MASK"),
        (["--mode", "repeat", "--repeat-mark", "x/1"], "--repeat-mark 'x/1': write MARK/MASK"),
        (["--mode", "repeat", "--repeat-mark", "1/0"], "the mask not 0"),
        (["--mode", "route"], "--mode route needs --route-queue N"),
        (["--handler", "nosuch_module_here:f"], "cannot import 'nosuch_module_here'"),
        (["--handler", "os:nosuch"], "os has no function 'nosuch'"),
        (["--handler", "justaname"], "write MODULE:FUNCTION"),
        (["--maxlen", "0"], "--maxlen 0: at least 1"),
        (["--deadline-ms", "-5"], "--deadline-ms -5: not negative"),
    ],
)
def test_runner_options_are_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--queue", "0", *argv]) == 2
    assert message in capsys.readouterr().err


def test_runner_options_make_the_queue_options(tmp_path: Any, monkeypatch: Any) -> None:
    args = cli.parser().parse_args(
        ["--queue", "1:2", "--mode", "repeat", "--repeat-mark", "0x10/0xf0", "--fail-open",
         "--default-verdict", "accept", "--deadline-ms", "250", "--maxlen", "8"]
    )  # fmt: skip
    options = cli.queue_options(args)
    assert options["flags"] == Flag.FAIL_OPEN and options["default"] == ACCEPT
    assert (options["deadline"], options["maxlen"]) == (0.25, 8)
    mode = options["mode"]
    assert isinstance(mode, RepeatMode) and (mode.mark, mode.mask) == (0x10, 0xF0)
    assert cli.parse_mark("5") == (5, 0xFFFFFFFF)
    (tmp_path / "myhandler.py").write_text("def check(packet):\n    return True\n")
    monkeypatch.chdir(tmp_path)
    assert cli.load_handler("myhandler:check")(None) is True  # type: ignore[arg-type]


def test_runner_statistics_lines() -> None:
    queue, kernel = open_queue()
    for packet in received(queue, kernel, packet_message(1), packet_message(3)):
        packet.decide(ACCEPT)
    queue.flush()
    counters = {0: KernelCounters(0, 1, 0, 2, 65531, 4, 5, 3)}
    (line,) = cli.stats_lines([queue], counters)
    assert line.startswith("queue 0: received=2 dropped=0 accepted=2 ")
    assert "id_gaps=1" in line and line.endswith(
        "kernel_waiting=0 kernel_dropped=4 kernel_user_dropped=5 kernel_id_sequence=3"
    )
    queue.close()
