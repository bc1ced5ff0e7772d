"""NFLOG input: packets logged by the kernel's nfnetlink_log.

Several instances may read the same group, even under different ids: the
kernel allows one listener per group, so the group is bound once per daemon
(:class:`GroupReader`) and every packet is fanned out to each instance.

Sequence numbering is always requested from the kernel so that losses show up
as gaps even when ``seq_local`` is off; the key is then kept under an internal
name that no output prints.
"""

from __future__ import annotations

import functools
import socket
from operator import itemgetter
from typing import Any

from nfkit import nflog
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import Context, DataType, InputPlugin, Option
from nfkit.logd.registry import register
from nfkit.netlink import (
    BufferOverrun,
    NetlinkError,
    NetlinkNotSupported,
    NetlinkPermissionError,
)
from nfkit.netlink.codec import Message
from nfkit.netlink.errors import DecodeError

T = KeyType

# LogPacket field -> ulogd key.
FIELD_KEYS = {
    "payload": "raw.pkt",
    "payload_len": "raw.pktlen",
    "prefix": "oob.prefix",
    "ts_sec": "oob.time.sec",
    "ts_usec": "oob.time.usec",
    "mark": "oob.mark",
    "indev": "oob.ifindex_in",
    "outdev": "oob.ifindex_out",
    "hook": "oob.hook",
    "hwheader": "raw.mac",
    "hwlen": "raw.mac_len",
    "family": "oob.family",
    "hw_protocol": "oob.protocol",
    "uid": "oob.uid",
    "gid": "oob.gid",
    "hwtype": "raw.type",
    "hwaddr": "raw.mac.saddr",
    "ct": "ct",
}
SEQ_KEY = "oob.seq.local"
INTERNAL_SEQ = "nflog.seq"
FAMILIES_FOR_SYSTEM_LOGGING = (socket.AF_INET, socket.AF_INET6, socket.AF_BRIDGE)
READS_PER_WAKEUP = 32
# The kernel's largest NFLOG batch buffer; its default (~3.7 KB) holds ~20 small packets.
MAX_NLBUFSIZ = 131072
MIN_NLBUFSIZ = 4096


class PacketsWithRaw(nflog.PacketParser[Event]):
    """A parser of event dicts that also gives each its packet object as ``raw``.

    Only stacks that read ``raw`` (XML) pay for the second, object-building
    parse of each datagram; the others keep the plain dict parser.
    """

    def __init__(self, names: dict[str, str], fill: dict[str, Any]) -> None:
        super().__init__(names, fill)
        self.packets = nflog.PacketParser[nflog.LogPacket]()

    def parse(self, data: bytes) -> tuple[list[Event], list[Message]]:
        events, others = super().parse(data)
        packets, _ = self.packets.parse(data)
        if len(packets) != len(events):  # cannot happen: the same walk; never pair wrongly
            raise DecodeError(f"{len(packets)} packet objects for {len(events)} events")
        for event, packet in zip(events, packets, strict=True):
            event["raw"] = packet
        return events, others


