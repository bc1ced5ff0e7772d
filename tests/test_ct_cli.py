"""``nfkit conntrack`` without a kernel: parsing as conntrack 1.4.7 parses, and commands
run against a fake client.

What Debian's conntrack prints for the same arguments is checked by
tests/test_ct_differential.py in a lab; the cases here pin the rules
(getopt, keywords, legal options, filters) one by one.
"""

from __future__ import annotations

import errno
import io
import shlex
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nfkit.cli import conntrack as ct
from nfkit.cli.conntrack import (
    Cmd,
    CommandFailed,
    Getopt,
    LongOption,
    Opt,
    Output,
    Parsed,
    Parser,
    flow_filter,
    network_checks,
    update_filter,
)
from nfkit.cli.main import main as nfkit_main
from nfkit.conntrack.codec import FlowTarget
from nfkit.conntrack.filters import Filter
from nfkit.conntrack.model import (
    AF_INET,
    AF_INET6,
    CPUStats,
    Expectation,
    Flow,
    GlobalStats,
    SCTPInfo,
    Status,
    TCPInfo,
    Tuple,
)
from nfkit.netlink.errors import NetlinkError

PREFIX = "conntrack v1.4.7 (conntrack-tools): "
TRY = "Try `conntrack -h' or 'conntrack --help' for more information.\n"


def parse(*args: str, labels: str = "/nonexistent") -> Parsed:
    return Parser(labels, io.StringIO()).parse(["conntrack", *args])


def failure(*args: str) -> tuple[int, str]:
    with pytest.raises(CommandFailed) as info:
        parse(*args)
    return info.value.status, info.value.message


# -- getopt_long ------------------------------------------------------------------------------


def _options(argv: list[str]) -> list[tuple[str, str | None]]:
    longopts = [LongOption("src", 1, ord("s")), LongOption("orig-src", 1, ord("s")),
                LongOption("status", 1, ord("u")), LongOption("dump", 2, ord("L")),
                LongOption("stats", 0, ord("S"))]  # fmt: skip
    getopt = Getopt(["prog", *argv], ":L::s:u:S", longopts)
    seen = []
    while (code := getopt.next()) is not None:
        seen.append((chr(code), getopt.optarg))
    return seen


def test_getopt_permutes_abbreviates_and_reports() -> None:
    assert _options(["x", "-s", "1", "y", "--orig", "2", "--dum=z", "-Lq", "-S"]) == [
        ("s", "1"), ("s", "2"), ("L", "z"), ("L", "q"), ("S", None),
    ]  # fmt: skip
    assert _options(["--st", "x"]) == [("?", None)]  # status or stats: ambiguous
    assert _options(["--sta", "x"]) == [("?", None)]
    assert _options(["--statu", "x"]) == [("u", "x")]
    assert _options(["--s", "x"]) == [("?", None)]
    assert _options(["-s"]) == [(":", None)]
    assert _options(["-s", "-L"]) == [("s", "-L")]  # a required argument may look like an option
    assert _options(["--stats=1"]) == [("?", None)]
    assert _options(["--", "-s", "1"]) == []
    assert _options(["-x"]) == [("?", None)]


def test_getopt_names_the_faulty_argument_as_conntrack_does() -> None:
    assert failure("-xL") == (2, "unknown option `conntrack'")  # argv[optind - 1]
    assert failure("-L", "-s") == (2, "option `-s' requires an argument")
    assert failure("-L", "--foo=1") == (2, "unknown option `--foo=1'")
    assert failure("-L", "-p", "tcp", "--stat", "x") == (2, "unknown option `--stat'")


# -- commands, tables, legal options ------------------------------------------------------------


def test_tables_and_commands() -> None:
    assert (parse("-L").command, parse("-L", "exp").command) == (Cmd.LIST, Cmd.EXP_LIST)
    assert parse("-L", "").command is Cmd.EXP_LIST  # an empty name abbreviates "expect"
    assert parse("-L", "d").table == "dying" and parse("-L", "u").table == "unconfirmed"
    assert parse("-Lexpect").command is Cmd.LIST  # an attached table name is ignored
    assert parse("-C", "expect").command is Cmd.EXP_COUNT
    assert parse("-S", "expect").command is Cmd.EXP_STATS
    assert failure("-L", "bogus") == (2, "unknown type `bogus'")
    assert failure("-U", "expect") == (2, "Can't do --update on expectations")
    assert failure("-D", "dying") == (
        2, "Can't do that command with tables `dying' and `unconfirmed'"
    )  # fmt: skip
    assert failure("-L", "-D") == (2, "Invalid commands combination")


