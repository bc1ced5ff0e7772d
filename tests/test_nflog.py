"""The NFLOG library: real-kernel attribute decoding, and synthetic odd layouts.

Every datagram captured from the kernel also goes through
:func:`assert_fast_path_matches`: the compiled-layout parsers must give exactly
the fields of the generic attribute walk, for LogPacket and dict targets.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfkit import nflog
from nfkit.lab import Lab, Node
from nfkit.netlink import (
    DecodeError,
    NetlinkBusy,
    NetlinkError,
    NetlinkNoDevice,
    NetlinkPermissionError,
    TruncatedError,
    codec,
)
from nfkit.netlink.codec import NFGENMSG, NLMSG_DONE, Message, attr, iter_message_spans
from nfkit.nflog import FIELDS, CopyMode, Flag, LogPacket, PacketParser, packet_fields

PORT = 5000

#: Every field renamed, as the logd NFLOG input does with ulogd key names.
ALL_NAMES = {name: f"k.{name}" for name in FIELDS}
#: A few fields only: the others must be left out of the dicts.
SOME_NAMES = {"prefix": "oob.prefix", "payload": "raw.pkt", "mark": "oob.mark", "ts_usec": "u"}


# -- helpers -----------------------------------------------------------------------


def generic_packets(datagram: bytes) -> list[LogPacket]:
    """Decode with the generic attribute walk only (no compiled layouts)."""
    packets = []
    for mtype, _flags, _seq, _pid, start, end in iter_message_spans(datagram):
        if mtype == nflog.MSG_PACKET:
            family, _version, group = NFGENMSG.unpack_from(datagram, start)
            packets.append(LogPacket(family, group, datagram, start + 4, end))
    return packets


class CountingParser(PacketParser[Any]):
    """A PacketParser that counts how often it falls back to the generic walk."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        super().__init__(names)
        self.slow = 0

    def _slow(self, family: int, group: int, data: bytes, start: int, end: int) -> Any:
        self.slow += 1
        return super()._slow(family, group, data, start, end)


def _project(fields: dict[str, Any], names: dict[str, str] | None) -> dict[str, Any]:
    if names is None:
        return fields
    return {names[k]: v for k, v in fields.items() if k in names}


def assert_fast_path_matches(datagrams: list[bytes], compiled: bool = True) -> None:
    """Compiled parsers == generic walk, for LogPacket and dict targets.

    The first pass learns the layouts; with ``compiled`` the second pass must
    not need the generic walk at all.
    """
    expected = [packet_fields(p) for d in datagrams for p in generic_packets(d)]
    assert expected
    for names in (None, ALL_NAMES, SOME_NAMES):
        parser = CountingParser(names)
        for _ in range(2):
            before = parser.slow
            got = [p for d in datagrams for p in parser.parse(d)[0]]
            if names is None:
                got = [packet_fields(p) for p in got]
            assert got == [_project(fields, names) for fields in expected]
        if compiled:
            assert parser.slow == before, "a learnt layout did not match its own packets"


@contextlib.contextmanager
def nflog_socket(lab: Lab, node: Node, **options: Any) -> Iterator[nflog.NflogSocket]:
    with lab.entered(node):
        log = nflog.NflogSocket(**options)
    with log:
        log.sock.set_timeout(5)
        yield log


def send_udp(lab: Lab, node: Node, dst: str, payloads: list[bytes], port: int = PORT) -> None:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with lab.entered(node):
        sender = socket.socket(family, socket.SOCK_DGRAM)
    with sender:
        for payload in payloads:
            sender.sendto(payload, (dst, port))


def capture(log: nflog.NflogSocket, count: int) -> tuple[list[LogPacket], list[bytes]]:
    """Read raw datagrams until ``count`` packets arrived; return packets and datagrams."""
    datagrams: list[bytes] = []
    packets: list[LogPacket] = []
    deadline = time.monotonic() + 10
    while len(packets) < count:
        assert time.monotonic() < deadline, f"only {len(packets)} of {count} packets logged"
        datagram = log.sock.recv()
        datagrams.append(datagram)
        packets += generic_packets(datagram)
    assert len(packets) == count
    return packets, datagrams


