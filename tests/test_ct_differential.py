"""Differential tests: Debian's ``conntrack`` 1.4.7 and ``nfkit conntrack`` on the same table.

The table lives in the router ``r`` of an a---r---b lab, with counters and
timestamps on and long timeouts (nothing expires during the run). It holds
flows from real traffic through ``r`` (TCP handshake, data and close, UDP,
ICMP, ICMPv6, source NAT on the way to b, destination NAT of r's port 8080,
a connection mark set by a rule, an FTP control connection whose PASV reply
makes the ftp helper create an expectation) and flows made with Debian's
``conntrack -I`` (SCTP, GRE, another protocol, zones, marks) and with
``tests/ctlab.py`` (labels, zones, both families).

Both tools run inside ``r`` with the same arguments; stdout, stderr and the
exit status must be identical once the ticking timeout (and delta-time) are
masked. Labels are named by a ``connlabel.conf`` that both tools see through
an overlay on /etc in a private mount namespace.

The deliberate differences (``docs/compatibility.md``, "## conntrack") are
listed in ``DEVIATIONS``: for those arguments conntrack 1.4.7's output is
first turned into what nfkit must print, then compared exactly.

Commands that change the table (-D, -U, -I, -A, -F, -R) run on twin tables:
the same flows are created in a fresh namespace for each tool, and both the
output and the table afterwards are compared.
"""

from __future__ import annotations

import difflib
import re
import shlex
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctlab import create_flows, enable_labels, varied_flows
from nfkit.conntrack import Flow
from nfkit.lab import Lab, unavailable_reason

pytestmark = [pytest.mark.lab, pytest.mark.reference]

CONNTRACK = "/usr/sbin/conntrack"
NFKIT = (sys.executable, "-m", "nfkit.cli.main", "conntrack")
LABELS = "0 zero\n1 one\n5 five\n64 big\n127 last\n# a comment\n"
LONG = 3600  # seconds: every timeout of the lab's flows
TIMEOUT_SYSCTLS = (
    "nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream", "nf_conntrack_icmp_timeout",
    "nf_conntrack_icmpv6_timeout", "nf_conntrack_generic_timeout",
    "nf_conntrack_tcp_timeout_time_wait", "nf_conntrack_tcp_timeout_close_wait",
    "nf_conntrack_tcp_timeout_fin_wait", "nf_conntrack_tcp_timeout_last_ack",
    "nf_conntrack_tcp_timeout_syn_sent", "nf_conntrack_tcp_timeout_syn_recv",
)  # fmt: skip


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


# -- masking what ticks ---------------------------------------------------------------------

_LINE_TIMEOUT = re.compile(
    r"^(?P<head>(?:\[\d+\.\d+\]\t)?(?: *\[[A-Z]+\] )?(?:ipv[46] +\d+ )?[a-z0-9]+ +\d+ )\d+ "
)


def mask(text: str) -> str:
    """The output with timeouts and delta-times replaced (they tick between two runs)."""
    out = []
    for line in text.splitlines(keepends=True):
        line = _LINE_TIMEOUT.sub(r"\g<head>T ", line)
        line = re.sub(r"delta-time=\d+", "delta-time=D", line)
        line = re.sub(r"<timeout>\d+</timeout>", "<timeout>T</timeout>", line)
        line = re.sub(r"<deltatime>\d+</deltatime>", "<deltatime>D</deltatime>", line)
        line = re.sub(r"^(-[AUD] )?-t \d+ ", r"\1-t T ", line)
        line = re.sub(r"^(\s*\[[A-Z]+\] )?\d+ proto=", r"\1T proto=", line)  # expectations
        out.append(line)
    return "".join(out)


# -- the lab --------------------------------------------------------------------------------


class Tools:
    """Runs both tools in one namespace (optionally with a label map on /etc)."""

    def __init__(self, lab: Lab, ns: str, overlay: Path | None = None) -> None:
        self.lab = lab
        self.ns = ns
        self.overlay = overlay

    def _argv(self, tool: Sequence[str], args: Sequence[str]) -> list[str]:
        if self.overlay is None:
            return [*tool, *args]
        upper, work = self.overlay / "upper", self.overlay / "work"
        script = (
            f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc"
            ' && exec "$@"'
        )
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                *tool, *args]  # fmt: skip

    def run(self, tool: Sequence[str], args: Sequence[str], stdin: str | None = None) -> Result:
        cp = self.lab.run(self.ns, *self._argv(tool, args), check=False, input=stdin, timeout=60)
        return Result(cp.returncode, cp.stdout, cp.stderr)

    def conntrack(self, *args: str, stdin: str | None = None) -> Result:
        return self.run([CONNTRACK], args, stdin)

    def nfkit(self, *args: str, stdin: str | None = None) -> Result:
        return self.run(NFKIT, args, stdin)