def test_option_legality() -> None:
    assert failure("-L", "-t", "5") == (2, "Illegal option `--timeout' with this command")
    assert failure("-I", "-s", "192.0.2.1", "-d", "192.0.2.2") == (
        2, "You need to supply the `--protonum' option for this command"
    )  # fmt: skip
    assert failure("-G", "-s", "192.0.2.1", "-p", "udp") == (
        2, "you have to specify `--src' and `--dst'"
    )  # fmt: skip
    assert failure("-G", "-q", "192.0.2.1", "-p", "udp") == (
        2, "you have to specify `--reply-src' and `--reply-dst'"
    )  # fmt: skip
    assert failure("-G", "-s", "192.0.2.1", "-d", "192.0.2.2", "-p", "gre", "--srckey", "1") == (
        2, "you have to specify `--srckey' and `--dstkey'"
    )  # fmt: skip
    create = ["-I", "-s", "192.0.2.1", "-d", "192.0.2.2", "-t", "1", "-p", "tcp", "--sport", "1",
              "--dport", "2"]  # fmt: skip
    assert failure(*create) == (2, "You need to supply the `--state' option for this command")
    assert parse(*create, "--state", "LISTEN").tmpl.tcp_state == 9
    assert failure("-s", "192.0.2.1") == (2, "Illegal option `--src' with this command")
    assert parse("--reply-zone", "1").command is None  # conntrack reads past its table here
    assert failure("-L", "-n", "-j") == (
        2, "cannot specify `--src-nat' or `--dst-nat' with `--any-nat'"
    )  # fmt: skip


def test_default_families() -> None:
    assert parse("-L").family == 0 and parse("-D").family == 0
    assert parse("-F", "expect").family == AF_INET and parse("-C").family == AF_INET
    # listing and counting expectations cover both families (1.4.7: IPv4 only)
    assert parse("-L", "expect").family == 0 and parse("-C", "expect").family == 0
    assert parse("-L", "-s", "2001:db8::1").family == AF_INET6
    assert parse("-L", "-f", "ipv6x").family == AF_INET6
    assert failure("-L", "-f", "inet") == (2, "`inet' unsupported protocol")
    assert failure("-L", "-s", "192.0.2.1", "-d", "2001:db8::1") == (
        2, "mismatched address family"
    )  # fmt: skip


# -- keywords ---------------------------------------------------------------------------------


def test_keywords_are_case_insensitive_abbreviations() -> None:
    assert (
        parse("-L", "-o", "XML,ext,kt").output == Output.XML | Output.EXTENDED | Output.KTIMESTAMP
    )
    assert parse("-L", "-o", "userspace").output == Output(0)
    assert parse("-E", "-e", "new,upd").event_mask == 3
    assert failure("-L", "-o", "xml,foo,bar") == (2, "Bad parameter `foo,bar'")
    assert failure("-L", "-o", "xml,") == (2, "Bad parameter `'")
    assert failure("-L", "-o", "save,id") == (
        1, "cannot combine save output with any other output type, use -o save only"
    )  # fmt: skip


def test_nat_keywords_win_and_only_warn() -> None:
    err = io.StringIO()
    parsed = Parser("/nonexistent", err).parse(["conntrack", "-E", "-e", "D", "-o", "s"])
    assert parsed.event_mask == 0 and parsed.output == Output(0)
    assert err.getvalue() == (
        "WARNING: ignoring DST_NAT, use --dst-nat instead\n"
        "WARNING: ignoring SRC_NAT, use --src-nat instead\n"
    )


