"""Netlink core: codec, error decoding, Connection against a fake and the real kernel."""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfkit import nflog
from nfkit.lab import Lab
from nfkit.netlink import (
    NETLINK_NETFILTER,
    BufferOverrun,
    Connection,
    DecodeError,
    DumpInterrupted,
    EncodeError,
    Message,
    NetlinkError,
    NetlinkExists,
    NetlinkNotFound,
    NetlinkNotSupported,
    NetlinkPermissionError,
    TruncatedError,
    attr,
    attr_spans,
    codec,
    iter_attrs,
)
from nfkit.netlink.codec import (
    HDRLEN,
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_OVERRUN,
    NLMSGERR,
    NLMSGHDR,
    parse_error,
    parse_messages,
)
from nfkit.netlink.testing import FakeTransport, ack, done, error

MSG_TYPE = 0x0401  # any type >= NLMSG_MIN_TYPE

messages = st.builds(
    Message,
    type=st.integers(0, 0xFFFF),
    flags=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFFFFFF),
    pid=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=64),
)
attributes = st.lists(st.tuples(st.integers(0, 0x3FFF), st.binary(max_size=40)), max_size=8)


# -- codec -------------------------------------------------------------------


@given(st.lists(messages, min_size=1, max_size=6))
def test_messages_round_trip(batch: list[Message]) -> None:
    datagram = b"".join(m.encode() for m in batch)
    assert len(datagram) % 4 == 0
    assert parse_messages(datagram) == batch


def test_message_encoding_layout() -> None:
    raw = Message(0x0401, NLM_F_REQUEST | NLM_F_ACK, 7, 99, b"abcde").encode()
    assert NLMSGHDR.unpack_from(raw) == (21, 0x0401, 5, 7, 99)
    assert raw[HDRLEN:] == b"abcde\0\0\0"  # length counts 21, padding to 24


def test_unpadded_last_message() -> None:
    first = Message(MSG_TYPE, payload=b"abc")
    last = Message(MSG_TYPE, seq=2, payload=b"12345")
    datagram = first.encode() + last.encode()[: HDRLEN + 5]  # as the kernel sends it
    assert parse_messages(datagram) == [first, last]


@given(attributes)
def test_attributes_round_trip(attrs: list[tuple[int, bytes]]) -> None:
    data = b"".join(attr(t, p) for t, p in attrs)
    assert len(data) % 4 == 0
    walked = [(t, data[s:e]) for t, s, e in iter_attrs(data, 0, len(data))]
    assert walked == attrs
    spans = attr_spans(data, 0, len(data))
    assert {t: data[s:e] for t, (s, e) in spans.items()} == dict(attrs)  # last one wins


@given(attributes.filter(bool))
def test_unpadded_last_attribute(attrs: list[tuple[int, bytes]]) -> None:
    data = b"".join(attr(t, p) for t, p in attrs)
    unpadded = data[: len(data) - (codec.align4(4 + len(attrs[-1][1])) - 4 - len(attrs[-1][1]))]
    assert [(t, unpadded[s:e]) for t, s, e in iter_attrs(unpadded, 0, len(unpadded))] == attrs


def test_attribute_alignment() -> None:
    data = attr(1, b"abc") + attr(2, b"") + attr(3, b"\x01\x02\x03\x04\x05")
    assert len(data) == 8 + 4 + 12
    assert struct.unpack_from("=HH", data, 0) == (7, 1)  # length excludes the padding
    assert struct.unpack_from("=HH", data, 8) == (4, 2)
    assert struct.unpack_from("=HH", data, 12) == (9, 3)
    assert [(t, e - s) for t, s, e in iter_attrs(data, 0, len(data))] == [(1, 3), (2, 0), (3, 5)]


def test_nested_attributes_and_flag_masking() -> None:
    inner = [codec.attr_be16(1, 0x8100), codec.attr_be16(2, 42)]
    data = codec.attr_nested(20, inner) + attr(5 | NLA_F_NET_BYTEORDER, b"\0\0\0\x07")
    assert struct.unpack_from("=HH", data)[1] == 20 | NLA_F_NESTED
    outer = list(iter_attrs(data, 0, len(data)))
    assert [t for t, _, _ in outer] == [20, 5]
    _, start, end = outer[0]
    assert {t: codec.get_be16(data, s) for t, s, _ in iter_attrs(data, start, end)} == {
        1: 0x8100,
        2: 42,
    }
    assert codec.get_be32(data, outer[1][1]) == 7


