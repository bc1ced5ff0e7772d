"""The IPFIX output: messages checked by a small decoder here, by tshark and by nfdump.

Unit tests feed NFCT-shaped events (the shared key contract) to the plugin
and read what a local collector socket receives. The ``lab`` tests run the
exporter inside a lab namespace towards loopback collectors: tshark decodes
a live capture of the export (UDP and TCP, IPv4 and IPv6 flows, over IPv4
and IPv6 transport), and nfdump's ``nfcapd`` (UDP only: nfcapd has no TCP
listener) stores the flows that ``nfdump -r`` reads back.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nfkit.cli.logd import describe
from nfkit.lab import Lab, Node
from nfkit.logd.errors import ConfigError
from nfkit.logd.keys import Event
from nfkit.logd.loop import EventLoop
from nfkit.logd.plugin import ERROR, Context, Settings
from nfkit.logd.plugins import ipfix
from nfkit.logd.plugins.ipfix import IPFIX
from reference import DaemonRun
from test_logd_nfct import delete_flows, track
from test_outputs import Listener, run_until

NOW = 1_700_000_000
V4_A, V4_B = socket.inet_aton("192.0.2.10"), socket.inet_aton("198.51.100.20")
V6_A = socket.inet_pton(socket.AF_INET6, "2001:db8::10")
V6_B = socket.inet_pton(socket.AF_INET6, "2001:db8:1::20")


def flow(saddr: bytes = V4_A, daddr: bytes = V4_B, proto: int = 6, sport: int | None = 40000,
         dport: int | None = 443) -> Event:
    """A DESTROY event as NFCT with its flow hash produces it."""
    event: Event = {
        "orig.ip.saddr": saddr, "orig.ip.daddr": daddr, "orig.ip.protocol": proto,
        "reply.ip.saddr": daddr, "reply.ip.daddr": saddr, "reply.ip.protocol": proto,
        "orig.raw.pktlen": 1200, "orig.raw.pktcount": 12,
        "reply.raw.pktlen": 2**33 + 5, "reply.raw.pktcount": 2**32 + 1,
        "flow.start.sec": NOW, "flow.start.usec": 123456,
        "flow.end.sec": NOW + 5, "flow.end.usec": 999999,
        "ct.mark": 0x2A, "ct.id": 77, "ct.event": 4, "oob.family": 2 if len(saddr) == 4 else 10,
        "oob.protocol": 0,
    }
    if sport is not None:
        event |= {"orig.l4.sport": sport, "orig.l4.dport": dport,
                  "reply.l4.sport": dport, "reply.l4.dport": sport}
    return event


def icmp4_flow() -> Event:
    return flow(proto=1, sport=None) | {"icmp.type": 8, "icmp.code": 0}


def icmp6_flow() -> Event:
    return flow(V6_A, V6_B, proto=58, sport=None) | {"icmpv6.type": 128, "icmpv6.code": 0}


FLOWS = [flow(), flow(proto=17, sport=5353, dport=53), icmp4_flow(),
         flow(V6_A, V6_B, sport=50000, dport=80), icmp6_flow()]

# -- an independent decoder (RFC 7011 layout, IANA element numbers) ---------------------

ELEMENT_NAMES = {
    (8, 0): "sourceIPv4Address", (12, 0): "destinationIPv4Address",
    (27, 0): "sourceIPv6Address", (28, 0): "destinationIPv6Address",
    (7, 0): "sourceTransportPort", (11, 0): "destinationTransportPort",
    (32, 0): "icmpTypeCodeIPv4", (139, 0): "icmpTypeCodeIPv6", (4, 0): "protocolIdentifier",
    (1, 0): "octetDeltaCount", (2, 0): "packetDeltaCount",
    (1, 29305): "reverseOctetDeltaCount", (2, 29305): "reversePacketDeltaCount",
    (152, 0): "flowStartMilliseconds", (153, 0): "flowEndMilliseconds",
    (137, 0): "commonPropertiesId",
}
ADDRESSES = {"sourceIPv4Address", "destinationIPv4Address", "sourceIPv6Address",
             "destinationIPv6Address"}


@dataclass
class Decoded:
    """One IPFIX message."""

    length: int
    export_time: int
    sequence: int
    domain: int
    templates: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)


def split_stream(data: bytes) -> list[bytes]:
    """Messages of a TCP stream, each by its header's length."""
    messages = []
    while data:
        (length,) = struct.unpack_from("!H", data, 2)
        assert length >= 16
        messages.append(data[:length])
        data = data[length:]
    return messages