def log_rule(lab: Lab, node: Node, chain: str, group: int, *extra: str, v6: bool = False) -> None:
    command = lab.ip6tables if v6 else lab.iptables
    command(node, "-A", chain, "-p", "udp", "--dport", str(PORT),
            "-j", "NFLOG", "--nflog-group", str(group), *extra)  # fmt: skip


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def nfnl_log_table(lab: Lab, node: Node) -> dict[int, list[int]]:
    """/proc/net/netfilter/nfnetlink_log of a namespace: group -> its columns."""
    text = lab.run(node, "cat", "/proc/net/netfilter/nfnetlink_log").stdout
    return {int(cols[0]): [int(c) for c in cols[1:]] for cols in map(str.split, text.splitlines())}


# -- binding -------------------------------------------------------------------------


@pytest.mark.lab
def test_bind_and_unbind_a_group(lab: Lab) -> None:
    with nflog_socket(lab, lab.a) as log:
        log.bind(5, copy_mode=CopyMode.META, timeout=300, qthreshold=7)
        assert log.groups == {5}
        # group: portid, qlen, copy_mode, copy_range, flushtimeout, refcount
        portid, _qlen, mode, _range, flush, _refs = nfnl_log_table(lab, lab.a)[5]
        assert (portid, mode, flush) == (log.sock.portid, CopyMode.META, 300)
        with pytest.raises(NetlinkBusy) as busy:
            log.bind(5)
        assert busy.value.errno == errno.EBUSY
        log.unbind(5)
        assert log.groups == set()
        assert 5 not in nfnl_log_table(lab, lab.a)
        with pytest.raises(NetlinkNoDevice):
            log.unbind(5)
        with pytest.raises(NetlinkNoDevice):
            log.set_flags(5, Flag.SEQ)  # parameters for an unbound group
        log.bind(5)
    assert 5 not in nfnl_log_table(lab, lab.a)  # closing the socket unbinds


@pytest.mark.lab
def test_second_socket_on_a_group_gets_eperm(lab: Lab) -> None:
    with nflog_socket(lab, lab.a) as owner, nflog_socket(lab, lab.a) as other:
        owner.bind(9)
        with pytest.raises(NetlinkPermissionError) as info:
            other.bind(9)
        assert isinstance(info.value, PermissionError)
        assert info.value.errno == errno.EPERM
        assert "bind NFLOG group 9" in str(info.value)
        with pytest.raises(PermissionError):
            other.unbind(9)
        # The same group in another namespace is independent.
        with nflog_socket(lab, lab.b) as elsewhere:
            elsewhere.bind(9)
        owner.close()
        other.bind(9)


# -- attributes ----------------------------------------------------------------------


@pytest.mark.lab
def test_inbound_packet_attributes(lab: Lab) -> None:
    lab.iptables(lab.b, "-t", "mangle", "-A", "PREROUTING", "-p", "udp",
                 "-j", "MARK", "--set-mark", "0x1234")  # fmt: skip
    log_rule(lab, lab.b, "INPUT", 5, "--nflog-prefix", "inbound")
    payloads = [b"hello", b"x" * 100, b"odd-length!"]
    with nflog_socket(lab, lab.b) as log:
        log.bind(5, qthreshold=1, flags=Flag.SEQ | Flag.SEQ_GLOBAL)
        before = time.time()
        send_udp(lab, lab.a, lab.b.ip4, payloads)
        packets, datagrams = capture(log, 3)
    for index, (packet, data) in enumerate(zip(packets, payloads, strict=True)):
        assert (packet.family, packet.group) == (socket.AF_INET, 5)
        assert (packet.hook, packet.hw_protocol) == (1, 0x0800)  # NF_INET_LOCAL_IN
        assert packet.prefix == "inbound"
        assert packet.mark == 0x1234
        assert packet.indev == lab.b.ifindex
        assert packet.outdev is None
        assert packet.hwaddr == mac_bytes(lab.a.mac)  # the sender's MAC
        assert (packet.hwtype, packet.hwlen) == (1, 14)  # ARPHRD_ETHER
        assert packet.hwheader == mac_bytes(lab.b.mac) + mac_bytes(lab.a.mac) + b"\x08\x00"
        assert packet.timestamp is not None
        sec, usec = packet.timestamp
        assert before - 1 <= sec + usec / 1e6 <= time.time() + 1
        assert 0 <= usec < 1_000_000
        assert packet.uid is None and packet.gid is None
        assert packet.seq == index
        assert packet.seq_global is not None
        assert packet.seq_global == packets[0].seq_global + index
        payload = packet.payload
        assert payload is not None
        assert len(payload) == 28 + len(data)
        assert payload.endswith(data)
        assert payload[0] == 0x45 and payload[9] == socket.IPPROTO_UDP
        assert struct.unpack_from("!H", payload, 2)[0] == len(payload)
        assert ipaddress.ip_address(payload[12:16]) == ipaddress.ip_address(lab.a.ip4)
        assert ipaddress.ip_address(payload[16:20]) == ipaddress.ip_address(lab.b.ip4)
        assert struct.unpack_from("!H", payload, 22)[0] == PORT
        assert packet.physindev is packet.physoutdev is packet.ct is packet.vlan is None
    assert_fast_path_matches(datagrams)


