"""The flow text plugins through the real kernel, against Debian's ulogd 2.0.8.

Differential (``scenario``): ulogd and ``nfkit logd`` run at once in lab namespace b,
with the same configuration (only the NFLOG group and the directory differ)::

    ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU     (the seed article's stack)
    ct1:NFCT,ip2str1:IP2STR,nacct1:NACCT
    ct1:NFCT,op1:OPRINT                                       (the seed article's stack)
    ct1:NFCT,gp1:GPRINT
    log1:NFLOG,base1:BASE,ip2str1:IP2STR,op2:OPRINT
    log1:NFLOG,base1:BASE,gp2:GPRINT

Conntrack events are multicast, so both daemons see every flow; packets are logged by
duplicated NFLOG rules to group 1 (ulogd) and group 2 (nfkit). Flows end with a table
flush, so every flow gives one DESTROY record. The outputs must be identical once the
deliberate fixes (docs/compatibility.md) are mapped back to ulogd's form -- each such
mapping first checks that nfkit's value is the right one -- and instants (LOGEMU's
clock, packet and flow start times) agree within the daemons' clock tolerance.

Seed stacks (``seeded``): ``nfkit logd`` alone runs the seed article's stacks as
written, the MARK chain that keeps only flows of one connmark (JSON and SQLITE3), and
PWSNIFF on real FTP and POP3 logins.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from nfkit.lab import Lab, traffic_argv, unavailable_reason
from nfkit.logd.keys import KeyType
from nfkit.logd.registry import plugins
from reference import DaemonRun, missing_reference, remove_workdir, render_config
from test_differential import DAEMON_CLOCK_TOLERANCE, Fix, compare_logemu, one_cpu, report

pytestmark = [pytest.mark.lab]

DATA = b"nfkit flow differential\n"
PREFIX = "flowtest"
GROUPS = (1, 2)
#: ports: a TCP server in a (b connects), a TCP server in b and the port b redirects to it
TCP_IN_A, TCP_IN_B, TCP_NATTED = 7001, 8080, 8081
UDP_PLAIN, UDP_MARKED = 5000, 5353
CONNMARK = 7
GRE, ESP = 47, 50
#: b -> a: TCP, ping, UDP; a -> b: ping, TCP, TCP redirected, marked UDP (each over IPv4
#: and IPv6); GRE and ESP over IPv4.
EXPECTED_FLOWS = 7 * 2 + 2

DIFF_STACKS = (
    "ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU",
    "ct1:NFCT,ip2str1:IP2STR,nacct1:NACCT",
    "ct1:NFCT,op1:OPRINT",
    "ct1:NFCT,gp1:GPRINT",
    "log1:NFLOG,base1:BASE,ip2str1:IP2STR,op2:OPRINT",
    "log1:NFLOG,base1:BASE,gp2:GPRINT",
)
DIFF_FILES = {"emu1": "printflow.log", "nacct1": "nacct.log", "op1": "oprint-flows.log",
              "gp1": "gprint-flows.log", "op2": "oprint-packets.log",
              "gp2": "gprint-packets.log"}  # fmt: skip

#: ulogd 2.0.8's NFCT fails its configure without a section of its own.
CT_SECTION = "\n[ct1]\nhash_enable=1\n"

#: PRINTFLOW (ulogd2.md §11 item 10, and ICMPv6): ulogd's text -> nfkit's.
PRINTFLOW_FIXES = (
    Fix("ICMP: TYPE= printed icmp.code, CODE= icmp.type", r"PROTO=ICMP TYPE=(\d+) CODE=(\d+) ",
        r"PROTO=ICMP TYPE=\2 CODE=\1 "),
    Fix("ICMPv6 flows (all echo requests here) are named, with type and code", "PROTO=58 ",
        "PROTO=ICMPv6 TYPE=128 CODE=0 "),
)
#: Keys of IP address type (BASE's and NFCT's), printed wrong by OPRINT/GPRINT 2.0.8.
ADDRESS_KEYS = frozenset(
    key.name for name in ("NFCT", "BASE") for key in plugins()[name].output_keys
    if key.type is KeyType.IPADDR
)
#: Instants as (seconds key, microseconds key): compared within DAEMON_CLOCK_TOLERANCE.
INSTANTS = (("oob.time.sec", "oob.time.usec"), ("flow.start.sec", "flow.start.usec"))


# ---------------------------------------------------------------- traffic


def conntrack_on(lab: Lab) -> None:
    """Tracking in b, with counters and timestamps; marks and a redirect (NAT)."""
    b = lab.b
    lab.sysctl(b, "net.netfilter.nf_conntrack_acct", 1)
    lab.sysctl(b, "net.netfilter.nf_conntrack_timestamp", 1)
    for tables in (lab.iptables, lab.ip6tables):
        tables(b, "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED,RELATED",
               "-j", "ACCEPT")  # fmt: skip
        tables(b, "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", str(UDP_MARKED),
               "-j", "CONNMARK", "--set-mark", str(CONNMARK))  # fmt: skip
        tables(b, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", str(TCP_NATTED),
               "-j", "REDIRECT", "--to-ports", str(TCP_IN_B))  # fmt: skip


def log_packets(lab: Lab, groups: tuple[int, ...], on: bool = True) -> None:
    """Every packet in and out of b logged to each of ``groups`` (first in the chains)."""
    for tables in (lab.iptables, lab.ip6tables):
        for chain in ("INPUT", "OUTPUT"):
            for position, group in enumerate(groups, 1):
                rule = ["-j", "NFLOG", "--nflog-group", str(group), "--nflog-prefix", PREFIX]
                if on:
                    tables(lab.b, "-I", chain, str(position), *rule)
                else:
                    tables(lab.b, "-D", chain, *rule)


def raw_packets(lab: Lab, protocol: int, count: int = 2) -> None:
    """``count`` packets of an L4 protocol conntrack tracks generically, a -> b."""
    with lab.entered(lab.a):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, protocol)
    with sock:
        for _ in range(count):
            sock.sendto(bytes(8), (lab.b.ip4, 0))


def natted_exchange(lab: Lab, dst: str) -> None:
    """a connects to b:TCP_NATTED, which b redirects to its server on TCP_IN_B."""
    with lab.tcp_server(lab.b, TCP_IN_B) as server:
        lab.run(lab.a, *traffic_argv("tcp-client", "--dst", dst, "--port", str(TCP_NATTED),
                                     "--data-hex", DATA.hex()), timeout=30)
        server.result()


def b_initiated_traffic(lab: Lab) -> None:
    """What b starts (its sockets exist before any packet: stable UID/GID in NFLOG)."""
    for dst in (lab.a.ip4, lab.a.ip6):
        assert dst is not None
        assert lab.ping(lab.b, dst, count=2, interval=0.05)
        assert lab.tcp_exchange(lab.b, dst, TCP_IN_A, data=DATA) == DATA
        assert lab.udp(lab.b, dst, UDP_PLAIN, count=2, size=16, recv=True)["received"] == 2


def a_initiated_traffic(lab: Lab) -> None:
    """Flows into b: marked UDP, NAT, GRE and ESP."""
    for dst in (lab.b.ip4, lab.b.ip6):
        assert dst is not None
        assert lab.ping(lab.a, dst, count=1)
        assert lab.tcp_exchange(lab.a, dst, TCP_IN_B, data=DATA) == DATA
        natted_exchange(lab, dst)
        assert lab.udp(lab.a, dst, UDP_MARKED, count=1, size=16, recv=True)["received"] == 1
    raw_packets(lab, GRE)
    raw_packets(lab, ESP)


def flush_flows(lab: Lab) -> int:
    """End every flow in b (one DESTROY event each); returns how many there were."""
    listed = lab.run(lab.b, "conntrack", "-L", check=False)
    count = len([line for line in listed.stdout.splitlines() if line.strip()])
    lab.run(lab.b, "conntrack", "-F")
    return count


# ---------------------------------------------------------------- differential run


@dataclass
class Outputs:
    """What one daemon wrote (file name -> text), its exit status and log tail."""

    files: dict[str, str]
    returncode: int
    log: str

    @classmethod
    def of(cls, run: DaemonRun, names: Iterable[str]) -> Outputs:
        files = {}
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                files[name] = run.output(name)
        return cls(files, -1 if run.returncode is None else run.returncode, run.diagnostics())

    def lines(self, name: str) -> list[str]:
        return self.files[name].splitlines(keepends=True)


@dataclass
class Scenario:
    ulogd: Outputs
    nfkit: Outputs
    flows: int


def run_differential(workdir: Path) -> Scenario:
    with one_cpu(), Lab() as lab:
        runs = []
        try:
            for kind, group in zip(("ulogd", "nfkit"), GROUPS, strict=True):
                directory = workdir / kind
                config = render_config(DIFF_STACKS, group, directory, DIFF_FILES) + CT_SECTION
                runs.append(DaemonRun(lab, lab.b, kind, directory, config).start())
            conntrack_on(lab)
            log_packets(lab, GROUPS)
            b_initiated_traffic(lab)
            log_packets(lab, GROUPS, on=False)
            a_initiated_traffic(lab)
            time.sleep(0.5)  # the last ICMP errors and FIN/ACKs
            flows = flush_flows(lab)
            time.sleep(1.5)  # the kernel flushes NFLOG batches after at most 1 s
            for run in runs:
                run.wait_idle()
                run.stop()
        finally:
            for run in runs:
                run.kill()
        ulogd, nfkit = (Outputs.of(run, DIFF_FILES.values()) for run in runs)
        return Scenario(ulogd, nfkit, flows)


def conntrack_skip_reason() -> str | None:
    if shutil.which("conntrack") is None:
        return "conntrack (Debian package conntrack) not installed"
    return unavailable_reason()


R = TypeVar("R")


def in_workdir(reason: str | None, run: Callable[[Path], R], prefix: str) -> Iterator[R]:
    """A module fixture's body: ``run`` in a temporary directory (skipped for ``reason``)."""
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield run(workdir)
    finally:
        remove_workdir(workdir)


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    reason = conntrack_skip_reason() or missing_reference(DIFF_STACKS)
    yield from in_workdir(reason, run_differential, "nfkit-flow-differential-")


