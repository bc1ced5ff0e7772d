"""conntrack 1.4.7's text formats (nfkit.cli.ctformat), byte for byte.

Golden lines are the verified samples of the reference (§2.5.2, kernel 6.18,
conntrack 1.4.7 with counters and timestamps on) and the examples of the
conntrack-tools manual; the lab's differential tests compare whole tables.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from nfkit.cli import ctformat as fmt
from nfkit.cli.ctformat import FlowText, LabelMap
from nfkit.conntrack.model import (
    AF_INET,
    AF_INET6,
    Counters,
    CPUStats,
    DCCPInfo,
    EventType,
    Expectation,
    ExpectFlag,
    Flow,
    SCTPInfo,
    Status,
    TCPInfo,
    Tuple,
)

LO = "127.0.0.1"
START = 1795257969 * fmt.NSEC_PER_SEC + 123  # Sat Nov 21 10:46:09 2026 UTC
REPLIED = Status.SEEN_REPLY | Status.CONFIRMED
ASSURED = REPLIED | Status.ASSURED


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """ctime() and <when> use local time: make it UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def flow(
    proto: int,
    sport: int | None = None,
    dport: int | None = None,
    *,
    family: int = AF_INET,
    src: str = LO,
    dst: str = LO,
    icmp: tuple[int, int, int] | None = None,
    counters: tuple[int, int, int, int] | None = (1, 29, 0, 0),
    **others: object,
) -> Flow:
    """A dumped flow (mark 0, use 1, started at START) with both tuples."""
    orig = Tuple(family, src, dst, proto, sport, dport)
    reply = Tuple(family, dst, src, proto, dport, sport)
    if icmp is not None:
        kind, code, ident = icmp
        orig = replace(orig, icmp_type=kind, icmp_code=code, icmp_id=ident)
        reply = replace(orig.inverted(), zone=None)
    values: dict[str, object] = {"mark": 0, "use": 1, "start": START, "id": 4055814710}
    if counters is not None:
        values["counters_orig"] = Counters(*counters[:2])
        values["counters_reply"] = Counters(*counters[2:])
    values.update(others)
    return Flow(orig, reply, **values)  # type: ignore[arg-type]


NOW = START // fmt.NSEC_PER_SEC