@pytest.mark.lab
def test_inbound_ipv6(lab: Lab) -> None:
    log_rule(lab, lab.b, "INPUT", 6, "--nflog-prefix", "v6", v6=True)
    with nflog_socket(lab, lab.b) as log:
        log.bind(6, qthreshold=1)
        send_udp(lab, lab.a, lab.b.ip6, [b"six"])
        (packet,), datagrams = capture(log, 1)
    assert (packet.family, packet.hw_protocol, packet.hook) == (socket.AF_INET6, 0x86DD, 1)
    assert packet.hwheader is not None and packet.hwheader.endswith(b"\x86\xdd")
    assert packet.payload is not None and packet.payload[0] >> 4 == 6
    assert ipaddress.ip_address(packet.payload[8:24]) == ipaddress.ip_address(lab.a.ip6)
    assert packet.payload.endswith(b"six")
    assert packet.seq is None and packet.seq_global is None  # no flags asked
    assert_fast_path_matches(datagrams)


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.lab
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason="needs /usr/bin/python3")
@pytest.mark.parametrize("sender", ["root", "nobody"])
def test_outbound_packet_carries_the_senders_uid(lab: Lab, sender: str) -> None:
    log_rule(lab, lab.a, "OUTPUT", 4, "--nflog-prefix", "out")
    script = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.sendto(b'from-{sender}', ('{lab.b.ip4}', {PORT}))"
    )
    # The system interpreter: nobody cannot read a venv or pyenv under /root.
    command = [SYSTEM_PYTHON, "-c", script]
    if sender == "nobody":
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    with nflog_socket(lab, lab.a) as log:
        log.bind(4, qthreshold=1)
        lab.run(lab.a, *command)
        (packet,), datagrams = capture(log, 1)
    expected_id = 0 if sender == "root" else 65534
    assert (packet.uid, packet.gid) == (expected_id, expected_id)
    assert (packet.hook, packet.outdev, packet.indev) == (3, lab.a.ifindex, None)
    assert packet.timestamp is None  # only for hooks up to FORWARD
    assert packet.hwaddr is packet.hwheader is packet.hwtype is None
    assert packet.mark is None  # no mark set: no attribute
    assert packet.payload is not None and packet.payload.endswith(f"from-{sender}".encode())
    assert_fast_path_matches(datagrams)