def test_status_values_and_negations() -> None:
    t = parse("-L", "-u", "ASSURED,!SEEN_REPLY").tmpl
    assert (t.status, t.status_clear) == (Status.ASSURED, Status.SEEN_REPLY)
    t = parse("-L", "-u", "UNREPLIED", "-u", "seen").tmpl
    assert (t.status, t.status_clear) == (Status.SEEN_REPLY, Status.SEEN_REPLY)
    assert failure("-L", "-u", "!UNREPLIED") == (2, "Bad parameter `UNREPLIED'")
    assert failure("-L", "-u", ",") == (2, "Bad parameter `,'")
    assert failure("-L", "-u", "!") == (2, "Bad parameter `'")


# -- values -----------------------------------------------------------------------------------


def test_addresses() -> None:
    t = parse("-L", "-s", "10.1").tmpl  # inet_aton forms
    assert (t.orig_family, t.orig_src) == (AF_INET, "10.0.0.1")
    assert parse("-L", "-s", "0x0a000001").tmpl.orig_src == "10.0.0.1"
    assert parse("-L", "-d", "2001:DB8::0:1").tmpl.orig_dst == "2001:db8::1"
    cidr = parse("-L", "-s", "192.0.2.77/ 24")
    assert cidr.options & Opt.MASK_SRC and cidr.tmpl.mask_src == "255.255.255.0"
    assert not parse("-L", "-s", "192.0.2.1/32").options & Opt.MASK_SRC
    assert parse("-L", "-s", "192.0.2.1/").tmpl.mask_src == "0.0.0.0"
    assert failure("-L", "-s", "192.0.2.1/33") == (2, "Invalid netmask")
    assert failure("-L", "-s", "::1/-1") == (2, "Invalid netmask")
    assert failure("-L", "-q", "192.0.2.1/24") == (2, "CIDR notation unavailable for `--reply-dst'")
    assert failure("-L", "-s", "nowhere") == (2, "Invalid IP address `nowhere'")


def test_nat_addresses() -> None:
    t = parse("-L", "-n", "192.0.2.1:80").tmpl
    assert (t.snat_addr, t.snat_port) == ("192.0.2.1", 80)
    t = parse("-L", "-g", "[2001:db8::1]:53").tmpl
    assert (t.dnat_addr, t.dnat_port) == ("2001:db8::1", 53)
    assert parse("-L", "-g", "2001:db8::1").tmpl.dnat_addr == "2001:db8::1"
    t = parse("-L", "-j", "192.0.2.9").tmpl  # both directions (1.4.7 clobbers --src instead)
    assert (t.snat_addr, t.dnat_addr, t.orig_src) == ("192.0.2.9", "192.0.2.9", None)
    assert parse("-L", "--src-nat=192.0.2.1").tmpl.snat_addr is None  # attached: ignored
    assert failure("-L", "-n", "192.0.2.1:") == (2, "No port specified after `:'")
    assert failure("-L", "-n", "192.0.2.1:65536") == (2, "Invalid port `65536'")
    assert failure("-L", "-n", "[]:1") == (2, "No IPv6 address specified")
    assert failure("-L", "-n", "[::1:1") == (2, "No closing ']' around IPv6 address")


def test_numbers_parse_as_c_does() -> None:
    t = parse("-L", "-m", "0x10/0xf0", "-w", "011", "-c", "junk").tmpl
    assert (t.mark, t.mark_mask, t.zone, t.secmark) == (0x10, 0xF0, 9, 0)
    assert parse("-L", "-m", "-1").tmpl.mark == 0xFFFFFFFF
    assert parse("-D", "-t", " 12abc").tmpl.timeout == 12
    assert ct.c_strtol("  -0x1fg", 0) == (-31, 7)
    assert ct.c_strtol("0x", 0) == (0, 1)  # the "0" is the number, "x" what follows