def test_scalar_helpers() -> None:
    assert codec.get_u8(codec.attr_u8(1, 200), 4) == 200
    assert codec.get_be32(codec.attr_be32(1, 0xDEADBEEF), 4) == 0xDEADBEEF
    assert codec.get_be64(codec.attr_be64(1, 2**40 + 3), 4) == 2**40 + 3
    data = codec.attr_string(1, "eth0")
    assert codec.get_string(data, 4, 4 + 5) == "eth0"
    assert codec.get_string(b"abc") == "abc"  # no NUL at all
    assert codec.get_string(b"ab\0junk") == "ab"
    assert codec.nfgenmsg(2, 0x1234) == b"\x02\x00\x12\x34"
    assert codec.nfnl_type(4, 1) == 0x0401


def test_attribute_too_long() -> None:
    with pytest.raises(EncodeError, match="too long"):
        attr(1, b"x" * 0xFFFC)
    assert len(attr(1, b"x" * 0xFFFB)) == 0xFFFF + 1


@pytest.mark.parametrize(
    "datagram",
    [
        NLMSGHDR.pack(40, MSG_TYPE, 0, 0, 0) + b"\0" * 8,  # declares more than present
        NLMSGHDR.pack(8, MSG_TYPE, 0, 0, 0),  # shorter than its own header
        Message(MSG_TYPE, payload=b"abcd").encode() + NLMSGHDR.pack(0, 0, 0, 0, 0),
    ],
)
def test_truncated_messages(datagram: bytes) -> None:
    with pytest.raises(TruncatedError):
        parse_messages(datagram)


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("=HH", 3, 1),  # length below the header
        struct.pack("=HH", 12, 1) + b"abcd",  # longer than the buffer
        attr(1, b"ok") + struct.pack("=HH", 200, 2),
    ],
)
def test_truncated_attributes(data: bytes) -> None:
    with pytest.raises(TruncatedError):
        list(iter_attrs(data, 0, len(data)))
    with pytest.raises(TruncatedError):
        attr_spans(data, 0, len(data))
    with pytest.raises(TruncatedError):
        codec.attr_bytes(data, 0, len(data))


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_garbage_never_crashes_the_codec(data: bytes) -> None:
    for decode in (
        parse_messages,
        lambda d: list(iter_attrs(d, 0, len(d))),
        lambda d: attr_spans(d, 0, len(d)),
        lambda d: parse_error(d, 0),
        lambda d: parse_error(d, NLM_F_CAPPED | NLM_F_ACK_TLVS),
        lambda d: parse_error(d, NLM_F_ACK_TLVS),
    ):
        with contextlib.suppress(TruncatedError):
            decode(data)


@settings(max_examples=300)
@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_cut_datagrams_raise_truncated_or_keep_whole_messages(
    batch: list[Message], data: st.DataObject
) -> None:
    datagram = b"".join(m.encode() for m in batch)
    cut = data.draw(st.integers(0, len(datagram) - 1))
    try:
        parsed = parse_messages(datagram[:cut])
    except TruncatedError:
        return
    assert parsed == batch[: len(parsed)]


@settings(max_examples=300)
@given(st.binary(max_size=60), st.integers(0, 0xFFFF), st.data())
def test_error_tlvs_garbage(tlvs: bytes, flags: int, data: st.DataObject) -> None:
    """Structurally plausible NLMSG_ERROR bodies with random TLV areas."""
    echoed_len = data.draw(st.integers(0, 80))
    body = NLMSGERR.pack(-22) + NLMSGHDR.pack(echoed_len, MSG_TYPE, 5, 1, 2) + tlvs
    try:
        reply = parse_error(body, flags | NLM_F_ACK_TLVS)
    except TruncatedError:
        return
    assert reply.code == -22
    assert reply.request is not None and reply.request.seq == 1


# -- NLMSG_ERROR ------------------------------------------------------------------


def _error_body(code: int, request: Message, capped: bool, tlvs: bytes = b"") -> bytes:
    echoed = request.encode()
    if capped:
        echoed = echoed[:HDRLEN]
    return NLMSGERR.pack(code) + echoed + tlvs


