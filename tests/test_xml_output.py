"""The XML output: records, documents, files, and ulogd 2.0.8 on the same traffic.

Unit tests drive the plugin's functions and instances directly; the lab tests
log real packets (NFLOG), flows (NFCT) and accounting objects (NFACCT) and
compare every record with what Debian's ulogd 2.0.8 writes for the same
traffic, masking only the ``<when>`` times ("now" for ulogd) and file names.
Every document nfkit writes is parsed with ``xml.etree``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nfkit import nflog
from nfkit.cli.ctformat import flow_xml
from nfkit.conntrack.codec import encode_flow
from nfkit.conntrack.const import CTA_ID, CTA_USE
from nfkit.conntrack.model import (
    Counters,
    Flow,
    Status,
    TCPInfo,
    Tuple,
)
from nfkit.lab import Lab, unavailable_reason
from nfkit.logd.errors import ConfigError, StartError
from nfkit.logd.keys import KeyType, keys
from nfkit.logd.plugin import ERROR, Context, DataType, InputPlugin, Settings
from nfkit.logd.plugins import xml_output
from nfkit.logd.plugins.nflog import NFLOG, GroupReader
from nfkit.netlink.codec import NLMSGHDR, attr, nfgenmsg
from nfkit.nfacct import Nfacct
from nfkit.nflog import LogPacket
from reference import (
    DaemonRun,
    iptables_restore,
    missing_reference,
    plugin_path,
    remove_workdir,
    stack_plugins,
)
from test_differential import one_cpu
from test_flow_differential import (
    CONNMARK,
    a_initiated_traffic,
    b_initiated_traffic,
    conntrack_on,
    flush_flows,
)

# -- helpers -------------------------------------------------------------------------------

WHEN = re.compile(r"<when>.*?</when>")
SUM_TIME = re.compile(r"<hour>\d+</hour><min>\d\d</min><sec>\d\d</sec><wday>\d</wday>"
                      r"<day>\d+</day><month>\d+</month><year>\d+</year>")  # fmt: skip
ROOTS = {"pkt": "packet", "flow": "conntrack", "sum": "sum"}


def make_xml(tmp_path: Path, upstream: InputPlugin | None = None, **options: Any) -> Any:
    """An XML instance configured behind ``upstream`` (an NFLOG by default)."""
    values = {"directory": str(tmp_path), "sync": 1, "stdout": 0} | options
    context = Context(None, logging.getLogger("nfkit.logd.test"))
    if upstream is None:
        upstream = NFLOG("log1", Settings("log1", {}, {}), context)
    plugin = xml_output.XML("xml1", Settings("xml1", values, {}), context)
    plugin.configure([upstream])
    return plugin


NAME = re.compile(r"ulogd-(?:pkt|flow|sum)-(\d{8}-\d{6})(?:-(\d+))?\.xml")


def documents(directory: Path, infix: str) -> list[Path]:
    """The XML files of one kind in ``directory``, in the order they were opened
    (within a second: ``name.xml``, ``name-2.xml``, ...)."""

    def order(path: Path) -> tuple[str, int]:
        m = NAME.fullmatch(path.name)
        assert m, path.name
        return m[1], int(m[2] or 1)

    return sorted((Path(p) for p in glob.glob(str(directory / f"ulogd-{infix}-*.xml"))), key=order)


def parse_document(path: Path, infix: str) -> list[str]:
    """Check that ``path`` is one well-formed document; return its record lines."""
    root = ET.parse(path).getroot()
    assert root.tag == ROOTS[infix]
    lines = path.read_text().splitlines()
    assert lines[0] == '<?xml version="1.0" encoding="utf-8"?>'
    assert lines[1] == f"<{ROOTS[infix]}>" and lines[-1] == f"</{ROOTS[infix]}>"
    for line in lines[2:-1]:
        ET.fromstring(f"<r>{line}</r>")  # each record on its own is well-formed too
    return lines[2:-1]


def reference_records(path: Path, infix: str) -> list[str]:
    """ulogd's records (its prefixes are not escaped: no XML parsing)."""
    lines = path.read_text(errors="surrogateescape").splitlines()
    assert lines[:2] == ['<?xml version="1.0" encoding="utf-8"?>', f"<{ROOTS[infix]}>"]
    assert lines[-1] == f"</{ROOTS[infix]}>"
    return lines[2:-1]


