"""The JSON, SYSLOG, PCAP and SQLITE3 outputs, driven through their interp().

Events are the key sets a UNIXSOCK/NFLOG input, BASE and IP2STR produce for
the four packets of the reference capture (ulogd2.md Appendix B): IPv4 TCP
SYN, IPv4 UDP, IPv4 ICMP echo request, IPv6 TCP SYN+ACK.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nfkit.cli.logd import describe
from nfkit.logd.config import ConfigFile
from nfkit.logd.engine import Pipeline
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.loop import EventLoop
from nfkit.logd.plugin import ERROR, Context, InputPlugin, Plugin, Settings
from nfkit.logd.plugins import json_output, pcap, sqlite3_output, syslog_output
from nfkit.logd.plugins._wildcard import upstream_keys
from nfkit.logd.registry import plugins
from nfkit.packet.build import build_icmp_echo, build_ipv4, build_ipv6, build_tcp, build_udp

# -- the stack upstream of the outputs (key tables of ulogd2.md Appendix A) --------------

_TYPES = {
    "u8": KeyType.UINT8, "u16": KeyType.UINT16, "u32": KeyType.UINT32, "u64": KeyType.UINT64,
    "bool": KeyType.BOOL, "str": KeyType.STRING, "raw": KeyType.RAW, "ip": KeyType.IPADDR,
}


def declared(spec: str) -> tuple[Any, ...]:
    """Keys from ``name:type[:cim]`` words."""
    rows = []
    for word in spec.split():
        name, kind, *cim = word.split(":")
        rows.append((name, _TYPES[kind], *(f"cim:{c}" for c in cim)))
    return keys(*rows)


class FakeInput(InputPlugin):
    name = "UNIXSOCK"
    output_keys = declared(
        "raw.mac:raw raw.pkt:raw raw.pktlen:u32 raw.pktcount:u32 oob.prefix:str "
        "oob.time.sec:u32 oob.time.usec:u32 oob.mark:u32 oob.in:str oob.out:str oob.hook:u8 "
        "raw.mac_len:u16 oob.seq.local:u32 oob.seq.global:u32 oob.family:u8 oob.protocol:u16 "
        "oob.uid:u32 oob.gid:u32 raw.label:u8 raw.type:u16 raw.mac.saddr:raw "
        "raw.mac.addrlen:u16 nufw.user.name:str nufw.user.id:u32 nufw.os.name:str "
        "nufw.os.rel:str nufw.os.vers:str nufw.app.name:str"
    )


class FakeBase(Plugin):
    name = "BASE"
    output_keys = declared(
        "ip.saddr:ip ip.daddr:ip ip.protocol:u8 ip.tos:u8 ip.ttl:u8 ip.totlen:u16 ip.ihl:u8 "
        "ip.csum:u16 ip.id:u16 ip.fragoff:u16 ip6.payloadlen:u16 ip6.priority:u8 "
        "ip6.flowlabel:u32 ip6.hoplimit:u8 ip6.nexthdr:u8 ip6.fragoff:u16 ip6.fragid:u32 "
        "tcp.sport:u16:src_port tcp.dport:u16:dest_port tcp.seq:u32 tcp.ackseq:u32 "
        "tcp.window:u16 tcp.offset:u8 tcp.reserved:u8 tcp.urg:bool tcp.urgp:u16 tcp.ack:bool "
        "tcp.psh:bool tcp.rst:bool tcp.syn:bool tcp.fin:bool tcp.res1:bool tcp.res2:bool "
        "tcp.csum:u16 udp.sport:u16:src_port udp.dport:u16:dest_port udp.len:u16 udp.csum:u16 "
        "icmp.type:u8 icmp.code:u8 icmp.echoid:u16 icmp.echoseq:u16 icmp.gateway:ip "
        "icmp.fragmtu:u16 icmp.csum:u16 icmpv6.type:u8 icmpv6.code:u8 icmpv6.echoid:u16 "
        "icmpv6.echoseq:u16 icmpv6.csum:u16 ahesp.spi:u32 oob.protocol:u16 arp.hwtype:u16 "
        "arp.protocoltype:u16 arp.operation:u16 arp.shwaddr:raw arp.saddr:ip arp.dhwaddr:raw "
        "arp.daddr:ip sctp.sport:u16:src_port sctp.dport:u16:dest_port sctp.csum:u32"
    )


class FakeIp2str(Plugin):
    name = "IP2STR"
    output_keys = declared(
        "ip.saddr.str:str:src_ip ip.daddr.str:str:dest_ip orig.ip.saddr.str:str:src_ip "
        "orig.ip.daddr.str:str:dest_ip reply.ip.saddr.str:str reply.ip.daddr.str:str "
        "arp.saddr.str:str arp.daddr.str:str"
    )


UPSTREAM = (FakeInput, FakeBase, FakeIp2str)

# -- the four reference packets ------------------------------------------------------------

T0 = 1700000000  # 2023-11-14 22:13:20 UTC
TCP4_PACKET = bytes.fromhex(
    "4510002810e140004006 5e2cc0a8010a0a000001 9c40005000 0003e800000000 5002721000000000"
    .replace(" ", "")
)
OOB = {"raw.pktcount": 1, "oob.time.sec": T0, "oob.in": "eth0", "oob.out": "eth1",
       "oob.protocol": 0}
TCP_FLAGS_SYN = {"tcp.offset": 0, "tcp.reserved": 0, "tcp.urg": 0, "tcp.ack": 0, "tcp.psh": 0,
                 "tcp.rst": 0, "tcp.syn": 1, "tcp.fin": 0, "tcp.res1": 0, "tcp.res2": 0,
                 "tcp.csum": 0}


def ipv4_keys(saddr: str, daddr: str, proto: int, tos: int, totlen: int, csum: int, ident: int,
              fragoff: int) -> Event:
    return {
        "oob.family": 2, "ip.saddr": socket.inet_aton(saddr), "ip.daddr": socket.inet_aton(daddr),
        "ip.protocol": proto, "ip.tos": tos, "ip.ttl": 64, "ip.totlen": totlen, "ip.ihl": 5,
        "ip.csum": csum, "ip.id": ident, "ip.fragoff": fragoff,
    }


def tcp4_event() -> Event:
    return {
        "raw.pkt": TCP4_PACKET, "raw.pktlen": 40, "oob.prefix": "TCP-IN: ", **OOB, "raw.label": 1,
        **ipv4_keys("192.168.1.10", "10.0.0.1", 6, 16, 40, 24108, 4321, 16384),
        "tcp.sport": 40000, "tcp.dport": 80, "tcp.seq": 1000, "tcp.ackseq": 0,
        "tcp.window": 29200, **TCP_FLAGS_SYN,
        "ip.saddr.str": "192.168.1.10", "ip.daddr.str": "10.0.0.1",
    }


def udp4_event() -> Event:
    dns_query_header = bytes.fromhex("123401000000000000000000")  # no question: valid, short
    segment = build_udp(5353, 53, dns_query_header, "192.168.1.11", "8.8.8.8")
    packet = build_ipv4("192.168.1.11", "8.8.8.8", 17, segment, ident=99)
    return {
        "raw.pkt": packet, "raw.pktlen": len(packet), "oob.prefix": "UDP", **OOB,
        "raw.label": 0,
        **ipv4_keys("192.168.1.11", "8.8.8.8", 17, 0, len(packet), 0, 99, 0),
        "udp.sport": 5353, "udp.dport": 53, "udp.len": len(segment), "udp.csum": 0,
        "ip.saddr.str": "192.168.1.11", "ip.daddr.str": "8.8.8.8",
    }


def icmp4_event() -> Event:
    packet = build_ipv4("192.168.1.12", "1.1.1.1", 1, build_icmp_echo(0x1234, 7, b"ping"),
                        ident=77)
    return {
        "raw.pkt": packet, "raw.pktlen": len(packet), "oob.prefix": "ICMP", **OOB,
        "raw.label": 1,
        **ipv4_keys("192.168.1.12", "1.1.1.1", 1, 0, len(packet), 0, 77, 0),
        "icmp.type": 8, "icmp.code": 0, "icmp.echoid": 0x1234, "icmp.echoseq": 7,
        "icmp.csum": 0,
        "ip.saddr.str": "192.168.1.12", "ip.daddr.str": "1.1.1.1",
    }


def tcp6_event() -> Event:
    segment = build_tcp(1234, 443, 5, 6, 0x12, 1000, b"", "2001:db8::1", "2001:db8::2")
    packet = build_ipv6("2001:db8::1", "2001:db8::2", 6, segment, hop_limit=63,
                        flow_label=0x12345)
    return {
        "raw.pkt": packet, "raw.pktlen": 60, "oob.prefix": "V6", **OOB, "oob.family": 10,
        "raw.label": 1,
        "ip.saddr": socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
        "ip.daddr": socket.inet_pton(socket.AF_INET6, "2001:db8::2"),
        "ip.protocol": 6, "ip6.payloadlen": 20, "ip6.priority": 0, "ip6.flowlabel": 74565,
        "ip6.hoplimit": 63, "ip6.nexthdr": 6,
        "tcp.sport": 1234, "tcp.dport": 443, "tcp.seq": 5, "tcp.ackseq": 6, "tcp.window": 1000,
        **TCP_FLAGS_SYN, "tcp.ack": 1,
        "ip.saddr.str": "2001:db8::1", "ip.daddr.str": "2001:db8::2",
    }


EVENTS = {"tcp4": tcp4_event, "udp4": udp4_event, "icmp4": icmp4_event, "tcp6": tcp6_event}

# ulogd2.md B.2, with the UTC offset ulogd2 forgets on a UTC host.
B2_TCP4 = (
    '{"timestamp": "2023-11-14T22:13:20+0000", "dvc": "Netfilter", "raw.pktlen": 40, '
    '"raw.pktcount": 1, "oob.prefix": "TCP-IN: ", "oob.time.sec": 1700000000, "oob.in": "eth0", '
    '"oob.out": "eth1", "oob.family": 2, "oob.protocol": 0, "action": "allowed", '
    '"ip.protocol": 6, "ip.tos": 16, "ip.ttl": 64, "ip.totlen": 40, "ip.ihl": 5, '
    '"ip.csum": 24108, "ip.id": 4321, "ip.fragoff": 16384, "src_port": 40000, "dest_port": 80, '
    '"tcp.seq": 1000, "tcp.ackseq": 0, "tcp.window": 29200, "tcp.offset": 0, '
    '"tcp.reserved": 0, "tcp.urg": 0, "tcp.ack": 0, "tcp.psh": 0, "tcp.rst": 0, "tcp.syn": 1, '
    '"tcp.fin": 0, "tcp.res1": 0, "tcp.res2": 0, "tcp.csum": 0, "src_ip": "192.168.1.10", '
    '"dest_ip": "10.0.0.1"}\n'
)
B2_TCP6 = (
    '{"timestamp": "2023-11-14T22:13:20+0000", "dvc": "Netfilter", "raw.pktlen": 60, '
    '"raw.pktcount": 1, "oob.prefix": "V6", "oob.time.sec": 1700000000, "oob.in": "eth0", '
    '"oob.out": "eth1", "oob.family": 10, "oob.protocol": 0, "action": "allowed", '
    '"ip.protocol": 6, "ip6.payloadlen": 20, "ip6.priority": 0, "ip6.flowlabel": 74565, '
    '"ip6.hoplimit": 63, "ip6.nexthdr": 6, "src_port": 1234, "dest_port": 443, "tcp.seq": 5, '
    '"tcp.ackseq": 6, "tcp.window": 1000, "tcp.offset": 0, "tcp.reserved": 0, "tcp.urg": 0, '
    '"tcp.ack": 1, "tcp.psh": 0, "tcp.rst": 0, "tcp.syn": 1, "tcp.fin": 0, "tcp.res1": 0, '
    '"tcp.res2": 0, "tcp.csum": 0, "src_ip": "2001:db8::1", "dest_ip": "2001:db8::2"}\n'
)
# ulogd2.md §7.3.5: TZ=Europe/Paris, eventv1=1, device="fw-01 main", no boolean_label.
PARIS_EVENTV1_TCP4 = (
    '{"@version": 1, "@timestamp": "2023-11-14T23:13:20+0100", "dvc": "fw-01 main", '
    '"raw.pktlen": 40, "raw.pktcount": 1, "oob.prefix": "TCP-IN: ", "oob.time.sec": 1700000000, '
    '"oob.in": "eth0", "oob.out": "eth1", "oob.family": 2, "oob.protocol": 0, "raw.label": 1, '
    '"ip.protocol": 6, "ip.tos": 16, "ip.ttl": 64, "ip.totlen": 40, "ip.ihl": 5, '
    '"ip.csum": 24108, "ip.id": 4321, "ip.fragoff": 16384, "src_port": 40000, "dest_port": 80, '
    '"tcp.seq": 1000, "tcp.ackseq": 0, "tcp.window": 29200, "tcp.offset": 0, '
    '"tcp.reserved": 0, "tcp.urg": 0, "tcp.ack": 0, "tcp.psh": 0, "tcp.rst": 0, "tcp.syn": 1, '
    '"tcp.fin": 0, "tcp.res1": 0, "tcp.res2": 0, "tcp.csum": 0, "src_ip": "192.168.1.10", '
    '"dest_ip": "10.0.0.1"}\n'
)

# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def timezone() -> Iterator[Callable[[str], None]]:
    """Switch the process's local time zone for the test."""
    saved = os.environ.get("TZ")

    def switch(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield switch
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()


def make(cls: type[Plugin], values: dict[str, Any], loop: EventLoop | None = None,
         upstream: tuple[type[Plugin], ...] = UPSTREAM) -> Any:
    """An instance configured as the last element of UNIXSOCK,BASE,IP2STR,<cls>."""
    settings = {opt.name: opt.default for opt in cls.options} | values
    context = Context(loop, logging.getLogger("nfkit.logd.test"))
    instance = cls("out1", Settings("out1", settings, {}), context)
    context_upstream = [up(f"{up.name.lower()}1", Settings("x", {}, {}), context)
                        for up in upstream]
    instance.configure(context_upstream)
    return instance


def run_until(loop: EventLoop, done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run the loop until ``done()`` or the timeout."""
    deadline = time.monotonic() + timeout

    def check() -> None:
        if done() or time.monotonic() > deadline:
            loop.stop()

    timer = loop.call_every(0.01, check)
    loop.run()
    timer.cancel()


class Listener:
    """A local peer (tcp, udp or unix stream) collecting what it receives, on the loop."""

    def __init__(self, loop: EventLoop, mode: str, path: Path, port: int = 0) -> None:
        self.loop = loop
        self.data = b""
        self.connections: list[socket.socket] = []
        if mode == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(str(path))
        else:
            kind = socket.SOCK_DGRAM if mode == "udp" else socket.SOCK_STREAM
            self.sock = socket.socket(socket.AF_INET, kind)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", port))
        self.datagrams: list[bytes] = []
        self.accepted = 0
        if mode == "udp":
            loop.add_reader(self.sock.fileno(), self._datagram)
        else:
            self.sock.listen()
            loop.add_reader(self.sock.fileno(), self._accept)

    @property
    def port(self) -> int:
        address = self.sock.getsockname()
        return int(address[1]) if isinstance(address, tuple) else 0

    def _datagram(self) -> None:
        datagram = self.sock.recv(65536)
        self.datagrams.append(datagram)
        self.data += datagram

    def _accept(self) -> None:
        conn, _ = self.sock.accept()
        self.accepted += 1
        self.connections.append(conn)
        self.loop.add_reader(conn.fileno(), lambda: self._read(conn))

    def _read(self, conn: socket.socket) -> None:
        chunk = conn.recv(65536)
        if chunk:
            self.data += chunk
        else:
            self.loop.remove_reader(conn.fileno())

    def lines(self) -> list[str]:
        return self.data.decode().splitlines(keepends=True)

    def drop_connections(self) -> None:
        for conn in self.connections:
            self.loop.remove_reader(conn.fileno())
            conn.close()
        self.connections.clear()

    def close(self) -> None:
        self.drop_connections()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


# -- --info -------------------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("name", ["JSON", "SYSLOG", "PCAP", "SQLITE3", "XML", "GRAPHITE"])
def test_info_matches_ulogd(name: str) -> None:
    library = f"/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_{name}.so"
    if not shutil.which("ulogd") or not os.path.exists(library):
        pytest.skip("ulogd2 and its output plugins are not installed")
    expected = subprocess.run(["ulogd", "--info", library], capture_output=True, text=True,
                              check=True).stdout
    if name == "SYSLOG":  # documented nfkit option
        expected = expected.replace(
            "LOG_NOTICE)\n", "LOG_NOTICE)\n\tVar: socket_path (String, Default: /dev/log)\n"
        )
    if name == "PCAP":  # documented nfkit option
        expected = expected.replace(
            "Default: 0)\nInput", "Default: 0)\n\tVar: linktype (Integer, Default: 101)\nInput"
        )
    if name == "SQLITE3":  # ulogd2's bogus third option line is not reproduced
        expected = expected.replace("\tVar:  (Unknown)\n", "")
    assert describe(plugins()[name]) == expected


# -- the wildcard ------------------------------------------------------------------------


def test_wildcard_keeps_first_position_and_nearest_declaration() -> None:
    class Later(Plugin):
        output_keys = declared("oob.protocol:u16:proto x.new:str")

    context = Context()
    found = upstream_keys([FakeInput("in", Settings("in", {}, {}), context),
                           Later("later", Settings("later", {}, {}), context)])
    names = [k.name for k in found]
    assert names.count("oob.protocol") == 1
    assert names.index("oob.protocol") == [k.name for k in FakeInput.output_keys].index(
        "oob.protocol"
    )
    assert names[-1] == "x.new"
    assert next(k for k in found if k.name == "oob.protocol").cim_name == "proto"


# -- JSON ---------------------------------------------------------------------------------


def json_lines(values: dict[str, Any], events: list[Event]) -> list[str]:
    plugin = make(json_output.JSON, values)
    return [plugin.format.line(event) for event in events]


def test_json_reference_lines_utc(timezone: Callable[[str], None]) -> None:
    timezone("UTC")
    lines = json_lines({"boolean_label": 1}, [tcp4_event(), tcp6_event()])
    assert lines == [B2_TCP4, B2_TCP6]


def test_json_reference_line_paris_eventv1(timezone: Callable[[str], None]) -> None:
    timezone("Europe/Paris")
    lines = json_lines({"eventv1": 1, "device": "fw-01 main"}, [tcp4_event()])
    assert lines == [PARIS_EVENTV1_TCP4]


def test_json_udp_and_icmp_lines(timezone: Callable[[str], None]) -> None:
    timezone("Europe/Paris")
    udp, icmp = json_lines({"boolean_label": 1}, [udp4_event(), icmp4_event()])
    assert udp.startswith(
        '{"timestamp": "2023-11-14T23:13:20+0100", "dvc": "Netfilter", "raw.pktlen": 40, '
        '"raw.pktcount": 1, "oob.prefix": "UDP", '
    )
    assert '"action": "blocked", "ip.protocol": 17, ' in udp
    assert udp.endswith(
        '"src_port": 5353, "dest_port": 53, "udp.len": 20, "udp.csum": 0, '
        '"src_ip": "192.168.1.11", "dest_ip": "8.8.8.8"}\n'
    )
    assert icmp.endswith(
        '"ip.fragoff": 0, "icmp.type": 8, "icmp.code": 0, "icmp.echoid": 4660, '
        '"icmp.echoseq": 7, "icmp.csum": 0, "src_ip": "192.168.1.12", "dest_ip": "1.1.1.1"}\n'
    )
    assert "src_port" not in icmp


def test_json_microseconds_and_no_timestamp(timezone: Callable[[str], None]) -> None:
    timezone("America/St_Johns")  # -03:30 in November
    event = tcp4_event() | {"oob.time.usec": 4567}
    (line,) = json_lines({}, [event])
    assert line.startswith('{"timestamp": "2023-11-14T18:43:20.004567-0330", "dvc": ')
    assert '"oob.time.sec": 1700000000, "oob.time.usec": 4567, "oob.in"' in line
    (line,) = json_lines({"timestamp": 0, "eventv1": 1}, [event])
    assert line.startswith('{"@version": 1, "dvc": "Netfilter", "raw.pktlen": 40, ')


def test_json_timestamp_is_now_without_packet_time(timezone: Callable[[str], None]) -> None:
    timezone("UTC")
    event = tcp4_event()
    del event["oob.time.sec"]
    before = time.time()
    (line,) = json_lines({}, [event])
    stamp = json.loads(line)["timestamp"]
    parsed = time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S+0000"))
    assert int(before) <= parsed <= time.time()


def test_json_string_escapes_like_jansson() -> None:
    event = tcp4_event() | {"oob.prefix": 'q"b\\s/\t\x0b\x1fé✓'}
    (line,) = json_lines({}, [event])
    assert '"oob.prefix": "q\\"b\\\\s/\\t\\u000B\\u001Fé✓"' in line
    assert json.loads(line)["oob.prefix"] == event["oob.prefix"]


def test_json_leaves_out_strings_that_are_not_utf8() -> None:
    event = tcp4_event() | {"oob.prefix": b"caf\xe9 ".decode("utf-8", "surrogateescape")}
    (line,) = json_lines({}, [event])
    assert "oob.prefix" not in line
    assert '"raw.pktcount": 1, "oob.time.sec": 1700000000' in line
    # The layout cached for this key set still prints the prefix when it is valid.
    plugin = make(json_output.JSON, {})
    plugin.format.line(event)
    assert '"oob.prefix": "TCP-IN: "' in plugin.format.line(tcp4_event())


def test_json_shared_names_keep_first_place_and_last_value() -> None:
    event = tcp4_event() | {"orig.ip.saddr.str": "203.0.113.9"}
    del event["ip.daddr.str"]
    (line,) = json_lines({}, [event])
    assert line.endswith('"tcp.csum": 0, "src_ip": "203.0.113.9"}\n')
    event = tcp4_event()
    del event["ip.saddr.str"]
    event["orig.ip.saddr.str"] = "203.0.113.9"
    (line,) = json_lines({}, [event])
    assert line.endswith('"dest_ip": "10.0.0.1", "src_ip": "203.0.113.9"}\n')


def test_json_equals_dict_semantics_for_any_key_subset() -> None:
    """Random key subsets: the line is what a dict (jansson object) would serialize."""
    plugin = make(json_output.JSON, {"timestamp": 0, "boolean_label": 1})
    fields = upstream_keys([up(up.name, Settings("x", {}, {}), Context()) for up in UPSTREAM])
    rng = random.Random(7)
    for _ in range(300):
        event: Event = {}
        for key in rng.sample(fields, rng.randrange(len(fields))):
            if key.type is KeyType.STRING:
                event[key.name] = rng.choice(["eth0", "x y", "é", '"'])
            elif key.type in (KeyType.RAW, KeyType.IPADDR):
                event[key.name] = b"\x01\x02\x03\x04"
            else:
                event[key.name] = rng.randrange(70000)
        expected: dict[str, Any] = {"dvc": "Netfilter"}
        for key in fields:
            if key.name in event and key.type not in (KeyType.RAW, KeyType.IPADDR):
                if key.name == "raw.label":
                    expected["action"] = "allowed" if event[key.name] else "blocked"
                else:
                    expected[key.cim_name or key.name] = event[key.name]
        assert plugin.format.line(event) == json.dumps(expected, ensure_ascii=False) + "\n"


def test_json_inputs_are_the_printed_keys() -> None:
    plugin = make(json_output.JSON, {})
    names = [k.name for k in plugin.inputs]
    assert "ip.saddr" not in names and "raw.pkt" not in names
    assert names[:3] == ["raw.pktlen", "raw.pktcount", "oob.prefix"]
    assert "ip.saddr.str" in names and "oob.time.usec" in names


def test_json_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="unknown mode 'tls'") as info:
        make(json_output.JSON, {"mode": "tls"})
    assert "file, tcp, udp, unix" in info.value.fix


def test_json_file_mode_and_reopen(tmp_path: Path, timezone: Callable[[str], None]) -> None:
    timezone("UTC")
    path = tmp_path / "ulogd.json"
    plugin = make(json_output.JSON, {"file": str(path), "sync": 1, "boolean_label": 1})
    plugin.start()
    plugin.interp(tcp4_event())
    path.rename(tmp_path / "ulogd.json.1")
    plugin.reopen()
    plugin.interp(tcp6_event())
    plugin.stop()
    assert (tmp_path / "ulogd.json.1").read_text() == B2_TCP4
    assert path.read_text() == B2_TCP6


@pytest.mark.parametrize("mode", ["udp", "tcp", "unix"])
def test_json_to_socket(mode: str, tmp_path: Path, loop: EventLoop,
                        timezone: Callable[[str], None]) -> None:
    timezone("UTC")
    listener = Listener(loop, mode, tmp_path / "json.sock")
    plugin = make(json_output.JSON, {"mode": mode.upper(), "port": str(listener.port),
                                     "file": str(tmp_path / "json.sock"),
                                     "boolean_label": 1}, loop)
    plugin.start()
    for _ in range(3):
        plugin.interp(tcp4_event())
        plugin.interp(tcp6_event())
    run_until(loop, lambda: len(listener.lines()) == 6)
    plugin.stop()
    listener.close()
    assert listener.lines() == [B2_TCP4, B2_TCP6] * 3
    if mode == "udp":  # one object per datagram, newline included
        assert [d.decode() for d in listener.datagrams] == [B2_TCP4, B2_TCP6] * 3


def test_json_sighup_reconnects(loop: EventLoop, tmp_path: Path) -> None:
    listener = Listener(loop, "tcp", tmp_path)
    plugin = make(json_output.JSON, {"mode": "tcp", "port": str(listener.port)}, loop)
    plugin.start()
    plugin.interp(tcp4_event())
    run_until(loop, lambda: len(listener.lines()) == 1)
    plugin.reopen()
    plugin.interp(tcp6_event())
    run_until(loop, lambda: len(listener.lines()) == 2)
    plugin.stop()
    listener.close()
    assert listener.accepted == 2
    assert listener.lines() == [plugin.format.line(tcp4_event()), plugin.format.line(tcp6_event())]


@pytest.mark.parametrize("mode", ["tcp", "unix"])
def test_json_buffers_while_the_peer_is_down(
    mode: str, tmp_path: Path, loop: EventLoop, fast_retries: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    path = tmp_path / "json.sock"
    plugin = make(json_output.JSON, {"mode": mode, "port": str(port), "file": str(path)}, loop)
    plugin.start()  # nobody listens: no failure, lines wait
    events = [tcp4_event(), udp4_event(), icmp4_event(), tcp6_event()]
    for event in events[:2]:
        plugin.interp(event)
    assert len(plugin.sender.backlog) == 2
    run_until(loop, lambda: "cannot deliver" in caplog.text, timeout=2)
    assert "cannot deliver" in caplog.text
    listener = Listener(loop, mode, path, port)
    run_until(loop, lambda: len(listener.lines()) == 2)
    # The peer goes away and comes back: nothing is lost.
    listener.drop_connections()
    run_until(loop, lambda: not plugin.sender.connected, timeout=2)
    for event in events[2:]:
        plugin.interp(event)
    run_until(loop, lambda: len(listener.lines()) == 4)
    plugin.stop()
    listener.close()
    assert listener.lines() == [plugin.format.line(e) for e in events]


def test_json_buffer_is_bounded_and_drops_are_logged(
    loop: EventLoop, caplog: pytest.LogCaptureFixture, fast_retries: None, tmp_path: Path,
) -> None:
    path = tmp_path / "json.sock"
    plugin = make(json_output.JSON, {"mode": "unix", "file": str(path)}, loop)
    plugin.start()
    plugin.sender.capacity = 5
    for seq in range(8):
        plugin.interp(tcp4_event() | {"raw.pktcount": seq})
    assert plugin.sender.dropped == 3
    assert "full; dropping new lines" in caplog.text
    listener = Listener(loop, "unix", path)
    run_until(loop, lambda: len(listener.lines()) == 5)
    assert [json.loads(line)["raw.pktcount"] for line in listener.lines()] == [0, 1, 2, 3, 4]
    assert "3 lines were dropped" in caplog.text
    plugin.stop()
    listener.close()


def test_json_stop_delivers_the_buffer(loop: EventLoop, tmp_path: Path) -> None:
    path = tmp_path / "json.sock"
    plugin = make(json_output.JSON, {"mode": "unix", "file": str(path)}, loop)
    plugin.start()
    plugin.interp(tcp4_event())
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    plugin.stop()  # no retry happened yet: stop connects and sends
    conn, _ = server.accept()
    assert conn.recv(65536).decode() == plugin.format.line(tcp4_event())
    conn.close()
    server.close()


def test_json_unresolvable_host() -> None:
    plugin = make(json_output.JSON, {"mode": "tcp", "host": "no-such-host.invalid"}, EventLoop())
    with pytest.raises(StartError, match=r"cannot resolve no-such-host\.invalid:12345"):
        plugin.start()


def test_json_in_a_pipeline_reads_only_printed_keys(tmp_path: Path) -> None:
    config = ConfigFile(str(tmp_path / "t.conf"), text=(
        "[global]\nstack=log1:NFLOG,j1:JSON\n[j1]\nfile=\"%s\"\n" % (tmp_path / "x.json")
    ))
    pipeline = Pipeline(config, Context())
    wanted = pipeline.wanted_keys(pipeline.stacks[0])
    assert wanted is not None
    assert {"oob.prefix", "raw.pktlen", "oob.time.usec"} <= wanted
    assert "raw.pkt" not in wanted and "raw.mac" not in wanted


# -- SYSLOG -------------------------------------------------------------------------------


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "log"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    yield server, path
    server.close()


def test_syslog_sends_glibc_datagrams(syslog_socket: tuple[socket.socket, Path]) -> None:
    server, path = syslog_socket
    plugin = make(syslog_output.SYSLOG, {"socket_path": str(path)}, upstream=(FakeInput,))
    plugin.start()
    plugin.interp({"print": "TCP-IN:  IN=eth0 OUT=eth1 MAC= SRC=192.0.2.1 \n"})
    plugin.interp({"oob.prefix": "no print key"})
    plugin.stop()
    message = server.recv(4096).decode()
    # LOG_KERN (0) becomes openlog()'s LOG_DAEMON, as in glibc: <3*8+5>.
    pattern = r"<29>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ulogd\[(\d+)\]: (.*)"
    match = re.fullmatch(pattern, message)
    assert match, message
    assert int(match[1]) == os.getpid()
    assert match[2] == "TCP-IN:  IN=eth0 OUT=eth1 MAC= SRC=192.0.2.1 "
    with pytest.raises(TimeoutError):
        server.settimeout(0.05)
        server.recv(4096)


def test_syslog_facility_and_level(syslog_socket: tuple[socket.socket, Path]) -> None:
    server, path = syslog_socket
    plugin = make(syslog_output.SYSLOG, {"socket_path": str(path), "facility": "LOG_LOCAL3",
                                         "level": "LOG_INFO"}, upstream=(FakeInput,))
    plugin.start()
    plugin.interp({"print": "x"})
    plugin.stop()
    assert server.recv(4096).startswith(b"<158>")  # local3 (19) * 8 + info (6)


def test_syslog_date_format(timezone: Callable[[str], None]) -> None:
    timezone("UTC")
    assert syslog_output.syslog_date(T0) == "Nov 14 22:13:20"
    assert syslog_output.syslog_date(T0 - 10 * 86400) == "Nov  4 22:13:20"


GLIBC_SYSLOG = """
import socket, sys, syslog
server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
server.bind("/dev/log")
syslog.openlog("ulogd", syslog.LOG_NDELAY | syslog.LOG_PID, syslog.LOG_DAEMON)
for facility, level in (("LOG_KERN", "LOG_NOTICE"), ("LOG_LOCAL7", "LOG_DEBUG"),
                        ("LOG_USER", "LOG_EMERG")):
    syslog.syslog(getattr(syslog, facility) | getattr(syslog, level), sys.argv[1])
    print(server.recv(4096).hex())
"""


@pytest.mark.reference
def test_syslog_datagrams_match_glibc(tmp_path: Path) -> None:
    """What ulogd2 sends through glibc, captured in a mount namespace with its own /dev/log."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a private /dev")
    text = "SRC=192.0.2.1 DST=198.51.100.7 é"
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs none /dev && exec "$0" -c "$1" "$2"', sys.executable, GLIBC_SYSLOG,
         text],
        capture_output=True, text=True, timeout=30,
    )
    if result.returncode:
        pytest.skip(f"cannot build a private /dev: {result.stderr.strip()}")
    glibc = [bytes.fromhex(line) for line in result.stdout.split()]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "log"))
    ours = []
    for facility, level in (("LOG_KERN", "LOG_NOTICE"), ("LOG_LOCAL7", "LOG_DEBUG"),
                            ("LOG_USER", "LOG_EMERG")):
        plugin = make(syslog_output.SYSLOG, {"socket_path": str(tmp_path / "log"),
                                             "facility": facility, "level": level},
                      upstream=(FakeInput,))
        plugin.start()
        plugin.interp({"print": text + "\n"})  # PRINTPKT's newline is not sent
        plugin.stop()
        ours.append(server.recv(4096))
    server.close()
    stamp = re.compile(rb"^(<\d+>)[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ulogd\[\d+\]: ")
    assert [stamp.sub(rb"\1DATE ulogd[PID]: ", m) for m in ours] == [
        stamp.sub(rb"\1DATE ulogd[PID]: ", m) for m in glibc
    ]
    assert len(glibc) == 3