def decode(messages: list[bytes]) -> list[Decoded]:
    """Decode messages in order, templates carried over from earlier messages."""
    templates: dict[int, list[tuple[str, int]]] = {}
    decoded = []
    for data in messages:
        version, length, export_time, sequence, domain = struct.unpack_from("!HHIII", data)
        assert (version, length) == (10, len(data))
        message = Decoded(length, export_time, sequence, domain)
        offset = 16
        while offset < length:
            set_id, set_length = struct.unpack_from("!HH", data, offset)
            body, offset = data[offset + 4:offset + set_length], offset + set_length
            if set_id == 2:
                while body:
                    template_id, count = struct.unpack_from("!HH", body)
                    body, fields = body[4:], []
                    for _ in range(count):
                        element, size = struct.unpack_from("!HH", body)
                        pen = 0
                        if element & 0x8000:
                            (pen,) = struct.unpack_from("!I", body, 4)
                            body = body[4:]
                        fields.append((ELEMENT_NAMES[element & 0x7FFF, pen], size))
                        body = body[4:]
                    message.templates[template_id] = templates[template_id] = fields
                continue
            fields = templates[set_id]
            size = sum(s for _, s in fields)
            assert len(body) % size == 0, "no padding expected"
            for start in range(0, len(body), size):
                record: dict[str, Any] = {"template": set_id}
                position = start
                for name, width in fields:
                    value = body[position:position + width]
                    record[name] = value if name in ADDRESSES else int.from_bytes(value, "big")
                    position += width
                message.records.append(record)
        assert offset == length
        decoded.append(message)
    return decoded


def expected_record(event: Event) -> dict[str, Any]:
    """What the exporter must say about ``event`` (with both start and end set)."""
    v6 = len(event["orig.ip.saddr"]) == 16
    proto = event["orig.ip.protocol"]
    icmp = {1: "icmp", 58: "icmpv6"}.get(proto)
    family = "IPv6" if v6 else "IPv4"
    return {
        "template": 257 if v6 else 256,
        f"source{family}Address": event["orig.ip.saddr"],
        f"destination{family}Address": event["orig.ip.daddr"],
        "sourceTransportPort": event.get("orig.l4.sport", 0),
        "destinationTransportPort": event.get("orig.l4.dport", 0),
        f"icmpTypeCode{family}":
            event[f"{icmp}.type"] << 8 | event[f"{icmp}.code"] if icmp else 0,
        "protocolIdentifier": proto,
        "octetDeltaCount": event["orig.raw.pktlen"],
        "packetDeltaCount": event["orig.raw.pktcount"],
        "reverseOctetDeltaCount": event["reply.raw.pktlen"],
        "reversePacketDeltaCount": event["reply.raw.pktcount"],
        "flowStartMilliseconds": event["flow.start.sec"] * 1000 + event["flow.start.usec"] // 1000,
        "flowEndMilliseconds": event["flow.end.sec"] * 1000 + event["flow.end.usec"] // 1000,
        "commonPropertiesId": event["ct.mark"],
    }


# -- helpers -------------------------------------------------------------------------------


def exporter(loop: EventLoop | None, **values: Any) -> IPFIX:
    """A configured IPFIX instance (not started)."""
    settings = {opt.name: opt.default for opt in IPFIX.options} | {"oid": 7,
                                                                  "host": "127.0.0.1"} | values
    plugin = IPFIX("ipfix1", Settings("ipfix1", settings, {}),
                   Context(loop, logging.getLogger("nfkit.logd.test")))
    plugin.configure([])
    return plugin


def received(listener: Listener, proto: str) -> list[bytes]:
    return listener.datagrams if proto == "udp" else split_stream(listener.data)


def record_count(listener: Listener, proto: str) -> int:
    return sum(len(m.records) for m in decode(received(listener, proto)))


def export(loop: EventLoop, events: list[Event], proto: str = "tcp",
           **values: Any) -> tuple[list[Decoded], list[bytes]]:
    """Run ``events`` through an exporter to a local collector; its messages, decoded and raw."""
    listener = Listener(loop, proto, Path())
    plugin = exporter(loop, port=listener.port, proto=proto, **values)
    plugin.start()
    for event in events:
        assert plugin.interp(event) is None
    plugin.stop()
    run_until(loop, lambda: record_count(listener, proto) >= len(events))
    listener.close()
    raw = received(listener, proto)
    return decode(raw), raw


def data_records(messages: list[Decoded]) -> list[dict[str, Any]]:
    return [record for message in messages for record in message.records]


