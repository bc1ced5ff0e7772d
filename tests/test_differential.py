"""Differential tests: Debian's ulogd 2.0.8 and ``nfkit logd`` log the same packets.

Inside a lab (namespaces a and b joined by a veth pair, IPv4 + IPv6) every
packet entering or leaving b is logged twice by adjacent rules, to NFLOG
group 1 (read by the real ``/usr/sbin/ulogd``) and group 2 (read by
``nfkit logd``).  Both daemons read the same ulogd.conf text (only the group
and file names differ) with two stacks sharing the NFLOG instance::

    log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU
    log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac2str1:HWHDR,json1:JSON

The kernel hands the same packets in the same order to both groups, so after
SIGTERM (both daemons must flush) the LOGEMU files must be identical line by
line and the JSON files object by object.  Two things are not compared for
plain equality, and both are listed explicitly below:

* instants: the kernel stamps one packet a few microseconds apart for the two
  groups, and outbound packets carry each daemon's own clock (CLOCK_CHECKS);
* the ulogd 2.0.8 bugs nfkit fixes on purpose (ULOGD_BUG_FIXES, BUG_CHECKS):
  ulogd's output is turned into what nfkit must print, then compared exactly.

The same harness compares ulogd with itself (without the bug fixes) to show
that nothing else varies between two readers of the same packets.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import re
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nfkit.lab import Lab, traffic_argv, unavailable_reason
from reference import (
    DaemonRun,
    iptables_restore,
    missing_reference,
    remove_workdir,
    render_config,
)

pytestmark = [pytest.mark.lab, pytest.mark.reference]

STACKS = (
    "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU",
    "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac2str1:HWHDR,json1:JSON",
)
FILES = {"emu1": "emu.log", "json1": "json.log"}
GROUPS = (1, 2)
#: (ip6tables?, chain) -> [(match, prefix)]: every packet matches exactly one
#: entry.  The prefixes cover PRINTPKT's extra separator (a trailing space gives
#: "out:  IN="), no prefix at all, JSON escapes and UTF-8, and bytes that are
#: not UTF-8 (jansson leaves such a string out of the object).
LOG_RULES: dict[tuple[bool, str], list[tuple[str, bytes | None]]] = {
    (False, "INPUT"): [("", b"in")],
    (False, "OUTPUT"): [("", b"out: ")],
    (True, "INPUT"): [("-p ipv6-icmp", None), ("! -p ipv6-icmp", b"in6 \xff\xfe")],
    (True, "OUTPUT"): [("", '6out "q" \\ é'.encode())],
}
MARK = 0x2A
UID, GID = 4242, 4343  # the non-root owner of b's client sockets
DATA = b"nfkit differential test\n"
TCP_IN, TCP_OUT, TCP_URGENT, TCP_CLOSED = 8080, 8081, 8082, 8083
UDP_OUT, UDP_CLOSED, UDP_REJECTED = 5000, 5001, 5002
URGENT = b"!"  # one out-of-band byte: a segment with URG and URGP=
BIG = 3000  # UDP payload bytes: more than the MTU (logged before fragmentation)
HOOK_INPUT, HOOK_OUTPUT = 1, 3
#: How far the two groups' timestamps of one packet may be apart.  Inbound
#: packets (nfnetlink_log stamps hooks 0-2 only) normally share the skb's
#: receive stamp, but TCP segments carry the sender's monotonic delivery time,
#: for which the kernel reads the real-time clock once per NFLOG rule: a few
#: microseconds apart (2 ms leaves room for a virtual CPU being descheduled
#: between the two rules).  Outbound packets get no kernel stamp, each daemon
#: uses its own clock when it reads the batch, and the kernel holds batches up
#: to its 1 s flush timer.
KERNEL_STAMP_JITTER = timedelta(milliseconds=2)
DAEMON_CLOCK_TOLERANCE = timedelta(seconds=2.5)


def mangle_rules() -> str:
    """Marks: inbound TCP to TCP_IN on PREROUTING, every outbound UDP on OUTPUT."""
    return (
        "*mangle\n"
        f"-A PREROUTING -p tcp --dport {TCP_IN} -j MARK --set-mark {MARK:#x}\n"
        f"-A OUTPUT -p udp -j MARK --set-mark {MARK:#x}\n"
        "COMMIT\n"
    )


def logging_rules(ipv6: bool) -> bytes:
    """Each packet in and out of b logged to both groups, in one transaction.

    Nothing excludes ICMPv6, so neighbour discovery is logged too.  UDP to
    UDP_REJECTED is answered by an ICMP error with code 0 (not an echo), the
    case where ulogd's PRINTPKT prints a bogus ``ID=0 SEQ=0``.
    """
    reject = b"icmp6-no-route" if ipv6 else b"icmp-net-unreachable"
    lines = [b"*filter"]
    for (family_v6, chain), entries in LOG_RULES.items():
        if family_v6 != ipv6:
            continue
        for match, prefix in entries:
            for group in GROUPS:
                rule = f"-A {chain} {match} -j NFLOG --nflog-group {group}".encode()
                if prefix is not None:  # iptables-restore quoting
                    quoted = prefix.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
                    rule += b' --nflog-prefix "%s"' % quoted
                lines.append(rule)
    lines.append(b"-A INPUT -p udp --dport %d -j REJECT --reject-with %s" % (UDP_REJECTED, reject))
    return b"\n".join([*lines, b"COMMIT", b""])


# Inserted above the NFLOG rules: logging stops at the same packet for both groups
# and the NFLOG rules' counters stay final.
STOP_LOGGING = "*filter\n-I INPUT 1 -j ACCEPT\n-I OUTPUT 1 -j ACCEPT\nCOMMIT\n"


# ---------------------------------------------------------------- crafted packets
#
# Sent from a raw socket in a to b; b logs them on INPUT.  Each has TTL/hop
# limit CRAFTED_TTL (real traffic uses 64) and an identifier in a field both
# outputs print -- the IPv4 ID, the IPv6 flow label -- so a deviation can be
# tied to the packet it belongs to.

CRAFTED_TTL = 99
GATEWAY, POINTER, MTU = "192.0.2.99", 20, 1280
SPI_ESP, SPI_AH, SCTP_CHECKSUM = 0x1234ABCD, 0xABCDEF01, 0xDEADBEEF


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(ident: int, proto: int, payload: bytes, tos: int = 0, flags: int = 0x4000,
         options: bytes = b"", ttl: int = CRAFTED_TTL) -> bytes:
    """An IPv4 packet from a to b (the kernel fills in length and checksum)."""
    ihl = 5 + len(options) // 4
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, 0, ident, flags, ttl, proto, 0,
                       socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.2")
                       ) + options + payload


def ipv6(flowlabel: int, nexthdr: int, payload: bytes, traffic_class: int = 0) -> bytes:
    """An IPv6 packet from a to b."""
    first = (6 << 28) | (traffic_class << 20) | flowlabel
    return struct.pack("!IHBB16s16s", first, len(payload), nexthdr, CRAFTED_TTL,
                       socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
                       socket.inet_pton(socket.AF_INET6, "2001:db8::2")) + payload


def icmp(icmp_type: int, code: int, rest: bytes, body: bytes = b"") -> bytes:
    """An ICMP message; ``rest`` is the 4-byte rest-of-header field."""
    head = struct.pack("!BBH", icmp_type, code, 0) + rest + body
    return head[:2] + struct.pack("!H", checksum(head)) + head[4:]


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def sctp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHII", sport, dport, 0, SCTP_CHECKSUM) + bytes(4)


def esp() -> bytes:
    return struct.pack("!II", SPI_ESP, 1) + bytes(8)


def ah(nexthdr: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", nexthdr, 4, 0, SPI_AH, 1) + bytes(12) + payload


# The start of a datagram b could have sent, quoted by the ICMP errors below.
QUOTED = ipv4(0x1111, 17, udp(5555, 53, b""), flags=0, ttl=64)


def crafted_ipv4() -> dict[int, bytes]:
    """IPv4 ID -> packet: L4 edge cases and every arm of ulogd's ICMP code switch."""
    return {
        0xC001: ipv4(0xC001, 132, sctp(5000, 5001)),
        0xC002: ipv4(0xC002, 50, esp()),
        0xC003: ipv4(0xC003, 51, ah(17, udp(5000, 5001, b"ah"))),
        0xC004: ipv4(0xC004, 47, bytes(4)),  # GRE: printed as PROTO=47
        0xC005: ipv4(0xC005, 6, bytes(8)),  # truncated TCP header
        0xC006: ipv4(0xC006, 17, bytes(4)),  # truncated UDP header
        0xC007: ipv4(0xC007, 1, bytes([8, 0, 0, 0])),  # truncated ICMP header
        0xC008: ipv4(0xC008, 1, icmp(5, 1, socket.inet_aton(GATEWAY), QUOTED)),
        0xC009: ipv4(0xC009, 1, icmp(12, 0, bytes([POINTER, 0, 0, 0]), QUOTED)),
        0xC00A: ipv4(0xC00A, 1, icmp(3, 4, struct.pack("!HH", 0, MTU), QUOTED)),
        0xC00B: ipv4(0xC00B, 1, icmp(11, 0, bytes(4), QUOTED)),
        0xC00C: ipv4(0xC00C, 1, icmp(3, 5, bytes(4), QUOTED)),
        0xC00D: ipv4(0xC00D, 1, icmp(3, 12, bytes(4), QUOTED)),
        0xC00E: ipv4(0xC00E, 17, udp(5000, 5003, b"opt"), options=bytes([0x94, 4, 0, 0])),
        0xC00F: ipv4(0xC00F, 17, udp(5000, 5003, b"tos"), tos=0xB9, flags=0xC000),  # CE DF
    }