@pytest.mark.parametrize(("option", "value"), [("facility", "LOG_FTP"), ("level", "NOTICE")])
def test_syslog_unknown_names(option: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown {option} '{value}'") as info:
        make(syslog_output.SYSLOG, {option: value}, upstream=(FakeInput,))
    assert "LOG_LOCAL7" in info.value.fix if option == "facility" else "LOG_DEBUG" in info.value.fix


def test_syslog_waits_for_the_syslog_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(syslog_output, "RECONNECT_INTERVAL", 0.0)
    path = tmp_path / "log"
    plugin = make(syslog_output.SYSLOG, {"socket_path": str(path)}, upstream=(FakeInput,))
    plugin.start()  # no syslog daemon yet: starts anyway, as ulogd2 does
    plugin.interp({"print": "lost"})
    assert plugin.dropped == 1
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    plugin.interp({"print": "delivered"})
    # The syslog daemon restarts: a new socket at the same path.
    server.close()
    path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    plugin.interp({"print": "after restart"})
    plugin.stop()
    assert server.recv(4096).endswith(b": after restart")
    server.close()
    assert "1 messages were dropped" in caplog.text


# -- PCAP ---------------------------------------------------------------------------------

B5_HEADER = bytes.fromhex("d4c3b2a1 02000400 00000000 00000000 00000100 65000000".replace(" ", ""))


def pcap_plugin(path: Path, **values: Any) -> Any:
    return make(pcap.PCAP, {"file": str(path), **values})


def test_pcap_file_format(tmp_path: Path) -> None:
    path = tmp_path / "ulogd.pcap"
    plugin = pcap_plugin(path)
    plugin.start()
    plugin.interp(tcp4_event() | {"oob.time.usec": 123456})
    plugin.stop()
    data = path.read_bytes()
    assert data[:24] == B5_HEADER  # ulogd2.md B.5 (little-endian host)
    assert data[24:40] == struct.pack("<IIII", T0, 123456, 40, 40)
    assert data[40:] == TCP4_PACKET


def test_pcap_readable_by_tshark(tmp_path: Path) -> None:
    if not shutil.which("tshark"):
        pytest.skip("tshark is not installed")
    path = tmp_path / "ulogd.pcap"
    plugin = pcap_plugin(path)
    plugin.start()
    for usec, make_event in enumerate(EVENTS.values()):
        plugin.interp(make_event() | {"oob.time.usec": usec * 1000})
    plugin.stop()
    fields = ["frame.time_epoch", "frame.len", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
              "tcp.dstport", "udp.dstport", "icmp.seq", "_ws.malformed"]
    result = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", *(a for f in fields for a in ("-e", f))],
        capture_output=True, text=True, check=True,
    )
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(float(r[0]), *r[1:9]) for r in rows] == [
        (T0, "40", "192.168.1.10", "10.0.0.1", "", "", "80", "", ""),
        (T0 + 0.001, "40", "192.168.1.11", "8.8.8.8", "", "", "", "53", ""),
        (T0 + 0.002, "32", "192.168.1.12", "1.1.1.1", "", "", "", "", "7"),
        (T0 + 0.003, "60", "", "", "2001:db8::1", "2001:db8::2", "443", "", ""),
    ]
    assert all(not r[9] for r in rows), result.stdout  # nothing malformed