@pytest.mark.lab
@pytest.mark.parametrize(
    ("flags", "has_seq", "has_global"),
    [(Flag(0), False, False), (Flag.SEQ, True, False), (Flag.SEQ_GLOBAL, False, True)],
)
def test_sequence_flags(lab: Lab, flags: Flag, has_seq: bool, has_global: bool) -> None:
    log_rule(lab, lab.a, "OUTPUT", 3)
    with nflog_socket(lab, lab.a) as log:
        log.bind(3, qthreshold=1, flags=flags)
        send_udp(lab, lab.a, lab.b.ip4, [b"a", b"b", b"c"])
        packets, datagrams = capture(log, 3)
    seqs = [p.seq for p in packets]
    globals_ = [p.seq_global for p in packets]
    assert seqs == ([0, 1, 2] if has_seq else [None] * 3)
    if has_global:
        first = globals_[0]
        assert first is not None and globals_ == [first, first + 1, first + 2]
    else:
        assert globals_ == [None] * 3
    assert_fast_path_matches(datagrams)


@pytest.mark.lab
def test_set_flags_replaces_the_flag_word(lab: Lab) -> None:
    log_rule(lab, lab.a, "OUTPUT", 3)
    with nflog_socket(lab, lab.a) as log:
        log.bind(3, qthreshold=1, flags=Flag.SEQ)
        send_udp(lab, lab.a, lab.b.ip4, [b"a"])
        (first,), _ = capture(log, 1)
        log.set_flags(3, Flag.SEQ_GLOBAL)
        send_udp(lab, lab.a, lab.b.ip4, [b"b"])
        (second,), _ = capture(log, 1)
    assert (first.seq, first.seq_global) == (0, None)
    assert second.seq is None and second.seq_global is not None


@pytest.mark.lab
def test_copy_mode_meta_has_no_payload(lab: Lab) -> None:
    log_rule(lab, lab.a, "OUTPUT", 2, "--nflog-prefix", "meta")
    with nflog_socket(lab, lab.a) as log:
        log.bind(2, copy_mode=CopyMode.META, qthreshold=1)
        send_udp(lab, lab.a, lab.b.ip4, [b"secret", b"secret2"])
        packets, datagrams = capture(log, 2)
    assert [p.payload for p in packets] == [None, None]
    assert [p.prefix for p in packets] == ["meta", "meta"]
    assert all(p.outdev == lab.a.ifindex for p in packets)
    assert_fast_path_matches(datagrams, compiled=False)  # no payload: nothing to compile


@pytest.mark.lab
@pytest.mark.parametrize(
    ("copy_range", "rule_size", "expected"), [(30, None, 30), (0xFFFF, 24, 24)]
)
def test_copy_range_truncates(
    lab: Lab, copy_range: int, rule_size: int | None, expected: int
) -> None:
    extra = ("--nflog-size", str(rule_size)) if rule_size else ()
    log_rule(lab, lab.a, "OUTPUT", 2, *extra)
    with nflog_socket(lab, lab.a) as log:
        log.bind(2, copy_range=copy_range, qthreshold=1)
        send_udp(lab, lab.a, lab.b.ip4, [b"y" * 200])
        (packet,), datagrams = capture(log, 1)
    assert packet.payload is not None and len(packet.payload) == expected
    assert packet.payload[:1] == b"\x45"
    assert_fast_path_matches(datagrams)


@pytest.mark.lab
def test_qthreshold_batches_several_packets_per_datagram(lab: Lab) -> None:
    log_rule(lab, lab.a, "OUTPUT", 8, "--nflog-prefix", "batch")
    with nflog_socket(lab, lab.a) as log:
        log.bind(8, qthreshold=4, timeout=1000)  # flushes on the threshold, not the timer
        send_udp(lab, lab.a, lab.b.ip4, [b"p%d" % i for i in range(8)])
        packets, datagrams = capture(log, 8)
        assert len(datagrams) == 2
        for datagram in datagrams:
            types = [m.type for m in codec.parse_messages(datagram)]
            assert types == [nflog.MSG_PACKET] * 4 + [NLMSG_DONE]
            parsed, others = nflog.parse_datagram(datagram)
            assert len(parsed) == 4 and others == []  # DONE is swallowed
        assert [p.payload[-2:] for p in packets if p.payload] == [b"p%d" % i for i in range(8)]
    assert_fast_path_matches(datagrams)


