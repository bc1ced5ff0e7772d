"""A queued packet: the kernel's message, decoded only as far as it is read.

The packet id, hook and hardware protocol sit at fixed offsets and are read
when the packet arrives. Reading any other attribute walks the attributes
once (remembering where each one is); each value is then decoded on access,
and :attr:`QueuedPacket.headers` decodes L3/L4 with :mod:`nfkit.packet`
only when asked.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from nfkit.conntrack.codec import decode_flow
from nfkit.conntrack.model import Flow
from nfkit.netlink.codec import attr_spans, get_string, nfgenmsg
from nfkit.nfqueue.const import (
    ATTR_CAP_LEN,
    ATTR_CGROUP_CLASSID,
    ATTR_CT,
    ATTR_CT_INFO,
    ATTR_GID,
    ATTR_HWADDR,
    ATTR_IFINDEX_INDEV,
    ATTR_IFINDEX_OUTDEV,
    ATTR_IFINDEX_PHYSINDEV,
    ATTR_IFINDEX_PHYSOUTDEV,
    ATTR_L2HDR,
    ATTR_MARK,
    ATTR_PAYLOAD,
    ATTR_PRIORITY,
    ATTR_SECCTX,
    ATTR_SKB_INFO,
    ATTR_TIMESTAMP,
    ATTR_UID,
    ATTR_VLAN,
    VLAN_PROTO,
    VLAN_TCI,
    CtInfo,
    SkbInfo,
)
from nfkit.packet import (
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
    SCTP,
    TCP,
    UDP,
    Packet,
    decode,
)

if TYPE_CHECKING:
    from nfkit.nfqueue.queue import Queue
    from nfkit.nfqueue.verdict import Verdict

_BE16 = struct.Struct("!H")
#: L4 protocols with ports, and their header sizes (what nfkit.packet needs to decode them).
_PORT_HEADERS = {IPPROTO_TCP: TCP.SIZE, IPPROTO_UDP: UDP.SIZE, IPPROTO_UDPLITE: UDP.SIZE,
                 IPPROTO_SCTP: SCTP.SIZE}  # fmt: skip
#: IPv6 next headers decoding steps over (AH included) before the L4 header.
_IPV6_EXTENSIONS = frozenset((0, 43, 44, 51, 60))
_BE32 = struct.Struct("!I")
_TIMESTAMP = struct.Struct("!QQ")


class QueuedPacket:
    """One packet waiting in a queue for its verdict.

    Attributes the kernel did not send are None, except :attr:`mark` and
    :attr:`priority`, which it only sends when they are not 0.

    Give the verdict with :meth:`decide` (from any thread), or return it from
    a handler.
    """

    __slots__ = ("_data", "_decoded", "_payload_at", "_spans", "deadline", "id", "queue")

    def __init__(self, queue: Queue, data: bytes, packet_id: int, payload_at: int = 0) -> None:
        self.queue = queue
        self._data = data
        self.id = packet_id
        # Where the payload starts if the queue knew it at arrival (it ends with the message).
        self._payload_at = payload_at
        #: When the queue gives the default verdict (monotonic seconds), or None.
        self.deadline: float | None = None
        self._spans: dict[int, tuple[int, int]] | None = None
        self._decoded: Packet | None = None

    # The fixed fields are read on access: most handlers never look at them.

    @property
    def family(self) -> int:
        """The netfilter family (2 IPv4, 10 IPv6, 7 bridge...)."""
        return self._data[16]

    @property
    def hook(self) -> int:
        return self._data[30]

    @property
    def hw_protocol(self) -> int:
        """The ethertype (0x0800 for IPv4, 0x86DD for IPv6)."""
        return int(_BE16.unpack_from(self._data, 28)[0])

    # -- verdicts ----------------------------------------------------------------------

    def decide(self, verdict: Verdict) -> None:
        """Give this packet its verdict, from any thread (see :meth:`Queue.decide`)."""
        self.queue.decide(self, verdict)

    def defer(self, timeout: float | None = None) -> Deferred:
        """Keep the packet for a later :meth:`decide`; return this from a handler.

        ``timeout`` seconds from now (default: the queue's deadline, counted
        from the packet's arrival) the queue gives it its default verdict.
        """
        return Deferred(timeout)

    # -- attributes --------------------------------------------------------------------

    def _span(self, atype: int) -> tuple[int, int] | None:
        spans = self._spans
        if spans is None:
            spans = self._spans = self.queue.layouts.spans(self._data)
        return spans.get(atype)

    def _payload_span(self) -> tuple[int, int] | None:
        """:meth:`_span` of the payload, without the other attributes' where possible."""
        if self._payload_at:
            return self._payload_at, len(self._data)
        if self._spans is None:
            span = self.queue.layouts.payload(self._data)
            if span is not None:
                return span
        return self._span(ATTR_PAYLOAD)

    def _be32(self, atype: int) -> int | None:
        span = self._span(atype)
        if span is None or span[1] - span[0] < 4:
            return None
        return int(_BE32.unpack_from(self._data, span[0])[0])

    def _bytes(self, atype: int) -> bytes | None:
        span = self._span(atype)
        return None if span is None else self._data[span[0] : span[1]]

    @property
    def payload(self) -> bytes | None:
        """The packet from its network header (None in COPY_META mode)."""
        span = self._payload_span()
        return None if span is None else self._data[span[0] : span[1]]

    @property
    def headers(self) -> Packet:
        """The payload's L3/L4 headers (decoded once, see :func:`nfkit.packet.decode`)."""
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = decode(self.payload or b"", self.family, self.hw_protocol)
        return decoded

    @property
    def ports(self) -> tuple[int, int, int] | None:
        """``(protocol, sport, dport)`` of TCP, UDP, UDP-Lite and SCTP packets, else None.

        What :attr:`headers` says, read straight from the payload without
        decoding it (a fraction of the cost) unless IPv6 extension headers
        are in the way.
        """
        span = self._payload_span()
        if span is None:
            return None
        data = self._data
        start, size = span[0], span[1] - span[0]
        if size < 20:
            return self._ports_from_headers()
        first = data[start]
        # Bytes are read one by one: cheaper than struct for two or three fields.
        if first >> 4 == 4 and data[16] == NFPROTO_IPV4:
            header_length = (first & 15) * 4
            if header_length < 20 or (data[start + 6] & 0x1F or data[start + 7]):
                return None  # a bogus header, or a later fragment: no L4 header
            protocol = data[start + 9]
            end = data[start + 2] << 8 | data[start + 3]
            end = end if header_length <= end <= size else size
        elif first >> 4 == 6 and data[16] == NFPROTO_IPV6 and size >= 40:
            protocol, header_length = data[start + 6], 40
            end = 40 + (data[start + 4] << 8 | data[start + 5])
            end = end if 40 < end <= size else size
        else:
            return self._ports_from_headers()
        need = _PORT_HEADERS.get(protocol)
        if need is None:
            return self._ports_from_headers() if protocol in _IPV6_EXTENSIONS else None
        if header_length + need > end:
            return None  # the L4 header is cut short
        at = start + header_length
        return protocol, data[at] << 8 | data[at + 1], data[at + 2] << 8 | data[at + 3]

    def _ports_from_headers(self) -> tuple[int, int, int] | None:
        headers = self.headers
        l4 = headers.l4
        if headers.l4_protocol is None or not isinstance(l4, TCP | UDP | SCTP):
            return None
        return headers.l4_protocol, l4.sport, l4.dport

    @property
    def mark(self) -> int:
        return self._be32(ATTR_MARK) or 0

    @property
    def priority(self) -> int:
        return self._be32(ATTR_PRIORITY) or 0

    @property
    def timestamp(self) -> float | None:
        """Seconds since the epoch; only hooks up to FORWARD, and only if the skb had one."""
        span = self._span(ATTR_TIMESTAMP)
        if span is None or span[1] - span[0] < 16:
            return None
        sec, usec = _TIMESTAMP.unpack_from(self._data, span[0])
        return float(sec + usec / 1e6)

    @property
    def indev(self) -> int | None:
        return self._be32(ATTR_IFINDEX_INDEV)

    @property
    def outdev(self) -> int | None:
        return self._be32(ATTR_IFINDEX_OUTDEV)

    @property
    def physindev(self) -> int | None:
        return self._be32(ATTR_IFINDEX_PHYSINDEV)

    @property
    def physoutdev(self) -> int | None:
        return self._be32(ATTR_IFINDEX_PHYSOUTDEV)

    @property
    def indev_name(self) -> str | None:
        return self.queue.interface_name(self.indev)

    @property
    def outdev_name(self) -> str | None:
        return self.queue.interface_name(self.outdev)

    @property
    def physindev_name(self) -> str | None:
        return self.queue.interface_name(self.physindev)

    @property
    def physoutdev_name(self) -> str | None:
        return self.queue.interface_name(self.physoutdev)

    @property
    def hwaddr(self) -> bytes | None:
        """The source hardware address (input side with a MAC header only)."""
        span = self._span(ATTR_HWADDR)
        if span is None or span[1] - span[0] < 4:
            return None
        (length,) = _BE16.unpack_from(self._data, span[0])
        return self._data[span[0] + 4 : min(span[0] + 4 + length, span[1])]

    @property
    def uid(self) -> int | None:
        """The owning socket's uid (Flag.UID_GID)."""
        return self._be32(ATTR_UID)

    @property
    def gid(self) -> int | None:
        return self._be32(ATTR_GID)

    @property
    def secctx(self) -> str | None:
        """The security context (Flag.SECCTX)."""
        span = self._span(ATTR_SECCTX)
        return None if span is None else get_string(self._data, span[0], span[1])

    @property
    def cgroup_classid(self) -> int | None:
        return self._be32(ATTR_CGROUP_CLASSID)

    @property
    def skb_info(self) -> SkbInfo:
        """Checksum and GSO state (SkbInfo(0) when the kernel sent none)."""
        return SkbInfo(self._be32(ATTR_SKB_INFO) or 0)

    @property
    def cap_len(self) -> int | None:
        """The packet's real length when the copy was truncated, else None."""
        return self._be32(ATTR_CAP_LEN)

    @property
    def truncated(self) -> bool:
        """The payload is cut short: it must not be sent back as a new payload."""
        return self._span(ATTR_CAP_LEN) is not None

    @property
    def vlan(self) -> tuple[int, int] | None:
        """``(proto, tci)`` of the VLAN tag (bridge family)."""
        span = self._span(ATTR_VLAN)
        if span is None:
            return None
        inner = attr_spans(self._data, span[0], span[1])
        proto, tci = inner.get(VLAN_PROTO), inner.get(VLAN_TCI)
        if proto is None or tci is None:
            return None
        return int(_BE16.unpack_from(self._data, proto[0])[0]), int(
            _BE16.unpack_from(self._data, tci[0])[0]
        )

    @property
    def l2header(self) -> bytes | None:
        """The MAC header (bridge family)."""
        return self._bytes(ATTR_L2HDR)

    @property
    def ct_info(self) -> CtInfo | int | None:
        """The packet's relation to its connection (Flag.CONNTRACK)."""
        value = self._be32(ATTR_CT_INFO)
        if value is None:
            return None
        try:
            return CtInfo(value)
        except ValueError:
            return value

    @property
    def conntrack(self) -> Flow | None:
        """The packet's conntrack entry (Flag.CONNTRACK), decoded on each access."""
        raw = self._bytes(ATTR_CT)
        if raw is None:
            return None
        return decode_flow(nfgenmsg(self.family) + raw)

    @property
    def data(self) -> bytes:
        """The whole netlink message as the kernel sent it."""
        return self._data

    def attributes(self) -> dict[str, Any]:
        """Every attribute present, by name (for logging and debugging)."""
        out: dict[str, Any] = {"id": self.id, "hook": self.hook, "hw_protocol": self.hw_protocol}
        for name in _ATTRIBUTE_NAMES:
            value = getattr(self, name)
            if value is not None and value != 0:
                out[name] = value
        return out

    def __repr__(self) -> str:
        payload = self.payload
        size = "no payload" if payload is None else f"{len(payload)} bytes"
        return (
            f"<QueuedPacket queue={self.queue.number} id={self.id} hook={self.hook} "
            f"family={self.family} {size}>"
        )


_ATTRIBUTE_NAMES = (
    "mark", "priority", "timestamp", "indev", "outdev", "physindev", "physoutdev", "hwaddr",
    "uid", "gid", "secctx", "cgroup_classid", "skb_info", "cap_len", "vlan", "l2header",
    "ct_info", "conntrack", "payload",
)  # fmt: skip


class Deferred:
    """A handler's answer "later": the packet waits for :meth:`QueuedPacket.decide`."""

    __slots__ = ("timeout",)

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Deferred(timeout={self.timeout})"