# ---------------------------------------------------------------- ulogd 2.0.8's forms


def oprint_address_2_0_8(text: str) -> str:
    """OPRINT 2.0.8: the first 32 bits of the address as a dotted quad, bytes reversed."""
    packed = ipaddress.ip_address(text).packed
    return ".".join(str(byte) for byte in reversed(packed[:4]))


def gprint_address_2_0_8(text: str) -> str:
    """GPRINT 2.0.8: the first 4 bytes as a dotted quad (right for IPv4 only)."""
    return ".".join(str(byte) for byte in ipaddress.ip_address(text).packed[:4])


Pairs = list[tuple[str, str]]


def oprint_records(lines: list[str]) -> list[Pairs]:
    records: list[Pairs] = []
    for line in lines:
        if line == "===>PACKET BOUNDARY\n":
            records.append([])
        else:
            key, _, value = line.rstrip("\n").partition("=")
            records[-1].append((key, value))
    return records


def gprint_records(lines: list[str]) -> list[Pairs]:
    # No value in this traffic holds a comma (the prefix is a plain word).
    return [[tuple(item.split("=", 1)) for item in line.rstrip("\n").split(",")]  # type: ignore[misc]
            for line in lines]


def tcp_offset(record: dict[str, str]) -> int:
    """The data offset of the logged segments: headers plus DATA on PSH segments."""
    if "ip.ihl" in record:
        l4_length = int(record["ip.totlen"]) - 4 * int(record["ip.ihl"])
    else:
        l4_length = int(record["ip6.payloadlen"])
    payload = len(DATA) if record["tcp.psh"] == "1" else 0
    return (l4_length - payload) // 4