@pytest.mark.lab
def test_receive_batches_and_packets_that_arrive_during_a_request(lab: Lab) -> None:
    log_rule(lab, lab.a, "OUTPUT", 8)
    with nflog_socket(lab, lab.a) as log:
        log.bind(8, qthreshold=1, flags=Flag.SEQ)
        send_udp(lab, lab.a, lab.b.ip4, [b"early1", b"early2"])
        # The packets are queued ahead of this request's ACK: they must not be lost.
        log.set_flags(8, Flag.SEQ)
        early = log.receive()
        assert [p.payload[-6:] for p in early if p.payload] == [b"early1", b"early2"]
        send_udp(lab, lab.a, lab.b.ip4, [b"later"])
        (later,) = log.receive()
        assert later.seq == 2
        assert later.prefix == ""  # iptables-nft sends an empty prefix attribute


# -- synthetic datagrams ----------------------------------------------------------


def packet_message(*attrs: bytes, group: int = 1, family: int = socket.AF_INET) -> bytes:
    payload = codec.nfgenmsg(family, group) + b"".join(attrs)
    return Message(nflog.MSG_PACKET, payload=payload).encode()


HDR = attr(nflog.ATTR_PACKET_HDR, struct.pack("!HBx", 0x0800, 1))
IP_PACKET = bytes.fromhex("4500001c0001000040110000c0000201c0000202138813880008ffff")


def full_attributes(prefix: str = "pfx") -> list[bytes]:
    """Every attribute the kernel sends for an inbound packet, in its order."""
    return [
        HDR,
        codec.attr_string(nflog.ATTR_PREFIX, prefix),
        codec.attr_be32(nflog.ATTR_IFINDEX_INDEV, 3),
        codec.attr_be32(nflog.ATTR_MARK, 0xFEED),
        attr(nflog.ATTR_HWADDR, struct.pack("!H2x8s", 6, b"\x02\0\0\0\0\x01")),
        codec.attr_be16(nflog.ATTR_HWTYPE, 1),
        codec.attr_be16(nflog.ATTR_HWLEN, 14),
        attr(nflog.ATTR_HWHEADER, b"\xaa" * 12 + b"\x08\x00"),
        attr(nflog.ATTR_TIMESTAMP, struct.pack("!QQ", 1_700_000_000, 123456)),
        codec.attr_be32(nflog.ATTR_UID, 1000),
        codec.attr_be32(nflog.ATTR_GID, 100),
        codec.attr_be32(nflog.ATTR_SEQ, 7),
        codec.attr_be32(nflog.ATTR_SEQ_GLOBAL, 70),
        attr(nflog.ATTR_PAYLOAD, IP_PACKET),
    ]


def test_every_synthetic_attribute_decoded() -> None:
    datagram = packet_message(*full_attributes(), group=12)
    (packet,) = generic_packets(datagram)
    assert packet_fields(packet) == {
        "family": socket.AF_INET, "group": 12, "hw_protocol": 0x0800, "hook": 1,
        "mark": 0xFEED, "ts_sec": 1_700_000_000, "ts_usec": 123456, "indev": 3,
        "hwaddr": b"\x02\0\0\0\0\x01", "hwtype": 1, "hwlen": 14,
        "hwheader": b"\xaa" * 12 + b"\x08\x00", "payload": IP_PACKET,
        "payload_len": len(IP_PACKET), "prefix": "pfx", "uid": 1000, "gid": 100,
        "seq": 7, "seq_global": 70,
    }  # fmt: skip
    assert_fast_path_matches([datagram, datagram])


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("payload_len", [1, 2, 3, 4, 5, 28])
def test_payload_padding_variants(padded: bool, payload_len: int) -> None:
    """The kernel pads NFLOG messages; a compiled layout must not return the padding."""
    padded_message = packet_message(HDR, attr(nflog.ATTR_PAYLOAD, IP_PACKET[:payload_len]))
    message = padded_message
    if not padded:  # only the last message of a datagram can be unpadded
        message = struct.pack("=I", len(message) - (-payload_len % 4)) + message[4:]
        message = message[: len(message) - (-payload_len % 4)]
    datagram = padded_message + message
    packets, _ = nflog.parse_datagram(datagram)
    assert [p.payload for p in packets] == [IP_PACKET[:payload_len]] * 2
    assert_fast_path_matches([datagram])