def assert_sequence_numbers(messages: list[Decoded], first: int = 0) -> None:
    """RFC 7011 3.1: each message carries the count of data records sent before it."""
    count = first
    for message in messages:
        assert message.sequence == count
        count += len(message.records)


# -- records, templates, messages ----------------------------------------------------------


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_flows_are_exported_with_their_templates(loop: EventLoop, proto: str) -> None:
    messages, _ = export(loop, FLOWS, proto)
    assert data_records(messages) == [
        expected_record(event) for event in sorted(FLOWS, key=lambda e: len(e["orig.ip.saddr"]))
    ]
    first = messages[0]
    assert (first.domain, first.records) == (7, [])  # the templates come first, alone
    common = [("sourceTransportPort", 2), ("destinationTransportPort", 2)]
    tail = [("protocolIdentifier", 1), ("octetDeltaCount", 8), ("packetDeltaCount", 8),
            ("reverseOctetDeltaCount", 8), ("reversePacketDeltaCount", 8),
            ("flowStartMilliseconds", 8), ("flowEndMilliseconds", 8), ("commonPropertiesId", 4)]
    assert first.templates == {
        256: [("sourceIPv4Address", 4), ("destinationIPv4Address", 4), *common,
              ("icmpTypeCodeIPv4", 2), *tail],
        257: [("sourceIPv6Address", 16), ("destinationIPv6Address", 16), *common,
              ("icmpTypeCodeIPv6", 2), *tail],
    }
    assert all(not m.templates for m in messages[1:])  # send_template=once
    assert_sequence_numbers(messages)
    assert all(abs(m.export_time - time.time()) < 3600 for m in messages)


def test_messages_never_exceed_the_mtu_and_count_records_before_them(loop: EventLoop) -> None:
    events = [flow(sport=1000 + n) if n % 3 else flow(V6_A, V6_B, sport=1000 + n)
              for n in range(200)]
    messages, raw = export(loop, events, "udp", mtu=300)
    assert max(len(data) for data in raw) <= 300
    assert len(messages) > 20
    assert_sequence_numbers(messages)
    sent = data_records(messages)
    assert sorted(r["sourceTransportPort"] for r in sent) == list(range(1000, 1200))
    # A full message is sent before the record that does not fit goes in the next one.
    assert all(m.length + 91 + 4 > 300 for m in messages[1:-1])


def test_a_partial_message_goes_out_every_second(loop: EventLoop) -> None:
    listener = Listener(loop, "udp", Path())
    plugin = exporter(loop, port=listener.port, proto="udp")
    plugin.start()
    plugin.interp(flow(sport=1))
    run_until(loop, lambda: record_count(listener, "udp") == 1)
    # The timer keeps firing (ulogd 2.0.8's fired once).
    plugin.interp(flow(sport=2))
    run_until(loop, lambda: record_count(listener, "udp") == 2)
    assert [r["sourceTransportPort"] for r in data_records(decode(listener.datagrams))] == [1, 2]
    plugin.stop()
    listener.close()


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_send_template_always_and_never(loop: EventLoop, proto: str) -> None:
    always, _ = export(loop, FLOWS * 10, proto, send_template="always")
    assert len(always) > 2 and all(set(m.templates) == {256, 257} for m in always)
    assert all(m.records for m in always)
    assert_sequence_numbers(always)
    listener = Listener(loop, proto, Path())
    plugin = exporter(loop, port=listener.port, proto=proto, send_template="never")
    plugin.start()
    plugin.interp(flow())
    plugin.stop()
    run_until(loop, lambda: bool(listener.data))
    listener.close()
    (data,) = received(listener, proto)
    assert struct.unpack_from("!HH", data, 16) == (256, 4 + 67)  # a data set, no template


def test_udp_templates_are_refreshed(loop: EventLoop) -> None:
    listener = Listener(loop, "udp", Path())
    plugin = exporter(loop, port=listener.port, proto="udp", template_refresh=60)
    now = 1000.0
    plugin.clock = lambda: now
    plugin.start()
    for step, sport in ((59, 1), (1, 2), (59, 3), (1, 4)):
        now += step
        plugin.interp(flow(sport=sport))
        plugin.flush()
    plugin.stop()
    run_until(loop, lambda: record_count(listener, "udp") == 4)
    listener.close()
    greeting, *data = decode(listener.datagrams)
    assert set(greeting.templates) == {256, 257} and not greeting.records
    assert [(bool(m.templates), [r["sourceTransportPort"] for r in m.records])
            for m in data] == [(False, [1]), (True, [2]), (False, [3]), (True, [4])]


