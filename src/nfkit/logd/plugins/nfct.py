"""NFCT input: connection tracking flows (ulogd2's ``ulogd_inpflow_NFCT.so``).

Three ways to learn about flows, as ulogd2 has them:

* events with the flow table (``hash_enable=1``, the default): the table is
  dumped at start; NEW events add a flow with its start time, UPDATE events
  refresh it, a DESTROY event emits *one* record for the ended flow with
  start and end time and the final counters (``ct.event`` 4);
* events without the table (``hash_enable=0``): NEW and DESTROY records as
  they come;
* polling (``pollinterval`` > 0, needs the table): the table is dumped every
  interval and flows that vanished are emitted as DESTROY.

Event messages are decoded straight into key dicts by code compiled per
attribute layout (a :class:`~nfkit.conntrack.codec.FlowTarget`): only the
keys some stack reads are built, and the accept filters are folded in (the
protocol of a layout is a constant, addresses go through a memo). ``ct``, the
:class:`~nfkit.conntrack.model.Flow` itself, is made only for stacks that
read it (XML).

After an overrun (ENOBUFS) the table is resynchronised ``netlink_resync_timeout``
seconds later: one dump adds the flows missed, and tracked flows it lacks are
looked up one by one; those the kernel no longer has are emitted as DESTROY.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nfkit.conntrack.client import Conntrack
from nfkit.conntrack.codec import Decoder, FlowTarget, FlowValues
from nfkit.conntrack.events import EventListener
from nfkit.conntrack.filters import Filter
from nfkit.conntrack.model import (
    AF_INET,
    AF_INET6,
    IPPROTO_DCCP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    EventType,
    Flow,
    Tuple,
)
from nfkit.conntrack.model import Event as CtEvent
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.loop import Timer
from nfkit.logd.plugin import Context, DataType, InputPlugin, Option, Settings
from nfkit.logd.registry import register
from nfkit.netlink import BufferOverrun, NetlinkError, NetlinkPermissionError
from nfkit.netlink.errors import DecodeError, NetlinkNotFound

T = KeyType

NEW = int(EventType.NEW)
UPDATE = int(EventType.UPDATE)
DESTROY = int(EventType.DESTROY)
#: Protocols whose tuples have ports (ulogd2 sets the l4 keys for these only).
PORT_PROTOCOLS = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP, IPPROTO_DCCP))
NS_PER_SEC = 1_000_000_000
#: Datagrams read per wake-up (ctnetlink sends one event per datagram).
READS_PER_WAKEUP = 256
#: The item of a flow the accept filters drop.
SKIPPED: tuple[()] = ()
MEMO_LIMIT = 1 << 16
#: The receive buffer when netlink_socket_buffer_size is 0 (the kernel's default,
#: ~208 KiB, holds a few hundred events: less than one burst of short flows).
DEFAULT_RECEIVE_BUFFER = 4 << 20

# -- what a flow becomes ---------------------------------------------------------------

#: Model value names (FlowValues / Flow attribute paths) of the addresses.
_ADDRESSES = {"orig.src", "orig.dst", "reply.src", "reply.dst"}
#: The hash key of a flow: what tells two flows apart (the id alone may collide).
_KEY_NAMES = ("id", "zone", "orig.src", "orig.dst", "orig.proto", "orig.sport", "orig.dport",
              "orig.icmp_id", "orig.icmp_type", "orig.icmp_code")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Field:
    """One key of a flow record: from model value ``name``, else ``default``.

    ``name`` None: the key is the constant ``default``. A value that is
    absent with ``default`` None leaves the key out (not VALID).
    """

    key: str
    name: str | None
    default: int | None = None


def plan(family: int, proto: int, reply_proto: int | None, wanted: set[str] | None) -> list[Field]:
    """The keys of the flows of one shape that some stack reads, as ulogd2 sets them."""
    fields = [
        Field("orig.ip.saddr", "orig.src"),
        Field("orig.ip.daddr", "orig.dst"),
        Field("reply.ip.saddr", "reply.src"),
        Field("reply.ip.daddr", "reply.dst"),
        Field("orig.ip.protocol", None, proto),
        Field("orig.raw.pktlen", "counters_orig.bytes", 0),
        Field("orig.raw.pktcount", "counters_orig.packets", 0),
        Field("reply.raw.pktlen", "counters_reply.bytes", 0),
        Field("reply.raw.pktcount", "counters_reply.packets", 0),
        Field("ct.mark", "mark", 0),
        Field("ct.id", "id", 0),
        Field("oob.family", None, family),
        Field("oob.protocol", None, 0),
    ]
    if reply_proto is not None:
        fields.append(Field("reply.ip.protocol", None, reply_proto))
    if proto in PORT_PROTOCOLS:
        fields += [Field("orig.l4.sport", "orig.sport"), Field("orig.l4.dport", "orig.dport")]
    elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        prefix = "icmp" if proto == IPPROTO_ICMP else "icmpv6"
        fields += [Field(f"{prefix}.type", "orig.icmp_type"),
                   Field(f"{prefix}.code", "orig.icmp_code")]  # fmt: skip
    if reply_proto in PORT_PROTOCOLS:
        fields += [Field("reply.l4.sport", "reply.sport"), Field("reply.l4.dport", "reply.dport")]
    return [f for f in fields if wanted is None or f.key in wanted]


class _Membership(dict[bytes, bool]):
    """``memo[address]``: whether a packed address is in one of ``networks``."""

    def __init__(self, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]):
        super().__init__()
        self.ranges = [
            (n.max_prefixlen // 8, int(n.network_address), int(n.netmask)) for n in networks
        ]
        self.families = {AF_INET if n.version == 4 else AF_INET6 for n in networks}

    def __missing__(self, address: bytes) -> bool:
        value = int.from_bytes(address, "big")
        size = len(address)
        inside = any(size == s and value & mask == net for s, net, mask in self.ranges)
        if len(self) < MEMO_LIMIT:
            self[address] = inside
        return inside


@dataclass(frozen=True)
class AcceptFilter:
    """``accept_src_filter``, ``accept_dst_filter`` and ``accept_proto_filter``.

    A flow passes when its original source is in one of the source networks,
    its original destination in one of the destination networks and its
    protocol among the protocols (an empty list accepts anything). A
    network list without any network of the flow's family rejects it, as
    ulogd2's filter intends.
    """

    sources: _Membership | None = None
    destinations: _Membership | None = None
    protocols: frozenset[int] | None = None

    def accepts_shape(self, family: int, proto: int | None) -> bool:
        """What the filter decides from a layout's family and protocol alone."""
        if self.protocols is not None and proto not in self.protocols:
            return False
        return all(m is None or family in m.families for m in (self.sources, self.destinations))

    def accepts(self, family: int, src: bytes | None, dst: bytes | None, proto: int | None) -> bool:
        if not self.accepts_shape(family, proto):
            return False
        if self.sources is not None and (src is None or not self.sources[src]):
            return False
        return self.destinations is None or (dst is not None and self.destinations[dst])

    def dump_filter(self) -> Filter:
        """The criteria a dump can carry to the kernel (the rest is checked here)."""
        criteria: dict[str, Any] = {}
        if self.protocols is not None and len(self.protocols) == 1:
            criteria["proto"] = next(iter(self.protocols))
        for name, member in (("src", self.sources), ("dst", self.destinations)):
            if member is not None and len(member.ranges) == 1:
                _size, net, mask = member.ranges[0]
                network = ipaddress.ip_network((net, bin(mask).count("1")))
                criteria[name] = str(network)
        try:
            return Filter(**criteria)
        except ValueError:  # an IPv4 and an IPv6 network: the kernel sees neither
            return Filter(**{k: v for k, v in criteria.items() if k == "proto"})