def test_pcap_appends_without_a_second_header(tmp_path: Path) -> None:
    path = tmp_path / "ulogd.pcap"
    for _ in range(2):
        plugin = pcap_plugin(path)
        plugin.start()
        plugin.interp(tcp4_event() | {"oob.time.usec": 0})
        plugin.stop()
    assert path.read_bytes() == B5_HEADER + 2 * (struct.pack("<IIII", T0, 0, 40, 40)
                                                 + TCP4_PACKET)


def test_pcap_header_on_empty_file_and_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "ulogd.pcap"
    path.touch()
    plugin = pcap_plugin(path, sync=1)
    plugin.start()
    plugin.interp(tcp4_event() | {"oob.time.usec": 0})
    path.rename(tmp_path / "ulogd.pcap.1")
    plugin.reopen()
    plugin.interp(tcp6_event() | {"oob.time.usec": 0})
    plugin.stop()
    assert (tmp_path / "ulogd.pcap.1").read_bytes()[:24] == B5_HEADER
    rotated = path.read_bytes()
    assert rotated[:24] == B5_HEADER
    assert rotated[24:40] == struct.pack("<IIII", T0, 0, 60, 60)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1), "link type 1, not 101"),
        (struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65536, 101), "other byte order"),
        (struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65536, 101), "nanosecond"),
        (bytes.fromhex("0a0d0d0a") + bytes(20), "pcapng"),
        (b"hello", "too few for a pcap file header"),
        (b"not a capture file at all", "is not a pcap file"),
    ],
)
def test_pcap_refuses_foreign_files(tmp_path: Path, header: bytes, message: str) -> None:
    path = tmp_path / "ulogd.pcap"
    path.write_bytes(header)
    plugin = pcap_plugin(path)
    with pytest.raises(StartError, match=message) as info:
        plugin.start()
    assert "rotate" in info.value.fix
    assert path.read_bytes() == header