def instant(record: dict[str, str], seconds: str, micros: str) -> datetime:
    return datetime.fromtimestamp(int(record[seconds])) + timedelta(
        microseconds=int(record.get(micros, 0)))


def as_2_0_8(nfkit: Pairs, ulogd: Pairs, address: Callable[[str], str]) -> tuple[Pairs, list[str]]:
    """nfkit's record in ulogd 2.0.8's form, and what is wrong with nfkit's values.

    Addresses take 2.0.8's wrong spelling (nfkit's must be valid addresses); tcp.offset
    becomes 2.0.8's 0 (nfkit's must be the segment's); the icmpv6.* keys of a flow go
    (2.0.8's NFCT has none); instants take ulogd's value when within the tolerance.
    """
    problems = []
    mine, theirs = dict(nfkit), dict(ulogd)
    flow = "ct.event" in mine
    out: Pairs = []
    for key, value in nfkit:
        if key in ADDRESS_KEYS:
            try:
                value = address(value)
            except ValueError:
                problems.append(f"{key}={value} is not an address")
        elif key == "tcp.offset":
            if int(value) != tcp_offset(mine):
                problems.append(f"tcp.offset={value}, the segment has {tcp_offset(mine)} words")
            value = "0"
        elif flow and key.startswith("icmpv6."):
            continue
        for seconds, micros in INSTANTS:
            if key in (seconds, micros) and seconds in theirs:
                gap = abs(instant(mine, seconds, micros) - instant(theirs, seconds, micros))
                if gap > DAEMON_CLOCK_TOLERANCE:
                    problems.append(f"{seconds}: {gap} from ulogd's")
                value = theirs.get(key, value)
        out.append((key, value))
    return out, problems


