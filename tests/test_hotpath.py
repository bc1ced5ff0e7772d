"""The logd hot path: batches through stacks, keys left out when nobody reads them,
NFLOG layouts compiled for runs of messages, loss accounting per batch.

Whatever is an optimisation here must give exactly what the plain path gives.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfkit import nflog
from nfkit.logd.config import ConfigFile
from nfkit.logd.engine import Pipeline
from nfkit.logd.keys import Event
from nfkit.logd.loop import EventLoop
from nfkit.logd.plugin import ERROR, STOP, Context, Plugin, Settings
from nfkit.logd.plugins import base
from nfkit.logd.plugins.nflog import GroupReader
from nfkit.logd.registry import plugins
from nfkit.netlink.codec import NLMSG_DONE, Message, attr, attr_be32, attr_string, nfgenmsg
from nfkit.packet import build_ipv4, build_ipv6, build_tcp, build_udp

A4, B4 = "192.0.2.1", "198.51.100.7"
A6, B6 = "2001:db8::1", "2001:db8:1::2"


def make(name: str) -> Plugin:
    cls = plugins()[name]
    values = {opt.name: opt.default for opt in cls.options}
    return cls(name.lower(), Settings(name.lower(), values, {}), Context())


# -- BASE: decoders for the keys read downstream ------------------------------------------


def packets() -> list[tuple[int, int, bytes]]:
    """(oob.family, oob.protocol, raw.pkt) of every header BASE decodes."""
    tcp = build_tcp(1, 2, 3, 4, 0x3F, 5, b"", A4, B4, urgent_pointer=9)
    icmp = [struct.pack("!BBHI", t, c, 0x1234, 0xC0000209) + bytes(8) for t, c in
            ((0, 0), (3, 4), (3, 1), (5, 1), (11, 0), (12, 0))]  # fmt: skip
    ipv4 = [build_ipv4(A4, B4, 6, tcp), build_ipv4(A4, B4, 17, build_udp(5, 53, b"q", A4, B4))]
    ipv4 += [build_ipv4(A4, B4, 1, body) for body in icmp]
    ipv4 += [build_ipv4(A4, B4, proto, bytes(range(16))) for proto in (50, 51, 132, 99)]
    ipv4 += [build_ipv4(A4, B4, 17, b"12345678", flags_frag=0x2000 | 185)]
    v6_tcp = build_tcp(1, 2, 3, 4, 0x12, 5, b"", A6, B6)
    ipv6 = [
        build_ipv6(A6, B6, 6, v6_tcp),
        build_ipv6(A6, B6, 58, build_icmpv6_echo()),
        build_ipv6(
            A6, B6, 0, bytes([51, 0, 1, 4, 0, 0, 0, 0]) + bytes([6, 4]) + bytes(22) + v6_tcp
        ),
        build_ipv6(A6, B6, 44, struct.pack("!BBHI", 17, 0, 1, 7) + build_udp(1, 2, b"", A6, B6)),
        build_ipv6(A6, B6, 50, bytes(16)),
        build_ipv6(A6, B6, 132, bytes(12)),
    ]
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, b"\x02" * 6, bytes(4), b"\x04" * 6,
                      bytes(4))  # fmt: skip
    found = [(2, 0, pkt) for pkt in ipv4] + [(10, 0, pkt) for pkt in ipv6] + [(3, 0, arp)]
    found += [(7, 0x0800, ipv4[1]), (7, 0x86DD, ipv6[0]), (7, 0x0806, arp), (7, 0x8100, arp)]
    # Every truncation too: keys must be left out the same way.
    return found + [(f, p, pkt[:cut]) for f, p, pkt in found for cut in range(0, len(pkt), 7)]


def build_icmpv6_echo() -> bytes:
    return struct.pack("!BBHHH", 128, 0, 0, 7, 9) + b"ping"


def decoded(decoders: base.Decoders | None, family: int, protocol: int, pkt: bytes) -> Event:
    plugin = make("BASE")
    assert isinstance(plugin, base.BASE)
    if decoders is not None:
        plugin.decoders = decoders
    event = {"raw.pkt": pkt, "raw.pktlen": len(pkt), "oob.family": family, "oob.protocol": protocol}
    assert plugin.interp(event) is None
    return event


WANTED_SETS = [
    frozenset(),
    frozenset({"ip.saddr", "tcp.sport", "icmp.gateway", "arp.saddr", "ahesp.spi"}),
    # The benchmark stack's: every key but checksums, header lengths and TCP reserved bits.
    frozenset(k.name for k in base.BASE.output_keys) - {"ip.csum", "ip.ihl", "tcp.csum",
              "tcp.res1", "tcp.res2", "tcp.offset", "tcp.reserved", "udp.csum", "icmp.csum"},
    frozenset({"icmp.fragmtu", "icmpv6.echoseq", "udp.len", "tcp.urgp", "sctp.csum"}),
]  # fmt: skip


@pytest.mark.parametrize("wanted", WANTED_SETS, ids=range(len(WANTED_SETS)))
def test_base_decoders_for_some_keys_give_those_keys_exactly(wanted: frozenset[str]) -> None:
    narrow = base.decoders(wanted)
    assert base.decoders(wanted) is narrow  # compiled once per set
    for family, protocol, pkt in packets():
        full = decoded(None, family, protocol, pkt)
        some = decoded(narrow, family, protocol, pkt)
        assert some.keys() <= full.keys()
        assert {k: some.get(k) for k in wanted} == {k: full.get(k) for k in wanted}


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=80), family=st.sampled_from([2, 3, 7, 10]),
       protocol=st.sampled_from([0x0800, 0x86DD, 0x0806, 0]))  # fmt: skip
def test_base_narrow_decoders_on_garbage(data: bytes, family: int, protocol: int) -> None:
    wanted = WANTED_SETS[2]
    full = decoded(None, family, protocol, data)
    some = decoded(base.decoders(wanted), family, protocol, data)
    assert some.keys() <= full.keys()
    assert {k: some.get(k) for k in wanted} == {k: full.get(k) for k in wanted}


def test_base_decoder_source_leaves_out_unread_keys() -> None:
    source = base._source({"ip.saddr", "udp.sport"})
    assert 'event["ip.saddr"] = src' in source and 'event["udp.sport"] = sport' in source
    assert "ip.csum" not in source and "udp.csum" not in source
    assert "protocol == 6:" not in source  # no TCP key is read: no TCP decoding after IPv4


# -- the engine tells each plugin what is read after it -----------------------------------

STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU"


def pipeline(tmp_path: Path, *stacks: str, extra: str = "") -> Pipeline:
    text = "[global]\n" + "".join(f"stack={s}\n" for s in stacks)
    text += f'[emu1]\nfile="{tmp_path / "emu1.log"}"\n[json1]\nfile="{tmp_path / "j.json"}"\n'
    return Pipeline(ConfigFile("test.conf", text=text + extra), Context(EventLoop()))


def test_plugins_learn_the_keys_read_after_them(tmp_path: Path) -> None:
    logemu_stack, json_stack = pipeline(tmp_path, STACK, "log1:NFLOG,base2:BASE,json1:JSON").stacks
    base1, _ifindex, _ip2str, printpkt, logemu = logemu_stack.elements[1:]
    assert logemu.wanted == set()
    assert printpkt.wanted == {"print", "oob.time.sec"}
    assert base1.wanted is not None
    assert {"ip.saddr", "udp.sport", "oob.ifindex_in"} <= base1.wanted
    assert not {"ip.csum", "udp.csum", "tcp.res1"} & base1.wanted
    base2 = json_stack.elements[1]
    assert base2.wanted is not None and "udp.csum" in base2.wanted  # JSON prints every key


# -- batches: STOP and ERROR per event, copies per stack ----------------------------------


class Recorder(Plugin):
    """Keeps what reaches it; drops events by their ``verdict`` key."""

    def __init__(self) -> None:
        super().__init__("rec", Settings("rec", {}, {}), Context())
        self.seen: list[Any] = []

    def interp(self, event: Event) -> int | None:
        self.seen.append(event.get("n"))
        event["touched"] = True
        return event.get("verdict")


def test_default_interp_batch_drops_each_failed_event() -> None:
    results: list[int] = []
    plugin = Recorder()
    events: list[Event] = [
        {"n": 0},
        {"n": 1, "verdict": STOP},
        {"n": 2},
        {"n": 3, "verdict": ERROR},
    ]
    kept = plugin.interp_batch(events, results.append)
    assert [e["n"] for e in kept] == [0, 2]
    assert results == [STOP, ERROR]
    clean: list[Event] = [{"n": 4}, {"n": 5}]
    assert plugin.interp_batch(clean, results.append) is clean  # nothing dropped: no new list


def test_batch_plugins_answer_single_events() -> None:
    printpkt = make("PRINTPKT")
    assert printpkt.interp({"oob.family": 2, "ip.totlen": 1}) == ERROR
    event = {"oob.family": 2, "oob.protocol": 0x0800}
    assert make("IP2STR").interp(event) is None
    assert make("IP2STR").interp({"oob.family": 1}) == ERROR


def test_a_batch_through_a_stack(tmp_path: Path) -> None:
    """Events dropped by IP2STR (unknown family) are counted; the others are printed."""
    logd = pipeline(tmp_path, STACK, "log1:NFLOG,base2:BASE,json1:JSON")
    for plugin in logd.instances()[1:]:
        plugin.start()
    for stack in logd.stacks:
        stack.input.attach(stack.run, logd.wanted_keys(stack))
    udp = build_ipv4(A4, B4, 17, build_udp(5, 53, b"q", A4, B4))
    events = [
        {"raw.pkt": udp, "raw.pktlen": len(udp), "oob.family": family, "oob.prefix": str(n),
         "oob.time.sec": 1700000000 + n // 2, "oob.ifindex_in": 1, "oob.mark": 0}
        for n, family in enumerate((2, 2, 99, 2, 99))
    ]  # fmt: skip
    logd.inputs["log1"].emit_batch(events)
    for plugin in logd.instances()[1:]:
        plugin.stop()
    lines = (tmp_path / "emu1.log").read_text().splitlines()
    assert [line.split(" IN=lo OUT= MAC= ")[0][-1] for line in lines] == ["0", "1", "3"]
    assert [line[:15] for line in lines] == [
        time.ctime(second)[4:19] for second in (1700000000, 1700000000, 1700000001)
    ]
    logemu_stack, json_stack = logd.stacks
    assert (logemu_stack.events, logemu_stack.errors, logemu_stack.stopped) == (5, 2, 0)
    assert json_stack.errors == 0
    # Each stack had its own copies: JSON saw no PRINTPKT line.
    assert '"print"' not in (tmp_path / "j.json").read_text()
    assert len((tmp_path / "j.json").read_text().splitlines()) == 5


# -- NFLOG: compiled layouts over runs of messages ----------------------------------------


def message(
    prefix: str, family: int = 2, group: int = 1, seq: int = 0, payload: bytes = b"E"
) -> bytes:
    body = nfgenmsg(family, group) + attr(nflog.ATTR_PACKET_HDR, struct.pack("!HBx", 0x0800, 1))
    body += attr_string(nflog.ATTR_PREFIX, prefix) + attr_be32(nflog.ATTR_IFINDEX_INDEV, 3)
    body += attr(nflog.ATTR_HWHEADER, bytes(14)) + attr_be32(nflog.ATTR_SEQ, seq)
    return Message(nflog.MSG_PACKET, payload=body + attr(nflog.ATTR_PAYLOAD, payload)).encode()


NAMES = {"prefix": "oob.prefix", "seq": "s", "family": "f", "payload": "p", "indev": "i"}


def generic(datagram: bytes) -> list[Event]:
    """The packets as the uncompiled path decodes them."""
    parser = nflog.PacketParser[Event](NAMES)
    parser.MAX_LAYOUTS = 0
    return parser.parse(datagram)[0]


@pytest.mark.parametrize("order", ["aab", "abab", "aaaa", "acba", "a6a", "agga", "baaaab"])
def test_compiled_layouts_take_runs_and_give_way(order: str) -> None:
    kinds = {
        "a": lambda n: message("one", seq=n),
        "b": lambda n: message("three", seq=n),  # another length: another layout
        "c": lambda n: message("one", seq=n, payload=b"longer payload"),
        "6": lambda n: message("one", family=socket.AF_INET6, seq=n),
        "g": lambda n: message("one", group=2, seq=n),
    }
    datagram = b"".join(kinds[k](n) for n, k in enumerate(order))
    datagram += Message(NLMSG_DONE, payload=nfgenmsg(0, 1)).encode()
    parser = nflog.PacketParser[Event](NAMES)
    for _ in range(3):  # learning, then compiled
        assert parser.parse(datagram)[0] == generic(datagram)
    assert all(e["s"] == n for n, e in enumerate(parser.parse(datagram)[0]))


def test_compiled_layout_stops_before_a_truncated_message() -> None:
    good = message("one")
    parser = nflog.PacketParser[Event](NAMES)
    parser.parse(good)
    broken = bytearray(good)
    struct.pack_into("=I", broken, 0, len(good) + 8)  # claims more than the datagram holds
    with pytest.raises(nflog.TruncatedError):
        parser.parse(good + good + bytes(broken))


# -- NFLOG: loss accounting per batch -----------------------------------------------------


def counted_losses(batches: list[list[int | None]]) -> tuple[int, int | None]:
    reader = GroupReader(1, Context())
    reader.seq_key = "seq"
    for numbers in batches:
        reader._check_sequence([{} if n is None else {"seq": n} for n in numbers])
    return reader.lost_gaps, reader._last_seq


def one_by_one(batches: list[list[int | None]]) -> tuple[int, int | None]:
    """The accounting rule, packet by packet: forward gaps count, backward jumps do not."""
    lost, last = 0, None
    for number in (n for numbers in batches for n in numbers):
        if number is None:
            continue
        if last is not None and (gap := (number - last - 1) & 0xFFFFFFFF) < 0x80000000:
            lost += gap
        last = number
    return lost, last


@pytest.mark.parametrize("batches", [
    [[1, 2, 3], [4, 5], [9, 10]],
    [[0xFFFFFFFE, 0xFFFFFFFF], [0, 1]],
    [[0xFFFFFFFE, 0xFFFFFFFF, 0, 1]],
    [[5, 6, 7], [1, 2, 3]],
    [[1, 3, 2, 4]],
    [[1, None, 2], [None], [], [7]],
])  # fmt: skip
def test_sequence_gaps(batches: list[list[int | None]]) -> None:
    assert counted_losses(batches) == one_by_one(batches)


@settings(max_examples=200)
@given(st.lists(st.lists(st.integers(0, 0xFFFFFFFF) | st.none(), max_size=6), max_size=5),
       st.integers(0, 0xFFFFFFF0), st.lists(st.integers(1, 40), max_size=4))  # fmt: skip
def test_sequence_gaps_random(noise: list[list[int | None]], start: int, runs: list[int]) -> None:
    consecutive: list[list[int | None]] = []
    for length in runs:
        consecutive.append(list(range(start, start + length)))
        start += length + 1
    batches = [b for pair in zip(consecutive, noise, strict=False) for b in pair] + consecutive
    assert counted_losses(batches) == one_by_one(batches)


# -- LOGEMU: a batch is one write -----------------------------------------------------------


def test_logemu_batch_lines_and_seconds(tmp_path: Path) -> None:
    cls = plugins()["LOGEMU"]
    path = tmp_path / "emu.log"
    logemu = cls("emu", Settings("emu", {"file": str(path), "sync": 1}, {}), Context())
    logemu.start()
    writes: list[str] = []
    write: Callable[[str], None] = logemu.out.write

    def counted_write(text: str) -> None:
        writes.append(text)
        write(text)

    logemu.out.write = counted_write
    events: list[Event] = [{"print": "a\n", "oob.time.sec": 1700000000}, {"other": 1},
                           {"print": "b\n", "oob.time.sec": 1700000001}]  # fmt: skip
    assert logemu.interp_batch(events, lambda result: None) is events
    logemu.stop()
    host = socket.gethostname().split(".", 1)[0]
    assert len(writes) == 1
    assert path.read_text() == "".join(
        f"{time.ctime(second)[4:19]} {host} {text}"
        for second, text in ((1700000000, "a\n"), (1700000001, "b\n"))
    )