def test_pcap_times_and_lengths(tmp_path: Path) -> None:
    path = tmp_path / "ulogd.pcap"
    plugin = pcap_plugin(path)
    plugin.start()
    before = time.time()
    event = tcp4_event()  # no oob.time.usec: the current time, as ulogd2
    assert plugin.interp(event) is None
    truncated = tcp6_event() | {"raw.pkt": tcp6_event()["raw.pkt"][:48], "raw.pktlen": 48,
                                "oob.time.usec": 5}
    plugin.interp(truncated)
    assert plugin.interp({"oob.family": 2}) == ERROR
    plugin.stop()
    data = path.read_bytes()
    second, usec, caplen, length = struct.unpack("<IIII", data[24:40])
    assert int(before) <= second + usec / 1e6 <= time.time() + 1
    second, usec, caplen, length = struct.unpack("<IIII", data[80:96])
    assert (second, usec, caplen, length) == (T0, 5, 48, 60)


# -- SQLITE3 ------------------------------------------------------------------------------

B6_TABLE = ("create table pkt (oob_time_sec, oob_prefix, ip_saddr, ip_saddr_str, ip_protocol, "
            "tcp_dport, tcp_seq, tcp_syn, raw_label)")


def sqlite_db(tmp_path: Path, schema: str = B6_TABLE) -> Path:
    path = tmp_path / "ulogd.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(schema)
    return path