def test_protocols() -> None:
    assert parse("-L", "-p", "TCP").tmpl.orig_proto == 6
    assert parse("-L", "-p", "0x11").protocol is ct.PROTOCOL_BY_NAME["udp"]
    unknown = parse("-L", "-p", "ospf")
    assert unknown.protocol is ct.UNKNOWN_PROTOCOL and unknown.protonum == 89
    assert failure("-L", "-p", "256") == (2, "`256' unsupported protocol")
    assert failure("-L", "--sport", "1") == (2, "unknown option `--sport'")
    assert failure("-L", "-p", "tcp", "--state", "FOO") == (2, "unknown TCP state `FOO'")
    # conntrack 1.4.7 crashes here
    assert failure("-L", "-p", "sctp", "--state", "FOO") == (2, "unknown SCTP state `FOO'")
    assert failure("-L", "-p", "dccp", "--role", "x") == (2, "Unknown DCCP role `x'")
    t = parse("-L", "-p", "gre", "--srckey", "0x10", "--reply-key-dst", "010").tmpl
    assert (t.orig_sport, t.reply_dport, t.reply_proto) == (16, 8, 47)
    t = parse("-L", "-r", "192.0.2.1", "-p", "icmp", "--icmp-type", "8", "--icmp-id", "70000").tmpl
    assert (t.icmp_type, t.icmp_id, t.reply_proto) == (8, 70000 & 0xFFFF, 1)
    # the real tag (conntrack 1.4.7 takes it byte-swapped)
    assert parse("-U", "-p", "sctp", "--orig-vtag", "287454020").tmpl.sctp_vtag_orig == 0x11223344
    # a protocol's options come with -p; after another -p the earlier ones do nothing
    t = parse("-L", "-p", "tcp", "-p", "udp", "--sport", "5").tmpl
    assert t.orig_sport is None and t.orig_proto == 17


def test_tcp_creation_gets_liberal_window_tracking() -> None:
    base = ["-I", "-s", "192.0.2.1", "-d", "192.0.2.2", "-t", "9", "-p", "tcp", "--sport", "1",
            "--dport", "2"]  # fmt: skip
    assert parse(*base, "--state", "ESTABLISHED").tmpl.tcp_flags == 0x0A
    assert parse(*base, "--state", "TIME_WAIT").tmpl.tcp_flags == 0x0E


def test_labels(tmp_path: Path) -> None:
    path = tmp_path / "connlabel.conf"
    path.write_text("0 zero\n5 five\n40 forty\n")
    parsed = parse("-L", "-l", "zero,five", "-l", "forty", labels=str(path))
    assert parsed.tmpl.labels == 1 | 1 << 5 | 1 << 40 and parsed.labelmap is not None
    change = parse("-U", "--label-add", "forty", labels=str(path)).tmpl
    assert (change.labels_change, change.labels_change_size) == (1 << 40, 8)
    assert parse("-U", "--label-del", labels=str(path)).tmpl.labels_change is None
    assert parse("-U", "--label-del", "five", labels=str(path)).tmpl.labels_change == 32
    assert parse("-U", "--label-del=five", labels=str(path)).tmpl.labels_change == 32
    err = io.StringIO()
    with pytest.raises(CommandFailed) as info:
        Parser(str(path), err).parse(["conntrack", "-L", "-l", "six"])
    assert info.value.message == "unknown label 'six'" and err.getvalue() == ""
    with pytest.raises(CommandFailed) as info:
        Parser(str(path), err).parse(["conntrack", "-U", "--label-add", "five", "--label-del"])
    assert info.value.status == 1
    missing = io.StringIO()
    Parser(str(tmp_path / "none"), missing).parse(["conntrack", "-L", "-o", "labels"])
    assert missing.getvalue() == "nfct_labelmap_new: No such file or directory\n"


# -- which flows match -----------------------------------------------------------------------


def flow(**others: Any) -> Flow:
    orig = Tuple(AF_INET, "192.0.2.1", "198.51.100.2", 6, 1000, 80)
    values: dict[str, Any] = {"orig": orig, "reply": orig.inverted(),
                              "status": Status.SEEN_REPLY | Status.ASSURED, "mark": 0,
                              "timeout": 100, "id": 1, "protoinfo": TCPInfo(3)}  # fmt: skip
    values.update(others)
    return Flow(**values)


def matches(args: list[str], f: Flow) -> bool:
    parsed = parse(*args)
    check = flow_filter(parsed, network_checks(parsed))
    return check is None or check(f)


