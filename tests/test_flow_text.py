"""PRINTFLOW, PWSNIFF, NACCT, OPRINT and GPRINT on synthetic events (no kernel).

Flow events follow the NFCT contract (ulogd's key names, addresses as 4/16 bytes,
IP2STR's ``.str`` keys) and NFCT's key declarations; packet events come from the real
BASE and IP2STR plugins run on the packets of ulogd2.md Appendix B, so OPRINT/GPRINT
are checked against B.3/B.4.
The kernel tests are in tests/test_flow_differential.py.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfkit.cli.logd import describe
from nfkit.logd.config import ConfigFile
from nfkit.logd.engine import Pipeline
from nfkit.logd.errors import StartError
from nfkit.logd.keys import Event, KeyType, keys
from nfkit.logd.plugin import ERROR, Context, InputPlugin, Plugin, Settings
from nfkit.logd.plugins.printflow import flow_line, ported_flow_line
from nfkit.logd.plugins.pwsniff import credentials
from nfkit.logd.registry import plugins
from nfkit.packet import build_ipv4, build_ipv6, build_tcp, build_udp

T = KeyType
ULOGD_PLUGINS = Path("/usr/lib/x86_64-linux-gnu/ulogd")

# -- building instances ----------------------------------------------------------------


class FakeUnixsock(InputPlugin):
    """UNIXSOCK's output keys (ulogd2.md Appendix A): the input of Appendix B's stacks."""

    name = "UNIXSOCK"
    output_keys = keys(
        ("raw.mac", T.RAW), ("raw.pkt", T.RAW), ("raw.pktlen", T.UINT32),
        ("raw.pktcount", T.UINT32), ("oob.prefix", T.STRING), ("oob.time.sec", T.UINT32),
        ("oob.time.usec", T.UINT32), ("oob.mark", T.UINT32), ("oob.in", T.STRING),
        ("oob.out", T.STRING), ("oob.hook", T.UINT8), ("raw.mac_len", T.UINT16),
        ("oob.seq.local", T.UINT32), ("oob.seq.global", T.UINT32), ("oob.family", T.UINT8),
        ("oob.protocol", T.UINT16), ("oob.uid", T.UINT32), ("oob.gid", T.UINT32),
        ("raw.label", T.UINT8), ("raw.type", T.UINT16), ("raw.mac.saddr", T.RAW),
        ("raw.mac.addrlen", T.UINT16), ("nufw.user.name", T.STRING),
        ("nufw.user.id", T.UINT32), ("nufw.os.name", T.STRING), ("nufw.os.rel", T.STRING),
        ("nufw.os.vers", T.STRING), ("nufw.app.name", T.STRING),
    )  # fmt: skip


def instance(cls: type[Plugin], values: dict[str, Any] | None = None,
             upstream: Sequence[Plugin] = ()) -> Any:
    """A configured instance of ``cls`` placed after ``upstream``."""
    settings = {opt.name: opt.default for opt in cls.options} | (values or {})
    plugin = cls(f"{cls.name.lower()}1", Settings("x", settings, {}),
                 Context(None, logging.getLogger("nfkit.logd.test")))
    plugin.configure(list(upstream))
    return plugin


def chain(*classes: type[Plugin]) -> list[Plugin]:
    """Instances of ``classes`` configured as a stack's first elements."""
    built: list[Plugin] = []
    for cls in classes:
        built.append(instance(cls, upstream=built))
    return built


def run(plugin: Plugin, events: list[Event]) -> tuple[list[Event], list[int]]:
    """``events`` through ``plugin``: the events that go on and the drop results."""
    results: list[int] = []
    return plugin.interp_batch(events, results.append), results


def output(cls: type[Plugin], path: Path, upstream: Sequence[Plugin], events: list[Event],
           **values: Any) -> str:
    """What output ``cls`` writes to ``path`` for ``events``."""
    plugin = instance(cls, {"file": str(path), **values}, upstream)
    plugin.start()
    try:
        _, results = run(plugin, events)
        assert results == []
    finally:
        plugin.stop()
    return path.read_text()