def _overlay(tmp: Path) -> Path:
    (tmp / "upper" / "xtables").mkdir(parents=True)
    (tmp / "work").mkdir()
    (tmp / "upper" / "xtables" / "connlabel.conf").write_text(LABELS)
    return tmp


def _long_timeouts(lab: Lab, ns: str) -> None:
    lab.sysctl(ns, "net.netfilter.nf_conntrack_acct", 1)
    lab.sysctl(ns, "net.netfilter.nf_conntrack_timestamp", 1)
    for name in TIMEOUT_SYSCTLS:
        lab.sysctl(ns, f"net.netfilter.{name}", LONG)


def _ruleset(lab: Lab, r: str, to_b: str) -> None:
    """Tracking, NAT, a connmark rule, the ftp helper and labels in the router."""
    for tool in (lab.iptables, lab.ip6tables):
        tool(r, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED,RELATED",
             "-j", "ACCEPT")  # fmt: skip
        tool(r, "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "21",
             "-j", "CT", "--helper", "ftp")  # fmt: skip
    lab.iptables(r, "-t", "nat", "-A", "POSTROUTING", "-o", to_b, "-j", "MASQUERADE")
    lab.iptables(r, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8080",
                 "-j", "DNAT", "--to-destination", "198.51.100.2")  # fmt: skip
    lab.iptables(r, "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "5353",
                 "-j", "CONNMARK", "--set-mark", "7")  # fmt: skip
    enable_labels(lab, r)


def _lasting(flows: list[Flow]) -> list[Flow]:
    for flow in flows:
        flow.timeout = LONG
    return flows


def _ftp_expectation(lab: Lab) -> Iterator[None]:
    """An FTP control connection a -> b whose PASV reply the router's helper sees."""
    b_addr = lab.b.ip4
    assert b_addr is not None
    with lab.entered(lab.b):
        server = socket.create_server((b_addr, 21))
    with lab.entered(lab.a):
        client = socket.create_connection((b_addr, 21), timeout=5)
    with server, client, server.accept()[0] as control:
        control.sendall(b"220 ready\r\n")
        client.recv(100)
        control.sendall(b"227 Entering Passive Mode (198,51,100,2,19,136)\r\n")
        client.recv(100)
        yield