def test_filters_follow_conntrack() -> None:
    f = flow()
    assert matches(["-L", "-p", "tcp", "--dport", "80"], f)
    assert not matches(["-L", "-p", "tcp", "--dport", "81"], f)
    assert matches(["-L", "-s", "192.0.2.0/24", "-d", "198.51.100.2"], f)
    assert not matches(["-L", "-s", "192.0.3.0/24"], f)
    assert matches(["-L", "-r", "198.51.100.2", "-p", "tcp", "--state", "ESTABLISHED"], f)
    assert not matches(["-L", "-p", "tcp", "--state", "SYN_SENT"], f)
    assert not matches(["-L", "-p", "sctp", "--state", "ESTABLISHED"], f)
    assert matches(["-L", "-w", "0"], f) and not matches(["-L", "-w", "0"], replace(f, zone=3))
    assert matches(["-L", "--orig-zone", "0"], f)
    assert matches(["-L", "-m", "0x10/0x10"], replace(f, mark=0x11))
    assert not matches(["-L", "-m", "0x10/0x10"], replace(f, mark=0x01))
    assert not matches(["-D", "-u", "UNREPLIED"], f)  # 1.4.7's -D matches every flow here
    assert matches(["-D", "-u", "!EXPECTED,ASSURED"], f)
    assert matches(["-D", "-t", "100", "-i", "1"], f) and not matches(
        ["-D", "-t", "99", "-i", "1"], f
    )
    assert matches(["-D", "-t", "99"], f)  # a timeout alone is no criterion for conntrack
    # GRE keys are not compared (as in conntrack); ICMP fields are
    gre = Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 47, 0x10, 0x20)
    assert matches(["-L", "-p", "gre", "--srckey", "1"], flow(orig=gre, reply=gre.inverted()))
    ping = Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 1, icmp_type=8, icmp_code=0, icmp_id=7)
    echo = flow(orig=ping, reply=ping.inverted(), protoinfo=None)
    assert matches(["-L", "-p", "icmp", "--icmp-type", "8", "--icmp-id", "7"], echo)
    assert not matches(["-L", "-p", "icmp", "--icmp-type", "0"], echo)


def test_labels_and_nat_filters(tmp_path: Path) -> None:
    path = tmp_path / "connlabel.conf"
    path.write_text("1 one\n2 two\n")
    parsed = parse("-L", "-l", "one,two", labels=str(path))
    check = flow_filter(parsed)
    assert check is not None
    assert check(flow(labels=(6).to_bytes(16, "little")))
    assert not check(flow(labels=(2).to_bytes(16, "little"))) and not check(flow())
    done = Status.SEEN_REPLY | Status.SRC_NAT_DONE | Status.DST_NAT_DONE
    orig = Tuple(AF_INET, "192.0.2.1", "203.0.113.1", 17, 1000, 53)
    snat = flow(orig=orig, reply=replace(orig.inverted(), dst="198.51.100.9"), status=done)
    assert matches(["-L", "-n"], snat) and not matches(["-L", "-g"], snat)
    assert matches(["-L", "-n", "198.51.100.9"], snat)
    assert not matches(["-L", "-n", "198.51.100.8"], snat)
    assert matches(["-L", "-j", "198.51.100.9", "-p", "udp"], snat)
    # without SRC_NAT_DONE the changed address is not NAT for conntrack
    assert not matches(["-L", "-n"], replace(snat, status=Status.SEEN_REPLY))
    dnat = flow(orig=orig, reply=replace(orig.inverted(), src="192.0.2.5", sport=5353),
                status=done)  # fmt: skip
    assert matches(["-L", "-g", "192.0.2.5:5353"], dnat)
    assert not matches(["-L", "-g", "192.0.2.5:53"], dnat)


def test_update_selects_by_tuple_not_by_meta() -> None:
    parsed = parse("-U", "-p", "tcp", "-m", "7", "-u", "ASSURED")
    check = update_filter(parsed, network_checks(parsed))
    assert check is not None and check(flow(mark=3))
    change = ct.update_flow(parsed, flow(mark=3))
    assert change is not None and (change.mark, change.status) == (7, flow().status)
    assert ct.update_flow(parsed, flow(mark=7)) is None  # nothing would change
    masked = parse("-U", "-m", "0x10/0x10", "-f", "ipv4")
    assert ct.update_flow(masked, flow(mark=0x01)).mark == 0x11  # type: ignore[union-attr]