def _raw_address(values: FlowValues, name: str) -> str | None:
    direction, end = name.split(".")
    version = "v4" if values.family == AF_INET else "v6"
    return values.leaf(f"{direction}.ip.{version}_{end}")


_PACKED: dict[tuple[int, str], bytes] = {}


def _packed(family: int, text: str) -> bytes:
    packed = _PACKED.get((family, text))
    if packed is None:
        packed = socket.inet_pton(family, text)
        if len(_PACKED) < MEMO_LIMIT:
            _PACKED[(family, text)] = packed
    return packed


def _flow_value(flow: Flow, name: str) -> Any:
    """The value a dotted model name has in ``flow`` (None when absent); addresses packed."""
    value: Any = flow
    for part in name.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    if name in _ADDRESSES:
        return _packed(flow.orig.family if flow.orig else AF_INET, value)
    return int(value)


class FlowRecords:
    """Flow messages made into ``(event, key, record, start_ns, stop_ns)`` items.

    A :class:`~nfkit.conntrack.codec.FlowTarget` for event and dump decoders:
    ``record`` holds the keys ``wanted`` (None: all) and ``ct.event``;
    ``key`` identifies the flow in the table (None without one); the kernel
    timestamps are None when absent. Flows the filter rejects become
    :data:`SKIPPED`. Dump entries count as UPDATE events.

    With the table, compiled NEW and UPDATE events carry the message itself
    (bytes) in place of the record: the table only keeps it, and
    :meth:`stored_record` decodes it in the rare case the flow ends without
    its DESTROY event.
    """

    def __init__(self, wanted: set[str] | None, accept: AcceptFilter, hashed: bool) -> None:
        self.wanted = wanted
        self.accept = accept
        self.hashed = hashed
        self.want_ct = wanted is None or "ct" in wanted
        self._plans: dict[tuple[int, int, int | None], list[Field]] = {}
        self.target: FlowTarget[Any] = FlowTarget(self.convert, self.compile)
        self._stored = Decoder(target=self.target)

    def stored_record(self, stored: Event | bytes) -> Event | None:
        """A copy of the record a table entry holds (None: undecodable message)."""
        if isinstance(stored, dict):
            return dict(stored)
        try:
            items, _others = self._stored.decode(stored)
        except DecodeError:
            return None
        return items[0][2] if items and items[0] else None

    # -- compiled per layout -----------------------------------------------------------------

    def compile(self, values: FlowValues) -> tuple[str, Mapping[str, Any]] | None:
        proto = values.constant("orig.proto")
        family = values.family
        if self.want_ct or proto is None or family not in (AF_INET, AF_INET6):
            return None  # Flow objects needed, or a rare layout: convert()
        if not self.accept.accepts_shape(family, proto):
            return "SKIPPED", {"SKIPPED": SKIPPED}

        def expression(name: str) -> str | None:
            return _raw_address(values, name) if name in _ADDRESSES else values.get(name)

        event = int(values.event) if values.event is not None else UPDATE
        record = [f"'ct.event': {event}"]
        for field in plan(family, proto, values.constant("reply.proto"), self.wanted):
            value = None if field.name is None else expression(field.name)
            if value is None:
                if field.default is None:
                    continue
                value = repr(field.default)
            record.append(f"{field.key!r}: {value}")
        key = self._key_expression(expression) if self.hashed else "None"
        start, stop = values.get("start") or "None", values.get("stop") or "None"
        made = f"{{{', '.join(record)}}}"
        if self.hashed and values.event is not None and event != DESTROY:
            made = "data[offset:] if offset else data"  # see stored_record()
        item = f"({event}, {key}, {made}, {start}, {stop})"
        conditions = []
        checks = (
            (self.accept.sources, "orig.src", "SOURCES"),
            (self.accept.destinations, "orig.dst", "DESTINATIONS"),
        )
        for member, name, label in checks:
            address = expression(name)
            if member is not None:
                if address is None:
                    return None  # a malformed layout: convert() rejects its flows
                conditions.append(f"{label}[{address}]")
        if conditions:
            item = f"{item} if {' and '.join(conditions)} else SKIPPED"
        names = {"SOURCES": self.accept.sources, "DESTINATIONS": self.accept.destinations,
                 "SKIPPED": SKIPPED}  # fmt: skip
        return item, names

    @staticmethod
    def _key_expression(expression: Callable[[str], str | None]) -> str:
        return f"({', '.join(expression(name) or 'None' for name in _KEY_NAMES)},)"

    # -- from Flow objects (the reference; rare layouts; stacks reading ``ct``) ---------

    def convert(self, item: CtEvent | Flow) -> tuple[Any, ...]:
        if isinstance(item, CtEvent):
            event, flow = int(item.type), item.flow
        else:
            event, flow = UPDATE, item
        orig = flow.orig if flow is not None else None
        if flow is None or orig is None or orig.proto is None:
            return SKIPPED
        family, proto = orig.family, orig.proto
        src, dst = _flow_value(flow, "orig.src"), _flow_value(flow, "orig.dst")
        if not self.accept.accepts(family, src, dst, proto):
            return SKIPPED
        reply_proto = flow.reply.proto if flow.reply else None
        shape = (family, proto, reply_proto)
        fields = self._plans.get(shape)
        if fields is None:
            fields = self._plans[shape] = plan(family, proto, reply_proto, self.wanted)
        record: Event = {"ct.event": event}
        for field in fields:
            value = field.default if field.name is None else _flow_value(flow, field.name)
            if value is None:
                value = field.default
                if value is None:
                    continue
            record[field.key] = value
        if self.want_ct:
            record["ct"] = flow
        key = tuple(_flow_value(flow, name) for name in _KEY_NAMES) if self.hashed else None
        return event, key, record, flow.start, flow.stop