# Flows made with Debian's conntrack -I: what real traffic cannot easily give.
INSERTED = (
    "-s 203.0.113.10 -d 203.0.113.20 -p sctp --sport 1000 --dport 2000 --state ESTABLISHED"
    " --orig-vtag 287454020 --reply-vtag 1432778632 -u SEEN_REPLY,ASSURED",
    "-s 203.0.113.11 -d 203.0.113.21 -p gre --srckey 0x10 --dstkey 0x20",
    "-s 203.0.113.12 -d 203.0.113.22 -p udp --sport 1 --dport 2 -w 5 -m 0x42",
    "-s 203.0.113.13 -d 203.0.113.23 -p 253",
    "-s 2001:db8:5::1 -d 2001:db8:5::2 -p tcp --sport 3 --dport 4 --state TIME_WAIT"
    " -u SEEN_REPLY -m 3 --orig-zone 9",
    "-s 203.0.113.14 -d 203.0.113.24 -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 77 -w 5",
)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tools]:
    """The router of an a---r---b lab with a varied table; both tools run there."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"lab: {reason}")
    if not Path(CONNTRACK).exists():
        pytest.skip("needs Debian's conntrack (apt-get install conntrack)")
    lab = Lab(router=True)
    lab.start()
    try:
        r = lab.r
        assert r is not None and lab.b.ip4 and lab.b.ip6
        _long_timeouts(lab, str(r))
        _ruleset(lab, str(r), r.ifaces[1].name)
        lab.tcp_exchange(lab.a, lab.b.ip4, 5001, b"through source NAT")
        lab.tcp_exchange(lab.a, r.ip4 or "", 8080, b"destination NAT", dst_ns=lab.b)
        lab.tcp_exchange(lab.a, lab.b.ip6, 5002, b"over IPv6")
        lab.udp(lab.a, lab.b.ip4, 5353, recv=True)
        lab.udp(lab.a, lab.b.ip6, 5354, count=2, recv=True)
        lab.ping(lab.a, lab.b.ip4, check=True)
        lab.ping(lab.a, lab.b.ip6, check=True)
        for spec in INSERTED:
            lab.run(r, CONNTRACK, "-I", "-t", str(LONG), *shlex.split(spec))
        create_flows(lab, r, _lasting(varied_flows()))
        ftp = _ftp_expectation(lab)
        next(ftp)
        try:
            yield Tools(lab, str(r), _overlay(tmp_path_factory.mktemp("etc")))
        finally:
            ftp.close()
    finally:
        lab.close()


def compare(tools: Tools, args: Sequence[str], fix: Callable[[str], str] | None = None) -> None:
    """Both tools agree on ``args`` (``fix`` turns 1.4.7's stdout into nfkit's)."""
    want = tools.conntrack(*args)
    got = tools.nfkit(*args)
    expected = mask(want.stdout)
    if fix is not None:
        expected = fix(expected)
    assert_same(
        " ".join(args),
        Result(want.rc, expected, mask(want.stderr)),
        Result(got.rc, mask(got.stdout), mask(got.stderr)),
    )


def assert_same(what: str, want: Result, got: Result) -> None:
    """Equal results, else a diff of what differs."""
    problems = []
    if got.rc != want.rc:
        problems.append(f"exit status {got.rc}, conntrack {want.rc}")
    for name in ("stdout", "stderr"):
        a, b = getattr(want, name), getattr(got, name)
        if a != b:
            diff = difflib.unified_diff(
                a.splitlines(), b.splitlines(), "conntrack", "nfkit", lineterm="", n=0
            )
            problems.append(f"{name}:\n" + "\n".join(diff))
    assert not problems, f"conntrack {what}: " + "\n".join(problems)


# -- listing --------------------------------------------------------------------------------

OUTPUTS = ("", "extended", "xml", "timestamp", "id", "ktimestamp", "labels", "userspace",
           "extended,id,ktimestamp", "xml,ktimestamp", "xml,labels,id", "labels,extended",
           "save")  # fmt: skip


def _sctp_xml_state(text: str) -> str:
    """1.4.7 names SCTP states with TCP's table in XML (ESTABLISHED is 4: FIN_WAIT)."""
    return re.sub(
        r'(protoname="sctp">.*?<state>)FIN_WAIT(</state>)', r"\1ESTABLISHED\2", text
    )


def _save_fixes(text: str) -> str:
    """1.4.7's -o save swaps SCTP tags' bytes and leaves the mark out."""
    lines = []
    for line in text.splitlines(keepends=True):
        for option in ("--orig-vtag", "--reply-vtag"):
            line = re.sub(
                rf"{option} (\d+)",
                lambda m, option=option: f"{option} "
                + str(int.from_bytes(int(m[1]).to_bytes(4, "little"), "big")),
                line,
            )
        lines.append(line)
    return "".join(lines)


def _marks(tools: Tools) -> dict[str, str]:
    """Each flow's mark by its -o save line (to add the -m 1.4.7 leaves out)."""
    listing = mask(tools.conntrack("-L").stdout).splitlines()
    return {line: m[1] for line in listing if (m := re.search(r" mark=(\d+) ", line))}


DEVIATIONS: dict[tuple[str, ...], Callable[[str], str]] = {
    ("-o", "xml"): _sctp_xml_state,
    ("-o", "xml,ktimestamp"): _sctp_xml_state,
    ("-o", "xml,labels,id"): _sctp_xml_state,
}


@pytest.mark.parametrize("output", OUTPUTS)
def test_list_with_each_output_format(table: Tools, output: str) -> None:
    args = ("-L", "-o", output) if output else ("-L",)
    if output == "save":
        want = _save_with_marks(table)
        got = table.nfkit("-L", "-o", "save")
        assert got.rc == 0 and mask(got.stdout) == want
        return
    compare(table, args, DEVIATIONS.get(args[1:]))


def _save_with_marks(tools: Tools) -> str:
    """conntrack 1.4.7's -o save listing with nfkit's fixes applied (mark, SCTP tags)."""
    saved = _save_fixes(mask(tools.conntrack("-L", "-o", "save").stdout)).splitlines()
    plain = mask(tools.conntrack("-L").stdout).splitlines()
    assert len(saved) == len(plain)
    out = []
    for save, line in zip(saved, plain, strict=True):
        mark = re.search(r" mark=(\d+) ", line)
        if mark and mark[1] != "0":
            save = re.sub(r"^(-A -t T -u \S+ )", rf"\1-m {mark[1]} ", save)
        out.append(save + "\n")
    return "".join(out)