def test_label_updates_send_the_kernels_size(tmp_path: Path) -> None:
    path = tmp_path / "connlabel.conf"
    path.write_text("1 one\n5 five\n")
    current = (1 << 1).to_bytes(16, "little")
    add = ct.update_flow(parse("-U", "--label-add", "five", labels=str(path)),
                         flow(labels=current))  # fmt: skip
    assert add is not None and add.labels == add.labels_mask == (32).to_bytes(16, "little")
    fresh = ct.update_flow(parse("-U", "--label-add", "five", labels=str(path)), flow())
    assert fresh is not None and (fresh.labels, fresh.labels_mask) == ((32).to_bytes(4, "little"),
                                                                       None)  # fmt: skip
    delete = ct.update_flow(parse("-U", "--label-del", "one", labels=str(path)),
                            flow(labels=current))  # fmt: skip
    assert delete is not None and delete.labels == bytes(16)
    everything = ct.update_flow(parse("-U", "--label-del", labels=str(path)), flow(labels=current))
    assert everything is not None and everything.labels == bytes(4)
    assert ct.update_flow(parse("-U", "--label-del", labels=str(path)), flow()) is None


def test_creation_flow() -> None:
    parsed = parse(*shlex.split("-I -s 192.0.2.1 -d 192.0.2.2 -p icmp --icmp-type 8"
                                " --icmp-code 0 -t 30 -m 5 -u SEEN_REPLY -w 3"))  # fmt: skip
    f = ct.creation_flow(parsed)
    assert f.orig == Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 1, icmp_type=8, icmp_code=0,
                           icmp_id=0)  # fmt: skip
    assert f.reply is not None and (f.reply.src, f.reply.icmp_type) == ("192.0.2.2", 0)
    # the mark given before -u stays (1.4.7 gives the flow the status bits as mark)
    assert (f.timeout, f.mark, f.status, f.zone) == (30, 5, Status.SEEN_REPLY, 3)
    reverse = ct.creation_flow(parse("-I", "-r", "192.0.2.2", "-q", "192.0.2.1", "-p", "udp",
                                     "--reply-port-src", "53", "--reply-port-dst", "9", "-t",
                                     "5", "--src-nat", "192.0.2.7:99"))  # fmt: skip
    assert reverse.orig == Tuple(AF_INET, "192.0.2.1", "192.0.2.2", 17, 9, 53)
    assert reverse.nat_src is not None and reverse.nat_src.min_port == 99
    sctp = ct.creation_flow(parse("-I", "-s", "192.0.2.1", "-d", "192.0.2.2", "-p", "sctp",
                                  "--sport", "1", "--dport", "2", "-t", "5", "--state", "CLOSED",
                                  "--orig-vtag", "1", "--reply-vtag", "2"))  # fmt: skip
    assert sctp.protoinfo == SCTPInfo(1, 1, 2)


# -- running commands against a fake client ------------------------------------------------


class FakeClient:
    """The parts of nfkit.conntrack.Conntrack the CLI uses, on a list of flows."""

    def __init__(self, flows: list[Flow], fail: int | None = None) -> None:
        self.flows = flows
        self.fail = fail
        self.deleted: list[Flow] = []
        self.flushed: list[int | None] = []

    def _check(self) -> None:
        if self.fail is not None:
            raise NetlinkError.from_errno(self.fail, "fake")

    def dump(self, criteria: Filter | int = 0, **options: Any) -> Iterator[Flow]:
        self._check()
        flt = criteria if isinstance(criteria, Filter) else Filter(family=criteria)
        return iter([f for f in self.flows if flt.matches(f)])

    def dump_as(self, target: FlowTarget[str], criteria: Filter | int = 0,
                **options: Any) -> Iterator[str]:  # fmt: skip
        return map(target.convert, self.dump(criteria))

    def get(self, key: Tuple | Flow, zone: int | None = None) -> Flow:
        self._check()
        wanted = key if isinstance(key, Tuple) else key.orig
        for f in self.flows:
            if f.orig == wanted:
                return f
        raise NetlinkError.from_errno(errno.ENOENT, "get")

    def delete_many(
        self,
        criteria: Filter,
        *,
        also: Callable[[Flow], bool] | None = None,
        collect: list[Flow] | None = None,
    ) -> int:
        self._check()
        flows = [f for f in self.flows if criteria.matches(f) and (also is None or also(f))]
        self.deleted += flows
        if collect is not None:
            collect += flows
        return len(flows)

    def flush(self, family: int | None = None) -> None:
        self.flushed.append(family)
        self._check()

    def count(self) -> int:
        self._check()
        return GlobalStats(len(self.flows)).entries

    def stats_per_cpu(self) -> list[CPUStats]:
        self._check()
        return [CPUStats(0, {"found": 1}), CPUStats(1, {"found": 2})]

    def expectations(self, family: int = 0) -> Iterator[Expectation]:
        self._check()
        return iter([])

    def close(self) -> None:
        pass