def test_missing_attributes_are_none() -> None:
    datagram = packet_message(HDR, attr(nflog.ATTR_PAYLOAD, b"\x45"))
    (packet,) = generic_packets(datagram)
    assert packet_fields(packet) == {
        "family": socket.AF_INET, "group": 1, "hw_protocol": 0x0800, "hook": 1,
        "payload": b"\x45", "payload_len": 1,
    }  # fmt: skip
    (empty,) = generic_packets(packet_message())
    assert packet_fields(empty) == {"family": socket.AF_INET, "group": 1}
    assert_fast_path_matches([datagram, packet_message()], compiled=False)


@pytest.mark.parametrize("where", ["before_payload", "after_payload"])
def test_unknown_attribute_is_ignored(where: str) -> None:
    attrs = full_attributes()
    unknown = attr(99, b"future")
    attrs.insert(len(attrs) - 1 if where == "before_payload" else len(attrs), unknown)
    datagram = packet_message(*attrs)
    (packet,) = generic_packets(datagram)
    assert packet_fields(packet) == packet_fields(
        generic_packets(packet_message(*full_attributes()))[0]
    )
    assert_fast_path_matches([datagram, datagram], compiled=False)


def test_flagged_and_nested_attributes() -> None:
    vlan = codec.attr_nested(
        nflog.ATTR_VLAN,
        [codec.attr_be16(nflog.VLAN_PROTO, 0x8100), codec.attr_be16(nflog.VLAN_TCI, 5)],
    )
    ct = codec.attr_nested(nflog.ATTR_CT, [attr(1, b"tuple")])
    datagram = packet_message(
        HDR, codec.attr_be32(nflog.ATTR_CT_INFO, 2), ct, vlan, attr(nflog.ATTR_L2HDR, b"l2"),
        attr(nflog.ATTR_PAYLOAD, b"\x45"),
    )  # fmt: skip
    (packet,) = generic_packets(datagram)
    assert packet.vlan == (0x8100, 5)
    assert packet.ct == attr(1, b"tuple")
    assert packet.ct_info == 2
    assert packet.l2header == b"l2"
    assert_fast_path_matches([datagram], compiled=False)


def test_short_scalar_attributes_are_ignored() -> None:
    datagram = packet_message(
        attr(nflog.ATTR_PACKET_HDR, b"\x08"),
        attr(nflog.ATTR_MARK, b"\x01\x02"),
        attr(nflog.ATTR_TIMESTAMP, b"\0" * 8),
        attr(nflog.ATTR_HWADDR, b"\0\x06"),
        attr(nflog.ATTR_HWTYPE, b"\x01"),
        codec.attr_nested(nflog.ATTR_VLAN, [codec.attr_be16(nflog.VLAN_PROTO, 0x8100)]),
        attr(nflog.ATTR_PAYLOAD, b"\x45\x00"),
    )
    (packet,) = generic_packets(datagram)
    assert packet.hook is packet.mark is packet.timestamp is packet.hwaddr is None
    assert packet.hwtype is packet.vlan is None
    assert packet.payload == b"\x45\x00"
    assert_fast_path_matches([datagram], compiled=False)


def test_hwaddr_longer_than_its_attribute_is_clipped() -> None:
    datagram = packet_message(
        HDR, attr(nflog.ATTR_HWADDR, struct.pack("!H2x8s", 20, b"12345678")),
        attr(nflog.ATTR_PAYLOAD, b"\x45"),
    )  # fmt: skip
    (packet,) = generic_packets(datagram)
    assert packet.hwaddr == b"12345678"
    assert_fast_path_matches([datagram, datagram])


@pytest.mark.parametrize("length", range(1, 65))
def test_prefix_lengths(length: int) -> None:
    prefix = "".join(chr(ord("a") + i % 26) for i in range(length))
    other = prefix.upper()  # same length: the same compiled layout serves both
    datagram = packet_message(*full_attributes(prefix)) + packet_message(*full_attributes(other))
    packets, _ = nflog.parse_datagram(datagram)
    assert [p.prefix for p in packets] == [prefix, other]
    assert_fast_path_matches([datagram])


