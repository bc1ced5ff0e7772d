"""Fill a lab namespace's conntrack table, for tests and benchmarks.

* :func:`fill_table` creates ``n`` look-alike flows fast (100 000 in about a
  second): many ``IPCTNL_MSG_CT_NEW`` create requests go to the kernel in one
  ``send``, no ACKs are asked for, and only failures come back.
* :func:`varied_table` creates one flow of each kind (TCP, UDP, ICMP, ICMPv6,
  SCTP, GRE over IPv4 and IPv6) with marks, zones and labels, and returns
  them as :class:`nfkit.conntrack.Flow` objects for comparison.

The requests are encoded here, independently of ``nfkit.conntrack``, so that
tests of the library do not check it against itself. Only documentation
addresses are used. ``nf_conntrack_max`` cannot be raised from inside a
network namespace (the kernel makes it read-only there); the host's value
(262144 by default) limits each namespace's table.

Shared by ``tests/`` and ``bench/conntrack_bench.py``.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
from collections.abc import Iterable

from nfkit.conntrack import Flow, SCTPInfo, SCTPState, Status, TCPFlag, TCPInfo, TCPState, Tuple
from nfkit.lab import Lab, Node
from nfkit.netlink import NETLINK_NETFILTER, NetlinkSocket
from nfkit.netlink.codec import (
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    Message,
    attr,
    attr_be16,
    attr_be32,
    attr_nested,
    attr_u8,
    iter_message_spans,
    nfgenmsg,
    nfnl_type,
    parse_error,
)
from nfkit.netlink.socket import NETLINK_CAP_ACK

__all__ = [
    "DEFAULT_DST",
    "DEFAULT_SRC_NET",
    "create_flows",
    "enable_labels",
    "fill_table",
    "varied_flows",
    "varied_table",
]

IPCTNL_MSG_CT_NEW = nfnl_type(1, 0)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_TIMEOUT, CTA_MARK, CTA_ZONE, CTA_LABELS = 7, 8, 18, 22
CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_TUPLE_ZONE = 1, 2, 3
CTA_IP_V4_SRC, CTA_IP_V6_SRC = 1, 3  # the destination is the next number
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMPV6_ID = 4, 7  # type and code follow the id
CTA_PROTOINFO_TCP, CTA_PROTOINFO_SCTP = 1, 3
CTA_PROTOINFO_TCP_STATE, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY = 1, 4, 5
CTA_PROTOINFO_SCTP_STATE, CTA_PROTOINFO_SCTP_VTAG_ORIGINAL, CTA_PROTOINFO_SCTP_VTAG_REPLY = 1, 2, 3

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
DEFAULT_SRC_NET = {4: "198.51.100.0/24", 6: "2001:db8:100::/64"}
DEFAULT_DST = {4: "192.0.2.100", 6: "2001:db8::100"}
DPORTS = {"tcp": 443, "udp": 53}
FIRST_SPORT = 1024
SPORTS_PER_ADDRESS = 65536 - FIRST_SPORT
MAX_SOURCES = 256  # source addresses taken from src_net, round robin
CREATE = NLM_F_CREATE | NLM_F_EXCL
BATCH_BYTES = 96 * 1024  # well under the socket's default send buffer (212992)
# What `conntrack -I` gives an injected TCP flow, so window tracking accepts it.
LIBERAL = TCPFlag.BE_LIBERAL | TCPFlag.SACK_PERM


def _tuple(tup: Tuple) -> bytes:
    """CTA_TUPLE_* payload (IP nest, proto nest, directional zone)."""
    v6 = tup.family == socket.AF_INET6
    src_attr = CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC
    assert tup.src is not None and tup.dst is not None and tup.proto is not None
    ip = [
        attr(src_attr, socket.inet_pton(tup.family, tup.src)),
        attr(src_attr + 1, socket.inet_pton(tup.family, tup.dst)),
    ]
    proto = [attr_u8(CTA_PROTO_NUM, tup.proto)]
    if tup.icmp_type is not None:
        id_attr = CTA_PROTO_ICMPV6_ID if v6 else CTA_PROTO_ICMP_ID
        proto += [
            attr_be16(id_attr, tup.icmp_id or 0),
            attr_u8(id_attr + 1, tup.icmp_type),
            attr_u8(id_attr + 2, tup.icmp_code or 0),
        ]
    elif tup.sport is not None:
        proto += [
            attr_be16(CTA_PROTO_SRC_PORT, tup.sport),
            attr_be16(CTA_PROTO_DST_PORT, tup.dport or 0),
        ]
    parts = [attr_nested(CTA_TUPLE_IP, ip), attr_nested(CTA_TUPLE_PROTO, proto)]
    if tup.zone is not None:
        parts.append(attr_be16(CTA_TUPLE_ZONE, tup.zone))
    return b"".join(parts)


def _protoinfo(info: TCPInfo | SCTPInfo) -> bytes:
    if isinstance(info, TCPInfo):
        flags = [
            attr(kind, bytes((flag or 0, mask or 0)))
            for kind, flag, mask in (
                (CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, info.flags_orig, info.mask_orig),
                (CTA_PROTOINFO_TCP_FLAGS_REPLY, info.flags_reply, info.mask_reply),
            )
        ]
        tcp = [attr_u8(CTA_PROTOINFO_TCP_STATE, info.state or 0), *flags]
        return attr_nested(CTA_PROTOINFO, [attr_nested(CTA_PROTOINFO_TCP, tcp)])
    sctp = [
        attr_u8(CTA_PROTOINFO_SCTP_STATE, info.state or 0),
        attr_be32(CTA_PROTOINFO_SCTP_VTAG_ORIGINAL, info.vtag_orig or 0),
        attr_be32(CTA_PROTOINFO_SCTP_VTAG_REPLY, info.vtag_reply or 0),
    ]
    return attr_nested(CTA_PROTOINFO, [attr_nested(CTA_PROTOINFO_SCTP, sctp)])


def _meta(flow: Flow) -> bytes:
    """Everything of a create request after the tuples."""
    # The kernel refuses a create whose CONFIRMED bit differs from the new
    # entry's (EBUSY), and a new entry is confirmed.
    parts = [
        attr_be32(CTA_STATUS, Status.CONFIRMED | (flow.status or 0)),
        attr_be32(CTA_TIMEOUT, flow.timeout or 0),
    ]
    if flow.mark is not None:
        parts.append(attr_be32(CTA_MARK, flow.mark))
    if flow.zone is not None:
        parts.append(attr_be16(CTA_ZONE, flow.zone))
    if flow.labels is not None:
        parts.append(attr(CTA_LABELS, flow.labels))
    if isinstance(flow.protoinfo, TCPInfo | SCTPInfo):
        parts.append(_protoinfo(flow.protoinfo))
    return b"".join(parts)


def _ct_new(family: int, seq: int, orig: bytes, reply: bytes, meta: bytes, flags: int) -> bytes:
    """An IPCTNL_MSG_CT_NEW request: a create with NLM_F_CREATE, else an update."""
    payload = b"".join(
        (
            nfgenmsg(family),
            attr(CTA_TUPLE_ORIG, orig, nested=True),
            attr(CTA_TUPLE_REPLY, reply, nested=True),
            meta,
        )
    )
    return Message(IPCTNL_MSG_CT_NEW, NLM_F_REQUEST | flags, seq, 0, payload).encode()


def _send(lab: Lab, ns: Node | str, requests: Iterable[bytes]) -> None:
    """Send requests in large datagrams; raise on the first refusal.

    The kernel handles a datagram inside ``send`` and answers only failed
    requests (no ACK flag), so after each send the socket holds exactly the
    errors of that datagram. NETLINK_CAP_ACK keeps those errors short.
    """
    with lab.entered(ns):
        sock = NetlinkSocket(NETLINK_NETFILTER)
    with sock:
        sock.set_option(NETLINK_CAP_ACK)
        sock.set_blocking(False)
        batch = bytearray()
        for request in itertools.chain(requests, [b""]):
            if batch and (not request or len(batch) + len(request) > BATCH_BYTES):
                sock.send(bytes(batch))
                batch.clear()
                _raise_errors(sock)
            batch += request


def _raise_errors(sock: NetlinkSocket) -> None:
    while True:
        try:
            data = sock.recv()
        except BlockingIOError:
            return
        for mtype, flags, seq, _pid, start, end in iter_message_spans(data):
            if mtype == NLMSG_ERROR:
                code = parse_error(data[start:end], flags).code
                if code:
                    raise OSError(-code, f"conntrack request #{seq}: {os.strerror(-code)}")


def _sources(src_net: str) -> list[str]:
    net = ipaddress.ip_network(src_net)
    return [str(a) for a in itertools.islice(net.hosts(), MAX_SOURCES)]


def fill_table(
    lab: Lab,
    ns: Node | str,
    n: int,
    family: int = 4,
    proto: str = "udp",
    src_net: str | None = None,
    *,
    dst: str | None = None,
    timeout: int = 3600,
    mark: int | None = None,
    update: bool = False,
) -> list[str]:
    """Create ``n`` distinct flows ``src:sport -> dst:dport`` in ``ns``'s conntrack table.

    Sources are the first (up to 256) host addresses of ``src_net``, taken in
    turn; each source uses ports 1024, 1025, ... The destination is ``dst``
    port 53 (UDP) or 443 (TCP, ESTABLISHED). Flows are replied and ASSURED,
    and expire after ``timeout`` seconds. The same arguments give the same
    flows, so a table can be refilled after a delete.

    Parameters:
        family: 4 or 6.
        proto: ``"udp"`` or ``"tcp"``.
        src_net: source network (default 198.51.100.0/24, 2001:db8:100::/64).
        dst: destination (default 192.0.2.100, 2001:db8::100).
        update: instead of creating the flows, change the timeout and mark
            of those an earlier call with the same addresses created (the
            kernel sends UPDATE events; conntrack 1.4.7's ``-U`` fails on
            large tables).
    Returns:
        The source addresses used.
    Raises:
        ValueError: more flows than ``src_net`` has source ports for.
        OSError: the kernel refused a flow (EEXIST: it is already there;
            ENOMEM: the table is full, ``nf_conntrack_max``; ENOENT: a flow
            to update is not there).
    """
    af = {4: socket.AF_INET, 6: socket.AF_INET6}[family]
    sources = _sources(src_net or DEFAULT_SRC_NET[family])
    if n > len(sources) * SPORTS_PER_ADDRESS:
        raise ValueError(f"{n} flows exceed {len(sources)} sources x {SPORTS_PER_ADDRESS} ports")
    dst = dst or DEFAULT_DST[family]
    number = PROTOCOLS[proto]
    dport = DPORTS[proto]
    tcp_flags = LIBERAL if proto == "tcp" else None
    info = TCPInfo(TCPState.ESTABLISHED, None, None, *[tcp_flags] * 4) if tcp_flags else None
    meta = _meta(
        Flow(status=Status.SEEN_REPLY | Status.ASSURED, timeout=timeout, mark=mark, protoinfo=info)
    )
    flags = 0 if update else CREATE

    def requests() -> Iterable[bytes]:
        for i in range(n):
            src = sources[i % len(sources)]
            sport = FIRST_SPORT + i // len(sources)
            orig = _tuple(Tuple(af, src, dst, number, sport, dport))
            reply = _tuple(Tuple(af, dst, src, number, dport, sport))
            yield _ct_new(af, i, orig, reply, meta, flags)

    _send(lab, ns, requests())
    return sources[: min(n, len(sources))]


def _labels(*bits: int) -> bytes:
    """A 128-bit label bitmap (the kernel's size) with ``bits`` set."""
    return sum(1 << b for b in bits).to_bytes(16, "little")


def varied_flows() -> list[Flow]:
    """The flows :func:`varied_table` creates (timeouts as requested)."""
    v4, v6 = socket.AF_INET, socket.AF_INET6
    tcp, udp, icmp, icmp6, sctp, gre = 6, 17, 1, 58, 132, 47
    replied = Status.SEEN_REPLY | Status.ASSURED
    liberal = TCPInfo(TCPState.ESTABLISHED, None, None, LIBERAL, LIBERAL, LIBERAL, LIBERAL)
    syn_sent = TCPInfo(TCPState.SYN_SENT, None, None, LIBERAL, LIBERAL, LIBERAL, LIBERAL)
    flows = [
        Flow(Tuple(v4, "198.51.100.1", "203.0.113.1", tcp, 40001, 22), status=replied,
             timeout=3600, mark=1, protoinfo=liberal),
        Flow(Tuple(v6, "2001:db8::a", "2001:db8::b", tcp, 40002, 443), status=Status(0),
             timeout=120, zone=3, protoinfo=syn_sent),
        Flow(Tuple(v4, "198.51.100.2", "203.0.113.2", udp, 40003, 53), status=Status(0),
             timeout=30, mark=42, labels=_labels(1, 5)),
        Flow(Tuple(v6, "2001:db8::c", "2001:db8::d", udp, 40004, 123), status=replied,
             timeout=180, mark=0xFFFFFFFF, zone=7, labels=_labels(127)),
        Flow(Tuple(v4, "198.51.100.3", "203.0.113.3", icmp, icmp_type=8, icmp_code=0,
                   icmp_id=1234), status=Status.SEEN_REPLY, timeout=30, mark=7),
        Flow(Tuple(v6, "2001:db8::e", "2001:db8::f", icmp6, icmp_type=128, icmp_code=0,
                   icmp_id=4321), status=Status.SEEN_REPLY, timeout=30, zone=7),
        Flow(Tuple(v4, "198.51.100.4", "203.0.113.4", sctp, 40005, 9999), status=replied,
             timeout=210, protoinfo=SCTPInfo(SCTPState.ESTABLISHED, 0x11223344, 0x55667788)),
        Flow(Tuple(v4, "198.51.100.5", "203.0.113.5", gre, 0x1234, 0x5678), status=Status(0),
             timeout=30, mark=9, labels=_labels(0, 64)),
    ]  # fmt: skip
    for flow in flows:
        assert flow.orig is not None
        flow.reply = flow.orig.inverted()
    return flows


def enable_labels(lab: Lab, ns: Node | str) -> None:
    """Let flows in ``ns`` carry labels.

    Since Linux 6.6 the kernel attaches the label extension only while some
    rule of the namespace uses labels, and silently drops the labels of
    flows created without it. A rule in an unreferenced chain is enough.
    """
    lab.iptables(ns, "-N", "CTLAB_LABELS")
    lab.iptables(ns, "-A", "CTLAB_LABELS", "-m", "connlabel", "--label", "0")


def varied_table(lab: Lab, ns: Node | str | None = None) -> list[Flow]:
    """Create one flow of each kind in ``ns`` (default: ``lab.a``) and return them.

    Turns on counters and timestamps (``nf_conntrack_acct``,
    ``nf_conntrack_timestamp``) and labels in the namespace first. The flows
    (:func:`varied_flows`): TCP ESTABLISHED and SYN_SENT, UDP replied and
    unreplied, ICMP and ICMPv6 echo, SCTP ESTABLISHED with verification tags,
    GRE with keys; marks 1, 42, 2**32-1, 7, 9 (others without), zones 3 and
    7, labels {1, 5}, {127}, {0, 64}.
    """
    ns = lab.a if ns is None else ns
    lab.sysctl(ns, "net.netfilter.nf_conntrack_acct", 1)
    lab.sysctl(ns, "net.netfilter.nf_conntrack_timestamp", 1)
    enable_labels(lab, ns)
    flows = varied_flows()
    create_flows(lab, ns, flows)
    return flows


def create_flows(lab: Lab, ns: Node | str, flows: Iterable[Flow]) -> None:
    """Create ``flows`` in ``ns``: both tuples, status, timeout, and mark,
    zone, labels, TCP/SCTP protoinfo where given.

    Raises:
        OSError: the kernel refused a flow.
    """

    def requests() -> Iterable[bytes]:
        for seq, flow in enumerate(flows):
            assert flow.orig is not None and flow.reply is not None
            orig, reply = _tuple(flow.orig), _tuple(flow.reply)
            yield _ct_new(flow.family, seq, orig, reply, _meta(flow), CREATE)

    _send(lab, ns, requests())