START_KEYS = ("flow.start.sec", "flow.start.usec")
END_KEYS = ("flow.end.sec", "flow.end.usec")


def _stamp(record: Event, keys: tuple[str, str], ns: int) -> None:
    """Set a time from nanoseconds since the epoch (seconds and microseconds keys)."""
    sec, rest = divmod(ns, NS_PER_SEC)
    record[keys[0]] = sec
    record[keys[1]] = rest // 1000


def key_tuple(key: tuple[Any, ...]) -> tuple[Tuple, int | None, int | None]:
    """The original tuple, zone and id of a table key (to look the flow up)."""
    flow_id, zone, src, dst, proto, sport, dport, icmp_id, icmp_type, icmp_code = key
    family = AF_INET if len(src) == 4 else AF_INET6
    tup = Tuple(family, socket.inet_ntop(family, src), socket.inet_ntop(family, dst), proto,
                sport, dport, icmp_type, icmp_code, icmp_id)  # fmt: skip
    return tup, zone, flow_id


# -- options ------------------------------------------------------------------------------


def parse_networks(settings: Settings, option: str) -> _Membership | None:
    text = settings[option]
    if not text:
        return None
    networks = []
    for spec in text.split(","):
        spec = spec.strip()
        if "/" not in spec:
            raise ConfigError(
                f"{option}: {spec!r} has no prefix length (ulogd2: No network specified)",
                settings.where(option),
                f"write a network, e.g. {spec}/{128 if ':' in spec else 32} for one address",
            )
        try:
            networks.append(ipaddress.ip_network(spec, strict=False))
        except ValueError as exc:
            raise ConfigError(
                f"{option}: {spec!r} is not a network ({exc})",
                settings.where(option),
                "give comma-separated networks without spaces, e.g. 192.0.2.0/24,2001:db8::/32",
            ) from None
    return _Membership(networks)