def masked(record: str) -> str:
    """A record without the times the daemons take from their own clocks."""
    return SUM_TIME.sub("<time/>", WHEN.sub("<when/>", record))


# -- records -------------------------------------------------------------------------------


def log_packet(**fields: Any) -> LogPacket:
    packet = LogPacket(2, 1, b"", 0, 0)
    for name, value in fields.items():
        setattr(packet, name, value)
    return packet


def test_packet_record_has_nflog_snprintf_xml_layout() -> None:
    packet = log_packet(
        prefix="in", hook=1, hw_protocol=0x800, hwaddr=bytes.fromhex("020000000001"), mark=42,
        indev=3, outdev=0, physindev=5, payload=b"\x45\x00\xff",
    )  # fmt: skip
    assert xml_output.packet_xml(packet, "<when/>") == (
        "<log><when/><prefix>in</prefix><hook>1</hook><hw><proto>0800</proto>"
        "<src>020000000001</src></hw><mark>42</mark><indev>3</indev><physindev>5</physindev>"
        "<payload>4500ff</payload></log>"
    )
    # no packet header: no hook and no hw; no prefix attribute: no prefix element
    assert xml_output.packet_xml(log_packet(payload=b""), "<when/>") == (
        "<log><when/><payload></payload></log>"
    )
    # a header without a hardware address; the conntrack id of an attached conntrack
    ct = bytes.fromhex("0800 0c00 0000 0102")  # CTA_ID = 258
    assert xml_output.packet_xml(log_packet(hook=3, hw_protocol=0x86DD, ct=ct), "<when/>") == (
        "<log><when/><hook>3</hook><hw><proto>86dd</proto></hw><ctid>258</ctid></log>"
    )


def test_prefix_is_escaped_into_well_formed_xml() -> None:
    prefix = 'a<b&c>"d\x01' + b"\xff".decode("utf-8", "surrogateescape")
    record = xml_output.packet_xml(log_packet(prefix=prefix), "<when/>")
    assert '<prefix>a&lt;b&amp;c&gt;"d\ufffd\ufffd</prefix>' in record
    assert ET.fromstring(record).findtext("prefix") == 'a<b&c>"d\ufffd\ufffd'


def test_time_elements_are_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    try:
        # 2023-11-15 00:13:20 in Paris, a Wednesday: C's tm_wday 3, printed + 1
        clock = xml_output.Clock()(1700003600)
        assert clock.fields == (
            "<hour>0</hour><min>13</min><sec>20</sec><wday>4</wday><day>15</day>"
            "<month>11</month><year>2023</year>"
        )
        assert clock.when == f"<when>{clock.fields}</when>"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def tcp_flow(**fields: Any) -> Flow:
    orig = Tuple(2, "192.0.2.1", "192.0.2.2", 6, 40000, 80)
    return Flow(orig=orig, reply=orig.inverted(), **fields)


def test_flow_record_has_nfct_snprintf_xml_layout(tmp_path: Path) -> None:
    flow = tcp_flow(
        status=Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED, timeout=431999, mark=7,
        use=1, id=1234, counters_orig=Counters(3, 180), counters_reply=Counters(2, 112),
        protoinfo=TCPInfo(state=3), start=10 * 10**9, stop=12 * 10**9 + 5, helper="ftp",
    )  # fmt: skip
    record = make_xml(tmp_path).record({"ct": flow}, 0)
    assert masked(record) == (
        '<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4">'
        "<src>192.0.2.1</src><dst>192.0.2.2</dst></layer3>"
        '<layer4 protonum="6" protoname="tcp"><sport>40000</sport><dport>80</dport></layer4>'
        "<counters><packets>3</packets><bytes>180</bytes></counters></meta>"
        '<meta direction="reply"><layer3 protonum="2" protoname="ipv4">'
        "<src>192.0.2.2</src><dst>192.0.2.1</dst></layer3>"
        '<layer4 protonum="6" protoname="tcp"><sport>80</sport><dport>40000</dport></layer4>'
        "<counters><packets>2</packets><bytes>112</bytes></counters></meta>"
        '<meta direction="independent"><state>ESTABLISHED</state><timeout>431999</timeout>'
        "<mark>7</mark><use>1</use><id>1234</id><assured/><deltatime>2</deltatime></meta>"
        "<when/><helper>ftp</helper></flow>\n"
    )