def test_parse_ack() -> None:
    request = Message(MSG_TYPE, NLM_F_REQUEST | NLM_F_ACK, 9, 1234, b"payload!")
    reply = parse_error(_error_body(0, request, capped=True), NLM_F_CAPPED)
    assert reply.code == 0
    assert reply.request == Message(MSG_TYPE, NLM_F_REQUEST | NLM_F_ACK, 9, 1234, b"")
    assert (reply.message, reply.offset, reply.extras) == ("", None, {})


def test_parse_error_with_echoed_request() -> None:
    request = Message(MSG_TYPE, NLM_F_REQUEST, 3, 77, b"\x02\x00\x00\x05" + attr(1, b"\x01"))
    reply = parse_error(_error_body(-errno.EINVAL, request, capped=False), 0)
    assert reply.code == -errno.EINVAL
    assert reply.request == request


@pytest.mark.parametrize("capped", [True, False])
def test_parse_error_extended_ack(capped: bool) -> None:
    request = Message(MSG_TYPE, NLM_F_REQUEST | NLM_F_ACK, 3, 77, b"\x00\x00\x00\x05abc")
    tlvs = (
        attr(codec.NLMSGERR_ATTR_MSG, b"Attribute failed policy validation\0")
        + attr(codec.NLMSGERR_ATTR_OFFS, struct.pack("=I", 28))
        + codec.attr_nested(4, [codec.attr_be32(1, 6)])
    )
    flags = NLM_F_ACK_TLVS | (NLM_F_CAPPED if capped else 0)
    reply = parse_error(_error_body(-errno.ERANGE, request, capped, tlvs), flags)
    assert reply.code == -errno.ERANGE
    assert reply.message == "Attribute failed policy validation"
    assert reply.offset == 28
    assert list(reply.extras) == [4]  # unknown TLVs are kept
    assert reply.request is not None
    assert reply.request.payload == (b"" if capped else request.payload)


def test_parse_error_ignores_tlvs_without_flag() -> None:
    request = Message(MSG_TYPE, seq=1)
    body = _error_body(-1, request, True, attr(codec.NLMSGERR_ATTR_MSG, b"hidden\0"))
    assert parse_error(body, NLM_F_CAPPED).message == ""


def test_parse_error_short_offset_attribute() -> None:
    body = _error_body(-22, Message(MSG_TYPE), True, attr(codec.NLMSGERR_ATTR_OFFS, b"\x01\x00"))
    reply = parse_error(body, NLM_F_CAPPED | NLM_F_ACK_TLVS)
    assert reply.offset is None


def test_parse_error_too_short() -> None:
    with pytest.raises(TruncatedError):
        parse_error(NLMSGERR.pack(-1) + b"\0" * 8, 0)


# -- Connection against the fake -----------------------------------------------------


def test_ack_and_sequence_numbers() -> None:
    transport = FakeTransport(lambda request: None)
    conn = Connection(transport)
    assert conn.request(Message(MSG_TYPE, payload=b"\0\0\0\0")) == []
    assert conn.request(Message(MSG_TYPE)) == []
    first, second = transport.sent
    assert first.flags == NLM_F_REQUEST | NLM_F_ACK
    assert first.seq != 0  # 0 is the kernel's own messages
    assert second.seq == first.seq + 1
    assert first.payload == b"\0\0\0\0"


def test_data_replies_before_the_ack_are_returned() -> None:
    def handler(request: Message) -> list[Message]:
        return [Message(MSG_TYPE, payload=b"echo"), ack(request)]

    transport = FakeTransport(handler)
    replies = Connection(transport).request(Message(MSG_TYPE))
    assert replies == [Message(MSG_TYPE, 0, transport.sent[0].seq, transport.portid, b"echo")]


