"""PCAPREPLAY: packets of a pcap or pcapng capture file, as if NFLOG had logged them.

Beyond ulogd2: any stack runs without root or kernel rules, to re-process a
capture (with another stack, another output) or to test a configuration.

Events carry NFLOG's keys, filled from what each link type records:

* NFLOG (239: ``tcpdump -i nflog:N``, or the PCAP output with ``linktype=239``):
  everything the kernel's attributes carry (prefix, hook, interface indexes,
  mark, uid/gid, hardware header and address, sequence numbers, timestamp);
* Ethernet (1): the frame header as ``raw.mac`` (``raw.type`` 1) and its source
  address as ``raw.mac.saddr``, as NFLOG gives them for received packets;
* raw IP (101, 228 IPv4, 229 IPv6);
* Linux cooked captures (113, 276; ``tcpdump -i any``): ``raw.type`` and
  ``raw.mac.saddr``; 276 also the interface index (in or out by direction).

IPv4 and IPv6 get families 2 and 10; other ethertypes the bridge family (7)
with the ethertype in ``oob.protocol``, as a bridge NFLOG rule logs them.
``oob.time.*`` is the recorded time (the kernel's, for NFLOG records that have
it), ``oob.mark`` 0 unless recorded. Interface indexes are the capturing host's:
IFINDEX names them after this host's interfaces, or prints the number.

``speed=0`` (the default) replays as fast as the stacks take the packets, in
batches between which the daemon handles signals and timers; ``speed=F``
keeps the recorded gaps divided by F (1: as recorded; 0.5: half speed).
``exit_when_done=1`` (the default) stops the daemon, as SIGTERM does (outputs
flushed), once every replay input has reached the end of its file.

Bad input never stops the daemon: each problem is logged (rate-limited) with
the file and byte offset and counted; packets of unreadable link layers or
link types are skipped; when the rest of a file cannot be trusted (truncated,
impossible lengths) its replay ends after the packets already read.
"""

from __future__ import annotations

import logging
import math
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from nfkit import nflog
from nfkit.logd.daemon import NOTICE
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event
from nfkit.logd.loop import Timer
from nfkit.logd.plugin import Context, DataType, InputPlugin, Option
from nfkit.logd.plugins.nflog import FIELD_KEYS, NFLOG, SEQ_KEY
from nfkit.logd.registry import register
from nfkit.netlink.errors import DecodeError
from nfkit.packet import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    NFPROTO_BRIDGE,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
)
from nfkit.packet.capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NFLOG,
    LINKTYPE_RAW,
    NANOSECONDS,
    CaptureError,
    CaptureReader,
    Record,
    decode_nflog,
    encode_nflog,
    open_capture,
)
from nfkit.ratelimit import LogLimiter

#: Packets per batch: as many as an NFLOG datagram of small packets carries, and
#: few enough that signals and timers are served often.
BATCH = 256
ARPHRD_ETHER = 1
#: What the kernel calls frames with an 802.3 length where the ethertype goes.
ETH_P_802_2 = 0x0004
ETH_MIN_TYPE = 0x0600
ETH_HLEN = 14
PACKET_OUTGOING = 4
FAMILY_OF_ETHERTYPE = {ETH_P_IP: NFPROTO_IPV4, ETH_P_IPV6: NFPROTO_IPV6}
VLAN_TYPES = (ETH_P_8021Q, ETH_P_8021AD)
IP_VERSIONS = {4: (NFPROTO_IPV4, ETH_P_IP), 6: (NFPROTO_IPV6, ETH_P_IPV6)}
_BE16 = struct.Struct("!H")
_SLL = struct.Struct("!HHH8sH")
_SLL2 = struct.Struct("!H2xIHBB8s")

#: LogPacket field -> key: NFLOG's, and sequence numbers whenever recorded
#: (the fields an NFLOG record carries, written by PCAP with linktype=239).
RECORD_FIELD_KEYS = {
    **{f: k for f, k in FIELD_KEYS.items() if f != "ct"},
    "seq": SEQ_KEY,
    "seq_global": "oob.seq.global",
}
#: Fields every event gets, as NFLOG's (BASE, PCAP and checks need them).
ALWAYS = ("payload", "payload_len", "family", "ts_sec", "ts_usec", "mark")

#: ``oob.time.sec`` is 32 bits wide.
TIME_LIMIT_NS = 2**32 * NANOSECONDS