def test_sum_record_has_nfacct_snprintf_xml_layout() -> None:
    assert xml_output.sum_xml("web<1>", 5, 420, "<hour>1</hour>") == (
        "<obj><name>web&lt;1&gt;</name><pkts>00000000000000000005</pkts>"
        "<bytes>00000000000000000420</bytes><hour>1</hour></obj>"
    )


def nflog_datagram(*payloads: bytes) -> bytes:
    """An NFLOG datagram of IPv4 packets logged on INPUT with prefix "in"."""
    out = b""
    for payload in payloads:
        body = nfgenmsg(2, 7) + attr(nflog.ATTR_PACKET_HDR, struct.pack("!HBx", 0x800, 1))
        body += attr(nflog.ATTR_PREFIX, b"in\0") + attr(nflog.ATTR_PAYLOAD, payload)
        out += NLMSGHDR.pack(16 + len(body), nflog.MSG_PACKET, 0, 0, 0) + body
    return out


def test_nflog_gives_packets_as_raw_only_to_stacks_that_read_raw() -> None:
    settings = {opt.name: opt.default for opt in NFLOG.options}
    log = NFLOG("log1", Settings("log1", settings, {}), Context())
    log.wanted = {"oob.prefix", "raw.pkt"}
    parser, _ = GroupReader.parser_for([log])
    assert type(parser) is nflog.PacketParser  # the hot path without XML
    log.wanted = {"raw"}
    parser, _ = GroupReader.parser_for([log])
    for _ in range(2):  # the generic walk, then the compiled layout
        events, _others = parser.parse(nflog_datagram(b"\x45one", b"\x45two"))
        assert [(e["raw.pkt"], e["raw"].payload, e["raw"].prefix) for e in events] == [
            (b"\x45one", b"\x45one", "in"),
            (b"\x45two", b"\x45two", "in"),
        ]


def test_conntrack_attached_to_a_packet_becomes_a_flow_record(tmp_path: Path) -> None:
    # what NFLOG's attach_conntrack=1 adds: the conntrack's attributes, nested
    flow = tcp_flow(status=Status.CONFIRMED, id=77, use=1)
    ct = encode_flow(flow, create=False) + attr(CTA_USE, struct.pack("!I", 1))
    ct += attr(CTA_ID, struct.pack("!I", 77))
    plugin = make_xml(tmp_path)
    plugin.start()
    packet = log_packet(payload=b"", ct=ct)
    assert plugin.interp({"raw": packet, "ct": ct}) is None
    bad = {"raw": log_packet(payload=b""), "ct": b"\x03\x00"}
    assert plugin.interp(bad) is None  # the packet is written, the conntrack skipped
    plugin.stop()
    attached, alone = parse_document(documents(tmp_path, "pkt")[0], "pkt")
    assert "<ctid>77</ctid><payload></payload></log><flow>" in attached
    assert masked(attached).endswith(masked(flow_xml(flow, when=True)))
    assert "<flow>" not in alone and plugin.undecodable == 1


# -- documents and files ----------------------------------------------------------------------


def test_document_per_file_and_records_of_any_size(tmp_path: Path) -> None:
    plugin = make_xml(tmp_path)
    plugin.start()
    big = log_packet(prefix="big", payload=bytes(5000))
    assert plugin.interp({"raw": big}) is None
    assert plugin.interp({"oob.prefix": "no packet"}) == ERROR
    plugin.stop()
    (path,) = documents(tmp_path, "pkt")
    assert re.fullmatch(r"ulogd-pkt-\d{8}-\d{6}\.xml", path.name)
    (record,) = parse_document(path, "pkt")
    assert len(record) > 10000 and record.endswith("0" * 10000 + "</payload></log>")


def test_reopen_within_one_second_starts_new_documents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xml_output.time, "time", lambda: 1700000000.5)
    plugin = make_xml(tmp_path)
    plugin.start()
    for number in range(3):
        plugin.interp({"raw": log_packet(prefix=str(number), payload=b"")})
        plugin.reopen()
    plugin.stop()
    stamp = time.strftime("%d%m%Y-%H%M%S", time.localtime(1700000000))
    paths = documents(tmp_path, "pkt")
    assert [p.name for p in paths] == [
        f"ulogd-pkt-{stamp}{suffix}.xml" for suffix in ("", "-2", "-3", "-4")
    ]
    records = [parse_document(path, "pkt") for path in paths]
    assert [[ET.fromstring(r).findtext("prefix") for r in rs] for rs in records] == [
        ["0"],
        ["1"],
        ["2"],
        [],
    ]