def run(args: list[str], client: FakeClient) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = ct.main(args, out=out, err=err, connect=lambda: client,  # type: ignore[arg-type,return-value]
                     labels_path="/nonexistent")  # fmt: skip
    return status, out.getvalue(), err.getvalue()


TABLE = [flow(), flow(orig=Tuple(AF_INET6, "2001:db8::1", "2001:db8::2", 17, 5, 53),
                      reply=Tuple(AF_INET6, "2001:db8::2", "2001:db8::1", 17, 53, 5),
                      protoinfo=None, mark=7, status=Status(8))]  # fmt: skip


def test_list_counts_and_summarises() -> None:
    status, out, err = run(["-L"], FakeClient(TABLE))
    assert (
        status == 0 and out.count("\n") == 2 and err == PREFIX + "2 flow entries have been shown.\n"
    )
    assert out.startswith("tcp      6 100 ESTABLISHED src=192.0.2.1 dst=198.51.100.2 sport=1000")
    status, out, err = run(["-L", "-m", "7", "-o", "xml"], FakeClient(TABLE))
    assert out.startswith('<?xml version="1.0" encoding="utf-8"?>\n<conntrack>\n<flow>')
    assert out.endswith("</flow>\n</conntrack>\n") and out.count("<flow>") == 1
    status, out, err = run(["-L", "-p", "sctp"], FakeClient(TABLE))
    assert (status, out) == (0, "")  # no document without flows
    status, out, err = run(["-L", "-u", "UNSET"], FakeClient(TABLE))
    assert (status, err) == (1, PREFIX + "Operation failed: invalid parameters\n")


def test_failures_and_exit_codes() -> None:
    status, _, err = run(["-L"], FakeClient(TABLE, fail=errno.EPERM))
    assert (status, err) == (1, PREFIX + "Operation failed: sorry, you must be root or get "
                                         "CAP_NET_ADMIN capability to do this\n")  # fmt: skip
    status, _, err = run(["-G", "-s", "192.0.2.9", "-d", "192.0.2.8", "-p", "udp", "--sport",
                          "1", "--dport", "2"], FakeClient(TABLE))  # fmt: skip
    assert (status, err) == (1, PREFIX + "Operation failed: such conntrack doesn't exist\n")
    status, out, err = run(["-G", "-s", "192.0.2.1", "-d", "198.51.100.2", "-p", "tcp",
                            "--sport", "1000", "--dport", "80"], FakeClient(TABLE))  # fmt: skip
    assert (
        status == 0 and out.count("\n") == 1 and err.endswith("1 flow entries have been shown.\n")
    )
    status, _, err = run(["-L", "--bogus"], FakeClient(TABLE))
    assert (status, err) == (2, PREFIX + "unknown option `--bogus'\n" + TRY)


def test_delete_prints_and_counts() -> None:
    client = FakeClient(TABLE)
    status, out, err = run(["-D", "-f", "ipv6", "-o", "save"], client)
    assert status == 0 and client.deleted == [TABLE[1]]
    assert out == ("-D -t 100 -u CONFIRMED -m 7 -s 2001:db8::1 -d 2001:db8::2 -r 2001:db8::2 "
                   "-q 2001:db8::1 -p udp --sport 5 --dport 53 --reply-port-src 53 "
                   "--reply-port-dst 5\n").replace("CONFIRMED", "UNSET")  # fmt: skip
    assert err == PREFIX + "1 flow entries have been deleted.\n"
    status, out, err = run(["-D", "-s", "192.0.2.99"], FakeClient(TABLE))
    assert (status, out, err) == (1, "", PREFIX + "0 flow entries have been deleted.\n")


