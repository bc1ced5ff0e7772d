"""IPFIX: flow records to an IPFIX collector (RFC 7011) over UDP or TCP.

One data record per event (a conntrack flow from NFCT), with two templates:

===== ===================================================================
 256  IPv4 flows: sourceIPv4Address, destinationIPv4Address
 257  IPv6 flows: sourceIPv6Address, destinationIPv6Address
===== ===================================================================

followed in both by sourceTransportPort, destinationTransportPort,
icmpTypeCodeIPv4 (resp. icmpTypeCodeIPv6), protocolIdentifier,
octetDeltaCount and packetDeltaCount (original direction, 64 bits), their
RFC 5103 reverse counterparts (enterprise 29305: reply direction, which
nfdump reads as "out" bytes/packets), flowStartMilliseconds,
flowEndMilliseconds and commonPropertiesId (4 bytes: ``ct.mark``, as
ipt_NETFLOW exports it).

Records gather into messages of at most ``mtu`` bytes; a message goes out
when the next record would not fit, and a partial one every second. The
header's sequence number counts the data records sent before the message
(RFC 7011 section 3.1). Templates are sent at the start of every connection
(TCP) or, over UDP, at start, after the collector was unreachable and every
``template_refresh`` seconds (RFC 7011 section 8.4) with ``send_template=once``;
in every message with ``always``; never with ``never``.

Unlike ulogd2's exporter (IPv4 only, 32-bit counters, seconds, the timer
that fires once), a collector that is down does not fail the start: messages
wait in a bounded buffer (:class:`LineSender`) while it reconnects.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nfkit.logd.errors import ConfigError
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import ERROR, DataType, Option, Plugin, Role
from nfkit.logd.plugins.json_output import LineSender, resolve
from nfkit.logd.registry import register
from nfkit.ratelimit import LogLimiter

IPFIX_VERSION = 10
TEMPLATE_SET_ID = 2
REVERSE_PEN = 29305  # RFC 5103: reverse-direction information elements
ENTERPRISE_BIT = 0x8000
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58

HEADER = struct.Struct("!HHIII")  # version, length, export time, sequence number, domain
SET_HEADER = struct.Struct("!HH")  # set id, length
TEMPLATE_HEADER = struct.Struct("!HH")  # template id, field count
SEQUENCE_OFFSET = 8
MAX_MESSAGE = 0xFFFF  # the header's length field
MAX_DATAGRAM = 65507  # largest UDP payload over IPv4
BUFFER_BYTES = 8 << 20  # messages kept while the collector is away
FLUSH_INTERVAL = 1.0
SEND_TEMPLATE = ("once", "always", "never")


@dataclass(frozen=True, slots=True)
class Element:
    """An information element of a template: IANA name and id, encoded length."""

    name: str
    id: int
    length: int
    code: str  # its struct format
    enterprise: int = 0

    def specifier(self) -> bytes:
        if self.enterprise:
            return struct.pack("!HHI", self.id | ENTERPRISE_BIT, self.length, self.enterprise)
        return struct.pack("!HH", self.id, self.length)


class Template:
    """A template record and the packer of its data records."""

    def __init__(self, template_id: int, elements: Sequence[Element]) -> None:
        self.id = template_id
        self.elements = tuple(elements)
        self.record = struct.Struct("!" + "".join(e.code for e in elements))
        self.definition = TEMPLATE_HEADER.pack(template_id, len(elements)) + b"".join(
            e.specifier() for e in elements
        )


def flow_template(template_id: int, source: Element, destination: Element,
                  icmp: Element) -> Template:
    return Template(template_id, (
        source,
        destination,
        Element("sourceTransportPort", 7, 2, "H"),
        Element("destinationTransportPort", 11, 2, "H"),
        icmp,
        Element("protocolIdentifier", 4, 1, "B"),
        Element("octetDeltaCount", 1, 8, "Q"),
        Element("packetDeltaCount", 2, 8, "Q"),
        Element("reverseOctetDeltaCount", 1, 8, "Q", REVERSE_PEN),
        Element("reversePacketDeltaCount", 2, 8, "Q", REVERSE_PEN),
        Element("flowStartMilliseconds", 152, 8, "Q"),
        Element("flowEndMilliseconds", 153, 8, "Q"),
        Element("commonPropertiesId", 137, 4, "I"),
    ))


IPV4_FLOW = flow_template(
    256,
    Element("sourceIPv4Address", 8, 4, "4s"),
    Element("destinationIPv4Address", 12, 4, "4s"),
    Element("icmpTypeCodeIPv4", 32, 2, "H"),
)
IPV6_FLOW = flow_template(
    257,
    Element("sourceIPv6Address", 27, 16, "16s"),
    Element("destinationIPv6Address", 28, 16, "16s"),
    Element("icmpTypeCodeIPv6", 139, 2, "H"),
)
TEMPLATES = (IPV4_FLOW, IPV6_FLOW)
BY_ADDRESS_LENGTH = {4: IPV4_FLOW, 16: IPV6_FLOW}
_DEFINITIONS = b"".join(t.definition for t in TEMPLATES)
TEMPLATE_SET = SET_HEADER.pack(TEMPLATE_SET_ID, SET_HEADER.size + len(_DEFINITIONS)) + _DEFINITIONS
#: The smallest mtu that holds the templates and one record of each kind.
MIN_MTU = HEADER.size + len(TEMPLATE_SET) + SET_HEADER.size + max(t.record.size for t in TEMPLATES)


class Message:
    """Data records gathered into one IPFIX message of at most ``mtu`` bytes."""

    __slots__ = ("mtu", "records", "sets", "size", "templates")

    def __init__(self, mtu: int, templates: bytes = b"") -> None:
        self.mtu = mtu
        self.templates = templates
        self.sets: dict[int, list[bytes]] = {}
        self.size = HEADER.size + len(templates)
        self.records = 0

    def add(self, template_id: int, record: bytes) -> bool:
        """Append ``record`` to the set of ``template_id``; False if it does not fit."""
        records = self.sets.get(template_id)
        grow = len(record) if records is not None else len(record) + SET_HEADER.size
        if self.size + grow > self.mtu:
            return False
        if records is None:
            records = self.sets[template_id] = []
        records.append(record)
        self.size += grow
        self.records += 1
        return True

    def encode(self, domain: int, sequence: int, export_time: int) -> bytes:
        parts = [HEADER.pack(IPFIX_VERSION, self.size, export_time, sequence, domain),
                 self.templates]
        for template_id, records in self.sets.items():
            parts.append(SET_HEADER.pack(template_id, SET_HEADER.size + sum(map(len, records))))
            parts += records
        return b"".join(parts)


def milliseconds(event: Event, prefix: str) -> int | None:
    """``<prefix>.sec``/``.usec`` in milliseconds since the epoch, None if unset."""
    seconds = event.get(prefix + ".sec")
    if seconds is None:
        return None
    return int(seconds) * 1000 + int(event.get(prefix + ".usec", 0)) // 1000


@register
class IPFIX(Plugin):
    name = "IPFIX"
    summary = "export flows to an IPFIX collector (RFC 7011) over UDP or TCP"
    role = Role.OUTPUT
    input_type = DataType.PACKET | DataType.FLOW | DataType.SUM
    output_type = DataType.SINK
    options = (
        Option("oid", int, 0, help="observation domain id, non-zero"),
        Option("host", str, "", help="collector address: an IPv4 or IPv6 literal"),
        Option("port", int, 4739),
        Option("proto", str, "tcp", help="tcp or udp"),
        Option("mtu", int, 512, help=f"largest message in bytes ({MIN_MTU}..{MAX_MESSAGE})"),
        Option("send_template", str, "once",
               help="once (per connection; over UDP also every template_refresh s), "
                    "always (in every message) or never"),
        Option("template_refresh", int, 60,
               help="UDP: seconds between template retransmissions; 0: at start only"),
    )
    input_keys = keys(
        ("orig.ip.saddr", KeyType.IPADDR),
        ("orig.ip.daddr", KeyType.IPADDR),
        ("orig.raw.pktcount", KeyType.UINT64),
        ("orig.raw.pktlen", KeyType.UINT64),
        ("reply.raw.pktcount", KeyType.UINT64),
        ("reply.raw.pktlen", KeyType.UINT64),
        ("flow.start.sec", KeyType.UINT32),
        ("flow.start.usec", KeyType.UINT32),
        ("flow.end.sec", KeyType.UINT32),
        ("flow.end.usec", KeyType.UINT32),
        ("orig.l4.sport", KeyType.UINT16),
        ("orig.l4.dport", KeyType.UINT16),
        ("orig.ip.protocol", KeyType.UINT8),
        ("ct.mark", KeyType.UINT32),
        ("icmp.type", KeyType.UINT8, "optional"),
        ("icmp.code", KeyType.UINT8, "optional"),
        ("icmpv6.type", KeyType.UINT8, "optional"),
        ("icmpv6.code", KeyType.UINT8, "optional"),
    )
    sender: LineSender | None = None
    _timer: Any = None
    #: Monotonic seconds, for the template refresh (replaceable in tests).
    clock = staticmethod(time.monotonic)

    # -- configuration ------------------------------------------------------------

    def configure(self, upstream: Sequence[Plugin]) -> None:
        settings = self.settings
        self.domain = int(settings["oid"])
        if not 0 < self.domain < 2**32:
            raise ConfigError(f"invalid observation domain id oid={self.domain}",
                              settings.where("oid"), "set oid= to a number from 1 to 4294967295")
        proto = str(settings["proto"]).lower()
        if proto not in ("tcp", "udp"):
            raise ConfigError(f"unsupported protocol proto={settings['proto']!r}",
                              settings.where("proto"), "use proto=tcp or proto=udp")
        self.kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        self.proto = proto
        port = int(settings["port"])
        if not 0 < port < 65536:
            raise ConfigError(f"invalid port {port}", settings.where("port"),
                              "set port= from 1 to 65535 (IPFIX: 4739)")
        host = str(settings["host"])
        if not host:
            raise ConfigError("no collector address", settings.where("host"),
                              "set host= to the collector's IPv4 or IPv6 address")
        try:
            self.targets = resolve(host, port, self.kind, socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise ConfigError(f"invalid collector address host={host!r}", settings.where("host"),
                              "set host= to an IPv4 or IPv6 address (no name)") from None
        largest = MAX_MESSAGE if proto == "tcp" else MAX_DATAGRAM
        self.mtu = int(settings["mtu"])
        if not MIN_MTU <= self.mtu <= largest:
            raise ConfigError(f"mtu={self.mtu} is out of range", settings.where("mtu"),
                              f"set mtu= from {MIN_MTU} to {largest} for {proto}")
        self.send_template = str(settings["send_template"]).lower()
        if self.send_template not in SEND_TEMPLATE:
            raise ConfigError(f"unknown send_template={settings['send_template']!r}",
                              settings.where("send_template"),
                              f"use one of: {', '.join(SEND_TEMPLATE)}")
        self.template_refresh = int(settings["template_refresh"])
        if self.template_refresh < 0:
            raise ConfigError(f"template_refresh={self.template_refresh} is negative",
                              settings.where("template_refresh"),
                              "give seconds between template retransmissions, or 0")

    # -- running ------------------------------------------------------------------

    def start(self) -> None:
        self._message: Message | None = None
        self._sequence = 0  # data records in the messages made so far, modulo 2**32
        self._next_refresh = float("inf")
        if self.send_template == "once" and self.proto == "udp" and self.template_refresh:
            self._next_refresh = self.clock() + self.template_refresh
        self._report = LogLimiter(self.log, f"IPFIX {self.id}")
        loop = self.context.loop
        self.sender = LineSender(
            f"{self.id}:IPFIX", self.kind, self.targets, loop, self.log,
            capacity=max(16, BUFFER_BYTES // self.mtu), unit="messages",
            greeting=self.template_message if self.send_template == "once" else None,
        )
        self.log.info("%s: exporting flows to %s over %s (MTU %d)", self, self.sender.peer,
                      self.proto, self.mtu)
        self._timer = loop.call_every(FLUSH_INTERVAL, self.flush)
        self.sender.start()

    def template_message(self) -> bytes:
        """A message with the templates only, numbered as the next data to go out."""
        sender = self.sender
        assert sender is not None
        sequence = self._sequence
        if sender.backlog:
            (sequence,) = struct.unpack_from("!I", sender.backlog[0], SEQUENCE_OFFSET)
        return HEADER.pack(IPFIX_VERSION, HEADER.size + len(TEMPLATE_SET), int(time.time()),
                           sequence, self.domain) + TEMPLATE_SET

    def _new_message(self) -> Message:
        templates = b""
        if self.send_template == "always":
            templates = TEMPLATE_SET
        elif self.clock() >= self._next_refresh:
            templates = TEMPLATE_SET
            self._next_refresh = self.clock() + self.template_refresh
        self._message = Message(self.mtu, templates)
        return self._message

    def interp(self, event: Event) -> int | None:
        get = event.get
        try:
            saddr = event["orig.ip.saddr"]
            daddr = event["orig.ip.daddr"]
            template = BY_ADDRESS_LENGTH.get(len(saddr))
            if template is None or len(daddr) != len(saddr):
                raise ValueError(f"{len(saddr)}- and {len(daddr)}-byte addresses")
            proto = get("orig.ip.protocol", 0)
            if proto == IPPROTO_ICMP:
                icmp = get("icmp.type", 0) << 8 | get("icmp.code", 0)
            elif proto == IPPROTO_ICMPV6:
                icmp = get("icmpv6.type", 0) << 8 | get("icmpv6.code", 0)
            else:
                icmp = 0
            start = milliseconds(event, "flow.start")
            end = milliseconds(event, "flow.end")
            # No start (the table never saw the flow begin): its end; no end (a NEW
            # event): its start; neither: now.
            if start is None:
                start = end if end is not None else int(time.time() * 1000)
            record = template.record.pack(
                saddr, daddr, get("orig.l4.sport", 0), get("orig.l4.dport", 0), icmp, proto,
                get("orig.raw.pktlen", 0), get("orig.raw.pktcount", 0),
                get("reply.raw.pktlen", 0), get("reply.raw.pktcount", 0),
                start, start if end is None else end, get("ct.mark", 0),
            )
        except (KeyError, TypeError, ValueError, struct.error) as exc:
            kind = "without address" if isinstance(exc, KeyError) else "with bad values"
            self._report(logging.WARNING, "%s: flow %s skipped: %s", self, kind, exc)
            return ERROR
        message = self._message or self._new_message()
        if not message.add(template.id, record):
            self.flush()
            self._new_message().add(template.id, record)  # fits: mtu >= MIN_MTU
        return None

    def flush(self) -> None:
        """Send the message being filled, if it holds records."""
        message, self._message = self._message, None
        if message is None or self.sender is None:
            return
        data = message.encode(self.domain, self._sequence, int(time.time()))
        self._sequence = (self._sequence + message.records) & 0xFFFFFFFF
        self.sender.send(data)

    def stop(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if self.sender is not None:
            self.flush()
            self.sender.close()  # may still greet a new connection: self.sender is needed
            self.sender = None