def rows_of(path: Path, table: str = "pkt") -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(f"select * from {table}").fetchall()


def test_sqlite3_rows(tmp_path: Path) -> None:
    path = sqlite_db(tmp_path)
    plugin = make(sqlite3_output.SQLITE3, {"db": str(path), "table": "pkt"})
    assert [k.name for k in plugin.inputs] == [
        "oob.time.sec", "oob.prefix", "ip.saddr", "ip.saddr.str", "ip.protocol", "tcp.dport",
        "tcp.seq", "tcp.syn", "raw.label",
    ]
    plugin.start()
    for make_event in EVENTS.values():
        plugin.interp(make_event())
    plugin.stop()
    # ulogd2.md B.6, with ip_saddr as the address's value (ulogd2: 167880896...) and
    # IPv6 as NULL (ulogd2 2.0.8: garbage).
    assert rows_of(path) == [
        (T0, "TCP-IN: ", 3232235786, "192.168.1.10", 6, 80, 1000, 1, 1),
        (T0, "UDP", 3232235787, "192.168.1.11", 17, None, None, None, 0),
        (T0, "ICMP", 3232235788, "192.168.1.12", 1, None, None, None, 1),
        (T0, "V6", None, "2001:db8::1", 6, 443, 5, 1, 1),
    ]