Fields = dict[str, Any]


def valid_time(sec: int | None, usec: int | None) -> bool:
    """A time NFLOG could give: seconds set (non-zero) and 32-bit, microseconds below 10⁶."""
    return sec is not None and 0 < sec < 2**32 and usec is not None and 0 <= usec < 1_000_000


def ethernet_fields(record: Record) -> Fields | None:
    data = record.data
    if len(data) < ETH_HLEN:
        return None
    (ethertype,) = _BE16.unpack_from(data, 12)
    start = ETH_HLEN
    while ethertype in VLAN_TYPES and len(data) >= start + 4:
        (ethertype,) = _BE16.unpack_from(data, start + 2)
        start += 4
    protocol = ethertype if ethertype >= ETH_MIN_TYPE else ETH_P_802_2
    return {
        "family": FAMILY_OF_ETHERTYPE.get(protocol, NFPROTO_BRIDGE),
        "hw_protocol": protocol,
        "hwtype": ARPHRD_ETHER,
        "hwlen": start,
        "hwheader": data[:start],
        "hwaddr": data[6:12],
        "payload": data[start:],
    }


def ip_fields(record: Record) -> Fields | None:
    data = record.data
    found = IP_VERSIONS.get(data[0] >> 4) if data else None
    if found is None:
        return None
    family, protocol = found
    return {"family": family, "hw_protocol": protocol, "payload": data}


def cooked_fields(record: Record) -> Fields | None:
    """Linux cooked capture v1 (113): direction, ARPHRD type, source address, protocol."""
    data = record.data
    if len(data) < _SLL.size:
        return None
    _direction, hwtype, addrlen, address, protocol = _SLL.unpack_from(data)
    return _cooked(protocol, hwtype, address[: min(addrlen, 8)], data[_SLL.size :])


def cooked2_fields(record: Record) -> Fields | None:
    """Linux cooked capture v2 (276): v1's fields and the interface index."""
    data = record.data
    if len(data) < _SLL2.size:
        return None
    protocol, ifindex, hwtype, direction, addrlen, address = _SLL2.unpack_from(data)
    fields = _cooked(protocol, hwtype, address[: min(addrlen, 8)], data[_SLL2.size :])
    if ifindex:
        fields["outdev" if direction == PACKET_OUTGOING else "indev"] = ifindex
    return fields


def _cooked(protocol: int, hwtype: int, address: bytes, payload: bytes) -> Fields:
    fields = {
        "family": FAMILY_OF_ETHERTYPE.get(protocol, NFPROTO_BRIDGE),
        "hw_protocol": protocol,
        "hwtype": hwtype,
        "payload": payload,
    }
    if address:
        fields["hwaddr"] = address
    return fields


def nflog_fields(record: Record) -> Fields | None:
    """Raises DecodeError: no NFLOG header, or an unknown version."""
    return nflog.packet_fields(decode_nflog(record.data, record.byteorder))


LINK_LAYERS: dict[int, Callable[[Record], Fields | None]] = {
    LINKTYPE_ETHERNET: ethernet_fields,
    LINKTYPE_RAW: ip_fields,
    LINKTYPE_IPV4: ip_fields,
    LINKTYPE_IPV6: ip_fields,
    LINKTYPE_LINUX_SLL: cooked_fields,
    LINKTYPE_LINUX_SLL2: cooked2_fields,
    LINKTYPE_NFLOG: nflog_fields,
}


class Pacer:
    """When records are due: their recorded gaps divided by ``speed``, from the first one."""

    def __init__(self, speed: float, clock: Callable[[], float]) -> None:
        self.speed = speed
        self.clock = clock
        self._start: tuple[int, float] | None = None

    def wait(self, time_ns: int | None) -> float:
        """Seconds until the record stamped ``time_ns`` is due; 0 or less: now."""
        if time_ns is None or not 0 <= time_ns < TIME_LIMIT_NS:
            return 0.0
        now = self.clock()
        if self._start is None:
            self._start = (time_ns, now)
            return 0.0
        first, started = self._start
        return started + (time_ns - first) / (NANOSECONDS * self.speed) - now