def crafted_ipv6() -> dict[int, bytes]:
    """IPv6 flow label -> packet: extension headers, fragments, ESP/AH/SCTP, truncation."""
    pad = bytes([1, 4, 0, 0, 0, 0])  # a PadN option filling an 8-byte header
    data = udp(5000, 5003, b"ext")
    return {
        0xC0001: ipv6(0xC0001, 0, bytes([60, 0]) + pad + bytes([17, 0]) + pad + data),
        0xC0002: ipv6(0xC0002, 44, struct.pack("!BBHI", 17, 0, 0x0001, 0xF00D)
                      + udp(5000, 5003, bytes(16))),  # first fragment, more follow
        0xC0003: ipv6(0xC0003, 44, struct.pack("!BBHI", 17, 0, 16 << 3, 0xF00D) + bytes(8)),
        0xC0004: ipv6(0xC0004, 50, esp()),
        0xC0005: ipv6(0xC0005, 51, ah(17, udp(5000, 5003, b"ah"))),
        0xC0006: ipv6(0xC0006, 132, sctp(5000, 5001)),
        0xC0007: ipv6(0xC0007, 58, bytes([128, 0])),  # truncated ICMPv6 header
        0xC0008: ipv6(0xC0008, 6, bytes(8)),  # truncated TCP header
        0xC0009: ipv6(0xC0009, 17, udp(5000, 5003, b"tc"), traffic_class=0xB8),
        0xC000A: ipv6(0xC000A, 58, icmp(2, 0, struct.pack("!I", MTU), bytes(40))),
    }