# The verified `conntrack -L` sample of the reference (§2.5.2), with its flows.
SAMPLES = [
    (
        flow(17, 58805, 5353, timeout=29, status=Status.CONFIRMED),
        "udp      17 29 src=127.0.0.1 dst=127.0.0.1 sport=58805 dport=5353 packets=1 bytes=29"
        " [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5353 dport=58805 packets=0 bytes=0"
        " mark=0 delta-time=0 use=1",
    ),
    (
        flow(58, family=AF_INET6, src="::1", dst="::1", icmp=(128, 0, 7836),
             counters=(1, 104, 1, 104), timeout=29, status=REPLIED),
        "icmpv6   58 29 src=::1 dst=::1 type=128 code=0 id=7836 packets=1 bytes=104 src=::1"
        " dst=::1 type=129 code=0 id=7836 packets=1 bytes=104 mark=0 delta-time=0 use=1",
    ),
    (
        flow(6, 60806, 8080, counters=(5, 273, 3, 164), timeout=119, status=ASSURED,
             protoinfo=TCPInfo(7)),
        "tcp      6 119 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=60806 dport=8080 packets=5"
        " bytes=273 src=127.0.0.1 dst=127.0.0.1 sport=8080 dport=60806 packets=3 bytes=164"
        " [ASSURED] mark=0 delta-time=0 use=1",
    ),
    (
        flow(1, icmp=(8, 0, 7835), counters=(1, 84, 1, 84), timeout=29, status=REPLIED),
        "icmp     1 29 src=127.0.0.1 dst=127.0.0.1 type=8 code=0 id=7835 packets=1 bytes=84"
        " src=127.0.0.1 dst=127.0.0.1 type=0 code=0 id=7835 packets=1 bytes=84 mark=0"
        " delta-time=0 use=1",
    ),
    (
        flow(132, 40000, 9999, counters=(1, 52, 0, 0), timeout=9, status=Status.CONFIRMED,
             protoinfo=SCTPInfo(1, 0, 0x44332211), start=START - fmt.NSEC_PER_SEC),
        "sctp     132 9 CLOSED src=127.0.0.1 dst=127.0.0.1 sport=40000 dport=9999 packets=1"
        " bytes=52 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=9999 dport=40000 packets=0"
        " bytes=0 mark=0 delta-time=1 use=1",
    ),
    (
        flow(47, 0, 0, counters=(1, 44, 0, 0), timeout=29, status=Status.CONFIRMED,
             start=START - fmt.NSEC_PER_SEC),
        "gre      47 29 src=127.0.0.1 dst=127.0.0.1 srckey=0x0 dstkey=0x0 packets=1 bytes=44"
        " [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 srckey=0x0 dstkey=0x0 packets=0 bytes=0"
        " mark=0 delta-time=1 use=1",
    ),
    (
        flow(253, counters=(1, 25, 0, 0), timeout=599, status=Status.CONFIRMED,
             start=START - fmt.NSEC_PER_SEC),
        "unknown  253 599 src=127.0.0.1 dst=127.0.0.1 packets=1 bytes=25 [UNREPLIED]"
        " src=127.0.0.1 dst=127.0.0.1 packets=0 bytes=0 mark=0 delta-time=1 use=1",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("sample", "line"), SAMPLES)
def test_default_line(sample: Flow, line: str) -> None:
    text = FlowText()
    assert text.line(sample, now=NOW) == line
    assert text.generic_line(sample, now=NOW) == line


def test_extended_id_and_kernel_timestamps() -> None:
    text = FlowText(layer3=True, show_id=True, ktimestamp=True)
    tcp, line = SAMPLES[2]
    assert text.line(tcp, now=NOW) == (
        "ipv4     2 " + line.replace(" use=1", " [start=Sat Nov 21 10:46:09 2026] use=1")
        + " id=4055814710"
    )  # fmt: skip
    v6 = SAMPLES[1][0]
    assert text.line(v6, now=NOW).startswith("ipv6     10 icmpv6   58 29 src=::1")


def test_events() -> None:
    """NEW/UPDATE carry no counters (nor a zero mark); DESTROY no timeout, but timestamps."""
    text = FlowText()
    new = flow(6, 42826, 8081, counters=None, timeout=120, status=Status.CONFIRMED,
               protoinfo=TCPInfo(1), mark=None, use=None, start=None)  # fmt: skip
    assert text.line(new, EventType.NEW) == (
        "    [NEW] tcp      6 120 SYN_SENT src=127.0.0.1 dst=127.0.0.1 sport=42826 dport=8081"
        " [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=8081 dport=42826"
    )
    update = replace(new, timeout=432000, status=ASSURED, protoinfo=TCPInfo(3))
    assert text.line(update, EventType.UPDATE).startswith(" [UPDATE] tcp      6 432000 ESTAB")
    stop = START + 30 * fmt.NSEC_PER_SEC
    destroy = flow(17, 41557, 5354, status=Status.CONFIRMED, mark=None, use=None, stop=stop)
    stamped = FlowText(ktimestamp=True)
    assert stamped.line(destroy, EventType.DESTROY) == (
        "[DESTROY] udp      17 src=127.0.0.1 dst=127.0.0.1 sport=41557 dport=5354 packets=1"
        " bytes=29 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5354 dport=41557 packets=0"
        " bytes=0 delta-time=30 [start=Sat Nov 21 10:46:09 2026]"
        " [stop=Sat Nov 21 10:46:39 2026]"
    )
    assert fmt.event_time_prefix(1795257973_048634_900) == "[1795257973.048634]\t"
    assert fmt.event_time_prefix(5_000_001_000) == "[00000005.000001]\t"


def test_flags_zones_marks_and_labels() -> None:
    labels = LabelMap({0: "zero", 5: "five", 64: "big"})
    text = FlowText(labels=labels)
    base = flow(17, 1, 2, counters=None, start=None, timeout=30, status=ASSURED)
    assert text.line(replace(base, status=ASSURED | Status.OFFLOAD)).endswith(
        "[OFFLOAD] mark=0 use=1"
    )
    assert "[HW_OFFLOAD]" in text.line(replace(base, status=ASSURED | Status.HW_OFFLOAD))
    zoned = replace(base, orig=replace(base.orig, zone=3), reply=replace(base.reply, zone=4),
                    zone=7, mark=42, secctx="system_u:object_r:x", helper="ftp")  # fmt: skip
    assert text.line(zoned) == (
        "udp      17 30 src=127.0.0.1 dst=127.0.0.1 sport=1 dport=2 zone-orig=3 src=127.0.0.1"
        " dst=127.0.0.1 sport=2 dport=1 zone-reply=4 [ASSURED] mark=42"
        " secctx=system_u:object_r:x zone=7 helper=ftp use=1"
    )
    bits = (1 << 0 | 1 << 5 | 1 << 64 | 1 << 100).to_bytes(16, "little")
    assert text.line(replace(base, labels=bits)).endswith(" use=1 labels=zero,five,big")
    unnamed = (1 << 1).to_bytes(16, "little")
    assert text.line(replace(base, labels=unnamed)).endswith(" use=1 labels")
    assert FlowText().line(replace(base, labels=bits)).endswith(" use=1")


def test_offloaded_flows_have_no_timeout_nor_state() -> None:
    offloaded = flow(6, 1, 2, counters=None, start=None, status=ASSURED | Status.OFFLOAD)
    assert FlowText().line(offloaded) == (
        "tcp      6 src=127.0.0.1 dst=127.0.0.1 sport=1 dport=2 src=127.0.0.1 dst=127.0.0.1"
        " sport=2 dport=1 [OFFLOAD] mark=0 use=1"
    )


def _variations() -> Iterator[Flow]:
    protos = [(6, TCPInfo(3)), (6, TCPInfo(None)), (17, None), (132, SCTPInfo(4, 1, 2)),
              (33, DCCPInfo(4)), (47, None), (1, None), (58, None), (253, None)]  # fmt: skip
    for (proto, info), counters, start, timeout, status, rare in itertools.product(
        protos,
        (None, (1, 2, 3, 4)),
        (None, START),
        (None, 5),
        (None, ASSURED, Status(0)),
        ("", "zone", "orig_zone", "stop", "labels", "no_mark", "helper", "no_reply"),
    ):
        icmp = (8, 0, 9) if proto in (1, 58) else None
        family = AF_INET6 if proto == 58 else AF_INET
        f = flow(proto, None if icmp else 10, None if icmp else 20, icmp=icmp, family=family,
                 src="::1" if family == AF_INET6 else LO, dst="::2" if family == AF_INET6 else LO,
                 counters=counters, start=start, timeout=timeout, status=status,
                 protoinfo=info)  # fmt: skip
        if rare == "zone":
            f.zone = 3
        elif rare == "orig_zone":
            assert f.orig is not None
            f.orig = replace(f.orig, zone=4)
        elif rare == "stop" and start:
            f.stop = START + 5 * fmt.NSEC_PER_SEC
        elif rare == "labels":
            f.labels = bytes(16)
        elif rare == "no_mark":
            f.mark = None
        elif rare == "helper":
            f.helper = "ftp"
        elif rare == "no_reply":
            f.reply = None
        yield f


@pytest.mark.parametrize(
    "options",
    [{}, {"layer3": True}, {"show_id": True}, {"ktimestamp": True},
     {"labels": LabelMap({0: "zero"})}, {"layer3": True, "ktimestamp": True, "show_id": True}],
)  # fmt: skip
def test_compiled_lines_equal_the_generic_ones(options: dict[str, object]) -> None:
    """The per-shape compiled lines, in any order of shapes, are the generic lines."""
    text = FlowText(**options)  # type: ignore[arg-type]
    flows = list(_variations())
    for event in (None, EventType.NEW, EventType.DESTROY):
        for f in flows + flows[::-1]:
            assert text.line(f, event, NOW) == text.generic_line(f, event, NOW), f


# -- XML ------------------------------------------------------------------------------------


def test_xml_flow() -> None:
    tcp = SAMPLES[2][0]
    assert fmt.flow_xml(tcp, now=NOW) == (
        '<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4">'
        "<src>127.0.0.1</src><dst>127.0.0.1</dst></layer3>"
        '<layer4 protonum="6" protoname="tcp"><sport>60806</sport><dport>8080</dport></layer4>'
        "<counters><packets>5</packets><bytes>273</bytes></counters></meta>"
        '<meta direction="reply"><layer3 protonum="2" protoname="ipv4"><src>127.0.0.1</src>'
        '<dst>127.0.0.1</dst></layer3><layer4 protonum="6" protoname="tcp"><sport>8080</sport>'
        "<dport>60806</dport></layer4><counters><packets>3</packets><bytes>164</bytes>"
        '</counters></meta><meta direction="independent"><state>TIME_WAIT</state>'
        "<timeout>119</timeout><mark>0</mark><use>1</use><id>4055814710</id><assured/>"
        "<deltatime>0</deltatime></meta></flow>"
    )


def test_xml_quirks() -> None:
    icmp = SAMPLES[3][0]
    assert '<layer4 protonum="1" protoname="icmp"></layer4>' in fmt.flow_xml(icmp, now=NOW)
    gre = fmt.flow_xml(SAMPLES[5][0], now=NOW)
    assert "<srckey>0x0</srckey><dstkey>0x0</dstkey>" in gre and "<unreplied/>" in gre
    # SCTP states by their own names (conntrack 1.4.7 shows CLOSED as SYN_SENT)
    assert "<state>CLOSED</state>" in fmt.flow_xml(SAMPLES[4][0], now=NOW)
    # the reply's counters only when the original ones are present (zeros otherwise)
    one_sided = replace(SAMPLES[0][0], counters_reply=None)
    assert fmt.flow_xml(one_sided, now=NOW).count("<packets>0</packets>") == 1
    stopped = replace(SAMPLES[0][0], stop=START + 2_500_000_000)
    text = fmt.flow_xml(stopped, ktimestamp=True, labels=LabelMap({3: "x"}))
    assert f"<timestamp><start>{START}</start><stop>{START + 2_500_000_000}</stop>" in text
    assert "<deltatime>2</deltatime>" in text and "<labels>" not in text
    labelled = fmt.flow_xml(replace(SAMPLES[0][0], labels=(8).to_bytes(4, "little")),
                            labels=LabelMap({3: "x"}), now=NOW)  # fmt: skip
    assert "<mark>0</mark><labels><label>x</label></labels><use>" in labelled
    assert fmt.flow_xml(SAMPLES[0][0], EventType.UPDATE, now=NOW).startswith(
        '<flow type="update"><meta'
    )
    when = fmt.flow_xml(SAMPLES[0][0], when=True, now=NOW)
    assert when.endswith("</meta><when><hour>") is False
    assert "<when><hour>" in when and "</year></when></flow>" in when


def test_xml_when_is_local_time() -> None:
    moment = 1795257969.5  # a Saturday
    assert fmt.xml_when(moment) == (
        "<when><hour>10</hour><min>46</min><sec>09</sec><wday>7</wday><day>21</day>"
        "<month>11</month><year>2026</year></when>"
    )


# -- -o save --------------------------------------------------------------------------------


def test_save_lines() -> None:
    tcp = SAMPLES[2][0]
    assert fmt.flow_save(tcp, EventType.NEW) == (
        "-A -t 119 -u SEEN_REPLY,ASSURED -s 127.0.0.1 -d 127.0.0.1 -r 127.0.0.1 -q 127.0.0.1"
        " -p tcp --sport 60806 --dport 8080 --reply-port-src 8080 --reply-port-dst 60806"
        " --state TIME_WAIT"
    )
    assert fmt.flow_save(SAMPLES[3][0], EventType.NEW).endswith(
        "-u SEEN_REPLY -s 127.0.0.1 -d 127.0.0.1 -r 127.0.0.1 -q 127.0.0.1 -p icmp"
        " --icmp-type 8 --icmp-code 0 --icmp-id 7835"
    )
    assert fmt.flow_save(SAMPLES[5][0], EventType.NEW).endswith(
        "-p gre --srckey 0 --dstkey 0 --reply-key-src 0 --reply-key-dst 0"
    )
    # the tags as the kernel has them (conntrack 1.4.7 swaps their bytes)
    assert fmt.flow_save(SAMPLES[4][0], EventType.NEW).endswith(
        "--state CLOSED --orig-vtag 0 --reply-vtag 1144201745"
    )
    assert fmt.flow_save(SAMPLES[6][0], EventType.NEW) == (
        "-A -t 599 -u UNSET -s 127.0.0.1 -d 127.0.0.1 -r 127.0.0.1 -q 127.0.0.1 -p 253"
    )
    destroy = replace(SAMPLES[0][0], timeout=None)
    assert fmt.flow_save(destroy, EventType.DESTROY).startswith("-D -u UNSET -s 127.0.0.1")


def test_save_marks_zones_and_nat() -> None:
    marked = replace(SAMPLES[0][0], mark=7, zone=5)
    assert " -u UNSET -m 7 -w 5 -s " in fmt.flow_save(marked, EventType.NEW)
    done = Status.SRC_NAT_DONE | Status.DST_NAT_DONE | ASSURED
    nat = flow(17, 1, 2, dst="192.0.2.2", status=done, timeout=9)
    assert nat.reply is not None
    nat.reply = replace(nat.reply, src="192.0.2.9", dst="192.0.2.8")
    assert fmt.source_nat(nat) and fmt.destination_nat(nat)
    assert "-s 127.0.0.1 -d 192.0.2.2 -g 192.0.2.9 -n 192.0.2.8 -p udp" in fmt.flow_save(
        nat, EventType.NEW
    )
    # without the NAT_DONE bits libnetfilter_conntrack sees no NAT
    assert "-r 192.0.2.9 -q 192.0.2.8" in fmt.flow_save(replace(nat, status=ASSURED), None)
    zones = replace(nat, orig=replace(nat.orig, zone=1), reply=replace(nat.reply, zone=2))
    assert " --orig-zone 1 --reply-zone 2 -s " in fmt.flow_save(zones, EventType.UPDATE)


# -- expectations ---------------------------------------------------------------------------

RPC = Expectation(
    master=Tuple(AF_INET, "1.2.3.4", "1.2.3.4", 6, 58190, 111),
    tuple=Tuple(AF_INET, "1.2.3.4", "1.2.3.4", 17, 0, 54834),
    mask=Tuple(AF_INET, "255.255.255.255", "255.255.255.255", 17, 0, 65535),
    timeout=300,
    flags=ExpectFlag.PERMANENT,
    klass=0,
    helper="rpc",
)


def test_expectation_line() -> None:
    # the example of the conntrack-tools manual
    assert fmt.expectation_line(RPC, EventType.NEW) == (
        "    [NEW] 300 proto=17 src=1.2.3.4 dst=1.2.3.4 sport=0 dport=54834"
        " mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535"
        " master-src=1.2.3.4 master-dst=1.2.3.4 sport=58190 dport=111 PERMANENT class=0"
        " helper=rpc"
    )
    several = replace(RPC, flags=ExpectFlag.INACTIVE | ExpectFlag.USERSPACE, zone=3, helper=None)
    assert fmt.expectation_line(several).endswith(" dport=111 zone=3 INACTIVE,USERSPACE class=0")


def test_expectation_xml() -> None:
    assert fmt.expectation_xml(RPC) == (
        '<flow><layer3 protonum="2" protoname="ipv4"><expected><src>1.2.3.4</src>'
        "<dst>1.2.3.4</dst></expected><mask><src>255.255.255.255</src><dst>255.255.255.255"
        "</dst></mask><master><src>1.2.3.4</src><dst>1.2.3.4</dst></master></layer3>"
        '<layer4 protonum="17" protoname="udp"><expected><sport>0</sport><dport>54834</dport>'
        "</expected><mask><sport>0</sport><dport>65535</dport></mask><master><sport>58190"
        "</sport><dport>111</dport></master></layer4><meta><helper-name>rpc</helper-name>"
        "<timeout>300</timeout><class>0</class><permanent/></meta></flow>"
    )


# -- statistics, labels ---------------------------------------------------------------------


def test_cpu_statistics() -> None:
    names = ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error",
             "search_restart", "clash_resolve", "chaintoolong")  # fmt: skip
    stats = CPUStats(0, {name: 0 for name in names})
    assert fmt.cpu_stats_line(stats) == (
        "cpu=0   \tfound=0 invalid=0 insert=0 insert_failed=0 drop=0 early_drop=0 error=0"
        " search_restart=0 clash_resolve=0 chaintoolong=0 "
    )
    newer = CPUStats(12, {"attr16": 5, "found": 1, "attr25": 9})
    assert fmt.cpu_stats_line(newer) == "cpu=12  \tfound=1 unknown1=5 "
    expect = CPUStats(1, {"expect_new": 1, "expect_create": 2, "expect_delete": 3, "attr4": 4})
    assert fmt.cpu_stats_line(expect, expectations=True) == (
        "cpu=1   \texpect_new=1 expect_create=2 expect_delete=3 "
    )
    proc = "entries clashres found\n00000003 00000000 0000000a\n00000003 00000001 00000000\n"
    assert fmt.proc_stats_lines(proc) == [
        "cpu=0   \tentries=3 clashres=0 found=10 ",
        "cpu=1   \tentries=3 clashres=1 found=0 ",
    ]


def test_label_map(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "connlabel.conf"
    path.write_text(
        "# comment\n0 zero\n0x5  five and blanks  \n1 zero\n2 bad;name\n010 octal\n"
        "1024 too big\n3\n  7 seven-7\nfoo 9\n"
    )
    labels = LabelMap.load(str(path))
    assert labels.bit("zero") == 0 and labels.bit("five and blanks") == 5
    assert labels.bit("octal") == 8 and labels.bit("seven-7") == 7
    assert labels.bit("bad;name") is None and labels.bit("too big") is None
    assert (labels.name(1), labels.name(8), labels.name(9)) == ("", "octal", None)
    assert labels.names_of((1 << 8 | 1 << 5 | 1 << 1).to_bytes(4, "little")) == [
        "five and blanks",
        "octal",
    ]
    path.write_text("# nothing\n")
    with pytest.raises(ValueError):
        LabelMap.load(str(path))
    with pytest.raises(OSError):
        LabelMap.load(str(path) + ".missing")


def test_diagnostics_prefix() -> None:
    assert fmt.message("1 flow entries have been shown.") == (
        "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n"
    )