def test_reopen_keeps_the_file_when_the_directory_is_gone(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    plugin = make_xml(directory)
    plugin.start()
    directory.rename(tmp_path / "moved")
    plugin.reopen()  # logs an error, goes on with the open file
    plugin.interp({"raw": log_packet(payload=b"\x01")})
    plugin.stop()
    (path,) = documents(tmp_path / "moved", "pkt")
    (record,) = parse_document(path, "pkt")
    assert record.endswith("<payload>01</payload></log>")


def test_missing_directory_fails_the_start(tmp_path: Path) -> None:
    plugin = make_xml(tmp_path / "missing")
    with pytest.raises(StartError, match="No such file") as error:
        plugin.start()
    assert "directory=" in error.value.fix


def test_stdout_mode(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    plugin = make_xml(tmp_path, stdout=1)
    plugin.start()
    plugin.interp({"raw": log_packet(payload=b"\x01")})
    plugin.reopen()  # nothing to rotate
    plugin.stop()
    out = capfd.readouterr().out
    assert ET.fromstring(out.split("\n", 1)[1]).tag == "packet"
    assert out.count("<log>") == 1 and not documents(tmp_path, "pkt")


def test_document_kind_follows_the_input(tmp_path: Path) -> None:
    context = Context()

    class Flows(InputPlugin):
        name = "NFCT"
        output_type = DataType.FLOW
        output_keys = keys(("ct", KeyType.RAW))

    class Packets(InputPlugin):
        name = "UNIXSOCK"
        output_type = DataType.RAW
        output_keys = keys(("raw.pkt", KeyType.RAW))

    plugin = make_xml(tmp_path, Flows("ct1", Settings("ct1", {}, {}), context))
    assert (plugin.infix, plugin.root) == ("flow", "conntrack")
    with pytest.raises(ConfigError, match="UNIXSOCK provides no packet"):
        make_xml(tmp_path, Packets("unix1", Settings("unix1", {}, {}), context))


def test_replayed_capture_keeps_its_recorded_times(tmp_path: Path) -> None:
    # PCAPREPLAY gives XML packet objects too; <when> is the time in the capture
    udp = bytes.fromhex("4500001c0001000040117ccdc0000201c00002021388138900080000")
    with (tmp_path / "in.pcap").open("wb") as capture:
        capture.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for seconds in (1700000000, 1700000001):
            capture.write(struct.pack("=IIII", seconds, 5, len(udp), len(udp)) + udp)
    (tmp_path / "ulogd.conf").write_text(
        f'[global]\nlogfile="{tmp_path}/log"\nstack=rp1:PCAPREPLAY,xml1:XML\n'
        f'[rp1]\nfile="{tmp_path}/in.pcap"\n[xml1]\ndirectory="{tmp_path}"\n'
    )
    argv = [sys.executable, "-m", "nfkit.cli.main", "logd", "-c", str(tmp_path / "ulogd.conf")]
    subprocess.run(argv, env=os.environ | {"TZ": "UTC"}, check=True, timeout=60)
    (path,) = documents(tmp_path, "pkt")
    records = [ET.fromstring(record) for record in parse_document(path, "pkt")]
    assert [(r.findtext("when/hour"), r.findtext("when/sec")) for r in records] == [
        ("22", "20"),
        ("22", "21"),
    ]
    assert {r.findtext("payload") for r in records} == {udp.hex()}


# -- through the kernel, beside ulogd 2.0.8 -------------------------------------------------

GROUPS = {"ulogd": 1, "nfkit": 2}
MARK = 0x2A
TCP_PORT, UDP_PORT, UDP_SPECIAL = 8080, 5000, 5001
BIG = 3000  # bytes: its hex payload alone overflows ulogd's 4096-byte record buffer
#: ulogd writes this prefix as it is (invalid XML); nfkit escapes it.
SPECIAL_PREFIX = b'x<&>"\xff'
SPECIAL_ESCAPED = 'x&lt;&amp;&gt;"\ufffd'
SPECIAL_NAME, SPECIAL_NAME_ESCAPED = "a<&>b", "a&lt;&amp;&gt;b"


def logging_rules(ipv6: bool) -> bytes:
    """Each packet in and out of b logged to both groups (one transaction)."""
    lines = [b"*filter"]
    for chain in ("INPUT", "OUTPUT"):
        for group in GROUPS.values():
            special = f"-A {chain} -p udp --dport {UDP_SPECIAL} -j NFLOG --nflog-group {group}"
            quoted = SPECIAL_PREFIX.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            lines.append(special.encode() + b' --nflog-prefix "' + quoted + b'"')
            lines.append(f"-A {chain} -j NFLOG --nflog-group {group}".encode()
                         + (b' --nflog-prefix "in"' if chain == "INPUT" else b""))  # fmt: skip
    lines.append(b"-A INPUT -p udp --dport %d -j ACCEPT" % UDP_SPECIAL)
    return b"\n".join([*lines, b"COMMIT", b""])


STOP_LOGGING = "*filter\n-I INPUT 1 -j ACCEPT\n-I OUTPUT 1 -j ACCEPT\nCOMMIT\n"


Sections = dict[str, dict[str, Any]]


def daemon_config(workdir: Path, stacks: Sequence[str], sections: Sections) -> str:
    """A configuration for one daemon; each XML instance writes to ``workdir/<its id>``."""
    lines = ["[global]", f'logfile="{workdir / "daemon.log"}"', "loglevel=3"]
    lines += [f'plugin="{plugin_path(name)}"' for name in stack_plugins(stacks)]
    lines += [f"stack={stack}" for stack in stacks]
    outputs = {}
    for stack in stacks:
        instance, _, name = stack.rpartition(",")[2].partition(":")
        if name == "XML":
            (workdir / instance).mkdir(parents=True, exist_ok=True)
            outputs[instance] = {"directory": str(workdir / instance), "sync": 1}
    for section, values in (sections | outputs).items():
        lines += ["", f"[{section}]"]
        lines += [f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def lab_or_skip(*stacks: str) -> None:
    reason = unavailable_reason() or missing_reference(stacks)
    # flush_flows ends the flows with Debian's conntrack
    if not reason and any("NFCT" in s for s in stacks) and not shutil.which("conntrack"):
        reason = "conntrack (Debian package conntrack) not installed"
    if reason:
        pytest.skip(reason)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nfkit-xml-"))
    yield path
    remove_workdir(path)


def generate_packets(lab: Lab) -> None:
    a, b = lab.a, lab.b
    assert a.ip4 and a.ip6 and b.ip4 and b.ip6
    for dst in (b.ip4, b.ip6):
        assert lab.ping(a, dst, count=2, interval=0.05)
        assert lab.tcp_exchange(a, dst, TCP_PORT, data=b"xml") == b"xml"
        lab.udp(a, dst, UDP_PORT, count=1, size=BIG)
        lab.udp(a, dst, UDP_SPECIAL, count=1, size=16)


#: What ulogd writes as it is -> what nfkit writes instead (escaped).
ESCAPES = {
    "<prefix>" + SPECIAL_PREFIX.decode("utf-8", "surrogateescape") + "</prefix>":
        f"<prefix>{SPECIAL_ESCAPED}</prefix>",
    f"<name>{SPECIAL_NAME}</name>": f"<name>{SPECIAL_NAME_ESCAPED}</name>",
}  # fmt: skip


def compare_records(ulogd: list[str], nfkit: list[str]) -> list[str]:
    """Differences between the two daemons' records, masked; empty when equal."""
    expected = [masked(r) for r in ulogd]
    for raw, escaped in ESCAPES.items():
        expected = [r.replace(raw, escaped) for r in expected]
    actual = [masked(r) for r in nfkit]
    problems = [
        f"record {n}:\n  ulogd {e}\n  nfkit {a}"
        for n, (e, a) in enumerate(zip(expected, actual, strict=False), 1)
        if e != a
    ]
    if len(expected) != len(actual):
        problems.append(f"{len(actual)} records, ulogd {len(expected)}")
    return problems


def run_both(workdir: Path, stacks: Sequence[str], sections: Callable[[str], Sections],
             traffic: Callable[[Lab], None], setup: Callable[[Lab], None] | None = None,
             ) -> None:  # fmt: skip
    """ulogd and nfkit in lab namespace b around ``traffic`` (after ``setup``), configured
    alike except ``sections(kind)``; their files go to ``workdir/ulogd`` and ``workdir/nfkit``."""
    with one_cpu(), Lab() as lab:
        if setup is not None:
            setup(lab)
        runs = []
        try:
            for kind in ("ulogd", "nfkit"):
                config = daemon_config(workdir / kind, stacks, sections(kind))
                runs.append(DaemonRun(lab, lab.b, kind, workdir / kind, config).start())
            traffic(lab)
            for run in runs:
                run.wait_idle()
                assert run.stop() == 0, run.diagnostics()
        finally:
            for run in runs:
                run.kill()


def both_outputs(workdir: Path, instance: str, infix: str) -> tuple[list[str], list[str]]:
    """The records of ``instance`` written by ulogd and by nfkit (one document each;
    nfkit's parsed)."""
    (ulogd_file,) = documents(workdir / "ulogd" / instance, infix)
    (nfkit_file,) = documents(workdir / "nfkit" / instance, infix)
    return reference_records(ulogd_file, infix), parse_document(nfkit_file, infix)


@pytest.mark.lab
@pytest.mark.reference
def test_nflog_packets_match_ulogd(workdir: Path) -> None:
    stack = "log1:NFLOG,xml1:XML"
    lab_or_skip(stack)
    window = []

    def traffic(lab: Lab) -> None:
        mark = f"*mangle\n-A PREROUTING -p tcp -j MARK --set-mark {MARK}\nCOMMIT\n"
        iptables_restore(lab, lab.b, mark)
        iptables_restore(lab, lab.b, logging_rules(ipv6=False))
        iptables_restore(lab, lab.b, logging_rules(ipv6=True), ipv6=True)
        window.append(time.time())
        generate_packets(lab)
        iptables_restore(lab, lab.b, STOP_LOGGING)
        iptables_restore(lab, lab.b, STOP_LOGGING, ipv6=True)
        time.sleep(1.5)  # the kernel flushes NFLOG batches after at most 1 s
        window.append(time.time())

    run_both(workdir, [stack], lambda kind: {"log1": {"group": GROUPS[kind]}}, traffic)
    ulogd, nfkit = both_outputs(workdir, "xml1", "pkt")
    assert len(ulogd) >= 20
    # ulogd drops what does not fit its 4096-byte buffer: the reassembled big datagram
    big = [r for r in nfkit if len(r) >= 4096]
    assert big and all("00" * 1000 in r for r in big)
    problems = compare_records(ulogd, [r for r in nfkit if len(r) < 4096])
    assert not problems, "\n".join(problems)
    # what the traffic must have produced
    logs = [ET.fromstring(r) for r in nfkit]
    assert {log.findtext("prefix") for log in logs} == {"in", "", 'x<&>"\ufffd'}
    assert any(log.findtext("mark") == str(MARK) for log in logs)
    # nfkit's <when>: the kernel's timestamp (inbound), the time it read the batch (outbound)
    low, high = (time.localtime(t)[:6] for t in window)
    for log in logs:
        stamp = tuple(int(log.findtext(f"when/{tag}") or 0)
                      for tag in ("year", "month", "day", "hour", "min", "sec"))  # fmt: skip
        assert low <= stamp <= high


def flows_then_flush(lab: Lab) -> None:
    """Tracked flows of every kind in b (counters, timestamps, marks, NAT), then a flush:
    one DESTROY event per flow."""
    conntrack_on(lab)
    b_initiated_traffic(lab)
    a_initiated_traffic(lab)
    time.sleep(0.5)  # the last FIN/ACKs
    assert flush_flows(lab) > 10


@pytest.mark.lab
@pytest.mark.reference
def test_nfct_flows_match_ulogd(workdir: Path) -> None:
    # ct1: one record per ended flow (the flow table); ct2: every NEW and DESTROY event,
    # NEW ones with the protocol state, timeout and use count
    stacks = ["ct1:NFCT,xml1:XML", "ct2:NFCT,xml2:XML"]
    lab_or_skip(*stacks)
    sections = {"ct1": {"hash_enable": 1}, "ct2": {"hash_enable": 0}}
    run_both(workdir, stacks, lambda kind: sections, flows_then_flush)
    for instance in ("xml1", "xml2"):
        ulogd, nfkit = both_outputs(workdir, instance, "flow")
        problems = compare_records(ulogd, nfkit)
        assert not problems, "\n".join(problems)
    hashed = [ET.fromstring(record) for record in both_outputs(workdir, "xml1", "flow")[1]]
    events = [ET.fromstring(record) for record in both_outputs(workdir, "xml2", "flow")[1]]
    assert len(events) == 2 * len(hashed)
    protocols = {flow.find("meta/layer4").get("protoname") for flow in hashed}  # type: ignore[union-attr]
    assert {"tcp", "udp", "icmp", "icmpv6", "gre", "unknown"} <= protocols
    assert all(flow.findtext("meta/counters/packets") for flow in hashed)
    independent = "meta[@direction='independent']"
    assert any(flow.findtext(f"{independent}/mark") == str(CONNMARK) for flow in hashed)
    assert {"SYN_SENT", "ESTABLISHED"} & {f.findtext(f"{independent}/state") for f in events}


def accounting_objects(lab: Lab) -> None:
    """Objects in b before the daemons start: ``pings`` counts echo requests,
    SPECIAL_NAME nothing; then five echo requests."""
    with lab.entered(lab.b), Nfacct() as acct:
        acct.create("pings")
        acct.create(SPECIAL_NAME)
    for tables, match in ((lab.iptables, ("-p", "icmp", "--icmp-type")),
                          (lab.ip6tables, ("-p", "ipv6-icmp", "--icmpv6-type"))):  # fmt: skip
        tables(lab.b, "-A", "INPUT", *match, "echo-request", "-m", "nfacct", "--nfacct-name",
               "pings")  # fmt: skip
    assert lab.b.ip4 and lab.b.ip6
    assert lab.ping(lab.a, lab.b.ip4, count=3, interval=0.05)
    assert lab.ping(lab.a, lab.b.ip6, count=2, interval=0.05)


@pytest.mark.lab
@pytest.mark.reference
def test_nfacct_objects_match_ulogd(workdir: Path) -> None:
    stack = "acct1:NFACCT,xml1:XML"
    lab_or_skip(stack)
    polls, objects = 2, 2

    def two_polls(lab: Lab) -> None:
        # cumulative counters (zerocounter=0): both daemons read the same values
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            counts = [len(re.findall("<obj>", path.read_text()))
                      for kind in ("ulogd", "nfkit")
                      for path in documents(workdir / kind / "xml1", "sum")]  # fmt: skip
            if len(counts) == 2 and min(counts) >= polls * objects:
                return
            time.sleep(0.1)
        pytest.fail(f"fewer than {polls} polls written: {counts}")

    sections = {"acct1": {"pollinterval": 1, "zerocounter": 0}}
    run_both(workdir, [stack], lambda kind: sections, two_polls, setup=accounting_objects)
    ulogd, nfkit = both_outputs(workdir, "xml1", "sum")
    problems = compare_records(ulogd[: polls * objects], nfkit[: polls * objects])
    assert not problems, "\n".join(problems)
    first = [ET.fromstring(record) for record in nfkit[:objects]]
    assert [(o.findtext("name"), o.findtext("pkts")) for o in first] == [
        ("pings", "0" * 19 + "5"),
        (SPECIAL_NAME, "0" * 20),
    ]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.lab
def test_sighup_ends_the_document_and_starts_another(workdir: Path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    stack = "log1:NFLOG,xml1:XML"
    directory = workdir / "xml1"
    config = daemon_config(workdir, [stack], {"log1": {"group": 3, "netlink_qtimeout": 1}})
    with Lab() as lab:
        assert lab.b.ip4
        lab.iptables(lab.b, "-A", "INPUT", "-p", "icmp", "-j", "NFLOG", "--nflog-group", "3")
        run = DaemonRun(lab, lab.b, "nfkit", workdir, config).start()
        try:
            assert run.proc is not None
            assert lab.ping(lab.a, lab.b.ip4, count=2, interval=0.05)
            wait_for(lambda: documents(directory, "pkt")[0].read_text().count("<log>") == 2,
                     "the first packets")  # fmt: skip
            for files in (2, 3):  # the second SIGHUP usually falls in the same second
                run.proc.send_signal(signal.SIGHUP)
                wait_for(lambda n=files: len(documents(directory, "pkt")) == n, f"file {files}")
            assert lab.ping(lab.a, lab.b.ip4, count=3, interval=0.05)
            time.sleep(0.5)
        finally:
            assert run.stop() == 0, run.diagnostics()
    first, second, third = (parse_document(p, "pkt") for p in documents(directory, "pkt"))
    assert (len(first), len(second), len(third)) == (2, 0, 3)