def test_flush_count_and_stats() -> None:
    client = FakeClient(TABLE)
    status, _, err = run(["-F", "-f", "ipv6"], client)
    assert (status, client.flushed) == (0, [AF_INET6])  # 1.4.7 flushes every family
    assert err == PREFIX + "connection tracking table has been emptied.\n"
    status, _, err = run(["-F"], FakeClient(TABLE, fail=errno.EPERM))
    assert status == 1 and err.startswith(PREFIX + "connection tracking table has been emptied.\n")
    assert run(["-C"], FakeClient(TABLE)) == (0, "2\n", "")
    assert run(["-S"], FakeClient(TABLE)) == (0, "cpu=0   \tfound=1 \ncpu=1   \tfound=2 \n", "")
    assert run(["-C", "expect"], FakeClient(TABLE)) == (0, "0\n", "")


def test_version_help_and_usage() -> None:
    assert run(["-V"], FakeClient([])) == (0, "conntrack v1.4.7 (conntrack-tools)\n", "")
    status, out, _ = run(["-h", "-p", "icmp"], FakeClient([]))
    assert status == 0 and out.startswith("Command line interface for the connection tracking")
    assert out.endswith("Proto `icmp' help:\n  --icmp-type\t\t\ticmp type\n"
                        "  --icmp-code\t\t\ticmp code\n  --icmp-id\t\t\ticmp id\n")  # fmt: skip
    assert run([], FakeClient([]))[1] == run(["--help"], FakeClient([]))[1]


def test_nfkit_dispatches_to_conntrack(capsys: pytest.CaptureFixture[str]) -> None:
    assert nfkit_main(["conntrack", "-V"]) == 0
    assert capsys.readouterr().out == "conntrack v1.4.7 (conntrack-tools)\n"


# -- --load-file ----------------------------------------------------------------------------


def test_load_file_lines_split_like_a_shell_subset() -> None:
    assert ct.split_line('-I  -s "192.0.2.1"\t-p tcp --x "a \\" b" "" x\n') == [
        "-I", "-s", "192.0.2.1", "-p", "tcp", "--x", 'a " b', "", "x",
    ]  # fmt: skip
    with pytest.raises(CommandFailed, match="too many arguments"):
        ct.split_line("-x " * 300)


def test_load_file_parses_everything_first(tmp_path: Path) -> None:
    path = tmp_path / "commands"
    path.write_text("# flush, then list\n\n  -F\n-L\n")
    client = FakeClient(TABLE)
    status, _, err = run(["-R", str(path)], client)
    assert (status, err) == (2, PREFIX + "Cannot use command `-L' with --load-file\n" + TRY)
    assert client.flushed == []
    path.write_text("-F\n-D -f ipv6\n")
    status, out, err = run(["--load-file", str(path)], client)
    # no summary lines, but -F's message and what -D deleted
    assert (status, out.count("\n")) == (0, 1)
    assert err == PREFIX + "connection tracking table has been emptied.\n"
    assert client.flushed == [None] and client.deleted == [TABLE[1]]
    status, _, err = run(["-R", str(tmp_path / "missing")], client)
    assert status == 2 and "Failed to open file" in err


def test_error_texts() -> None:
    assert ct.error_text(errno.ENOENT, Cmd.GET) == "such conntrack doesn't exist"
    assert ct.error_text(errno.ENOENT, Cmd.UPDATE) == "No such file or directory"
    assert ct.error_text(errno.EINVAL, Cmd.ADD) == "Invalid argument"  # outside 1.4.7's mask
    assert ct.error_text(ct.ENOTSUPP, Cmd.LIST) == "function not implemented"
    assert ct.error_text(errno.ENOENT, Cmd.EXP_CREATE) == "master conntrack not found"