class GroupReader:
    """The one socket bound to an NFLOG group, shared by every instance that reads it."""

    def __init__(self, group: int, context: Context) -> None:
        self.group = group
        self.context = context
        self.log = context.log
        self.subscribers: list[NFLOG] = []
        self.sock: nflog.NflogSocket | None = None
        self.parser: nflog.PacketParser[Event] | None = None
        self.received = 0
        self.lost_overrun = 0
        self.lost_gaps = 0
        self.undecodable = 0
        self._last_seq: int | None = None
        self._buffer = 0
        self._buffer_max = 0
        self._reported = (0, 0, 0)

    def subscribe(self, instance: NFLOG) -> None:
        self.subscribers.append(instance)

    def start(self) -> None:
        """Bind the group with settings merged from every subscriber."""
        if self.sock is not None:
            return
        first = self.subscribers[0].settings
        self._buffer = max(s.settings["netlink_socket_buffer_size"] for s in self.subscribers)
        self._buffer_max = max(
            s.settings["netlink_socket_buffer_maxsize"] for s in self.subscribers
        )
        flags = nflog.Flag.SEQ
        if any(s.settings["seq_global"] for s in self.subscribers):
            flags |= nflog.Flag.SEQ_GLOBAL
        if any(s.settings["attach_conntrack"] for s in self.subscribers):
            flags |= nflog.Flag.CONNTRACK
        self.parser, self.seq_key = self.parser_for(self.subscribers)
        sock = nflog.NflogSocket(receive_buffer=self._buffer if self._buffer else 0)
        try:
            if self.group == 0 or any(s.settings["bind"] for s in self.subscribers):
                for family in FAMILIES_FOR_SYSTEM_LOGGING:
                    if first["unbind"]:
                        self.log.info(
                            "forcing unbind of existing log handler for protocol %d", family
                        )
                        sock.pf_unbind(family)
                    sock.pf_bind(family)
            self._bind(sock, flags)
        except NetlinkPermissionError as exc:
            sock.close()
            raise StartError(
                f"cannot bind NFLOG group {self.group}: another program owns it ({exc.strerror})",
                fix="stop the other listener (ulogd, tcpdump -i nflog:N, another nfkit) or use "
                "another group; stacks inside one nfkit logd may share a group freely",
            ) from exc
        except NetlinkError as exc:
            sock.close()
            raise StartError(
                f"cannot bind NFLOG group {self.group}: {exc}",
                fix="nfkit logd needs root (CAP_NET_ADMIN) and a kernel with nfnetlink_log",
            ) from exc
        sock.sock.set_blocking(False)
        self.sock = sock
        self.context.loop.add_reader(sock.fileno(), self.on_readable)

    def _bind(self, sock: nflog.NflogSocket, flags: nflog.Flag) -> None:
        """Bind the group; without conntrack attachment if the kernel cannot attach it.

        The kernel refuses the whole bind (EOPNOTSUPP) when it was built without
        NFLOG's conntrack glue; losing ``ct`` is better than losing the stack.
        """
        first = self.subscribers[0].settings
        bind = functools.partial(
            sock.bind,
            self.group,
            nlbufsiz=self._nlbufsiz(),
            timeout=first["netlink_qtimeout"] or None,
            qthreshold=first["netlink_qthreshold"] or None,
        )
        try:
            bind(flags=flags)
        except NetlinkNotSupported:
            if not flags & nflog.Flag.CONNTRACK:
                raise
            self.log.warning(
                "NFLOG group %d: this kernel cannot attach conntrack entries to logged packets "
                "(CONFIG_NETFILTER_NETLINK_GLUE_CT); attach_conntrack=1 is ignored, packets "
                "come without the ct key",
                self.group,
            )
            bind(flags=flags & ~nflog.Flag.CONNTRACK)

    def _nlbufsiz(self) -> int | None:
        """The kernel batch size: ``bufsize`` (ulogd's receive buffer), capped.

        ulogd2 leaves the kernel default, so each datagram carries ~20 small
        packets; batches as large as the receive buffer cut wake-ups and
        system calls per packet several times over.
        """
        size = min(s.settings["bufsize"] for s in self.subscribers)
        return min(size, MAX_NLBUFSIZ) if size >= MIN_NLBUFSIZ else None

    @staticmethod
    def parser_for(subscribers: list[NFLOG]) -> tuple[nflog.PacketParser[Event], str]:
        """A parser producing only the keys some subscriber's stacks read.

        Returns the parser and the key the sequence number goes under.
        """
        wanted: set[str] = set()
        for sub in subscribers:
            if sub.wanted is None:
                wanted = {key.name for key in NFLOG.output_keys}
                break
            wanted |= sub.wanted
        # The payload and family are always kept: BASE, PCAP and checks need them.
        names = {f: k for f, k in FIELD_KEYS.items() if k in wanted}
        names.update(payload="raw.pkt", payload_len="raw.pktlen", family="oob.family")
        seq_public = any(s.settings["seq_local"] for s in subscribers)
        names["seq"] = SEQ_KEY if seq_public else INTERNAL_SEQ
        if "oob.seq.global" in wanted:
            names["seq_global"] = "oob.seq.global"
        if "raw.mac.addrlen" in wanted:
            names["hwaddr"] = "raw.mac.saddr"
        # Items every packet gets are folded into the compiled parsers; a
        # numeric_label that differs between subscribers is added by each.
        labels = {s.settings["numeric_label"] for s in subscribers}
        constants = {"raw.pktcount": 1} if "raw.pktcount" in wanted else {}
        if len(labels) == 1 and "raw.label" in wanted:
            constants["raw.label"] = labels.pop()
        for sub in subscribers:
            sub.extra = (
                {"raw.label": sub.settings["numeric_label"]}
                if "raw.label" in wanted and "raw.label" not in constants
                else {}
            )
        fill = {"mark": 0, "ts_sec": nflog.NOW, "ts_usec": nflog.NOW, nflog.CONSTANTS: constants}
        parser = PacketsWithRaw if "raw" in wanted else nflog.PacketParser
        return parser(names, fill), names["seq"]

    def stop(self) -> None:
        if self.sock is not None:
            self.context.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def on_readable(self) -> None:
        assert self.sock is not None and self.parser is not None
        recv = self.sock.sock.recv
        parse = self.parser.parse
        subscribers = self.subscribers
        for _ in range(READS_PER_WAKEUP):
            try:
                data = recv()
            except BlockingIOError:
                return
            except BufferOverrun:
                self._overrun()
                continue
            try:
                events, _others = parse(data)
            except DecodeError as exc:
                self.undecodable += 1
                self.log.debug("NFLOG group %d: undecodable datagram: %s", self.group, exc)
                continue
            self.received += len(events)
            self._check_sequence(events)
            if len(subscribers) == 1:
                subscribers[0].deliver_batch(events)
            else:
                for sub in subscribers:
                    sub.deliver_batch([dict(e) for e in events])

    def _check_sequence(self, events: list[Event]) -> None:
        key = self.seq_key
        try:
            numbers = list(map(itemgetter(key), events))
        except KeyError:  # not every event has a number
            numbers = [event[key] for event in events if key in event]
        if not numbers:
            return
        first = numbers[0]
        # Consecutive numbers (the usual case) can only skip before the first one.
        steps = [first] if numbers == list(range(first, first + len(numbers))) else numbers
        last = self._last_seq
        for seq in steps:
            if last is not None:
                gap = (seq - last - 1) & 0xFFFFFFFF
                # A jump backwards (a rebind restarts the counter) is no loss.
                if gap < 0x80000000:
                    self.lost_gaps += gap
            last = seq
        self._last_seq = numbers[-1]

    def _overrun(self) -> None:
        self.lost_overrun += 1
        assert self.sock is not None
        if self._buffer_max and self._buffer * 2 <= self._buffer_max:
            self._buffer = max(self._buffer, self.sock.sock.receive_buffer // 2) * 2
            self.sock.sock.set_receive_buffer(self._buffer)
            self.log.warning(
                "NFLOG group %d: losing events, buffer raised to %d", self.group, self._buffer
            )
        elif self.lost_overrun == 1:
            self.log.warning(
                "NFLOG group %d: losing events (socket buffer overrun); raise "
                "netlink_socket_buffer_size / netlink_socket_buffer_maxsize",
                self.group,
            )

    def statistics(self) -> dict[str, int]:
        return {
            "received": self.received,
            "lost_seq_gaps": self.lost_gaps,
            "overruns": self.lost_overrun,
            "undecodable": self.undecodable,
        }

    def summary(self, force: bool = False) -> str | None:
        """One line for the daemon's log, when something changed (or ``force``)."""
        state = (self.received, self.lost_gaps, self.lost_overrun)
        if not force and state == self._reported:
            return None
        self._reported = state
        return (
            f"NFLOG group {self.group}: {self.received} packets received, "
            f"{self.lost_gaps} lost (sequence gaps), {self.lost_overrun} buffer overruns, "
            f"{self.undecodable} undecodable datagrams"
        )


@register
class NFLOG(InputPlugin):
    name = "NFLOG"
    summary = "packets from nfnetlink_log (iptables -j NFLOG, nft log group N)"
    output_type = DataType.RAW
    options = (
        Option("bufsize", int, 150000, help="accepted for compatibility; datagrams up to 128 KiB"),
        Option("group", int, 0),
        Option("unbind", int, 1),
        Option("bind", int, 0),
        Option("seq_local", int, 0),
        Option("seq_global", int, 0),
        Option("numeric_label", int, 0),
        Option("netlink_socket_buffer_size", int, 0),
        Option("netlink_socket_buffer_maxsize", int, 0),
        Option("netlink_qthreshold", int, 0),
        Option("netlink_qtimeout", int, 0),
        Option("attach_conntrack", int, 0),
    )
    output_keys = keys(
        ("raw.mac", T.RAW),
        ("raw.pkt", T.RAW),
        ("raw.pktlen", T.UINT32),
        ("raw.pktcount", T.UINT32),
        ("oob.prefix", T.STRING),
        ("oob.time.sec", T.UINT32),
        ("oob.time.usec", T.UINT32),
        ("oob.mark", T.UINT32),
        ("oob.ifindex_in", T.UINT32),
        ("oob.ifindex_out", T.UINT32),
        ("oob.hook", T.UINT8),
        ("raw.mac_len", T.UINT16),
        ("oob.seq.local", T.UINT32),
        ("oob.seq.global", T.UINT32),
        ("oob.family", T.UINT8),
        ("oob.protocol", T.UINT16),
        ("oob.uid", T.UINT32),
        ("oob.gid", T.UINT32),
        ("raw.label", T.UINT8),
        ("raw.type", T.UINT16),
        ("raw.mac.saddr", T.RAW),
        ("raw.mac.addrlen", T.UINT16),
        ("raw", T.RAW),
        ("ct", T.RAW),
    )

    def configure(self, upstream: Any) -> None:
        group = self.settings["group"]
        if not 0 <= group <= 0xFFFF:
            raise ConfigError(
                f"NFLOG group {group} is out of range",
                self.settings.where("group"),
                "use a group between 0 and 65535",
            )

    def start(self) -> None:
        reader: GroupReader = self.context.shared(
            "nflog-group",
            self.settings["group"],
            lambda: GroupReader(self.settings["group"], self.context),
        )
        if self not in reader.subscribers:
            reader.subscribe(self)
        self.reader = reader
        #: Keys the shared parser cannot fold in for this instance (see parser_for).
        self.extra: Event = {}
        self._want_addrlen = self.wanted is None or "raw.mac.addrlen" in self.wanted

    def activate(self) -> None:
        self.reader.start()

    def stop(self) -> None:
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.subscribers.remove(self)
            if not reader.subscribers:
                reader.stop()
                self.context.release("nflog-group", reader.group)
            del self.reader

    def deliver_batch(self, events: list[Event]) -> None:
        extra = self.extra
        if extra or self._want_addrlen:
            for event in events:
                event.update(extra)
                if self._want_addrlen and "raw.mac.saddr" in event:
                    event["raw.mac.addrlen"] = len(event["raw.mac.saddr"])
        self.emit_batch(events)