def parse_protocols(settings: Settings, option: str) -> frozenset[int] | None:
    text = settings[option]
    if not text:
        return None
    numbers = set()
    for name in text.split(","):
        name = name.strip()
        try:
            numbers.add(int(name) if name.isdigit() else socket.getprotobyname(name))
        except OSError:
            raise ConfigError(
                f"{option}: unknown protocol {name!r}",
                settings.where(option),
                "use names from /etc/protocols (tcp,udp,icmp,ipv6-icmp,sctp...) or numbers",
            ) from None
    return frozenset(numbers)


EVENTS_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_events"


def _read_setting(path: str) -> str | None:
    """A sysctl of the current network namespace (None when unreadable)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


# -- the table ----------------------------------------------------------------------------


class FlowTable:
    """Flows being tracked: key -> ``[record, start_ns]``, at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.flows: dict[tuple[Any, ...], list[Any]] = {}
        #: Flows not tracked because the table was full.
        self.untracked = 0

    def __len__(self) -> int:
        return len(self.flows)

    def learn(
        self, key: tuple[Any, ...], record: Event | bytes, start: int | None, now: int
    ) -> list[Any]:
        """Add a flow (start: the kernel's, else ``now``) or refresh its record."""
        entry = self.flows.get(key)
        if entry is not None:
            entry[0] = record
            return entry
        entry = [record, start or now]
        if len(self.flows) < self.limit:
            self.flows[key] = entry
        else:
            self.untracked += 1
        return entry


# -- the plugin ---------------------------------------------------------------------------