def send_crafted_packets(lab: Lab) -> None:
    with lab.entered(lab.a):
        sock4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        sock6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with sock4, sock6:
        for packet in crafted_ipv4().values():
            sock4.sendto(packet, ("192.0.2.2", 0))
        for packet in crafted_ipv6().values():
            sock6.sendto(packet, ("2001:db8::2", 0))


# ---------------------------------------------------------------- traffic


def run_as_user(lab: Lab, ns: Any, *argv: str) -> None:
    """Run a traffic command as UID/GID so the kernel reports them on b's OUTPUT."""
    setpriv = ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups"]
    lab.run(ns, *setpriv, *argv, timeout=30)


def urgent_exchange(lab: Lab, ns: Any, dst: str, port: int) -> None:
    """A connection from ``ns`` sending URGENT out of band, then DATA; echoed back."""
    with lab.tcp_server(lab.owner_of(dst), port) as server:
        with lab.entered(ns):
            sock = socket.create_connection((dst, port), timeout=10)
        with sock:
            sock.send(URGENT, socket.MSG_OOB)
            sock.sendall(DATA)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        server.result()


def refused_connection(lab: Lab, ns: Any, dst: str, port: int) -> None:
    """SYN to a closed port: answered by RST/ACK."""
    with lab.entered(ns):
        sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
    with sock, contextlib.suppress(ConnectionRefusedError):
        sock.settimeout(10)
        sock.connect((dst, port))
        raise AssertionError(f"{dst}:{port} accepted a connection")


def generate_traffic(lab: Lab) -> None:
    a, b = lab.a, lab.b
    for dst in (b.ip4, b.ip6):  # echo in, reply out; first IPv6 contact runs ND
        assert dst is not None and lab.ping(a, dst, count=2, interval=0.05)
    for dst in (a.ip4, a.ip6):  # echo out, reply in
        assert dst is not None and lab.ping(b, dst, count=1)
    for dst in ("127.0.0.1", "::1"):  # loopback: in and out on lo, whose header is all zeros
        assert lab.ping(b, dst, count=1)
    # a asks for ECN: ECE/CWR in the handshake, ECT in TOS / traffic class
    lab.sysctl(a, "net.ipv4.tcp_ecn", 1)
    for b_addr, a_addr in ((b.ip4, a.ip4), (b.ip6, a.ip6)):
        assert b_addr is not None and a_addr is not None
        # inbound connection (marked on PREROUTING): SYN, SYN/ACK, PSH/ACK, FIN
        assert lab.tcp_exchange(a, b_addr, TCP_IN, data=DATA) == DATA
        urgent_exchange(lab, b, a_addr, TCP_URGENT)
        refused_connection(lab, a, b_addr, TCP_CLOSED)  # SYN in, RST/ACK out
        refused_connection(lab, b, a_addr, TCP_CLOSED)  # SYN out, RST/ACK in
        # outbound connection from a socket owned by UID/GID
        with lab.tcp_server(a, TCP_OUT) as server:
            run_as_user(lab, b, *traffic_argv("tcp-client", "--dst", a_addr, "--port",
                                              str(TCP_OUT), "--data-hex", DATA.hex()))
            server.result()
        # outbound UDP (marked on OUTPUT, owned by UID/GID), received by a
        with lab.udp_receiver(a, UDP_OUT, count=2, idle=1.0) as receiver:
            run_as_user(lab, b, *traffic_argv("udp-send", "--dst", a_addr, "--port",
                                              str(UDP_OUT), "--count", "2", "--size", "24"))
            assert receiver.result()["received"] == 2
        # inbound UDP answered by ICMP errors: port unreachable, then REJECT's code 0
        lab.udp(a, b_addr, UDP_CLOSED, count=1, size=8)
        lab.udp(a, b_addr, UDP_REJECTED, count=1, size=8)
        # more than the MTU: reassembled before INPUT, fragmented after OUTPUT
        lab.udp(a, b_addr, UDP_CLOSED, count=1, size=BIG)
        lab.udp(b, a_addr, UDP_CLOSED, count=1, size=BIG)
    send_crafted_packets(lab)
    time.sleep(0.3)  # let b's last ICMP errors go out before logging stops


