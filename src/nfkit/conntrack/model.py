"""The conntrack domain model, named after the kernel's fields.

Every field that the kernel may leave out is ``None`` when it did: an
offloaded flow has no timeout, an event carries no counters, a flow without a
mark attribute is not the same as a mark of 0 for updates. Addresses are text
(``"192.0.2.1"``, ``"2001:db8::1"``) so scripts compare them with literals.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_DCCP = 33
IPPROTO_GRE = 47
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136


class Status(enum.IntFlag):
    """``enum ip_conntrack_status`` (IPS_*)."""

    EXPECTED = 1 << 0
    SEEN_REPLY = 1 << 1
    ASSURED = 1 << 2
    CONFIRMED = 1 << 3
    SRC_NAT = 1 << 4
    DST_NAT = 1 << 5
    SEQ_ADJUST = 1 << 6
    SRC_NAT_DONE = 1 << 7
    DST_NAT_DONE = 1 << 8
    DYING = 1 << 9
    FIXED_TIMEOUT = 1 << 10
    TEMPLATE = 1 << 11
    UNTRACKED = 1 << 12
    HELPER = 1 << 13
    OFFLOAD = 1 << 14
    HW_OFFLOAD = 1 << 15


class TCPState(enum.IntEnum):
    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9


class SCTPState(enum.IntEnum):
    NONE = 0
    CLOSED = 1
    COOKIE_WAIT = 2
    COOKIE_ECHOED = 3
    ESTABLISHED = 4
    SHUTDOWN_SENT = 5
    SHUTDOWN_RECD = 6
    SHUTDOWN_ACK_SENT = 7
    HEARTBEAT_SENT = 8
    HEARTBEAT_ACKED = 9


class DCCPState(enum.IntEnum):
    NONE = 0
    REQUEST = 1
    RESPOND = 2
    PARTOPEN = 3
    OPEN = 4
    CLOSEREQ = 5
    CLOSING = 6
    TIMEWAIT = 7
    IGNORE = 8
    INVALID = 9


class TCPFlag(enum.IntFlag):
    """Per-direction TCP tracking flags (IP_CT_TCP_FLAG_*)."""

    WINDOW_SCALE = 0x01
    SACK_PERM = 0x02
    CLOSE_INIT = 0x04
    BE_LIBERAL = 0x08
    DATA_UNACKNOWLEDGED = 0x10
    MAXACK_SET = 0x20
    CHALLENGE_ACK = 0x40
    SIMULTANEOUS_OPEN = 0x80


class EventType(enum.IntFlag):
    """What an event reports; also the event-mask bits (NEW 1, UPDATE 2, DESTROY 4)."""

    NEW = 1
    UPDATE = 2
    DESTROY = 4


class ExpectFlag(enum.IntFlag):
    PERMANENT = 1
    INACTIVE = 2
    USERSPACE = 4


@dataclass(slots=True)
class Tuple:
    """One direction of a connection (``CTA_TUPLE_*``).

    ``sport``/``dport`` also carry GRE keys; ICMP and ICMPv6 use the
    ``icmp_*`` fields. ``zone`` is a directional zone (rarely used).
    """

    family: int = AF_INET
    src: str | None = None
    dst: str | None = None
    proto: int | None = None
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    zone: int | None = None

    def inverted(self) -> Tuple:
        """The tuple of the other direction without NAT (echo types swapped)."""
        icmp_type = self.icmp_type
        if icmp_type is not None and self.proto is not None:
            icmp_type = _ECHO_REPLY.get((self.proto, icmp_type), icmp_type)
        return Tuple(
            self.family, self.dst, self.src, self.proto, self.dport, self.sport,
            icmp_type, self.icmp_code, self.icmp_id, self.zone,
        )  # fmt: skip


# Echo requests are answered by echo replies (and the other ICMP pairs).
_ECHO_REPLY = {
    (IPPROTO_ICMP, 8): 0, (IPPROTO_ICMP, 0): 8, (IPPROTO_ICMP, 13): 14, (IPPROTO_ICMP, 14): 13,
    (IPPROTO_ICMP, 15): 16, (IPPROTO_ICMP, 16): 15, (IPPROTO_ICMP, 17): 18, (IPPROTO_ICMP, 18): 17,
    (IPPROTO_ICMPV6, 128): 129, (IPPROTO_ICMPV6, 129): 128,
}  # fmt: skip


@dataclass(slots=True)
class Counters:
    packets: int = 0
    bytes: int = 0


@dataclass(slots=True)
class TCPInfo:
    state: TCPState | None = None
    wscale_orig: int | None = None
    wscale_reply: int | None = None
    flags_orig: TCPFlag | None = None
    flags_reply: TCPFlag | None = None
    mask_orig: TCPFlag | None = None
    mask_reply: TCPFlag | None = None


@dataclass(slots=True)
class SCTPInfo:
    state: SCTPState | None = None
    vtag_orig: int | None = None
    vtag_reply: int | None = None


@dataclass(slots=True)
class DCCPInfo:
    state: DCCPState | None = None
    role: int | None = None
    handshake_seq: int | None = None


ProtoInfo = TCPInfo | SCTPInfo | DCCPInfo


@dataclass(slots=True)
class SeqAdj:
    """NAT sequence adjustment of one direction (``CTA_SEQ_ADJ_*``)."""

    correction_pos: int = 0
    offset_before: int = 0
    offset_after: int = 0


@dataclass(slots=True)
class Synproxy:
    isn: int = 0
    its: int = 0
    tsoff: int = 0


@dataclass(slots=True)
class NatRange:
    """A NAT mapping to apply when creating a flow (``CTA_NAT_SRC``/``_DST``)."""

    min_ip: str | None = None
    max_ip: str | None = None
    min_port: int | None = None
    max_port: int | None = None


@dataclass(slots=True)
class Flow:
    """A conntrack entry (``struct nf_conn`` as ctnetlink shows it).

    Timestamps are nanoseconds since the epoch (``CTA_TIMESTAMP``). ``labels``
    is the raw label bitmap (bit N of the kernel's little-endian words).
    ``mark_mask``/``labels_mask``/``status_mask`` only matter in updates and
    filters; ``nat_src``/``nat_dst`` only in creates.
    """

    orig: Tuple | None = None
    reply: Tuple | None = None
    status: Status | None = None
    timeout: int | None = None
    mark: int | None = None
    secctx: str | None = None
    zone: int | None = None
    use: int | None = None
    id: int | None = None
    counters_orig: Counters | None = None
    counters_reply: Counters | None = None
    start: int | None = None
    stop: int | None = None
    protoinfo: ProtoInfo | None = None
    helper: str | None = None
    labels: bytes | None = None
    master: Tuple | None = None
    seqadj_orig: SeqAdj | None = None
    seqadj_reply: SeqAdj | None = None
    synproxy: Synproxy | None = None
    event_time: int | None = None
    mark_mask: int | None = None
    labels_mask: bytes | None = None
    status_mask: int | None = None
    nat_src: NatRange | None = None
    nat_dst: NatRange | None = None

    @property
    def family(self) -> int:
        tup = self.orig or self.reply
        return tup.family if tup else 0

    @property
    def proto(self) -> int | None:
        tup = self.orig or self.reply
        return tup.proto if tup else None

    @property
    def label_bits(self) -> set[int]:
        """Numbers of the labels set in ``labels``."""
        if not self.labels:
            return set()
        value = int.from_bytes(self.labels, "little")
        return {bit for bit in range(len(self.labels) * 8) if value >> bit & 1}


@dataclass(slots=True)
class Expectation:
    """An expected connection (``CTA_EXPECT_*``), e.g. an FTP data channel."""

    master: Tuple | None = None
    tuple: Tuple | None = None
    mask: Tuple | None = None
    timeout: int | None = None
    id: int | None = None
    helper: str | None = None
    zone: int | None = None
    flags: ExpectFlag | None = None
    klass: int | None = None
    nat_dir: int | None = None
    nat_tuple: Tuple | None = None
    fn: str | None = None


@dataclass(slots=True)
class Event:
    """A conntrack or expectation event.

    ``portid`` is the netlink port of the process whose request caused it
    (0: the kernel itself, i.e. packets or timeouts).
    """

    type: EventType
    flow: Flow | None = None
    expectation: Expectation | None = None
    portid: int = 0


@dataclass(slots=True)
class Overrun:
    """Events were lost (ENOBUFS): resynchronise by dumping the table."""

    lost_since: float = 0.0


@dataclass(slots=True)
class CPUStats:
    """Per-CPU conntrack statistics (``CTA_STATS_*``); absent counters are None."""

    cpu: int
    values: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class GlobalStats:
    entries: int = 0
    max_entries: int | None = None