# -- --info ----------------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("name", ["PRINTFLOW", "PWSNIFF", "NACCT", "OPRINT", "GPRINT"])
def test_info_matches_ulogd(name: str) -> None:
    library = list(ULOGD_PLUGINS.glob(f"ulogd_*_{name}.so"))
    if not shutil.which("ulogd") or len(library) != 1:
        pytest.skip("ulogd2 is not installed")
    expected = subprocess.run(["ulogd", "--info", str(library[0])], capture_output=True,
                              text=True, check=True).stdout
    assert describe(plugins()[name]) == expected


# -- flows -----------------------------------------------------------------------------


def addr(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def flow(src: str, dst: str, protocol: int, sport: int | None = None,
         dport: int | None = None, *, event: int = 4, nat_dst: str | None = None,
         counters: tuple[int, int, int, int] = (5, 300, 4, 400), more: Event | None = None
         ) -> Event:
    """An NFCT event after IP2STR: ``src`` -> ``dst`` (the reply from ``nat_dst``)."""
    reply_src = nat_dst or dst
    event_keys: Event = {
        "orig.ip.saddr": addr(src), "orig.ip.daddr": addr(dst), "orig.ip.protocol": protocol,
        "orig.raw.pktcount": counters[0], "orig.raw.pktlen": counters[1],
        "reply.ip.saddr": addr(reply_src), "reply.ip.daddr": addr(src),
        "reply.ip.protocol": protocol,
        "reply.raw.pktcount": counters[2], "reply.raw.pktlen": counters[3],
        "ct.mark": 0, "ct.id": 0x1234, "ct.event": event,
        "flow.start.sec": 1700000000, "flow.start.usec": 250000,
        "flow.end.sec": 1700000042, "flow.end.usec": 500000,
        "oob.family": 10 if ":" in src else 2, "oob.protocol": 0,
        "orig.ip.saddr.str": src, "orig.ip.daddr.str": dst,
        "reply.ip.saddr.str": reply_src, "reply.ip.daddr.str": src,
    }  # fmt: skip
    if sport is not None and dport is not None:
        event_keys |= {"orig.l4.sport": sport, "orig.l4.dport": dport,
                       "reply.l4.sport": dport, "reply.l4.dport": sport}
    return event_keys | (more or {})


def printflow(*events: Event) -> list[str]:
    passed, results = run(instance(plugins()["PRINTFLOW"]), list(events))
    assert results == []
    return [event["print"] for event in passed]


def test_printflow_spec_example() -> None:
    """ulogd2.md §7.2.9's example, space before the comma and trailing space included."""
    [line] = printflow(flow("10.0.0.1", "10.0.0.2", 6, 1234, 80))
    assert line == (
        "[DESTROY] ORIG: SRC=10.0.0.1 DST=10.0.0.2 PROTO=TCP SPT=1234 DPT=80 PKTS=5 BYTES=300 "
        ", REPLY: SRC=10.0.0.2 DST=10.0.0.1 PROTO=TCP SPT=80 DPT=1234 PKTS=4 BYTES=400 \n"
    )


def test_printflow_event_tags_and_nat() -> None:
    lines = printflow(
        flow("192.0.2.1", "198.51.100.2", 17, 5353, 53, event=1, nat_dst="203.0.113.9"),
        flow("2001:db8::1", "2001:db8::2", 17, 40000, 53, event=2),
        flow("192.0.2.1", "198.51.100.2", 17, 1, 2, event=8),  # not an event type ulogd names
        {k: v for k, v in flow("192.0.2.1", "198.51.100.2", 6, 1, 2).items() if k != "ct.event"},
    )
    assert lines[0] == (
        "[NEW] ORIG: SRC=192.0.2.1 DST=198.51.100.2 PROTO=UDP SPT=5353 DPT=53 PKTS=5 BYTES=300 "
        ", REPLY: SRC=203.0.113.9 DST=192.0.2.1 PROTO=UDP SPT=53 DPT=5353 PKTS=4 BYTES=400 \n"
    )
    assert lines[1].startswith("[UPDATE] ORIG: SRC=2001:db8::1 DST=2001:db8::2 PROTO=UDP ")
    assert lines[2].startswith("ORIG: SRC=192.0.2.1 ")
    assert lines[3].startswith("ORIG: SRC=192.0.2.1 ")


def test_printflow_icmp_type_before_code() -> None:
    """ulogd printed TYPE=<code> CODE=<type>; the flow's one type/code goes in both halves."""
    [line] = printflow(flow("192.0.2.1", "192.0.2.2", 1, more={"icmp.type": 8, "icmp.code": 0}))
    assert line == (
        "[DESTROY] ORIG: SRC=192.0.2.1 DST=192.0.2.2 PROTO=ICMP TYPE=8 CODE=0 PKTS=5 BYTES=300 "
        ", REPLY: SRC=192.0.2.2 DST=192.0.2.1 PROTO=ICMP TYPE=8 CODE=0 PKTS=4 BYTES=400 \n"
    )


def test_printflow_reads_the_icmpv6_keys(tmp_path: Path) -> None:
    """Beyond ulogd's inputs (which --info shows), so that NFCT sets them."""
    reads = {key.name: key.optional for key in instance(plugins()["PRINTFLOW"]).inputs}
    assert reads["icmpv6.type"] and reads["icmpv6.code"] and not reads["icmp.type"]
    built = pipeline(tmp_path, "ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU")
    wanted = built.wanted_keys(built.stacks[0])
    assert wanted is not None and {"icmpv6.type", "icmpv6.code", "icmp.type"} <= wanted


def test_printflow_icmpv6_named_with_type_and_code() -> None:
    [line] = printflow(
        flow("2001:db8::1", "2001:db8::2", 58, more={"icmpv6.type": 128, "icmpv6.code": 0})
    )
    assert line == (
        "[DESTROY] ORIG: SRC=2001:db8::1 DST=2001:db8::2 PROTO=ICMPv6 TYPE=128 CODE=0 PKTS=5 "
        "BYTES=300 , REPLY: SRC=2001:db8::2 DST=2001:db8::1 PROTO=ICMPv6 TYPE=128 CODE=0 "
        "PKTS=4 BYTES=400 \n"
    )


@pytest.mark.parametrize(("protocol", "ports", "text"), [
    (50, False, "PROTO=ESP "), (51, False, "PROTO=AH "), (47, False, "PROTO=47 "),
    (132, True, "PROTO=132 "), (33, True, "PROTO=33 "), (136, True, "PROTO=136 "),
])  # fmt: skip
def test_printflow_other_protocols(protocol: int, ports: bool, text: str) -> None:
    """As ulogd: SCTP, DCCP and UDP-Lite print their number only, without ports."""
    [line] = printflow(flow("192.0.2.1", "192.0.2.2", protocol, *((7, 9) if ports else ())))
    assert f"DST=192.0.2.2 {text}PKTS=5 " in line
    assert f"DST=192.0.2.1 {text}PKTS=4 " in line


def test_printflow_prints_only_valid_keys() -> None:
    assert printflow({}) == ["ORIG: , REPLY: \n"]
    partial = {"orig.ip.protocol": 1, "icmp.code": 3, "reply.raw.pktlen": 0,
               "orig.ip.daddr.str": "192.0.2.2"}
    assert printflow(partial) == ["ORIG: DST=192.0.2.2 PROTO=ICMP CODE=3 , REPLY: BYTES=0 \n"]
    tcp_without_ports = {"orig.ip.protocol": 6, "reply.ip.protocol": 17}
    assert printflow(tcp_without_ports) == ["ORIG: PROTO=TCP , REPLY: PROTO=UDP \n"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([6, 17, 1, 58, 132, 47]), st.sets(st.sampled_from(sorted(
    flow("192.0.2.1", "192.0.2.2", 6, 1, 2, more={"icmp.type": 8, "icmp.code": 0}))), max_size=4))
def test_printflow_fast_path_prints_the_same(protocol: int, removed: set[str]) -> None:
    """Complete TCP/UDP flows take a shortcut; any event prints as the general code does."""
    event = flow("192.0.2.1", "192.0.2.2", protocol, 1, 2,
                 more={"icmp.type": 8, "icmp.code": 0, "icmpv6.type": 1, "icmpv6.code": 4})
    for key in removed:
        event.pop(key, None)
    assert ported_flow_line(event) == flow_line(event)


def test_printflow_drops_what_it_cannot_format() -> None:
    plugin = instance(plugins()["PRINTFLOW"])
    good = flow("192.0.2.1", "192.0.2.2", 6, 1, 2)
    passed, results = run(plugin, [{"ct.event": [4]}, good])
    assert passed == [good] and results == [ERROR]


# -- NACCT -----------------------------------------------------------------------------


def test_nacct_lines(tmp_path: Path) -> None:
    """end time, protocol, source, port or ICMP type, destination, port or code, reply
    counters; what a flow lacks prints 0 (ulogd2 reads unset keys as 0)."""
    events = [
        flow("192.0.2.1", "198.51.100.2", 6, 40000, 80),
        flow("192.0.2.1", "192.0.2.2", 1, more={"icmp.type": 8, "icmp.code": 0}),
        flow("2001:db8::1", "2001:db8::2", 58, more={"icmpv6.type": 128, "icmpv6.code": 0}),
        {k: v for k, v in flow("192.0.2.1", "192.0.2.2", 47).items() if k != "flow.end.sec"},
        {},
    ]
    text = output(plugins()["NACCT"], tmp_path / "nacct.log", chain(plugins()["NFCT"]), events)
    assert text.splitlines() == [
        "1700000042\t6\t192.0.2.1\t40000\t198.51.100.2\t80\t4\t400",
        "1700000042\t1\t192.0.2.1\t8\t192.0.2.2\t0\t4\t400",
        "1700000042\t58\t2001:db8::1\t0\t2001:db8::2\t0\t4\t400",
        "0\t47\t192.0.2.1\t0\t192.0.2.2\t0\t4\t400",
        "0\t0\t(null)\t0\t(null)\t0\t0\t0",
    ]


def test_nacct_reopens_on_sighup_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "nacct.log"
    plugin = instance(plugins()["NACCT"], {"file": str(path), "sync": 1})
    plugin.start()
    one = flow("192.0.2.1", "192.0.2.2", 17, 1, 2)
    try:
        run(plugin, [one])
        path.rename(tmp_path / "rotated.log")
        plugin.reopen()  # a new file
        run(plugin, [one, one])
        path.rename(tmp_path / "rotated-again.log")
        path.mkdir()  # cannot be opened: ulogd 2.0.8 went on without a file
        plugin.reopen()
        run(plugin, [one])
    finally:
        plugin.stop()
    assert (tmp_path / "rotated.log").read_text().count("\n") == 1
    assert (tmp_path / "rotated-again.log").read_text().count("\n") == 3


def test_text_outputs_refuse_an_unwritable_file(tmp_path: Path) -> None:
    for name in ("NACCT", "OPRINT", "GPRINT"):
        plugin = instance(plugins()[name], {"file": str(tmp_path / "no" / "such.log")})
        with pytest.raises(StartError, match="cannot open output file"):
            plugin.start()


# -- OPRINT and GPRINT ---------------------------------------------------------------------

T0 = 1700000000
# ulogd2.md B.5: the IPv4 TCP SYN of Appendix B, 192.168.1.10:40000 -> 10.0.0.1:80.
TCP4_PACKET = bytes.fromhex(
    "4510002810e140004006 5e2cc0a8010a0a000001 9c40005000 0003e800000000 5002721000000000"
    .replace(" ", "")
)
# Appendix B's IPv6 TCP SYN/ACK 2001:db8::1:1234 -> 2001:db8::2:443 (checksum 0 as sent).
TCP6_PACKET = struct.pack(
    "!IHBB16s16s", 6 << 28 | 0x12345, 20, 6, 63, addr("2001:db8::1"), addr("2001:db8::2")
) + struct.pack("!HHIIBBHHH", 1234, 443, 5, 6, 0x50, 0x12, 1000, 0, 0)


def unixsock_event(packet: bytes, prefix: str, family: int) -> Event:
    return {"raw.pkt": packet, "raw.pktlen": len(packet), "raw.pktcount": 1,
            "oob.prefix": prefix, "oob.time.sec": T0, "oob.in": "eth0", "oob.out": "eth1",
            "oob.family": family, "oob.protocol": 0, "raw.label": 1}


def through(stack: list[Plugin], events: list[Event]) -> list[Event]:
    """``events`` through the filters of ``stack`` (its first element is the input)."""
    for plugin in stack[1:]:
        events, results = run(plugin, events)
        assert results == []
    return events


def appendix_b_events(stack: list[Plugin]) -> list[Event]:
    return through(stack, [unixsock_event(TCP4_PACKET, "TCP-IN: ", 2),
                           unixsock_event(TCP6_PACKET, "V6", 10)])


def test_oprint_appendix_b4(tmp_path: Path) -> None:
    """B.4 (UNIXSOCK,BASE,IP2STR,OPRINT), with the fixes: addresses the right way round
    (ulogd: ip.saddr=10.1.168.192) and BASE's real tcp.offset (ulogd: 0)."""
    stack = chain(FakeUnixsock, plugins()["BASE"], plugins()["IP2STR"])
    text = output(plugins()["OPRINT"], tmp_path / "op.log", stack, appendix_b_events(stack))
    first = text.split("===>PACKET BOUNDARY\n")[1]
    assert first == (
        "raw.pkt=default\nraw.pktlen=40\nraw.pktcount=1\noob.prefix=TCP-IN: \n"
        "oob.time.sec=1700000000\noob.in=eth0\noob.out=eth1\noob.family=2\noob.protocol=0\n"
        "raw.label=1\nip.saddr=192.168.1.10\nip.daddr=10.0.0.1\nip.protocol=6\nip.tos=16\n"
        "ip.ttl=64\nip.totlen=40\nip.ihl=5\nip.csum=24108\nip.id=4321\nip.fragoff=16384\n"
        "tcp.sport=40000\ntcp.dport=80\ntcp.seq=1000\ntcp.ackseq=0\ntcp.window=29200\n"
        "tcp.offset=5\ntcp.reserved=0\ntcp.urg=0\ntcp.ack=0\ntcp.psh=0\ntcp.rst=0\n"
        "tcp.syn=1\ntcp.fin=0\ntcp.res1=0\ntcp.res2=0\ntcp.csum=0\noob.protocol=0\n"
        "ip.saddr.str=192.168.1.10\nip.daddr.str=10.0.0.1\n"
    )
    assert text.count("===>PACKET BOUNDARY\n") == 2
    assert "\nip.saddr=2001:db8::1\nip.daddr=2001:db8::2\n" in text


GPRINT_STAMP = r"timestamp=\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d,"


def test_gprint_appendix_b3(tmp_path: Path) -> None:
    """B.3 (UNIXSOCK,BASE,GPRINT timestamp=1) with the fixes: IPv6 addresses as text
    (ulogd: ip.saddr=32.1.13.184) and the real tcp.offset."""
    stack = chain(FakeUnixsock, plugins()["BASE"])
    text = output(plugins()["GPRINT"], tmp_path / "gp.log", stack, appendix_b_events(stack),
                  timestamp=1)
    first, second = text.splitlines()
    assert re.fullmatch(GPRINT_STAMP + re.escape(
        "raw.pktlen=40,raw.pktcount=1,oob.prefix=TCP-IN: ,oob.time.sec=1700000000,"
        "oob.in=eth0,oob.out=eth1,oob.family=2,oob.protocol=0,raw.label=1,"
        "ip.saddr=192.168.1.10,ip.daddr=10.0.0.1,ip.protocol=6,ip.tos=16,ip.ttl=64,"
        "ip.totlen=40,ip.ihl=5,ip.csum=24108,ip.id=4321,ip.fragoff=16384,tcp.sport=40000,"
        "tcp.dport=80,tcp.seq=1000,tcp.ackseq=0,tcp.window=29200,tcp.offset=5,"
        "tcp.reserved=0,tcp.urg=0,tcp.ack=0,tcp.psh=0,tcp.rst=0,tcp.syn=1,tcp.fin=0,"
        "tcp.res1=0,tcp.res2=0,tcp.csum=0,oob.protocol=0"), first)
    assert re.fullmatch(GPRINT_STAMP + re.escape(
        "raw.pktlen=60,raw.pktcount=1,oob.prefix=V6,oob.time.sec=1700000000,oob.in=eth0,"
        "oob.out=eth1,oob.family=10,oob.protocol=0,raw.label=1,ip.saddr=2001:db8::1,"
        "ip.daddr=2001:db8::2,ip.protocol=6,ip6.payloadlen=20,ip6.priority=0,"
        "ip6.flowlabel=74565,ip6.hoplimit=63,ip6.nexthdr=6,tcp.sport=1234,tcp.dport=443,"
        "tcp.seq=5,tcp.ackseq=6,tcp.window=1000,tcp.offset=5,tcp.reserved=0,tcp.urg=0,"
        "tcp.ack=1,tcp.psh=0,tcp.rst=0,tcp.syn=1,tcp.fin=0,tcp.res1=0,tcp.res2=0,tcp.csum=0,"
        "oob.protocol=0"), second)


def test_gprint_without_timestamp_and_empty_events(tmp_path: Path) -> None:
    upstream = chain(plugins()["NFCT"])
    event = flow("192.0.2.1", "192.0.2.2", 17, 1, 2)
    text = output(plugins()["GPRINT"], tmp_path / "gp.log", upstream, [event, {}])
    assert text.splitlines() == [
        "orig.ip.saddr=192.0.2.1,orig.ip.daddr=192.0.2.2,orig.ip.protocol=17,orig.l4.sport=1,"
        "orig.l4.dport=2,orig.raw.pktlen=300,orig.raw.pktcount=5,reply.ip.saddr=192.0.2.2,"
        "reply.ip.daddr=192.0.2.1,reply.ip.protocol=17,reply.l4.sport=2,reply.l4.dport=1,"
        "reply.raw.pktlen=400,reply.raw.pktcount=4,ct.mark=0,ct.id=4660,ct.event=4,"
        "flow.start.sec=1700000000,flow.start.usec=250000,flow.end.sec=1700000042,"
        "flow.end.usec=500000,oob.family=2,oob.protocol=0",
        "",
    ]
    stamped = output(plugins()["GPRINT"], tmp_path / "gp2.log", upstream, [{}], timestamp=1)
    assert re.fullmatch(GPRINT_STAMP[:-1] + "\n", stamped)


def test_oprint_flow_with_nfct_keys(tmp_path: Path) -> None:
    """The seed stack ct1:NFCT,op1:OPRINT: addresses of both families as text, ct raw."""
    event = flow("2001:db8::1", "2001:db8::2", 58,
                 more={"icmpv6.type": 128, "icmpv6.code": 0, "ct": object()})
    text = output(plugins()["OPRINT"], tmp_path / "op.log", chain(plugins()["NFCT"]), [event])
    assert text == (
        "===>PACKET BOUNDARY\norig.ip.saddr=2001:db8::1\norig.ip.daddr=2001:db8::2\n"
        "orig.ip.protocol=58\norig.raw.pktlen=300\norig.raw.pktcount=5\n"
        "reply.ip.saddr=2001:db8::2\nreply.ip.daddr=2001:db8::1\nreply.ip.protocol=58\n"
        "reply.raw.pktlen=400\nreply.raw.pktcount=4\nicmpv6.code=0\nicmpv6.type=128\n"
        "ct.mark=0\nct.id=4660\nct.event=4\nflow.start.sec=1700000000\n"
        "flow.start.usec=250000\nflow.end.sec=1700000042\nflow.end.usec=500000\n"
        "oob.family=10\noob.protocol=0\nct=default\n"
    )


class Odd(Plugin):
    """Keys of the types no standard plugin produces."""

    name = "ODD"
    output_keys = keys(("odd.none", T.NONE), ("odd.rawstr", T.RAWSTR),
                       ("odd.int64", T.INT64), ("odd.bool", T.BOOL), ("odd%s", T.STRING))


def test_oprint_and_gprint_value_kinds(tmp_path: Path) -> None:
    """NONE prints <none>, RAWSTR default in OPRINT; GPRINT leaves both out; INT64 and
    BOOL are numbers; a '%' in a name or value is not a format."""
    upstream = chain(plugins()["NFCT"], Odd)
    event = {"odd.none": 7, "odd.rawstr": "0x01", "odd.int64": -5, "odd.bool": 1,
             "odd%s": "100%", "oob.family": 2}
    assert output(plugins()["OPRINT"], tmp_path / "op.log", upstream, [event]) == (
        "===>PACKET BOUNDARY\noob.family=2\nodd.none=<none>\nodd.rawstr=default\n"
        "odd.int64=-5\nodd.bool=1\nodd%s=100%\n"
    )
    assert output(plugins()["GPRINT"], tmp_path / "gp.log", upstream, [event]) == (
        "oob.family=2,odd.int64=-5,odd.bool=1,odd%s=100%\n"
    )


def test_gprint_reads_only_what_it_prints() -> None:
    gprint = instance(plugins()["GPRINT"], upstream=chain(plugins()["NFCT"]))
    names = [key.name for key in gprint.inputs]
    assert "ct" not in names and names[:2] == ["orig.ip.saddr", "orig.ip.daddr"]
    oprint = instance(plugins()["OPRINT"], upstream=chain(plugins()["NFCT"]))
    assert "ct" in [key.name for key in oprint.inputs]


@pytest.mark.parametrize("name", ["OPRINT", "GPRINT"])
def test_wildcard_outputs_drop_events_with_bad_values(name: str, tmp_path: Path) -> None:
    plugin = instance(plugins()[name], {"file": str(tmp_path / "x.log")}, chain(plugins()["NFCT"]))
    plugin.start()
    good = flow("192.0.2.1", "192.0.2.2", 17, 1, 2)
    passed, results = run(plugin, [{"ct.mark": "seven"}, {"orig.ip.saddr": 5}, good])
    plugin.stop()
    assert results == [ERROR, ERROR] and passed == [good]
    assert (tmp_path / "x.log").read_text().count("192.0.2.1") == 2


def test_layouts_per_key_set_stay_correct(tmp_path: Path) -> None:
    """Events of different shapes interleaved (the layout cache) print their own keys."""
    upstream = chain(plugins()["NFCT"])
    tcp = flow("192.0.2.1", "192.0.2.2", 6, 1, 2)
    icmp = flow("192.0.2.3", "192.0.2.4", 1, more={"icmp.type": 8, "icmp.code": 0})
    lines = output(plugins()["GPRINT"], tmp_path / "gp.log", upstream,
                   [tcp, icmp, tcp, icmp]).splitlines()
    assert lines[0] == lines[2] and lines[1] == lines[3]
    assert "icmp.code=0,icmp.type=8" in lines[1] and "icmp" not in lines[0]
    assert "orig.l4.sport=1" in lines[0] and "l4" not in lines[1]


# -- PWSNIFF ---------------------------------------------------------------------------

A4, B4, A6, B6 = "192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"


def segment(payload: bytes, dport: int = 21, sport: int = 40000, v6: bool = False,
            options: bytes = b"", hop_by_hop: bool = False) -> bytes:
    src, dst = (A6, B6) if v6 else (A4, B4)
    tcp: bytes = build_tcp(sport, dport, 1, 1, 0x18, 512, payload, src, dst, options=options)
    if not v6:
        return build_ipv4(src, dst, 6, tcp)
    if hop_by_hop:  # a Hop-by-Hop header (PadN) before TCP
        return build_ipv6(src, dst, 0, bytes([6, 0, 1, 4, 0, 0, 0, 0]) + tcp)
    return build_ipv6(src, dst, 6, tcp)


@pytest.mark.parametrize(("packet", "found"), [
    (segment(b"USER alice\r\n"), {"pwsniff.user": "alice"}),
    (segment(b"PASS secret\r\n"), {"pwsniff.pass": "secret"}),
    (segment(b"USER alice\r\nPASS secret\r\n", 110),
     {"pwsniff.user": "alice", "pwsniff.pass": "secret"}),
    (segment(b"user Bob\npass x\n", 110, v6=True), {"pwsniff.user": "Bob", "pwsniff.pass": "x"}),
    (segment(b"PASS two words \r\n", v6=True, hop_by_hop=True), {"pwsniff.pass": "two words"}),
    (segment(b"USER alice\r\n", options=bytes([1, 1, 8, 10]) + bytes(8)),
     {"pwsniff.user": "alice"}),
    (segment(b"USER first\r\nUSER second\r\n"), {"pwsniff.user": "second"}),
    (segment("USER jos\u00e9\r\n".encode()), {"pwsniff.user": "jos\u00e9"}),
    (segment(b"USER \xff\r\n"), {"pwsniff.user": "\udcff"}),
])  # fmt: skip
def test_pwsniff_finds_logins(packet: bytes, found: dict[str, str]) -> None:
    assert credentials(packet) == found


@pytest.mark.parametrize("packet", [
    segment(b"USER alice"),  # the line goes on in the next segment
    segment(b"USER \r\n"),
    segment(b"XUSER alice\r\n"),
    segment(b"USER alice\r\n", dport=80),
    segment(b"USER alice\r\n", dport=40000, sport=21),  # the server's side
    segment(b""),
    build_ipv4(A4, B4, 17, build_udp(40000, 21, b"USER alice\r\n", A4, B4)),
    build_ipv6(A6, B6, 17, build_udp(40000, 110, b"PASS x\r\n", A6, B6)),
    segment(b"USER alice\r\n")[:30],
    build_ipv4(A4, B4, 6, segment(b"USER alice\r\n")[20:], flags_frag=100),  # later fragment
    bytes.fromhex("0001080006040001"),  # ARP
    b"",
])  # fmt: skip
def test_pwsniff_ignores_other_packets(packet: bytes) -> None:
    assert credentials(packet) == {}


def test_pwsniff_passes_every_event_on() -> None:
    """ulogd 2.0.8 stopped every event; here all go on, credentials added when found."""
    plugin = instance(plugins()["PWSNIFF"])
    login = {"raw.pkt": segment(b"USER alice\r\n"), "oob.family": 2}
    other = {"raw.pkt": segment(b"GET / HTTP/1.0\r\n", dport=80), "oob.family": 2}
    empty: Event = {"oob.prefix": "x"}
    before = [dict(other), dict(empty)]
    passed, results = run(plugin, [login, other, empty])
    assert results == [] and passed == [login, other, empty]
    assert login["pwsniff.user"] == "alice" and "pwsniff.pass" not in login
    assert [other, empty] == before


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([b"\x45", b"\x60", b"\x46", b""]))
def test_pwsniff_never_raises(tail: bytes, head: bytes) -> None:
    credentials(head + tail)
    credentials(segment(tail)[: 20 + len(tail) % 40])


# -- stacks from a configuration -----------------------------------------------------------


def pipeline(tmp_path: Path, stack: str, sections: str = "") -> Pipeline:
    text = f"[global]\nstack={stack}\n{sections}"
    return Pipeline(ConfigFile(str(tmp_path / "ulogd.conf"), text=text), Context())


def test_pwsniff_stack_resolves_and_asks_nflog_for_the_packet(tmp_path: Path) -> None:
    built = pipeline(tmp_path, "log1:NFLOG,base1:BASE,pw1:PWSNIFF,ip2str1:IP2STR,j1:JSON",
                     f'[j1]\nfile="{tmp_path / "j.json"}"\n')
    wanted = built.wanted_keys(built.stacks[0])
    assert wanted is not None and {"raw.pkt", "pwsniff.user", "pwsniff.pass"} <= wanted