def nflog_rule_packets(lab: Lab, group: int) -> int:
    """Packets the kernel handed to ``group`` (the NFLOG rules' counters).

    Read as bytes: a prefix need not be UTF-8 (``Lab.rule_counters`` decodes).
    """
    total = 0
    for save in ("iptables-save", "ip6tables-save"):
        dump = lab.run(lab.b, save, "-c", "-t", "filter", text=False).stdout
        for m in re.finditer(rb"^\[(\d+):\d+\] -A \S+ .*--nflog-group (\d+)", dump, re.M):
            if int(m[2]) == group:
                total += int(m[1])
    return total


# ---------------------------------------------------------------- running both


@dataclass
class Outputs:
    """What one daemon wrote, plus its exit status."""

    emu: list[str]
    json: list[str]
    returncode: int
    log: str


@dataclass
class Scenario:
    first: Outputs  # group 1
    second: Outputs  # group 2
    #: packets each group was handed by the kernel (NFLOG rule counters).
    logged_by_kernel: int


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """Run this process, and every program it starts, on a single CPU.

    The kernel evaluates both NFLOG rules of a packet in one softirq, but a
    program on another CPU can change the packet's socket in between: the
    server's accept() attaching the file makes UID/GID appear for the second
    group only.  On one CPU the two rules always see the same socket.
    """
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run_scenario(kinds: tuple[str, str], workdir: Path) -> Scenario:
    """Run daemon ``kinds[0]`` on group 1 and ``kinds[1]`` on group 2, same traffic."""
    with one_cpu(), Lab() as lab:
        iptables_restore(lab, lab.b, mangle_rules())
        iptables_restore(lab, lab.b, mangle_rules(), ipv6=True)
        runs = []
        try:
            for kind, group in zip(kinds, GROUPS, strict=True):
                directory = workdir / f"group{group}-{kind}"
                config = render_config(STACKS, group, directory, FILES)
                runs.append(DaemonRun(lab, lab.b, kind, directory, config).start())
            # the rules appear after both daemons listen, atomically per family
            iptables_restore(lab, lab.b, logging_rules(ipv6=False))
            iptables_restore(lab, lab.b, logging_rules(ipv6=True), ipv6=True)
            generate_traffic(lab)
            iptables_restore(lab, lab.b, STOP_LOGGING)
            iptables_restore(lab, lab.b, STOP_LOGGING, ipv6=True)
            counts = {nflog_rule_packets(lab, group) for group in GROUPS}
            assert len(counts) == 1, f"the groups were handed different packets: {counts}"
            time.sleep(1.5)  # the kernel flushes NFLOG batches after at most 1 s
            for run in runs:
                run.stop()
        finally:
            for run in runs:
                run.kill()
        first, second = (
            Outputs(run.output("emu.log").splitlines(), run.output("json.log").splitlines(),
                    -1 if run.returncode is None else run.returncode, run.diagnostics())
            for run in runs
        )
        return Scenario(first, second, counts.pop())


def lab_scenario(kinds: tuple[str, str]) -> Iterator[Scenario]:
    reason = unavailable_reason() or missing_reference(STACKS)
    if reason:
        pytest.skip(reason)
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) not installed")
    workdir = Path(tempfile.mkdtemp(prefix="nfkit-differential-"))
    try:
        yield run_scenario(kinds, workdir)
    finally:
        remove_workdir(workdir)


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    """ulogd on group 1, nfkit on group 2; one lab run shared by the tests (~10 s)."""
    yield from lab_scenario(("ulogd", "nfkit"))


@pytest.fixture(scope="module")
def reference_twice() -> Iterator[Scenario]:
    """ulogd on both groups: what varies between two readers of the same packets."""
    yield from lab_scenario(("ulogd", "ulogd"))


# ---------------------------------------------------------------- ulogd bugs nfkit fixes


@dataclass
class Fix:
    """A ulogd 2.0.8 bug nfkit fixes on purpose: ulogd prints ``ulogd`` (a regular
    expression), nfkit prints ``nfkit`` (its replacement) instead.

    ``ident`` ties the entry to one crafted packet (its IPv4 ID / IPv6 flow
    label), where it must apply exactly once; without it the entry applies to
    every line.  ``json_added`` are the keys nfkit's JSON has in addition, with
    their values (ulogd never sets them).
    """

    why: str
    ulogd: str
    nfkit: str
    ident: int | None = None
    json_added: dict[str, int] = field(default_factory=dict)