class Statistics:
    """Counters of one NFCT instance, reported with the daemon's statistics."""

    def __init__(self, name: str, table: FlowTable | None) -> None:
        self.name = name
        self.table = table
        self.received = 0
        self.overruns = 0
        self.filtered = 0
        self.undecodable = 0
        self.resync_destroyed = 0
        self._reported: tuple[int, ...] = ()

    def statistics(self) -> dict[str, int]:
        return {
            "received": self.received,
            "overruns": self.overruns,
            "untracked": self.table.untracked if self.table else 0,
            "undecodable": self.undecodable,
        }

    def summary(self, force: bool = False) -> str | None:
        state = (self.received, self.overruns, self.filtered, self.resync_destroyed,
                 self.table.untracked if self.table else 0)  # fmt: skip
        if not force and state == self._reported:
            return None
        self._reported = state
        table = (
            f", {len(self.table)} flows tracked, {self.table.untracked} not tracked (table full)"
            if self.table is not None
            else ""
        )
        return (
            f"NFCT {self.name}: {self.received} conntrack messages, {self.filtered} filtered out, "
            f"{self.overruns} buffer overruns, {self.resync_destroyed} ended flows found by "
            f"resynchronisation{table}, {self.undecodable} undecodable datagrams"
        )


@register
class NFCT(InputPlugin):
    name = "NFCT"
    summary = "connection tracking flows (events or polling; one record per ended flow)"
    output_type = DataType.FLOW
    options = (
        Option("pollinterval", int, 0, help="seconds between dumps (0: events)"),
        Option("hash_enable", int, 1, help="one record per ended flow, with start and end"),
        Option("hash_buckets", int, 8192, help="accepted for compatibility"),
        Option("hash_max_entries", int, 32768),
        Option("event_mask", int, 5, help="1 NEW, 2 UPDATE, 4 DESTROY"),
        Option("netlink_socket_buffer_size", int, 0),
        Option("netlink_socket_buffer_maxsize", int, 0),
        Option("netlink_resync_timeout", int, 60),
        Option("reliable", int, 0),
        Option("accept_src_filter", str, ""),
        Option("accept_dst_filter", str, ""),
        Option("accept_proto_filter", str, ""),
    )
    output_keys = keys(
        ("orig.ip.saddr", T.IPADDR),
        ("orig.ip.daddr", T.IPADDR),
        ("orig.ip.protocol", T.UINT8),
        ("orig.l4.sport", T.UINT16),
        ("orig.l4.dport", T.UINT16),
        ("orig.raw.pktlen", T.UINT64),
        ("orig.raw.pktcount", T.UINT64),
        ("reply.ip.saddr", T.IPADDR),
        ("reply.ip.daddr", T.IPADDR),
        ("reply.ip.protocol", T.UINT8),
        ("reply.l4.sport", T.UINT16),
        ("reply.l4.dport", T.UINT16),
        ("reply.raw.pktlen", T.UINT64),
        ("reply.raw.pktcount", T.UINT64),
        ("icmp.code", T.UINT8),
        ("icmp.type", T.UINT8),
        ("icmpv6.code", T.UINT8),
        ("icmpv6.type", T.UINT8),
        ("ct.mark", T.UINT32),
        ("ct.id", T.UINT32),
        ("ct.event", T.UINT32),
        ("flow.start.sec", T.UINT32),
        ("flow.start.usec", T.UINT32),
        ("flow.end.sec", T.UINT32),
        ("flow.end.usec", T.UINT32),
        ("oob.family", T.UINT8),
        ("oob.protocol", T.UINT8),
        ("ct", T.RAW),
    )

    def __init__(self, instance_id: str, settings: Settings, context: Context) -> None:
        super().__init__(instance_id, settings, context)
        self.accept = AcceptFilter()
        self.table: FlowTable | None = None
        self.listener: EventListener | None = None
        self.client: Conntrack | None = None
        self.stats = Statistics(instance_id, None)
        self._timers: list[Timer] = []
        self._resync: Timer | None = None
        self._buffer = 0
        self._warned: set[str] = set()
        self._event_setting: str | None = None
        self._silent: set[tuple[Any, ...]] = set()
        self._silent_timer: Timer | None = None

    # -- configuration ----------------------------------------------------------------------

    def configure(self, upstream: Sequence[Any]) -> None:
        s = self.settings
        for option in ("pollinterval", "hash_buckets", "hash_max_entries",
                       "netlink_socket_buffer_size", "netlink_socket_buffer_maxsize",
                       "netlink_resync_timeout"):  # fmt: skip
            if s[option] < 0:
                raise ConfigError(f"{option} must not be negative", s.where(option),
                                  f"set {option} to 0 or more")  # fmt: skip
        for option in ("hash_buckets", "hash_max_entries"):
            if s["hash_enable"] and s[option] == 0:
                raise ConfigError(
                    f"{option}=0 leaves no room for flows",
                    s.where(option),
                    f"remove the {option} line (default) or set hash_enable=0",
                )
        if s["pollinterval"] and not s["hash_enable"]:
            raise ConfigError(
                "NFCT polling mode requires the hashtable",
                s.where("hash_enable"),
                "set hash_enable=1 (the default), or pollinterval=0 for event mode",
            )
        mask = s["event_mask"]
        if not s["pollinterval"] and (mask & ~7 or not mask & 7):
            raise ConfigError(
                f"event_mask 0x{mask:x} selects no flow events",
                s.where("event_mask"),
                "combine 1 (NEW), 2 (UPDATE) and 4 (DESTROY), e.g. event_mask=5",
            )
        if s["hash_enable"] and not s["pollinterval"] and not mask & DESTROY:
            raise ConfigError(
                "with the flow table, records are emitted on DESTROY events, "
                f"which event_mask 0x{mask:x} leaves out",
                s.where("event_mask"),
                "add 4 (DESTROY) to event_mask, or set hash_enable=0 to log NEW events",
            )
        maxsize, size = s["netlink_socket_buffer_maxsize"], s["netlink_socket_buffer_size"]
        if maxsize and size > maxsize:
            raise ConfigError(
                f"netlink_socket_buffer_size {size} exceeds "
                f"netlink_socket_buffer_maxsize {maxsize}",
                s.where("netlink_socket_buffer_size"),
                "raise netlink_socket_buffer_maxsize (the limit for growth after overruns)",
            )
        self.accept = AcceptFilter(
            parse_networks(s, "accept_src_filter"),
            parse_networks(s, "accept_dst_filter"),
            parse_protocols(s, "accept_proto_filter"),
        )

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        hashed = bool(s["hash_enable"])
        self.table = FlowTable(s["hash_max_entries"]) if hashed else None
        self.stats = Statistics(self.id, self.table)
        self.records = FlowRecords(self.wanted, self.accept, hashed)
        self.wants_start = self.wanted is None or "flow.start.sec" in self.wanted
        self.wants_end = self.wanted is None or "flow.end.sec" in self.wanted
        self.context.shared("nfct", self.id, lambda: self.stats)
        self._event_setting = _read_setting(EVENTS_SYSCTL)
        if self._event_setting == "0" and not s["pollinterval"]:
            self.log.warning(
                "NFCT %s: net.netfilter.nf_conntrack_events=0: the kernel sends no conntrack "
                "events; set it to 1 (or 2), or poll with pollinterval",
                self.id,
            )
        try:
            self.client = Conntrack()
            if not s["pollinterval"]:
                self._open_events()
        except NetlinkPermissionError as exc:
            self.stop()
            raise StartError(
                f"NFCT {self.id}: cannot open ctnetlink ({exc.strerror})",
                fix="nfkit logd needs root (CAP_NET_ADMIN) for conntrack",
            ) from exc
        except NetlinkError as exc:
            self.stop()
            raise StartError(
                f"NFCT {self.id}: cannot open ctnetlink: {exc}",
                fix="load nf_conntrack_netlink (modprobe nf_conntrack_netlink)",
            ) from exc

    def _open_events(self) -> None:
        s = self.settings
        self._buffer = s["netlink_socket_buffer_size"] or DEFAULT_RECEIVE_BUFFER
        self.listener = EventListener(
            EventType(s["event_mask"] & 7),
            receive_buffer=self._buffer,
            reliable=bool(s["reliable"]),
        )
        self.log.info("NFCT netlink buffer size has been set to %d", self._buffer)
        if s["reliable"]:
            self.log.info("NFCT reliable logging has been enabled.")
        self.decoder = Decoder(events=True, target=self.records.target)
        self.handle = self._handle_hashed if self.table is not None else self._handle_plain

    def activate(self) -> None:
        loop = self.context.loop
        if self.listener is not None:
            loop.add_reader(self.listener.fileno(), self.on_readable)
        if self.table is not None:
            # The flows that exist already (their NEW events were before us).
            seen = self._synchronise(purge=False)
            if seen and self.listener is not None and self._event_setting != "1":
                # Created without a listener, they may never send DESTROY
                # (nf_conntrack_events=2): look for their end ourselves.
                self._silent = seen
                self._silent_timer = loop.call_every(
                    max(1, self.settings["netlink_resync_timeout"]), self._check_silent
                )
                self._timers.append(self._silent_timer)
        interval = self.settings["pollinterval"]
        if interval:
            self._timers.append(loop.call_every(interval, self._synchronise))

    def _check_silent(self) -> None:
        """Emit the flows of the first dump that ended without a DESTROY event."""
        assert self.table is not None
        flows = self.table.flows
        self._purge([key for key in self._silent if key in flows])
        self._silent = {key for key in self._silent if key in flows}
        if not self._silent and self._silent_timer is not None:
            self._silent_timer.cancel()

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._resync is not None:
            self._resync.cancel()
            self._resync = None
        if self.listener is not None:
            if self.context.loop is not None:
                self.context.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
        if self.client is not None:
            self.client.close()
            self.client = None
        self.context.release("nfct", self.id)

    def signal(self, signo: int) -> None:
        if signo == signal.SIGUSR2:
            self.dump_and_reset()

    # -- events ------------------------------------------------------------------------------

    def on_readable(self) -> None:
        listener = self.listener
        if listener is None:
            return
        recv = listener.sock.recv
        parsers = self.decoder.layouts.parsers
        items: list[Any] = []
        append = items.append
        for _ in range(READS_PER_WAKEUP):
            try:
                data = recv()
            except BlockingIOError:
                break
            except BufferOverrun:
                self._overrun()
                continue
            except (NetlinkError, DecodeError) as exc:
                self._undecodable(exc)
                continue
            # ctnetlink sends each event in a datagram of its own: once its
            # layout is known, the layout's parser reads it directly.
            entry = parsers.get(data[:8])
            if entry is not None and entry[0] <= len(data) <= entry[1]:
                item = entry[2](data, 0)
                if item is not None:
                    append(item)
                    continue
            items += self._decode(data)
        if items:
            self.stats.received += len(items)
            filtered = items.count(SKIPPED)
            if filtered:
                self.stats.filtered += filtered
                items = [item for item in items if item]
            records = self.handle(items)
            if records:
                self.emit_batch(records)

    def _decode(self, data: bytes) -> list[Any]:
        """The items of a datagram the compiled parsers do not know (yet)."""
        try:
            items, _others = self.decoder.decode(data)
        except DecodeError as exc:
            self._undecodable(exc)
            return []
        return items

    def _undecodable(self, exc: Exception) -> None:
        self.stats.undecodable += 1
        self.log.debug("NFCT %s: unreadable datagram: %s", self.id, exc)

    def _handle_plain(self, items: list[Any]) -> list[Event]:
        """hash_enable=0: NEW with its start, DESTROY with its end (and kernel start)."""
        out = []
        now = 0
        wants_start, wants_end = self.wants_start, self.wants_end
        for event, _key, record, start, stop in items:
            if event == NEW:
                if wants_start:
                    _stamp(record, START_KEYS, start or now or (now := time.time_ns()))
            elif event == DESTROY:
                if wants_end:
                    _stamp(record, END_KEYS, stop or now or (now := time.time_ns()))
                if start and wants_start:
                    _stamp(record, START_KEYS, start)
            else:
                self._once("update", "NFCT: UPDATE events are not logged without the flow table "
                           "(hash_enable=0); they are ignored")  # fmt: skip
                continue
            out.append(record)
        return out

    def _handle_hashed(self, items: list[Any]) -> list[Event]:
        """The flow table: NEW/UPDATE learn flows, DESTROY emits them."""
        table = self.table
        assert table is not None
        flows, learn, finish = table.flows, table.learn, self._finish
        out: list[Event] = []
        now = time.time_ns()
        for event, key, record, start, stop in items:
            if event == DESTROY:
                entry = flows.pop(key, None)
                # The kernel's start (timestamp extension) beats the time the NEW was read.
                if entry is not None and not start:
                    start = entry[1]
                finish(record, start, stop or now)
                out.append(record)
            else:
                learn(key, record, start, now)
        return out

    def _finish(self, record: Event, start: int | None, stop: int) -> None:
        """Stamp an ended flow's record (DESTROY, ct.event 4)."""
        record["ct.event"] = DESTROY
        if start and self.wants_start:
            _stamp(record, START_KEYS, start)
        if self.wants_end:
            _stamp(record, END_KEYS, stop)

    def _overrun(self) -> None:
        """ENOBUFS: grow the buffer as ulogd2 does, and plan a resynchronisation."""
        self.stats.overruns += 1
        listener = self.listener
        assert listener is not None
        maxsize = self.settings["netlink_socket_buffer_maxsize"]
        if maxsize:
            current = self._buffer
            if current * 2 <= maxsize:
                self._buffer = current * 2
                listener.set_receive_buffer(self._buffer)
                self.log.warning("We are losing events, increasing buffer size to %d",
                             self._buffer)  # fmt: skip
            else:
                self._once("maxsize", f"Maximum buffer size ({current}) in NFCT has been reached. "
                           "Please, consider rising `netlink_socket_buffer_size` and "
                           "`netlink_socket_buffer_maxsize` clauses.")  # fmt: skip
        else:
            self._once(
                "overrun",
                "We are losing events. Please, consider using the clauses "
                "`netlink_socket_buffer_size' and `netlink_socket_buffer_maxsize'",
            )
        if self.table is not None and self._resync is None:
            delay = self.settings["netlink_resync_timeout"]
            self._resync = self.context.loop.call_later(delay, self._resynchronise)

    def _once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            self.log.warning("%s", message)

    # -- dumps ------------------------------------------------------------------------------

    def _dump(self, reset: bool = False) -> Iterable[Any]:
        assert self.client is not None
        return self.client.dump_as(
            self.records.target, self.accept.dump_filter(), reset_counters=reset
        )

    def _resynchronise(self) -> None:
        """The resynchronisation planned after an overrun."""
        self._resync = None
        self._synchronise()

    def _synchronise(self, purge: bool = True) -> set[tuple[Any, ...]]:
        """Dump the table into the flow table; with ``purge``, emit the flows gone since.

        Returns the keys of the flows the dump had (none after an error).
        """
        table = self.table
        assert table is not None
        now = time.time_ns()
        seen: set[tuple[Any, ...]] = set()
        try:
            for item in self._dump():
                if not item:
                    continue
                _event, key, record, start, _stop = item
                table.learn(key, record, start, now)
                seen.add(key)
        except NetlinkError as exc:
            self.log.error("NFCT %s: cannot dump the conntrack table: %s", self.id, exc)
            return set()
        if purge:
            gone = [key for key in table.flows if key not in seen]
            self._purge(gone)
        return seen

    def _purge(self, candidates: list[tuple[Any, ...]]) -> None:
        """Emit as DESTROY the candidates the kernel no longer has (one lookup each:
        a dump may miss flows created while it ran)."""
        table = self.table
        assert table is not None and self.client is not None
        out = []
        for key in candidates:
            tup, zone, flow_id = key_tuple(key)
            try:
                flow = self.client.get(tup, zone)
                if flow_id is None or flow.id == flow_id:
                    continue
            except NetlinkNotFound:
                pass
            except NetlinkError as exc:
                self.log.debug("NFCT %s: lookup of %s failed: %s", self.id, tup, exc)
                continue
            entry = table.flows.pop(key)
            record = self.records.stored_record(entry[0])
            if record is None:
                continue
            self._finish(record, entry[1], time.time_ns())
            out.append(record)
        self.stats.resync_destroyed += len(out)
        if out:
            self.emit_batch(out)

    def dump_and_reset(self) -> None:
        """SIGUSR2: read and zero every flow's counters; emit each as UPDATE (ct.event 2)."""
        table = self.table
        now = time.time_ns()
        out = []
        try:
            for item in self._dump(reset=True):
                if not item:
                    continue
                _event, key, record, start, _stop = item
                if table is not None:
                    start = table.learn(key, record, start, now)[1]
                record = dict(record)
                record["ct.event"] = UPDATE
                if start and self.wants_start:
                    _stamp(record, START_KEYS, start)
                out.append(record)
        except NetlinkError as exc:
            self.log.error("NFCT %s: Cannot dump and reset counters: %s", self.id, exc)
        if out:
            self.emit_batch(out)