def test_sqlite3_unknown_column(tmp_path: Path) -> None:
    path = sqlite_db(tmp_path, "create table pkt (oob_prefix, ip_sadr_str)")
    with pytest.raises(ConfigError) as info:
        make(sqlite3_output.SQLITE3, {"db": str(path), "table": "pkt"})
    error = info.value
    assert error.what == (
        f"column 'ip_sadr_str' of table 'pkt' in '{path}' matches no key of the stack "
        "(it would be 'ip.sadr.str')"
    )
    assert "ip_saddr_str" in error.fix and "oob_prefix" in error.fix


def test_sqlite3_missing_table_or_file(tmp_path: Path) -> None:
    path = sqlite_db(tmp_path)
    with pytest.raises(ConfigError, match=r"table 'ulog_pkt' in database file .*no such table"):
        make(sqlite3_output.SQLITE3, {"db": str(path), "table": "ulog_pkt"})
    missing = tmp_path / "none.sqlite"
    with pytest.raises(ConfigError, match="unable to open database file"):
        make(sqlite3_output.SQLITE3, {"db": str(missing), "table": "pkt"})
    assert not missing.exists()


def test_sqlite3_error_from_config_check(tmp_path: Path) -> None:
    path = sqlite_db(tmp_path, "create table ulog_pkt (oob_prefix, raw_mac_len, oob_bogus)")
    text = f'[global]\nstack=log1:NFLOG,sq1:SQLITE3\n[sq1]\ndb="{path}"\ntable="ulog_pkt"\n'
    with pytest.raises(ConfigError, match="column 'oob_bogus'") as info:
        Pipeline(ConfigFile(str(tmp_path / "t.conf"), text=text), Context())
    assert info.value.where.endswith("t.conf:5 (table)")