def test_prefix_without_nul_and_non_utf8() -> None:
    datagram = packet_message(
        HDR, attr(nflog.ATTR_PREFIX, b"ab\xff"), attr(nflog.ATTR_PAYLOAD, b"x")
    )
    (packet,) = generic_packets(datagram)
    assert packet.prefix == "ab\udcff"  # undecodable bytes survive (surrogateescape)
    assert_fast_path_matches([datagram, datagram])


def test_batch_with_done_and_error_messages() -> None:
    first = packet_message(*full_attributes())
    done = Message(NLMSG_DONE, payload=codec.nfgenmsg(0, 1)).encode()
    error = codec.encode_error(Message(nflog.MSG_CONFIG, seq=5), -errno.EPERM).encode()
    packets, others = nflog.parse_datagram(first + first + error + done)
    assert len(packets) == 2
    assert [m.type for m in others] == [codec.NLMSG_ERROR]


def test_truncated_message_raises_truncated_error() -> None:
    datagram = packet_message(*full_attributes())
    for cut in range(len(datagram)):
        try:
            packets, _ = nflog.parse_datagram(datagram[:cut])
        except TruncatedError:
            continue
        assert packets == []  # fewer bytes than a header: nothing to decode
    # An attribute that claims more than its message holds.
    broken = bytearray(packet_message(HDR, attr(nflog.ATTR_PAYLOAD, b"1234")))
    struct.pack_into("=H", broken, 28, 200)
    with pytest.raises(TruncatedError):
        nflog.parse_datagram(bytes(broken))
    with pytest.raises(TruncatedError):
        generic_packets(bytes(broken))


@settings(max_examples=400)
@given(st.data())
def test_mutated_messages_never_crash(data: st.DataObject) -> None:
    """Random byte changes: the parsers agree, or both raise TruncatedError."""
    template = packet_message(*full_attributes())
    mutated = bytearray(template * 2)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(mutated) // 2, len(mutated)))
    datagram = bytes(mutated[:cut])
    parser = PacketParser[LogPacket]()
    parser.parse(template)  # a compiled layout is in place for the template's key
    try:
        expected = [packet_fields(p) for p in generic_packets(datagram)]
    except TruncatedError:
        with pytest.raises(TruncatedError):
            parser.parse(datagram)
        return
    packets, _ = parser.parse(datagram)
    assert [packet_fields(p) for p in packets] == expected


def test_socket_receive_reports_errors_and_strange_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = nflog.NflogSocket()
    with log:
        replies = [
            codec.encode_error(Message(nflog.MSG_CONFIG, seq=3), -errno.ENOBUFS).encode(),
            Message(0x0999, payload=b"\0" * 4).encode(),
            packet_message(*full_attributes()),
        ]
        monkeypatch.setattr(log.sock, "recv", lambda: replies.pop(0))
        with pytest.raises(NetlinkError) as info:
            log.receive()
        assert info.value.errno == errno.ENOBUFS
        with pytest.raises(DecodeError, match="0x0999"):
            log.receive()
        (packet,) = log.receive()
        assert packet.prefix == "pfx"


def test_uncompilable_layouts_stop_being_relearnt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Conntrack-carrying packets have no compiled layout; don't retry on every packet."""
    ct = codec.attr_nested(nflog.ATTR_CT, [attr(1, b"tuple")])
    attrs = full_attributes()
    datagram = packet_message(*attrs[:-1], ct, attrs[-1]) * 50
    walks = 0
    real_iter_attrs = nflog.iter_attrs

    def counting_iter_attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        nonlocal walks
        walks += 1
        return real_iter_attrs(data, start, end)

    monkeypatch.setattr(nflog, "iter_attrs", counting_iter_attrs)
    packets, _ = nflog.parse_datagram(datagram)
    assert len(packets) == 50 and all(p.ct == attr(1, b"tuple") for p in packets)
    assert walks <= PacketParser.MAX_FAILURES