def test_flow_times_without_start_or_end(loop: EventLoop) -> None:
    no_start = flow()
    del no_start["flow.start.sec"], no_start["flow.start.usec"]
    no_end = flow(sport=2)
    del no_end["flow.end.sec"], no_end["flow.end.usec"]
    messages, _ = export(loop, [no_start, no_end])
    first, second = data_records(messages)
    end_ms, start_ms = NOW * 1000 + 5999, NOW * 1000 + 123
    assert (first["flowStartMilliseconds"], first["flowEndMilliseconds"]) == (end_ms, end_ms)
    assert (second["flowStartMilliseconds"], second["flowEndMilliseconds"]) == (start_ms,
                                                                                start_ms)


def test_bad_flows_are_skipped_and_counted(loop: EventLoop,
                                           caplog: pytest.LogCaptureFixture) -> None:
    listener = Listener(loop, "tcp", Path())
    plugin = exporter(loop, port=listener.port)
    plugin.start()
    no_address = flow()
    del no_address["orig.ip.saddr"]
    bad = [no_address, flow(V4_A, V6_B), flow(b"\x01\x02\x03"), flow(sport=-1),
           flow() | {"orig.raw.pktlen": 2**64}, flow() | {"ct.mark": "x"}]
    assert [plugin.interp(event) for event in bad] == [ERROR] * len(bad)
    assert plugin.interp(flow()) is None
    plugin.stop()
    run_until(loop, lambda: record_count(listener, "tcp") == 1)
    listener.close()
    assert data_records(decode(split_stream(listener.data))) == [expected_record(flow())]
    assert "flow without address skipped" in caplog.text
    assert "4- and 16-byte addresses" in caplog.text
    assert "similar messages suppressed" not in caplog.text  # 6 > burst: summed up later
    plugin._report.flush()
    assert "IPFIX ipfix1: 1 similar messages suppressed" in caplog.text