def compare_records(ulogd: list[Pairs], nfkit: list[Pairs],
                    address: Callable[[str], str]) -> list[str]:
    problems = []
    if len(ulogd) != len(nfkit):
        problems.append(f"{len(nfkit)} records, ulogd wrote {len(ulogd)}")
    for number, (u_record, n_record) in enumerate(zip(ulogd, nfkit, strict=False), 1):
        expected, wrong = as_2_0_8(n_record, u_record, address)
        problems += [f"record {number}: {problem}" for problem in wrong]
        if expected != u_record:
            problems.append(f"record {number}:\n  ulogd {u_record}\n  nfkit {n_record}")
    return problems


# ---------------------------------------------------------------- differential tests


@pytest.mark.reference
def test_both_daemons_log_every_flow(scenario: Scenario) -> None:
    for name, out in (("ulogd", scenario.ulogd), ("nfkit", scenario.nfkit)):
        assert out.returncode == 0, f"{name} exit status {out.returncode}\n{out.log}"
        assert len(out.lines("nacct.log")) == scenario.flows, (name, out.log)
        assert len(out.lines("printflow.log")) == scenario.flows
    assert scenario.flows == EXPECTED_FLOWS


@pytest.mark.reference
def test_traffic_covers_the_flow_kinds(scenario: Scenario) -> None:
    text = scenario.nfkit.files["printflow.log"]
    wanted = {
        "TCP over IPv4 and IPv6": r"ORIG: SRC=2001:db8::\S+ .* PROTO=TCP SPT=\d+ DPT=8080 ",
        "NAT: the reply comes from the redirected port": (
            rf"PROTO=TCP SPT=\d+ DPT={TCP_NATTED} .*REPLY: .* PROTO=TCP SPT={TCP_IN_B} "),
        "UDP": f"PROTO=UDP SPT=\\d+ DPT={UDP_MARKED} ",
        "ICMP, type first": "PROTO=ICMP TYPE=8 CODE=0 PKTS=1 ",
        "ICMPv6": "PROTO=ICMPv6 TYPE=128 CODE=0 ",
        "GRE": "PROTO=47 PKTS=2 ",
        "ESP": "PROTO=ESP PKTS=2 ",
        "counters in both directions": r"PKTS=[1-9]\d* BYTES=\d+ , REPLY: .*PKTS=[1-9]",
    }
    missing = [what for what, pattern in wanted.items() if not re.search(pattern, text)]
    assert not missing, missing
    assert all(line.startswith("[DESTROY] ORIG: SRC=") for line in
               (split_body(line) for line in scenario.nfkit.lines("printflow.log")))


def split_body(line: str) -> str:
    """A LOGEMU line without its ``Mmm dd hh:mm:ss host`` head."""
    return line.split(" ", 4)[4]


@pytest.mark.reference
def test_printflow_lines_identical(scenario: Scenario) -> None:
    ulogd = [line.rstrip("\n") for line in scenario.ulogd.lines("printflow.log")]
    nfkit = [line.rstrip("\n") for line in scenario.nfkit.lines("printflow.log")]
    problems = compare_logemu(ulogd, nfkit, PRINTFLOW_FIXES)
    assert len(ulogd) == len(nfkit)
    assert not problems, "PRINTFLOW: ulogd -> nfkit\n" + report(problems)


@pytest.mark.reference
def test_nacct_lines_identical(scenario: Scenario) -> None:
    assert scenario.nfkit.files["nacct.log"] == scenario.ulogd.files["nacct.log"]


@pytest.mark.reference
@pytest.mark.parametrize(("name", "parse", "address"), [
    ("oprint-flows.log", oprint_records, oprint_address_2_0_8),
    ("oprint-packets.log", oprint_records, oprint_address_2_0_8),
    ("gprint-flows.log", gprint_records, gprint_address_2_0_8),
    ("gprint-packets.log", gprint_records, gprint_address_2_0_8),
])  # fmt: skip
def test_wildcard_outputs_identical(scenario: Scenario, name: str,
                                    parse: Callable[[list[str]], list[Pairs]],
                                    address: Callable[[str], str]) -> None:
    ulogd = parse(scenario.ulogd.lines(name))
    nfkit = parse(scenario.nfkit.lines(name))
    assert len(nfkit) >= EXPECTED_FLOWS
    problems = compare_records(ulogd, nfkit, address)
    assert not problems, f"{name}: ulogd -> nfkit\n" + report(problems)