#: The table of deliberate deviations (ulogd2.md §11), applied in this order.
ULOGD_BUG_FIXES = (
    # §11 item 10: PRINTPKT picks the ICMP extras with switch (code) but its case
    # labels are ICMP types; nfkit switches on the type, as the kernel's LOG target.
    Fix("redirect: GATEWAY= is printed for code 5 only", "TYPE=5 CODE=1 ",
        f"TYPE=5 CODE=1 GATEWAY={GATEWAY} ", ident=0xC008),
    Fix("parameter problem: PARAMETER= for code 12 only; code 0 gets the echo fields",
        "TYPE=12 CODE=0 ID=0 SEQ=0 ", f"TYPE=12 CODE=0 PARAMETER={POINTER} ", ident=0xC009),
    Fix("fragmentation needed: MTU= is never printed", "TYPE=3 CODE=4 ",
        f"TYPE=3 CODE=4 MTU={MTU} ", ident=0xC00A),
    Fix("code 5 prints GATEWAY= whatever the type", "TYPE=3 CODE=5 GATEWAY=0.0.0.0 ",
        "TYPE=3 CODE=5 ", ident=0xC00C),
    Fix("code 12 prints PARAMETER= whatever the type", "TYPE=3 CODE=12 PARAMETER=0 ",
        "TYPE=3 CODE=12 ", ident=0xC00D),
    Fix("any non-echo ICMP message with code 0 gets ID=0 SEQ=0 (keys BASE left unset)",
        r"PROTO=ICMP TYPE=(?!0 |8 )(\d+) CODE=0 ID=0 SEQ=0 ", r"PROTO=ICMP TYPE=\1 CODE=0 "),
    # BASE 2.0.8 declares ahesp.spi but never sets it; nfkit decodes the SPI.
    Fix("ESP: the SPI is decoded", "PROTO=ESP INCOMPLETE", f"PROTO=ESP SPI={SPI_ESP:#x} ",
        ident=0xC002, json_added={"ahesp.spi": SPI_ESP}),
    Fix("AH: the SPI is decoded", "PROTO=AH INCOMPLETE", f"PROTO=AH SPI={SPI_AH:#x} ",
        ident=0xC003, json_added={"ahesp.spi": SPI_AH}),
    Fix("IPv6 ESP: 2.0.8 stops without ip.protocol/ip6.nexthdr, so PRINTPKT says PROTO=0",
        "PROTO=0 ", f"PROTO=ESP SPI={SPI_ESP:#x} ", ident=0xC0004,
        json_added={"ip.protocol": 50, "ip6.nexthdr": 50, "ahesp.spi": SPI_ESP}),
    Fix("IPv6 AH: the SPI of the header walked over is kept (JSON only)", "PROTO=UDP ",
        "PROTO=UDP ", ident=0xC0005, json_added={"ahesp.spi": SPI_AH}),
    # BASE 2.0.8 parses SCTP over IPv4 only.
    Fix("SCTP over IPv6 is parsed", "PROTO=SCTP INCOMPLETE", "PROTO=SCTP SPT=5000 DPT=5001 ",
        ident=0xC0006,
        json_added={"src_port": 5000, "dest_port": 5001, "sctp.csum": SCTP_CHECKSUM}),
    # A non-first fragment has no L4 header; the kernel's LOG prints just the name.
    # (b does not reassemble IPv6 before INPUT: the big datagram and 0xC0003.)
    Fix("non-first IPv6 fragment: PROTO=<name> alone, not INCOMPLETE",
        r"(FRAG: [1-9]\d* ID: [0-9a-f]{8} PROTO=\w+ )INCOMPLETE", r"\1"),
    # PRINTPKT 2.0.8 writes INCOMPLETE without the space every other item ends with.
    Fix("INCOMPLETE is followed by a space", r"INCOMPLETE(?=\S)", "INCOMPLETE "),
)

CRAFTED_IDENT = re.compile(rf"(?:TTL={CRAFTED_TTL} ID|HOPLIMIT={CRAFTED_TTL} FLOWLBL)=(\d+) ")


def crafted_ident(event: dict[str, Any]) -> int | None:
    """The identifier of a crafted packet in a JSON object, None for real traffic."""
    if event.get("ip.ttl") == CRAFTED_TTL:
        return int(event["ip.id"])
    if event.get("ip6.hoplimit") == CRAFTED_TTL:
        return int(event["ip6.flowlabel"])
    return None


def apply_fixes(body: str, fixes: tuple[Fix, ...], used: set[int]) -> str:
    """ulogd's PRINTPKT text turned into what nfkit must print."""
    m = CRAFTED_IDENT.search(body)
    ident = int(m[1]) if m else None
    for index, fix in enumerate(fixes):
        if fix.ident is None:
            body = re.sub(fix.ulogd, fix.nfkit, body)
        elif fix.ident == ident:
            body, count = re.subn(fix.ulogd, fix.nfkit, body)
            if count == 1:
                used.add(index)
    return body


def stale_fixes(fixes: tuple[Fix, ...], used: set[int]) -> list[str]:
    """Entries for one packet that did not find their text in ulogd's output."""
    return [f"ulogd no longer prints {fix.ulogd!r} for packet {fix.ident:#x} ({fix.why})"
            for index, fix in enumerate(fixes) if fix.ident is not None and index not in used]