def test_sqlite3_column_for_a_key_with_underscore(tmp_path: Path) -> None:
    path = sqlite_db(tmp_path, "create table pkt (raw_mac_len, oob_prefix)")
    plugin = make(sqlite3_output.SQLITE3, {"db": str(path), "table": "pkt"})
    plugin.start()
    plugin.interp({"raw.mac_len": 14, "oob.prefix": "x"})
    plugin.stop()
    assert rows_of(path) == [(14, "x")]


def test_sqlite3_exact_values(tmp_path: Path) -> None:
    path = sqlite_db(tmp_path, "create table pkt (tcp_seq, oob_prefix, raw_pkt, oob_uid)")
    plugin = make(sqlite3_output.SQLITE3, {"db": str(path), "table": "pkt"})
    plugin.start()
    plugin.interp({"tcp.seq": 4_000_000_000, "oob.prefix": "ok", "raw.pkt": b"\x45\x00"})
    plugin.interp({"tcp.seq": 2**64 - 1, "oob.prefix": b"caf\xe9".decode("utf-8",
                                                                         "surrogateescape")})
    plugin.stop()
    assert rows_of(path) == [
        (4_000_000_000, "ok", b"\x45\x00", None),
        ("18446744073709551615", "caf\\xe9", None, None),
    ]