@pytest.mark.reference
def test_wildcard_outputs_print_addresses_right(scenario: Scenario) -> None:
    """What the mapping above hides: nfkit's addresses are the lab's, both families."""
    text = scenario.nfkit.files["oprint-flows.log"]
    assert "\norig.ip.saddr=192.0.2.1\norig.ip.daddr=192.0.2.2\n" in text
    assert "\norig.ip.saddr=2001:db8::1\norig.ip.daddr=2001:db8::2\n" in text
    gprint = scenario.nfkit.files["gprint-packets.log"]
    assert ",ip.saddr=2001:db8::2,ip.daddr=2001:db8::1," in gprint
    assert ",ip.saddr=192.0.2.2,ip.daddr=192.0.2.1," in gprint


# ---------------------------------------------------------------- seed stacks (nfkit alone)

SEED_GROUP = 3
SEED_STACKS = (
    "ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU",
    "ct1:NFCT,op1:OPRINT",
    "ct1:NFCT,mark1:MARK,ip2str1:IP2STR,json1:JSON",
    "ct1:NFCT,mark1:MARK,ip2str1:IP2STR,sql1:SQLITE3",
    "log1:NFLOG,base1:BASE,pw1:PWSNIFF,ip2str1:IP2STR,json2:JSON",
)
SEED_FILES = {"emu1": "printflow.log", "op1": "oprint.log", "json1": "marked.json",
              "json2": "logins.json"}  # fmt: skip
MARKED_TABLE = ("CREATE TABLE ct (orig_ip_saddr_str TEXT, orig_ip_daddr_str TEXT, "
                "orig_ip_protocol INTEGER, orig_l4_dport INTEGER, ct_mark INTEGER)")
#: (server port, IPv6?, user, password): an FTP login over IPv4, a POP3 one over IPv6.
LOGINS = ((21, False, "alice", "secret"), (110, True, "bob", "two words"))


def seed_config(workdir: Path) -> str:
    lines = ["[global]", f'logfile="{workdir / "daemon.log"}"', "loglevel=3"]
    lines += [f"stack={stack}" for stack in SEED_STACKS]
    lines += ["", "[log1]", f"group={SEED_GROUP}", "", "[ct1]", "hash_enable=1", "",
              "[mark1]", f"mark={CONNMARK}", "", "[sql1]", f'db="{workdir / "flows.db"}"',
              "table=ct"]  # fmt: skip
    for instance, name in SEED_FILES.items():
        lines += ["", f"[{instance}]", f'file="{workdir / name}"']
    return "\n".join(lines) + "\n"


def login(lab: Lab, port: int, ipv6: bool, user: str, password: str) -> None:
    """A client in a logs in to a server in b: USER, reply, PASS, reply (one segment each)."""
    dst = lab.b.ip6 if ipv6 else lab.b.ip4
    assert dst is not None
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    with lab.entered(lab.b):
        server = socket.create_server((dst, port), family=family)
    with lab.entered(lab.a):
        client = socket.create_connection((dst, port), timeout=10)
    with server, client, server.accept()[0] as session:
        session.settimeout(10)
        for command, reply in ((f"USER {user}\r\n", b"331 go on\r\n"),
                               (f"PASS {password}\r\n", b"230 in\r\n")):
            client.sendall(command.encode())
            assert session.recv(100) == command.encode()
            session.sendall(reply)
            assert client.recv(100) == reply


def log_logins(lab: Lab) -> None:
    for tables in (lab.iptables, lab.ip6tables):
        tables(lab.b, "-I", "INPUT", "-p", "tcp", "-m", "multiport", "--dports", "21,110",
               "-j", "NFLOG", "--nflog-group", str(SEED_GROUP))  # fmt: skip


@dataclass
class Seeded:
    out: Outputs
    rows: list[tuple[object, ...]]
    flows: int
    logged_packets: int