@pytest.mark.parametrize(
    ("code", "cls", "builtin"),
    [
        (errno.EPERM, NetlinkPermissionError, PermissionError),
        (errno.EACCES, NetlinkPermissionError, PermissionError),
        (errno.ENOENT, NetlinkNotFound, FileNotFoundError),
        (errno.EEXIST, NetlinkExists, FileExistsError),
        (524, NetlinkNotSupported, NetlinkError),
        (errno.EINVAL, NetlinkError, OSError),
    ],
)
def test_errno_becomes_typed_exception(
    code: int, cls: type[NetlinkError], builtin: type[Exception]
) -> None:
    conn = Connection(FakeTransport(lambda request: [error(request, code)]))
    with pytest.raises(cls) as info:
        conn.request(Message(MSG_TYPE), "bind group 5")
    assert type(info.value) is cls
    assert isinstance(info.value, builtin)
    assert info.value.errno == code
    assert str(info.value).startswith(f"[Errno {code}] bind group 5: ")
    assert "Unknown error" not in str(info.value)


def test_extended_ack_text_in_exception() -> None:
    def handler(request: Message) -> list[Message]:
        return [error(request, errno.EPERM, "group owned by another socket")]

    with pytest.raises(PermissionError) as info:
        Connection(FakeTransport(handler)).request(Message(MSG_TYPE))
    assert info.value.message == "group owned by another socket"  # type: ignore[attr-defined]
    assert "Operation not permitted: group owned by another socket" in str(info.value)
    assert "request type 0x0401" in str(info.value)