# ---------------------------------------------------------------- LOGEMU


LOGEMU_HEAD = re.compile(r"(?P<time>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d) (?P<host>\S+) ")


def split_logemu(line: str) -> tuple[str, str, str]:
    """``Mmm dd hh:mm:ss host body`` -> (time, host, body)."""
    m = LOGEMU_HEAD.match(line)
    assert m, f"not a LOGEMU line: {line!r}"
    return m["time"], m["host"], line[m.end():]


def logemu_time(text: str) -> datetime:
    return datetime.strptime(f"{datetime.now().year} {text}", "%Y %b %d %H:%M:%S")


def compare_logemu(ulogd: list[str], other: list[str], fixes: tuple[Fix, ...]) -> list[str]:
    """Differences between two LOGEMU files, as readable lines (empty: identical).

    Bodies must be equal once ``fixes`` are applied to ulogd's; hosts equal;
    times within the daemon-clock tolerance (second resolution: the exact
    instants are compared in JSON).
    """
    problems = []
    for number, (u_line, o_line) in enumerate(zip(ulogd, other, strict=False), 1):
        u_time, u_host, _ = split_logemu(u_line)
        o_time, o_host, _ = split_logemu(o_line)
        if u_host != o_host:
            problems.append(f"line {number}: host {o_host!r}, ulogd wrote {u_host!r}")
        if abs(logemu_time(u_time) - logemu_time(o_time)) > DAEMON_CLOCK_TOLERANCE:
            problems.append(f"line {number}: time {o_time!r}, ulogd wrote {u_time!r}")
    used: set[int] = set()
    expected = [apply_fixes(split_logemu(line)[2], fixes, used) for line in ulogd]
    actual = [split_logemu(line)[2] for line in other]
    problems += stale_fixes(fixes, used)
    if expected != actual:
        problems += difflib.unified_diff(expected, actual, "ulogd (bugs fixed)", "other",
                                         lineterm="", n=0)
    return problems


# ---------------------------------------------------------------- JSON


JSON_TIMESTAMP = re.compile(
    r"(?P<datetime>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?)(?P<offset>[+-]\d{4})?"
)
Check = Callable[[dict[str, Any], dict[str, Any]], "str | None"]


def has_kernel_timestamp(event: dict[str, Any]) -> bool:
    """nfnetlink_log timestamps packets on PREROUTING, INPUT and FORWARD only."""
    return bool(event.get("oob.hook", HOOK_INPUT) < HOOK_OUTPUT)