def test_sqlite3_batches_and_flush_on_stop(tmp_path: Path, loop: EventLoop) -> None:
    path = sqlite_db(tmp_path)
    plugin = make(sqlite3_output.SQLITE3, {"db": str(path), "table": "pkt"}, loop)
    plugin.batch_size = 4
    plugin.start()
    for _ in range(3):
        plugin.interp(tcp4_event())
    assert rows_of(path) == []
    plugin.interp(udp4_event())  # the 4th row completes a batch
    assert len(rows_of(path)) == 4
    plugin.interp(icmp4_event())
    run_until(loop, lambda: len(rows_of(path)) == 5, timeout=3)  # the 1-second timer
    assert len(rows_of(path)) == 5
    for _ in range(3):
        plugin.interp(tcp6_event())
    plugin.stop()
    assert [row[1] for row in rows_of(path)] == ["TCP-IN: "] * 3 + ["UDP", "ICMP"] + ["V6"] * 3


def test_sqlite3_keeps_rows_while_the_database_is_locked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = sqlite_db(tmp_path)
    plugin = make(sqlite3_output.SQLITE3, {"db": str(path), "table": "pkt"})
    plugin.busy_timeout = 0.01
    plugin.start()
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("begin exclusive")
    plugin.interp(tcp4_event())
    assert plugin.flush() is False
    plugin.interp(udp4_event())
    assert len(plugin.pending) == 2
    assert "database is locked" in caplog.text
    locker.execute("commit")
    locker.close()
    assert plugin.flush() is True
    plugin.stop()
    assert [row[1] for row in rows_of(path)] == ["TCP-IN: ", "UDP"]
    assert "works again" in caplog.text


def test_sqlite3_reopen_after_rotation(tmp_path: Path) -> None:
    path = sqlite_db(tmp_path)
    plugin = make(sqlite3_output.SQLITE3, {"db": str(path), "table": "pkt"})
    plugin.start()
    plugin.interp(tcp4_event())
    path.rename(tmp_path / "old.sqlite")
    sqlite_db(tmp_path)
    plugin.reopen()
    plugin.interp(udp4_event())
    plugin.stop()
    # SQLite refuses writes to a moved file: the pending row goes to the new one.
    assert rows_of(tmp_path / "old.sqlite") == []
    assert [row[1] for row in rows_of(path)] == ["TCP-IN: ", "UDP"]