def _dump_transport(parts: int, interrupted_at: int | None = None) -> FakeTransport:
    """A fake answering a dump with ``parts`` messages over two datagrams, then DONE."""
    transport = FakeTransport(lambda request: None)

    def handler(request: Message) -> list[Message]:
        replies = []
        for index in range(parts):
            flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if index == interrupted_at else 0)
            replies.append(Message(MSG_TYPE, flags, request.seq, 0, bytes([index]) * 4))
        head, tail = replies[: parts // 2], replies[parts // 2 :]
        transport.inject(b"".join(m.encode() for m in head))
        return [*tail, done(request)]

    transport.handler = handler
    return transport


def test_dump_is_collected_until_done() -> None:
    transport = _dump_transport(5)
    replies = Connection(transport).request(Message(MSG_TYPE, NLM_F_DUMP))
    assert [r.payload for r in replies] == [bytes([i]) * 4 for i in range(5)]
    assert all(r.flags & NLM_F_MULTI for r in replies)
    (sent,) = transport.sent
    assert sent.flags == NLM_F_REQUEST | NLM_F_DUMP  # no ACK asked for a dump


def test_dump_interrupted_keeps_partial_results() -> None:
    with pytest.raises(DumpInterrupted) as info:
        Connection(_dump_transport(4, interrupted_at=2)).request(
            Message(MSG_TYPE, NLM_F_DUMP), "dump table"
        )
    assert [r.payload[0] for r in info.value.partial] == [0, 1, 2, 3]
    assert info.value.errno == errno.EINTR
    assert "dump table" in str(info.value)


def test_error_in_the_middle_of_a_dump() -> None:
    def handler(request: Message) -> list[Message]:
        return [Message(MSG_TYPE, NLM_F_MULTI), error(request, errno.ENOENT)]

    with pytest.raises(FileNotFoundError):
        Connection(FakeTransport(handler)).request(Message(MSG_TYPE, NLM_F_DUMP))


def _transport_with_events(*events: Message) -> FakeTransport:
    """A fake that queues kernel-originated ``events`` before each ACK.

    They are injected as raw datagrams because the fake stamps handler
    replies with the request's sequence number.
    """
    transport = FakeTransport(lambda request: None)

    def handler(request: Message) -> list[Message]:
        for event in events:
            transport.inject(event.encode())
        return [ack(request)]

    transport.handler = handler
    return transport


def test_unsolicited_messages_go_to_the_callback() -> None:
    seen: list[Message] = []
    stale = Message(NLMSG_ERROR, 0, 1000, 0, NLMSGERR.pack(0) + b"\0" * 16)
    transport = _transport_with_events(
        Message(0x0400, 0, 0, 0, b"packet"), stale, Message(0x0400, 0, 0, 0, b"another")
    )
    conn = Connection(transport, on_unsolicited=seen.append)
    assert conn.request(Message(MSG_TYPE)) == []
    # Seq 0 is delivered; a reply to somebody else's request is dropped.
    assert [m.payload for m in seen] == [b"packet", b"another"]
    assert all(m.seq == 0 for m in seen)


def test_unsolicited_messages_dropped_without_callback() -> None:
    transport = _transport_with_events(Message(0x0400, 0, 0, 0, b"packet"))
    assert Connection(transport).request(Message(MSG_TYPE)) == []


def test_overrun_message_raises_buffer_overrun() -> None:
    def handler(request: Message) -> list[Message]:
        return [Message(NLMSG_OVERRUN, 0, request.seq), ack(request)]

    with pytest.raises(BufferOverrun) as info:
        Connection(FakeTransport(handler)).request(Message(MSG_TYPE))
    assert info.value.errno == errno.ENOBUFS


def test_fake_transport_is_selectable_and_closes() -> None:
    transport = FakeTransport(lambda request: None)
    conn = Connection(transport)
    with pytest.raises(BlockingIOError):
        conn.receive()
    transport.inject(Message(NLMSG_DONE).encode())
    assert select.select([conn.fileno()], [], [], 0)[0] == [conn.fileno()]
    assert conn.receive() == [Message(NLMSG_DONE)]
    with conn:
        pass
    conn.close()  # twice is fine


# -- the real kernel ---------------------------------------------------------------


def _config_request(group: int, *attrs: bytes) -> Message:
    return Message(nflog.MSG_CONFIG, payload=codec.nfgenmsg(0, group) + b"".join(attrs))


@pytest.mark.lab
def test_kernel_extended_ack_names_the_bad_attribute(lab: Lab) -> None:
    with lab.entered(lab.a):
        conn = Connection.open(NETLINK_NETFILTER)
    with conn:
        bind = attr(nflog.CFG_CMD, bytes([nflog.Command.BIND]))
        short_mode = attr(nflog.CFG_MODE, b"\0\x02")  # needs 6 bytes
        with pytest.raises(NetlinkError) as info:
            conn.request(_config_request(7, bind, short_mode), "configure group 7")
        exc = info.value
        assert exc.errno == errno.ERANGE
        assert exc.message == "Attribute failed policy validation"
        # The offset points at the MODE attribute inside our request.
        assert exc.offset == HDRLEN + 4 + len(bind)
        assert "configure group 7: Numerical result out of range: Attribute failed" in str(exc)

        # An unknown command: the kernel's ENOTSUPP (524), typed.
        with pytest.raises(NetlinkNotSupported, match="ENOTSUPP"):
            conn.request(_config_request(7, attr(nflog.CFG_CMD, b"\x09")))
        # Parameters for a group nobody bound: ENODEV.
        with pytest.raises(NetlinkError) as info:
            conn.request(_config_request(8, codec.attr_be32(nflog.CFG_QTHRESH, 5)))
        assert info.value.errno == errno.ENODEV
        # And a valid request is simply acknowledged.
        assert conn.request(_config_request(7, bind)) == []


@pytest.mark.lab
def test_buffer_overrun_then_socket_keeps_working(lab: Lab) -> None:
    lab.iptables(lab.a, "-A", "OUTPUT", "-p", "udp", "--dport", "5000",
                 "-j", "NFLOG", "--nflog-group", "5")  # fmt: skip
    with lab.entered(lab.a):
        log = nflog.NflogSocket(receive_buffer=4096)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with log, sender:
        assert log.sock.receive_buffer <= 16384
        log.bind(5, qthreshold=1, flags=nflog.Flag.SEQ)  # one datagram per packet
        for _ in range(200):
            sender.sendto(b"x" * 200, (lab.b.ip4, 5000))
        log.sock.set_timeout(0.5)
        received: list[nflog.LogPacket] = []
        overruns = 0
        while True:
            try:
                received += log.receive()
            except BufferOverrun as exc:
                overruns += 1
                assert exc.errno == errno.ENOBUFS
            except TimeoutError:
                break
        assert overruns == 1
        assert 0 < len(received) < 200
        assert [p.seq for p in received] == list(range(len(received)))
        # Drained: the socket is usable again and the sequence shows the loss.
        for index in range(5):
            sender.sendto(b"after%d" % index, (lab.b.ip4, 5000))
        after: list[nflog.LogPacket] = []
        deadline = time.monotonic() + 5
        while len(after) < 5 and time.monotonic() < deadline:
            after += log.receive()
        assert [p.seq for p in after] == list(range(200, 205))
        assert [p.payload[-6:] for p in after] == [b"after%d" % i for i in range(5)]


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(TruncatedError, DecodeError)
    assert issubclass(DecodeError, ValueError)