def run_seeded(workdir: Path) -> Seeded:
    workdir.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(workdir / "flows.db") as db:
        db.execute(MARKED_TABLE)
    db.close()
    with Lab() as lab:
        run = DaemonRun(lab, lab.b, "nfkit", workdir, seed_config(workdir)).start()
        try:
            conntrack_on(lab)
            log_logins(lab)
            a_initiated_traffic(lab)
            for entry in LOGINS:
                login(lab, *entry)
            time.sleep(0.5)
            flows = flush_flows(lab)
            logged = sum(rule.packets for v6 in (False, True)
                         for rule in lab.rule_counters(lab.b, "INPUT", ipv6=v6)
                         if "--nflog-group" in rule.rule)
            time.sleep(1.5)  # NFLOG batches
            run.wait_idle()
            run.stop()
        finally:
            run.kill()
    with sqlite3.connect(workdir / "flows.db") as db:
        rows = db.execute("SELECT * FROM ct").fetchall()
    db.close()
    return Seeded(Outputs.of(run, SEED_FILES.values()), rows, flows, logged)


@pytest.fixture(scope="module")
def seeded() -> Iterator[Seeded]:
    yield from in_workdir(conntrack_skip_reason(), run_seeded, "nfkit-flow-seed-")


def test_seed_stacks_run_and_stop_cleanly(seeded: Seeded) -> None:
    assert seeded.out.returncode == 0, seeded.out.log
    assert seeded.flows == 2 * 5 + 2  # a -> b traffic, the two logins


def test_seed_printflow_stack(seeded: Seeded) -> None:
    """ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU: one line per ended flow,
    the NATed connection with both its tuples."""
    lines = seeded.out.files["printflow.log"].splitlines()
    assert len(lines) == seeded.flows
    head = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ \[DESTROY\] "
    assert all(re.match(head + "ORIG: SRC=", line) for line in lines)
    natted = [line for line in lines if f" DPT={TCP_NATTED} " in line]
    assert len(natted) == 2
    assert re.search(
        rf" ORIG: SRC=192\.0\.2\.1 DST=192\.0\.2\.2 PROTO=TCP SPT=(\d+) DPT={TCP_NATTED} "
        rf"PKTS=\d+ BYTES=\d+ , REPLY: SRC=192\.0\.2\.2 DST=192\.0\.2\.1 PROTO=TCP "
        rf"SPT={TCP_IN_B} DPT=\1 PKTS=\d+ BYTES=\d+ $", "\n".join(natted), re.M)


def test_seed_oprint_stack(seeded: Seeded) -> None:
    """ct1:NFCT,op1:OPRINT: one record per flow, addresses the right way round."""
    records = oprint_records(seeded.out.lines("oprint.log"))
    assert len(records) == seeded.flows
    sources = {dict(record)["orig.ip.saddr"] for record in records}
    assert sources == {"192.0.2.1", "2001:db8::1"}
    assert all(dict(record)["ct"] == "default" for record in records)


def test_seed_mark_stacks_keep_only_marked_flows(seeded: Seeded) -> None:
    """NFCT -> MARK (mark=7) -> IP2STR -> JSON / SQLITE3: the CONNMARKed UDP flows only."""
    objects = [json.loads(line) for line in seeded.out.files["marked.json"].splitlines()]
    flows = sorted((o["src_ip"], o["reply.ip.saddr.str"], o["orig.ip.protocol"],
                    o["orig.l4.dport"], o["ct.mark"]) for o in objects)
    assert flows == [
        ("192.0.2.1", "192.0.2.2", 17, UDP_MARKED, CONNMARK),
        ("2001:db8::1", "2001:db8::2", 17, UDP_MARKED, CONNMARK),
    ]
    assert sorted(seeded.rows) == [
        ("192.0.2.1", "192.0.2.2", 17, UDP_MARKED, CONNMARK),
        ("2001:db8::1", "2001:db8::2", 17, UDP_MARKED, CONNMARK),
    ]


def test_pwsniff_finds_real_logins(seeded: Seeded) -> None:
    """NFLOG -> BASE -> PWSNIFF -> IP2STR -> JSON on FTP (IPv4) and POP3 (IPv6) logins:
    the credentials appear, and the other segments are logged too, without them."""
    objects = [json.loads(line) for line in seeded.out.files["logins.json"].splitlines()]
    assert len(objects) == seeded.logged_packets
    found = [(o["src_ip"], o["dest_port"], o.get("pwsniff.user"), o.get("pwsniff.pass"))
             for o in objects if "pwsniff.user" in o or "pwsniff.pass" in o]
    assert found == [
        ("192.0.2.1", 21, "alice", None), ("192.0.2.1", 21, None, "secret"),
        ("2001:db8::1", 110, "bob", None), ("2001:db8::1", 110, None, "two words"),
    ]
    assert len(objects) > len(found)