class Progress:
    """A replay's counters, summed up in the daemon's statistics lines."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received = 0
        self.undecodable = 0
        self.unsupported = 0
        self.problems = 0
        self.finished = False
        self._reported: tuple[int, ...] | None = None

    def statistics(self) -> dict[str, int]:
        return {
            "received": self.received,
            "undecodable": self.undecodable,
            "unsupported_link_type": self.unsupported,
            "file_problems": self.problems,
        }

    def summary(self, force: bool = False) -> str | None:
        """One line when something changed (or ``force``); a finished replay's only once."""
        state = (*self.statistics().values(), self.finished)
        if state == self._reported and (self.finished or not force):
            return None
        self._reported = state
        return (
            f"{self.name}: {self.received} packets replayed"
            f"{' (end of file)' if self.finished else ''}, {self.undecodable} undecodable, "
            f"{self.unsupported} of unsupported link types, {self.problems} file problems"
        )


class Replays:
    """The daemon's replay inputs: when none is left running, the daemon exits if one asked."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.running: set[str] = set()
        self.exit = False

    def finished(self, replay: PCAPREPLAY) -> None:
        self.running.discard(replay.id)
        self.exit |= bool(replay.settings["exit_when_done"])
        if self.exit and not self.running and self.context.loop is not None:
            self.context.log.log(NOTICE, "every capture file replayed: exiting")
            self.context.loop.stop()


def parse_speed(text: str, where: str) -> float:
    try:
        speed = float(text)
    except ValueError:
        speed = -1.0
    if not (math.isfinite(speed) and speed >= 0):
        raise ConfigError(
            f"speed {text!r} is not a speed factor",
            where,
            "use 0 (as fast as possible), 1 (as recorded) or another factor such as 0.5 or 10",
        )
    return speed


@register
class PCAPREPLAY(InputPlugin):
    name = "PCAPREPLAY"
    summary = "packets of a pcap/pcapng capture file, as NFLOG would give them (no root needed)"
    output_type = DataType.RAW
    needs_net_admin = False
    options = (
        Option("file", str, "", mandatory=True, help="the pcap or pcapng file"),
        Option("speed", str, "0", help="0: as fast as possible; F: recorded gaps divided by F"),
        Option("exit_when_done", int, 1, help="stop the daemon when every replay is done"),
        Option("numeric_label", int, 0, help="raw.label of every packet, as NFLOG's"),
    )
    output_keys = tuple(k for k in NFLOG.output_keys if k.name != "ct")

    #: Monotonic seconds for pacing (a test may put a fake clock here).
    clock: Callable[[], float] = staticmethod(time.monotonic)

    reader: CaptureReader | None = None
    _timer: Timer | None = None
    _replays: Replays | None = None

    def configure(self, upstream: Sequence[Any]) -> None:
        if not self.settings["file"]:
            raise ConfigError(
                "no capture file given", self.settings.where("file"), 'add file="/path/x.pcap"'
            )
        self.speed = parse_speed(self.settings["speed"], self.settings.where("speed"))

    def start(self) -> None:
        path = self.settings["file"]
        self.progress = Progress(f"{self} {path}")
        self._problems = LogLimiter(self.log, f"{self}")
        try:
            self.reader = open_capture(path, self._file_problem)
        except OSError as exc:
            raise StartError(
                f"cannot open the capture file {path}: {exc.strerror}",
                self.settings.where("file"),
                "give the path of a readable pcap or pcapng file",
            ) from None
        except CaptureError as exc:
            raise StartError(
                str(exc), self.settings.where("file"), "give the path of a pcap or pcapng file"
            ) from None
        self._records: Iterator[Record] = self.reader.records()
        self._pending: Record | None = None
        self._pacer = Pacer(self.speed, self.clock) if self.speed else None
        self._skipped_linktypes: set[int] = set()
        self._names, self._constants = self._event_layout()
        self._want_raw = self.wanted is None or "raw" in self.wanted
        self._want_addrlen = self.wanted is None or "raw.mac.addrlen" in self.wanted
        self.context.shared("pcap-replay", self.id, lambda: self.progress)
        self._replays = self.context.shared("pcap-replays", None, lambda: Replays(self.context))
        self._replays.running.add(self.id)

    def _event_layout(self) -> tuple[dict[str, str], Event]:
        """Field -> key of the keys read downstream, and the constant items."""
        wanted = self.wanted
        names = {
            field: key
            for field, key in RECORD_FIELD_KEYS.items()
            if wanted is None or key in wanted or field in ALWAYS
        }
        constants: Event = {}
        if wanted is None or "raw.pktcount" in wanted:
            constants["raw.pktcount"] = 1
        if wanted is None or "raw.label" in wanted:
            constants["raw.label"] = self.settings["numeric_label"]
        return names, constants

    def activate(self) -> None:
        self._timer = self.context.loop.call_later(0, self._step)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self._replays is not None:
            self._replays.running.discard(self.id)
            self.context.release("pcap-replay", self.id)

    # -- replaying ---------------------------------------------------------------

    def _step(self) -> None:
        """Deliver what is due (up to a batch); schedule the next step, or finish."""
        self._timer = None
        events: list[Event] = []
        try:
            wait, more = self._collect(events)
        except OSError as exc:
            assert self.reader is not None
            self.log.error(
                "%s: cannot read %s at offset %d: %s",
                self, self.reader.name, self.reader.offset, exc.strerror or exc,
            )  # fmt: skip
            wait, more = 0.0, False
        if events:
            self.progress.received += len(events)
            self.emit_batch(events)
        if more:
            self._timer = self.context.loop.call_later(max(wait, 0.0), self._step)
        else:
            self._finish()

    def _collect(self, events: list[Event]) -> tuple[float, bool]:
        """Append the events due (at most a batch).

        Returns the seconds until the next record is due and whether any is left.
        """
        pacer = self._pacer
        for _ in range(BATCH):
            record = self._pending or next(self._records, None)
            if record is None:
                return 0.0, False
            if pacer is not None:
                wait = pacer.wait(record.time_ns)
                if wait > 0:
                    self._pending = record
                    return wait, True
            self._pending = None
            event = self._event(record)
            if event is not None:
                events.append(event)
        return 0.0, True

    def _event(self, record: Record) -> Event | None:
        """The NFLOG-like event of ``record``; None (counted, logged) if it has none."""
        link_layer = LINK_LAYERS.get(record.linktype)
        if link_layer is None:
            self.progress.unsupported += 1
            if record.linktype not in self._skipped_linktypes:
                self._skipped_linktypes.add(record.linktype)
                readable = ", ".join(map(str, sorted(LINK_LAYERS)))
                self._warn(
                    record.offset,
                    f"link type {record.linktype} (interface {record.interface}) is not one "
                    f"PCAPREPLAY reads ({readable}): its packets are skipped",
                )
            return None
        try:
            fields = link_layer(record)
        except DecodeError as exc:
            fields, why = None, str(exc)
        else:
            why = "too short for its link layer, or not IP"
        if fields is None:
            self.progress.undecodable += 1
            self._warn(record.offset, f"packet skipped: {why}")
            return None
        payload = fields.get("payload")
        if payload is not None:
            fields["payload_len"] = len(payload)
        if not valid_time(fields.get("ts_sec"), fields.get("ts_usec")):
            # None, or zero (NFLOG's "no timestamp"), or garbage: the record's, else now.
            time_ns = record.time_ns
            if time_ns is None or not 0 <= time_ns < TIME_LIMIT_NS:
                time_ns = time.time_ns()
            fields["ts_sec"], fields["ts_usec"] = divmod(time_ns // 1000, 1_000_000)
        fields.setdefault("mark", 0)
        names = self._names
        event = {names[field]: value for field, value in fields.items() if field in names}
        event.update(self._constants)
        if self._want_addrlen and "hwaddr" in fields:
            event["raw.mac.addrlen"] = len(fields["hwaddr"])
        if self._want_raw:
            # XML's packet object: what an NFLOG socket would have parsed.
            event["raw"] = decode_nflog(encode_nflog(fields), sys.byteorder)
        return event

    def _file_problem(self, offset: int, what: str) -> None:
        """The reader's report of a problem in the file's structure."""
        self.progress.problems += 1
        self._warn(offset, what)

    def _warn(self, offset: int, what: str) -> None:
        self._problems(
            logging.WARNING, "%s: %s at offset %d: %s", self, self.settings["file"], offset, what
        )

    def _finish(self) -> None:
        self.progress.finished = True
        self._problems.flush()
        line = self.progress.summary(force=True)
        if line:
            skipped = any(v for k, v in self.progress.statistics().items() if k != "received")
            self.log.log(NOTICE if skipped else logging.INFO, "%s", line)
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        assert self._replays is not None
        self._replays.finished(self)