def instant(event: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(event["oob.time.sec"]) + timedelta(
        microseconds=event.get("oob.time.usec", 0))


def time_check(ulogd: dict[str, Any], other: dict[str, Any]) -> str | None:
    """``oob.time.sec``/``oob.time.usec``: the same instant, within what the kernel
    and the daemons' clocks allow (see KERNEL_STAMP_JITTER)."""
    if not 0 <= other["oob.time.usec"] < 1_000_000:
        return f"oob.time.usec: {other['oob.time.usec']} out of range"
    kernel = has_kernel_timestamp(ulogd)
    tolerance = KERNEL_STAMP_JITTER if kernel else DAEMON_CLOCK_TOLERANCE
    if abs(instant(other) - instant(ulogd)) > tolerance:
        source = "kernel timestamp" if kernel else "daemon clocks"
        return (f"oob.time: {instant(other).isoformat()}, ulogd {instant(ulogd).isoformat()} "
                f"({source}, tolerance {tolerance.total_seconds()} s)")
    return None


def timestamp_check(ulogd: dict[str, Any], other: dict[str, Any],
                    utc_offset_fixed: bool = False) -> str | None:
    """``timestamp``: the object's own ``oob.time.*`` in local time with µs, and
    ulogd's UTC offset -- or, with ``utc_offset_fixed``, ``+0000`` where ulogd
    2.0.8 writes none (ulogd2.md §11 item 6: the offset is dropped when zero).
    The instant itself is compared through ``oob.time.*``."""
    u = JSON_TIMESTAMP.fullmatch(ulogd["timestamp"])
    o = JSON_TIMESTAMP.fullmatch(other["timestamp"])
    if u is None or o is None:
        return f"timestamp: {other['timestamp']!r}, ulogd {ulogd['timestamp']!r} (not ISO 8601)"
    offset = u["offset"] or ("+0000" if utc_offset_fixed else None)
    if o["offset"] != offset:
        return f"timestamp: offset {o['offset']!r}, expected {offset!r}"
    if o["datetime"] != instant(other).isoformat(timespec="microseconds"):
        return f"timestamp: {other['timestamp']!r} is not oob.time {instant(other).isoformat()}"
    return None


def tcp_offset_check(ulogd: dict[str, Any], other: dict[str, Any]) -> str | None:
    """``tcp.offset``: ulogd always prints 0 (ulogd2.md §11 item 9); nfkit the real one.

    2.0.8 byte-swaps the 4-bit data-offset field, which yields 0 on
    little-endian hosts.  The real value is checked against ulogd's own
    lengths: the TCP length minus 4*offset must be the payload, which in this
    traffic is URGENT on URG segments, DATA on other PSH segments and nothing
    otherwise.  (``tcp.reserved`` has the same bug, but its real value is 0 in
    Linux's segments, so it needs no entry.)
    """
    if ulogd["tcp.offset"] != 0:
        return f"ulogd printed tcp.offset={ulogd['tcp.offset']} (expected its bug's 0)"
    if ulogd["oob.family"] == 2:
        l4_length = ulogd["ip.totlen"] - 4 * ulogd["ip.ihl"]
    else:
        l4_length = ulogd["ip6.payloadlen"]
    payload = len(URGENT) if ulogd["tcp.urg"] else len(DATA) if ulogd["tcp.psh"] else 0
    words = (l4_length - payload) // 4
    if other["tcp.offset"] != words:
        return f"tcp.offset: {other['tcp.offset']}, the TCP header has {words} words"
    return None


#: Keys holding instants: never equal to the microsecond, so compared with a tolerance.
CLOCK_CHECKS: dict[str, Check] = {
    "oob.time.sec": time_check,
    "oob.time.usec": time_check,
    "timestamp": timestamp_check,
}
#: Keys where ulogd 2.0.8 is wrong and nfkit deliberately right (ulogd2.md §11).
BUG_CHECKS: dict[str, Check] = {
    "timestamp": functools.partial(timestamp_check, utc_offset_fixed=True),
    "tcp.offset": tcp_offset_check,
}


def compare_json_event(u_pairs: list[tuple[str, Any]], o_pairs: list[tuple[str, Any]],
                       fixes: tuple[Fix, ...], used: set[int]) -> list[str]:
    """Differences between one ulogd object and the other's (key order included)."""
    ulogd, other = dict(u_pairs), dict(o_pairs)
    checks = {**CLOCK_CHECKS, **BUG_CHECKS} if fixes else CLOCK_CHECKS
    problems = []
    ident = crafted_ident(ulogd)
    for index, fix in enumerate(fixes):
        if fix.ident is None or fix.ident != ident or not fix.json_added:
            continue
        added = {key: other.get(key) for key in fix.json_added}
        if added != fix.json_added or any(key in ulogd for key in added):
            problems.append(f"{fix.why}: expected {fix.json_added} added, got {added}")
        o_pairs = [(k, v) for k, v in o_pairs if k not in fix.json_added]
        used.add(index)
    if [k for k, _ in u_pairs] != [k for k, _ in o_pairs]:
        missing = [k for k, _ in u_pairs if k not in other]
        extra = [k for k, _ in o_pairs if k not in ulogd]
        problems.append(f"keys: missing {missing}, extra {extra}" if missing or extra
                        else f"key order: {[k for k, _ in o_pairs]}")
    for key, u_value in u_pairs:
        if key not in other:
            continue
        if key in checks:
            problem = checks[key](ulogd, other)
        elif other[key] != u_value or type(other[key]) is not type(u_value):
            problem = f"{key}: {other[key]!r}, ulogd {u_value!r}"
        else:
            problem = None
        if problem and problem not in problems:
            problems.append(problem)
    return problems


def compare_json(ulogd: list[str], other: list[str], fixes: tuple[Fix, ...]) -> list[str]:
    """Differences between two JSON files, object by object."""
    problems = []
    used: set[int] = set()
    for number, (u_line, o_line) in enumerate(zip(ulogd, other, strict=False), 1):
        try:
            o_pairs = json.loads(o_line, object_pairs_hook=list)
        except ValueError as exc:
            problems.append(f"object {number}: invalid JSON ({exc}): {o_line}")
            continue
        u_pairs = json.loads(u_line, object_pairs_hook=list)
        for problem in compare_json_event(u_pairs, o_pairs, fixes, used):
            problems.append(f"object {number} ({describe(dict(u_pairs))}): {problem}")
    text_only = {index for index, fix in enumerate(fixes) if not fix.json_added}
    return problems + stale_fixes(fixes, used | text_only)


def describe(event: dict[str, Any]) -> str:
    """A short label for a JSON object in failure messages."""
    proto = event.get("ip.protocol", event.get("ip6.nexthdr", "?"))
    hook = {HOOK_INPUT: "in", HOOK_OUTPUT: "out"}.get(event.get("oob.hook", -1), "?")
    ident = crafted_ident(event)
    label = f" crafted {ident:#x}" if ident is not None else ""
    return f"{hook} proto {proto} {event.get('src_ip')} > {event.get('dest_ip')}{label}"


def report(problems: list[str], limit: int = 80) -> str:
    more = f"\n... {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n".join(problems[:limit]) + more


# ---------------------------------------------------------------- tests


def test_both_daemons_exit_cleanly_on_sigterm(scenario: Scenario) -> None:
    for name, out in (("ulogd", scenario.first), ("nfkit", scenario.second)):
        assert out.returncode == 0, f"{name} exit status {out.returncode}\n{out.log}"


def test_every_packet_is_logged_once_per_stack(scenario: Scenario) -> None:
    """No daemon loses or duplicates an event: lines == the NFLOG rule counter."""
    expected = scenario.logged_by_kernel
    for name, out in (("ulogd", scenario.first), ("nfkit", scenario.second)):
        counts = {"LOGEMU lines": len(out.emu), "JSON objects": len(out.json)}
        assert counts == dict.fromkeys(counts, expected), (name, counts, expected)


def test_traffic_covers_the_cases(scenario: Scenario) -> None:
    """ulogd's output proves the scenario exercised what it claims."""
    text = "\n".join(split_logemu(line)[2] for line in scenario.first.emu)
    wanted = {
        "ICMP echo in": "PROTO=ICMP TYPE=8 CODE=0 ID=",
        "ICMP echo reply out": "PROTO=ICMP TYPE=0 CODE=0 ID=",
        "ICMP port unreachable": "PROTO=ICMP TYPE=3 CODE=3 ",
        "ICMP code 0 error": "PROTO=ICMP TYPE=3 CODE=0 ",
        "ICMPv6 echo": "PROTO=ICMPv6 TYPE=128 CODE=0 ID=",
        "ICMPv6 echo reply": "PROTO=ICMPv6 TYPE=129 CODE=0 ID=",
        "neighbour solicitation": "PROTO=ICMPv6 TYPE=135 ",
        "neighbour advertisement": "PROTO=ICMPv6 TYPE=136 ",
        "ICMPv6 port unreachable": "PROTO=ICMPv6 TYPE=1 CODE=4 ",
        "ICMPv6 no route": "PROTO=ICMPv6 TYPE=1 CODE=0 ",
        "SYN": " SYN URGP=0 ",
        "SYN/ACK": " ACK SYN URGP=0 ",
        "PSH/ACK": " ACK PSH URGP=0 ",
        "FIN": " FIN URGP=0 ",
        "UDP": "PROTO=UDP SPT=",
        "mark": f"MARK={MARK:#x} ",
        "uid/gid": f"UID={UID} GID={GID} ",
        "prefix with trailing space": "out:  IN= OUT=",
        "no prefix": "^ IN=",
        "prefix with quotes, backslash, UTF-8": r'^6out "q" \\ é IN=',
        "prefix that is not UTF-8": "^in6 \udcff\udcfe IN=",
        "MAC header on input": "MAC=" + ":".join(["[0-9a-f]{2}"] * 14),
        "loopback": "IN=lo OUT= MAC=00:00:00:00:00:00:00:00:00:00:00:00:08:00 ",
        "urgent data": f" URG ACK PSH URGP={len(URGENT)} ",
        "reset": " ACK RST URGP=0 ",
        "ECN capable (ECT)": "TOS=02 .* PROTO=TCP",
        "bigger than the MTU": f"LEN={BIG + 28} ",
        "IPv6 fragment after the first": "FRAG: [1-9]",
    }
    missing = [what for what, pattern in wanted.items() if not re.search(pattern, text, re.M)]
    assert not missing, missing
    for family in ("SRC=192.0.2.", "SRC=2001:db8::"):
        for proto in ("TCP", "UDP"):
            assert re.search(f"{family}.* PROTO={proto} ", text), (family, proto)
    seen = {int(m[1]) for m in CRAFTED_IDENT.finditer(text)}
    assert seen == set(crafted_ipv4()) | set(crafted_ipv6())


def test_logemu_lines_identical(scenario: Scenario) -> None:
    problems = compare_logemu(scenario.first.emu, scenario.second.emu, ULOGD_BUG_FIXES)
    assert not problems, "LOGEMU: ulogd -> nfkit\n" + report(problems)


def test_json_objects_identical(scenario: Scenario) -> None:
    ulogd, nfkit = scenario.first.json, scenario.second.json
    problems = compare_json(ulogd, nfkit, ULOGD_BUG_FIXES)
    if len(ulogd) != len(nfkit):
        problems.append(f"{len(nfkit)} objects, ulogd wrote {len(ulogd)}")
    assert not problems, "JSON: ulogd -> nfkit\n" + report(problems)


def test_json_serialisation_matches_jansson(scenario: Scenario) -> None:
    """Separators, quoting and UTF-8 as ulogd's jansson writes them."""
    for line in scenario.second.json:
        pairs = json.loads(line, object_pairs_hook=list)
        fields = (f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in pairs)
        assert line == "{" + ", ".join(fields) + "}"


def test_reference_agrees_with_itself(reference_twice: Scenario) -> None:
    """Two ulogd on the two groups differ only by the clock tolerances above: the
    comparison hides nothing, and the bug table is not needed between them."""
    first, second = reference_twice.first, reference_twice.second
    assert len(first.emu) == len(second.emu) == reference_twice.logged_by_kernel
    problems = compare_logemu(first.emu, second.emu, ()) + compare_json(first.json,
                                                                        second.json, ())
    assert not problems, report(problems)