# -- the collector comes and goes ------------------------------------------------------------


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def test_tcp_collector_down_then_up_then_restarted(
    loop: EventLoop, fast_retries: None, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    plugin = exporter(loop, port=port)
    plugin.start()  # nobody listens: the start succeeds, messages wait
    for n in range(30):
        plugin.interp(flow(sport=n))
    plugin.flush()
    run_until(loop, lambda: "cannot deliver" in caplog.text, timeout=2)
    assert caplog.text.count("cannot deliver") == 1
    listener = Listener(loop, "tcp", Path(), port)
    run_until(loop, lambda: record_count(listener, "tcp") == 30)
    before = len(listener.data)
    # The collector restarts: the new connection gets the templates again, then the data.
    listener.drop_connections()
    run_until(loop, lambda: plugin.sender is not None and not plugin.sender.connected,
              timeout=2)
    for n in range(30, 40):
        plugin.interp(flow(V6_A, V6_B, sport=n))
    plugin.stop()
    run_until(loop, lambda: record_count(listener, "tcp") == 40)
    listener.close()
    assert listener.accepted == 2
    first, second = decode(split_stream(listener.data[:before])), decode(
        split_stream(listener.data[before:]))
    for session in (first, second):
        assert set(session[0].templates) == {256, 257} and not session[0].records
    assert_sequence_numbers(first)
    assert_sequence_numbers(second, first=30)
    assert [r["sourceTransportPort"] for r in data_records(first + second)] == list(range(40))
    assert "connected to 127.0.0.1" in caplog.text and "buffered messages" in caplog.text


def test_buffer_is_bounded_and_drops_are_counted(
    loop: EventLoop, fast_retries: None, caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    plugin = exporter(loop, port=port)
    plugin.start()
    assert plugin.sender is not None
    plugin.sender.capacity = 3
    for n in range(5):
        plugin.interp(flow(sport=n))
        plugin.flush()  # one message per flow
    assert plugin.sender.dropped == 2
    assert caplog.text.count("is full; dropping new messages") == 1
    listener = Listener(loop, "tcp", Path(), port)
    run_until(loop, lambda: record_count(listener, "tcp") == 3)
    assert "2 messages were dropped" in caplog.text
    plugin.interp(flow(sport=5))
    plugin.stop()
    run_until(loop, lambda: record_count(listener, "tcp") == 4)
    listener.close()
    messages = decode(split_stream(listener.data))
    # The dropped records leave a gap the collector reports as loss.
    assert [m.sequence for m in messages] == [0, 0, 1, 2, 5]
    assert [r["sourceTransportPort"] for r in data_records(messages)] == [0, 1, 2, 5]


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "message", "fix"), [
    ({"oid": 0}, "invalid observation domain id oid=0", "from 1 to 4294967295"),
    ({"host": ""}, "no collector address", "IPv4 or IPv6 address"),
    ({"host": "collector.example"}, "invalid collector address", "(no name)"),
    ({"proto": "sctp"}, "unsupported protocol proto='sctp'", "proto=tcp or proto=udp"),
    ({"port": 0}, "invalid port 0", "4739"),
    ({"mtu": 100}, "mtu=100 is out of range", f"from {ipfix.MIN_MTU} to 65535 for tcp"),
    ({"mtu": 65535, "proto": "udp"}, "out of range", "to 65507 for udp"),
    ({"send_template": "yes"}, "unknown send_template='yes'", "once, always, never"),
    ({"template_refresh": -1}, "template_refresh=-1 is negative", "or 0"),
])
def test_configuration_errors(values: dict[str, Any], message: str, fix: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        exporter(None, **values)
    assert fix in info.value.fix
    assert info.value.where == f"[ipfix1] {next(iter(values))} (default)"


def test_ipv6_collector_address(loop: EventLoop) -> None:
    plugin = exporter(loop, host="::1", proto="UDP")
    assert plugin.targets == [(socket.AF_INET6, ("::1", 4739, 0, 0))]


@pytest.mark.reference
def test_info_is_ulogds_plus_documented_additions() -> None:
    library = "/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_IPFIX.so"
    if not shutil.which("ulogd") or not os.path.exists(library):
        pytest.skip("ulogd2 is not installed")
    expected = subprocess.run(["ulogd", "--info", library], capture_output=True, text=True,
                              check=True).stdout
    expected = expected.replace(
        "Default: once)\n", "Default: once)\n\tVar: template_refresh (Integer, Default: 60)\n"
    ).replace("\tKey: ct.mark (unsigned int 32)\n", "\tKey: ct.mark (unsigned int 32)\n" + "".join(
        f"\tKey: {name} (unsigned int 8, optional)\n"
        for name in ("icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code")))
    assert describe(IPFIX) == expected


# -- real collectors in a lab namespace ------------------------------------------------------

COLLECTOR_PORT = 4739
PROBE = 4740  # where tshark's readiness probes go


def wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def export_in(lab: Lab, ns: Node, events: list[Event], **values: Any) -> None:
    """Run an exporter whose socket lives in ``ns`` until everything is delivered."""
    loop = EventLoop()
    try:
        with lab.entered(ns):  # every socket, reconnections included, in ``ns``
            plugin = exporter(loop, port=COLLECTOR_PORT, **values)
            plugin.start()
            for event in events:
                assert plugin.interp(event) is None
            plugin.flush()
            sender = plugin.sender
            assert sender is not None
            run_until(loop, lambda: sender.connected and not sender.backlog, timeout=10)
            plugin.stop()
    finally:
        loop.close()


class Capture:
    """tshark capturing the collector port on ``lo`` of a lab namespace."""

    def __init__(self, lab: Lab, ns: Node, proto: str, path: Path) -> None:
        self.path = path
        self.proto = proto
        self.proc = lab.popen(
            ns, "tshark", "-i", "lo", "-f", f"{proto} port {COLLECTOR_PORT} or udp port {PROBE}",
            "-w", str(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        # tshark's "Capturing on" comes before the capture really starts: probe until
        # a datagram to another port shows in the file.
        with lab.entered(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            wait_for(lambda: probe.sendto(b"probe", ("127.0.0.1", PROBE)) and self._probed(),
                     "tshark to capture", timeout=30)

    def _probed(self) -> bool:
        out = subprocess.run(["tshark", "-r", str(self.path), "-Y", f"udp.port == {PROBE}"],
                             capture_output=True, text=True, check=False).stdout
        return bool(out.strip())

    def decoded(self, records: int) -> list[dict[str, Any]]:
        """Every IPFIX message captured once ``records`` records are, as tshark's JSON."""
        # The capture file is written as packets come: read it until all are there.
        wait_for(lambda: sum(len(list(tshark_flows(m))) for m in self._read()) >= records,
                 "the capture", timeout=30)
        self.proc.terminate()
        self.proc.wait(timeout=20)
        return self._read()

    def _read(self) -> list[dict[str, Any]]:
        """The messages in the file (duplicate fields as lists)."""
        out = subprocess.run(
            ["tshark", "-r", str(self.path), "-d", f"{self.proto}.port=={COLLECTOR_PORT},cflow",
             "-Y", "cflow", "-T", "json", "--no-duplicate-keys"],
            capture_output=True, text=True, check=False, env={**os.environ, "TZ": "UTC"},
        ).stdout
        messages = []
        for packet in json.loads(out or "[]"):
            cflow = packet["_source"]["layers"]["cflow"]
            # A TCP segment can carry several messages: a list of them.
            messages += cflow if isinstance(cflow, list) else [cflow]
        return messages


def canonical(fields: dict[str, Any]) -> str:
    """A record's fields as one comparable string, whatever their order."""
    return json.dumps(fields, sort_keys=True)


def tshark_flows(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key, value in message.items():
        if key.startswith("Set "):
            for name, item in value.items():
                if name.startswith("Flow "):
                    yield item


def tshark_time(milliseconds: int) -> str:
    moment = datetime.fromtimestamp(milliseconds / 1000, UTC)
    return moment.strftime("%b %d, %Y %H:%M:%S.") + f"{milliseconds % 1000:03d}000000 UTC"


def tshark_expected(event: Event) -> dict[str, Any]:
    """The fields tshark shows for ``event``'s record."""
    record = expected_record(event)
    v6 = len(event["orig.ip.saddr"]) == 16
    suffix = "v6" if v6 else ""
    fields = {
        f"cflow.srcaddr{suffix}": socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET,
                                                   event["orig.ip.saddr"]),
        f"cflow.dstaddr{suffix}": socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET,
                                                   event["orig.ip.daddr"]),
        "cflow.srcport": str(record["sourceTransportPort"]),
        "cflow.dstport": str(record["destinationTransportPort"]),
        "cflow.protocol": str(event["orig.ip.protocol"]),
        "cflow.octets": [str(event["orig.raw.pktlen"]), str(event["reply.raw.pktlen"])],
        "cflow.packets": [str(event["orig.raw.pktcount"]), str(event["reply.raw.pktcount"])],
        "cflow.common_properties_id": str(event["ct.mark"]),
        "start": tshark_time(record["flowStartMilliseconds"]),
        "end": tshark_time(record["flowEndMilliseconds"]),
    }
    if v6:
        fields |= {"cflow.icmp_ipv6_type": str(event.get("icmpv6.type", 0)),
                   "cflow.icmp_ipv6_code": str(event.get("icmpv6.code", 0))}
    else:
        fields["cflow.icmp_type_code_ipv4"] = f"0x{record['icmpTypeCodeIPv4']:04x}"
    return fields


TSHARK_FIELDS = ("cflow.srcaddr", "cflow.dstaddr", "cflow.srcaddrv6", "cflow.dstaddrv6",
                 "cflow.srcport", "cflow.dstport", "cflow.protocol", "cflow.octets",
                 "cflow.packets", "cflow.common_properties_id", "cflow.icmp_type_code_ipv4",
                 "cflow.icmp_ipv6_type", "cflow.icmp_ipv6_code")


def tshark_view(item: dict[str, Any]) -> dict[str, Any]:
    times = item["cflow.timedelta_tree"]
    return {name: item[name] for name in TSHARK_FIELDS if name in item} | {
        "start": times["cflow.abstimestart"], "end": times["cflow.abstimeend"]}


@pytest.mark.lab
@pytest.mark.reference
@pytest.mark.parametrize(("proto", "host"), [("udp", "127.0.0.1"), ("tcp", "127.0.0.1"),
                                             ("udp", "::1"), ("tcp", "::1")])
def test_tshark_decodes_the_export(lab: Lab, tmp_path: Path, proto: str, host: str) -> None:
    if not shutil.which("tshark"):
        pytest.skip("tshark is not installed")
    ns = lab.a
    # Something must take the export (a closed UDP port makes the sends fail).
    collector = lab.popen(ns, "python3", "-c", SINK, proto, host, str(COLLECTOR_PORT),
                          stdout=subprocess.PIPE)
    wait_for(lambda: listening(lab, ns, proto[0]), "the collector")
    capture = Capture(lab, ns, proto, tmp_path / "export.pcapng")
    events = FLOWS * 3  # several messages at mtu 512
    export_in(lab, ns, events, host=host, proto=proto)
    if proto == "tcp":
        assert int(collector.communicate(timeout=20)[0]) > 0
    messages = capture.decoded(len(events))
    assert messages[0]["cflow.sequence"] == "0"
    assert "Set 1 [id=2] (Data Template): 256,257" in messages[0]
    count = 0
    for message in messages:  # every message counts the records sent before it
        assert message["cflow.od_id"] == "7"
        assert int(message["cflow.sequence"]) == count
        count += sum(1 for _ in tshark_flows(message))
    seen = [tshark_view(item) for message in messages for item in tshark_flows(message)]
    # A message groups its records by template: compare without order.
    assert sorted(map(canonical, seen)) == sorted(map(canonical, map(tshark_expected, events)))


SINK = """
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
server = socket.socket(family, kind)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, port))
while kind == socket.SOCK_DGRAM:
    server.recv(65536)
server.listen()
conn, _ = server.accept()
total = 0
while chunk := conn.recv(65536):
    total += len(chunk)
print(total)
"""


def listening(lab: Lab, ns: Node, kind: str) -> bool:
    """Whether a socket of ``kind`` (t or u) is bound to the collector port in ``ns``."""
    out = lab.run(ns, "ss", "-Hln" + kind, f"sport = :{COLLECTOR_PORT}").stdout
    return bool(out.strip())


@pytest.mark.lab
@pytest.mark.reference
def test_nfcapd_stores_the_flows_nfdump_reads_back(lab: Lab, tmp_path: Path) -> None:
    if not shutil.which("nfcapd") or not shutil.which("nfdump"):
        pytest.skip("nfdump is not installed")
    ns = lab.a
    collector = Nfcapd(lab, ns, tmp_path / "flows")
    events = [flow(sport=2000 + n) if n % 2 else flow(V6_A, V6_B, sport=2000 + n)
              for n in range(100)] + [icmp4_flow(), icmp6_flow()]
    export_in(lab, ns, events, proto="udp", mtu=1400)
    assert_nfdump_shows(collector.stored(), events)


class Nfcapd:
    """nfdump's collector on 127.0.0.1 in ``ns`` (UDP only: nfdump 1.7 has no TCP collector)."""

    def __init__(self, lab: Lab, ns: Node, directory: Path) -> None:
        directory.mkdir()
        self.directory = directory
        self.proc = lab.popen(ns, "nfcapd", "-w", str(directory), "-b", "127.0.0.1",
                              "-p", str(COLLECTOR_PORT), "-t", "3600",
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: listening(lab, ns, "u"), "nfcapd")

    def stored(self) -> str:
        """Stop nfcapd (it writes and renames its file on SIGTERM); the file's path."""
        self.proc.terminate()
        self.proc.wait(timeout=20)
        (path,) = glob.glob(str(self.directory / "nfcapd.2*"))
        return path


def assert_nfdump_shows(path: str, events: list[Event]) -> None:
    """``nfdump -r`` reads back each event's addresses, ports, protocol, bytes and packets."""
    dump = subprocess.run(["nfdump", "-r", path, "-o", "json"], capture_output=True,
                          text=True, check=True, env={**os.environ, "TZ": "UTC"}).stdout
    seen = sorted(canonical(nfdump_view(record)) for record in json.loads(dump))
    assert seen == sorted(canonical(nfdump_expected(event)) for event in events)
    stats = subprocess.run(["nfdump", "-r", path, "-I"], capture_output=True, text=True,
                           check=True).stdout
    assert "Sequence failures: 0" in stats
    assert f"Flows: {len(events)}\n" in stats


def nfdump_view(record: dict[str, Any]) -> dict[str, Any]:
    names = ("src4_addr", "dst4_addr", "src6_addr", "dst6_addr", "src_port", "dst_port",
             "icmp_type", "icmp_code", "proto", "in_bytes", "in_packets", "out_bytes",
             "out_packets", "first", "last")
    return {name: record[name] for name in names if name in record}


def nfdump_expected(event: Event) -> dict[str, Any]:
    record = expected_record(event)
    v6 = len(event["orig.ip.saddr"]) == 16
    family, version = (socket.AF_INET6, "6") if v6 else (socket.AF_INET, "4")
    view: dict[str, Any] = {
        f"src{version}_addr": socket.inet_ntop(family, event["orig.ip.saddr"]),
        f"dst{version}_addr": socket.inet_ntop(family, event["orig.ip.daddr"]),
        "proto": event["orig.ip.protocol"],
        "in_bytes": event["orig.raw.pktlen"], "in_packets": event["orig.raw.pktcount"],
        "out_bytes": event["reply.raw.pktlen"], "out_packets": event["reply.raw.pktcount"],
        "first": nfdump_time(record["flowStartMilliseconds"]),
        "last": nfdump_time(record["flowEndMilliseconds"]),
    }
    icmp = {1: "icmp", 58: "icmpv6"}.get(event["orig.ip.protocol"])
    if icmp:
        view |= {"icmp_type": event[f"{icmp}.type"], "icmp_code": event[f"{icmp}.code"]}
    else:
        view |= {"src_port": event["orig.l4.sport"], "dst_port": event["orig.l4.dport"]}
    return view


def nfdump_time(milliseconds: int) -> str:
    moment = datetime.fromtimestamp(milliseconds / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{milliseconds % 1000:03d}"


# -- real flows: NFCT -> IPFIX -> nfcapd, next to a JSON stack ---------------------------------


def json_flow(line: str) -> Event:
    """A JSON line of the NFCT,IP2STR,JSON stack back as the NFCT event it printed."""
    record = json.loads(line)
    event: Event = {
        "orig.ip.saddr": socket.inet_pton(AF[record["oob.family"]], record["src_ip"]),
        "orig.ip.daddr": socket.inet_pton(AF[record["oob.family"]], record["dest_ip"]),
    }
    names = ("orig.ip.protocol", "orig.raw.pktlen", "orig.raw.pktcount", "reply.raw.pktlen",
             "reply.raw.pktcount", "flow.start.sec", "flow.start.usec", "flow.end.sec",
             "flow.end.usec", "icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code", "ct.mark")
    event |= {name: record[name] for name in names if name in record}
    for name, cim in (("orig.l4.sport", "src_port"), ("orig.l4.dport", "dest_port")):
        if name in record or cim in record:
            event[name] = record.get(name, record.get(cim))
    return event


AF = {2: socket.AF_INET, 10: socket.AF_INET6}


@pytest.mark.lab
@pytest.mark.reference
def test_kernel_flows_reach_nfdump(lab: Lab, tmp_path: Path) -> None:
    if not shutil.which("nfcapd") or not shutil.which("conntrack"):
        pytest.skip("nfdump or conntrack is not installed")
    ns = lab.b
    track(lab)  # counters and timestamps on in b
    collector = Nfcapd(lab, ns, tmp_path / "flows")
    config = "\n".join([
        "[global]", f'logfile="{tmp_path / "daemon.log"}"', "loglevel=3",
        "stack=ct1:NFCT,ipfix1:IPFIX", "stack=ct1:NFCT,ip2str1:IP2STR,json1:JSON",
        "[ipfix1]", "oid=3", 'host="127.0.0.1"', 'proto="udp"', f"port={COLLECTOR_PORT}",
        "[json1]", f'file="{tmp_path / "flows.json"}"', "sync=1",
    ]) + "\n"
    run = DaemonRun(lab, ns, "nfkit", tmp_path, config).start()
    a, b = lab.a, lab.b
    assert a.ip4 and a.ip6 and b.ip4 and b.ip6
    try:
        lab.tcp_exchange(a, b.ip4, 8080, data=b"x" * 1000)
        lab.udp(a, b.ip6, 5001, count=3, size=100, recv=True)
        assert lab.ping(a, b.ip4, count=2, interval=0.05)
        assert lab.ping(a, b.ip6, count=1)
        for criteria in (("-p", "tcp", "--dport", "8080"), ("-f", "ipv6", "-p", "udp"),
                         ("-p", "icmp"), ("-f", "ipv6", "-p", "icmpv6")):
            delete_flows(lab, *criteria)  # the DESTROY events end the flows now
        wait_for(lambda: run.count_lines("flows.json") >= 4, "four ended flows")
    finally:
        assert run.stop() == 0  # sends the last message
    events = [json_flow(line) for line in run.output("flows.json").splitlines()]
    assert_nfdump_shows(collector.stored(), events)
    by_proto = {event["orig.ip.protocol"]: event for event in events}
    assert set(by_proto) == {6, 17, 1, 58}
    udp = by_proto[17]
    assert (udp["orig.ip.saddr"], udp["orig.ip.daddr"]) == (
        socket.inet_pton(socket.AF_INET6, a.ip6), socket.inet_pton(socket.AF_INET6, b.ip6))
    assert (udp["orig.l4.dport"], udp["orig.raw.pktcount"], udp["orig.raw.pktlen"]) == (
        5001, 3, 3 * (40 + 8 + 100))
    ping = by_proto[1]
    assert (ping["orig.raw.pktcount"], ping["reply.raw.pktcount"]) == (2, 2)
    assert by_proto[6]["orig.raw.pktlen"] > 1000 and by_proto[6]["reply.raw.pktcount"] > 2
